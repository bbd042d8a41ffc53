"""Chat generation for every part of ThoughtScope that asks a model something: the LLM judge,
evaluation, and anything built on them (a step judge). One call, two backends, the same
results: the text, why it stopped, and the token counts.

    from core.generation import generate
    [answer] = generate([[{"role": "user", "content": "What is 17 + 25?"}]], max_new_tokens=64)
    answer.text, answer.finish_reason, answer.prompt_tokens, answer.completion_tokens

``generate`` opens the backend on first use and keeps it for the process (a vLLM engine takes
minutes to start); :func:`open_backend` gives one to hold yourself. Each backend's
``generate(prompts, ...)`` takes a list of chats (each a list of ``{"role", "content"}``
messages, formatted with the model's chat template) and returns one :class:`Generation` per
prompt and sample (prompt-major: ``n`` samples of the first prompt, then of the second, ...).

* ``transformers`` (default; CPU or GPU): batched ``generate``, left-padded, prompts sorted
  by length so each batch pads little; greedy at temperature 0. A LoRA adapter is merged
  into the weights (the same outputs, without LoRA's extra matmuls per token).
* ``vllm``: one ``vllm.LLM`` engine, the whole list at once through ``LLM.enqueue_chat`` and
  the engine's step loop; a LoRA adapter goes in as a ``LoRARequest`` with the engine's
  ``max_lora_rank`` read from the adapter's config; ``regexes`` constrain each answer
  (structured outputs). vLLM is imported only when this backend is opened: on a GPU machine
  install requirements-gpu.txt, on a CPU use ``.venv-vllm`` (requirements-vllm-cpu.txt).

Both look at ``cancelled()`` at every decoding step and stop within a step when it turns True
(raising :class:`core.progress.JobCancelled`; the caller keeps what it committed before), and
report the call's state to ``on_step`` (a :class:`StepStatus`, at most twice a second):
sequences finished, tokens generated so far, elapsed time and an estimate of the time left.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.models import DEFAULT_MODEL, resolve_model
from core.progress import CancelledFn, JobCancelled, duration_text

BACKENDS = ("transformers", "vllm")
DEFAULT_BATCH = {"transformers": 8, "vllm": 256}
# the ranks vLLM's LoRA kernels are built for (vllm.config.lora.MaxLoRARanks)
VLLM_LORA_RANKS = (16, 32, 64, 128, 256, 320, 512)
REPORT_EVERY_S = 0.5

Messages = list[dict[str, str]]


class GenerationError(UserError):
    """A model cannot be opened or asked as requested; the message says what to change."""


@dataclass(frozen=True)
class Generation:
    """One answer: ``finish_reason`` is "stop" (the model ended it) or "length" (it reached
    ``max_new_tokens``); token counts are the model's own tokens."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    prompt_index: int = 0
    sample_index: int = 0


@dataclass(frozen=True)
class StepStatus:
    """Where a ``generate`` call stands, for ``on_step``."""

    sequences: int  # prompts x n
    finished: int  # sequences complete so far
    tokens: int  # tokens generated so far (finished and unfinished sequences)
    elapsed_s: float
    eta_s: float | None  # seconds until the call ends, estimated (an upper bound before any batch ended)

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.elapsed_s if self.elapsed_s > 0 else None


StepFn = Callable[[StepStatus], None]


def vllm_lora_rank(adapter: str | Path) -> int:
    """The ``max_lora_rank`` a vLLM engine needs for ``adapter``: the smallest rank vLLM
    supports that is at least the adapter's ``r`` (its default, 16, refuses a rank-32 adapter)."""
    config = Path(adapter) / "adapter_config.json"
    rank = int(json.loads(config.read_text()).get("r", 16))
    for supported in VLLM_LORA_RANKS:
        if supported >= rank:
            return supported
    raise GenerationError(f"The LoRA adapter {adapter} has rank {rank}; vLLM supports ranks up to {VLLM_LORA_RANKS[-1]}.")


