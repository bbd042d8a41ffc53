"""Start the app: `python -m ui.serve [--team] [streamlit options]` (what `make run` does).

It listens on 127.0.0.1 only, so nobody else on the network reaches it. Serving a team is
an explicit choice: `--team` listens on every interface (`make run TEAM=1`), or
$THOUGHTSCOPE_ADDRESS / `--server.address` names the address; the README's "Security and
failure model" says what that exposes and how to add a login.

Streamlit treats an app beside a pages/ folder as an old-style multipage app until
st.navigation has run once in the server's life, so the very first request straight to
/explore would run that page without app.py's frame. Clearing the flag before the server
starts makes app.py route every request from the first one.
"""

import os
import sys
from pathlib import Path

from streamlit.runtime.pages_manager import PagesManager
from streamlit.web import cli

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


if __name__ == "__main__":
    PagesManager.uses_pages_directory = False
    sys.exit(cli.main(["run", str(APP), *address_options(sys.argv[1:])], prog_name="streamlit"))
