"""Ingest benchmark: ThoughtScope's ingest and token stage beside bare DuckDB and bare tokenizers.

    python bench/bench_ingest.py --cots 20000 --text-scale 0.1 [--format jsonl|parquet] \
        [--no-tokens] [--json] [--workdir DIR]
    python bench/bench_ingest.py --cots 100000 500000 2000000 --text-scale 0.01 --no-tokens

Several ``--cots`` run one after another (one corpus each) and end with a curve table, one
row per size; with ``--json`` the last line is then {"bench": "ingest-curve", "runs": [...]}.

One run generates an OmniThought-shaped corpus of about ``--cots`` CoTs (core.demo, seed 0;
``--text-scale`` shrinks the texts, the long-tailed length distribution stays), then measures,
each step in its own child process so that its peak RSS is its own:

* bare DuckDB reading the file into a table as it is (one row per problem), and bare DuckDB
  unnesting it to one row per CoT (closer to what the ingest does);
* our ingest, run as ``python -m core --db STORE ingest FILE --no-verify --no-tokens``
  (its IngestResult is captured for the per-stage seconds);
* the bare ``tokenizers`` library, ``encode_batch_fast`` on the same texts in batches of the
  same size (only the encode calls are timed);
* our token-count stage, run as ``python -m core --db STORE tokens``.

Ratios are ours / bare throughput measured in the same run (1.0 = as fast as the bare tool).
The machine's load averages are recorded beside the figures. With ``--json`` the last stdout
line is the whole result as one JSON object. A corpus in ``--workdir`` is reused when one
with the same size, scale and format was generated there before.
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

from bench.common import (  # noqa: E402
    MB,
    ChildFailed,
    format_table,
    log,
    machine_load,
    python_child,
    run_child,
)

SCRIPT = str(Path(__file__).resolve())
RSS_LIMIT_BYTES = 4_000_000_000  # the issue asks for ingest of 2M generated CoTs under 4 GB
DUCKDB_DEFAULT_OBJECT_BYTES = 16 * 1024 * 1024  # read_json's default maximum_object_size


# --------------------------------------------------------------------------- corpus


def corpus(workdir: Path, n_cots: int, text_scale: float, fmt: str) -> dict:
    """Generate (or reuse) the corpus; its facts are kept in a sidecar written last."""
    from core.demo import n_problems_for_cots, write_omnithought

    path = workdir / f"omnithought-{n_cots}cots-x{text_scale:g}.{fmt}"
    sidecar = path.with_name(path.name + ".info.json")
    if sidecar.exists() and path.exists():
        info = json.loads(sidecar.read_text())
        if info.get("bytes") == path.stat().st_size:
            log(f"reusing corpus {path}")
            return {**info, "reused": True}
    log(f"generating {n_cots} CoTs at text_scale {text_scale:g} as {fmt} -> {path}")
    started = time.perf_counter()
    info = write_omnithought(path, n_problems_for_cots(n_cots), seed=0, text_scale=text_scale, fmt=fmt)
    info["generate_seconds"] = time.perf_counter() - started
    info["max_line_bytes"] = _max_line_bytes(path) if fmt == "jsonl" else None
    info.update(path=str(path), format=fmt, text_scale=text_scale)
    sidecar.write_text(json.dumps(info))
    return {**info, "reused": False}


def _max_line_bytes(path: Path) -> int:
    longest = 0
    with open(path, "rb") as fh:
        for line in fh:
            longest = max(longest, len(line))
    return longest


def _bare_sources(info: dict) -> tuple[str, str]:
    """The two bare-DuckDB statements: the file as a table, and one row per CoT."""
    path = info["path"].replace("'", "''")
    if info["format"] == "jsonl":
        # read_json refuses objects over maximum_object_size; give it the longest line.
        size = max(DUCKDB_DEFAULT_OBJECT_BYTES, 1 << (info["max_line_bytes"] + 1).bit_length())
        source = f"read_json('{path}', format = 'newline_delimited', maximum_object_size = {size})"
    else:
        source = f"read_parquet('{path}')"
    as_table = f"CREATE TABLE t AS SELECT * FROM {source}"
    per_cot = (f"CREATE TABLE t AS SELECT question, reference_answer, "
               f"unnest(reasoning, recursive := true) FROM {source}")
    return as_table, per_cot


# --------------------------------------------------------------------------- child processes
# `python bench/bench_ingest.py _child NAME JSON` runs one measured step and prints its
# result as the last stdout line.


def _child_cli(args: dict) -> dict:
    """A ``python -m core`` command exactly as a user runs it, with the core function it calls
    (``args["wrap"]``, "module:function") timed, wall and process CPU over all threads, and
    what it returns captured."""
    import importlib

    import core.cli

    module_name, func_name = args["wrap"].split(":")
    module = importlib.import_module(module_name)
    real = getattr(module, func_name)
    captured: dict = {}

    def timed(*a, **kw):
        wall, cpu = time.perf_counter(), time.process_time()
        value = real(*a, **kw)
        captured.update(seconds=time.perf_counter() - wall, cpu_seconds=time.process_time() - cpu,
                        value=value.as_dict() if hasattr(value, "as_dict") else value)
        return value

    setattr(module, func_name, timed)  # the CLI imports it when the command runs, so gets this
    code = core.cli.main(args["argv"])
    if code != 0:
        raise SystemExit(code)
    return captured


def _child_duckdb(args: dict) -> dict:
    import duckdb

    con = duckdb.connect(args["db"])
    wall, cpu = time.perf_counter(), time.process_time()
    con.execute(args["sql"])
    con.close()  # the checkpoint to disk is part of loading, as it is for our ingest
    seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
    con = duckdb.connect(args["db"], read_only=True)
    rows = con.execute("SELECT count(*) FROM t").fetchone()[0]
    con.close()
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "rows": rows}


def _child_tokenize(args: dict) -> dict:
    """tokenizers' own batch throughput on the store's texts; only the encode calls are timed."""
    import duckdb

    from core.tokens import load_tokenizer

    tok = load_tokenizer(args["tokenizer"])
    tok.no_truncation()
    tok.no_padding()
    con = duckdb.connect(args["db"], read_only=True)
    # No ORDER BY: the table is scanned in insertion order, which is cot_id order, so the
    # batches hold the same texts as the stage's; sorting would only add the child's RSS.
    cursor = con.execute("SELECT full_text FROM cots")
    seconds = cpu_seconds = 0.0
    cots = tokens = 0
    while batch := cursor.fetchmany(args["batch"]):
        texts = [row[0] for row in batch]
        wall, cpu = time.perf_counter(), time.process_time()
        encodings = tok.encode_batch_fast(texts, add_special_tokens=False)
        seconds += time.perf_counter() - wall
        cpu_seconds += time.process_time() - cpu
        tokens += sum(len(e.ids) for e in encodings)
        cots += len(texts)
    con.close()
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "cots": cots, "tokens": tokens}


CHILDREN = {"cli": _child_cli, "duckdb": _child_duckdb, "tokenize": _child_tokenize}


def _child(name: str, args_json: str) -> None:
    print(json.dumps(CHILDREN[name](json.loads(args_json))))


def measure(name: str, args: dict, logdir: Path, log_name: str):
    return run_child(python_child([SCRIPT, "_child", name, json.dumps(args)]), logdir=logdir, name=log_name)


# --------------------------------------------------------------------------- the run


def _remove_store(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".wal")):
        p.unlink(missing_ok=True)


def _rate(amount: float, seconds: float) -> float | None:
    return amount / seconds if seconds > 0 else None


def _step(timed: dict, child, *, cots: int, file_mb: float, **extra) -> dict:
    """One measured step: the timed work (wall and CPU), rates, and its process's figures."""
    return {
        "seconds": timed["seconds"], "cpu_seconds": timed["cpu_seconds"], "cots": cots,
        "cots_per_s": _rate(cots, timed["seconds"]), "mb_per_s": _rate(file_mb, timed["seconds"]),
        "process_seconds": child.seconds, "process_cpu_seconds": child.cpu_seconds,
        "peak_rss_bytes": child.max_rss_bytes, **extra,
    }


