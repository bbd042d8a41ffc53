"""Fixtures for the browser tests: one real app server (`python -m ui.serve`, i.e.
`streamlit run app.py` as `make run` starts it) over a real store,
and Debian's chromium driven through Playwright (its own browser download is blocked, so
`playwright install` is never used).

The store holds every Qwen2.5-Math eval run of ../shared/realdata (the session template of
tests/conftest.py) plus a one-problem OmniThought dataset, 'xss-check', whose CoT carries a
<script> tag: the Reader must show it as text.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
SERVER_START_S = 90

XSS_DATASET = "xss-check"
XSS_PAYLOAD = "<script>alert(1)</script>"
XSS_IMG = '<img src="x" onerror="alert(2)">'
XSS_QUESTION = f"What is 2 + 2? {XSS_PAYLOAD}"


def _require_chromium() -> None:
    """In CI a missing chromium is a failure (`make browser` installs it); elsewhere a skip."""
    if CHROMIUM.exists():
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{CHROMIUM} is missing in CI: run `make browser` (apt-get install chromium) first")
    pytest.skip(f"browser tests need Debian's chromium at {CHROMIUM}: sudo apt-get install chromium")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_xss_omnithought(path: Path) -> None:
    """One OmniThought-shaped problem whose question, thought and solution carry a script
    tag (and the thought and solution an <img onerror>), each of which would open a dialog
    if rendered as HTML."""
    row = {
        "id": "xss-1",
        "question": XSS_QUESTION,
        "answer": "4",
        "reasoning": [{
            "thought": f"Let me add. {XSS_PAYLOAD} Two plus two is four. {XSS_IMG}",
            "solution": f"The sum is \\boxed{{4}}. {XSS_PAYLOAD} {XSS_IMG}",
            "teacher": "QwQ-32B",
            "thought_correctness_verify": True,
            "Reasoning_Verbosity": {"level": 3, "judge": "test"},
            "Cognitive_Difficulty": {"level": 1, "judge": "test"},
        }],
    }
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")


@dataclass
class StreamlitServer:
    url: str
    db: Path
    data_dir: Path
    log: Path
    process: subprocess.Popen

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


def _wait_healthy(server: StreamlitServer, port: int) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"streamlit exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                pass
            with urllib.request.urlopen(f"{server.url}/_stcore/health", timeout=2) as resp:
                if resp.status == 200 and resp.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"streamlit did not become healthy in {SERVER_START_S} s:\n{server.log_tail()}")


def start_server(db: Path, data_dir: Path, log: Path, *, extra_args: tuple[str, ...] = (), extra_env: dict | None = None) -> StreamlitServer:
    port = _free_port()
    env = {**os.environ, "THOUGHTSCOPE_DB": str(db), "THOUGHTSCOPE_DATA": str(data_dir), **(extra_env or {})}
    env.setdefault("THOUGHTSCOPE_CACHE", str(ROOT / "data" / "cache"))
    # ui.serve is `streamlit run app.py` as `make run` starts it (see its docstring for why)
    cmd = [
        sys.executable, "-m", "ui.serve",
        "--server.headless=true", "--server.address=127.0.0.1", f"--server.port={port}",
        "--browser.gatherUsageStats=false", "--server.fileWatcherType=none", *extra_args,
    ]
    with open(log, "wb") as log_fh:  # the child keeps its own handle
        process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log_fh, stderr=subprocess.STDOUT)
    server = StreamlitServer(f"http://127.0.0.1:{port}", db, data_dir, log, process)
    try:
        _wait_healthy(server, port)
    except BaseException:
        stop_server(server)
        raise
    return server


def stop_server(server: StreamlitServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=10)


@pytest.fixture(scope="session")
def browser_store(qwen_store_template, tmp_path_factory) -> Path:
    """A copy of the real Qwen store plus the 'xss-check' dataset, verified and counted."""
    from core.ingest import ingest
    from core.tokens import count_tokens_stage
    from core.verify import verify_stage

    folder = tmp_path_factory.mktemp("browser-store")
    db = folder / "store.duckdb"
    shutil.copy(qwen_store_template, db)
    src = folder / "xss.jsonl"
    write_xss_omnithought(src)
    result = ingest(str(src), fmt="omnithought", name=XSS_DATASET, db=db)
    verify_stage(db=db, dataset_id=result.dataset_id, workers=1)
    count_tokens_stage(db=db, dataset_id=result.dataset_id)
    return db


@pytest.fixture(scope="session")
def xss_problem_id(browser_store) -> int:
    from core import store

    rows = store.read_rows(
        "SELECT p.problem_id FROM problems p JOIN datasets d USING (dataset_id) WHERE d.name = ?",
        [XSS_DATASET], db=browser_store,
    )
    assert len(rows) == 1, rows
    return int(rows[0][0])


@pytest.fixture(scope="session")
def app_server(browser_store, tmp_path_factory) -> Iterator[StreamlitServer]:
    """The app served on a free port over ``browser_store``; exports etc. go to a tmp dir."""
    _require_chromium()
    data_dir = tmp_path_factory.mktemp("browser-data")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    server = start_server(browser_store, data_dir, SCREENSHOTS.parent / "streamlit-server.log")
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def chromium():
    _require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Remember a failed test body, so the page fixture can screenshot what it showed."""
    report = yield
    if report.when == "call" and report.failed:
        item.stash[FAILED] = True
    return report


@pytest.fixture
def page(chromium, app_server, request):  # chromium first: without it, skip before building the store
    """A fresh browser context (so a fresh Streamlit session) per test; every dialog the page
    opens is recorded on ``page.dialogs`` and dismissed. A failing test leaves a screenshot
    named FAILED-<test>.png (the server's log is test-artifacts/streamlit-server.log)."""
    context = chromium.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    context.set_default_timeout(30_000)
    pg = context.new_page()
    pg.dialogs = []

    def on_dialog(dialog):
        pg.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    pg.on("dialog", on_dialog)
    yield pg
    if request.node.stash.get(FAILED, False):
        screenshot(pg, "FAILED-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name))
    context.close()


def wait_idle(page, *, quiet_ms: int = 500, timeout_s: float = 60) -> None:
    """Wait until the app has reported 'notRunning' for ``quiet_ms`` in a row.

    A single look at the state is not enough: the rerun an action triggers starts a moment
    after the click, and a page that reruns itself (st.rerun, e.g. the router hand-over on a
    fresh server) reports 'notRunning' for an instant between its two runs.
    """
    app = page.locator("[data-testid='stApp']")
    deadline = time.monotonic() + timeout_s
    idle_since = None
    while time.monotonic() < deadline:
        state = app.get_attribute("data-test-script-state") if app.count() else None
        if state == "notRunning":
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since >= quiet_ms / 1000:
                return
        else:
            idle_since = None
        page.wait_for_timeout(100)
    raise TimeoutError(f"the app was still running after {timeout_s} s (state {state!r})")


def open_page(page, server: StreamlitServer, path: str) -> None:
    """Load ``path`` (e.g. '/reader?problem=1') and wait until its script runs are over."""
    page.goto(f"{server.url}{path}", wait_until="domcontentloaded")
    page.wait_for_selector(IDLE, state="attached", timeout=60_000)
    wait_idle(page)


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
