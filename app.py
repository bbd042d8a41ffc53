"""ThoughtScope: explore, select and export chain-of-thought data.

    make run            (or: python -m ui.serve, which routes deep links from the first request)

The entry script only frames and routes; each page lives in pages/ and all logic in core/.
"""

import streamlit as st

from core import memcache
from ui import auth, common

memcache.use_system_allocator_for_arrow()  # steadier large Arrow buffers in a threaded server
memcache.limit_malloc_arenas()  # also when started as `streamlit run app.py` (ui.serve does it first)
st.set_page_config(page_title="ThoughtScope", page_icon="🔭", layout="wide")


def _to_overview() -> None:
    """The app's root: Streamlit serves its default page at / and answers that page's own path
    (/overview) with "Page not found", so the default is this hidden hop and every page, the
    Overview included, has its own address (issue 11). The filter's parameters go along."""
    st.switch_page("pages/overview.py", query_params=st.query_params.to_dict())


PAGES = [
    st.Page(_to_overview, title="ThoughtScope", url_path="home", default=True, visibility="hidden"),
    st.Page("pages/overview.py", title="Overview", url_path="overview"),
    st.Page("pages/explore.py", title="Explore", url_path="explore"),
    st.Page("pages/reader.py", title="Reader", url_path="reader"),
    st.Page("pages/distributions.py", title="Distributions", url_path="distributions"),
    st.Page("pages/agreement.py", title="Agreement", url_path="agreement"),
    st.Page("pages/labels.py", title="Labels", url_path="labels"),
    st.Page("pages/compare.py", title="Compare runs", url_path="compare"),
    st.Page("pages/map.py", title="Map", url_path="map"),
    st.Page("pages/select.py", title="Select", url_path="select"),
    st.Page("pages/export.py", title="Export", url_path="export"),
    st.Page("pages/jobs.py", title="Jobs", url_path="jobs"),
    st.Page("pages/sql.py", title="SQL", url_path="sql"),
]

auth.install()
# With login configured, an anonymous session gets the login screen and no page: the pages
# stay registered (so every URL still routes through here) but hidden, and none runs.
signed_in = auth.may_enter()
page = st.navigation(PAGES, position="sidebar" if signed_in else "hidden")
if not signed_in:
    auth.login_screen()
st.sidebar.caption("ThoughtScope · CoT data curation")
auth.sidebar_user()
common.keep_filter_state()  # the filter survives a visit to a page without it (Jobs, SQL, Compare)
page.run()
