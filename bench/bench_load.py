"""Load benchmark: a lab on one app server. N browser sessions at once, each moving through its
own sequence of new sidebar filters across Explore, Distributions and Select, optionally while
a writer commits scores to the store; per-page p50 / p95, the server's peak RSS, errors seen.

    python bench/bench_load.py --db STORE [--cots N] [--sessions 8] [--steps 6] [--writer] [--json]
    python bench/bench_load.py --cots 300 --sessions 2 --steps 3 --writer   # a generated store (the test's size)

The server is the real one (``python -m ui.serve``, as ``make run`` starts it), with
``THOUGHTSCOPE_DB`` at the store and ``THOUGHTSCOPE_FRAME_CACHE_MB`` as given. One Debian
chromium (``/usr/bin/chromium``) runs N Playwright contexts (each its own cookies and Streamlit
session) driven concurrently from one asyncio loop. Session i's step j opens page
``PAGES[(i + j) % 3]`` with a filter in the URL that no other step uses (a reflection-marker
range, or a token range where the store has token counts, widest first), so every step asks
the server for figures nobody has cached: the worst case a lab can make. A step's time runs from
navigation until the page's main element is visible with the app idle (``notRunning``) for
``--settle-ms`` (the settle itself not counted), as in ``bench_pages.py``; a Streamlit exception
box, a page that never settles, or a browser error is recorded as an error of that step.

``--writer``: a child process that, every ``--write-every`` seconds, commits one batch of scores
(``--write-batch`` CoTs, metric ``load_probe`` under the stage source ``bench-load``) through
``core.store`` the way a stage publishes its figures. Each commit changes the store's write
stamp, so every cached figure is stale afterwards, and the readers meet the writer's file lock
(``core.store`` retries). The writer needs a store it may write: with ``--writer`` the bench
works on a copy in the workdir (a subset with ``--cots``), never on ``--db`` itself, unless
``--writable`` says ``--db`` is already a scratch copy.

The server's RSS, its children included, is sampled every 50 ms (psutil) for its peak and
its trace. With ``--json`` the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `core` and `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_pages import CHROMIUM, CHROMIUM_ARGS, MAIN_ELEMENT, RssSampler, _start_server  # noqa: E402
from bench.common import MB, ROOT, ChildFailed, format_table, log, machine_load  # noqa: E402
from bench.stores import bench_store  # noqa: E402

PAGES = ("explore", "distributions", "select")
TARGET_P50_S, TARGET_P95_S, TARGET_RSS_BYTES = 2.0, 3.0, 2e9
WRITER_SOURCE = "bench-load"


def _quantiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None, "max": None, "n": 0}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": statistics.median(ordered), "p95": p95, "max": ordered[-1], "n": len(ordered)}


# --------------------------------------------------------------------------- the filters


def filter_plan(db: str, sessions: int, steps: int) -> list[list[dict]]:
    """Per session, its steps' URL parameters: distinct ranges, widest first (a wide range
    matches most CoTs: the most work a new filter can ask for)."""
    import duckdb

    from core.queries import CotFilter

    con = duckdb.connect(db, read_only=True)
    try:
        max_tokens, max_refl = con.execute("SELECT max(n_tokens), max(n_reflections) FROM cots").fetchone()
    finally:
        con.close()
    need = sessions * steps
    if max_tokens:  # token counts: ranges trimmed a little from each end, in steps of top / 4 * need
        step = max(1, int(max_tokens) // (4 * need))
        ranges = [("tokens_range", (i * step, int(max_tokens) - i * step)) for i in range(need)]
    else:
        top = int(max_refl or 0)
        pairs = sorted(((lo, hi) for lo in range(top + 1) for hi in range(lo, top + 1)), key=lambda p: (p[0] - p[1], p))
        if len(pairs) < need:
            raise ChildFailed(f"the store has no token counts and only {len(pairs)} reflection ranges for "
                              f"{need} distinct filters; use fewer sessions or steps")
        ranges = [("reflections_range", pair) for pair in pairs[:need]]
    plan = []
    for i in range(sessions):
        steps_of = []
        for j in range(steps):
            field, value = ranges[j * sessions + i]  # interleaved: every session starts on a wide range
            steps_of.append({"page": PAGES[(i + j) % len(PAGES)], "params": CotFilter(**{field: value}).to_params()})
        plan.append(steps_of)
    return plan


# --------------------------------------------------------------------------- the writer


def _writer_child(args: dict) -> None:
    """Commit a batch of scores every ``every`` seconds until killed; one JSON line per commit."""
    import random

    from core import store

    db, every, batch = args["db"], float(args["every"]), int(args["batch"])
    ids = [r[0] for r in store.read_rows("SELECT cot_id FROM cots ORDER BY cot_id", db=db)]
    rng = random.Random(0)
    offset = 0
    while True:
        chunk = ids[offset:offset + batch] or ids[:batch]
        offset = offset + batch if offset + batch < len(ids) else 0
        started = time.perf_counter()
        try:
            with store.connect(db, read_only=False) as con:
                con.execute("BEGIN")
                source_id = store.ensure_source(con, WRITER_SOURCE, "stage", params=json.dumps({"bench": "load"}))
                con.execute("DELETE FROM scores WHERE source_id = ? AND cot_id IN (SELECT unnest(?::BIGINT[]))",
                            [source_id, chunk])
                con.execute("INSERT INTO scores (cot_id, source_id, metric, value) SELECT unnest(?::BIGINT[]), ?, "
                            "'load_probe', unnest(?::DOUBLE[])", [chunk, source_id, [rng.random() for _ in chunk]])
                con.execute("COMMIT")
        except store.StoreBusy as exc:  # the readers held the file for the whole timeout: say so, go on
            print(json.dumps({"busy": str(exc), "seconds": time.perf_counter() - started, "at": time.time()}), flush=True)
            continue
        print(json.dumps({"committed": len(chunk), "seconds": time.perf_counter() - started, "at": time.time()}),
              flush=True)
        time.sleep(every)


def _start_writer(db: str, every: float, batch: int, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with open(log_path, "wb") as fh:
        return subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "_writer", json.dumps({"db": db, "every": every, "batch": batch})],
            cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)


def _writer_commits(log_path: Path) -> list[dict]:
    out = []
    for line in log_path.read_text(errors="replace").splitlines() if log_path.exists() else []:
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


# --------------------------------------------------------------------------- the sessions


# one look at the page per poll, in the page itself (no locator auto-waiting: under load a
# locator's own 30 s wait, not the app, would decide a step's fate)
_PROBE = """(selector) => {
  const app = document.querySelector("[data-testid='stApp']");
  const main = document.querySelector(selector);
  const box = main ? main.getBoundingClientRect() : null;
  const exc = document.querySelector("[data-testid='stException']");
  return {state: app ? app.getAttribute("data-test-script-state") : null,
          shown: !!(box && box.width > 0 && box.height > 0),
          exception: exc ? exc.innerText.slice(0, 300) : null};
}"""


async def _step(context, url: str, selector: str, settle_ms: int, timeout_s: float) -> tuple[float | None, str | None]:
    """(seconds until shown and idle, None) or (None, what went wrong)."""
    page = context.pages[0] if context.pages else await context.new_page()
    started = time.perf_counter()
    try:
        await page.goto(url, wait_until="domcontentloaded", timeout=timeout_s * 1000)
        shown_at = None
        deadline = started + timeout_s
        while time.perf_counter() < deadline:
            try:
                probe = await page.evaluate(_PROBE, selector)
            except Exception:  # the page is between documents: look again
                probe = {"state": None, "shown": False, "exception": None}
            if probe["exception"]:
                return None, f"exception on the page: {probe['exception']}"
            now = time.perf_counter()
            if probe["state"] == "notRunning" and probe["shown"]:
                shown_at = shown_at or now
                if now - shown_at >= settle_ms / 1000:
                    return shown_at - started, None
            else:
                shown_at = None
            await asyncio.sleep(0.05)
        return None, f"not shown with the app idle within {timeout_s:.0f} s"
    except Exception as exc:  # a browser-side failure is a measured error, not a crash of the bench
        return None, f"{type(exc).__name__}: {str(exc)[:300]}"


async def _session(browser, base: str, steps: list[dict], settle_ms: int, timeout_s: float, index: int) -> list[dict]:
    from urllib.parse import urlencode

    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    out = []
    try:
        for j, step in enumerate(steps):
            url = f"{base}/{step['page']}?{urlencode(step['params'])}"
            seconds, error = await _step(context, url, MAIN_ELEMENT[step["page"]], settle_ms, timeout_s)
            out.append({"session": index, "step": j, "page": step["page"], "params": step["params"],
                        "seconds": seconds, "error": error, "ended_at": time.time()})
            log(f"session {index} step {j} {step['page']}: " + (f"{seconds:.2f} s" if error is None else f"ERROR {error}"))
    finally:
        await context.close()
    return out


async def _drive(base: str, plan: list[list[dict]], settle_ms: int, timeout_s: float) -> list[dict]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            results = await asyncio.gather(*(_session(browser, base, steps, settle_ms, timeout_s, i)
                                             for i, steps in enumerate(plan)))
        finally:
            await browser.close()
    return [step for session in results for step in session]


# --------------------------------------------------------------------------- the run


def run(db: str | None, n_cots: int | None, sessions: int, steps: int, writer: bool, workdir: Path, *,
        writable: bool = False, frame_cache_mb: float | None, settle_ms: int, timeout_s: float, write_every: float, write_batch: int) -> dict:
    if not CHROMIUM.exists():
        raise ChildFailed(f"the load test needs Debian's chromium at {CHROMIUM}")
    load_before = machine_load()
    info = bench_store(workdir, source=db, n_cots=n_cots)
    path = info["path"]
    if writer and info.get("reused") and not writable:  # never write the caller's store
        copy = workdir / "load-copy.duckdb"
        log(f"copying {path} to {copy} (the writer writes the copy)")
        shutil.copy(path, copy)
        path = str(copy)
    plan = filter_plan(path, sessions, steps)
    data = workdir / "app-data"
    data.mkdir(parents=True, exist_ok=True)
    if frame_cache_mb is not None:
        os.environ["THOUGHTSCOPE_FRAME_CACHE_MB"] = str(frame_cache_mb)
    process, url = _start_server(path, data, workdir / "server.log")
    sampler = RssSampler(process.pid)
    idle_rss = sampler.current()
    sampler.start()
    trace: list[tuple[float, int]] = []
    cpu_by_pid: dict[int, tuple[str, float]] = {}  # process -> (whose, CPU seconds so far)
    writer_proc = None
    writer_log = workdir / "writer.log"
    started = time.time()
    try:
        if writer:
            writer_proc = _start_writer(path, write_every, write_batch, writer_log)
        loop_done = False

        async def main():
            nonlocal loop_done

            async def sample():
                while not loop_done:
                    trace.append((time.time() - started, sampler.current()))
                    _cpu_seen(process.pid, cpu_by_pid)
                    await asyncio.sleep(1.0)

            sampler_task = asyncio.create_task(sample())
            try:
                return await _drive(url, plan, settle_ms, timeout_s)
            finally:
                loop_done = True
                await sampler_task

        log(f"{sessions} sessions x {steps} steps against {url}" + (" with the writer" if writer else ""))
        results = asyncio.run(main())
    finally:
        if writer_proc is not None:
            writer_proc.terminate()
            try:
                writer_proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                writer_proc.kill()
        _cpu_seen(process.pid, cpu_by_pid)
        peak = sampler.stop()
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
    wall = time.time() - started
    server_log = (workdir / "server.log").read_text(errors="replace")
    tracebacks = server_log.count("Traceback (most recent call last)")
    pages = {page: {**_quantiles([r["seconds"] for r in results if r["page"] == page and r["error"] is None]),
                    "errors": sum(1 for r in results if r["page"] == page and r["error"] is not None)}
             for page in PAGES}
    lines = _writer_commits(writer_log)
    commits = [c for c in lines if "committed" in c]
    return {
        "bench": "load", "store": {**info, "path": path}, "cots": info["cots"], "sessions": sessions, "steps": steps,
        "writer": writer, "writer_commits": len(commits), "writer_busy": len(lines) - len(commits),
        "writer_commit_p50_s": statistics.median([c["seconds"] for c in commits]) if commits else None,
        "frame_cache_mb": frame_cache_mb if frame_cache_mb is not None else os.environ.get("THOUGHTSCOPE_FRAME_CACHE_MB"),
        "pages": pages, "all": _quantiles([r["seconds"] for r in results if r["error"] is None]),
        "errors": [{k: r[k] for k in ("session", "step", "page", "error")} for r in results if r["error"]],
        # the 1 s trace and the 50 ms sampler read the process tree at different moments: the peak is the larger
        "server_tracebacks": tracebacks, "server_idle_rss_bytes": idle_rss,
        "server_peak_rss_bytes": max([peak, *(rss for _, rss in trace)]),
        "rss_trace": trace, "wall_s": wall, "steps_detail": results,
        # where the 2 cores went: the app server (its children included), chromium, the writer
        "cpu_s": {whose: round(sum(c for w, c in cpu_by_pid.values() if w == whose), 1)
                  for whose in ("server", "chromium", "writer")},
        "load_before": load_before, "load_after": machine_load(),
    }


def _cpu_seen(server_pid: int, seen: dict[int, tuple[str, float]]) -> None:
    """Record the CPU seconds so far of the server's process tree, and of this bench's chromium
    and writer processes (sampled: a process that ends keeps its last sample)."""
    import psutil

    def whose_of(proc) -> str | None:
        try:
            cmd = " ".join(proc.cmdline())
        except psutil.Error:
            return None
        return "chromium" if "chrom" in cmd else "writer" if " _writer " in f" {cmd} " else None

    try:
        server = psutil.Process(server_pid)
        procs = [(p, "server") for p in [server, *server.children(recursive=True)]]
    except psutil.Error:
        procs = []
    for child in psutil.Process().children(recursive=True):
        if child.pid != server_pid and child.pid not in {p.pid for p, _ in procs}:
            whose = whose_of(child)
            if whose:
                procs.append((child, whose))
    for proc, whose in procs:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        seen[proc.pid] = (whose, times.user + times.system)


def _load(load: dict) -> str:
    return f"{load['load_1m']:.2f}/{load['load_5m']:.2f}/{load['load_15m']:.2f}"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def report(r: dict) -> str:
    head = (f"Load benchmark: {r['sessions']} sessions x {r['steps']} new filters, {r['cots']:,} CoTs "
            f"({r['store']['path']}), writer {'on: ' + str(r['writer_commits']) + ' commits' if r['writer'] else 'off'}, "
            f"frame cache {r['frame_cache_mb'] or 'default'} MiB; {r['wall_s']:.0f} s; load average (1/5/15 min) before "
            f"{_load(r['load_before'])}, after {_load(r['load_after'])}; {r['load_before']['cpus']} CPUs. "
            f"Targets at 2M: shown <= {TARGET_P50_S:.0f} s warm / {TARGET_P95_S:.0f} s cold, server RSS <= "
            f"{TARGET_RSS_BYTES / 1e9:.0f} GB, no error.")
    rows = [[page, s["n"], _s(s["p50"]), _s(s["p95"]), _s(s["max"]), s["errors"]] for page, s in r["pages"].items()]
    rows.append(["all", r["all"]["n"], _s(r["all"]["p50"]), _s(r["all"]["p95"]), _s(r["all"]["max"]), len(r["errors"])])
    parts = [head, "Seconds from navigation to the page shown, app idle (a new filter each step):\n"
             + format_table(["page", "steps", "p50 s", "p95 s", "max s", "errors"], rows),
             f"Server peak RSS (children included): {r['server_peak_rss_bytes'] / MB:,.0f} MB "
             f"(idle after start {r['server_idle_rss_bytes'] / MB:,.0f} MB); tracebacks in the server log: "
             f"{r['server_tracebacks']}",
             "CPU seconds over the run: " + ", ".join(f"{k} {v:,.1f}" for k, v in r["cpu_s"].items())
             + f" (of {r['wall_s'] * r['load_before']['cpus']:,.0f} on {r['load_before']['cpus']} CPUs)"]
    if r["errors"]:
        parts.append("Errors:\n" + "\n".join(f"  session {e['session']} step {e['step']} {e['page']}: {e['error']}"
                                              for e in r["errors"]))
    md = [f"| {r['cots']:,} | {r['sessions']} x {r['steps']}{' + writer' if r['writer'] else ''} | {page} | "
          f"{_s(s['p50'])} / {_s(s['p95'])} s | {s['errors']} | {r['server_peak_rss_bytes'] / MB:,.0f} MB | "
          f"{_load(r['load_before'])} |" for page, s in r["pages"].items()]
    parts.append("README table:\n| CoTs | sessions x new filters | page | shown p50 / p95 | errors | server peak RSS | "
                 "load before |\n|---|---|---|---|---|---|---|\n" + "\n".join(md))
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="N browser sessions at once on one app server, each on its own new filters.")
    parser.add_argument("--db", help="the store (never written: --writer works on a copy); default: a generated one")
    parser.add_argument("--cots", type=int, help="only the first ~N CoTs of --db (a subset store); without --db, "
                                                 "the size of the generated store (default 300)")
    parser.add_argument("--sessions", type=int, default=8, help="browser sessions at once (default 8)")
    parser.add_argument("--steps", type=int, default=6, help="new filters per session (default 6: each page twice)")
    parser.add_argument("--writer", action="store_true", help="a writer commits scores to the store meanwhile")
    parser.add_argument("--writable", action="store_true",
                        help="--db is a scratch copy the writer may write in place (no copy is made)")
    parser.add_argument("--write-every", type=float, default=5.0, help="seconds between the writer's commits")
    parser.add_argument("--write-batch", type=int, default=5000, help="CoTs scored per commit")
    parser.add_argument("--frame-cache-mb", type=float, help="the server's THOUGHTSCOPE_FRAME_CACHE_MB (default: its own)")
    parser.add_argument("--settle-ms", type=int, default=300, help="how long the page must stay idle to count as shown")
    parser.add_argument("--step-timeout", type=float, default=300, help="seconds before a step counts as an error")
    parser.add_argument("--json", action="store_true", help="also print the result as one JSON line, last")
    parser.add_argument("--workdir", help="where subset stores, copies and logs go (kept); default a temporary folder")
    args = parser.parse_args(argv)
    if args.sessions < 1 or args.steps < 1 or (args.cots is not None and args.cots < 1):
        parser.error("--sessions, --steps and --cots must be >= 1")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-load-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args.db, args.cots, args.sessions, args.steps, args.writer, workdir, writable=args.writable,
                     frame_cache_mb=args.frame_cache_mb, settle_ms=args.settle_ms, timeout_s=args.step_timeout,
                     write_every=args.write_every, write_batch=args.write_batch)
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
    if len(sys.argv) > 1 and sys.argv[1] == "_writer":
        _writer_child(json.loads(sys.argv[2]))
    else:
        sys.exit(main())
