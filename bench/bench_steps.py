"""Steps benchmark: what the step stage costs per CoT, what stored steps cost on disk, and how
fast dataset-level step statistics answer, against baselines measured in the same run.

    python bench/bench_steps.py --cots 2000 --text-scale 1 --scales 100000 2000000 --workdir DIR [--json]

1. A sample: an OmniThought-shaped corpus of about ``--cots`` CoTs (core.demo, seed 0, text at
   ``--text-scale`` of full length), ingested with ``python -m core ingest`` (no verify, tokens
   or index: not what is measured here).
2. The stage on the sample, each in its own child process (bench.common.run_child: wall, CPU,
   peak RSS), on the same step texts:
   * in one child, batch by batch (so all run under the same load): baseline "naive split", a
     plain Python pass of ``re.split`` on sentence ends and line breaks; baseline "token
     count", the ``tokenizers`` library's ``encode_batch_fast`` (a count: what the token stage
     pays); ours in memory: the splitter, the role rules and the token counts per step (encode
     with offsets), each timed;
   * ours end to end: ``run_steps``, what ``python -m core split-steps`` runs (reads, labels,
     writes steps and figures).
3. Disk: the sample's steps and per-CoT figures copied alone into fresh DuckDB files
   (checkpointed): bytes per step and per CoT.
4. Scale: for each ``--scales`` N, a store of N CoTs made by copying the sample's CoTs (no
   text: the statistics never read it), their labels, steps and figures with shifted ids, file
   size measured after each table. Then, in a child process, the statistics the app and
   ``python -m core steps`` run over every CoT (p50 of ``--repeats``): tokens per role by
   correctness (a join of the steps with the filtered CoTs) and by model, the per-CoT figures
   pivoted, against bare DuckDB summing tokens per role over the steps table (no join, no
   filter). The alternative to storing steps, splitting and labelling on demand, is given as
   the in-memory cost per CoT times N.

Ratios are ours / baseline in the same run. With ``--json`` the last stdout line is the whole
result as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `core` and `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import MB, ChildFailed, log, machine_load, python_child, run_child

SCRIPT = str(Path(__file__).resolve())
SOURCE = "step rules (sentence)"
NAIVE_SPLIT = r"(?<=[.!?])\s+|\n+"


# --------------------------------------------------------------------------- children


def _texts(db: str) -> list[str]:
    import duckdb

    from core.steps import STEP_TEXT_SQL

    con = duckdb.connect(db, read_only=True)
    texts = [r[0] or "" for r in con.execute(f"SELECT {STEP_TEXT_SQL} FROM cots c ORDER BY cot_id").fetchall()]
    con.close()
    return texts


def _child_label(args: dict) -> dict:
    """Baselines and our pure pipeline on the same batches of texts, interleaved batch by batch
    so that all of them run under the same machine load: the naive regex split, tokenizers'
    encode_batch_fast count; our split, our roles and micro-actions, our token counts per step
    (encode_batch with offsets)."""
    import re

    from core import steps
    from core.tokens import load_tokenizer

    texts = _texts(args["db"])
    rules = steps.RoleRules.load()
    tok = load_tokenizer()
    tok.no_truncation()
    tok.no_padding()
    naive = re.compile(NAIVE_SPLIT)
    parts = ("naive_split", "token_count", "split", "roles", "tokens")
    out = {p: {"seconds": 0.0, "cpu_seconds": 0.0} for p in parts}
    counts = {"naive_pieces": 0, "text_tokens": 0, "steps": 0, "step_tokens": 0}

    def timed(part, fn, *args):
        wall, cpu = time.perf_counter(), time.process_time()
        value = fn(*args)
        out[part]["seconds"] += time.perf_counter() - wall
        out[part]["cpu_seconds"] += time.process_time() - cpu
        return value

    def naive_split(batch):
        return sum(len(naive.split(t)) for t in batch)

    def token_count(batch):
        return sum(len(e) for e in tok.encode_batch_fast(batch, add_special_tokens=False))

    def split(batch):
        return [steps.split_spans(t) for t in batch]

    def roles(batch, spans):
        return [rules.label(t, s) for t, s in zip(batch, spans)]

    def step_tokens(batch, spans):
        encodings = tok.encode_batch(batch, add_special_tokens=False)
        return sum(sum(steps.span_token_counts(e, s)) for e, s in zip(encodings, spans))

    for i in range(0, len(texts), 256):
        batch = texts[i:i + 256]
        counts["naive_pieces"] += timed("naive_split", naive_split, batch)
        counts["text_tokens"] += timed("token_count", token_count, batch)
        spans = timed("split", split, batch)
        timed("roles", roles, batch, spans)
        counts["step_tokens"] += timed("tokens", step_tokens, batch, spans)
        counts["steps"] += sum(map(len, spans))
    out["total"] = {k: sum(out[p][k] for p in ("split", "roles", "tokens")) for k in ("seconds", "cpu_seconds")}
    out.update(counts, cots=len(texts), chars=sum(map(len, texts)))
    return out


def _child_stage(args: dict) -> dict:
    from core.step_stage import StepOptions, run_steps

    wall, cpu = time.perf_counter(), time.process_time()
    result = run_steps(args["db"], StepOptions())
    return {"seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu, "result": result}


def _timed(fn, repeats: int) -> dict:
    walls, cpus = [], []
    value = None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        value = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {"first_s": walls[0], "p50_s": statistics.median(walls), "cpu_p50_s": statistics.median(cpus), "value": value}


def _child_query(args: dict) -> dict:
    import duckdb

    from core import step_stats
    from core.queries import CotFilter

    db, repeats = args["db"], args["repeats"]
    f = CotFilter(correct_source="omnithought")
    out = {
        "by_correctness": _timed(lambda: step_stats.role_table(SOURCE, f, by="correctness", db=db).height, repeats),
        "by_model": _timed(lambda: step_stats.role_table(SOURCE, f, by="model", db=db).height, repeats),
        "figures": _timed(lambda: step_stats.figure_frame(SOURCE, f, db=db).height, repeats),
    }

    def bare():
        con = duckdb.connect(db, read_only=True)
        try:
            return len(con.execute("SELECT role, sum(n_tokens) FROM steps GROUP BY role").fetchall())
        finally:
            con.close()

    out["bare_scan"] = _timed(bare, repeats)
    return out


CHILDREN = {"label": _child_label, "stage": _child_stage, "query": _child_query}


def _child(name: str, args_json: str) -> None:
    print(json.dumps(CHILDREN[name](json.loads(args_json))))


def measure(name: str, args: dict, logdir: Path):
    run = run_child(python_child([SCRIPT, "_child", name, json.dumps(args)]), logdir=logdir, name=name + args.get("tag", ""))
    return run.last_json(), run


# --------------------------------------------------------------------------- stores


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")


def _file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + ".wal")) if p.exists())


def table_bytes(source_db: Path, target: Path, sql: str) -> int:
    """Bytes of a DuckDB file holding only ``sql``'s rows as one table (checkpointed)."""
    import duckdb

    target.unlink(missing_ok=True)
    con = duckdb.connect(str(target))
    con.execute("SET enable_progress_bar = false")
    con.execute(f"ATTACH '{_sql_path(source_db)}' AS src (READ_ONLY)")
    empty_bytes = None
    con.execute("CHECKPOINT")
    empty_bytes = _file_bytes(target)
    con.execute(f"CREATE TABLE t AS {sql}")
    con.execute("CHECKPOINT")
    con.close()
    return _file_bytes(target) - empty_bytes


