"""Start the app: `python -m ui.serve [--team] [streamlit options]` (what `make run` does).

It listens on 127.0.0.1 only, so nobody else on the network reaches it. Serving a team is
an explicit choice: `--team` listens on every interface (`make run TEAM=1`), or
$THOUGHTSCOPE_ADDRESS / `--server.address` names the address; the README's "Security and
failure model" says what that exposes and how to add a login.

Why this file exists. ThoughtScope keeps one file per page in pages/ beside app.py, and app.py
routes with st.navigation. Streamlit treats an entry script beside a folder named pages/ as an
old-style (v1) multipage app until st.navigation has run once in the server's life, so the
very first request straight to /explore would run that page alone, without app.py's frame.
Streamlit offers no setting for this: its documented way out is not to name the folder pages/
(its docs call pages/ the legacy mechanism, and its own guidance says to name the folder
app_pages/). We keep pages/ where the layout puts it and work around it here, in one place:
:func:`route_pages_through_app` clears the flag before the server starts. It is a private
Streamlit attribute, so tests/test_serve.py checks, on every run of the suite, that Streamlit
still behaves the way this relies on, and fails with a message pointing here if an upgrade
changes it (the browser tests then check deep links for real).
"""

import os
import sys
from pathlib import Path

from streamlit.runtime.pages_manager import PagesManager
from streamlit.web import cli

from core import memcache

APP = Path(__file__).resolve().parent.parent / "app.py"
LOCAL = "127.0.0.1"


def address_options(argv: list[str], env=os.environ) -> list[str]:
    """Streamlit's options with the listening address made explicit: ``--team`` means every
    interface; an explicit --server.address (or $STREAMLIT_SERVER_ADDRESS) is kept; else
    $THOUGHTSCOPE_ADDRESS, else 127.0.0.1."""
    options = [a for a in argv if a != "--team"]
    if any(a == "--server.address" or a.startswith("--server.address=") for a in options):
        return options
    if "--team" in argv:
        return [*options, "--server.address=0.0.0.0"]
    if env.get("STREAMLIT_SERVER_ADDRESS"):
        return options
    return [*options, f"--server.address={env.get('THOUGHTSCOPE_ADDRESS') or LOCAL}"]



def route_pages_through_app() -> None:
    """Make app.py's st.navigation route every request, the first one included, although
    pages/ sits beside it (see the module docstring)."""
    PagesManager.uses_pages_directory = False


def preload() -> None:
    """Import pandas completely before any session runs. Plotly looks pandas up in sys.modules
    without taking the import lock, so a figure built while another session's thread is still
    importing pandas fails with "partially initialized module 'pandas' has no attribute
    'Series'" (bench/bench_load.py met it with 8 sessions opening pages on a fresh server)."""
    import pandas  # noqa: F401


if __name__ == "__main__":
    route_pages_through_app()  # the sign-in check relies on app.py routing every request
    memcache.limit_malloc_arenas()  # before the sessions' threads start
    preload()
    sys.exit(cli.main(["run", str(APP), *address_options(sys.argv[1:])], prog_name="streamlit"))
