"""Re-score CoTs with an LLM judge: Reasoning Verbosity, Cognitive Difficulty, logical correctness.

The judge follows the published OmniThought/EasyDistill recipe: one user message per metric
holding the problem and the answer with its reasoning, an integer answer inside
``<score></score>`` (0-9 for RV and CD, 1/0 for logic), greedy decoding, at most 512 new
tokens. The prompt wording is ThoughtScope's own and lives in data files
(``core/judge_templates/*.yaml``); a run records each template's sha256. The prompts show the
answer format with a neutral placeholder (``<score>N</score>``), not an example value a small
judge could copy, and leave the justification optional.

A judge answer is read by :func:`parse_score`: the ``<score>`` tag, else only an unambiguous
final score (a last line holding only the integer, or "score: N"); a number in prose is never
taken ("12 steps and 3 checks; I give it a 6" is missing, not 3). For logic, "correct" and
"incorrect" (and true/false) are read as EasyDistill reads them. The parser's version is in
each source's parameters. A response over ``max_chars`` characters (12,000 by default) is
clipped to its head and tail before judging (:func:`clip_response`); the source's parameters
say so in words, and each run reports how many of its CoTs were clipped.

Every run writes a new score source (kind ``judge``) and commits its scores batch by batch in
short transactions, so the app keeps reading while it runs, and a run restarted under the same
source name skips every (CoT, metric) already scored: a killed job neither redoes nor
duplicates work. A judge answer that cannot be parsed is stored with a NULL value, the full
raw output and the reason, never a guessed value. ``progress("judge", done, total)`` counts
committed pairs only; the tokens a batch has generated so far and the time left go to
:func:`core.progress.report_activity`, and a cancel stops the batch's generation within a
decoding step (what was committed stays).

The models are asked through :mod:`core.generation` (transformers or vLLM); a run's settings
are one :class:`JudgeOptions`, which the CLI's ``score`` flags and the Jobs form are made
from. :mod:`core.judge_ray` runs the same prompts and parser across a Ray cluster.

Example::

    from core.judge import JudgeOptions, score_cots
    from core.queries import CotFilter
    run = score_cots(None, CotFilter(datasets=("demo (generated)",)), JudgeOptions(metrics=("rv", "cd"), batch_size=8))
    print(run.source, run.scored, run.errors)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from core import store
from core.errors import UserError
from core.generation import BACKENDS, DEFAULT_BATCH, Messages, RunClock, cached_backend
from core.models import DEFAULT_MODEL
from core.options import option
from core.progress import CancelledFn, JobCancelled, ProgressFn, report_activity
from core.queries import CotFilter, matching_sql

BUILTIN_TEMPLATES = Path(__file__).resolve().parent / "judge_templates"
DEFAULT_METRICS = ("rv", "cd", "logic")
DEFAULT_MAX_NEW_TOKENS = 512
DEFAULT_MAX_CHARS = 12_000
FUSED_METRIC = "rv_fused"
NORMALISATIONS = ("quantile", "minmax")


class JudgeError(UserError):
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
# The parser's rules change what a judge answer means: a run records this version in its score
# source's parameters (version 1, before: the first standalone integer in range was taken).
PARSER_VERSION = 2
_TAG = re.compile(r"<score>\s*(.*?)\s*</score>", re.S | re.I)
_SIGNED_INT = re.compile(r"[+-]?\d+")
# "score: 6", "Score = 6", "final score is 6", "score of 6" (not "6/10", "6.5" or "6-7")
_LABELLED = re.compile(r"\bscore\b\s*(?:is\b|of\b)?\s*[:=]?\s*[*_`]*\s*([+-]?\d+)(?![\w\-/]|[.,]\d)", re.I)
_DECORATION = " \t*_`#>.!"
# verdict words for a 0-1 metric: EasyDistill reads true/false and correct/incorrect; a bare
# yes/no counts only where it is the whole answer (or opens its first or last line), since prose
# is full of "no errors" and "yes, but".
_VERDICT = {"true": 1, "correct": 1, "yes": 1, "false": 0, "incorrect": 0, "no": 0}
_PROSE_VERDICT = re.compile(r"\b(not\s+)?(true|false|correct|incorrect)\b", re.I)
_LEADING_VERDICT = re.compile(r"^(?:[\w ]{1,30}:\s*)?(not\s+)?(true|false|correct|incorrect|yes|no)\b(?:\s*$|\s*[,.:;!\-\u2014(])", re.I)


def _lines(text: str) -> list[str]:
    return [line.strip(_DECORATION) for line in text.splitlines() if line.strip(_DECORATION)]


def _verdict(words: tuple[str | None, str]) -> int:
    negated, word = words
    value = _VERDICT[word.lower()]
    return 1 - value if negated else value


def _untagged_integer(text: str, low: int, high: int) -> tuple[int | None, str | None, list[str]]:
    """An integer given as the final score without a tag: the last line holding only the integer,
    or "score: N" (several of them must agree). (value, None, []) when found, else (None, reason
    or None, the numbers seen)."""
    found = [m.group(1) for m in _LABELLED.finditer(text)]
    lines = _lines(text)
    if lines and _SIGNED_INT.fullmatch(lines[-1]):
        found.append(lines[-1])
    values = list(dict.fromkeys(int(v) for v in found))
    if len(values) > 1:
        return None, f"no <score> tag and the final scores disagree ({', '.join(map(str, values))})", []
    if values:
        value = values[0]
        if low <= value <= high:
            return value, None, []
        return None, f"no <score> tag; the final score {value} is outside the range {low}-{high}", []
    return None, None, _BARE_INT.findall(text)


def _untagged_verdict(text: str) -> tuple[int | None, str | None]:
    """A 0-1 verdict in words: a first or last line that opens with true/false/correct/incorrect/
    yes/no (optionally after a short label such as "Verdict:"), else the words true/false/correct/
    incorrect ("not correct" is incorrect) anywhere, if they all agree."""
    lines = _lines(text)
    candidates = []
    for line in dict.fromkeys((lines[-1], lines[0])) if lines else ():
        match = _LEADING_VERDICT.match(line)
        if match:
            candidates.append(_verdict(match.groups()))
    if not candidates:
        candidates = [_verdict(m.groups()) for m in _PROSE_VERDICT.finditer(text)]
    if not candidates:
        return None, None
    if len(set(candidates)) > 1:
        return None, "no <score> tag and the verdict words disagree (both correct/true and incorrect/false)"
    return candidates[0], None


# A standalone integer: not part of a word, a decimal, a range ("0-9"), a fraction ("7/10")
# or a signed number (only listed in a reason: a bare number in prose is never taken as the score).
_BARE_INT = re.compile(r"(?<![\w.\-+/])\d+(?![\w\-/]|[.,]\d)")


def parse_score(text: str | None, metric: str = "rv", *, low: int | None = None, high: int | None = None) -> tuple[int | None, str | None]:
    """(value, None) for a usable judge answer, else (None, reason). Never guesses.

    Order: the first ``<score>N</score>`` holding an integer (outside the range -> None and the
    reason; for a 0-1 metric the tag may hold a verdict word); else an unambiguous final score
    without a tag: a last line holding only the integer, or "score: N" (all such must agree);
    else, for a 0-1 metric, a verdict in words (see :func:`_untagged_verdict`). A number in
    prose is not a score: "12 steps and 3 checks; I give it a 6" is missing, with the reason.

    >>> parse_score("Clear and short. <score>3</score>", "rv")
    (3, None)
    >>> parse_score("<score>12</score>", "cd")
    (None, '<score>12</score> is outside the range 0-9')
    >>> parse_score("Too long for the problem.\\nScore: 7", "rv")
    (7, None)
    >>> parse_score("12 steps and 3 checks; I give it a 6", "rv")[0] is None
    True
    >>> parse_score("The reasoning is incorrect: step 2 divides by zero.", "logic")
    (0, None)
    """
    if low is None or high is None:
        low, high = DEFAULT_RANGES.get(metric, (0, 9))
    if text is None or not text.strip():
        return None, "empty judge output"
    binary = (low, high) == (0, 1)
    tags = _TAG.findall(text)
    for content in tags:
        if _SIGNED_INT.fullmatch(content):
            value = int(content)
            if low <= value <= high:
                return value, None
            return None, f"<score>{content}</score> is outside the range {low}-{high}"
        if binary and content.strip(_DECORATION).lower() in _VERDICT:
            return _VERDICT[content.strip(_DECORATION).lower()], None
    value, reason, numbers = _untagged_integer(text, low, high)
    if value is not None or reason is not None:
        return value, reason
    if binary:
        value, reason = _untagged_verdict(text)
        if value is not None or reason is not None:
            return value, reason
    tag_note = f"the <score> tag holds no integer ({', '.join(repr(t[:20]) for t in tags[:3])}); " if tags else ""
    wanted = "a last line holding only the score, or 'score: N'"
    if binary:
        wanted += ", or a verdict word (true/false, correct/incorrect)"
    reason = f"{tag_note}no <score> tag with an integer and no unambiguous final score ({wanted})"
    if numbers:
        reason += f"; numbers in the answer, not taken as the score: {', '.join(numbers[:6])}"
    return None, reason


# ---------------------------------------------------------------------------- prompts


def clip_response(text: str, max_chars: int | None) -> tuple[str, bool]:
    """``text`` cut to ``max_chars`` keeping its head and tail (the answer sits at the end),
    with a note of how much was left out; and whether it was cut. See :func:`clip_description`."""
    if not max_chars or len(text) <= max_chars:
        return text, False
    head = max_chars // 2
    tail = max_chars - head
    omitted = len(text) - head - tail
    return f"{text[:head]}\n\n[... {omitted} characters omitted ...]\n\n{text[-tail:]}", True


def clip_description(max_chars: int | None) -> str:
    """In words, what :func:`clip_response` does to a response at this size (the Jobs form, the
    score source's parameters and the CLI's help say the same)."""
    if not max_chars:
        return "responses are not clipped"
    head = max_chars // 2
    return (f"responses over {max_chars:,} characters are clipped: the first {head:,} and the last "
            f"{max_chars - head:,} are kept, with '[... N characters omitted ...]' between them")


def build_prompt(template: JudgeTemplate, question: str, response: str, max_chars: int | None = DEFAULT_MAX_CHARS) -> Messages:
    return template.messages(question, clip_response(response, max_chars)[0])



# ---------------------------------------------------------------------------- options


@dataclass
class JudgeOptions:
    """Everything a judge run is asked to do (the CLI's ``score`` flags and the Jobs form are
    made from these fields). Checked when made: a bad value raises :class:`JudgeError`."""

    OPTION_GROUP: ClassVar[str] = "the judge"

    metrics: tuple[str, ...] = option(DEFAULT_METRICS, help="judge templates to run (rv, cd, logic, or your own)")
    model: str = option(DEFAULT_MODEL, label="Judge model",
                        help="judge model: a local folder, a hub id (network the first time) or the offline default")
    adapter: str | None = option(None, help="a LoRA adapter folder on top of the judge model")
    backend: str = option("transformers", choices=BACKENDS,
                          help="transformers runs anywhere; vllm needs a GPU (or the separate CPU build)")
    template_dir: str | None = option(None, help="a folder of judge templates (*.yaml) that adds to or overrides the built-in ones")
    batch_size: int | None = option(None, help="prompts per generate call (default 8 on transformers, 256 on vllm)")
    max_new_tokens: int = option(DEFAULT_MAX_NEW_TOKENS, help="the judge's answer is cut at this many tokens")
    max_chars: int | None = option(DEFAULT_MAX_CHARS, label="Clip responses at (characters)",
                                   help="a response longer than this is clipped before judging: its first and last "
                                        "halves are kept, with a note of how many characters were left out between "
                                        "them (empty: never clip)")
    temperature: float = option(0.0, help="0 decodes greedily (the published recipe)")
    guided: bool = option(False, help="vllm only: constrain the answer to <score>N</score>")
    fusion_alpha: float | None = option(None, label="Length-fusion alpha",
                                        help="also write rv_fused = alpha*judge + (1-alpha)*9*length quantile "
                                             "(our reconstruction of the paper's blend)")
    fusion_normalisation: str = option("quantile", choices=NORMALISATIONS, help="how rv_fused normalises the length")
    source_name: str | None = option(None, help="score source name; run again with the same name to resume")

    def __post_init__(self):
        if isinstance(self.metrics, str):
            self.metrics = tuple(m.strip() for m in self.metrics.split(",") if m.strip())
        self.metrics = tuple(dict.fromkeys(self.metrics))
        if self.backend not in BACKENDS:
            raise JudgeError(f"Unknown judge backend '{self.backend}'; choose one of {', '.join(BACKENDS)}.")
        if self.guided and self.backend != "vllm":
            raise JudgeError("Constrained (guided) decoding needs the vllm backend.")
        if not self.metrics:
            raise JudgeError("Choose at least one metric to score.")
        if self.fusion_alpha is not None and "rv" not in self.metrics:
            raise JudgeError("Length fusion blends the judge's RV with length: include 'rv' in the metrics.")
        _ = self.fusion  # LengthFusion checks the alpha and the normalisation
        for name in ("max_new_tokens", "batch_size", "max_chars"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise JudgeError(f"{name.replace('_', ' ')} must be at least 1, got {value}.")
        if self.temperature < 0:
            raise JudgeError(f"The temperature cannot be negative, got {self.temperature}.")
        self.templates()  # every metric has a template

    @property
    def fusion(self) -> LengthFusion | None:
        if self.fusion_alpha is None:
            return None
        return LengthFusion(alpha=self.fusion_alpha, normalisation=self.fusion_normalisation)

    def templates(self) -> list[JudgeTemplate]:
        """The run's templates, in metric order."""
        return _select_templates(self.metrics, self.template_dir)

    def batch(self) -> int:
        return self.batch_size or DEFAULT_BATCH[self.backend]