def run(n_cots: int, text_scale: float, fmt: str, workdir: Path, tokens: bool = True) -> dict:
    from core import store
    from core.tokens import BATCH_COTS, DEFAULT_TOKENIZER

    logs = workdir / "logs"
    load_before = machine_load()
    info = corpus(workdir, n_cots, text_scale, fmt)
    file_mb = info["bytes"] / MB
    result: dict = {
        "bench": "ingest", "cots_requested": n_cots, "text_scale": text_scale, "format": fmt,
        "load_before": load_before, "corpus": info,
    }

    # Bare DuckDB: the same file into a table, as it is and one row per CoT.
    bare = {}
    for key, sql in zip(("duckdb_table", "duckdb_per_cot"), _bare_sources(info)):
        db = workdir / f"bare-{key}.duckdb"
        _remove_store(db)
        log(f"bare DuckDB ({key})")
        child = measure("duckdb", {"db": str(db), "sql": sql}, logs, key)
        out = child.last_json()
        bare[key] = _step(out, child, cots=info["cots"], file_mb=file_mb, rows=out["rows"], db_bytes=db.stat().st_size)
        _remove_store(db)

    # Ours: the ingest CLI into a fresh store.
    store_path = workdir / "ours.duckdb"
    _remove_store(store_path)
    log("ours: python -m core ingest")
    argv = ["--db", str(store_path), "ingest", info["path"], "--no-verify", "--no-tokens"]
    child = measure("cli", {"argv": argv, "wrap": "core.ingest:ingest"}, logs, "ingest-ours")
    out = child.last_json()
    ingested = out["value"]
    ours = _step(out, child, cots=ingested["cots"], file_mb=file_mb, stages=ingested["seconds"],
                 problems=ingested["problems"], detected_format=ingested["format"],
                 store_bytes=store_path.stat().st_size,
                 rss_under_limit=child.max_rss_bytes < RSS_LIMIT_BYTES)
    n_stored, full, thinking, solution = store.read_rows(
        "SELECT count(*), sum(strlen(full_text)), sum(strlen(thinking)), sum(strlen(solution)) FROM cots",
        db=store_path,
    )[0]
    info["full_text_bytes"] = int(full or 0)
    info["stored_text_bytes"] = int((full or 0) + (thinking or 0) + (solution or 0))
    if n_stored != bare["duckdb_per_cot"]["rows"]:
        raise ChildFailed(f"the store holds {n_stored} CoTs, bare DuckDB unnested "
                          f"{bare['duckdb_per_cot']['rows']}: the two did not read the same rows")
    result["ingest"] = {
        "ours": ours, **bare,
        # ours / bare throughput over the same input = bare seconds / our seconds
        "ratio_vs_table": bare["duckdb_table"]["seconds"] / ours["seconds"],
        "ratio_vs_per_cot": bare["duckdb_per_cot"]["seconds"] / ours["seconds"],
        # the same on CPU seconds: steadier than wall time while others load the machine
        "cpu_ratio_vs_table": bare["duckdb_table"]["cpu_seconds"] / ours["cpu_seconds"],
        "cpu_ratio_vs_per_cot": bare["duckdb_per_cot"]["cpu_seconds"] / ours["cpu_seconds"],
    }

    if not tokens:
        _remove_store(store_path)
        result["load_after"] = machine_load()
        return result

    # Token counts: the library on its own, then our stage (which also reads and writes back).
    text_mb = info["full_text_bytes"] / MB
    log("bare tokenizers: encode_batch_fast")
    child = measure("tokenize", {"db": str(store_path), "tokenizer": DEFAULT_TOKENIZER, "batch": BATCH_COTS},
                    logs, "tokens-bare")
    out = child.last_json()
    bare_tok = _step(out, child, cots=out["cots"], file_mb=text_mb, tokens=out["tokens"],
                     tokens_per_s=_rate(out["tokens"], out["seconds"]))
    log("ours: python -m core tokens")
    argv = ["--db", str(store_path), "tokens", "--tokenizer", DEFAULT_TOKENIZER]
    child = measure("cli", {"argv": argv, "wrap": "core.tokens:count_tokens_stage"}, logs, "tokens-ours")
    out = child.last_json()
    ours_tok = _step(out, child, cots=out["value"]["cots"], file_mb=text_mb, tokens=out["value"]["tokens"],
                     tokens_per_s=_rate(out["value"]["tokens"], out["seconds"]))
    result["tokens"] = {
        "tokenizer": DEFAULT_TOKENIZER, "batch_cots": BATCH_COTS, "ours": ours_tok, "bare": bare_tok,
        "ratio": bare_tok["seconds"] / ours_tok["seconds"],
        "cpu_ratio": bare_tok["cpu_seconds"] / ours_tok["cpu_seconds"],
        "counts_match": ours_tok["tokens"] == bare_tok["tokens"] and ours_tok["cots"] == bare_tok["cots"],
    }
    _remove_store(store_path)
    result["load_after"] = machine_load()
    return result


