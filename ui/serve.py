"""Start the app: `python -m ui.serve [streamlit options]` (what `make run` does).

Streamlit treats an app beside a pages/ folder as an old-style multipage app until
st.navigation has run once in the server's life, so the very first request straight to
/explore would run that page without app.py's frame. Clearing the flag before the server
starts makes app.py route every request from the first one.
"""

import sys
from pathlib import Path

from streamlit.runtime.pages_manager import PagesManager
from streamlit.web import cli

APP = Path(__file__).resolve().parent.parent / "app.py"

if __name__ == "__main__":
    PagesManager.uses_pages_directory = False
    sys.exit(cli.main(["run", str(APP), *sys.argv[1:]], prog_name="streamlit"))