def scaled_store(sample: Path, target: Path, n_cots: int) -> dict:
    """A store of about ``n_cots`` CoTs: the sample's CoTs (no text), labels, steps and figures
    copied with shifted ids inside one dataset; file bytes after each table."""
    import duckdb

    from core import store

    sidecar = target.with_name(target.name + ".info.json")
    con = duckdb.connect(str(sample), read_only=True)
    fingerprint = list(con.execute("SELECT (SELECT count(*) FROM cots), (SELECT count(*) FROM steps), "
                                   "(SELECT sum(n_tokens) FROM steps)").fetchone())
    con.close()
    if target.exists() and sidecar.exists():
        info = json.loads(sidecar.read_text())
        if info.get("sample") == fingerprint and info.get("wanted") == n_cots:
            log(f"reusing {target} (same sample)")
            return {**info["result"], "reused": True}
    for p in (target, target.with_name(target.name + ".wal"), sidecar):
        p.unlink(missing_ok=True)
    store.init_store(target)
    con = duckdb.connect(str(target))
    con.execute("SET enable_progress_bar = false")
    con.execute(f"ATTACH '{_sql_path(sample)}' AS src (READ_ONLY)")
    n_sample, lo_cot, hi_cot, lo_p, hi_p = con.execute(
        "SELECT count(*), min(cot_id), max(cot_id), min(problem_id), max(problem_id) FROM src.cots").fetchone()
    copies = max(1, math.ceil(n_cots / n_sample))
    cot_stride, p_stride = hi_cot - lo_cot + 1, hi_p - lo_p + 1
    con.execute("CREATE TEMP TABLE k AS SELECT range AS k FROM range(?)", [copies])
    con.execute("CHECKPOINT")
    sizes = {"empty": _file_bytes(target)}
    timings = {}

    def load(name: str, sql: str) -> None:
        started = time.perf_counter()
        con.execute(sql)
        con.execute("CHECKPOINT")
        timings[name] = time.perf_counter() - started
        sizes[name] = _file_bytes(target)

    shift = f"cot_id + k.k * {cot_stride}"
    load("steps", f"INSERT INTO steps SELECT {shift}, source_id, step_idx, char_start, char_end, n_tokens, role, "
                  "micro_actions, wrong FROM src.steps, k ORDER BY k.k, cot_id, step_idx")
    load("figures", f"INSERT INTO scores SELECT {shift}, s.source_id, metric, value, raw, error FROM src.scores s "
                    "JOIN src.score_sources ss USING (source_id), k WHERE ss.kind = 'stage' ORDER BY k.k, cot_id")
    load("rest", f"""
        INSERT INTO scores SELECT {shift}, s.source_id, metric, value, raw, error FROM src.scores s
            JOIN src.score_sources ss USING (source_id), k WHERE ss.kind <> 'stage' ORDER BY k.k, cot_id;
        INSERT INTO score_sources SELECT * FROM src.score_sources;
        INSERT INTO datasets SELECT * FROM src.datasets;
        INSERT INTO problems SELECT problem_id + k.k * {p_stride}, dataset_id, problem_key || '/' || k.k, benchmark, '',
            reference_answer, NULL, NULL FROM src.problems, k;
        INSERT INTO cots SELECT {shift}, problem_id + k.k * {p_stride}, dataset_id, model, sample_idx, '', '', '',
            thinking_unclosed, truncated, finish_reason, answer, n_chars, n_paragraphs, n_reflections, reflections,
            n_tokens, tokenizer, NULL FROM src.cots, k ORDER BY k.k, cot_id;
        UPDATE datasets SET n_cots = (SELECT count(*) FROM cots), n_problems = (SELECT count(*) FROM problems);
    """)
    counts = dict(zip(("cots", "steps"), con.execute("SELECT (SELECT count(*) FROM cots), (SELECT count(*) FROM steps)").fetchone()))
    con.close()
    result = {"path": str(target), "copies": copies, **counts, "bytes": sizes, "build_seconds": timings,
              "steps_bytes": sizes["steps"] - sizes["empty"], "figures_bytes": sizes["figures"] - sizes["steps"]}
    sidecar.write_text(json.dumps({"sample": fingerprint, "wanted": n_cots, "result": result}))
    return result


