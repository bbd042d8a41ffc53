"""Efficiency benchmark: what the first-correct position costs per CoT, next to math-verify's own
throughput on the same candidate spans, and what all of OmniThought would take.

    python bench/bench_efficiency.py --cots 300 --workdir DIR [--workers 2] [--store DB] [--json]

1. A store of real long CoTs: every Qwen2.5-Math harness run of ../shared/realdata (3,250 CoTs of
   a few hundred to 160k characters, Sky-T1 long-CoT models among them), ingested and token-counted
   once into ``--workdir`` (reused when there). ``--cots`` of them, evenly spaced by id, are the
   sample.
2. In one child process (one core; bench.common.run_child: wall, CPU, peak RSS), on the sample's
   step texts and reference answers, each timed on its own:
   * baseline "math-verify, every span": math-verify (parse the span as ``\\boxed{span}``, verify
     against the parsed reference, as the verify stage does) asked about every candidate span of
     every CoT: math-verify's own throughput, in spans/s, on exactly these spans;
   * baseline "math-verify, up to the first match": the same, stopping at the first span it
     accepts: what the stage would pay with math-verify alone (no shortcut, no cache);
   * ours in memory: ``efficiency.analyse`` per CoT (tokenize, find spans, check them with the
     shortcuts and a per-reference cache, strategy switches); its first-correct span is checked
     to be the baseline's first match on every CoT (``agree``).
3. Ours end to end: ``run_efficiency`` with ``--workers`` processes on a copy of the store holding
   only the sample (reads, computes, commits), in its own child: CoTs/s on this machine.
4. OmniThought (about 2M CoTs): hours on 2 free cores from the end-to-end run's CPU seconds
   (its worker processes included; the machine is shared, so its wall rate under the load printed
   beside it says little), and on a Ray cluster of 64 cores from the in-memory CoTs per CPU-second.
   The sample's mean thinking tokens are printed: OmniThought's CoTs differ in length, and the
   cost is roughly linear in the text.

Ratios are ours / baseline in the same run. With ``--json`` the last stdout line is the whole
result as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `core` and `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, format_table, log, machine_load, python_child, run_child

SCRIPT = str(Path(__file__).resolve())
QWEN_OUTPUTS = ROOT.parent / "shared" / "realdata" / "qwen25_math_eval" / "outputs"
OMNITHOUGHT_COTS = 2_000_000


def build_store(workdir: Path) -> Path:
    from core.ingest import ingest
    from core.tokens import count_tokens_stage

    db = workdir / "qwen.duckdb"
    if not db.exists():
        partial = workdir / "qwen.partial.duckdb"
        partial.unlink(missing_ok=True)
        log(f"ingesting {QWEN_OUTPUTS} and counting tokens (once)")
        ingest(str(QWEN_OUTPUTS), name="qwen25-math-eval", db=partial)
        count_tokens_stage(db=partial)
        partial.rename(db)
    return db


def sample_ids(db: Path, n: int) -> list[int]:
    from core import store

    ids = [r[0] for r in store.read_rows(
        "SELECT c.cot_id FROM cots c JOIN problems p USING (problem_id) WHERE p.reference_answer IS NOT NULL "
        "AND c.n_tokens IS NOT NULL ORDER BY c.cot_id", db=db)]
    step = max(1, len(ids) // n)
    return ids[::step][:n]


# ---------------------------------------------------------------------------- child: in memory


def child_memory(db: Path, ids: list[int]) -> dict:
    import logging

    from core import efficiency, store
    from core.efficiency import Reference, _math_verify, candidate_spans, numeric

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    with store.connect(db, read_only=True) as con:
        items = efficiency._read_items(con, ids, [])
    efficiency._tokenizer(items[0][5])  # loaded before any timing
    golds = {ref: Reference(ref).gold for ref in {it[2] for it in items}}
    spans = [candidate_spans(it[1] or "", symbolic=not numeric(it[2])) for it in items]

    started, cpu = time.perf_counter(), time.process_time()
    asked = 0
    for it, found in zip(items, spans):
        for span in found:
            _math_verify(golds[it[2]], span.text)
            asked += 1
    every = {"seconds": time.perf_counter() - started, "cpu": time.process_time() - cpu, "spans": asked}

    started, cpu = time.perf_counter(), time.process_time()
    asked, firsts = 0, []
    for it, found in zip(items, spans):
        first = None
        for span in found:
            asked += 1
            if _math_verify(golds[it[2]], span.text):
                first = span.end
                break
        firsts.append(first)
    upto = {"seconds": time.perf_counter() - started, "cpu": time.process_time() - cpu, "spans": asked}

    efficiency._references.clear()
    started, cpu = time.perf_counter(), time.process_time()
    results = [efficiency.analyse(it) for it in items]
    ours = {"seconds": time.perf_counter() - started, "cpu": time.process_time() - cpu,
            "math_verify_calls": sum(r.verified for r in efficiency._references.values())}
    agree = found = 0
    tokens = 0
    for rows, first in zip(results, firsts):
        got = {m: (v, raw) for _, m, v, raw, _ in rows}
        tokens += got["thinking_tokens"][0]
        char = json.loads(got["first_correct_tokens"][1])["char"] if got["first_correct_tokens"][0] is not None else None
        found += char is not None
        agree += char == first
    return {"cots": len(items), "spans": sum(len(s) for s in spans), "thinking_tokens": tokens, "found": found,
            "agree": agree, "math_verify_every_span": every, "math_verify_to_first": upto, "ours": ours}


def child_stage(db: Path, workers: int) -> dict:
    from core.efficiency import EfficiencyOptions, run_efficiency

    return run_efficiency(db, EfficiencyOptions(workers=workers))


# ---------------------------------------------------------------------------- the run


def stage_store(db: Path, ids: list[int], workdir: Path) -> Path:
    """A copy of the store holding only the sample's CoTs."""
    from core import store

    copy = workdir / "sample.duckdb"
    shutil.copyfile(db, copy)
    with store.connect(copy, read_only=False) as con:
        con.execute("DELETE FROM cots WHERE cot_id NOT IN (SELECT unnest(?::BIGINT[]))", [ids])
    return copy


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cots", type=int, default=300)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--store", type=Path, help="a store of these runs already ingested and counted (the tests' qwen_store)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", choices=("memory", "stage"), help=argparse.SUPPRESS)
    ap.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--ids", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child == "memory":
        print(json.dumps(child_memory(args.db, json.loads(args.ids.read_text()))))
        return 0
    if args.child == "stage":
        print(json.dumps(child_stage(args.db, args.workers), default=str))
        return 0
    if args.store is None and not QWEN_OUTPUTS.exists():
        print(f"real data not found at {QWEN_OUTPUTS}", file=sys.stderr)
        return 2

    args.workdir.mkdir(parents=True, exist_ok=True)
    load_before = machine_load()
    db = args.store or build_store(args.workdir)
    ids = sample_ids(db, args.cots)
    ids_file = args.workdir / "ids.json"
    ids_file.write_text(json.dumps(ids))
    logs = args.workdir / "logs"
    log(f"in memory: {len(ids)} CoTs")
    mem_run = run_child(python_child([SCRIPT, "--workdir", str(args.workdir), "--child", "memory", "--db", str(db),
                                      "--ids", str(ids_file)]), logdir=logs, name="memory")
    mem = mem_run.last_json()
    log(f"end to end: {args.workers} workers")
    sample_db = stage_store(db, ids, args.workdir)
    stage_run = run_child(python_child([SCRIPT, "--workdir", str(args.workdir), "--child", "stage", "--db", str(sample_db),
                                        "--workers", str(args.workers)]), logdir=logs, name="stage")
    stage = stage_run.last_json()

    n = mem["cots"]
    every, upto, ours = mem["math_verify_every_span"], mem["math_verify_to_first"], mem["ours"]
    per_core = n / ours["cpu"] if ours["cpu"] else None
    e2e_wall = stage["cots"] / stage_run.seconds if stage_run.seconds else None
    e2e_cpu = stage["cots"] / stage_run.cpu_seconds if stage_run.cpu_seconds else None  # workers included (reaped)
    rows = [
        ["math-verify, every span (baseline)", every["spans"], every["cpu"], n / every["cpu"], every["spans"] / every["cpu"], 1.0],
        ["math-verify, up to the first match", upto["spans"], upto["cpu"], n / upto["cpu"], upto["spans"] / upto["cpu"],
         every["cpu"] / upto["cpu"]],
        ["ours in memory (analyse)", ours["math_verify_calls"], ours["cpu"], per_core, None, every["cpu"] / ours["cpu"]],
        [f"ours end to end, {args.workers} workers", None, stage_run.cpu_seconds, e2e_cpu, None, None],
    ]
    hours = (lambda rate, cores: OMNITHOUGHT_COTS / (rate * cores) / 3600 if rate else None)
    result = {
        "sample": {k: mem[k] for k in ("cots", "spans", "thinking_tokens", "found", "agree")},
        "mean_thinking_tokens": mem["thinking_tokens"] / n, "memory": mem, "stage": stage,
        "stage_child": {"seconds": stage_run.seconds, "cpu": stage_run.cpu_seconds, "max_rss_mb": stage_run.max_rss_bytes / 1e6},
        "cots_per_cpu_s": per_core, "end_to_end_cots_per_cpu_s": e2e_cpu, "end_to_end_cots_per_wall_s": e2e_wall,
        # the machine is shared: CPU seconds say what 2 free cores would do, the wall rate what this load gave
        "omnithought_hours_2_cores": hours(e2e_cpu, 2), "omnithought_hours_2_cores_in_memory_rate": hours(per_core, 2),
        "omnithought_hours_wall_at_this_load": OMNITHOUGHT_COTS / e2e_wall / 3600 if e2e_wall else None,
        "omnithought_hours_64_cores": hours(per_core, 64),
        "load_before": load_before, "load_after": machine_load(),
    }
    print(f"{n} real CoTs (mean {result['mean_thinking_tokens']:,.0f} thinking tokens), {mem['spans']:,} candidate spans; "
          f"first-correct found in {mem['found']}, ours = math-verify's first match on {mem['agree']} of {n}; "
          f"load {load_before['load_1m']} before, {result['load_after']['load_1m']} after\n")
    print(format_table(["step", "math-verify calls", "CPU seconds", "CoTs per CPU-s", "spans per CPU-s",
                        "speed-up vs every span"], rows))
    print(f"\nend to end: {stage_run.seconds:,.0f} s wall for {stage['cots']} CoTs under this load ({e2e_wall:,.2f} CoTs/s)")
    print(f"OmniThought ({OMNITHOUGHT_COTS:,} CoTs): {result['omnithought_hours_2_cores']:,.1f} h on 2 free cores at the "
          f"end-to-end CPU rate ({result['omnithought_hours_2_cores_in_memory_rate']:,.1f} h at the in-memory rate); "
          f"{result['omnithought_hours_64_cores']:,.2f} h on a 64-core Ray cluster at the in-memory rate per core")
    if args.json:
        print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
