"""Conditions benchmark: what a filter or selection condition on a generic figure costs, as a
ratio against the same query without it, measured in the same run.

    python bench/bench_conditions.py --store STORE.duckdb [--repeats 7] [--moves 20] [--workdir DIR] [--json]
    python bench/bench_conditions.py --tiny --json          # a few hundred generated CoTs (the test)

The store is copied into ``--workdir`` (never written) and given the figures a stage would
publish, under a score source of kind 'stage' named "bench stage (generated)", deterministic
from the ids: per CoT ``tail`` (a number for 80% of CoTs), per problem ``pass_rate`` (every
problem) and ``contaminated`` (= 1 for 2% of problems, no row for the others), plus a verifier
"bench verifier (generated)" giving ``correct`` to half the CoTs, so that each dataset's own
correctness reads two sources as on a store that ran math-verify.

Measured (p50 over ``--repeats`` interleaved runs, after one warm-up each), each query without
a condition and with one of: ``tail`` below its median (a CoT score range), ``pass_rate`` in
0.25-0.75 (a problem range), ``contaminated`` has no value (a problem presence test):

* Explore, a new sidebar filter: ``queries.count`` + ``queries.page`` (50 rows);
* Distributions, a new sidebar filter: ``queries.metric_frame`` (every matching CoT's numbers);
* Select, a new sidebar filter: ``selection.load_pool`` (store read + in-memory index);
* Select's own condition (in the pool, with drop reasons): ``load_pool`` of a selection whose
  condition adds its figure to the pool, then the Thresholds report per slider move
  (``selection.evaluate`` on the pool) without and with the condition, and the first report
  after the condition's bounds change (it builds that condition's index);
* correctness: ``metric_frame`` with one explicit source against each dataset's own (two
  sources, first that judged the CoT).

With ``--json`` the last stdout line is the whole result.
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

from bench.common import log, machine_load  # noqa: E402

STAGE = "bench stage (generated)"
VERIFIER = "bench verifier (generated)"


def _hash(column: str) -> str:
    """A pseudo-random integer in [0, 1000) per id (DuckDB's hash: the same on every run)."""
    return f"(hash({column}) % 1000)::INTEGER"


def add_figures(source: Path, target: Path) -> dict:
    """Copy ``source`` to ``target`` and add the stage's figures and the verifier's verdicts
    (reused when ``target`` already has them)."""
    from core import store

    if target.exists():
        done = store.read_rows("SELECT count(*) FROM score_sources WHERE name = ?", [STAGE], db=target)[0][0]
        if done:
            log(f"reusing {target}")
            return _sizes(target)
    for p in (target, target.with_name(target.name + ".wal")):
        p.unlink(missing_ok=True)
    log(f"copying {source} to {target} and adding a stage's figures")
    shutil.copy(source, target)
    with store.connect(target, read_only=False) as con:
        con.execute("BEGIN")
        stage = store.ensure_source(con, STAGE, "stage", params=json.dumps({"generated": True}))
        verifier = store.ensure_source(con, VERIFIER, "verifier")
        con.execute(
            f"INSERT INTO scores (cot_id, source_id, metric, value) SELECT cot_id, ?, 'tail', "
            f"coalesce(n_tokens, 0) * {_hash('cot_id')} / 1000.0 FROM cots WHERE {_hash('cot_id')} % 5 <> 0", [stage])
        con.execute(
            f"INSERT INTO scores (cot_id, source_id, metric, value) SELECT cot_id, ?, 'correct', "
            f"({_hash('cot_id + 7')} % 2)::DOUBLE FROM cots WHERE {_hash('cot_id + 3')} % 2 = 0", [verifier])
        con.execute(
            f"INSERT INTO problem_scores (problem_id, source_id, metric, value) SELECT problem_id, ?, 'pass_rate', "
            f"({_hash('problem_id')} % 33) / 32.0 FROM problems", [stage])
        con.execute(
            f"INSERT INTO problem_scores (problem_id, source_id, metric, value) SELECT problem_id, ?, 'contaminated', 1 "
            f"FROM problems WHERE {_hash('problem_id + 11')} < 20", [stage])
        con.execute("COMMIT")
        con.execute("CHECKPOINT")
    return _sizes(target)


def _sizes(db: Path) -> dict:
    from core import store

    cots, problems = store.read_rows("SELECT count(*), count(DISTINCT problem_id) FROM cots", db=db)[0]
    return {"cots": cots, "problems": problems, "store": str(db)}


def _p50(seconds: list[float]) -> float:
    return statistics.median(seconds) * 1000


def _interleaved(variants: dict, repeats: int) -> dict[str, float]:
    """p50 ms of each variant's callable, the variants run in turn ``repeats`` times after one
    warm-up each (so machine load drifts over all of them alike)."""
    for run in variants.values():
        run()
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            started = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - started)
    return {name: _p50(values) for name, values in seconds.items()}


