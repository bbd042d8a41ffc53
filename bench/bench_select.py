"""Select benchmark: what one slider move on the Select page costs, beside bare DuckDB and pandas.

    python bench/bench_select.py --store STORE.duckdb --cots 100000 500000 2000000 [--moves 30] \
        [--pandas-text-probe 20000] [--workdir DIR] [--json]
    python bench/bench_select.py --tiny --json        # a few hundred generated CoTs (the test)

A *slider move* is one Thresholds rule (RV range, CD range, token range, verified correct or
not; a range may be left at its full extent, as the page does) and its figures: kept and
dropped counts, problems with a kept CoT, counts and shares per model, dataset and CD level,
drop reasons, and the RV, CD and token histograms (kept against pool). Every method gets the
same seeded sequence of moves, and their kept counts are checked against each other.

For each size (a store holding about that many CoTs: the first problems of ``--store``, copied
with all their rows into a store of their own; the largest size is ``--store`` itself when it
holds about that many), each method runs in its own child process, so its peak RSS is its own:

* ours: ``core.selection.load_pool`` (the pool read once, held in memory with its index) then
  ``core.selection.evaluate`` per move -- what the Select page runs; also one dropped page
  (``dropped_page``, 50 rows) per move, and for a few moves the general path
  (decide every CoT, then summarize), which is what the page ran before;
* bare DuckDB: the pool's numbers as a plain in-memory table, and per move the straightforward
  SQL for the same figures (totals; GROUP BY model, dataset, CD level (also the CD histogram), RV,
  token bin; drop reasons: 7 queries);
  also the three-figure query alone (filter + token histogram + kept/dropped count);
* pandas: the whole corpus, text included, in one DataFrame (as Data-Juicer's demo holds it),
  and per move vectorised pandas for the same figures. A size whose estimated footprint (from
  the previous size's peak RSS per CoT) exceeds the memory available is not run, and says so.

``--pandas-text-probe N`` also generates N CoTs at full OmniThought text length (text_scale 1),
ingests them, and measures the pandas way's peak RSS per CoT there: the basis for the
extrapolation of where pandas stops fitting (labelled as an extrapolation).

Ratios are against the baselines measured in the same run; the machine's load averages are
recorded beside the figures. With ``--json`` the last stdout line is the whole result.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `core` and `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ChildFailed, log, machine_load, python_child, run_child  # noqa: E402

SCRIPT = str(Path(__file__).resolve())
MIB = 1024 * 1024
GENERAL_PATH_MOVES = 3  # the old path takes seconds per move at 2M: a few moves tell enough
TARGET_P50_MS = 60.0
TARGET_RATIO_VS_DUCKDB = 1.5
MEMORY_HEADROOM_BYTES = 3 * 1024**3  # left free for the rest of the machine when running pandas
PANDAS_LIMIT_BYTES = 24 * 1024**3  # "does it fit in 24 GB"


# --------------------------------------------------------------------------- moves


def slider_moves(n: int, max_tokens: int, seed: int = 0) -> list[dict]:
    """``n`` Thresholds rules as a user dragging the sliders would set them (a range left at
    its full extent is None), the same for every method."""
    rng = random.Random(seed)
    moves = []
    for _ in range(n):
        def level_range():
            if rng.random() < 0.25:
                return None
            a, b = sorted(rng.randint(0, 9) for _ in range(2))
            return [a, b]

        tokens = None
        if rng.random() < 0.7:
            a, b = sorted(rng.randint(0, max_tokens) for _ in range(2))
            tokens = [a, b]
        moves.append({"rv_range": level_range(), "cd_range": level_range(), "tokens_range": tokens,
                      "require_correct": rng.random() < 0.5})
    return moves


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _timings(seconds: list[float]) -> dict:
    ms = [s * 1000 for s in seconds]
    return {"p50_ms": statistics.median(ms), "p95_ms": _percentile(ms, 0.95), "moves": len(ms)}


# --------------------------------------------------------------------------- children
#
# `python bench/bench_select.py _child NAME JSON` runs one method at one size and prints its
# figures as one JSON line; the parent reads its peak RSS from run_child.


def _selection(db: str, rule: dict | None = None):
    from core import selection
    from core.queries import CotFilter

    rule = selection.Thresholds(**(rule or {}))
    return selection.Selection(CotFilter(), rule, selection.default_score_sources(db=db))


def _max_tokens(db: str) -> int:
    from core import store

    return int(store.read_rows("SELECT coalesce(max(n_tokens), 0) FROM cots", db=db)[0][0])


def _read_pool_table(db: str, base) -> tuple:
    """The selection's pool as Arrow (what selection.load_pool reads) and the seconds it took:
    both children start from the same read, timed apart from building their own structures."""
    from core import selection, store

    started = time.perf_counter()
    sql, params = selection.pool_sql(base, db=db)
    with store.connect(db, read_only=True) as con:
        table = con.sql(sql, params=params).to_arrow_table()
    return table, time.perf_counter() - started


def _child_ours(args: dict) -> dict:
    from core import selection

    db = args["db"]
    base = _selection(db)
    started = time.perf_counter()
    table, read_s = _read_pool_table(db, base)
    pool = selection.LoadedPool(selection.pool_key(base), table)
    del table
    load_s = time.perf_counter() - started
    moves = slider_moves(args["moves"], _max_tokens(db), args["seed"])
    seconds, page_seconds, kept = [], [], []
    selection.evaluate(_selection(db, moves[0]), pool=pool)  # warm-up, not timed
    for move in moves:
        sel = _selection(db, move)
        t0 = time.perf_counter()
        report = selection.evaluate(sel, pool=pool)
        seconds.append(time.perf_counter() - t0)
        kept.append([report.kept_cots, report.kept_problems, report.by_model["kept"].to_list()])
        t0 = time.perf_counter()
        selection.dropped_page(sel=sel, pool=pool, limit=50, db=db)
        page_seconds.append(time.perf_counter() - t0)
    general = []
    for move in moves[:args["general_moves"]]:
        sel = _selection(db, move)
        t0 = time.perf_counter()
        report = selection.summarize(selection.decide(sel, pool=pool), sel)
        general.append(time.perf_counter() - t0)
        assert report.kept_cots == kept[len(general) - 1][0], "the general path and the index disagree"
    return {"pool_cots": pool.n_cots, "pool_problems": pool.n_problems, "groups": pool.groups.height,
            "read_seconds": read_s, "load_seconds": load_s, "move": _timings(seconds),
            "dropped_page": _timings(page_seconds), "general": _timings(general) if general else None, "kept": kept}


# The straightforward SQL for a move's figures over a plain table `meta` (the pool's numbers).
def _bare_queries(move: dict, width: float) -> list[tuple[str, list]]:
    checks, params, kept_terms, kept_params = [], [], ["true"], []
    for column, label, bounds in (("rv", "RV", move["rv_range"]), ("cd", "CD", move["cd_range"]),
                                  ("n_tokens", "tokens", move["tokens_range"])):
        if bounds is None:
            continue
        missing = "no token count" if column == "n_tokens" else f"no {label} score"
        checks.append(f"CASE WHEN {column} IS NULL THEN ? WHEN {column} NOT BETWEEN ? AND ? THEN ? END")
        params += [missing, bounds[0], bounds[1], f"{label} outside {bounds[0]:g}-{bounds[1]:g}"]
        kept_terms.append(f"coalesce({column} BETWEEN ? AND ?, false)")
        kept_params += list(bounds)
    if move["require_correct"]:
        checks.append("CASE WHEN correct IS NOT TRUE THEN CASE WHEN correct IS NULL THEN 'correctness unknown' "
                      "ELSE 'incorrect' END END")
        kept_terms.append("correct IS TRUE")
    kept = " AND ".join(kept_terms)
    reason = f"concat_ws('; ', {', '.join(checks)})" if checks else "''"
    k = f"count(*) FILTER (WHERE {kept})"
    queries = [
        (f"SELECT count(*), {k}, count(DISTINCT problem_id), count(DISTINCT problem_id) FILTER (WHERE {kept}) FROM meta",
         kept_params * 2),
        (f"SELECT coalesce(model, '(no model)'), count(*), {k} FROM meta GROUP BY ALL", kept_params),
        (f"SELECT dataset, count(*), {k} FROM meta GROUP BY ALL", kept_params),
        (f"SELECT floor(cd), count(*), {k} FROM meta GROUP BY ALL", kept_params),
        (f"SELECT {reason} AS reason, count(*) FROM meta WHERE NOT ({kept}) GROUP BY ALL", [*params, *kept_params]),
        (f"SELECT floor(rv), count(*), {k} FROM meta GROUP BY ALL", kept_params),
        (f"SELECT floor(n_tokens / {width}), count(*), {k} FROM meta GROUP BY ALL", kept_params),
    ]
    if not checks:  # no reason to group by: the reasons query is still run, over no rows
        queries[4] = ("SELECT '' AS reason, count(*) FROM meta WHERE false", [])
    three = (f"SELECT floor(n_tokens / {width}) AS bin, count(*), {k} FROM meta GROUP BY ALL", kept_params)
    return queries, three


def _child_duckdb(args: dict) -> dict:
    import duckdb

    from core import selection

    db = args["db"]
    base = _selection(db)
    started = time.perf_counter()
    table, read_s = _read_pool_table(db, base)
    con = duckdb.connect()
    con.register("pool_arrow", table)
    con.execute("CREATE TABLE meta AS SELECT * EXCLUDE (dataset, model), CAST(dataset AS VARCHAR) AS dataset, "
                "CAST(model AS VARCHAR) AS model FROM pool_arrow")
    con.unregister("pool_arrow")
    del table
    load_s = time.perf_counter() - started
    top = con.execute("SELECT coalesce(max(n_tokens), 0) FROM meta").fetchone()[0]
    width = selection._nice_width(float(top), selection.TOKEN_BINS)
    moves = slider_moves(args["moves"], _max_tokens(db), args["seed"])
    seconds, three_seconds, kept = [], [], []
    for i, move in enumerate([moves[0], *moves]):
        queries, three = _bare_queries(move, width)
        t0 = time.perf_counter()
        results = [con.execute(q, p).fetchall() for q, p in queries]
        elapsed = time.perf_counter() - t0
        t0 = time.perf_counter()
        con.execute(*three).fetchall()
        three_elapsed = time.perf_counter() - t0
        if i == 0:
            continue  # warm-up
        seconds.append(elapsed)
        three_seconds.append(three_elapsed)
        by_model = sorted(results[1])
        kept.append([results[0][0][1], results[0][0][3], [row[2] for row in by_model]])
    return {"load_seconds": load_s, "move": _timings(seconds), "three_figures": _timings(three_seconds), "kept": kept}


def _pandas_frame(db: str):
    """The whole corpus, text included, one row per CoT, with its RV, CD and correctness."""
    from core import selection, store

    sql, params = selection.pool_sql(_selection(db))
    with store.connect(db, read_only=True) as con:
        return con.execute(
            f"SELECT m.cot_id, m.problem_id, CAST(m.dataset AS VARCHAR) AS dataset, m.model, m.n_tokens, m.rv, m.cd, "
            "m.correct, p.question, p.reference_answer, c.thinking, c.solution, c.full_text "
            f"FROM ({sql}) m JOIN cots c USING (cot_id) JOIN problems p ON p.problem_id = m.problem_id",
            params,
        ).df()


def _pandas_move(df, move: dict, width: float) -> dict:
    import numpy as np
    import pandas as pd

    keep = pd.Series(True, index=df.index)
    state_columns = []
    for column, label, bounds in (("rv", "RV", move["rv_range"]), ("cd", "CD", move["cd_range"]),
                                  ("n_tokens", "tokens", move["tokens_range"])):
        if bounds is None:
            continue
        values = df[column]
        missing = values.isna()
        inside = values.between(bounds[0], bounds[1]) & ~missing
        missing_reason = "no token count" if column == "n_tokens" else f"no {label} score"
        state_columns.append(np.select([missing, ~inside], [missing_reason, f"{label} outside {bounds[0]:g}-{bounds[1]:g}"], ""))
        keep &= inside
    if move["require_correct"]:
        known = df["correct"].notna().to_numpy()
        is_true = df["correct"].fillna(False).astype(bool).to_numpy()
        state_columns.append(np.select([~known, ~is_true], ["correctness unknown", "incorrect"], ""))
        keep &= is_true
    dropped = ~keep.to_numpy()
    reasons = {}
    if state_columns:
        states = pd.DataFrame({str(i): s[dropped] for i, s in enumerate(state_columns)})
        for combo, count in states.value_counts().items():
            reasons["; ".join(part for part in combo if part)] = int(count)
    frame = pd.DataFrame({"model": df["model"].fillna("(no model)"), "dataset": df["dataset"],
                          "cd": np.floor(df["cd"]), "rv": np.floor(df["rv"]),
                          "tokens": np.floor(df["n_tokens"] / width), "kept": keep})
    groups = {by: frame.groupby(by, dropna=False)["kept"].agg(["size", "sum"]) for by in ("model", "dataset", "cd", "rv", "tokens")}
    return {"kept_cots": int(keep.sum()), "kept_problems": int(df.loc[keep, "problem_id"].nunique()),
            "pool_problems": int(df["problem_id"].nunique()), "by_model": groups["model"]["sum"].sort_index().tolist(),
            "reasons": reasons}


def _child_pandas(args: dict) -> dict:
    from core import selection

    db = args["db"]
    started = time.perf_counter()
    df = _pandas_frame(db)
    load_s = time.perf_counter() - started
    df["n_tokens"] = df["n_tokens"].astype("float64")  # a missing count as NaN, like rv and cd
    top = df["n_tokens"].max()
    width = selection._nice_width(0.0 if top != top else float(top), selection.TOKEN_BINS)
    moves = slider_moves(args["moves"], _max_tokens(db), args["seed"])[:args["pandas_moves"]]
    seconds, kept = [], []
    _pandas_move(df, moves[0], width)  # warm-up
    for move in moves:
        t0 = time.perf_counter()
        out = _pandas_move(df, move, width)
        seconds.append(time.perf_counter() - t0)
        kept.append([out["kept_cots"], out["kept_problems"], [int(v) for v in out["by_model"]]])
    text_bytes = int(sum(df[c].str.len().fillna(0).sum() for c in ("question", "reference_answer", "thinking",
                                                                  "solution", "full_text")))
    return {"rows": len(df), "load_seconds": load_s, "move": _timings(seconds), "kept": kept, "text_chars": text_bytes}


CHILDREN = {"ours": _child_ours, "duckdb": _child_duckdb, "pandas": _child_pandas}


def _child(name: str, args_json: str) -> None:
    print(json.dumps(CHILDREN[name](json.loads(args_json))))


def _run(name: str, args: dict, logdir: Path, tag: str):
    child = run_child(python_child([SCRIPT, "_child", name, json.dumps(args)]), logdir=logdir, name=f"{tag}-{name}")
    out = child.last_json()
    out.update(seconds=child.seconds, cpu_seconds=child.cpu_seconds, peak_rss_bytes=child.max_rss_bytes)
    return out


# --------------------------------------------------------------------------- stores


def count_cots(db: Path) -> int:
    from core import store

    return int(store.read_rows("SELECT count(*) FROM cots", db=db)[0][0])


def subset_store(source: Path, target: Path, n_cots: int) -> Path:
    """A store holding the first problems of ``source`` (by problem_id) with all their CoTs,
    scores and text, about ``n_cots`` CoTs; reused when already built."""
    import duckdb

    from core import store

    if target.exists():
        return target
    partial = target.with_name(target.name + ".part")
    partial.unlink(missing_ok=True)
    log(f"copying the first ~{n_cots:,} CoTs of {source} into {target}")
    with duckdb.connect(str(partial)) as con:
        con.execute(store.SCHEMA)
        con.execute(f"ATTACH '{source}' AS src (READ_ONLY)")
        con.execute(
            "CREATE TEMP TABLE keep AS SELECT problem_id FROM (SELECT problem_id, "
            "sum(count(*)) OVER (ORDER BY problem_id) AS upto FROM src.cots GROUP BY problem_id) WHERE upto <= ?",
            [n_cots],
        )
        for table in ("meta", "datasets", "score_sources", "run_metrics"):
            con.execute(f"INSERT INTO {table} SELECT * FROM src.{table}")
        con.execute("INSERT INTO problems SELECT * FROM src.problems WHERE problem_id IN (SELECT problem_id FROM keep)")
        con.execute("INSERT INTO cots SELECT * FROM src.cots WHERE problem_id IN (SELECT problem_id FROM keep)")
        con.execute("INSERT INTO scores SELECT * FROM src.scores WHERE cot_id IN (SELECT cot_id FROM cots)")
        con.execute("DETACH src")
    partial.rename(target)
    return target


def generated_store(workdir: Path, n_cots: int, text_scale: float, *, tokens: bool) -> Path:
    """A store built by the real ingest from a generated OmniThought-shaped file."""
    from core.demo import n_problems_for_cots, write_omnithought
    from core.ingest import ingest
    from core.tokens import count_tokens_stage

    target = workdir / f"generated-{n_cots}-x{text_scale:g}.duckdb"
    if target.exists():
        return target
    src = workdir / f"generated-{n_cots}-x{text_scale:g}.parquet"
    log(f"generating {n_cots:,} CoTs at text_scale {text_scale:g} and ingesting them")
    write_omnithought(src, n_problems_for_cots(n_cots), seed=0, text_scale=text_scale)
    partial = target.with_name(target.name + ".part")
    partial.unlink(missing_ok=True)
    ingest(str(src), name="generated", db=partial, generated=True)
    if tokens:
        count_tokens_stage(db=partial)
    partial.rename(target)
    src.unlink()
    return target


def _available_bytes() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


# --------------------------------------------------------------------------- one size


def run_size(db: Path, args, logdir: Path, pandas_bytes_per_cot: float | None) -> dict:
    n = count_cots(db)
    child_args = {"db": str(db), "moves": args.moves, "seed": args.seed, "general_moves": GENERAL_PATH_MOVES,
                  "pandas_moves": args.pandas_moves}
    result = {"cots": n, "store": str(db), "load_before": machine_load()}
    log(f"{n:,} CoTs: ours")
    result["ours"] = _run("ours", child_args, logdir, f"n{n}")
    log(f"{n:,} CoTs: bare DuckDB")
    result["duckdb"] = _run("duckdb", child_args, logdir, f"n{n}")
    estimate = pandas_bytes_per_cot * n if pandas_bytes_per_cot else None
    available = _available_bytes() - MEMORY_HEADROOM_BYTES
    if args.no_pandas:
        result["pandas"] = {"skipped": "--no-pandas"}
    elif estimate is not None and estimate > available:
        result["pandas"] = {"skipped": f"would need about {estimate / 1024**3:.1f} GiB (extrapolated from the previous "
                                       f"size), {available / 1024**3:.1f} GiB available"}
    else:
        log(f"{n:,} CoTs: pandas")
        try:
            result["pandas"] = _run("pandas", child_args, logdir, f"n{n}")
        except ChildFailed as exc:  # killed for memory, most likely
            result["pandas"] = {"skipped": f"failed: {str(exc)[-300:]}"}
    result["load_after"] = machine_load()
    ours, bare, pandas = result["ours"], result["duckdb"], result["pandas"]
    result["kept_match_duckdb"] = ours["kept"] == bare["kept"]
    result["ratio_vs_duckdb"] = ours["move"]["p50_ms"] / bare["move"]["p50_ms"]
    result["ratio_vs_duckdb_three_figures"] = ours["move"]["p50_ms"] / bare["three_figures"]["p50_ms"]
    if "move" in pandas:
        result["kept_match_pandas"] = ours["kept"][:len(pandas["kept"])] == pandas["kept"]
        result["pandas_speedup"] = pandas["move"]["p50_ms"] / ours["move"]["p50_ms"]
        result["pandas_memory_ratio"] = pandas["peak_rss_bytes"] / ours["peak_rss_bytes"]
        result["pandas_bytes_per_cot"] = pandas["peak_rss_bytes"] / n
    if ours.get("general"):
        result["speedup_vs_general_path"] = ours["general"]["p50_ms"] / ours["move"]["p50_ms"]
    for key in ("kept", ):
        for method in ("ours", "duckdb", "pandas"):
            result[method].pop(key, None)
    return result


def probe_pandas_text(workdir: Path, n_cots: int, logdir: Path) -> dict:
    """The pandas way's peak RSS per CoT at full OmniThought text length (text_scale 1)."""
    db = generated_store(workdir, n_cots, 1.0, tokens=False)
    out = _run("pandas", {"db": str(db), "moves": 3, "seed": 0, "general_moves": 0, "pandas_moves": 3}, logdir,
               f"probe{n_cots}")
    per_cot = out["peak_rss_bytes"] / out["rows"]
    return {"cots": out["rows"], "peak_rss_bytes": out["peak_rss_bytes"], "bytes_per_cot": per_cot,
            "text_chars_per_cot": out["text_chars"] / out["rows"], "load_seconds": out["load_seconds"],
            "fits_24gb_up_to_cots_extrapolated": int(PANDAS_LIMIT_BYTES / per_cot)}


