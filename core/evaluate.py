"""Evaluate a model (base, or base + LoRA adapter) on a benchmark, and ingest its answers.

    python -m core evaluate --benchmark gsm8k_test --model SmolLM2-135M-Instruct \
        [--adapter data/models/my-run/adapter] --problems 20 --k 4 --max-new-tokens 512

k samples per problem under a max-new-token budget; vLLM on GPU, transformers on CPU. The
generations are appended to a JSONL as they come (a killed run resumes without redoing them),
then ingested as a new dataset with math-verify correctness and token counts, so the
Distributions page compares base and tuned models side by side.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
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

    @classmethod
    def from_params(cls, params: dict) -> EvalOptions:
        """Options from a job's params (JSON): unknown keys ignored, numbers cast."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in params.items() if k in known and v is not None and v != ""}
        for name in ("problems", "k", "max_new_tokens", "batch_size", "seed"):
            if name in kwargs:
                kwargs[name] = int(kwargs[name])
        if "temperature" in kwargs:
            kwargs["temperature"] = float(kwargs["temperature"])
        if "benchmark" not in kwargs:
            raise ValueError("An evaluation needs a benchmark: a benchmark dataset in the store, or a file.")
        return cls(**kwargs)


# Options that do not change the generations: a resumed run may differ in these.
_RESUME_FREE = ("batch_size", "run_name")


def _label(opts: EvalOptions) -> str:
    """The model name the app shows: the model (a local folder by its name) + the fine-tune's name."""
    if opts.label:
        return opts.label
    model = Path(opts.model).name if Path(opts.model).exists() else opts.model
    if not opts.adapter:
        return model
    adapter = Path(opts.adapter)
    return f"{model}+{adapter.parent.name if adapter.name == 'adapter' else adapter.name}"


def _fingerprint(opts: EvalOptions) -> str:
    """What decides the generations: the options, and the adapter's weights (a model retrained
    under the same name must not reuse the old model's answers)."""
    key = {k: v for k, v in asdict(opts).items() if k not in _RESUME_FREE}
    if opts.adapter:
        weights = sorted(Path(opts.adapter).glob("adapter_model.*"))
        key["adapter_weights"] = [hashlib.sha256(w.read_bytes()).hexdigest() for w in weights]
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]


def run_name(opts: EvalOptions) -> str:
    """The new dataset's name (before a ' #2' that keeps it unique)."""
    return opts.run_name or f"eval {_label(opts)} on {Path(opts.benchmark).stem} n{opts.problems} k{opts.k} t{opts.max_new_tokens}"


def run_dir(opts: EvalOptions) -> Path:
    """Where an evaluation appends its generations; the same options give the same folder,
    which is what lets a killed run resume."""
    slug = re.sub(r"[^A-Za-z0-9._+-]+", "_", run_name(opts)).strip("_")[:100]
    return store.data_dir() / "evals" / f"{slug}-{_fingerprint(opts)}"


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

    model, tokenizer, eos = _transformers_model(opts)
    prompts = [tokenizer.apply_chat_template(_messages(p["question"]), tokenize=False, add_generation_prompt=True) for p in batch]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    if temperature > 0:
        sampling = {"do_sample": True, "temperature": temperature, "top_p": 0.95}
    else:
        sampling = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=opts.max_new_tokens, num_return_sequences=opts.k,
                             pad_token_id=tokenizer.pad_token_id, **sampling)
    new_tokens = out[:, inputs["input_ids"].shape[1]:].tolist()
    results = []
    for i in range(len(batch)):
        samples = []
        for j in range(opts.k):
            ids = new_tokens[i * opts.k + j]
            end = next((n for n, tok in enumerate(ids) if tok in eos), None)
            text = tokenizer.decode(ids if end is None else ids[:end], skip_special_tokens=True)
            samples.append((text, "length" if end is None else "stop"))
        results.append(samples)
    return results


_LOADED: dict[tuple, tuple] = {}


def _transformers_model(opts: EvalOptions):
    """(model, tokenizer, end-of-sequence ids), loaded once per process for a model+adapter."""
    key = (opts.model, opts.adapter)
    if key not in _LOADED:
        from core.models import load_causal_lm

        if opts.adapter and not (Path(opts.adapter) / "adapter_config.json").exists():
            raise ValueError(f"{opts.adapter} is not a LoRA adapter folder (no adapter_config.json); fine-tune a model first")
        model, tokenizer = load_causal_lm(opts.model, adapter=opts.adapter)
        if opts.adapter:
            model = model.merge_and_unload()  # the same outputs, without LoRA's extra matmuls per token
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"model '{opts.model}' has no chat template; evaluate an instruction-tuned (chat) model")
        tokenizer.padding_side = "left"  # decoder-only batches pad on the left
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        configured = model.generation_config.eos_token_id
        eos = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
        eos.add(tokenizer.eos_token_id)
        _LOADED.clear()  # one model in memory at a time
        _LOADED[key] = (model, tokenizer, eos)
    return _LOADED[key]


