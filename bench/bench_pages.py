"""Page benchmark: Explore, Distributions and Select rendered server-side and in a real browser,
with the app server's peak memory, beside baselines measured in the same run.

    python bench/bench_pages.py --db STORE [--cots N] [--reruns 7] [--no-browser] [--json] [--workdir DIR]
    python bench/bench_pages.py --cots 300            # a generated store of ~300 CoTs (the test's size)

Server-side (``streamlit.testing`` AppTest on app.py, each page in its own child process, so
its peak RSS is its own; THOUGHTSCOPE_DB points at the store):

* ``first``: the page's first run in a fresh process (empty caches);
* ``rerun``: p50 / p95 of plain reruns (what any click that changes no data costs);
* ``page widget``: p50 / p95 of reruns after a widget of the page itself changes (Explore: the
  page number, Distributions: the number of bins, Select: its first slider);
* ``new filter``: p50 / p95 of reruns after the sidebar filter changes to a value not seen
  before (the token range shrinks each time), so every cached figure is recomputed.

Baselines in the same child: an empty Streamlit page's rerun (Streamlit's own floor) and the
bare DuckDB queries behind the page (Explore: count + one sorted page; Distributions and Select:
every matching CoT's numbers fetched as Arrow), run on one read-only connection.

Browser: the real server (``python -m ui.serve``, as ``make run`` starts it), each page loaded
in Debian's chromium through Playwright in a fresh context (a new session), timed from
navigation until the page's main element is visible and the app reports ``notRunning``; first
on a fresh server (cold caches), then again (warm). The server's RSS, children included, is
sampled every 50 ms for its peak. With ``--json`` the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `core` and `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import MB, ROOT, ChildFailed, format_table, log, machine_load, python_child, run_child  # noqa: E402
from bench.stores import bench_store  # noqa: E402

SCRIPT = str(Path(__file__).resolve())
PAGES = {"explore": "pages/explore.py", "distributions": "pages/distributions.py", "select": "pages/select.py"}
# what shows that a page's main content is there, in the browser
MAIN_ELEMENT = {
    "explore": "[data-testid='stDataFrame']",
    "distributions": "[data-testid='stPlotlyChart']",
    "select": "[data-testid='stMetric']",
}
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TARGET_RERUN_S = 0.5
TARGET_BROWSER_S = 2.0
TARGET_RSS_BYTES = 2e9


def _quantiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None, "n": 0, "values": []}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": statistics.median(ordered), "p95": p95, "n": len(values), "values": values}


# --------------------------------------------------------------------------- AppTest child


def _timed_run(at) -> float:
    started = time.perf_counter()
    at.run()
    seconds = time.perf_counter() - started
    if at.exception:
        raise RuntimeError(f"the page raised: {[e.value for e in at.exception][:2]}")
    return seconds


def _page_widget(at, page: str, i: int) -> None:
    """Change a widget of the page itself (not the sidebar)."""
    if page == "explore":
        widget = at.number_input(key="explore_page")
        widget.set_value(2 + i % 2 if (widget.proto.max or 1) >= 3 else 1)
    elif page == "distributions":
        at.number_input(key="dist_bins").set_value(30 + 5 * (i % 2))
    else:
        sliders = list(at.main.slider)
        if not sliders:
            raise RuntimeError("the Select page shows no slider to move")
        s = sliders[0]
        lo, hi = s.min, s.max
        if isinstance(s.value, (tuple, list)):
            s.set_value((lo, hi) if i % 2 else (lo, lo + (hi - lo) / 2 if isinstance(hi, float) else (lo + hi) // 2))
        else:
            s.set_value(hi if i % 2 else lo + ((hi - lo) / 2 if isinstance(hi, float) else (hi - lo) // 2))


def _child_apptest(args: dict) -> dict:
    import cProfile
    import pstats

    os.environ["THOUGHTSCOPE_DB"] = args["db"]
    os.environ.setdefault("THOUGHTSCOPE_DATA", args["data"])
    from streamlit.testing.v1 import AppTest

    page, reruns = args["page"], args["reruns"]
    # Streamlit's floor: an empty page's rerun in the same process
    empty = AppTest.from_string("import streamlit as st\nst.write('x')", default_timeout=60)
    empty.run()
    empty_runs = [_timed_run(empty) for _ in range(reruns)]

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=900)
    at.run()
    at.switch_page(PAGES[page])
    first = _timed_run(at)
    if at.error:
        raise RuntimeError(f"the page shows errors: {[e.value for e in at.error][:2]}")
    plain = [_timed_run(at) for _ in range(reruns)]
    widget = []
    for i in range(reruns):
        _page_widget(at, page, i)
        widget.append(_timed_run(at))
    # a second visitor: a new session opening the page with the same filter while the caches
    # are warm (what a browser's warm load asks of the server); before the new filters below,
    # which may push this filter's frame out of the cache
    again = AppTest.from_file(str(ROOT / "app.py"), default_timeout=900)
    again.run()
    again.switch_page(PAGES[page])
    new_session = _timed_run(again)
    profile = cProfile.Profile() if args.get("profile") else None
    hi = at.sidebar.slider(key="f_tokens").max
    new_filter = []
    for i in range(reruns):
        # looked up again each time: an element from before a run no longer sets anything
        at.sidebar.slider(key="f_tokens").set_value((0, max(1, int(hi * (0.95 - 0.05 * i)))))
        if profile:
            profile.enable()
        new_filter.append(_timed_run(at))
        if profile:
            profile.disable()
    if profile:
        profile.dump_stats(args["profile"])
        stats = pstats.Stats(args["profile"])
        stats.sort_stats("cumulative")
    return {
        "page": page, "first": first, "new_session_warm": new_session, "rerun": _quantiles(plain),
        "page_widget": _quantiles(widget),
        "new_filter": _quantiles(new_filter), "empty_page_rerun": _quantiles(empty_runs),
        "bare_duckdb": _bare_queries(page, args["db"]),
    }


def _bare_queries(page: str, db: str) -> dict:
    """The store queries behind the page on one bare read-only DuckDB connection, timed (best
    of 3): what the page would cost if it did nothing but ask DuckDB."""
    import duckdb

    from core import queries
    from core.queries import CotFilter

    src = queries.default_sources(db=db)
    f = CotFilter(rv_source=src["rv"], cd_source=src["cd"], correct_source=src["correct"])
    sql, params = queries.matching_sql(f, db=db)
    con = duckdb.connect(db, read_only=True)
    if page == "explore":
        # the least SQL that gives the page: the count and one page of rows need no scores
        # (the filter has no score constraint); the page's 50 rows then get theirs
        lean, lean_params = queries.matching_sql(CotFilter(), db=db)
        statements = [
            (f"SELECT count(*), count(DISTINCT problem_id) FROM ({lean})", lean_params),
            (f"SELECT m.*, left(p.question, 120) FROM ({lean}) m JOIN problems p ON p.problem_id = m.problem_id "
             f"ORDER BY cot_id LIMIT 50", lean_params),
            ("SELECT cot_id, source_id, metric, value FROM scores WHERE cot_id IN "
             f"(SELECT cot_id FROM ({lean}) ORDER BY cot_id LIMIT 50)", lean_params),
        ]
    else:
        statements = [(f"SELECT cot_id, problem_id, dataset, model, benchmark, n_tokens, n_reflections, truncated, "
                       f"rv, cd, correct FROM ({sql})", params)]
    best = None
    for _ in range(3):
        started = time.perf_counter()
        for statement, bound in statements:
            con.execute(statement, bound).to_arrow_table()
        took = time.perf_counter() - started
        best = took if best is None else min(best, took)
    con.close()
    return {"seconds": best, "statements": len(statements)}


# --------------------------------------------------------------------------- browser


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RssSampler(threading.Thread):
    """The peak RSS of a process and its children, sampled every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        import psutil

        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.stop_event = threading.Event()

    def current(self) -> int:
        import psutil

        total = 0
        try:
            procs = [self.process, *self.process.children(recursive=True)]
        except psutil.Error:
            return 0
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        return total

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.peak = max(self.peak, self.current())
            self.stop_event.wait(self.interval)

    def stop(self) -> int:
        self.stop_event.set()
        self.join(timeout=5)
        return self.peak


