"""Stores for the page and export benchmarks: a deterministic subset of a big store, a
replicated one, or a generated one.

    python bench/stores.py subset SRC DST N_COTS      # the first ~N_COTS CoTs of SRC
    python bench/stores.py replicate SRC DST COPIES   # COPIES copies of SRC, ids shifted

``subset_store`` copies the first problems (by ``problem_id``) of a store, with every CoT and
score of theirs, until about ``n_cots`` CoTs: the 100k and 500k points of a curve are then the
same data as the 2M one, cut short. The source is opened read-only (attached), never written.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `core` and `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, log  # noqa: E402


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")


def subset_store(source: Path, target: Path, n_cots: int) -> dict:
    """Copy about ``n_cots`` CoTs (whole problems, lowest ids first) of ``source`` into a new
    store ``target``; reused when ``target`` already holds that subset. Returns its counts."""
    import duckdb

    from core import store

    if target.exists():
        con = duckdb.connect(str(target), read_only=True)
        try:
            row = con.execute("SELECT value FROM meta WHERE key = 'bench_subset'").fetchone()
            if row and row[0] == f"{source}:{n_cots}":
                cots, problems = con.execute("SELECT count(*), count(DISTINCT problem_id) FROM cots").fetchone()
                log(f"reusing subset store {target}")
                return {"cots": cots, "problems": problems, "path": str(target), "reused": True}
        finally:
            con.close()
    for p in (target, target.with_name(target.name + ".wal")):
        p.unlink(missing_ok=True)
    log(f"copying the first ~{n_cots:,} CoTs of {source} into {target}")
    store.init_store(target)
    con = duckdb.connect(str(target))
    try:
        con.execute("SET enable_progress_bar = false")
        con.execute(f"ATTACH '{_sql_path(source)}' AS src (READ_ONLY)")
        # the problems whose running CoT count stays within n_cots, in problem_id order
        con.execute(
            "CREATE TEMP TABLE keep AS SELECT problem_id FROM ("
            " SELECT problem_id, sum(n) OVER (ORDER BY problem_id) AS running FROM ("
            "  SELECT problem_id, count(*) AS n FROM src.cots GROUP BY problem_id)) WHERE running <= ?",
            [n_cots],
        )
        con.execute("BEGIN")
        con.execute("INSERT INTO problems SELECT p.* FROM src.problems p SEMI JOIN keep USING (problem_id)")
        con.execute("INSERT INTO cots SELECT c.* FROM src.cots c SEMI JOIN keep USING (problem_id) ORDER BY c.cot_id")
        con.execute("INSERT INTO score_sources SELECT * FROM src.score_sources")
        con.execute("INSERT INTO scores SELECT s.* FROM src.scores s SEMI JOIN cots c USING (cot_id)")
        con.execute("INSERT INTO run_metrics SELECT * FROM src.run_metrics")
        con.execute("INSERT INTO datasets SELECT * FROM src.datasets")
        con.execute(
            "UPDATE datasets SET n_cots = (SELECT count(*) FROM cots c WHERE c.dataset_id = datasets.dataset_id), "
            "n_problems = (SELECT count(*) FROM problems p WHERE p.dataset_id = datasets.dataset_id)"
        )
        con.execute("INSERT OR REPLACE INTO meta VALUES ('bench_subset', ?)", [f"{source}:{n_cots}"])
        con.execute("COMMIT")
        con.execute("DETACH src")
        con.execute("CHECKPOINT")
        cots, problems = con.execute("SELECT count(*), count(DISTINCT problem_id) FROM cots").fetchone()
    finally:
        con.close()
    return {"cots": cots, "problems": problems, "path": str(target), "reused": False}


def generated_store(target: Path, n_cots: int, *, text_scale: float = 0.01) -> dict:
    """A store of about ``n_cots`` generated OmniThought-shaped CoTs, ingested the way a user
    does it (``python -m core ingest``: math-verify and token counts included)."""
    import duckdb

    from core.demo import n_problems_for_cots, write_omnithought

    if target.exists():
        con = duckdb.connect(str(target), read_only=True)
        try:
            cots, problems = con.execute("SELECT count(*), count(DISTINCT problem_id) FROM cots").fetchone()
        finally:
            con.close()
        if cots:
            return {"cots": cots, "problems": problems, "path": str(target), "reused": True}
    source = target.with_suffix(".jsonl")
    write_omnithought(source, n_problems_for_cots(n_cots), seed=0, text_scale=text_scale, fmt="jsonl")
    log(f"ingesting {source} into {target}")
    subprocess.run(
        [sys.executable, "-m", "core", "--db", str(target), "ingest", str(source), "--name", "bench (generated)",
         "--generated"],
        check=True, cwd=ROOT, capture_output=True,
    )
    source.unlink(missing_ok=True)
    con = duckdb.connect(str(target), read_only=True)
    try:
        cots, problems = con.execute("SELECT count(*), count(DISTINCT problem_id) FROM cots").fetchone()
    finally:
        con.close()
    return {"cots": cots, "problems": problems, "path": str(target), "reused": False}


def bench_store(workdir: Path, *, source: str | None, n_cots: int | None) -> dict:
    """The store a benchmark runs on: ``source`` as it is (no ``n_cots``), a subset of it, or a
    generated one of ``n_cots`` CoTs when there is no source."""
    if source and not n_cots:
        import duckdb

        con = duckdb.connect(source, read_only=True)
        try:
            cots, problems = con.execute("SELECT count(*), count(DISTINCT problem_id) FROM cots").fetchone()
        finally:
            con.close()
        return {"cots": cots, "problems": problems, "path": str(Path(source).resolve()), "reused": True}
    if source:
        return subset_store(Path(source).resolve(), workdir / f"subset-{n_cots}.duckdb", n_cots)
    return generated_store(workdir / f"generated-{n_cots}.duckdb", n_cots or 300)


def replicate_store(source: Path, target: Path, copies: int) -> dict:
    """``copies`` copies of every problem, CoT and score of ``source`` in a new store, ids
    shifted per copy: the same metadata distribution at ``copies`` times the rows (how the
    2M-row store of the page benchmark was made from a generated 100k one)."""
    import duckdb

    from core import store

    for p in (target, target.with_name(target.name + ".wal")):
        p.unlink(missing_ok=True)
    store.init_store(target)
    con = duckdb.connect(str(target))
    try:
        con.execute("SET enable_progress_bar = false")
        con.execute(f"ATTACH '{_sql_path(source)}' AS src (READ_ONLY)")
        span = con.execute("SELECT greatest(max(cot_id) - min(cot_id), max(problem_id) - min(problem_id)) + 1 "
                           "FROM src.cots").fetchone()[0]
        con.execute("INSERT INTO datasets SELECT * FROM src.datasets")
        con.execute("INSERT INTO score_sources SELECT * FROM src.score_sources")
        con.execute("INSERT INTO run_metrics SELECT * FROM src.run_metrics")
        for i in range(copies):
            shift = i * (span + 1)  # stays inside each dataset's id range (ids are dataset_id << 32 + index)
            con.execute(f"INSERT INTO problems SELECT * REPLACE (problem_id + {shift} AS problem_id, "
                        f"problem_key || '-{i}' AS problem_key) FROM src.problems")
            con.execute(f"INSERT INTO cots SELECT * REPLACE (cot_id + {shift} AS cot_id, problem_id + {shift} AS problem_id) "
                        "FROM src.cots ORDER BY cot_id")
            con.execute(f"INSERT INTO scores SELECT * REPLACE (cot_id + {shift} AS cot_id) FROM src.scores")
            log(f"copy {i + 1} of {copies}")
        con.execute("UPDATE datasets SET n_cots = (SELECT count(*) FROM cots c WHERE c.dataset_id = datasets.dataset_id), "
                    "n_problems = (SELECT count(*) FROM problems p WHERE p.dataset_id = datasets.dataset_id)")
        con.execute("DETACH src")
        con.execute("CHECKPOINT")
        cots, problems = con.execute("SELECT count(*), count(DISTINCT problem_id) FROM cots").fetchone()
    finally:
        con.close()
    return {"cots": cots, "problems": problems, "path": str(target)}


if __name__ == "__main__":
    # python bench/stores.py subset SRC DST N_COTS | replicate SRC DST COPIES
    action, src, dst, number = sys.argv[1:5]
    make = {"subset": subset_store, "replicate": replicate_store}[action]
    print(make(Path(src).resolve(), Path(dst).resolve(), int(number)))
