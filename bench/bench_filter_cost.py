"""Where a new sidebar filter's server-side time goes on Distributions and Select, and what issue 17's two
levers buy, before and after in the same run.

    python bench/bench_filter_cost.py --db STORE [--cots N] [--repeats 5] [--json]
    python bench/bench_filter_cost.py --cots 300     # a generated store (the test's size)

For one filter with RV, CD and each dataset's own correctness chosen (what the sidebar picks by
default), interleaved repeats of:

* ``read``: the matching CoTs' numbers (``queries.metric_frame``), the three score metrics as
  three aggregated joins (before: ``PIVOT_MIN_METRICS`` out of reach) against one pivoted scan
  of ``scores`` (after), and the same query without any score (the floor);
* ``Select pool read``: the pool's ids and numbers (``selection.pool_sql``), the base filter's
  own score columns in its SQL too (before) or left out (after, ``queries.rows_only``);
* ``new filter``: a filter never seen before (the token range shrinking each repeat, RV, CD and
  correctness as above) read from the store (before) against cut from the in-memory base of its
  score sources (after, ``core.frame_filter``: what Distributions and Overview do since issue 17),
  and the base's own read, paid once per store write and shared by every filter and session;
* ``figures``: the polars passes Distributions makes over that frame on a new filter
  (accuracy at budgets, Mean@k, the largest k, per-problem pass rates, length histogram and
  statistics), with the group keys as strings (before) and dictionary-coded (after, what
  ``ui.frames.prepared`` keeps); and the frame's ``estimated_size`` both ways.

Wall and process CPU (DuckDB's and polars' threads included) are p50 over the repeats; on a
shared machine trust the CPU column. Both sides must give equal frames (checked). With
``--json`` the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `core` and `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import format_table, log, machine_load  # noqa: E402
from bench.stores import bench_store  # noqa: E402


def _figures(df, charts, metrics) -> None:
    keys = charts.GROUP_COLUMNS
    metrics.accuracy_at_budgets(df, budgets=(4096, 8192, 16384, 32768), group_by=keys)
    metrics.mean_and_pass_at_k(df, k=1, group_by=keys)
    charts.max_samples_per_problem(df)
    metrics.problem_pass_rates(df, group_by=keys)
    charts.length_distribution_frame(df, facet_by=None, kind="histogram", bins=40, log=False)
    metrics.length_by_correctness(df)


def run(db: str | None, n_cots: int | None, repeats: int, workdir: Path) -> dict:
    import polars as pl

    from core import charts, metrics, queries, selection, store
    from core.queries import CotFilter
    from core.selection import ScoreSources, Selection
    from ui.frames import GROUP_KEYS

    load_before = machine_load()
    info = bench_store(workdir, source=db, n_cots=n_cots)
    path = info["path"]
    rv, cd = (queries.sources(m, db=path) for m in ("rv", "cd"))
    f = CotFilter(rv_source=rv[0] if rv else None, cd_source=cd[0] if cd else None,
                  correct_source=queries.OWN_CORRECTNESS)
    floor_f = f.with_(rv_source=None, cd_source=None, correct_source=None)
    default_min = queries.PIVOT_MIN_METRICS

    def read(pivot: bool):
        queries.PIVOT_MIN_METRICS = default_min if pivot else 99
        try:
            return queries.metric_frame(f, db=path)
        finally:
            queries.PIVOT_MIN_METRICS = default_min

    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in (
        "read: three joins (before)", "read: one pivoted scan (after)", "read: no score (floor)",
        "Select pool read: base scores read too (before)", "Select pool read: scores once (after)",
        "new filter: read from the store (before)", "new filter: cut from the in-memory base (after)",
        "base: read once per store write and sources",
        "figures: string keys (before)", "figures: dictionary-coded keys (after)")}
    sel = Selection(base=f, sources=ScoreSources(rv=tuple(rv), cd=tuple(cd), correct=(queries.OWN_CORRECTNESS,)))
    rows_only = queries.rows_only

    def pool_read(lean: bool):
        if not lean:
            queries.rows_only = lambda base: base
        try:
            sql, params = selection.pool_sql(sel, db=path)
        finally:
            queries.rows_only = rows_only
        with store.connect(path, read_only=True) as con:
            return con.sql(sql, params=params).to_arrow_table()

    def timed(name, fn):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        samples[name].append((time.perf_counter() - wall, time.process_time() - cpu))
        return out

    from core import frame_filter

    base = timed("base: read once per store write and sources", lambda: frame_filter.base_frame(f, db=path))
    top = int(base["n_tokens"].max() or 0)
    for i in range(repeats):
        new_f = f.with_(tokens_range=(0, max(1, int(top * (0.95 - 0.05 * i)))))
        read_new = timed("new filter: read from the store (before)", lambda new_f=new_f: queries.metric_frame(new_f, db=path))
        cut_new = timed("new filter: cut from the in-memory base (after)", lambda new_f=new_f: frame_filter.cut(base, new_f, db=path))
        if not read_new.sort("cot_id").equals(cut_new.sort("cot_id")):
            raise SystemExit("error: the cut from the base gave other rows or values than the filter's own read")
    before = after = None
    for i in range(repeats):
        log(f"repeat {i + 1} of {repeats}")
        before = timed("read: three joins (before)", lambda: read(False))
        after = timed("read: one pivoted scan (after)", lambda: read(True))
        timed("read: no score (floor)", lambda: queries.metric_frame(floor_f, db=path))
        pool_before = timed("Select pool read: base scores read too (before)", lambda: pool_read(False))
        pool_after = timed("Select pool read: scores once (after)", lambda: pool_read(True))
    if not pool_before.sort_by("cot_id").equals(pool_after.sort_by("cot_id")):
        raise SystemExit("error: the lean pool read gave other rows or values")
    if not before.sort("cot_id").equals(after.sort("cot_id")):
        raise SystemExit("error: the pivoted read gave other values than the three joins")
    if before["n_tokens"].null_count() == before.height:  # a store without token counts: the
        # figures would skip most work; give them lengths so they do what they do at scale
        import numpy as np

        lengths = np.random.default_rng(0).integers(100, 30000, before.height)
        before = before.with_columns(pl.Series("n_tokens", lengths).cast(pl.Int32))
        info["synthetic_lengths"] = True
    coded = before.with_columns(pl.col(c).cast(pl.Categorical) for c in GROUP_KEYS)
    for _ in range(repeats):
        timed("figures: string keys (before)", lambda: _figures(before, charts, metrics))
        timed("figures: dictionary-coded keys (after)", lambda: _figures(coded, charts, metrics))
    result = {"bench": "filter_cost", "store": info, "cots": info["cots"], "rows": before.height, "repeats": repeats,
              "steps": {name: {"wall_p50": statistics.median(w for w, _ in v), "cpu_p50": statistics.median(c for _, c in v),
                               "n": len(v)} for name, v in samples.items()},
              "frame_bytes": {"string keys": before.estimated_size(), "dictionary-coded keys": coded.estimated_size()},
              "load_before": load_before, "load_after": machine_load()}
    s = result["steps"]
    result["ratios_cpu"] = {
        "new filter after / before": s["new filter: cut from the in-memory base (after)"]["cpu_p50"]
        / max(s["new filter: read from the store (before)"]["cpu_p50"], 1e-9),
        "read after / before": s["read: one pivoted scan (after)"]["cpu_p50"] / max(s["read: three joins (before)"]["cpu_p50"], 1e-9),
        "Select pool read after / before": s["Select pool read: scores once (after)"]["cpu_p50"]
        / max(s["Select pool read: base scores read too (before)"]["cpu_p50"], 1e-9),
        "figures after / before": s["figures: dictionary-coded keys (after)"]["cpu_p50"]
        / max(s["figures: string keys (before)"]["cpu_p50"], 1e-9),
    }
    return result


def report(r: dict) -> str:
    lb, la = r["load_before"], r["load_after"]
    head = (f"New-filter cost on Distributions and Select: {r['rows']:,} matching CoTs of {r['cots']:,} ({r['store']['path']}), "
            f"p50 of {r['repeats']} interleaved repeats; load average (1/5/15 min) before {lb['load_1m']}/{lb['load_5m']}/"
            f"{lb['load_15m']}, after {la['load_1m']}/{la['load_5m']}/{la['load_15m']}; {lb['cpus']} CPUs."
            + (" The store has no token counts: the figures ran on synthetic lengths." if r["store"].get("synthetic_lengths") else ""))
    rows = [[name, v["wall_p50"] * 1000, v["cpu_p50"] * 1000] for name, v in r["steps"].items()]
    fb = r["frame_bytes"]
    return "\n\n".join([
        head, format_table(["step", "wall p50 ms", "CPU p50 ms"], rows),
        "CPU ratios (after / before): " + ", ".join(f"{k} {v:.2f}" for k, v in r["ratios_cpu"].items()),
        f"Frame size: {fb['string keys'] / 1e6:.1f} MB with string keys, {fb['dictionary-coded keys'] / 1e6:.1f} MB dictionary-coded.",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A new filter's read and figures on Distributions, before and after.")
    parser.add_argument("--db", help="the store (opened read-only); default: a generated one")
    parser.add_argument("--cots", type=int, help="only the first ~N CoTs of --db; without --db the generated size (300)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="also print the result as one JSON line, last")
    parser.add_argument("--workdir", help="where subset stores go (kept); default a temporary folder")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-filter-cost-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args.db, args.cots, args.repeats, workdir)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report(result))
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
