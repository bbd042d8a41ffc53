"""Step-judge throughput: steps judged per second by ``judge_steps`` (what ``python -m core
judge-steps`` runs) against the plain generation call on the same prompts.

    python bench/bench_step_judge.py [--model SmolLM2-135M-Instruct] [--cots 8] [--text-scale 0.03] \
        [--unit sentence] [--tasks first_error,roles] [--max-new-tokens 256] [--batch-size 4] [--json]

A store of about ``--cots`` CoTs of the generated OmniThought-shaped demo (core.demo, seed 0,
text at ``--text-scale``) is ingested; the CoTs are split into ``--unit`` steps. One
transformers backend (``--device``, default CPU) is opened once and warmed up with one short
prompt; then, on the same engine:

* baseline "plain generate": the step judge's own prompts (core.step_judge.read_work and
  build_prompts, made beforehand and not timed), ``--batch-size`` CoTs' prompts per
  ``engine.generate`` call, greedy, the same ``max_new_tokens``: the model's cost alone;
* ours: ``judge_steps`` end to end on the same CoTs, batch size, tasks and settings: reading
  the CoTs and splitting them, building prompts, the same generation, parsing, and committing
  steps, scores and per-CoT figures batch by batch.

Both judge the same steps; the figures are steps judged per second and prompts per second,
and the ratio ours / baseline in steps per wall second and per CPU second of this process (torch's
threads included; 1.0: the step judge adds nothing to the model's cost; on a shared machine
trust the CPU ratio). It also
says how many answers parsed (a 135M model follows the format poorly; that is the model, not
the machinery). With ``--json`` the last stdout line is the whole result as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `core` and `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import format_table, log, machine_load  # noqa: E402


def make_store(workdir: Path, cots: int, text_scale: float) -> tuple[Path, list[int]]:
    from core import store
    from core.demo import n_problems_for_cots, write_omnithought
    from core.ingest import ingest

    data = workdir / "demo.jsonl"
    write_omnithought(data, n_problems_for_cots(cots), seed=0, text_scale=text_scale)
    db = workdir / "bench.duckdb"
    ingest(str(data), name="bench", db=db)
    ids = [r[0] for r in store.read_rows("SELECT cot_id FROM cots ORDER BY cot_id LIMIT ?", [cots], db=db)]
    return db, ids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--cots", type=int, default=8)
    parser.add_argument("--text-scale", type=float, default=0.03)
    parser.add_argument("--unit", default="sentence")
    parser.add_argument("--tasks", default="first_error,roles")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4, help="CoTs per batch (one generate call each)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default torch's; 1 on a loaded shared machine, where threads spin-wait)")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from core import step_judge
    from core.generation import open_backend
    from core.models import resolve_model

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-step-judge-"))
    workdir.mkdir(parents=True, exist_ok=True)
    load_before = machine_load()
    db, ids = make_store(workdir, args.cots, args.text_scale)
    options = step_judge.StepJudgeOptions(model=args.model, tasks=args.tasks, unit=args.unit, batch_size=args.batch_size,
                                          max_new_tokens=args.max_new_tokens, source_name="bench step judge")
    log(f"{len(ids)} CoTs in {db}; opening {args.model} (transformers, {args.device})")
    engine = open_backend("transformers", resolve_model(args.model), device=args.device,
                          batch_size=step_judge.DEFAULT_BATCH["transformers"])
    engine.generate([[{"role": "user", "content": "Say yes."}]], max_new_tokens=4, temperature=0.0)  # warm-up

    # the baseline's prompts: the step judge's own, built beforehand (not timed)
    templates = {t.task: t for t in options.templates()}
    tokenizer = step_judge.step_tokenizer(options)
    batches = []
    for i in range(0, len(ids), args.batch_size):
        works = step_judge.read_work(db, ids[i:i + args.batch_size], unit=args.unit, from_source_id=None, tokenizer=tokenizer)
        prompts = step_judge.build_prompts(works, templates, max_chars=options.max_chars,
                                           steps_per_prompt=options.steps_per_prompt, guided=False)
        batches.append((works, prompts))
    n_steps = sum(len(w.spans) for works, _ in batches for w in works)
    n_prompts = sum(len(p) for _, p in batches)
    log(f"baseline: {n_prompts} prompts over {n_steps} steps, {len(batches)} generate calls")
    tokens_before = engine.generated_tokens
    started, cpu_started = time.perf_counter(), time.process_time()
    for _, prompts in batches:
        engine.generate([p.messages for p in prompts], max_new_tokens=args.max_new_tokens, temperature=0.0)
    plain_s, plain_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    plain_tokens = engine.generated_tokens - tokens_before

    log("ours: judge_steps end to end")
    tokens_before = engine.generated_tokens
    started, cpu_started = time.perf_counter(), time.process_time()
    run = step_judge.judge_steps(db, ids, options, backend=engine)
    ours_s, ours_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    ours_tokens = engine.generated_tokens - tokens_before
    assert run.steps == n_steps, (run.steps, n_steps)  # the same steps judged

    load_after = machine_load()
    result = {
        "model": args.model, "device": args.device, "cots": len(ids), "steps": n_steps, "prompts": n_prompts,
        "tasks": list(options.tasks), "unit": args.unit, "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size, "threads": args.threads,
        "plain": {"seconds": plain_s, "cpu_seconds": plain_cpu, "generated_tokens": plain_tokens, "steps_per_s": n_steps / plain_s,
                  "prompts_per_s": n_prompts / plain_s},
        "ours": {"seconds": ours_s, "cpu_seconds": ours_cpu, "generated_tokens": ours_tokens, "steps_per_s": n_steps / ours_s,
                 "prompts_per_s": n_prompts / ours_s, "first_errors_found": run.first_errors_found,
                 "first_error_missing": run.first_error_missing, "roles_given": run.roles_given,
                 "roles_missing": run.roles_missing},
        "ratio_steps_per_s": (n_steps / ours_s) / (n_steps / plain_s),
        "ratio_steps_per_cpu_s": plain_cpu / ours_cpu,
        "load_before": load_before, "load_after": load_after,
    }
    rows = [
        ["plain generate (baseline)", n_steps, n_prompts, plain_s, plain_cpu, plain_tokens, n_steps / plain_s, 1.0, 1.0],
        ["ours: judge_steps end to end", n_steps, n_prompts, ours_s, ours_cpu, ours_tokens, n_steps / ours_s,
         result["ratio_steps_per_s"], result["ratio_steps_per_cpu_s"]],
    ]
    print(format_table(["path", "steps", "prompts", "wall s", "CPU s", "gen tokens", "steps/s", "ratio wall", "ratio CPU"], rows))
    print(f"| {args.model} ({args.device}), {len(ids)} CoTs, {args.tasks}, {args.max_new_tokens} new tokens | "
          f"{n_steps / plain_s:.2f} | {n_steps / ours_s:.2f} | {result['ratio_steps_per_s']:.2f}; {result['ratio_steps_per_cpu_s']:.2f} |")
    fe_total = len(ids) if "first_error" in options.tasks else 0
    print(f"parsed: first_error {fe_total - run.first_error_missing} of {fe_total} CoTs; "
          f"roles {run.roles_given} of {run.roles_given + run.roles_missing} steps; "
          f"load {load_before['load_1m']} -> {load_after['load_1m']} on {load_before['cpus']} CPUs")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