def _generate_vllm(opts: EvalOptions, problems: list[dict], temperature: float) -> list[list[tuple[str, str]]]:
    """One engine, the whole batch (vLLM schedules it better than we could)."""
    import torch
    from vllm import LLM, SamplingParams  # imported only when asked for

    from core.models import resolve_model

    engine: dict = {"seed": opts.seed, "gpu_memory_utilization": 0.9 if torch.cuda.is_available() else 0.2}
    lora = None
    if opts.adapter:
        from vllm.lora.request import LoRARequest

        rank = json.loads((Path(opts.adapter) / "adapter_config.json").read_text()).get("r", 16)
        engine.update(enable_lora=True, max_lora_rank=max(16, int(rank)))
        lora = LoRARequest("adapter", 1, opts.adapter)
    llm = LLM(model=resolve_model(opts.model), **engine)
    params = SamplingParams(n=opts.k, temperature=temperature, top_p=0.95 if temperature > 0 else 1.0,
                            max_tokens=opts.max_new_tokens, seed=opts.seed)
    outputs = llm.chat([_messages(p["question"]) for p in problems], params, lora_request=lora, use_tqdm=False)
    return [[(c.text, c.finish_reason or "stop") for c in o.outputs] for o in outputs]


def evaluate(
    opts: EvalOptions,
    *,
    db=None,
    progress: Callable[[str, int, int | None], None] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Generate k answers per problem, ingest them as a new dataset, verify and count them.

    Returns the dataset's name and id, the model label, the accuracy (math-verify, percent),
    timings and the summary rows. Generations are appended per batch to
    ``run_dir(opts)/generations.jsonl``; run again with the same options, it generates only
    the problems that lack their k answers.
    """
    import polars as pl

    from core.formats import ReadOptions
    from core.ingest import ingest
    from core.summary import summary
    from core.tokens import count_tokens_stage
    from core.verify import SOURCE as VERIFY_SOURCE
    from core.verify import verify_stage

    if opts.backend not in ("transformers", "vllm"):
        raise ValueError(f"unknown generation backend '{opts.backend}'; choose transformers or vllm")
    if opts.k < 1 or opts.problems < 1 or opts.max_new_tokens < 1:
        raise ValueError("problems, k and max new tokens must each be at least 1")
    temperature = opts.temperature if opts.temperature is not None else (0.0 if opts.k == 1 else 0.7)
    label = _label(opts)
    out_dir = run_dir(opts)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "options.json").write_text(json.dumps(asdict(opts), indent=1))
    generations = out_dir / "generations.jsonl"
    problems = benchmark_problems(opts.benchmark, opts.problems, db=db)
    done = _completed(generations, opts.k)
    todo = [p for p in problems if p["key"] not in done]
    log(f"{len(problems)} problems, {len(done)} already generated, {len(todo)} to go ({opts.backend}, {label})")
    if progress:
        progress("generate", len(problems) - len(todo), len(problems))
    started = time.perf_counter()
    if opts.backend == "vllm" and todo:
        _append(generations, todo, _generate_vllm(opts, todo, temperature), label)
        if progress:
            progress("generate", len(problems), len(problems))
    else:
        for i in range(0, len(todo), opts.batch_size):
            batch = todo[i:i + opts.batch_size]
            _append(generations, batch, _generate_transformers(opts, batch, temperature), label)
            if progress:
                progress("generate", len(problems) - len(todo) + i + len(batch), len(problems))
    seconds = time.perf_counter() - started
    name = run_name(opts)
    result = ingest(
        str(generations), fmt="generic", name=_free_name(name, db=db), db=db,
        opts=ReadOptions(mapping={"question": "question", "response": "response", "answer": "reference",
                                  "model": "model", "sample": "sample", "id": "id", "benchmark": "benchmark",
                                  "finish_reason": "finish_reason"}),
        progress=progress,
    )
    verify_stage(db=db, dataset_id=result.dataset_id, progress=progress)
    count_tokens_stage(db=db, dataset_id=result.dataset_id, progress=progress)
    rows = summary(db=db).filter(pl.col("dataset") == result.name).to_dicts()
    accuracy = rows[0].get(f"acc[{VERIFY_SOURCE}]") if len(rows) == 1 else None
    outcome = {
        "dataset": result.name, "dataset_id": result.dataset_id, "model": label, "benchmark": opts.benchmark,
        "adapter": opts.adapter, "problems": len(problems), "k": opts.k, "max_new_tokens": opts.max_new_tokens,
        "temperature": temperature, "backend": opts.backend, "accuracy": accuracy,
        "generated_now": len(todo), "generation_seconds": seconds, "generations": str(generations),
        "summary": rows,
    }
    (out_dir / "result.json").write_text(json.dumps(outcome, indent=1, default=str))
    log(f"{label}: accuracy {accuracy if accuracy is not None else 'unknown'} % on {len(problems)} problems (dataset '{result.name}')")
    return outcome


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
    kept = "".join(json.dumps(r) + "\n" for r in rows if r["id"] in complete)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(kept)
    tmp.replace(path)  # a kill now cannot lose the complete problems
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