@dataclass
class ScoreTarget:
    """Which CoTs a score run judges: ``cot_ids``, else what ``recipe`` keeps, else what
    ``filter`` (CotFilter fields, as the Jobs page records the sidebar's) narrowed by
    ``dataset``/``models``/``benchmark`` matches, else every CoT; the first ``max_cots`` by id."""

    OPTION_GROUP: ClassVar[str] = "which CoTs (default: all)"

    dataset: tuple[str, ...] = option((), help="dataset name(s), comma-separated")
    models: tuple[str, ...] = option((), help="generating model(s)/teacher(s), comma-separated")
    benchmark: tuple[str, ...] = option((), help="benchmark(s), comma-separated")
    recipe: str | None = option(None, help="a saved recipe's name: the CoTs it keeps")
    cot_ids: tuple[int, ...] = option((), help="explicit CoT ids, comma-separated")
    max_cots: int | None = option(None, label="At most this many CoTs (the first by id)", help="only the first N by id")
    filter: dict | None = option(None, cli=False, help="CotFilter fields (the Jobs page's current filter)")

    def __post_init__(self):
        if self.max_cots is not None and self.max_cots < 1:
            raise JudgeError(f"max_cots must be at least 1, got {self.max_cots}.")

    def cot_filter(self) -> CotFilter:
        from core import recipes

        base = recipes.filter_from_dict(self.filter or {})
        narrowed = {k: v for k, v in (("datasets", self.dataset), ("models", self.models), ("benchmarks", self.benchmark)) if v}
        return dataclasses.replace(base, **narrowed) if narrowed else base

    def resolve(self, db=None) -> list[int]:
        """The CoT ids, ascending; UserError when nothing matches."""
        if self.cot_ids:
            ids = sorted(set(self.cot_ids))
        elif self.recipe:
            from core import recipes

            ids = recipes.apply(recipes.load(self.recipe), db=db).sort().to_list()
        else:
            sql, params = matching_sql(self.cot_filter(), db=db)
            ids = [r[0] for r in store.read_rows(f"SELECT DISTINCT cot_id FROM ({sql}) ORDER BY cot_id", params, db=db)]
        if self.max_cots:
            ids = ids[: self.max_cots]
        if not ids:
            raise JudgeError("No CoT matches what was chosen to score; widen the filter or pick another recipe.")
        return ids



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
    truncated_prompts: int = 0  # prompts (CoT x metric) this run judged on a clipped response
    clipped_cots: int = 0  # CoTs of the run whose response is longer than max_chars (all of its CoTs, resumed or not)
    generated_tokens: int = 0
    seconds: float = 0.0
    cancelled: bool = False
    stopped: str | None = None  # where a cancel stopped it (a generation step, or before a batch)
    fused: int | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LengthFusion:
    """RV blended with length: ``alpha * judge + (1 - alpha) * 9 * norm(n_tokens)``, metric
    ``rv_fused``: *this project's reconstruction*. The OmniThought paper blends the judge's RV
    with a normalised token length at alpha = 0.5 (as a secondary source reports) but does not
    publish the normalisation; both normalisations here are ours, and EasyDistill's own code uses
    the judge's score alone.

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


def run_params(templates: Sequence[JudgeTemplate], options: JudgeOptions) -> dict[str, Any]:
    """Everything that decides a run's outputs; a resumed run must match it exactly."""
    fusion = options.fusion
    return {
        "backend": options.backend,
        "model": options.model,
        "adapter": options.adapter,
        "metrics": [t.metric for t in templates],
        "templates": {t.metric: {"sha256": t.sha256, "file": t.path.name, "range": [t.low, t.high]} for t in templates},
        "temperature": options.temperature,
        "max_new_tokens": options.max_new_tokens,
        "max_chars": options.max_chars,
        "truncation": clip_description(options.max_chars),
        "parser": PARSER_VERSION,
        "response_field": "cots.full_text",
        "guided": options.guided,
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


def target_ids(db, cots: Sequence[int] | CotFilter | None) -> list[int]:
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


def count_clipped(db, ids: Sequence[int], max_chars: int | None) -> int:
    """How many of these CoTs have a response longer than ``max_chars`` (the judge clips them)."""
    if not ids or not max_chars:
        return 0
    with store.connect(db, read_only=True) as con:
        con.register("clip_ids", pa.table({"cot_id": pa.array(list(ids), pa.int64())}))
        return con.execute("SELECT count(*) FROM clip_ids i JOIN cots c ON c.cot_id = i.cot_id "
                           "WHERE length(c.full_text) > ?", [max_chars]).fetchone()[0]


def count_done(db, source_id: int, ids: list[int], metrics: list[str]) -> int:
    if not ids:
        return 0
    with store.connect(db, read_only=True) as con:
        con.register("target_ids", pa.table({"cot_id": pa.array(ids, pa.int64())}))
        n = con.execute(
            "SELECT count(*) FROM (SELECT DISTINCT s.cot_id, s.metric FROM scores s SEMI JOIN target_ids t "
            "ON t.cot_id = s.cot_id WHERE s.source_id = ? AND list_contains(?, s.metric))", [source_id, metrics]).fetchall()[0][0]
    return n


def pending_pairs(db, source_id: int, ids: list[int], metrics: list[str], window: int = 2048) -> Iterator[tuple[int, str]]:
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


def read_texts(db, cot_ids: Iterable[int]) -> dict[int, tuple[str, str]]:
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


def batches(items: Iterator[tuple[int, str]], size: int) -> Iterator[list[tuple[int, str]]]:
    batch: list[tuple[int, str]] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def judge_batch(backend, items: Sequence[tuple[int, str]], texts: dict[int, tuple[str, str]],
                templates: dict[str, JudgeTemplate], *, max_new_tokens: int, temperature: float, max_chars: int | None,
                guided: bool, on_step=None, cancelled: CancelledFn | None = None) -> tuple[list[tuple], int]:
    """Generate and parse one batch: rows (cot_id, metric, value, raw, error), and how many
    responses were clipped to ``max_chars``. Shared by the local and the Ray runs. A cancel
    during the generation raises :class:`core.progress.JobCancelled`: nothing of the batch
    is returned (or committed)."""
    prompts, clipped = [], 0
    for cot_id, metric in items:
        question, response = texts[cot_id]
        response, cut = clip_response(response, max_chars)
        clipped += cut
        prompts.append(templates[metric].messages(question, response))
    regexes = [templates[m].guide_regex for _, m in items] if guided else None
    answers = backend.generate(prompts, max_new_tokens=max_new_tokens, temperature=temperature, regexes=regexes,
                               on_step=on_step, cancelled=cancelled)
    rows = []
    for (cot_id, metric), answer in zip(items, answers):
        template = templates[metric]
        value, error = parse_score(answer.text, metric, low=template.low, high=template.high)
        rows.append((cot_id, metric, None if value is None else float(value), answer.text, error))
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


def prepare_run(db, cots: Sequence[int] | CotFilter | None, options: JudgeOptions) -> tuple[list[JudgeTemplate], dict[str, Any], str, list[int]]:
    """(templates, params, source name, CoT ids) of a run, or JudgeError; writes nothing."""
    templates = options.templates()
    params = run_params(templates, options)
    return templates, params, options.source_name or default_source_name(options.model), target_ids(db, cots)


def _options(options: JudgeOptions | None, fields: dict[str, Any]) -> tuple[JudgeOptions, Any]:
    """The run's options from ``options`` and keyword fields; a backend given as an object
    (anything with ``generate`` and ``name``) is returned beside them as the engine."""
    engine = None
    if "backend" in fields and not isinstance(fields["backend"], str):
        engine = fields["backend"]
        fields = dict(fields, backend=engine.name)
    options = dataclasses.replace(options, **fields) if options is not None else JudgeOptions(**fields)
    return options, engine


def score_cots(
    db,
    cots: Sequence[int] | CotFilter | None,
    options: JudgeOptions | None = None,
    *,
    progress: ProgressFn | None = None,
    cancelled: CancelledFn | None = None,
    backend_options: dict[str, Any] | None = None,
    **fields,
) -> ScoreRun:
    """Judge every CoT of ``cots`` (ids, a filter, or None for all) as ``options`` say (or
    :class:`JudgeOptions` made from keyword ``fields``: ``score_cots(db, ids, metrics=["rv"])``).

    ``backend`` names a backend of :mod:`core.generation` (opened once per process), or is an
    object with its ``generate`` method and a ``name``; ``backend_options`` go to the backend's
    constructor. Scores are committed after every batch of ``batch_size`` prompts, and
    ``progress("judge", done, total)`` follows the committed pairs. ``cancelled()`` is looked
    at before each batch and at every decoding step: True stops the run cleanly (what was
    committed stays, and a rerun under the same ``source_name`` goes on from there).
    """
    options, engine = _options(options, fields)
    started = time.perf_counter()
    templates, params, name, ids = prepare_run(db, cots, options)
    source_id = open_source(db, name, model=options.model, template_hash=templates_hash(templates), params=params)
    metric_names = [t.metric for t in templates]
    by_metric = {t.metric: t for t in templates}
    total = len(ids) * len(metric_names)
    run = ScoreRun(source=name, source_id=source_id, total=total,
                   already_done=count_done(db, source_id, ids, metric_names), params=params,
                   clipped_cots=count_clipped(db, ids, options.max_chars))
    if progress:
        progress("judge", run.already_done, total)
    size = options.batch()
    clock = RunClock(calls=math.ceil((total - run.already_done) / size))

    def on_step(status) -> None:
        report_activity(progress, clock.text(status), eta_s=clock.eta(status))

    tokens_before = None
    for items in batches(pending_pairs(db, source_id, ids, metric_names), size):
        if cancelled is not None and cancelled():
            run.cancelled, run.stopped = True, "before the next batch"
            break
        if engine is None:  # opened only when there is work: a finished run loads no model
            engine = cached_backend(options.backend, options.model, **dict(backend_options or {}, adapter=options.adapter,
                                                                             batch_size=options.batch_size))
        if tokens_before is None:
            tokens_before = getattr(engine, "generated_tokens", 0)
        clock.start_call()
        try:
            rows, clipped = judge_batch(engine, items, read_texts(db, (c for c, _ in items)), by_metric,
                                        max_new_tokens=options.max_new_tokens, temperature=options.temperature,
                                        max_chars=options.max_chars, guided=options.guided,
                                        on_step=on_step if progress else None, cancelled=cancelled)
        except JobCancelled as exc:
            run.cancelled, run.stopped = True, str(exc) or "during a batch"
            break
        clock.end_call()
        commit_scores(db, source_id, rows)
        run.scored += len(rows)
        run.with_value += sum(r[2] is not None for r in rows)
        run.errors += sum(r[2] is None for r in rows)
        run.truncated_prompts += clipped
        if progress:
            progress("judge", run.already_done + run.scored, total)  # after the commit: committed work only
    if tokens_before is not None:
        run.generated_tokens = getattr(engine, "generated_tokens", 0) - tokens_before
    if options.fusion is not None and not run.cancelled:
        run.fused = fuse_length(db, source_id, options.fusion)
    run.seconds = time.perf_counter() - started
    return run


# ---------------------------------------------------------------------------- cost


def estimate_cost(db, target: ScoreTarget, options: JudgeOptions):
    """What scoring ``target`` with ``options`` will cost: CoTs x metrics, how many responses
    the clip size cuts, and, when this machine's speed for the backend, model and batch size
    is known, at most how long. Reads the store; loads no model."""
    from core.generation import RunCost, known_speed

    ids = target.resolve(db)
    templates = options.templates()
    clip = options.max_chars
    with store.connect(db, read_only=True) as con:
        con.register("cost_ids", pa.table({"cot_id": pa.array(ids, pa.int64())}))
        longer, response_chars, question_chars = con.execute(
            "SELECT count(*) FILTER (WHERE length(c.full_text) > coalesce(?, 9223372036854775807)), "
            "avg(least(length(c.full_text), coalesce(?, 9223372036854775807))), avg(length(p.question)) "
            "FROM cost_ids i JOIN cots c ON c.cot_id = i.cot_id JOIN problems p ON p.problem_id = c.problem_id",
            [clip, clip]).fetchone()
    template_chars = sum(len(t.prompt) for t in templates) / len(templates)
    prompt_chars = int(template_chars + (question_chars or 0) + (response_chars or 0))
    pairs = len(ids) * len(templates)
    size = options.batch()
    notes = [f"responses clipped to {clip:,} characters ({longer:,} of {len(ids):,} are longer)" if clip
             else "responses not clipped"]
    return RunCost(what=f"{len(ids):,} CoTs x {len(templates)} metric{'s' if len(templates) != 1 else ''} = {pairs:,} judge calls",
                   answers=pairs, batches=math.ceil(pairs / size), batch_size=size, max_new_tokens=options.max_new_tokens,
                   prompt_chars=prompt_chars, notes=notes,
                   speed=known_speed(options.backend, options.model, options.adapter, size, 1, prompt_chars),
                   measure={"backend": options.backend, "model": options.model, "adapter": options.adapter,
                            "batch_size": size, "n": 1, "prompt_chars": prompt_chars})
