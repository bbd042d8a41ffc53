"""Evaluate a model (base, or base + LoRA adapter) on a benchmark, and ingest its answers.

    python -m core evaluate --benchmark gsm8k_test --model SmolLM2-135M-Instruct \
        [--adapter data/models/my-run/adapter] --problems 20 --k 4 [--max-new-tokens 512]

k samples per problem under a max-new-token budget, generated through core.generation (vLLM
on GPU, transformers on CPU). The budget defaults to what fits long CoTs: as many tokens as the
model's context leaves after the longest prompt, at most :data:`LONG_COT_TOKENS` (32,768; long
CoTs run 8k-32k tokens), so a reasoning model is not cut off mid-thought (SmolLM2's 8,192-token
context gives about 8,000). Each answer records the budget and its finish reason, so the budget
charts (Distributions, Compare) mark where generations hit it. The generations are appended to a JSONL batch by batch (a killed
or cancelled run resumes without redoing them; a cancel stops the batch's generation within a
decoding step), then ingested as a new dataset with math-verify correctness and token counts (with the
evaluated model's own tokenizer, so its lengths are in the tokens its budget counts),
so the Distributions page compares base and tuned models side by side.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from core import store
from core.errors import UserError
from core.generation import BACKENDS, Generation, RunClock, cached_backend
from core.models import DEFAULT_MODEL
from core.options import option
from core.progress import CancelledFn, LogFn, ProgressFn, raise_if_cancelled, report_activity

PROMPT_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."
LONG_COT_TOKENS = 32_768  # the default budget's ceiling: the longest budget the efficiency literature reports


@dataclass
class EvalOptions:
    """What an evaluation runs (the CLI's ``evaluate`` flags and the Jobs form are made from it)."""

    benchmark: str | None = option(None, help="a benchmark dataset in the store, or a benchmark file to ingest")
    model: str = option(DEFAULT_MODEL, help="a local folder, a hub id or the offline default")
    adapter: str | None = option(None, label="LoRA adapter", help="a LoRA adapter folder (data/models/<name>/adapter)")
    label: str | None = option(None, help="model name shown in the app (default model[+adapter's model name])")
    problems: int = option(20, label="Problems (the first N)", help="the benchmark's first N problems")
    k: int = option(1, label="k (samples per problem)", help="k = 1 decodes greedily; k > 1 samples at temperature 0.7")
    max_new_tokens: int | None = option(None, help="the token budget of each answer (default: what the model's context "
                                                   f"leaves after the longest prompt, at most {LONG_COT_TOKENS:,})")
    temperature: float | None = option(None, help="default 0 for k=1, else 0.7")
    backend: str = option("transformers", choices=BACKENDS, help="transformers runs anywhere; vllm needs a GPU (or the CPU build)")
    batch_size: int = option(8, help="problems per generate call (transformers)")
    seed: int = option(0, help="sampling seed")
    run_name: str | None = option(None, help="the new dataset's name")

    def __post_init__(self):
        if not self.benchmark:
            raise UserError("Choose a benchmark dataset (ingest one with the format 'benchmark' first), or give a benchmark file.")
        if self.backend not in BACKENDS:
            raise UserError(f"unknown generation backend '{self.backend}'; choose transformers or vllm")
        if self.k < 1 or self.problems < 1 or (self.max_new_tokens is not None and self.max_new_tokens < 1) or self.batch_size < 1:
            raise UserError("problems, k, max new tokens and the batch size must each be at least 1")
        if self.temperature is not None and self.temperature < 0:
            raise UserError(f"the temperature cannot be negative, got {self.temperature}")

    @classmethod
    def from_params(cls, params: dict) -> EvalOptions:
        """Options from a job's params (JSON): unknown keys ignored, numbers cast."""
        from core.options import from_params

        return from_params(cls, params)


# Options that do not change the generations: a resumed run may differ in these.
_RESUME_FREE = ("batch_size", "run_name")


def _label(opts: EvalOptions) -> str:
    """The model name the app shows: the model (a local folder by its name) + the fine-tune's name."""
    if opts.label:
        return opts.label
    model = Path(opts.model).name if Path(opts.model).exists() else opts.model
    if model == "model" and (Path(opts.model).parent / "model_card.json").exists():
        model = Path(opts.model).parent.name  # a full fine-tune (data/models/<name>/model) goes by its name
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
        raise UserError(f"no benchmark dataset named '{benchmark}' with reference answers in the store; ingest one with `python -m core ingest FILE --format benchmark`")
    return [dict(zip(("key", "benchmark", "question", "reference"), r)) for r in rows]


def _messages(question: str) -> list[dict]:
    return [{"role": "user", "content": question + PROMPT_SUFFIX}]


def default_max_new_tokens(opts: EvalOptions, questions: list[str]) -> tuple[int, str]:
    """(budget, how it was chosen): ``opts.max_new_tokens`` when given, else the tokens the
    model's context leaves after the longest of these prompts (chat template applied, the
    adapter's own template when it has one), at most :data:`LONG_COT_TOKENS`. Loads the
    tokenizer and the config only."""
    if opts.max_new_tokens is not None:
        return opts.max_new_tokens, "given"
    from transformers import AutoTokenizer

    from core.models import adapter_chat_template, resolve_model
    from core.sft_data import model_context

    path = resolve_model(opts.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    template = (adapter_chat_template(opts.adapter) if opts.adapter else None) or tokenizer.chat_template
    context = model_context(path, tokenizer)
    if context is None:
        return LONG_COT_TOKENS, f"{LONG_COT_TOKENS:,}: the model does not say how long its context is"
    longest = max((len(tokenizer.apply_chat_template(_messages(q), chat_template=template, add_generation_prompt=True,
                                                     tokenize=True, return_dict=True)["input_ids"]) for q in questions),
                  default=0) if template else max((len(tokenizer(q + PROMPT_SUFFIX)["input_ids"]) for q in questions), default=0)
    left = context - longest
    if left < 1:
        raise UserError(f"The longest prompt ({longest:,} tokens) fills the model's context ({context:,}); "
                        "choose fewer or shorter problems, or a model with a longer context.")
    if left > LONG_COT_TOKENS:
        return LONG_COT_TOKENS, f"{LONG_COT_TOKENS:,}, the long-CoT ceiling (the model's context is {context:,})"
    return left, f"the model's context ({context:,}) less the longest prompt ({longest:,})"


def generate_answers(opts: EvalOptions, problems: list[dict], temperature: float, *, on_step=None,
                     cancelled: CancelledFn | None = None, backend_options: dict | None = None) -> list[list[Generation]]:
    """k answers per problem (in order), from the backend this process keeps open for the
    model+adapter (core.generation); ``backend_options`` go to the backend's constructor
    (e.g. ``dtype="float32"`` for a vLLM engine, which on a CPU would pick bfloat16)."""
    options = {**(backend_options or {}), "adapter": opts.adapter, "batch_size": opts.batch_size}
    if opts.backend == "vllm":
        options["seed"] = opts.seed
    engine = cached_backend(opts.backend, opts.model, **options)
    answers = engine.generate([_messages(p["question"]) for p in problems], n=opts.k, max_new_tokens=opts.max_new_tokens,
                              temperature=temperature, top_p=0.95 if temperature > 0 else 1.0, seed=opts.seed,
                              on_step=on_step, cancelled=cancelled)
    grouped: list[list[Generation]] = [[] for _ in problems]
    for answer in answers:
        grouped[answer.prompt_index].append(answer)
    return grouped


def evaluate(
    opts: EvalOptions,
    *,
    db=None,
    progress: ProgressFn | None = None,
    cancelled: CancelledFn | None = None,
    log: LogFn = print,
) -> dict:
    """Generate k answers per problem, ingest them as a new dataset, verify and count them.

    Returns the dataset's name and id, the model label, the accuracy (math-verify, percent),
    timings and the summary rows. Generations are appended per batch to
    ``run_dir(opts)/generations.jsonl``; run again with the same options, it generates only
    the problems that lack their k answers. ``progress("generate", done, total)`` counts
    problems whose answers are written; a cancel (``cancelled()``) stops the current batch's
    generation within a decoding step and raises :class:`core.progress.JobCancelled`.
    """
    import polars as pl

    from core.summary import summary
    from core.verify import SOURCE as VERIFY_SOURCE

    temperature = opts.temperature if opts.temperature is not None else (0.0 if opts.k == 1 else 0.7)
    label = _label(opts)
    problems = benchmark_problems(opts.benchmark, opts.problems, db=db)
    budget, budget_from = default_max_new_tokens(opts, [p["question"] for p in problems])
    opts = replace(opts, max_new_tokens=budget)  # the run's name and folder carry the budget it ran with
    out_dir = run_dir(opts)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "options.json").write_text(json.dumps(asdict(opts), indent=1))
    generations = out_dir / "generations.jsonl"
    log(f"max new tokens {budget:,} ({budget_from})")
    done = _completed(generations, opts.k)
    todo = [p for p in problems if p["key"] not in done]
    log(f"{len(problems)} problems, {len(done)} already generated, {len(todo)} to go ({opts.backend}, {label})")
    if progress:
        progress("generate", len(problems) - len(todo), len(problems))
    started = time.perf_counter()
    # vLLM schedules the whole list better than we could; transformers goes batch by batch,
    # each batch appended (and counted) before the next starts
    chunk = max(1, len(todo)) if opts.backend == "vllm" else opts.batch_size
    clock = RunClock(calls=math.ceil(len(todo) / chunk))

    def on_step(status) -> None:
        report_activity(progress, clock.text(status, unit="answers"), eta_s=clock.eta(status))

    for i in range(0, len(todo), chunk):
        raise_if_cancelled(cancelled)
        batch = todo[i:i + chunk]
        clock.start_call()
        results = generate_answers(opts, batch, temperature, on_step=on_step if progress else None, cancelled=cancelled)
        clock.end_call()
        _append(generations, batch, results, label, budget)
        if progress:
            progress("generate", len(problems) - len(todo) + i + len(batch), len(problems))
    seconds = time.perf_counter() - started
    # counted with the evaluated model's own tokenizer (its budget is in those tokens)
    result = ingest_generations(generations, run_name(opts), db=db, progress=progress, tokenizer=opts.model)
    rows = summary(db=db).filter(pl.col("dataset") == result.name).to_dicts()
    accuracy = rows[0].get(f"acc[{VERIFY_SOURCE}]") if len(rows) == 1 else None
    outcome = {
        "dataset": result.name, "dataset_id": result.dataset_id, "model": label, "benchmark": opts.benchmark,
        "adapter": opts.adapter, "problems": len(problems), "k": opts.k, "max_new_tokens": opts.max_new_tokens,
        "max_new_tokens_from": budget_from, "hit_max_new_tokens": _hits(generations), "temperature": temperature, "backend": opts.backend, "accuracy": accuracy,
        "generated_now": len(todo), "generation_seconds": seconds, "generations": str(generations),
        "summary": rows,
    }
    (out_dir / "result.json").write_text(json.dumps(outcome, indent=1, default=str))
    log(f"{label}: accuracy {accuracy if accuracy is not None else 'unknown'} % on {len(problems)} problems (dataset '{result.name}')")
    return outcome


GENERATIONS_MAPPING = {"question": "question", "response": "response", "answer": "reference", "model": "model",
                       "sample": "sample", "id": "id", "benchmark": "benchmark", "finish_reason": "finish_reason"}


def ingest_generations(path: Path, name: str, *, db=None, progress: ProgressFn | None = None,
                       tokenizer: str | None = None):
    """Ingest an evaluation's generations file as a new dataset named ``name`` (made unique),
    then verify its answers with math-verify and count its tokens (with ``tokenizer``, the
    evaluated model's, else the default) and publish its marker densities; returns the ingest result.
    Fields beyond the mapping (the budget, the model's own token count) stay in each CoT's
    ``extra``."""
    from core.formats import ReadOptions
    from core.ingest import ingest
    from core.tokens import count_tokens_stage
    from core.verify import verify_stage

    result = ingest(str(path), fmt="generic", name=_free_name(name, db=db), db=db,
                    opts=ReadOptions(mapping=dict(GENERATIONS_MAPPING)), progress=progress)
    verify_stage(db=db, dataset_id=result.dataset_id, progress=progress)
    if tokenizer is not None:
        count_tokens_stage(db=db, dataset_id=result.dataset_id, tokenizer=tokenizer, progress=progress)
    else:
        count_tokens_stage(db=db, dataset_id=result.dataset_id, progress=progress)
    from core.markers import publish_density

    publish_density(db=db, dataset_id=result.dataset_id)
    return result


def _generated_rows(path: Path) -> list[dict]:
    """The lines of a generations file; a line torn by a kill is dropped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _complete(rows: list[dict], k: int) -> set[str]:
    """Problems with all k samples among ``rows``."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["id"]] = counts.get(row["id"], 0) + 1
    return {key for key, n in counts.items() if n >= k}


def _completed(path: Path, k: int) -> set[str]:
    """Problems a previous (killed) run finished with all k samples. Lines of unfinished
    problems, and a line torn by the kill, are dropped so those problems run again whole."""
    if not path.exists():
        return set()
    rows = _generated_rows(path)
    complete = _complete(rows, k)
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


def _append(path: Path, problems: list[dict], results: list[list[Generation]], label: str, budget: int) -> None:
    """One line per sample, flushed per batch: the unit a killed run does not redo. The budget
    and the model's own token count ride along (the ingest keeps them in the CoT's ``extra``)."""
    with open(path, "a") as fh:
        for p, samples in zip(problems, results):
            for j, answer in enumerate(samples):
                fh.write(json.dumps({"id": p["key"], "benchmark": p["benchmark"], "question": p["question"],
                                     "reference": p["reference"], "model": label, "sample": j,
                                     "response": answer.text, "finish_reason": answer.finish_reason,
                                     "max_new_tokens": budget, "completion_tokens": answer.completion_tokens}) + "\n")
        fh.flush()


def _hits(path: Path) -> int:
    """Answers of the run that stopped at the budget (finish reason 'length')."""
    return sum(r.get("finish_reason") == "length" for r in _generated_rows(path))


def estimate_cost(opts: EvalOptions, *, db=None):
    """What this evaluation will cost before it starts (core.generation.RunCost): problems x k
    answers still to generate, in how many batches, and at most how long at this machine's
    measured speed. Reads the store and the generations file; loads no model."""
    from core.generation import RunCost, known_speed

    problems = benchmark_problems(opts.benchmark, opts.problems, db=db) if not Path(opts.benchmark).exists() else None
    if problems is None:  # a file not ingested yet: its first lines stand for the problems
        problems = [{"key": str(i), "question": ""} for i in range(opts.problems)]
    opts = replace(opts, max_new_tokens=default_max_new_tokens(opts, [p["question"] for p in problems])[0])
    generations = run_dir(opts) / "generations.jsonl"
    done = _complete(_generated_rows(generations), opts.k)  # read only: a running job may be appending
    todo = [p for p in problems if p["key"] not in done]
    chunk = max(1, len(todo)) if opts.backend == "vllm" else opts.batch_size
    prompt_chars = int(sum(len(p["question"]) for p in todo) / max(1, len(todo)) + len(PROMPT_SUFFIX))
    notes = [f"{len(problems) - len(todo):,} problems already generated by an earlier run"] if len(todo) < len(problems) else []
    return RunCost(what=f"{len(todo):,} problems x k={opts.k} = {len(todo) * opts.k:,} answers", answers=len(todo) * opts.k,
                   batches=math.ceil(len(todo) / chunk), batch_size=chunk, max_new_tokens=opts.max_new_tokens,
                   prompt_chars=prompt_chars, notes=notes,
                   speed=known_speed(opts.backend, opts.model, opts.adapter, chunk, opts.k, prompt_chars),
                   measure={"backend": opts.backend, "model": opts.model, "adapter": opts.adapter, "batch_size": chunk,
                            "n": opts.k, "prompt_chars": prompt_chars})