# --------------------------------------------------------------------------- report


def _mb(b: float) -> float:
    return b / MIB


def report(result: dict) -> str:
    lines = [
        "| CoTs | ours: one slider move p50 / p95 ms | bare DuckDB (same figures, 7 queries) p50 / p95 ms | "
        "ours / bare | bare DuckDB 3 figures p50 ms | before (decide + summarize) p50 ms | dropped page p50 ms | "
        "pool load s (read) | ours peak RSS MiB | pandas per move p50 ms | pandas load s | pandas peak RSS MiB | "
        "pandas / ours: time; memory | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["sizes"]:
        o, d, p = r["ours"], r["duckdb"], r["pandas"]
        general = f"{o['general']['p50_ms']:,.0f}" if o.get("general") else "-"
        if "move" in p:
            pandas = (f"{p['move']['p50_ms']:,.0f} | {p['load_seconds']:.1f} | {_mb(p['peak_rss_bytes']):,.0f} | "
                      f"{r['pandas_speedup']:.0f}x; {r['pandas_memory_ratio']:.1f}x")
        else:
            pandas = f"not run: {p['skipped']} | - | - | -"
        lines.append(
            f"| {r['cots']:,} | {o['move']['p50_ms']:.1f} / {o['move']['p95_ms']:.1f} | "
            f"{d['move']['p50_ms']:.1f} / {d['move']['p95_ms']:.1f} | {r['ratio_vs_duckdb']:.2f} | "
            f"{d['three_figures']['p50_ms']:.1f} | {general} | {o['dropped_page']['p50_ms']:.1f} | "
            f"{o['load_seconds']:.1f} ({o['read_seconds']:.1f}) | {_mb(o['peak_rss_bytes']):,.0f} | {pandas} | "
            f"{r['load_before']['load_1m']:.1f}/{r['load_after']['load_1m']:.1f} |"
        )
    notes = [
        f"{result['moves']} slider moves per size (seed {result['seed']}); {os.cpu_count()} CPUs; "
        "load avg = 1-minute load before/after the size.",
        "Kept counts agree with bare DuckDB at every size: "
        + ("yes" if all(r["kept_match_duckdb"] for r in result["sizes"]) else "NO")
        + "; with pandas where it ran: "
        + ("yes" if all(r.get("kept_match_pandas", True) for r in result["sizes"]) else "NO") + ".",
    ]
    probe = result.get("pandas_text_probe")
    if probe and "error" in probe:
        notes.append(f"pandas full-text probe failed: {probe['error']}")
    elif probe:
        notes.append(
            f"pandas at full text length (text_scale 1, {probe['cots']:,} CoTs, {probe['text_chars_per_cot']:,.0f} "
            f"characters of text per CoT): peak RSS {_mb(probe['peak_rss_bytes']):,.0f} MiB, "
            f"{probe['bytes_per_cot'] / 1024:,.1f} KiB per CoT; extrapolated, 24 GiB holds about "
            f"{probe['fits_24gb_up_to_cots_extrapolated']:,} CoTs (an extrapolation, not a measurement)."
        )
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark one slider move on the Select page against bare DuckDB and pandas.")
    parser.add_argument("--store", help="the largest store (e.g. the 2M OmniThought-shaped one); opened read-only")
    parser.add_argument("--cots", type=int, nargs="+", default=[],
                        help="sizes: stores of about this many CoTs are cut from --store (its own size if omitted)")
    parser.add_argument("--tiny", action="store_true", help="generate a store of a few hundred CoTs and use it")
    parser.add_argument("--moves", type=int, default=30, help="slider moves timed per method and size")
    parser.add_argument("--pandas-moves", type=int, default=10, help="of those, how many the pandas way runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-pandas", action="store_true")
    parser.add_argument("--pandas-text-probe", type=int, default=0, metavar="N",
                        help="also measure pandas' memory per CoT at full text length on N generated CoTs")
    parser.add_argument("--json", action="store_true", help="also print the result as one JSON line, last")
    parser.add_argument("--workdir", help="where stores and child logs go (kept); default a temporary folder (removed)")
    args = parser.parse_args(argv)
    if not args.tiny and not args.store:
        parser.error("give --store (or --tiny)")
    if args.moves < 1 or args.pandas_moves < 1:
        parser.error("--moves and --pandas-moves must be at least 1")

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-select-"))
    workdir.mkdir(parents=True, exist_ok=True)
    logdir = workdir / "logs"
    result = {"bench": "select", "moves": args.moves, "seed": args.seed, "sizes": []}
    try:
        if args.tiny:
            stores = [generated_store(workdir, 300, 0.02, tokens=True)]
        else:
            source = Path(args.store)
            total = count_cots(source)
            stores = []
            for n in sorted(args.cots or [total]):
                stores.append(source if n >= total * 0.98 else subset_store(source, workdir / f"subset-{n}.duckdb", n))
        per_cot = None
        for db in stores:
            size = run_size(db, args, logdir, per_cot)
            per_cot = size.get("pandas_bytes_per_cot", per_cot)
            result["sizes"].append(size)
            log(f"{size['cots']:,} CoTs: ours p50 {size['ours']['move']['p50_ms']:.1f} ms, "
                f"bare DuckDB {size['duckdb']['move']['p50_ms']:.1f} ms")
        if args.pandas_text_probe:
            try:
                result["pandas_text_probe"] = probe_pandas_text(workdir, args.pandas_text_probe, logdir)
            except ChildFailed as exc:  # the sizes above still get reported
                result["pandas_text_probe"] = {"error": str(exc)[-500:]}
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
        _child(sys.argv[2], sys.argv[3])
    else:
        sys.exit(main())