# --------------------------------------------------------------------------- report


def report(r: dict) -> str:
    c, ing, tok = r["corpus"], r["ingest"], r.get("tokens")

    def mb(b: float) -> float:
        return b / MB

    head = (
        f"Ingest benchmark: {c['cots']:,} CoTs in {c['problems']:,} problems, text_scale {r['text_scale']:g}, "
        f"{r['format']} file {mb(c['bytes']):,.1f} MB (full_text {mb(c['full_text_bytes']):,.1f} MB; "
        f"thinking+solution+full_text {mb(c['stored_text_bytes']):,.1f} MB)\n"
        f"load average (1/5/15 min) before {_load(r['load_before'])}, after {_load(r['load_after'])}; "
        f"{r['load_before']['cpus']} CPUs. Ratio = ours / bare throughput (wall; CPU)."
    )
    headers = ["load", "rows", "wall s", "CPU s", "CoTs/s", "file MB/s", "ratio", "peak RSS MB"]
    rows = []
    for label, key in (("bare DuckDB: file -> table", "duckdb_table"), ("bare DuckDB: unnest per CoT", "duckdb_per_cot")):
        step = ing[key]
        rows.append([label, step["rows"], step["seconds"], step["cpu_seconds"], step["cots_per_s"],
                     step["mb_per_s"], None, mb(step["peak_rss_bytes"])])
    ours = ing["ours"]
    for label, suffix in (("ours vs file -> table", "table"), ("ours vs unnest per CoT", "per_cot")):
        rows.append([label, ours["cots"], ours["seconds"], ours["cpu_seconds"], ours["cots_per_s"], ours["mb_per_s"],
                     f"{ing['ratio_vs_' + suffix]:.3f}; {ing['cpu_ratio_vs_' + suffix]:.3f}", mb(ours["peak_rss_bytes"])])
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in ours["stages"].items())
    load_note = (f"ours = python -m core ingest --no-verify --no-tokens; by stage: {stages}; whole process "
                 f"{ours['process_seconds']:.2f} s; store {mb(ours['store_bytes']):,.1f} MB; peak RSS "
                 f"{'under' if ours['rss_under_limit'] else 'OVER'} {RSS_LIMIT_BYTES / 1e9:g} GB")
    if tok is None:
        return "\n\n".join([head, format_table(headers, rows), load_note, "token stage not run (--no-tokens)"])
    theaders = ["tokens", "tokens", "wall s", "CPU s", "tokens/s", "text MB/s", "ratio", "peak RSS MB"]
    trows = [
        ["bare tokenizers encode_batch_fast", tok["bare"]["tokens"], tok["bare"]["seconds"], tok["bare"]["cpu_seconds"],
         tok["bare"]["tokens_per_s"], tok["bare"]["mb_per_s"], None, mb(tok["bare"]["peak_rss_bytes"])],
        ["ours: tokens stage", tok["ours"]["tokens"], tok["ours"]["seconds"], tok["ours"]["cpu_seconds"],
         tok["ours"]["tokens_per_s"], tok["ours"]["mb_per_s"], f"{tok['ratio']:.3f}; {tok['cpu_ratio']:.3f}",
         mb(tok["ours"]["peak_rss_bytes"])],
    ]
    tok_note = (f"tokenizer {tok['tokenizer']}, {tok['batch_cots']} CoTs a batch; counts "
                f"{'match' if tok['counts_match'] else 'DIFFER'}; bare times the encode calls only, ours the whole "
                f"stage (read from the store, encode, write counts back); its process {tok['ours']['process_seconds']:.2f} s")
    return "\n\n".join([head, format_table(headers, rows), load_note, format_table(theaders, trows), tok_note])