def _start_server(db: str, data: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "THOUGHTSCOPE_DB": db, "THOUGHTSCOPE_DATA": str(data)}
    cmd = [sys.executable, "-m", "ui.serve", "--server.headless=true", "--server.address=127.0.0.1",
           f"--server.port={port}", "--browser.gatherUsageStats=false", "--server.fileWatcherType=none"]
    with open(log_path, "wb") as fh:
        process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ChildFailed(f"the app server exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                if resp.status == 200:
                    return process, url
        except OSError:
            pass
        time.sleep(0.2)
    process.terminate()
    raise ChildFailed(f"the app server did not answer in 120 s: {log_path.read_text()[-2000:]}")


def _load_page(browser, url: str, selector: str, *, settle_ms: int = 300, timeout_s: float = 600,
               context=None) -> float:
    """Seconds from navigation until ``selector`` is visible and the app has been idle
    (``notRunning``) for ``settle_ms`` (the settle time itself is not counted). In a new browser
    context (nothing cached in the browser) unless ``context`` is given (then its HTTP cache
    holds what an earlier visit fetched, and it stays open)."""
    own = context is None
    context = context or browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    try:
        started = time.perf_counter()
        page.goto(url, wait_until="domcontentloaded")
        app = page.locator("[data-testid='stApp']")
        main = page.locator(selector).first
        shown_at = None
        deadline = started + timeout_s
        while time.perf_counter() < deadline:
            state = app.get_attribute("data-test-script-state") if app.count() else None
            ok = state == "notRunning" and main.count() > 0 and main.is_visible()
            now = time.perf_counter()
            if ok:
                shown_at = shown_at or now
                if now - shown_at >= settle_ms / 1000:
                    errors = page.locator("[data-testid='stException']").count()
                    if errors:
                        raise ChildFailed(f"{url} shows an exception")
                    return shown_at - started
            else:
                shown_at = None
            page.wait_for_timeout(25)
        raise ChildFailed(f"{url}: {selector} not shown with the app idle within {timeout_s:.0f} s")
    finally:
        page.close()
        if own:
            context.close()


def browser_run(db: str, workdir: Path, pages: list[str]) -> dict:
    from playwright.sync_api import sync_playwright

    data = workdir / "app-data"
    data.mkdir(parents=True, exist_ok=True)
    process, url = _start_server(db, data, workdir / "server.log")
    sampler = RssSampler(process.pid)
    idle_rss = sampler.current()
    sampler.start()
    out: dict = {"pages": {}, "server_idle_rss_bytes": idle_rss}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                for page in pages:
                    log(f"browser: /{page} (cold, then warm)")
                    cold = _load_page(browser, f"{url}/{page}", MAIN_ELEMENT[page])
                    warm = _load_page(browser, f"{url}/{page}", MAIN_ELEMENT[page])
                    # a researcher's own browser coming back: the server's caches and the
                    # browser's HTTP cache (Streamlit's and Plotly's scripts) both warm
                    visitor = browser.new_context(viewport={"width": 1400, "height": 1000})
                    try:
                        _load_page(browser, f"{url}/{page}", MAIN_ELEMENT[page], context=visitor)
                        repeat = _load_page(browser, f"{url}/{page}", MAIN_ELEMENT[page], context=visitor)
                    finally:
                        visitor.close()
                    out["pages"][page] = {"cold": cold, "warm": warm, "repeat_view": repeat,
                                          "rss_after_bytes": sampler.current()}
            finally:
                browser.close()
    finally:
        out["server_peak_rss_bytes"] = sampler.stop()
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
    return out


# --------------------------------------------------------------------------- the run


def run(db: str | None, n_cots: int | None, reruns: int, pages: list[str], browser: bool, workdir: Path,
        profile: bool) -> dict:
    logs = workdir / "logs"
    load_before = machine_load()
    info = bench_store(workdir, source=db, n_cots=n_cots)
    result: dict = {"bench": "pages", "store": info, "cots": info["cots"], "load_before": load_before,
                    "server": {}, "browser": None}
    for page in pages:
        log(f"AppTest: {page}")
        args = {"db": info["path"], "page": page, "reruns": reruns, "data": str(workdir / "app-data")}
        if profile:
            args["profile"] = str(workdir / f"profile-{page}.pstats")
        child = run_child(python_child([SCRIPT, "_child", "apptest", json.dumps(args)]), logdir=logs,
                          name=f"apptest-{page}")
        result["server"][page] = {**child.last_json(), "peak_rss_bytes": child.max_rss_bytes}
    if browser:
        if not CHROMIUM.exists():
            raise ChildFailed(f"the browser figures need Debian's chromium at {CHROMIUM} (or pass --no-browser)")
        result["browser"] = browser_run(info["path"], workdir, pages)
    result["load_after"] = machine_load()
    return result


def _load(load: dict) -> str:
    return f"{load['load_1m']:.2f}/{load['load_5m']:.2f}/{load['load_15m']:.2f}"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f}"