def measure(db: Path, *, repeats: int, moves: int) -> dict:
    from bench.bench_select import slider_moves
    from core import queries, selection, store
    from core.figures import Condition, Figure
    from core.queries import OWN_CORRECTNESS, CotFilter
    from core.selection import Selection, Thresholds

    median = store.read_rows("SELECT median(value) FROM scores JOIN score_sources USING (source_id) "
                             "WHERE name = ? AND metric = 'tail'", [STAGE], db=db)[0][0]
    conditions = {
        "cot score range (tail below its median)": Condition(Figure("tail", STAGE), hi=float(median)),
        "problem range (pass_rate 0.25-0.75)": Condition(Figure("pass_rate", STAGE, "problem"), 0.25, 0.75),
        "problem presence (contaminated: no value)": Condition(Figure("contaminated", STAGE, "problem"), missing=True),
    }
    base = CotFilter(correct_source=OWN_CORRECTNESS)  # the sidebar's default filter
    sources = selection.default_score_sources(db=db)
    filters = {"none": base, **{name: base.with_(conditions=(c,)) for name, c in conditions.items()}}
    out: dict = {"conditions": {name: c.describe() for name, c in conditions.items()},
                 "own_correctness_reads": list(queries.own_correctness_sources(db=db))}

    def explore(f):
        return lambda: (queries.count(f, db=db), queries.page(f, limit=50, db=db))

    def frame(f):
        return lambda: queries.metric_frame(f, db=db)

    def pool(sel):
        return lambda: selection.load_pool(sel, db=db).close()

    kinds = {
        "explore_new_filter": {name: explore(f) for name, f in filters.items()},
        "distributions_frame": {name: frame(f) for name, f in filters.items()},
        "select_pool_load_filter": {name: pool(Selection(f, Thresholds(), sources)) for name, f in filters.items()},
        "select_pool_load_condition": {name: pool(Selection(base, Thresholds(), sources, conditions=() if name == "none"
                                                            else (conditions[name],))) for name in filters},
    }
    for kind, variants in kinds.items():
        log(f"{kind}")
        ms = _interleaved(variants, repeats)
        out[kind] = {name: {"p50_ms": value, "ratio": value / ms["none"]} for name, value in ms.items()}

    log("correctness: one explicit source against each dataset's own")
    label = queries.own_correctness_sources(db=db)[0]
    ms = _interleaved({"one source": frame(CotFilter(correct_source=label, correct="correct")),
                       "each dataset's own": frame(CotFilter(correct_source=OWN_CORRECTNESS, correct="correct"))}, repeats)
    out["correctness_frame"] = {name: {"p50_ms": v, "ratio": v / ms["one source"]} for name, v in ms.items()}

    # Select: slider moves on a pool without and with a condition of the selection
    log("select slider moves")
    max_tokens = int(store.read_rows("SELECT coalesce(max(n_tokens), 0) FROM cots", db=db)[0][0])
    plan = slider_moves(moves, max_tokens)
    cond = conditions["cot score range (tail below its median)"]
    loaded = selection.load_pool(Selection(base, Thresholds(), sources, conditions=(cond,)), db=db)

    def sel_of(move, with_condition):
        rule = Thresholds(**move)
        return Selection(base, rule, sources, conditions=(cond,) if with_condition else ())

    # the pool carries the condition's figure; the selection without the condition reads the
    # same pool (its key differs only by the figure), so compare on the same loaded table
    plain = selection.load_pool(Selection(base, Thresholds(), sources), db=db)
    moves_ms = {}
    for name, pool_of, flag in (("none", plain, False), ("with a condition", loaded, True)):
        selection.evaluate(sel_of(plan[0], flag), pool=pool_of)  # warm-up, builds the index
        seconds = []
        for move in plan:
            started = time.perf_counter()
            selection.evaluate(sel_of(move, flag), pool=pool_of)
            seconds.append(time.perf_counter() - started)
        moves_ms[name] = _p50(seconds)
    bound_changes = []
    for i in range(min(5, repeats)):
        moved = Condition(cond.figure, hi=float(median) * (0.5 + 0.1 * i))
        started = time.perf_counter()
        selection.evaluate(Selection(base, Thresholds(**plan[i]), sources, conditions=(moved,)), pool=loaded)
        bound_changes.append(time.perf_counter() - started)
    out["select_move"] = {"none": {"p50_ms": moves_ms["none"], "ratio": 1.0},
                          "with a condition": {"p50_ms": moves_ms["with a condition"],
                                               "ratio": moves_ms["with a condition"] / moves_ms["none"]},
                          "condition bounds changed (first report)": {"p50_ms": _p50(bound_changes),
                                                                      "ratio": _p50(bound_changes) / moves_ms["none"]}}
    loaded.close()
    plain.close()
    return out


