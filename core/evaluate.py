"""Evaluate a model (base, or base + LoRA adapter) on a benchmark, and ingest its answers.

    python -m core evaluate --benchmark gsm8k_test --model SmolLM2-135M-Instruct \
        [--adapter data/models/my-run/adapter] --problems 20 --k 4 --max-new-tokens 512

k samples per problem under a max-new-token budget; vLLM on GPU, transformers on CPU. The
generations are appended to a JSONL as they come (a killed run resumes without redoing them),
then ingested as a new dataset with math-verify correctness and token counts, so the
Distributions page compares base and tuned models side by side.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from core import store

PROMPT_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."


@dataclass
class EvalOptions:
    benchmark: str  # a benchmark dataset's name in the store, or a benchmark file to ingest
    model: str = "SmolLM2-135M-Instruct"
    adapter: str | None = None
    label: str | None = None  # model name shown in the app; default model[+adapter name]
    problems: int = 20
    k: int = 1
    max_new_tokens: int = 512
    temperature: float | None = None  # default: 0 for k == 1, else 0.7
    backend: str = "transformers"  # transformers | vllm
    batch_size: int = 8
    seed: int = 0
    run_name: str | None = None


def _label(opts: EvalOptions) -> str:
    if opts.label:
        return opts.label
    return opts.model + (f"+{Path(opts.adapter).parent.name if Path(opts.adapter).name == 'adapter' else Path(opts.adapter).name}" if opts.adapter else "")


def benchmark_problems(benchmark: str, n: int, *, db=None) -> list[dict]:
    """The first n problems (with reference answers) of a benchmark dataset in the store;
    a file path is ingested as a benchmark first (a no-op when already there)."""
    from core.ingest import ingest

    name = benchmark
    if Path(benchmark).exists():
        name = ingest(benchmark, fmt="benchmark", db=db).name
    rows = store.read_rows(
        "SELECT p.problem_key, p.benchmark, p.question, p.reference_answer FROM problems p "
        "JOIN datasets d USING (dataset_id) WHERE d.name = ? AND d.status = 'ready' "
        "AND p.reference_answer IS NOT NULL ORDER BY p.problem_id LIMIT ?",
        [name, n], db=db,
    )
    if not rows:
        raise ValueError(f"no benchmark dataset named '{benchmark}' with reference answers in the store; ingest one with `python -m core ingest FILE --format benchmark`")
    return [dict(zip(("key", "benchmark", "question", "reference"), r)) for r in rows]


def _messages(question: str) -> list[dict]:
    return [{"role": "user", "content": question + PROMPT_SUFFIX}]


def _generate_transformers(opts: EvalOptions, batch: list[dict], temperature: float) -> list[list[tuple[str, str]]]:
    """k (text, finish_reason) pairs per problem, batched greedy or sampled generate."""
    import torch

    model, tokenizer = _transformers_model(opts)
    prompts = [tokenizer.apply_chat_template(_messages(p["question"]), tokenize=False, add_generation_prompt=True) for p in batch]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    sampling = {"do_sample": True, "temperature": temperature, "top_p": 0.95} if temperature > 0 else {"do_sample": False}
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=opts.max_new_tokens, num_return_sequences=opts.k,
                             pad_token_id=tokenizer.pad_token_id, **sampling)
    new_tokens = out[:, inputs["input_ids"].shape[1]:]
    results = []
    for i in range(len(batch)):
        samples = []
        for j in range(opts.k):
            seq = new_tokens[i * opts.k + j]
            finished = (seq == tokenizer.eos_token_id).any().item()
            samples.append((tokenizer.decode(seq, skip_special_tokens=True), "stop" if finished else "length"))
        results.append(samples)
    return results


_LOADED: dict[tuple, tuple] = {}


def _transformers_model(opts: EvalOptions):
    key = (opts.model, opts.adapter)
    if key not in _LOADED:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from core.models import resolve_model

        path = resolve_model(opts.model)
        tokenizer = AutoTokenizer.from_pretrained(opts.adapter or path)
        tokenizer.padding_side = "left"  # decoder-only batches pad on the left
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32 if not torch.cuda.is_available() else torch.bfloat16)
        if opts.adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, opts.adapter)
        if torch.cuda.is_available():
            model = model.cuda()
        model.eval()
        _LOADED.clear()
        _LOADED[key] = (model, tokenizer)
    return _LOADED[key]


def _generate_vllm(opts: EvalOptions, problems: list[dict], temperature: float) -> list[list[tuple[str, str]]]:
    """One engine, the whole batch (vLLM schedules it better than we could)."""
    from vllm import LLM, SamplingParams  # GPU path; imported only when asked for

    from core.models import resolve_model

    llm = LLM(model=resolve_model(opts.model), enable_lora=bool(opts.adapter), seed=opts.seed)
    params = SamplingParams(n=opts.k, temperature=temperature, top_p=0.95 if temperature > 0 else 1.0,
                            max_tokens=opts.max_new_tokens, seed=opts.seed)
    lora = None
    if opts.adapter:
        from vllm.lora.request import LoRARequest

        lora = LoRARequest("adapter", 1, opts.adapter)
    outputs = llm.chat([_messages(p["question"]) for p in problems], params, lora_request=lora)
    return [[(c.text, c.finish_reason or "stop") for c in o.outputs] for o in outputs]


def evaluate(
    opts: EvalOptions,
    *,
    db=None,
    progress: Callable[[str, int, int | None], None] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    from core.formats import ReadOptions
    from core.ingest import ingest
    from core.summary import summary
    from core.tokens import count_tokens_stage
    from core.verify import verify_stage

    temperature = opts.temperature if opts.temperature is not None else (0.0 if opts.k == 1 else 0.7)
    label = _label(opts)
    run = opts.run_name or f"eval {label} on {Path(opts.benchmark).stem} k{opts.k} t{opts.max_new_tokens}"
    out_dir = store.data_dir() / "evals" / run.replace("/", "_").replace(" ", "_")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "options.json").write_text(json.dumps(asdict(opts), indent=1))
    generations = out_dir / "generations.jsonl"
    problems = benchmark_problems(opts.benchmark, opts.problems, db=db)
    done = _completed(generations, opts.k)
    todo = [p for p in problems if p["key"] not in done]
    log(f"{len(problems)} problems, {len(done)} already generated, {len(todo)} to go ({opts.backend})")
    started = time.perf_counter()
    if opts.backend == "vllm" and todo:
        results = _generate_vllm(opts, todo, temperature)
        _append(generations, todo, results, label)
        if progress:
            progress("generate", len(problems), len(problems))
    else:
        for i in range(0, len(todo), opts.batch_size):
            batch = todo[i:i + opts.batch_size]
            _append(generations, batch, _generate_transformers(opts, batch, temperature), label)
            if progress:
                progress("generate", len(done) + i + len(batch), len(problems))
    seconds = time.perf_counter() - started
    result = ingest(
        str(generations), fmt="generic", name=_free_name(run, db=db), db=db,
        opts=ReadOptions(mapping={"question": "question", "response": "response", "answer": "reference",
                                  "model": "model", "sample": "sample", "id": "id", "benchmark": "benchmark",
                                  "finish_reason": "finish_reason"}),
        progress=progress,
    )
    verify_stage(db=db, dataset_id=result.dataset_id, progress=progress)
    count_tokens_stage(db=db, dataset_id=result.dataset_id, progress=progress)
    rows = summary(db=db).filter(__import__("polars").col("dataset") == result.name).to_dicts()
    return {"dataset": result.name, "dataset_id": result.dataset_id, "model": label, "generation_seconds": seconds,
            "problems": len(problems), "k": opts.k, "summary": rows}


def _completed(path: Path, k: int) -> set[str]:
    """Problems a previous (killed) run finished with all k samples. Lines of unfinished
    problems, and a line torn by the kill, are dropped so those problems run again whole."""
    if not path.exists():
        return set()
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["id"]] = counts.get(row["id"], 0) + 1
    complete = {key for key, n in counts.items() if n >= k}
    path.write_text("".join(json.dumps(r) + "\n" for r in rows if r["id"] in complete))
    return complete


def _free_name(name: str, *, db=None) -> str:
    taken = {r[0] for r in store.read_rows("SELECT name FROM datasets", db=db)}
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name} #{n}", n + 1
    return candidate


def _append(path: Path, problems: list[dict], results: list[list[tuple[str, str]]], label: str) -> None:
    """One line per sample, flushed per batch: the unit a killed run does not redo."""
    with open(path, "a") as fh:
        for p, samples in zip(problems, results):
            for j, (text, finish) in enumerate(samples):
                fh.write(json.dumps({"id": p["key"], "benchmark": p["benchmark"], "question": p["question"],
                                     "reference": p["reference"], "model": label, "sample": j,
                                     "response": text, "finish_reason": finish}) + "\n")
        fh.flush()
