"""Select across clusters (core.selection.PerCluster) at OmniThought's scale, beside plain polars.

    python bench/bench_clusters.py [--problems 708000] [--clusters 50000] [--target 100000] [--repeats 3] [--json]
    python bench/bench_clusters.py --tiny --json        # a few thousand generated rows (the test)

The pool (ids and numbers, as core.selection.load_pool holds it after reading the store: that
read is bench_select.py's) is generated: ``--problems`` problems with 1 to 5 CoTs each, every
problem in one of ``--clusters`` clusters (a skewed size distribution, as near-duplicate and map
clusters have) given as the pool's cluster figure column. Each case is decided in memory, as
the Select page does with a loaded pool:

* one problem per cluster, the one with the most CoTs (the near-duplicate preset);
* at most 3 CoTs per cluster, random by seed;
* about ``n`` CoTs spread in proportion to cluster size, and spread evenly (water-filling).

The baseline is the same selection written directly in polars (group, sort, rank, join back),
timed in the same run; both must keep exactly the same CoTs. Timings are medians of
``--repeats`` runs; the machine's load averages are recorded beside them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `core` and `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import pyarrow as pa  # noqa: E402

from bench.common import format_table, log, machine_load  # noqa: E402
from core import selection  # noqa: E402
from core.queries import CotFilter  # noqa: E402
from core.selection import PerCluster, Selection  # noqa: E402

SEED = 7


def generate_pool(sel: Selection, n_problems: int, n_clusters: int, seed: int = 0) -> pa.Table:
    """The pool of ``sel`` (selection.pool_columns): problems with 1-5 CoTs, clusters of Zipf-like
    sizes (cluster = floor(n_clusters * u^2): small ids are big clusters)."""
    rng = np.random.default_rng(seed)
    per_problem = rng.integers(1, 6, n_problems)
    problem_ids = (1 << 32) + np.arange(n_problems, dtype=np.int64)
    problem_of_cot = np.repeat(problem_ids, per_problem)
    n = len(problem_of_cot)
    cluster_of_problem = np.floor(n_clusters * rng.random(n_problems) ** 2).astype(np.float64)
    columns = {name: pa.nulls(n, pa.float64()) for name in selection.pool_columns(sel)}
    columns.update(
        cot_id=pa.array((1 << 32) + np.arange(n, dtype=np.int64)), problem_id=pa.array(problem_of_cot),
        dataset_id=pa.array(np.ones(n, dtype=np.int64)), dataset=pa.array(["generated"] * n).dictionary_encode(),
        model=pa.array(["teacher"] * n).dictionary_encode(), n_tokens=pa.array(rng.integers(100, 20000, n)),
        n_chars=pa.array(rng.integers(400, 80000, n)), n_paragraphs=pa.array(rng.integers(1, 50, n)),
        n_reflections=pa.array(rng.integers(0, 20, n)), truncated=pa.array(np.zeros(n, dtype=bool)),
        correct=pa.array(rng.random(n) < 0.7),
    )
    columns[selection.figure_column(sel, sel.rule.cluster)] = pa.array(np.repeat(cluster_of_problem, per_problem))
    return pa.table(columns)


def cases(n_target: int) -> dict[str, PerCluster]:
    base = {"cluster_metric": "cluster", "cluster_source": "map (bench)"}
    return {
        "one problem per cluster (most CoTs)": PerCluster(**base),
        "at most 3 CoTs per cluster (random)": PerCluster(**base, unit="cots", m=3, pick="random"),
        f"{n_target:,} CoTs in proportion (random)": PerCluster(**base, unit="cots", spread="proportional", n=n_target,
                                                                 pick="random"),
        f"{n_target:,} CoTs evenly (random)": PerCluster(**base, unit="cots", spread="uniform", n=n_target, pick="random"),
    }


def uniform_np(seed: int, ids: np.ndarray) -> np.ndarray:
    """selection.uniform over an array (uint64 arithmetic wraps as the mask does)."""
    def mix(z):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(selection._MIX1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(selection._MIX2)
        return z ^ (z >> np.uint64(31))

    with np.errstate(over="ignore"):
        z = mix(ids.astype(np.uint64) ^ np.uint64(selection._seed_salt(seed)))
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53


def polars_kept(df: pl.DataFrame, rule: PerCluster, seed: int) -> pl.Series:
    """The same selection in plain polars: the baseline, and the check."""
    u = uniform_np(seed, df["cot_id"].to_numpy()) if rule.pick == "random" else None
    # the cluster's name as the SQL writes it (CAST AS VARCHAR): quotas break ties by name
    frame = df.select("cot_id", "problem_id", pl.col("fig_0").cast(pl.String).alias("clu"))
    if rule.unit == "problems":
        units = frame.group_by("clu", "problem_id").agg(pl.len().alias("n")).sort(
            ["clu", "n", "problem_id"], descending=[False, True, False])
        key = "problem_id"
    else:
        units = frame.with_columns(u=u).sort(["clu", "u", "problem_id", "cot_id"])
        key = "cot_id"
    units = units.with_columns(rank=pl.int_range(1, pl.len() + 1).over("clu"))
    if rule.spread == "cap":
        kept = units.filter(pl.col("rank") <= rule.m)
    else:
        sizes = units.group_by("clu").agg(pl.len().alias("units")).sort("clu")
        weights = dict(zip(sizes["clu"], sizes["units"])) if rule.spread == "proportional" else {c: 1 for c in sizes["clu"]}
        quota = selection.proportional_quotas(weights, dict(zip(sizes["clu"], sizes["units"])), rule.n)
        q = pl.DataFrame({"clu": list(quota), "quota": list(quota.values())}, schema={"clu": pl.String, "quota": pl.Int64})
        kept = units.join(q, on="clu").filter(pl.col("rank") <= pl.col("quota"))
    return frame.join(kept.select(key), on=key, how="semi")["cot_id"].sort()


def _median_seconds(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def run(n_problems: int, n_clusters: int, n_target: int, repeats: int) -> dict:
    rows = []
    for name, rule in cases(n_target).items():
        sel = Selection(CotFilter(), rule, seed=SEED)
        table = generate_pool(sel, n_problems, n_clusters)
        pool = selection.LoadedPool(selection.pool_key(sel), table)
        df = pl.from_arrow(table)
        log(f"{name}: {table.num_rows:,} CoTs")
        ours_s, ours = _median_seconds(lambda s=sel, p=pool: selection.kept_ids(s, pool=p), repeats)
        report_s, report = _median_seconds(lambda s=sel, p=pool: selection.evaluate(s, pool=p), repeats)
        base_s, base = _median_seconds(lambda d=df, r=rule: polars_kept(d, r, SEED), repeats)
        agree = ours.to_list() == base.to_list()
        rows.append({"case": name, "cots": table.num_rows, "problems": n_problems, "clusters": n_clusters,
                     "kept": len(ours), "agree": agree, "ours_kept_ids_s": round(ours_s, 4),
                     "ours_report_s": round(report_s, 4), "polars_s": round(base_s, 4),
                     "ratio_vs_polars": round(ours_s / base_s, 2) if base_s else None,
                     "report_kept": report.kept_cots})
        pool.close()
        if not agree:
            raise SystemExit(f"{name}: ours keeps {len(ours):,} CoTs, polars {len(base):,}; they differ")
    return {"bench": "clusters", "repeats": repeats, "load": machine_load(), "cases": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--problems", type=int, default=708_000)
    p.add_argument("--clusters", type=int, default=50_000)
    p.add_argument("--target", type=int, default=100_000, help="n for the proportional and even spreads")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="2,000 problems, 100 clusters, n = 500, one repeat")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line last")
    args = p.parse_args(argv)
    if args.tiny:
        args.problems, args.clusters, args.target, args.repeats = 2000, 100, 500, 1
    result = run(args.problems, args.clusters, args.target, args.repeats)
    print(format_table(["case", "CoTs", "kept", "ours kept ids s", "ours report s", "polars s", "ours/polars"],
                       [[r["case"], r["cots"], r["kept"], r["ours_kept_ids_s"], r["ours_report_s"], r["polars_s"],
                         r["ratio_vs_polars"]] for r in result["cases"]]))
    print(f"load: {result['load']}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