def _check_adapter(adapter: str | None) -> None:
    if adapter and not (Path(adapter) / "adapter_config.json").exists():
        raise GenerationError(f"{adapter} is not a LoRA adapter folder (no adapter_config.json); fine-tune a model first.")


# --------------------------------------------------------------------------- transformers


class _CallProgress:
    """Counts and time estimate of one transformers ``generate`` call, batch by batch, for
    ``on_step``: the current batch takes at most ``max_new_tokens`` steps at the rate measured
    so far; each later batch the mean time an earlier batch took (or this one's projection)."""

    def __init__(self, *, sequences: int, batches: int, max_new_tokens: int, on_step: StepFn | None):
        self.sequences, self.batches, self.max_new_tokens, self.on_step = sequences, batches, max_new_tokens, on_step
        self.started = self.reported = time.monotonic()
        self.finished = self.tokens = 0
        self.batch_index, self.batch_started, self.batch_s = 0, self.started, []

    def start_batch(self, index: int) -> None:
        self.batch_index, self.batch_started = index, time.monotonic()

    def step(self, finished: int, tokens: int, steps: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if self.on_step is None or (not final and now - self.reported < REPORT_EVERY_S):
            return
        self.reported = now
        per_step = (now - self.batch_started) / steps if steps else None
        left_here = 0.0 if final else (self.max_new_tokens - steps) * per_step if per_step is not None else None
        per_batch = (sum(self.batch_s) / len(self.batch_s) if self.batch_s
                     else self.max_new_tokens * per_step if per_step is not None else None)
        later = self.batches - self.batch_index - 1
        eta = None if left_here is None or (later and per_batch is None) else left_here + (per_batch or 0.0) * later
        self.on_step(StepStatus(sequences=self.sequences, finished=self.finished + finished, tokens=self.tokens + tokens,
                                elapsed_s=now - self.started, eta_s=eta))

    def end_batch(self, sequences: int, tokens: int) -> None:
        self.batch_s.append(time.monotonic() - self.batch_started)
        self.finished += sequences
        self.tokens += tokens
        self.step(0, 0, 1, final=True)


class _StepWatch:
    """A transformers stopping criterion that stops no sequence by itself: at each decoding
    step it counts tokens and finished sequences for the call's progress and, once
    ``cancelled()`` is True, stops the whole batch."""

    def __init__(self, *, rows: int, eos: set[int], progress: _CallProgress, cancelled: CancelledFn | None):
        import torch

        self.rows = rows
        self.eos = torch.tensor(sorted(eos))
        self.finished = torch.zeros(rows, dtype=torch.bool)
        self.tokens = self.steps = 0
        self.progress = progress
        self.cancelled = cancelled
        self.stopped = False

    def __call__(self, input_ids, scores=None, **kwargs):
        import torch

        self.steps += 1
        self.tokens += int((~self.finished).sum())  # every unfinished sequence made one token
        self.finished |= torch.isin(input_ids[:, -1].cpu(), self.eos)
        self.progress.step(int(self.finished.sum()), self.tokens, self.steps)
        if self.cancelled is not None and self.cancelled():
            self.stopped = True
            return torch.ones(self.rows, dtype=torch.bool, device=input_ids.device)
        return torch.zeros(self.rows, dtype=torch.bool, device=input_ids.device)


class TransformersBackend:
    """Batched generation with transformers, on CPU or GPU."""

    name = "transformers"

    def __init__(self, model: str = DEFAULT_MODEL, *, adapter: str | None = None, device: str | None = None,
                 batch_size: int | None = None, dtype=None, threads: int | None = None, merge_adapter: bool = True):
        """``threads`` sets torch's CPU threads for the whole process: on a CPU shared with other
        work, 1 thread ran the judge 4.6x faster than torch's default of one per core (2 here),
        whose threads wait on each other when the cores are busy."""
        from core.models import load_causal_lm

        if threads:
            import torch

            torch.set_num_threads(threads)
        _check_adapter(adapter)
        self.model_name = model
        self.model, self.tokenizer = load_causal_lm(model, adapter=adapter, device=device, dtype=dtype)
        if adapter and merge_adapter:
            self.model = self.model.merge_and_unload()
        if not getattr(self.tokenizer, "chat_template", None):
            raise GenerationError(f"Model '{model}' has no chat template; use an instruction-tuned (chat) model, or a "
                                  "fine-tune of a base model made here (its chat template is saved with it).")
        # decoder-only models must be padded on the left, or the batch continues from pad tokens
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.batch_size = batch_size or DEFAULT_BATCH["transformers"]
        eos = self.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.eos.add(self.tokenizer.eos_token_id)
        self.generated_tokens = 0

    def timed_generate(self, prompts: Sequence[Messages], *, n: int, tokens: int) -> float:
        """Seconds to generate exactly ``tokens`` tokens for every prompt in one batch
        (end-of-sequence ignored): what :func:`measure_speed` times."""
        import torch

        texts = [self.tokenizer.apply_chat_template(list(p), add_generation_prompt=True, tokenize=False) for p in prompts]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
        started = time.perf_counter()
        with torch.inference_mode():
            self.model.generate(**enc, max_new_tokens=tokens, min_new_tokens=tokens, num_return_sequences=n, do_sample=False,
                                temperature=None, top_p=None, top_k=None, pad_token_id=self.tokenizer.pad_token_id)
        return time.perf_counter() - started

    def generate(self, prompts: Sequence[Messages], *, max_new_tokens: int = 512, temperature: float = 0.0,
                 top_p: float = 1.0, n: int = 1, seed: int = 0, regexes: Sequence[str | None] | None = None,
                 on_step: StepFn | None = None, cancelled: CancelledFn | None = None) -> list[Generation]:
        import torch
        from transformers import StoppingCriteriaList

        if regexes and any(regexes):
            raise GenerationError("Constrained (guided) decoding needs the vllm backend.")
        texts = [self.tokenizer.apply_chat_template(list(p), add_generation_prompt=True, tokenize=False) for p in prompts]
        # longest first, so each batch pads to similar lengths; answers go back in input order
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id,
                                   "num_return_sequences": n}
        if temperature > 0:
            options.update(do_sample=True, temperature=temperature, top_p=top_p)
            torch.manual_seed(seed)
        else:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        out: list[Generation | None] = [None] * (len(texts) * n)
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        progress = _CallProgress(sequences=len(out), batches=len(batches), max_new_tokens=max_new_tokens, on_step=on_step)
        for b, chunk in enumerate(batches):
            enc = self.tokenizer([texts[i] for i in chunk], return_tensors="pt", padding=True,
                                 add_special_tokens=False).to(self.model.device)
            progress.start_batch(b)
            watch = _StepWatch(rows=len(chunk) * n, eos=self.eos, progress=progress, cancelled=cancelled)
            with torch.inference_mode():
                generated = self.model.generate(**enc, **options, stopping_criteria=StoppingCriteriaList([watch]))
            if watch.stopped:
                raise JobCancelled(f"generation stopped at decoding step {watch.steps} of at most {max_new_tokens}"
                                   + (f", in batch {b + 1} of {len(batches)} of this call" if len(batches) > 1 else ""))
            prompt_tokens = enc["attention_mask"].sum(dim=1).tolist()
            new = generated[:, enc["input_ids"].shape[1]:].tolist()
            batch_tokens = 0
            for row, ids in enumerate(new):
                i, j = chunk[row // n], row % n
                end = next((k for k, tok in enumerate(ids) if tok in self.eos), None)
                used = len(ids) if end is None else end + 1  # the end-of-sequence token is generated too
                batch_tokens += used
                out[i * n + j] = Generation(
                    text=self.tokenizer.decode(ids if end is None else ids[:end], skip_special_tokens=True),
                    finish_reason="length" if end is None else "stop", prompt_tokens=int(prompt_tokens[row // n]),
                    completion_tokens=used, prompt_index=i, sample_index=j)
            self.generated_tokens += batch_tokens
            progress.end_batch(len(new), batch_tokens)
        return [g for g in out if g is not None]


# --------------------------------------------------------------------------- vLLM


class VllmBackend:
    """One vLLM engine, built once; each call hands it the whole list of prompts."""

    name = "vllm"

    def __init__(self, model: str = DEFAULT_MODEL, *, adapter: str | None = None, batch_size: int | None = None,
                 gpu_memory_utilization: float | None = None, max_model_len: int | None = None, seed: int = 0,
                 **engine_options):
        try:
            import torch
            from vllm import LLM
        except ImportError as exc:
            raise GenerationError(
                "The vllm backend needs vLLM: on a GPU machine `pip install -r requirements-gpu.txt`; "
                "on a CPU use the separate .venv-vllm described in requirements-vllm-cpu.txt."
            ) from exc
        _check_adapter(adapter)
        self.model_name = model
        if gpu_memory_utilization is None:
            # on a CPU build this is the share of RAM reserved for the KV cache; 0.92 refuses to start
            gpu_memory_utilization = 0.9 if torch.cuda.is_available() else 0.2
        options: dict[str, Any] = {"gpu_memory_utilization": gpu_memory_utilization, "seed": seed, **engine_options}
        if max_model_len:
            options["max_model_len"] = max_model_len
        self._lora = None
        self._chat_template = None
        if adapter:
            from vllm.lora.request import LoRARequest

            from core.models import adapter_chat_template

            options.update(enable_lora=True, max_lora_rank=vllm_lora_rank(adapter))
            self._lora = LoRARequest("adapter", 1, str(adapter))
            self._chat_template = adapter_chat_template(adapter)  # as the transformers backend does
        self.llm = LLM(model=resolve_model(model), **options)
        self.batch_size = batch_size or DEFAULT_BATCH["vllm"]
        self.generated_tokens = 0

    def timed_generate(self, prompts: Sequence[Messages], *, n: int, tokens: int) -> float:
        """Seconds to generate exactly ``tokens`` tokens for every prompt (end-of-sequence ignored)."""
        from vllm import SamplingParams

        params = SamplingParams(n=n, temperature=0.0, max_tokens=tokens, min_tokens=tokens, ignore_eos=True)
        started = time.perf_counter()
        self.llm.chat([list(p) for p in prompts], params, use_tqdm=False, lora_request=self._lora,
                      chat_template=self._chat_template)
        return time.perf_counter() - started

    @staticmethod
    def _sampling(*, n: int, max_new_tokens: int, temperature: float, top_p: float, seed: int, regex: str | None):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        extra: dict[str, Any] = {"structured_outputs": StructuredOutputsParams(regex=regex)} if regex else {}
        return SamplingParams(n=n, temperature=temperature, top_p=top_p if temperature > 0 else 1.0,
                              max_tokens=max_new_tokens, seed=seed, **extra)

    def generate(self, prompts: Sequence[Messages], *, max_new_tokens: int = 512, temperature: float = 0.0,
                 top_p: float = 1.0, n: int = 1, seed: int = 0, regexes: Sequence[str | None] | None = None,
                 on_step: StepFn | None = None, cancelled: CancelledFn | None = None) -> list[Generation]:
        options = {"n": n, "max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed}
        if regexes and any(regexes):
            cache: dict[str | None, Any] = {}
            params: Any = [cache.setdefault(r, self._sampling(regex=r, **options)) for r in regexes]
        else:
            params = self._sampling(regex=None, **options)
        # enqueue, then drive the engine step by step (what LLM.chat does inside), so a cancel
        # is seen between two steps and the unfinished requests are aborted
        request_ids = self.llm.enqueue_chat([list(p) for p in prompts], params, use_tqdm=False, lora_request=self._lora,
                                            chat_template=self._chat_template)
        engine = self.llm.llm_engine
        finished: list[Any] = []
        done_sequences = tokens = 0
        started = reported = time.monotonic()
        steps = 0
        try:
            while engine.has_unfinished_requests():
                if cancelled is not None and cancelled():
                    raise JobCancelled(f"generation stopped after {steps} engine steps, {done_sequences} of "
                                       f"{len(prompts) * n} answers complete")
                steps += 1
                for output in engine.step():
                    if output.finished:
                        finished.append(output)
                        done_sequences += len(output.outputs)
                        tokens += sum(len(c.token_ids) for c in output.outputs)
                now = time.monotonic()
                if on_step is not None and now - reported >= REPORT_EVERY_S:
                    reported = now
                    left = len(prompts) * n - done_sequences
                    eta = (now - started) / done_sequences * left if done_sequences else None
                    on_step(StepStatus(sequences=len(prompts) * n, finished=done_sequences, tokens=tokens,
                                       elapsed_s=now - started, eta_s=eta))
        except BaseException:
            if engine.has_unfinished_requests():
                engine.abort_request(request_ids, internal=True)
            raise
        # requests are numbered in the order they were added (vLLM's own LLM.chat sorts the same way)
        finished.sort(key=lambda o: int(o.request_id))
        if len(finished) != len(prompts):
            raise GenerationError(f"vLLM answered {len(finished)} of {len(prompts)} prompts; the engine dropped some.")
        out = []
        for i, request in enumerate(finished):
            for j, c in enumerate(request.outputs):
                out.append(Generation(text=c.text, finish_reason="length" if c.finish_reason == "length" else "stop",
                                      prompt_tokens=len(request.prompt_token_ids or ()), completion_tokens=len(c.token_ids),
                                      prompt_index=i, sample_index=j))
        self.generated_tokens += tokens
        if on_step is not None:
            on_step(StepStatus(sequences=len(out), finished=len(out), tokens=tokens,
                               elapsed_s=time.monotonic() - started, eta_s=0.0))
        return out


# --------------------------------------------------------------------------- opening


def open_backend(backend: str = "transformers", model: str = DEFAULT_MODEL, **options):
    """A new backend: ``backend`` is "transformers" or "vllm"; ``options`` go to its
    constructor (adapter, batch_size, device, dtype, threads; for vLLM engine options)."""
    if backend == "transformers":
        return TransformersBackend(model, **options)
    if backend == "vllm":
        return VllmBackend(model, **options)
    raise GenerationError(f"Unknown generation backend '{backend}'; choose one of {', '.join(BACKENDS)}.")


# A process holds one model at a time: vLLM takes minutes to start an engine and keeps its
# memory, and a job or command uses one model throughout.
_open: dict[tuple, Any] = {}


def cached_backend(backend: str = "transformers", model: str = DEFAULT_MODEL, **options):
    """:func:`open_backend`, opened once per process for the same arguments; opening another
    model lets the previous one go."""
    key = (backend, model, tuple(sorted((k, repr(v)) for k, v in options.items())))
    if key not in _open:
        _open.clear()
        _open[key] = open_backend(backend, model, **options)
    return _open[key]


def generate(prompts: Sequence[Messages], *, backend: str = "transformers", model: str = DEFAULT_MODEL,
             adapter: str | None = None, batch_size: int | None = None, backend_options: dict[str, Any] | None = None,
             **sampling) -> list[Generation]:
    """Answer each chat of ``prompts`` with the (cached) backend: ``sampling`` is
    max_new_tokens, temperature, top_p, n, seed, regexes, on_step, cancelled."""
    engine = cached_backend(backend, model, adapter=adapter, batch_size=batch_size, **(backend_options or {}))
    return engine.generate(prompts, **sampling)


# --------------------------------------------------------------------------- progress of a run


class RunClock:
    """Progress and time left of a run made of several ``generate`` calls (a judge run's
    batches, an evaluation's batches): the current call's own estimate plus the calls still
    to come at the mean time a call has taken (or the current call's projected time, until
    one has ended)."""

    def __init__(self, calls: int):
        self.calls = calls
        self.call = 0
        self.call_started = time.monotonic()
        self.durations: list[float] = []

    def start_call(self) -> None:
        self.call_started = time.monotonic()

    def end_call(self) -> None:
        self.durations.append(time.monotonic() - self.call_started)
        self.call += 1

    def eta(self, status: StepStatus) -> float | None:
        if status.eta_s is None:
            return None
        per_call = (sum(self.durations) / len(self.durations) if self.durations
                    else time.monotonic() - self.call_started + status.eta_s)
        return status.eta_s + per_call * max(0, self.calls - self.call - 1)

    def text(self, status: StepStatus, unit: str = "answers") -> str:
        """'batch 2 of 5: 1,204 tokens generated (31/s), 3 of 8 answers complete'."""
        rate = status.tokens_per_s
        return (f"batch {self.call + 1} of {self.calls}: {status.tokens:,} tokens generated"
                + (f" ({rate:,.0f}/s)" if rate else "") + f", {status.finished} of {status.sequences} {unit} complete")


def describe_eta(seconds: float | None) -> str:
    return "" if seconds is None else f"about {duration_text(seconds)} left"


# --------------------------------------------------------------------------- speed on this machine

SPEED_FILE = "generation_speed.json"
_FILLER = "Each step of the argument follows from the one before it, and the answer is checked at the end. "


def prompt_bucket(chars: int) -> int:
    """Prompt lengths measured once per bucket: 500, 1,000, 2,000, 4,000 ... characters."""
    bucket = 500
    while bucket < chars:
        bucket *= 2
    return bucket


def speed_key(backend: str, model: str, adapter: str | None, batch_size: int, n: int, prompt_chars: int) -> str:
    return f"{backend}|{model}|{adapter or ''}|batch {batch_size}|n {n}|prompt {prompt_bucket(prompt_chars)}"


def _speed_path() -> Path:
    from core import store

    return store.data_dir() / SPEED_FILE


def known_speed(backend: str, model: str, adapter: str | None, batch_size: int, n: int, prompt_chars: int) -> dict | None:
    """The last speed measured on this machine for these settings (see :func:`measure_speed`), or None."""
    path = _speed_path()
    try:
        return json.loads(path.read_text()).get(speed_key(backend, model, adapter, batch_size, n, prompt_chars))
    except (OSError, json.JSONDecodeError):
        return None


def _remember_speed(key: str, speed: dict) -> None:
    path = _speed_path()
    try:
        known = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        known = {}
    known[key] = speed
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(known, indent=1))
    tmp.replace(path)


def measure_speed(backend: str = "transformers", model: str = DEFAULT_MODEL, *, adapter: str | None = None,
                  batch_size: int = 8, n: int = 1, prompt_chars: int = 2000, steps: int = 16) -> dict:
    """Time one batch on this machine: ``batch_size`` prompts of about ``prompt_chars``
    characters (rounded up to :func:`prompt_bucket`), ``n`` answers each. Returns and
    remembers (data/generation_speed.json) the model's load time, the prompt pass (``prefill_s``,
    one token) and the time of one more decoding step for the whole batch (``step_s``), so a
    batch that generates up to T tokens takes about ``prefill_s + T * step_s``."""
    started = time.perf_counter()
    engine = open_backend(backend, model, adapter=adapter, batch_size=batch_size)
    loaded = time.perf_counter()
    chars = prompt_bucket(prompt_chars)
    text = (_FILLER * (chars // len(_FILLER) + 1))[:chars]
    prompts = [[{"role": "user", "content": text}] for _ in range(batch_size)]
    engine.timed_generate(prompts[:1], n=1, tokens=1)  # warm-up: first-call costs are not the rate
    # the faster of two tries each: on a shared machine a try is only ever slowed down, and
    # one slowed prompt pass would otherwise leave no time at all for the token steps
    prefill = min(engine.timed_generate(prompts, n=n, tokens=1) for _ in range(2))
    full = min(engine.timed_generate(prompts, n=n, tokens=steps) for _ in range(2))
    speed = {
        "backend": backend, "model": model, "adapter": adapter, "batch_size": batch_size, "n": n, "prompt_chars": chars,
        "load_s": round(loaded - started, 2), "prefill_s": round(prefill, 3),
        "step_s": round(max(0.0, full - prefill) / max(1, steps - 1), 4), "measured_at": time.time(),
    }
    _remember_speed(speed_key(backend, model, adapter, batch_size, n, chars), speed)
    return speed


def measure_speed_in_subprocess(timeout_s: float = 600, **kwargs) -> dict:
    """:func:`measure_speed` in a child process (the app's server never loads a model itself);
    UserError with the child's last words when it fails or takes longer than ``timeout_s``."""
    import subprocess
    import sys

    from core import store

    try:
        proc = subprocess.run([sys.executable, "-m", "core.generation", "--measure", json.dumps(kwargs)],
                              capture_output=True, text=True, timeout=timeout_s, cwd=store.ROOT)
    except subprocess.TimeoutExpired as exc:
        raise GenerationError(f"Measuring the speed took longer than {timeout_s:.0f} s; the machine is busy, try again later.") from exc
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise GenerationError(f"Could not measure the speed of '{kwargs.get('model')}': {tail}")
    return json.loads(lines[-1])


def batch_seconds(speed: dict, max_new_tokens: int) -> float:
    """At most how long one batch takes when every answer runs to ``max_new_tokens``."""
    return speed["prefill_s"] + max_new_tokens * speed["step_s"]


@dataclass
class RunCost:
    """What a generation run will cost, said before it starts: how many answers, in how many
    batches, of at most how many tokens; with a speed measured on this machine
    (core.generation.measure_speed), at most how long."""

    what: str  # "3 CoTs x 2 metrics = 6 judge calls"
    answers: int
    batches: int
    batch_size: int
    max_new_tokens: int
    prompt_chars: int  # mean, after clipping
    notes: list[str] = field(default_factory=list)  # e.g. the clip size and how many responses it cuts
    speed: dict | None = None
    measure: dict = field(default_factory=dict)  # measure_speed's arguments for this run's batches

    @property
    def seconds_at_most(self) -> float | None:
        """Every answer running to max_new_tokens; answers that end early take less."""
        if self.speed is None:
            return None
        return self.batches * batch_seconds(self.speed, self.max_new_tokens)

    def text(self) -> str:
        parts = [f"{self.what}, in {self.batches:,} batch{'es' if self.batches != 1 else ''} of {self.batch_size:,}, "
                 f"at most {self.max_new_tokens:,} new tokens each; prompts about {self.prompt_chars:,} characters", *self.notes]
        if self.speed is None:
            parts.append("speed on this machine not measured yet (measure it to see the time)")
        else:
            age = time.time() - self.speed.get("measured_at", time.time())
            parts.append(f"at most about {duration_text(self.seconds_at_most)} at the speed measured here "
                         f"{duration_text(age)} ago ({self.speed['prefill_s']:.2f} s a prompt pass, "
                         f"{self.speed['step_s'] * 1000:,.0f} ms a token step for a batch); less when answers end early")
        return "; ".join(parts) + "."


LONG_RUN_S = 3600.0  # a job estimated to run longer needs a second look before it starts
LARGE_UNMEASURED = 500  # answers; more than this with no measured speed needs one too


def check_cost(cost: RunCost, *, confirmed: bool = False) -> None:
    """Refuse (UserError, with the cost in words) to start a run that may be long unless the
    user ``confirmed`` it: one estimated to run over an hour, or one of many answers whose
    speed on this machine was never measured."""
    if confirmed:
        return
    seconds = cost.seconds_at_most
    if seconds is not None and seconds > LONG_RUN_S:
        raise GenerationError(f"This job could run about {duration_text(seconds)}: {cost.text()} Narrow it, or tick "
                              "'Start even if it is long'.")
    if seconds is None and cost.answers > LARGE_UNMEASURED:
        raise GenerationError(f"{cost.answers:,} answers, and the speed on this machine is not measured yet: measure it "
                              "first (one quick batch), narrow the job, or tick 'Start even if it is long'.")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m core.generation", description="Measure generation speed on this machine.")
    parser.add_argument("--measure", required=True, help="JSON keyword arguments of core.generation.measure_speed")
    args = parser.parse_args(argv)
    print(json.dumps(measure_speed(**json.loads(args.measure))), flush=True)
    return 0


if __name__ == "__main__":  # vLLM's engine spawns processes
    import sys

    sys.exit(main())
