"""Search benchmark: the tantivy full-text index (core.search) beside DuckDB's substring scan.

    python bench/bench_search.py --source /work/bench-data/omni-2m.duckdb \
        --sizes 100000,500000,2000000 --workdir DIR [--repeats 5] [--json]
    python bench/bench_search.py --generate 400 [--json]      # a tiny generated store

For each size N: a store of the first N CoTs of ``--source`` (copied by problem into the
workdir; the source itself, opened read-only, when N covers it), then, each in its own child
process (bench.common.run_child: wall, CPU, peak RSS):

* the index build, ``python -m core --db STORE index --path DIR`` into a folder of the
  workdir (the source store is never written): seconds, MB/s of text, size on disk;
* the searches, over a set of phrases (rare, common, multi-word, in most CoTs, no hit), each
  repeated: the index's answer (every matching CoT id and the count, ``core.search.search``)
  against DuckDB listing the ids whose question or text contains the phrase (the substring
  scan the app ran before), and the Explore page's query with that text filter (count + first
  page of 50, ``core.queries``) through the index against the same through the substring scan.
  The index's hit cache is emptied before every repeat, so each one searches afresh.

Ratios are substring / index time, measured in the same child. The semantics differ (the index
matches whole words, the scan any substring), so both hit counts are printed per phrase. With
``--json`` the last stdout line is the whole result as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `core` and `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import MB, log, machine_load, python_child, run_child  # noqa: E402

SCRIPT = str(Path(__file__).resolve())
# (label, phrase): picked from the generated corpus's sentences (core.demo)
PHRASES = [
    ("rare, 3 words", "missed any constraint"),
    ("common word", "wait"),
    ("multi-word", "let me check"),
    ("in most CoTs", "the"),
    ("no hit", "zebra quantum"),
]


# --------------------------------------------------------------------------- stores


COPY_CHUNK = 200_000  # CoTs per short read of the source (a writer may be using it)


def subset_store(source: Path, n_cots: int, target: Path, *, copy: bool = False) -> dict:
    """A store of the first problems of ``source`` holding about ``n_cots`` CoTs (whole
    problems, ids kept; scores are left out: the searches do not read them), or the source
    itself when it has no more than that (unless ``copy``).

    The source is read in chunks, each on its own short read-only connection that waits for
    the lock (core.store.connect), so a stage still writing to it (verify, tokens) goes on."""
    import duckdb

    from core import store

    total = store.read_rows("SELECT count(*) FROM cots", db=source)[0][0]
    if n_cots >= total and not copy:
        return {"store": str(source), "cots": total, "subset": False}
    n_cots = min(n_cots, total)
    cutoff = store.read_rows("SELECT problem_id FROM cots ORDER BY cot_id LIMIT 1 OFFSET ?", [n_cots - 1], db=source)[0][0]
    sidecar = target.with_name(target.name + ".info.json")
    if sidecar.exists() and target.exists():
        info = json.loads(sidecar.read_text())
        if info.get("source") == str(source) and info.get("cutoff") == cutoff:
            log(f"reusing subset store {target}")
            return info
    target.unlink(missing_ok=True)
    log(f"copying the first {n_cots:,} CoTs of {source} -> {target}")
    store.init_store(target)

    def copy_rows(table: str, sql: str, params: list) -> None:
        with store.connect(source, read_only=True) as src:
            rows = src.sql(sql, params=params or None).to_arrow_table()
        with duckdb.connect(str(target)) as out:
            out.register("chunk", rows)
            out.execute(f"INSERT INTO {table} SELECT * FROM chunk")

    copy_rows("datasets", "SELECT * FROM datasets WHERE status = 'ready'", [])
    copy_rows("score_sources", "SELECT * FROM score_sources", [])
    copy_rows("problems", "SELECT * FROM problems WHERE problem_id <= ?", [cutoff])
    lo, hi = store.read_rows("SELECT min(cot_id), max(cot_id) FROM cots WHERE problem_id <= ?", [cutoff], db=source)[0]
    for start in range(lo, hi + 1, COPY_CHUNK):
        copy_rows("cots", "SELECT * FROM cots WHERE cot_id >= ? AND cot_id < ? AND problem_id <= ?",
                  [start, start + COPY_CHUNK, cutoff])
    with duckdb.connect(str(target)) as con:
        con.execute(
            "UPDATE datasets SET n_cots = (SELECT count(*) FROM cots c WHERE c.dataset_id = datasets.dataset_id), "
            "n_problems = (SELECT count(*) FROM problems p WHERE p.dataset_id = datasets.dataset_id)"
        )
        cots = con.execute("SELECT count(*) FROM cots").fetchone()[0]
    info = {"store": str(target), "cots": cots, "subset": True, "source": str(source), "cutoff": cutoff}
    sidecar.write_text(json.dumps(info))
    return info


def generated_store(workdir: Path, n_cots: int) -> Path:
    from core.demo import n_problems_for_cots, write_omnithought
    from core.ingest import ingest

    src = workdir / f"generated-{n_cots}.parquet"
    target = workdir / f"generated-{n_cots}.duckdb"
    if not target.exists():
        write_omnithought(src, n_problems_for_cots(n_cots), seed=0, text_scale=0.05)
        ingest(str(src), name="bench (generated)", db=target, generated=True)
    return target


def _dir_bytes(folder: Path, skip: str = "hits") -> int:
    total = 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != skip]
        total += sum((Path(root) / f).stat().st_size for f in files)
    return total


# --------------------------------------------------------------------------- child: searches


def _child_queries(args: dict) -> dict:
    """Runs in a child process with THOUGHTSCOPE_SEARCH_INDEX set to the index folder."""
    from core import queries, search, store

    db, repeats = args["store"], args["repeats"]
    index_folder = search.index_dir(db)
    assert search.coverage(db).complete, f"the index {index_folder} does not cover {db}"
    no_index = str(Path(args["workdir"]) / "no-index-here")

    cpu: dict[str, list[float]] = {}

    def timed(fn, step=None):
        """Wall seconds and value; the process CPU seconds (all threads) go to ``cpu[step]``:
        on a shared machine CPU time says more than wall time."""
        started, cpu_started = time.perf_counter(), time.process_time()
        value = fn()
        if step:
            cpu.setdefault(step, []).append(time.process_time() - cpu_started)
        return time.perf_counter() - started, value

    import duckdb

    # Like the index (opened once, kept), the scan gets a connection opened once.
    con = duckdb.connect(str(store.db_path(db)), read_only=True)

    def substring_ids(phrase):
        return [r[0] for r in con.execute(
            "SELECT c.cot_id FROM cots c JOIN problems p ON p.problem_id = c.problem_id "
            f"JOIN datasets d ON d.dataset_id = c.dataset_id WHERE d.status = 'ready' AND {queries.SUBSTRING_SQL}",
            [phrase, phrase]).fetchall()]

    def explore(phrase):
        f = queries.CotFilter(text=phrase)
        n = queries.count(f, db=db)
        rows = queries.page(f, db=db, limit=50)
        return n["cots"], rows.height

    store.read_rows("SELECT count(*) FROM cots", db=db)  # open the file once before timing
    phrases = []
    for label, phrase in args["phrases"]:
        samples = {"index_search": [], "substring_search": [], "index_explore": [], "substring_explore": []}
        hits = {}
        for _ in range(repeats):
            search._clear_hit_cache(index_folder)
            s, found = timed(lambda: search.search(phrase, db), "index_search")
            samples["index_search"].append(s)
            hits["index"] = found.n_cots
            search._clear_hit_cache(index_folder)
            s, (n, _) = timed(lambda: explore(phrase), "index_explore")
            samples["index_explore"].append(s)
            hits["index_explore"] = n
            os.environ["THOUGHTSCOPE_SEARCH_INDEX"] = no_index
            try:
                assert not search.coverage(db).exists
                s, ids = timed(lambda: substring_ids(phrase), "substring_search")
                samples["substring_search"].append(s)
                hits["substring"] = len(ids)
                s, (n, _) = timed(lambda: explore(phrase), "substring_explore")
                samples["substring_explore"].append(s)
                hits["substring_explore"] = n
            finally:
                os.environ["THOUGHTSCOPE_SEARCH_INDEX"] = str(index_folder)
        phrases.append({"label": label, "phrase": phrase, "hits": hits, "seconds": samples})
    return {"phrases": phrases, "cpu_seconds": cpu}


def _child(name: str, args_json: str) -> None:
    result = {"queries": _child_queries}[name](json.loads(args_json))
    print(json.dumps(result))


# --------------------------------------------------------------------------- parent


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(q * 100) - 1]


def run_size(info: dict, workdir: Path, repeats: int, logdir: Path) -> dict:
    n = info["cots"]
    index_folder = workdir / f"index-{n}"
    if index_folder.exists():
        shutil.rmtree(index_folder)
    log(f"N={n:,}: building the index into {index_folder}")
    build = run_child(python_child(["-m", "core", "--db", info["store"], "index", "--path", str(index_folder), "--json"]),
                      logdir=logdir, name=f"index-{n}")
    built = build.last_json()
    index_bytes = _dir_bytes(index_folder)
    log(f"N={n:,}: {built['text_bytes'] / MB:,.0f} MB of text indexed in {build.seconds:.1f} s; searching")
    env = {"THOUGHTSCOPE_SEARCH_INDEX": str(index_folder)}
    args = {"store": info["store"], "repeats": repeats, "phrases": PHRASES, "workdir": str(workdir)}
    child = run_child(python_child([SCRIPT, "--child", "queries", json.dumps(args)]), logdir=logdir,
                      name=f"queries-{n}", env=env)
    searched = child.last_json()
    summary = {}
    for step in ("index_search", "substring_search", "index_explore", "substring_explore"):
        values = [v for p in searched["phrases"] for v in p["seconds"][step]]
        summary[step] = {"p50_s": _quantile(values, 0.5), "p95_s": _quantile(values, 0.95),
                         "cpu_p50_s": _quantile(searched["cpu_seconds"][step], 0.5)}
    return {
        "cots": n, "store": info["store"], "subset": info["subset"],
        "build": {"seconds": build.seconds, "cpu_seconds": build.cpu_seconds, "max_rss_bytes": build.max_rss_bytes,
                  "text_bytes": built["text_bytes"], "documents": built["cots"] + built["problems"],
                  "mb_per_s": built["text_bytes"] / MB / build.seconds, "index_bytes": index_bytes},
        "queries": summary, "phrases": searched["phrases"], "query_max_rss_bytes": child.max_rss_bytes,
        "load_after": machine_load(),
    }


def report(r: dict) -> str:
    ms = lambda s: s * 1000  # noqa: E731
    build_rows, query_rows, phrase_rows = [], [], []
    for size in r["sizes"]:
        b = size["build"]
        build_rows.append([f"{size['cots']:,}", b["text_bytes"] / MB, b["seconds"], b["cpu_seconds"], b["mb_per_s"],
                           b["max_rss_bytes"] / MB, b["index_bytes"] / MB, b["index_bytes"] / b["text_bytes"]])
        q = size["queries"]
        for what, ours, base in (("search: ids + count", "index_search", "substring_search"),
                                 ("Explore: count + first page", "index_explore", "substring_explore")):
            query_rows.append([
                f"{size['cots']:,}", what, ms(q[ours]["p50_s"]), ms(q[ours]["p95_s"]), ms(q[ours]["cpu_p50_s"]),
                ms(q[base]["p50_s"]), ms(q[base]["p95_s"]), ms(q[base]["cpu_p50_s"]),
                q[base]["p50_s"] / q[ours]["p50_s"], q[base]["cpu_p50_s"] / max(q[ours]["cpu_p50_s"], 1e-6),
            ])
        for p in size["phrases"]:
            med = {k: statistics.median(v) for k, v in p["seconds"].items()}
            phrase_rows.append([f"{size['cots']:,}", f"{p['phrase']!r} ({p['label']})", p["hits"]["index"],
                                p["hits"]["substring"], ms(med["index_search"]), ms(med["substring_search"]),
                                ms(med["index_explore"]), ms(med["substring_explore"])])
    md = lambda headers, rows: "\n".join(  # noqa: E731
        ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        + ["| " + " | ".join(_md(v) for v in row) + " |" for row in rows])
    return "\n\n".join([
        "Index build (`python -m core index`):",
        md(["CoTs", "text MB", "wall s", "CPU s", "MB/s", "peak RSS MB", "index MB", "index / text"], build_rows),
        "Search, p50 / p95 over phrases x repeats (ms; CPU = process CPU, all threads; "
        "ratio = substring / index, wall p50; CPU p50):",
        md(["CoTs", "query", "index p50", "index p95", "index CPU p50", "substring p50", "substring p95",
            "substring CPU p50", "ratio wall", "ratio CPU"], query_rows),
        "Per phrase (median ms; hits: index = whole words, substring = any substring):",
        md(["CoTs", "phrase", "index hits", "substring hits", "index search", "substring search",
            "index Explore", "substring Explore"], phrase_rows),
        f"Load before: {_load(r['load_before'])}; after: {_load(r['sizes'][-1]['load_after'])}.",
    ])


def _md(value) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else (f"{value:.1f}" if abs(value) >= 1 else f"{value:.3f}")
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _load(load: dict) -> str:
    return f"{load['load_1m']}/{load['load_5m']}/{load['load_15m']} (1/5/15 min, {load['cpus']} CPUs)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the full-text index against DuckDB's substring scan.")
    parser.add_argument("--source", help="store to take the CoTs from (opened read-only; never written)")
    parser.add_argument("--generate", type=int, help="instead of --source: generate a store of about this many CoTs")
    parser.add_argument("--sizes", help="comma-separated CoT counts (default: the whole source)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--copy", action="store_true",
                        help="copy the source even at its full size (when another process is writing to it)")
    parser.add_argument("--workdir", help="subset stores, indexes and logs (kept); default a temporary folder (removed)")
    parser.add_argument("--json", action="store_true", help="also print the result as one JSON line, last")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0
    if bool(args.source) == bool(args.generate):
        parser.error("give --source STORE or --generate N")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-search-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        source = Path(args.source).resolve() if args.source else generated_store(workdir, args.generate)
        sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else [sys.maxsize]
        result = {"source": str(source), "repeats": args.repeats, "load_before": machine_load(), "sizes": []}
        for n in sizes:
            info = subset_store(source, n, workdir / f"subset-{n}.duckdb", copy=args.copy)
            result["sizes"].append(run_size(info, workdir, args.repeats, workdir / "logs"))
        print(report(result))
        if args.json:
            print(json.dumps(result))
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
