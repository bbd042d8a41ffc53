"""Export benchmark: ThoughtScope's export (core/export.py) beside bare DuckDB COPY on the same rows.

    python bench/bench_export.py --db STORE [--cots N] [--formats jsonl,parquet,trl] [--json] [--workdir DIR]
    python bench/bench_export.py --cots 300          # a generated store of ~300 CoTs (the test's size)

Every CoT of the store (or of its first ``--cots`` CoTs, copied into a subset store by
bench/stores.py) is exported with the first RV, CD and correctness source (as the app's
sidebar picks them), each format in its own child process so that its peak RSS is its own:

* ours: ``core.export.export(filter, fmt)``: the kept ids and numbers first, then the text in
  batches of 2,000 CoTs, each batch its own short read-only connection (so an ingest can commit
  between batches), shaped in polars and appended to the file;
* bare DuckDB: one ``COPY (SELECT ... the same rows and fields ...) TO file`` (JSON lines, or
  Parquet with zstd as ours; TRL's messages built as a DuckDB list of structs), which holds
  one connection for the whole export.

Ratio = ours / bare throughput on the same rows (1.0 = as fast as DuckDB's own COPY). MB/s is
the written file's size over the wall time. With ``--json`` the last stdout line is the whole
result as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `core` and `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import MB, ChildFailed, format_table, log, machine_load, python_child, run_child  # noqa: E402
from bench.stores import bench_store  # noqa: E402

SCRIPT = str(Path(__file__).resolve())
FORMATS = ("jsonl", "parquet", "trl")


def _filter(db: str):
    from core import queries
    from core.queries import CotFilter

    src = queries.default_sources(db=db)
    return CotFilter(rv_source=src["rv"], cd_source=src["cd"], correct_source=src["correct"])


# --------------------------------------------------------------------------- child processes


def _child_ours(args: dict) -> dict:
    from core import export

    f = _filter(args["db"])
    wall, cpu = time.perf_counter(), time.process_time()
    result = export.export(f, args["fmt"], out_dir=args["out"], db=args["db"])
    seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "rows": result.rows, "bytes": result.path.stat().st_size,
            "batches": result.batches, "path": str(result.path)}


def bare_sql(f, fmt: str, db=None) -> tuple[str, list]:
    """The SELECT bare DuckDB copies: the same rows, fields and order as ours."""
    from core import queries

    sql, params = queries.matching_sql(f, text_columns=True)
    if fmt == "trl":
        from core import ids

        response = ("CASE WHEN thinking IS NULL THEN coalesce(solution, '') ELSE "
                    "'<think>\n' || thinking || '\n</think>\n\n' || coalesce(solution, '') END")
        # each row's metadata as ours writes it: the readable id is short name:problem key:n (core.ids)
        short = ids.dataset_short_names(db=db)
        names = ", ".join(f"({i}, '{n.replace(chr(39), chr(39) * 2)}')" for i, n in short.items()) or "(NULL, NULL)"
        readable = "coalesce(sn.short, 'd' || m.dataset_id::VARCHAR) || ':' || p.problem_key || ':' || o.n::VARCHAR"
        select = (f"SELECT [{{'role': 'user', 'content': m.question}}, {{'role': 'assistant', 'content': {response}}}] "
                  f"AS messages, {{'cot_id': m.cot_id, 'readable_id': {readable}, 'problem_key': p.problem_key, "
                  f"'dataset': m.dataset, 'model': m.model}} AS metadata FROM ({sql}) m "
                  "JOIN problems p ON p.problem_id = m.problem_id "
                  "JOIN (SELECT cot_id, row_number() OVER (PARTITION BY problem_id ORDER BY cot_id) - 1 AS n FROM cots) o "
                  f"ON o.cot_id = m.cot_id LEFT JOIN (VALUES {names}) sn(dataset_id, short) ON sn.dataset_id = m.dataset_id "
                  "ORDER BY m.cot_id")
    else:
        select = (f"SELECT cot_id, problem_id, dataset, model, benchmark, sample_idx, question, reference_answer, "
                  f"thinking, solution, full_text, answer, n_tokens, truncated, rv, cd, correct, "
                  f"NULL::DOUBLE AS score, NULL::DOUBLE AS weight FROM ({sql}) ORDER BY cot_id")
    return select, params


def _child_bare(args: dict) -> dict:
    import duckdb

    f = _filter(args["db"])
    select, params = bare_sql(f, args["fmt"], db=args["db"])
    target = Path(args["out"]) / f"bare-{args['fmt']}{'.parquet' if args['fmt'] == 'parquet' else '.jsonl'}"
    options = "FORMAT parquet, COMPRESSION zstd" if args["fmt"] == "parquet" else "FORMAT json"
    wall, cpu = time.perf_counter(), time.process_time()
    con = duckdb.connect(args["db"], read_only=True)
    con.execute(f"COPY ({select}) TO '{str(target).replace(chr(39), chr(39) * 2)}' ({options})", params)
    con.close()
    seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
    con = duckdb.connect()
    reader = "read_parquet" if args["fmt"] == "parquet" else "read_json_auto"
    rows = con.execute(f"SELECT count(*) FROM {reader}(?)", [str(target)]).fetchone()[0]
    con.close()
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "rows": rows, "bytes": target.stat().st_size,
            "path": str(target)}


CHILDREN = {"ours": _child_ours, "bare": _child_bare}


def measure(name: str, args: dict, logdir: Path, log_name: str):
    return run_child(python_child([SCRIPT, "_child", name, json.dumps(args)]), logdir=logdir, name=log_name)


# --------------------------------------------------------------------------- the run


def _step(out: dict, child) -> dict:
    seconds = out["seconds"]
    return {**out, "cots_per_s": out["rows"] / seconds if seconds > 0 else None,
            "mb_per_s": out["bytes"] / MB / seconds if seconds > 0 else None,
            "process_seconds": child.seconds, "peak_rss_bytes": child.max_rss_bytes}


def run(db: str | None, n_cots: int | None, formats: list[str], workdir: Path) -> dict:
    logs = workdir / "logs"
    load_before = machine_load()
    info = bench_store(workdir, source=db, n_cots=n_cots)
    result: dict = {"bench": "export", "store": info, "cots": info["cots"], "load_before": load_before, "formats": {}}
    out = workdir / "out"
    for fmt in formats:
        out.mkdir(parents=True, exist_ok=True)
        log(f"bare DuckDB COPY ({fmt})")
        child = measure("bare", {"db": info["path"], "fmt": fmt, "out": str(out)}, logs, f"bare-{fmt}")
        bare = _step(child.last_json(), child)
        log(f"ours: core.export ({fmt})")
        child = measure("ours", {"db": info["path"], "fmt": fmt, "out": str(out)}, logs, f"ours-{fmt}")
        ours = _step(child.last_json(), child)
        if ours["rows"] != bare["rows"]:
            raise ChildFailed(f"{fmt}: ours exported {ours['rows']} rows, bare DuckDB {bare['rows']}")
        result["formats"][fmt] = {
            "ours": ours, "bare": bare,
            "ratio": bare["seconds"] / ours["seconds"],  # ours / bare throughput on the same rows
            "cpu_ratio": bare["cpu_seconds"] / ours["cpu_seconds"] if ours["cpu_seconds"] else None,
        }
        shutil.rmtree(out, ignore_errors=True)  # the files can be GBs; keep the disk free
    result["load_after"] = machine_load()
    return result


def _load(load: dict) -> str:
    return f"{load['load_1m']:.2f}/{load['load_5m']:.2f}/{load['load_15m']:.2f}"


def report(r: dict) -> str:
    head = (f"Export benchmark: {r['cots']:,} CoTs ({r['store']['path']}); load average (1/5/15 min) before "
            f"{_load(r['load_before'])}, after {_load(r['load_after'])}; {r['load_before']['cpus']} CPUs. "
            "Ratio = ours / bare DuckDB COPY throughput (wall; CPU).")
    headers = ["format", "step", "rows", "wall s", "CPU s", "CoTs/s", "MB/s", "file MB", "ratio", "peak RSS MB"]
    rows = []
    for fmt, step in r["formats"].items():
        for label, key in (("bare DuckDB COPY", "bare"), ("ours: core.export", "ours")):
            s = step[key]
            ratio = None if key == "bare" else f"{step['ratio']:.3f}; {step['cpu_ratio'] or 0:.3f}"
            rows.append([fmt, label, s["rows"], s["seconds"], s["cpu_seconds"], s["cots_per_s"], s["mb_per_s"],
                         s["bytes"] / MB, ratio, s["peak_rss_bytes"] / MB])
    md = ["| CoTs | format | step | wall s | CoTs/s | MB/s | ratio (wall; CPU) | peak RSS |", "|---|---|---|---|---|---|---|---|"]
    for fmt, step in r["formats"].items():
        for label, key in (("bare DuckDB `COPY`", "bare"), ("ours (`core.export`)", "ours")):
            s = step[key]
            ratio = "baseline" if key == "bare" else f"{step['ratio']:.2f}; {step['cpu_ratio'] or 0:.2f}"
            md.append(f"| {r['cots']:,} | {fmt} | {label} | {s['seconds']:.1f} | {s['cots_per_s']:,.0f} | "
                      f"{s['mb_per_s']:.1f} | {ratio} | {s['peak_rss_bytes'] / MB:,.0f} MB |")
    return "\n\n".join([head, format_table(headers, rows), "README table:\n" + "\n".join(md)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark ThoughtScope's export against bare DuckDB COPY.")
    parser.add_argument("--db", help="the store to export from (opened read-only); default: a generated one")
    parser.add_argument("--cots", type=int, help="export only the first ~N CoTs (a subset store); without --db, "
                                                 "the size of the generated store (default 300)")
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated, of {', '.join(FORMATS)}")
    parser.add_argument("--json", action="store_true", help="also print the result as one JSON line, last")
    parser.add_argument("--workdir", help="where subset stores, files and logs go (kept); default a temporary folder")
    args = parser.parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if not formats or any(f not in FORMATS for f in formats):
        parser.error(f"--formats takes a comma-separated list of {', '.join(FORMATS)}")
    if args.cots is not None and args.cots < 1:
        parser.error("--cots must be >= 1")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-export-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args.db, args.cots, formats, workdir)
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
        print(json.dumps(CHILDREN[sys.argv[2]](json.loads(sys.argv[3]))))
    else:
        sys.exit(main())