# --------------------------------------------------------------------------- the run


def _row(child, timed: dict | None = None) -> dict:
    timed = timed or {}
    return {"seconds": timed.get("seconds", child.seconds), "cpu_seconds": timed.get("cpu_seconds", child.cpu_seconds),
            "child_seconds": child.seconds, "child_cpu_seconds": child.cpu_seconds, "peak_rss_bytes": child.max_rss_bytes,
            **({"result": timed["result"]} if "result" in timed else {})}


def run(n_cots: int, text_scale: float, scales: list[int], repeats: int, workdir: Path) -> dict:
    from core.demo import n_problems_for_cots, write_omnithought

    logs = workdir / "logs"
    corpus = workdir / f"omnithought-{n_cots}-x{text_scale:g}.jsonl"
    if not corpus.exists():
        log(f"generating ~{n_cots:,} CoTs at text scale {text_scale:g}")
        write_omnithought(corpus, n_problems_for_cots(n_cots), seed=0, text_scale=text_scale, fmt="jsonl")
    sample = workdir / "sample.duckdb"
    for p in (sample, sample.with_name(sample.name + ".wal")):
        p.unlink(missing_ok=True)
    log("ingesting the sample")
    run_child(python_child(["-m", "core", "--db", str(sample), "ingest", str(corpus), "--no-verify", "--no-tokens",
                            "--no-index"]), logdir=logs, name="ingest")
    result: dict = {"bench": "steps", "cots": n_cots, "text_scale": text_scale, "load_before": machine_load()}
    args = {"db": str(sample)}
    log("baselines and ours in memory, batch by batch")
    label, label_run = measure("label", args, logs)
    log("ours end to end: split-steps")
    stage, stage_run = measure("stage", args, logs)
    result["sample"] = {"cots": label["cots"], "chars": label["chars"], "steps": label["steps"],
                        "steps_per_cot": label["steps"] / max(label["cots"], 1), "naive_pieces": label["naive_pieces"],
                        "tokens": label["text_tokens"], "step_tokens": label["step_tokens"]}
    result["stage"] = {
        "naive_split": label["naive_split"], "token_count": label["token_count"],
        "ours_split": label["split"], "ours_roles": label["roles"], "ours_tokens": label["tokens"],
        "ours_in_memory": {**label["total"], "peak_rss_bytes": label_run.max_rss_bytes},
        "ours_stage": _row(stage_run, stage),
    }
    log("disk: steps and figures alone")
    result["disk"] = {
        "steps_bytes": table_bytes(sample, workdir / "steps-only.duckdb", "SELECT * FROM src.steps"),
        "figures_bytes": table_bytes(sample, workdir / "figures-only.duckdb",
                                     "SELECT s.* FROM src.scores s JOIN src.score_sources ss USING (source_id) WHERE ss.kind = 'stage'"),
        "text_bytes": table_bytes(sample, workdir / "text-only.duckdb", "SELECT thinking FROM src.cots"),
    }
    result["disk"]["bytes_per_step"] = result["disk"]["steps_bytes"] / max(label["steps"], 1)
    result["disk"]["figure_bytes_per_cot"] = result["disk"]["figures_bytes"] / max(label["cots"], 1)
    per_cot_cpu = label["total"]["cpu_seconds"] / max(label["cots"], 1)
    result["scales"] = []
    for n in scales:
        log(f"scale: building a store of ~{n:,} CoTs")
        built = scaled_store(sample, workdir / f"scaled-{n}.duckdb", n)
        log(f"scale: queries at {built['cots']:,} CoTs, {built['steps']:,} steps")
        queries, query_run = measure("query", {"db": built["path"], "repeats": repeats, "tag": f"-{n}"}, logs)
        result["scales"].append({**built, "queries": queries, "query_peak_rss_bytes": query_run.max_rss_bytes,
                                 "on_demand_cpu_s": per_cot_cpu * built["cots"]})
    result["load_after"] = machine_load()
    return result