def curve_table(results: list[dict]) -> str:
    """One Markdown row per corpus size: the README's curve."""
    lines = [
        "| CoTs | JSONL MB | bare DuckDB table s (CPU) | ours s (CPU) | load ratio wall; CPU | "
        "ours peak RSS MB | token ratio wall; CPU | load avg before/after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ing, tok = r["ingest"], r.get("tokens")
        bare, ours = ing["duckdb_table"], ing["ours"]
        tokens = f"{tok['ratio']:.2f}; {tok['cpu_ratio']:.2f}" if tok else "-"
        lines.append(
            f"| {r['corpus']['cots']:,} | {r['corpus']['bytes'] / MB:,.0f} | {bare['seconds']:.1f} ({bare['cpu_seconds']:.1f}) | "
            f"{ours['seconds']:.1f} ({ours['cpu_seconds']:.1f}) | {ing['ratio_vs_table']:.2f}; {ing['cpu_ratio_vs_table']:.2f} | "
            f"{ours['peak_rss_bytes'] / MB:,.0f} | {tokens} | {r['load_before']['load_1m']:.1f}/{r['load_after']['load_1m']:.1f} |"
        )
    return "\n".join(lines)


def _load(load: dict) -> str:
    return f"{load['load_1m']:.2f}/{load['load_5m']:.2f}/{load['load_15m']:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark ThoughtScope's ingest and token stage against bare DuckDB and tokenizers.")
    parser.add_argument("--cots", type=int, nargs="+", default=[20_000],
                        help="about how many CoTs to generate; several sizes give a curve")
    parser.add_argument("--text-scale", type=float, default=0.05, help="text length multiplier (1 = full OmniThought length)")
    parser.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl")
    parser.add_argument("--no-tokens", action="store_true", help="measure the ingest only, not the token stage")
    parser.add_argument("--json", action="store_true", help="also print the result as one JSON line, last")
    parser.add_argument("--workdir", help="where the corpus, stores and child logs go (kept); default a temporary folder (removed)")
    args = parser.parse_args(argv)
    if min(args.cots) < 1 or not args.text_scale > 0:
        parser.error("--cots must be >= 1 and --text-scale > 0")

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for n_cots in args.cots:
            results.append(run(n_cots, args.text_scale, args.format, workdir, tokens=not args.no_tokens))
            print(report(results[-1]) + "\n", flush=True)
    except ChildFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(curve_table(results))
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else {"bench": "ingest-curve", "runs": results}))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        _child(sys.argv[2], sys.argv[3])
    else:
        sys.exit(main())
