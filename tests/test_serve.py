"""The one Streamlit workaround (ui/serve.py) against the Streamlit installed: if an upgrade
changes how it treats a pages/ folder beside app.py, these fail and say what to look at."""

from __future__ import annotations

import inspect

import pytest
from streamlit.runtime.pages_manager import PagesManager

from helpers import REPO

SHIM = "ui/serve.py's route_pages_through_app()"


@pytest.fixture
def fresh_flag():
    """The class-level flag as a new server process starts with it, restored afterwards."""
    saved = PagesManager.uses_pages_directory
    PagesManager.uses_pages_directory = None
    yield
    PagesManager.uses_pages_directory = saved


def test_streamlit_still_takes_pages_beside_app_py_for_an_old_style_app(fresh_flag):
    """The behaviour the shim works around: without it, a pages/ folder beside the entry
    script switches Streamlit to its v1 multipage mode until st.navigation runs."""
    assert hasattr(PagesManager, "uses_pages_directory"), (
        f"Streamlit no longer has PagesManager.uses_pages_directory: {SHIM} sets nothing now. Open a deep link "
        "(/explore) on a fresh `make run` server: if app.py's frame shows, delete the shim; if not, find the new switch.")
    PagesManager(str(REPO / "app.py"))
    assert PagesManager.uses_pages_directory is True, (
        f"Streamlit no longer turns on v1 pages for a pages/ folder beside app.py: {SHIM} may be unneeded now.")


def test_the_shim_keeps_app_py_routing_from_the_first_request(fresh_flag):
    from ui.serve import route_pages_through_app

    route_pages_through_app()
    PagesManager(str(REPO / "app.py"))  # what the server makes for the first session
    assert PagesManager.uses_pages_directory is False, f"Streamlit resets the flag {SHIM} clears; the shim no longer works."


def test_the_script_runner_still_reads_the_flag():
    """Where Streamlit decides between running pages/ (v1) and app.py's router."""
    from streamlit.commands import navigation
    from streamlit.runtime.scriptrunner import script_runner

    assert "PagesManager.uses_pages_directory" in inspect.getsource(script_runner), (
        f"Streamlit's script runner no longer reads uses_pages_directory: check {SHIM} against the new code.")
    assert "PagesManager.uses_pages_directory = False" in inspect.getsource(navigation), (
        "st.navigation no longer clears the flag itself: the v1/v2 switch changed; check ui/serve.py.")