def report(r: dict) -> str:
    head = (f"Page benchmark: {r['cots']:,} CoTs ({r['store']['path']}); load average (1/5/15 min) before "
            f"{_load(r['load_before'])}, after {_load(r['load_after'])}; {r['load_before']['cpus']} CPUs. "
            f"Times in ms; targets: rerun <= {TARGET_RERUN_S * 1000:.0f} ms server-side, browser <= "
            f"{TARGET_BROWSER_S:.0f} s, server peak RSS <= {TARGET_RSS_BYTES / 1e9:.0f} GB.")
    headers = ["page", "first", "new session", "rerun p50", "rerun p95", "widget p50", "widget p95", "new filter p50",
               "new filter p95", "empty page p50", "bare DuckDB", "new filter / bare", "peak RSS MB"]
    rows = []
    for page, s in r["server"].items():
        bare = s["bare_duckdb"]["seconds"]
        rows.append([page, _ms(s["first"]), _ms(s.get("new_session_warm")), _ms(s["rerun"]["p50"]), _ms(s["rerun"]["p95"]),
                     _ms(s["page_widget"]["p50"]), _ms(s["page_widget"]["p95"]), _ms(s["new_filter"]["p50"]),
                     _ms(s["new_filter"]["p95"]), _ms(s["empty_page_rerun"]["p50"]), _ms(bare),
                     f"{s['new_filter']['p50'] / bare:.1f}x" if bare else "-", s["peak_rss_bytes"] / MB])
    parts = [head, "Server-side (AppTest):\n" + format_table(headers, rows)]
    md = ["| CoTs | page | first run | new session (warm) | rerun p50 / p95 | page widget p50 / p95 | new filter p50 / p95 | "
          "bare DuckDB | empty page | browser cold / warm / repeat view | AppTest peak RSS |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    b = r.get("browser") or {"pages": {}}
    for page, s in r["server"].items():
        bp = b["pages"].get(page)
        shown = f"{bp['cold']:.2f} / {bp['warm']:.2f} / {bp['repeat_view']:.2f} s" if bp else "-"
        md.append(
            f"| {r['cots']:,} | {page} | {_ms(s['first'])} ms | {_ms(s.get('new_session_warm'))} ms | {_ms(s['rerun']['p50'])} / {_ms(s['rerun']['p95'])} ms | "
            f"{_ms(s['page_widget']['p50'])} / {_ms(s['page_widget']['p95'])} ms | "
            f"{_ms(s['new_filter']['p50'])} / {_ms(s['new_filter']['p95'])} ms | {_ms(s['bare_duckdb']['seconds'])} ms | "
            f"{_ms(s['empty_page_rerun']['p50'])} ms | {shown} | {s['peak_rss_bytes'] / MB:,.0f} MB |")
    if r.get("browser"):
        brows = [[page, f"{v['cold']:.2f}", f"{v['warm']:.2f}", f"{v['repeat_view']:.2f}", v["rss_after_bytes"] / MB]
                 for page, v in b["pages"].items()]
        parts.append("Browser (chromium, seconds until shown; cold and warm: the server's caches, each in a new browser "
                     "context; repeat view: the browser's HTTP cache warm too):\n"
                     + format_table(["page", "cold s", "warm s", "repeat view s", "server RSS after MB"], brows))
        parts.append(f"App server peak RSS (children included): {b['server_peak_rss_bytes'] / MB:,.0f} MB "
                     f"(idle after start {b['server_idle_rss_bytes'] / MB:,.0f} MB)")
        md.append(f"\nApp server peak RSS over the browser run: {b['server_peak_rss_bytes'] / MB:,.0f} MB.")
    parts.append("README table:\n" + "\n".join(md))
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the Explore, Distributions and Select pages.")
    parser.add_argument("--db", help="the store (opened read-only); default: a generated one")
    parser.add_argument("--cots", type=int, help="only the first ~N CoTs of --db (a subset store); without --db, "
                                                 "the size of the generated store (default 300)")
    parser.add_argument("--reruns", type=int, default=7, help="reruns per kind (p50 / p95 over them)")
    parser.add_argument("--pages", default=",".join(PAGES), help=f"comma-separated, of {', '.join(PAGES)}")
    parser.add_argument("--no-browser", action="store_true", help="server-side figures only")
    parser.add_argument("--profile", action="store_true", help="cProfile the new-filter reruns (workdir/profile-PAGE.pstats)")
    parser.add_argument("--json", action="store_true", help="also print the result as one JSON line, last")
    parser.add_argument("--workdir", help="where subset stores and logs go (kept); default a temporary folder")
    args = parser.parse_args(argv)
    pages = [p.strip() for p in args.pages.split(",") if p.strip()]
    if not pages or any(p not in PAGES for p in pages):
        parser.error(f"--pages takes a comma-separated list of {', '.join(PAGES)}")
    if args.reruns < 1 or (args.cots is not None and args.cots < 1):
        parser.error("--reruns and --cots must be >= 1")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-pages-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args.db, args.cots, args.reruns, pages, not args.no_browser, workdir, args.profile)
    except ChildFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report(result))
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        print(json.dumps({"apptest": _child_apptest}[sys.argv[2]](json.loads(sys.argv[3]))))
    else:
        sys.exit(main())