def report(result: dict) -> str:
    lines = [f"Store: {result['cots']:,} CoTs of {result['problems']:,} problems; p50 over {result['repeats']} runs; "
             f"load avg {result['load_before']['load_1m']:.1f} before, {result['load_after']['load_1m']:.1f} after.", "",
             "| query | no condition ms | " + " | ".join(result["condition_names"]) + " |",
             "|---|---|" + "---|" * len(result["condition_names"])]
    for kind in ("explore_new_filter", "distributions_frame", "select_pool_load_filter", "select_pool_load_condition"):
        row = result[kind]
        cells = [f"{row[n]['p50_ms']:,.1f} ({row[n]['ratio']:.2f}x)" for n in result["condition_names"]]
        lines.append(f"| {kind} | {row['none']['p50_ms']:,.1f} | " + " | ".join(cells) + " |")
    lines += ["", "| Select slider move | p50 ms | ratio |", "|---|---|---|"]
    for name, value in result["select_move"].items():
        lines.append(f"| {name} | {value['p50_ms']:,.1f} | {value['ratio']:.2f}x |")
    one, own = result["correctness_frame"]["one source"], result["correctness_frame"]["each dataset's own"]
    lines += ["", f"Distributions frame, correctness 'correct': one source {one['p50_ms']:,.1f} ms, each dataset's own "
                  f"({' then '.join(result['own_correctness_reads'])}) {own['p50_ms']:,.1f} ms ({own['ratio']:.2f}x)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Cost of a condition on a generic figure, against the same query without.")
    parser.add_argument("--store", help="a store to copy and add figures to (opened read-only)")
    parser.add_argument("--tiny", action="store_true", help="generate a store of a few hundred CoTs and use it")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--moves", type=int, default=20, help="Select slider moves timed with and without a condition")
    parser.add_argument("--workdir", help="where the copied store goes (kept); default a temporary folder (removed)")
    parser.add_argument("--json", action="store_true", help="also print the result as one JSON line, last")
    args = parser.parse_args(argv)
    if not args.tiny and not args.store:
        parser.error("give --store (or --tiny)")
    if args.repeats < 1 or args.moves < 1:
        parser.error("--repeats and --moves must be at least 1")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-conditions-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if args.tiny:
            from bench.bench_select import generated_store

            source = generated_store(workdir, 300, 0.02, tokens=True)
        else:
            source = Path(args.store).resolve()
        db = workdir / f"{source.stem}-with-figures.duckdb"
        result = {"bench": "conditions", "repeats": args.repeats, **add_figures(source, db), "load_before": machine_load()}
        measured = measure(db, repeats=args.repeats, moves=args.moves)
        result.update(measured, load_after=machine_load())
        result["condition_names"] = list(measured["conditions"])
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report(result))
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
