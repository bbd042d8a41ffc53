"""What running the SQL console in its own process costs, and what it buys.

    python bench/bench_console.py --store data/omni-2m.duckdb [--slow-s 15] [--repeats 20] [--json]
    python bench/bench_console.py --generate 5000 --workdir /tmp/bench-console [--json]

In one process, as the app serves sessions from one process:
* a page read (Explore's count and first page of 50 CoTs, through core.queries) with nothing
  else running: the baseline;
* the same read, repeated, while another thread's console query runs for its whole time
  limit (``--slow-s``): before this change it waited behind the console's process-wide
  lock for the rest of the query (issue 9: 14.7 s behind a 15 s query);
* a console round trip (a small GROUP BY) against the same query on a bare in-process DuckDB
  connection: what the separate process costs a user of the console.

With ``--json`` the last stdout line is the whole result as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import format_table, log, machine_load  # noqa: E402

SLOW = "SELECT count(*) FROM range(1000000000000) r WHERE r.range % 7 = 99"
SMALL = "SELECT model, count(*) AS cots, avg(n_chars) AS mean_chars FROM cots GROUP BY model ORDER BY model"


def generated_store(workdir: Path, n_cots: int) -> Path:
    from core.demo import n_problems_for_cots, write_omnithought
    from core.ingest import ingest

    target = workdir / f"console-{n_cots}.duckdb"
    if not target.exists():
        src = workdir / f"console-{n_cots}.parquet"
        write_omnithought(src, n_problems_for_cots(n_cots), seed=0, text_scale=0.05)
        ingest(str(src), name="bench (generated)", db=target, generated=True)
    return target


def _page_read(db: Path) -> float:
    from core import queries

    started = time.perf_counter()
    queries.count(queries.CotFilter(), db=db)
    queries.page(queries.CotFilter(), limit=50, db=db)
    return time.perf_counter() - started


def _quantiles(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"p50_s": statistics.median(ordered), "max_s": ordered[-1], "n": len(ordered)}


def run(db: Path, slow_s: float, repeats: int) -> dict:
    import duckdb
    import psutil

    from core import sqlconsole, store

    result: dict = {"store": str(db), "cots": store.read_rows("SELECT count(*) FROM cots", db=db)[0][0],
                    "load_before": machine_load(), "slow_s": slow_s}
    _page_read(db)  # warm the store's pages
    log("page reads, nothing else running")
    result["read_alone"] = _quantiles([_page_read(db) for _ in range(repeats)])

    log(f"page reads while a console query runs for {slow_s:g} s")
    outcome: dict = {}

    def console():
        started = time.perf_counter()
        try:
            sqlconsole.run_query(SLOW, db=db, timeout_s=slow_s)
        except ValueError as exc:
            outcome["error"] = str(exc)
        outcome["seconds"] = time.perf_counter() - started

    def busy() -> bool:  # a console process past its start-up
        spare = sqlconsole._spare.proc.pid if sqlconsole._spare is not None else None
        return any(p.pid != spare and "core.console_worker" in " ".join(p.cmdline()) and p.cpu_times().user > 0.5
                   for p in psutil.Process().children())

    thread = threading.Thread(target=console, daemon=True)
    thread.start()
    while not busy() and thread.is_alive():
        time.sleep(0.02)
    during, peak_rss = [], 0
    while thread.is_alive() and len(during) < repeats:
        during.append(_page_read(db))
        for child in psutil.Process().children():
            try:
                peak_rss = max(peak_rss, child.memory_info().rss)
            except psutil.NoSuchProcess:
                pass
    thread.join()
    result["read_during_console"] = _quantiles(during)
    result["console_query"] = {"seconds": outcome.get("seconds"), "ended": outcome.get("error", "finished"),
                               "peak_rss_bytes": peak_rss, "memory_limit_mb": sqlconsole.MEMORY_MB,
                               "threads": sqlconsole.THREADS}
    result["read_ratio"] = result["read_during_console"]["p50_s"] / result["read_alone"]["p50_s"]

    log("console round trips against a bare in-process connection")
    sqlconsole.run_query(SMALL, db=db)  # starts the spare
    console_times, bare_times = [], []
    for _ in range(repeats):
        time.sleep(1.0)  # a person reads a result before the next query: the spare is ready
        started = time.perf_counter()
        sqlconsole.run_query(SMALL, db=db)
        console_times.append(time.perf_counter() - started)
        with duckdb.connect(str(db), read_only=True) as con:
            started = time.perf_counter()
            con.sql(SMALL).pl()
            bare_times.append(time.perf_counter() - started)
    result["console_round_trip"] = _quantiles(console_times)
    result["bare_query"] = _quantiles(bare_times)
    result["load_after"] = machine_load()
    return result


def report(r: dict) -> str:
    rows = [
        ["page read, nothing else running", r["read_alone"]["p50_s"] * 1000, r["read_alone"]["max_s"] * 1000, r["read_alone"]["n"], "baseline"],
        [f"page read while a {r['slow_s']:g} s console query runs", r["read_during_console"]["p50_s"] * 1000,
         r["read_during_console"]["max_s"] * 1000, r["read_during_console"]["n"], f"{r['read_ratio']:.2f}x"],
        ["bare DuckDB, small GROUP BY", r["bare_query"]["p50_s"] * 1000, r["bare_query"]["max_s"] * 1000, r["bare_query"]["n"], "baseline"],
        ["console round trip, same query", r["console_round_trip"]["p50_s"] * 1000, r["console_round_trip"]["max_s"] * 1000,
         r["console_round_trip"]["n"], f"+{(r['console_round_trip']['p50_s'] - r['bare_query']['p50_s']) * 1000:.0f} ms"],
    ]
    c = r["console_query"]
    return (f"{r['cots']:,} CoTs; load {r['load_before']['load_1m']} -> {r['load_after']['load_1m']}\n"
            + format_table(["step", "p50 ms", "max ms", "n", "vs baseline"], rows)
            + f"\nconsole query: {c['seconds']:.1f} s, ended: {c['ended']}; console process peak RSS "
              f"{c['peak_rss_bytes'] / 1e6:,.0f} MB (DuckDB memory limit {c['memory_limit_mb']:,} MB, {c['threads']} thread)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The SQL console's own process: its cost, and the reads it no longer blocks.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--store", help="an existing store")
    source.add_argument("--generate", type=int, help="generate a store of about this many CoTs")
    parser.add_argument("--workdir", help="where --generate writes (default: a temporary folder)")
    parser.add_argument("--slow-s", type=float, default=15.0, help="the slow console query's time limit")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="also print the result as one JSON line, last")
    args = parser.parse_args(argv)
    if args.store:
        db = Path(args.store)
    else:
        workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-console-"))
        workdir.mkdir(parents=True, exist_ok=True)
        db = generated_store(workdir, args.generate)
    result = run(db, args.slow_s, args.repeats)
    print(report(result))
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