def report(r: dict) -> str:
    s, st = r["sample"], r["stage"]
    lines = [
        (f"Sample: {s['cots']:,} CoTs, {s['chars'] / MB:,.1f} MB of step text, {s['steps']:,} steps "
         f"({s['steps_per_cot']:.0f} a CoT), {s['tokens']:,} tokens; load {r['load_before']['load_1m']:.1f} -> "
         f"{r['load_after']['load_1m']:.1f}"),
        "",
        "| step | wall s | CPU s | CoTs/s (CPU) | MB/s (CPU) | ratio CPU ours/baseline | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]

    def line(name, row, baseline=None):
        cpu = row["cpu_seconds"]
        ratio = f"{cpu / baseline:.1f}x" if baseline else "baseline"
        rss = f"{row['peak_rss_bytes'] / MB:,.0f}" if row.get("peak_rss_bytes") else "-"
        lines.append(f"| {name} | {row['seconds']:.2f} | {cpu:.2f} | {s['cots'] / cpu:,.0f} | {s['chars'] / MB / cpu:,.1f} | {ratio} | {rss} |")

    naive_cpu, count_cpu = st["naive_split"]["cpu_seconds"], st["token_count"]["cpu_seconds"]
    line("naive regex split (plain Python)", st["naive_split"])
    line("tokenizers encode_batch_fast (count)", st["token_count"])
    line("ours: split", st["ours_split"], naive_cpu)
    line("ours: roles + micro-actions", st["ours_roles"], naive_cpu)
    line("ours: token counts per step", st["ours_tokens"], count_cpu)
    line("ours: all three in memory", st["ours_in_memory"], naive_cpu + count_cpu)
    line("ours: `split-steps` end to end", st["ours_stage"], naive_cpu + count_cpu)
    d = r["disk"]
    lines += ["", (f"Disk: steps {d['steps_bytes'] / MB:,.2f} MB ({d['bytes_per_step']:.2f} B a step), figures "
                   f"{d['figures_bytes'] / MB:,.2f} MB ({d['figure_bytes_per_cot']:.0f} B a CoT); the step text itself "
                   f"{d['text_bytes'] / MB:,.1f} MB"), ""]
    lines += [("| CoTs | steps | file MB (steps / figures) | build s | by correctness p50 ms | by model p50 ms | figures p50 ms "
               "| bare scan p50 ms | ratio | on demand CPU s (est.) | query RSS MB |"), "|---|---|---|---|---|---|---|---|---|---|---|"]
    for sc in r["scales"]:
        q = sc["queries"]
        lines.append(
            f"| {sc['cots']:,} | {sc['steps']:,} | {sc['steps_bytes'] / MB:,.0f} / {sc['figures_bytes'] / MB:,.0f} | "
            f"{sum(sc['build_seconds'].values()):.0f} | {q['by_correctness']['p50_s'] * 1e3:,.0f} | {q['by_model']['p50_s'] * 1e3:,.0f} | "
            f"{q['figures']['p50_s'] * 1e3:,.0f} | {q['bare_scan']['p50_s'] * 1e3:,.0f} | "
            f"{q['by_correctness']['p50_s'] / q['bare_scan']['p50_s']:.1f}x | {sc['on_demand_cpu_s']:,.0f} | {sc['query_peak_rss_bytes'] / MB:,.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the step stage, its storage and step statistics at scale.")
    parser.add_argument("--cots", type=int, default=2000, help="CoTs in the generated sample")
    parser.add_argument("--text-scale", type=float, default=1.0, help="text length multiplier (1 = full length)")
    parser.add_argument("--scales", type=int, nargs="*", default=[100_000], help="CoT counts of the copied stores")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", help="kept when given; default a temporary folder (removed)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-steps-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args.cots, args.text_scale, args.scales, args.repeats, workdir)
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
