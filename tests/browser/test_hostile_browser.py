"""Issue 9 in a real browser: dataset text cannot make a reader's browser request anything,
a slow SQL console query in one session does not hold up another session's page, and with
sign-in configured an anonymous visitor gets only the login, whatever URL they open.

    .venv/bin/python -m pytest tests/browser/test_hostile_browser.py -q    # Debian's chromium

The servers here run over a small store of their own: a generated OmniThought-shaped
dataset plus 'beacon-check', whose question, CoTs, teacher names and answers carry every
way Markdown, HTML, CSS and LaTeX have of loading something from elsewhere, all pointing at
a local 'tracker' HTTP server that counts what it is asked for.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from core import store
from .conftest import (
    IDLE,
    _require_chromium,
    open_page,
    screenshot,
    start_server,
    stop_server,
    wait_idle,
)

pytestmark = pytest.mark.browser

BEACON_DATASET = "beacon-check"
TOKEN = "beacon-9f3c"  # in every URL the payloads name, so any request for one is recognised


class Tracker:
    """A local HTTP server standing for an attacker's: it answers every request (a tiny
    image, an empty stylesheet) and records the path."""

    def __init__(self) -> None:
        hits: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server API
                hits.append(self.path)
                body = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;" if ".css" not in self.path else b""
                self.send_response(200)
                self.send_header("Content-Type", "text/css" if ".css" in self.path else "image/gif")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.hits = hits
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"{self.origin}/{TOKEN}/{name}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def payloads(t: Tracker) -> str:
    """Every syntax in one text: Markdown images (inline, reference, collapsed, shortcut,
    nested alt, angle-bracket URL, relative to the app's own host), raw HTML that loads
    (img, picture, iframe, video poster, audio, object, embed, svg image, link, style, style
    attribute, body background, meta refresh), autolinks and bare URLs, and LaTeX commands
    that load or link (KaTeX's includegraphics, href, url)."""
    return "\n\n".join([
        f"Inline ![inline]({t.url('md-inline.gif')}) and titled ![t]({t.url('md-title.gif')} \"title\").",
        "Reference ![ref][r1], collapsed ![coll][] and shortcut ![short].",
        f"[r1]: {t.url('md-ref.gif')}\n[coll]: {t.url('md-collapsed.gif')}\n[short]: {t.url('md-shortcut.gif')}",
        f"Nested ![a [nested] alt]({t.url('md-nested.gif')}) and angle ![angle](<{t.url('md-angle.gif')}>).",
        f"Relative ![rel](/{TOKEN}/relative.gif) and protocol-relative ![pr](//127.0.0.1:1/{TOKEN}/pr.gif).",
        f'HTML <img src="{t.url("html-img.gif")}"> <img srcset="{t.url("html-srcset.gif")} 2x">',
        f'<picture><source srcset="{t.url("picture.gif")}"></picture> <iframe src="{t.url("iframe.html")}"></iframe>',
        f'<video poster="{t.url("poster.gif")}"></video> <audio src="{t.url("audio.mp3")}"></audio>',
        f'<object data="{t.url("object.gif")}"></object> <embed src="{t.url("embed.gif")}">',
        f'<svg><image href="{t.url("svg-image.gif")}"/></svg> <input type="image" src="{t.url("input.gif")}">',
        f'<link rel="stylesheet" href="{t.url("link.css")}"> <link rel="prefetch" href="{t.url("prefetch.gif")}">',
        f"<style>body {{ background: url({t.url('style-tag.gif')}) }} @import url({t.url('import.css')});</style>",
        f'<div style="background-image: url(\'{t.url("style-attr.gif")}\')">styled</div>',
        f'<body background="{t.url("body-bg.gif")}"> <table background="{t.url("table-bg.gif")}"></table>',
        f'<meta http-equiv="refresh" content="0; url={t.url("refresh.html")}">',
        f"Autolink <{t.url('autolink.gif')}> and bare {t.url('bare.gif')} and www.example.invalid/{TOKEN}.gif",
        f"Math $\\includegraphics{{{t.url('katex-graphic.gif')}}}$ and $\\href{{{t.url('katex-href')}}}{{x}}$ "
        f"and $\\url{{{t.url('katex-url')}}}$.",
        f"$$\n\\includegraphics[height=1em]{{{t.url('katex-display.gif')}}}\n$$",
        f":material/image: :red[![directive]({t.url('directive.gif')})]",
    ])


def write_beacon_dataset(path: Path, t: Tracker) -> None:
    text = payloads(t)
    label = f'teacher ![m]({t.url("model.gif")}) <img src="{t.url("model-img.gif")}"> <span style="fill:url({t.url("model-svg.gif")}#x)">m</span>'
    row = {
        "id": "beacon-1",
        "question": "What is 2 + 2? " + text,
        "answer": f"4 ![a]({t.url('answer.gif')})",
        "reasoning": [
            {
                "thought": "Let me add. Wait, let me check.\n\n" + text,
                "solution": "The sum is \\boxed{4}.\n\n" + text,
                "teacher": label if i == 0 else f"other ![o]({t.url('model2.gif')})",
                "thought_correctness_verify": True,
                "Reasoning_Verbosity": {"level": 3 + i, "judge": f"judge ![j]({t.url('judge.gif')})"},
                "Cognitive_Difficulty": {"level": 1, "judge": "test"},
            }
            for i in range(2)
        ],
    }
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def tracker() -> Iterator[Tracker]:
    t = Tracker()
    yield t
    t.close()


@pytest.fixture(scope="module")
def beacon_store(tracker, tmp_path_factory) -> tuple[Path, int]:
    """A small generated dataset (so every chart has data) and 'beacon-check'; verified and
    counted. A copy of 'beacon-check' under another hostile name, problem keys and
    near-duplicates (so the Reader's "Elsewhere" section lists it), steps from a source with a
    hostile name (the Reader's step view) and a map (the Map page). Returns the store and the
    beacon problem's id."""
    _require_chromium()
    from core.demo import write_omnithought
    from core.ingest import ingest
    from core.tokens import count_tokens_stage
    from core.verify import verify_stage

    folder = tmp_path_factory.mktemp("beacon-store")
    db = folder / "store.duckdb"
    demo = folder / "demo.parquet"
    write_omnithought(demo, 20, seed=5, text_scale=0.05)
    ingest(str(demo), name="demo (generated)", db=db, generated=True)
    src = folder / "beacon.jsonl"
    write_beacon_dataset(src, tracker)
    # the dataset's name carries a payload too (names are shown on every page)
    result = ingest(str(src), fmt="omnithought", name=f"{BEACON_DATASET} ![d]({tracker.url('dataset.gif')})", db=db)
    copy = folder / "beacon-copy.jsonl"  # the same question under another key: "the same problem" elsewhere
    copy.write_text(src.read_text(encoding="utf-8").replace('"beacon-1"', '"beacon-2"'), encoding="utf-8")
    ingest(str(copy), fmt="omnithought", name=f"beacon copy ![c]({tracker.url('copy.gif')})", db=db)
    verify_stage(db=db, workers=1)
    count_tokens_stage(db=db)
    from core.identity import run_problem_keys
    from core.neardup import run_near_duplicates
    from core.problem_map import MapOptions, run_map
    from core.step_stage import StepOptions, run_steps

    run_problem_keys(db=db)
    run_near_duplicates(db=db)
    run_steps(db=db, options=StepOptions(source_name=f"steps ![s]({tracker.url('steps.gif')})"))
    run_map(db=db, options=MapOptions(projection="pca", clusters=2))
    problem = store.read_rows("SELECT problem_id FROM problems WHERE dataset_id = ?", [result.dataset_id], db=db)[0][0]
    return db, int(problem)


@pytest.fixture(scope="module")
def beacon_server(beacon_store, tmp_path_factory):
    db, _ = beacon_store
    # a console time limit short enough for the two-session test to wait out
    server = start_server(db, tmp_path_factory.mktemp("beacon-data"), tmp_path_factory.mktemp("logs") / "server.log",
                          extra_env={"THOUGHTSCOPE_CONSOLE_TIMEOUT_S": "10"})
    yield server
    stop_server(server)


@pytest.fixture
def recorded(chromium):
    """A browser context that records the URL of every request any of its pages makes."""
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(60_000)
    urls: list[str] = []
    context.on("request", lambda request: urls.append(request.url))
    yield context, urls
    context.close()


def _open_everything_on_the_reader(page) -> None:
    """Open every expander (thinking, reference solution, compare) and every 'Show all'."""
    main = page.locator("[data-testid='stMain']")
    for _ in range(16):  # thinking, steps, "Elsewhere", reference solution, compare: each opens on a rerun
        closed = main.locator("details:not([open]) > summary")
        if closed.count() == 0:
            break
        closed.first.click()
        wait_idle(page)
    toggles = main.locator("[data-testid='stCheckbox'], [data-testid='stToggle']").filter(has_text="Show all")
    for i in range(toggles.count()):
        toggles.nth(i).locator("label").click()
        wait_idle(page)


def test_dataset_text_makes_no_request_to_any_host(recorded, beacon_server, beacon_store, tracker):
    context, urls = recorded
    _, problem_id = beacon_store
    page = context.new_page()
    open_page(page, beacon_server, f"/reader?problem={problem_id}")
    _open_everything_on_the_reader(page)
    page.wait_for_timeout(1500)  # images, fonts and stylesheets load after the DOM settles
    shot = screenshot(page, "beacon-reader")
    text = page.locator("[data-testid='stMain']").inner_text()
    assert "What is 2 + 2?" in text and "image removed: inline" in text, f"the CoT did not render ({shot})"
    # the step view and the "Elsewhere" section rendered, with the hostile names as text
    assert "![s](" in text and "The same problem" in text and "![c](" in text, f"steps or Elsewhere missing ({shot})"
    assert "Sign in" not in text
    # every other page, where names, answers and labels from the data show
    for path in ("/overview", "/explore", "/distributions", "/agreement", "/select", "/export", "/jobs", "/sql", "/map"):
        open_page(page, beacon_server, path)
        page.wait_for_timeout(500)
        if path == "/distributions":  # every tab: a closed one draws nothing
            for tab in page.locator("[data-testid='stMain'] [role='tab']").all()[1:]:
                tab.click()
                wait_idle(page)
    page.wait_for_timeout(1500)

    app_origin = beacon_server.url
    outside = [u for u in urls if not u.startswith(app_origin) and not u.startswith(("data:", "blob:", "about:"))]
    beacons = [u for u in urls if TOKEN in u]
    assert tracker.hits == [], f"the tracker was asked for {tracker.hits} (screenshot {shot})"
    assert beacons == [], beacons
    assert outside == [], outside
    assert len(urls) > 20  # the recording worked: the app's own scripts and styles are in it


def _server_with_login(db: Path, tmp_path: Path):
    secrets = tmp_path / "secrets.toml"
    secrets.write_text(
        "[auth]\n"
        'redirect_uri = "http://localhost:8501/oauth2callback"\n'
        'cookie_secret = "browser-test-cookie-secret"\n'
        'client_id = "thoughtscope-test"\n'
        'client_secret = "not-a-secret"\n'
        'server_metadata_url = "http://127.0.0.1:9/.well-known/openid-configuration"\n'
    )
    return start_server(db, tmp_path / "data", tmp_path / "login-server.log", extra_args=(f"--secrets.files={secrets}",))


def test_with_login_configured_every_url_shows_only_the_login(chromium, beacon_store, tmp_path):
    db, problem_id = beacon_store
    server = _server_with_login(db, tmp_path)
    try:
        context = chromium.new_context(viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(60_000)
        page = context.new_page()
        # a fresh server, deep links first: no page may run before the router has
        for path in ("/sql", f"/reader?problem={problem_id}", "/explore", "/jobs", "/", "/overview"):
            open_page(page, server, path)
            main = page.locator("[data-testid='stMain']")
            text = main.inner_text()
            shot = screenshot(page, "login-gate" + path.replace("/", "-").replace("?", "-"))
            assert "This ThoughtScope server needs you to sign in." in text, (path, shot)
            assert main.get_by_role("button", name="Sign in").is_visible(), (path, shot)
            for leaked in ("What is 2 + 2", BEACON_DATASET, "SQL console", "Datasets", "Reader"):
                assert leaked not in page.locator("body").inner_text(), (path, leaked, shot)
            assert page.locator("[data-testid='stSidebarNav']").count() == 0
            assert page.locator("[data-testid='stDataFrame'], textarea, [data-testid='stTextInput']").count() == 0
        context.close()
    finally:
        stop_server(server)


def test_slow_console_query_in_one_session_does_not_hold_up_another(chromium, beacon_server):
    """Session A runs a console query that takes its whole time limit; session B opens the
    Explore page meanwhile and gets it while A's query is still running."""
    a_context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    b_context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    try:
        a = a_context.new_page()
        open_page(a, beacon_server, "/sql")
        a.locator("textarea").fill("SELECT count(*) FROM range(1000000000000) r WHERE r.range % 7 = 99")
        a.get_by_role("button", name="Run").click()
        app_a = a.locator("[data-testid='stApp']")
        a.wait_for_selector("[data-testid='stApp'][data-test-script-state='running']", state="attached")
        page_b = b_context.new_page()
        open_page(page_b, beacon_server, "/explore")
        # B has its page (Explore's table of CoTs) while A's script is still running its query
        # (the table is drawn a moment after the script reports idle: waited for, not sampled once)
        page_b.locator("[data-testid='stMain'] [data-testid='stDataFrame']").first.wait_for(state="visible", timeout=15_000)
        assert app_a.get_attribute("data-test-script-state") == "running"
        screenshot(page_b, "two-sessions-b-explore")
        # A ends with the time-limit sentence (20 s on this server), not a traceback
        a.wait_for_selector(IDLE, state="attached", timeout=120_000)
        wait_idle(a)
        error = a.locator("[data-testid='stAlertContentError']").inner_text()
        assert "ran too long" in error
    finally:
        a_context.close()
        b_context.close()

