"""The step judge: an LLM (or a process reward model) reads a CoT as numbered steps and says
which step is the first wrong one and which role each step plays. Its output is a step source
like the rule set's and a dataset's labels, so the Reader, Distributions, Agreement, the
sidebar's figure filters and Select rules show it with no more code.

    python -m core judge-steps --dataset "my data" --max-cots 20             # SmolLM2 on CPU, both tasks
    python -m core judge-steps --from-source processbench --tasks first_error --model Qwen/Qwen2.5-7B-Instruct --backend vllm
    python -m core judge-steps --backend prm --model /models/Qwen2.5-Math-PRM-7B --from-source processbench
    python -m core steps --json --source "<the judge's source>" --source processbench      # agreement

**Steps.** The steps judged are the CoT's step text (its thinking, else its whole response) cut
by the splitter (``--unit``, paragraph by default, as ProcessBench's solutions are), or the
steps of another step source (``--from-source``: the rule set's, Thought Anchors', a
ProcessBench file's), so two sources can be compared step for step.

**Tasks** (``--tasks``), each a prompt template in ``core/step_judge_templates/`` (a data file;
a run records each template's sha256, ``--template-dir`` overrides them):

* ``first_error`` (ProcessBench's protocol): the problem and the steps, each wrapped in
  ``<step_i>`` tags and numbered from 0; the answer is the number of the earliest wrong step, or
  -1 when there is none, read from the last ``\\boxed{...}`` of the output. Steps are shown from
  the first while they fit in ``max_chars`` characters (a first step longer than that is shown
  clipped, head and tail); the verdict covers the steps shown: steps before the first wrong one
  are correct, it is wrong, later steps are not labelled (as ProcessBench labels them), and
  with -1 every shown step is correct and any step not shown is not labelled.
* ``roles``: windows of at most ``steps_per_prompt`` steps (and ``max_chars`` characters), every
  step in one window; the answer is a line ``<number>: <role>`` per step, one of Thought
  Anchors' eight roles (core.steps.ROLES). A step without a line naming a role gets none.

Nothing is guessed: an answer that cannot be read is stored as missing with the reason, and
every raw output is kept.

**What is written** under the run's score source (kind ``judge``; model, template hash and
every setting that decides the outputs in its params):

* ``steps``: one row per step (offsets in the step text, token count, ``role`` from the roles
  task, ``wrong`` from the first-error task); ``step_scores``: per step ``prm_score`` (the PRM);
* ``scores``, per CoT: ``first_error_label`` (the step number or -1, ``raw`` the judge's whole
  output, ``error`` why there is no value), ``roles_given`` (steps given a role; ``raw`` every
  window's output), ``steps_judged`` (steps the verdict covers; ``raw`` a JSON note of the
  steps, prompts and finish reasons), and with the PRM ``prm_min``, ``prm_mean``, ``prm_last``;
* the per-CoT step figures (``n_steps``, ``share_<role>``, ``has_error``, ``first_error_step``,
  ``first_error_frac``, ``first_error_before_answer``, ...) under ``<name> (step figures)``,
  computed by core.step_stage.write_figures from the rows above.

**Resumable**: CoTs are judged in batches of ``batch_size``, and a batch's steps, scores and
figures are committed in one transaction; a CoT with ``steps_judged`` is done, so a run
restarted under the same source name judges only what is missing, and a killed run loses only
the batch in flight. A cancel stops a generation at its next decoding step (core.generation).

**Backends**: ``transformers`` (CPU or GPU) and ``vllm`` through core.generation, at
temperature 0 by default; ``vllm`` with ``guided`` constrains each answer to the task's format
(a boxed step number, or one role line per step). ``prm`` (transformers) and ``prm-vllm``:
a process reward model (core.prm, e.g. Qwen2.5-Math-PRM-7B) scores every step in one forward
pass: a step whose positive-class probability is below ``threshold`` is wrong. core.step_judge_ray runs the same
batches on a Ray cluster.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from core import step_stage, store
from core import steps as steps_mod
from core.errors import UserError
from core.generation import BACKENDS, DEFAULT_BATCH, Generation, Messages, RunClock, cached_backend
from core.judge import ScoreTarget, clip_response, open_source, target_ids, templates_hash
from core.models import DEFAULT_MODEL
from core.options import option
from core.progress import CancelledFn, JobCancelled, ProgressFn, report_activity
from core.queries import CotFilter
from core.steps import ROLES, STEP_TEXT_SQL

BUILTIN_TEMPLATES = Path(__file__).resolve().parent / "step_judge_templates"
TASKS = ("first_error", "roles")
PRM_BACKENDS = ("prm", "prm-vllm")  # core.prm
JUDGE_BACKENDS = (*BACKENDS, *PRM_BACKENDS)
STAGE = "judge steps"  # the progress stage
DEFAULT_MAX_NEW_TOKENS = 512
DEFAULT_MAX_CHARS = 12_000
DEFAULT_STEPS_PER_PROMPT = 30
DEFAULT_COTS_PER_BATCH = {"transformers": 4, "vllm": 128, "prm": 8, "prm-vllm": 256}
DONE_METRIC = "steps_judged"  # a CoT is done once the source holds this score for it
ROLE_TOKENS_PER_STEP = 12  # what a "<n>: <role>" line costs, with room; README "The step judge"


class StepJudgeError(UserError):
    """A step-judge run cannot go ahead as asked; the message says what to change."""


# ---------------------------------------------------------------------------- templates


@dataclass(frozen=True)
class StepTemplate:
    """One task's prompt: ``{question}``, ``{steps}`` (and for roles ``{roles}``) are filled in."""

    task: str
    title: str
    prompt: str
    sha256: str  # of the template file's bytes
    path: Path

    @property
    def metric(self) -> str:  # core.judge.templates_hash names templates by metric
        return self.task

    def messages(self, question: str, steps_block: str) -> Messages:
        # one pass over the template's placeholders, never str.format (LaTeX braces) nor a
        # replace after another (a problem that contains "{steps}" must stay as it is)
        values = {"question": question, "steps": steps_block}
        if "{roles}" in self.prompt:
            values["roles"] = roles_list()
        text = _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), self.prompt)
        return [{"role": "user", "content": text}]


_PLACEHOLDER = re.compile(r"\{(question|steps|roles)\}")


def roles_list() -> str:
    """The eight roles with their definitions (core/step_roles.yaml), one per line."""
    descriptions = steps_mod.RoleRules.load().descriptions
    return "\n".join(f"- {role}: {descriptions.get(role, '')}".rstrip(": ") for role in ROLES)


def load_template(path: str | Path) -> StepTemplate:
    """Read and check one step-judge template (YAML: ``task``, ``title``, ``prompt``)."""
    import yaml

    path = Path(path)
    data = path.read_bytes()
    try:
        meta = yaml.safe_load(data.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise StepJudgeError(f"Step-judge template {path} is not valid YAML: {exc}") from exc
    if not isinstance(meta, dict):
        raise StepJudgeError(f"Step-judge template {path} must be a mapping with 'task' and 'prompt' keys.")
    task, prompt = meta.get("task"), meta.get("prompt")
    if task not in TASKS:
        raise StepJudgeError(f"Step-judge template {path}: 'task' must be one of {', '.join(TASKS)}, got {task!r}.")
    if not isinstance(prompt, str) or "{question}" not in prompt or "{steps}" not in prompt:
        raise StepJudgeError(f"Step-judge template {path}: the prompt must contain both {{question}} and {{steps}}.")
    return StepTemplate(task=task, title=str(meta.get("title") or task), prompt=prompt,
                        sha256=hashlib.sha256(data).hexdigest(), path=path)


def load_templates(template_dir: str | Path | None = None) -> dict[str, StepTemplate]:
    """The built-in templates, each replaced by a file of ``template_dir`` for the same task."""
    templates: dict[str, StepTemplate] = {}
    folders = [BUILTIN_TEMPLATES]
    if template_dir is not None:
        folder = Path(template_dir).expanduser()
        if not folder.is_dir():
            raise StepJudgeError(f"Templates folder {folder} does not exist.")
        folders.append(folder)
    for folder in folders:
        seen: dict[str, Path] = {}
        for path in sorted(folder.iterdir()):
            if path.suffix not in (".yaml", ".yml") or path.name.startswith("."):
                continue
            template = load_template(path)
            if template.task in seen:
                raise StepJudgeError(f"Templates {seen[template.task]} and {path} are both for task '{template.task}'.")
            seen[template.task] = path
            templates[template.task] = template
    return templates


# ---------------------------------------------------------------------------- prompts


def step_tag(i: int, text: str) -> str:
    return f"<step_{i}>\n{text}\n</step_{i}>"


def _step_body(text: str, spans: Sequence[tuple[int, int]], i: int, max_chars: int | None) -> tuple[str, bool]:
    a, b = spans[i]
    return clip_response(text[a:b].strip(), max_chars)


def first_error_window(text: str, spans: Sequence[tuple[int, int]], max_chars: int | None) -> tuple[list[int], str, int]:
    """The steps the first-error prompt shows (from step 0 while they fit in ``max_chars``;
    at least one, clipped if it alone is longer), their tagged block, and how many were clipped."""
    shown, parts, used, clipped = [], [], 0, 0
    for i in range(len(spans)):
        body, cut = _step_body(text, spans, i, max_chars)
        part = step_tag(i, body)
        if shown and max_chars and used + len(part) > max_chars:
            break
        shown.append(i)
        parts.append(part)
        used += len(part) + 2
        clipped += cut
    return shown, "\n\n".join(parts), clipped


def role_windows(text: str, spans: Sequence[tuple[int, int]], max_chars: int | None,
                 steps_per_prompt: int) -> list[tuple[list[int], str, int]]:
    """Consecutive windows covering every step: at most ``steps_per_prompt`` steps and about
    ``max_chars`` characters each (a step longer than that alone, clipped)."""
    windows, shown, parts, used, clipped = [], [], [], 0, 0
    for i in range(len(spans)):
        body, cut = _step_body(text, spans, i, max_chars)
        part = step_tag(i, body)
        if shown and (len(shown) >= steps_per_prompt or (max_chars and used + len(part) > max_chars)):
            windows.append((shown, "\n\n".join(parts), clipped))
            shown, parts, used, clipped = [], [], 0, 0
        shown.append(i)
        parts.append(part)
        used += len(part) + 2
        clipped += cut
    if shown:
        windows.append((shown, "\n\n".join(parts), clipped))
    return windows


def first_error_regex(shown: Sequence[int]) -> str:
    """What a constrained decoder may answer to a first-error prompt: a boxed shown step or -1."""
    return r"\\boxed\{(-1|" + "|".join(str(i) for i in shown) + r")\}"


def roles_regex(shown: Sequence[int]) -> str:
    """One ``<n>: <role>`` line per step of the window, in order."""
    names = "(" + "|".join(ROLES) + ")"
    return "\n".join(f"{i}: {names}" for i in shown)


# ---------------------------------------------------------------------------- parsing

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_SIGNED_INT = re.compile(r"[+-]?\d+")
# "3: role", "Step 3 - role", "<step_3>: role", "**3.** role"; the index is the first number
_ROLE_LINE = re.compile(r"^[^\w\n]*(?:step[ _]*)?(\d+)[^\w\n]+(.*)$", re.I | re.M)
_ROLE_NAME = re.compile(r"(?<![a-z])(" + "|".join(r"[ _\-]?".join(r.split("_")) for r in ROLES) + r")(?![a-z])", re.I)


def parse_first_error(text: str | None, shown: int) -> tuple[int | None, str | None]:
    """(step number or -1, None) from the last ``\\boxed{...}`` of ``text``, else (None, reason).
    ``shown`` steps (0 .. shown-1) were in the prompt. Never guesses.

    >>> parse_first_error("Step 1 adds wrongly. \\\\boxed{1}", 4)
    (1, None)
    >>> parse_first_error("All steps hold: \\\\boxed{-1}", 4)
    (-1, None)
    >>> parse_first_error("\\\\boxed{7}", 4)
    (None, '\\\\boxed{7} is not a step shown (0-3) or -1')
    """
    if text is None or not text.strip():
        return None, "empty judge output"
    found = _BOXED.findall(text)
    if not found:
        return None, "no \\boxed{...} answer"
    content = found[-1].strip()
    if not _SIGNED_INT.fullmatch(content):
        return None, f"\\boxed{{{content[:40]}}} holds no step number"
    value = int(content)
    if value == -1 or 0 <= value < shown:
        return value, None
    return None, f"\\boxed{{{content}}} is not a step shown (0-{shown - 1}) or -1"


def normalise_role(name: str) -> str:
    return re.sub(r"[ _\-]+", "_", name.strip().lower())


def parse_roles(text: str | None, shown: Sequence[int]) -> tuple[dict[int, str], str | None]:
    """{step: role} from the lines of ``text`` (the first line for a step wins; a line names a
    role when one of the eight role names occurs in it after the step number), and the reason
    when a step of ``shown`` got none.

    >>> parse_roles("0: problem_setup\\n1: active computation\\n2: thinking", [0, 1, 2])
    ({0: 'problem_setup', 1: 'active_computation'}, 'no role for 1 of 3 steps: 2')
    """
    wanted = set(shown)
    roles: dict[int, str] = {}
    if text:
        for match in _ROLE_LINE.finditer(text):
            index = int(match.group(1))
            if index not in wanted or index in roles:
                continue
            name = _ROLE_NAME.search(match.group(2))
            if name:
                roles[index] = normalise_role(name.group(1))
    missing = [i for i in shown if i not in roles]
    if not missing:
        return roles, None
    if text is None or not text.strip():
        return roles, "empty judge output"
    listed = ", ".join(map(str, missing[:12])) + (", ..." if len(missing) > 12 else "")
    return roles, f"no role for {len(missing)} of {len(shown)} steps: {listed}"


# ---------------------------------------------------------------------------- options


@dataclass
class StepJudgeOptions:
    """What a step-judge run does (the CLI's ``judge-steps`` flags and the Jobs form come from
    these fields). Checked when made: a bad value raises :class:`StepJudgeError`."""

    OPTION_GROUP: ClassVar[str] = "the step judge"

    tasks: tuple[str, ...] | None = option(None, help="first_error (ProcessBench's protocol), roles; default both, "
                                                     "first_error alone with a PRM")
    model: str = option(DEFAULT_MODEL, label="Judge model",
                        help="judge model (or, with --backend prm, a process reward model): a local folder, a hub id or the offline default")
    adapter: str | None = option(None, help="a LoRA adapter folder on top of the judge model")
    backend: str = option("transformers", choices=JUDGE_BACKENDS,
                          help="transformers runs anywhere; vllm needs a GPU (or the CPU build); prm / prm-vllm: a process reward model (core.prm) on transformers / vLLM")
    unit: str = option("paragraph", choices=steps_mod.UNITS, help="how the CoT is split into steps (unless --from-source)")
    from_source: str | None = option(None, help="judge this step source's steps (e.g. 'processbench', 'step rules (sentence)')")
    tokenizer: str | None = option(None, help="tokenizer for the steps' token counts when splitting (default: the offline SmolLM2 one)")
    template_dir: str | None = option(None, help="a folder of step-judge templates (first_error.yaml, roles.yaml) overriding the built-in ones")
    batch_size: int | None = option(None, help="CoTs per batch, committed together (default 4 on transformers, 128 on vllm, 8 on prm, 256 on prm-vllm)")
    max_new_tokens: int = option(DEFAULT_MAX_NEW_TOKENS, help="the judge's answer is cut at this many tokens")
    max_chars: int | None = option(DEFAULT_MAX_CHARS, help="characters of steps per prompt (first_error shows the steps that fit)")
    steps_per_prompt: int = option(DEFAULT_STEPS_PER_PROMPT, help="roles: steps per prompt (about 12 answer tokens each)")
    temperature: float = option(0.0, help="0 decodes greedily")
    guided: bool = option(False, help="vllm only: constrain answers to a boxed step number / one role line per step")
    threshold: float = option(0.5, help="prm: a step whose positive-class probability is below this is wrong")
    max_input_tokens: int = option(4096, help="prm: tokens per CoT (problem and steps); later steps are not judged")
    source_name: str | None = option(None, help="score source name; run again with the same name to resume")

    def __post_init__(self):
        if isinstance(self.tasks, str):
            self.tasks = tuple(t.strip() for t in self.tasks.split(",") if t.strip())
        if not self.tasks:
            self.tasks = ("first_error",) if self.backend in PRM_BACKENDS else TASKS
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise StepJudgeError(f"Step-judge tasks are {', '.join(TASKS)} (comma-separated); got {', '.join(unknown) or 'none'}.")
        self.tasks = tuple(t for t in TASKS if t in self.tasks)  # one order, whatever order they were given in
        if self.backend not in JUDGE_BACKENDS:
            raise StepJudgeError(f"Unknown step-judge backend '{self.backend}'; choose one of {', '.join(JUDGE_BACKENDS)}.")
        if self.unit not in steps_mod.UNITS:
            raise StepJudgeError(f"Unknown step unit '{self.unit}'; choose one of {', '.join(steps_mod.UNITS)}.")
        if self.backend in PRM_BACKENDS and "roles" in self.tasks:
            raise StepJudgeError("A process reward model scores each step's correctness, not its role: "
                                 f"use --tasks first_error with --backend {self.backend}.")
        if self.backend in PRM_BACKENDS and self.model == DEFAULT_MODEL:
            raise StepJudgeError(f"'{self.model}' is a chat model, not a process reward model: give --model a PRM folder "
                                 "or hub id (e.g. Qwen/Qwen2.5-Math-PRM-7B) with the prm backends.")
        if self.backend in PRM_BACKENDS and self.adapter:
            raise StepJudgeError(f"The {self.backend} backend takes no LoRA adapter.")
        if self.guided and self.backend != "vllm":
            raise StepJudgeError("Constrained (guided) decoding needs the vllm backend.")
        for name in ("max_new_tokens", "batch_size", "max_chars", "steps_per_prompt", "max_input_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise StepJudgeError(f"{name.replace('_', ' ')} must be at least 1, got {value}.")
        if self.temperature < 0:
            raise StepJudgeError(f"The temperature cannot be negative, got {self.temperature}.")
        if not 0.0 < self.threshold < 1.0:
            raise StepJudgeError(f"The PRM threshold must lie between 0 and 1, got {self.threshold}.")
        self.templates()  # every task has a readable template

    def templates(self) -> list[StepTemplate]:
        """The run's templates, in task order (none for the prm backend)."""
        if self.backend in PRM_BACKENDS:
            return []
        available = load_templates(self.template_dir)
        missing = [t for t in self.tasks if t not in available]
        if missing:
            raise StepJudgeError(f"No step-judge template for {', '.join(missing)}.")
        return [available[t] for t in self.tasks]

    def cots_per_batch(self) -> int:
        return self.batch_size or DEFAULT_COTS_PER_BATCH[self.backend]


def run_params(options: StepJudgeOptions, templates: Sequence[StepTemplate]) -> dict[str, Any]:
    """Everything that decides a run's outputs; a resumed run must match it exactly."""
    from core.tokens import DEFAULT_TOKENIZER

    params: dict[str, Any] = {
        "stage": "step judge",
        "backend": options.backend,
        "model": options.model,
        "adapter": options.adapter,
        "tasks": list(options.tasks),
        "steps": {"from_source": options.from_source} if options.from_source else
                 {"unit": options.unit, "tokenizer": options.tokenizer or DEFAULT_TOKENIZER},
        "step_text": STEP_TEXT_SQL,
    }
    if options.backend in PRM_BACKENDS:
        from core.prm import DEFAULT_SEPARATOR, DEFAULT_SYSTEM

        params.update(threshold=options.threshold, max_input_tokens=options.max_input_tokens,
                      separator=DEFAULT_SEPARATOR, system=DEFAULT_SYSTEM)
    else:
        params.update(
            templates={t.task: {"sha256": t.sha256, "file": t.path.name} for t in templates},
            temperature=options.temperature, max_new_tokens=options.max_new_tokens, max_chars=options.max_chars,
            steps_per_prompt=options.steps_per_prompt if "roles" in options.tasks else None, guided=options.guided,
            roles=list(ROLES) if "roles" in options.tasks else None,
            roles_sha256=steps_mod.RoleRules.load().sha256 if "roles" in options.tasks else None,
        )
    return params


def default_source_name(model: str) -> str:
    short = Path(model).name if Path(model).exists() else model
    return f"step judge:{short}:{dt.datetime.now():%Y-%m-%d %H:%M:%S}"


def figures_name(source: str) -> str:
    return step_stage.figures_source_name(source, "judge")


# ---------------------------------------------------------------------------- work and verdicts


@dataclass
class CotWork:
    """One CoT to judge: its problem, its step text and steps (spans in that text, tokens)."""

    cot_id: int
    question: str
    text: str
    spans: list[tuple[int, int]]
    n_tokens: list[int | None]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CotWork:
        return cls(cot_id=int(data["cot_id"]), question=data["question"], text=data["text"],
                   spans=[(int(a), int(b)) for a, b in data["spans"]], n_tokens=list(data["n_tokens"]))


@dataclass
class CotVerdict:
    """What the judge said about one CoT, as rows to write: a role and a verdict per step,
    per-step scores (step_idx, metric, value, raw) and per-CoT scores (metric, value, raw, error)."""

    cot_id: int
    spans: list[tuple[int, int]]
    n_tokens: list[int | None]
    roles: list[str | None]
    wrong: list[bool | None]
    step_scores: list[tuple[int, str, float | None, str | None]] = field(default_factory=list)
    scores: list[tuple[str, float | None, str | None, str | None]] = field(default_factory=list)
    generated_tokens: int = 0
    clipped_steps: int = 0

    def score(self, metric: str) -> tuple[float | None, str | None, str | None] | None:
        for name, value, raw, error in self.scores:
            if name == metric:
                return value, raw, error
        return None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CotVerdict:
        return cls(cot_id=int(data["cot_id"]), spans=[(int(a), int(b)) for a, b in data["spans"]],
                   n_tokens=list(data["n_tokens"]), roles=list(data["roles"]), wrong=list(data["wrong"]),
                   step_scores=[tuple(r) for r in data["step_scores"]], scores=[tuple(r) for r in data["scores"]],
                   generated_tokens=int(data.get("generated_tokens", 0)), clipped_steps=int(data.get("clipped_steps", 0)))


def wrong_from_first_error(first: int | None, shown: int, n_steps: int) -> list[bool | None]:
    """ProcessBench's labels from a first-error answer over the first ``shown`` steps: steps
    before it correct, it wrong, later steps (and steps not shown) unlabelled; -1: every shown
    step correct; None (no answer): nothing labelled."""
    if first is None:
        return [None] * n_steps
    if first == -1:
        return [False] * shown + [None] * (n_steps - shown)
    return [False] * first + [True] + [None] * (n_steps - first - 1)


def _length_note(answer: Generation, max_new_tokens: int) -> str:
    return f" (the answer reached max_new_tokens, {max_new_tokens})" if answer.finish_reason == "length" else ""


@dataclass
class _Prompt:
    cot: int  # index into the batch's works
    task: str
    shown: list[int]
    messages: Messages
    regex: str | None
    clipped: int


def build_prompts(works: Sequence[CotWork], templates: dict[str, StepTemplate], *, max_chars: int | None,
                  steps_per_prompt: int, guided: bool) -> list[_Prompt]:
    """Every prompt of a batch of CoTs, CoT by CoT: the first-error prompt, then the role windows."""
    prompts = []
    for k, work in enumerate(works):
        if not work.spans:
            continue
        if "first_error" in templates:
            shown, block, clipped = first_error_window(work.text, work.spans, max_chars)
            prompts.append(_Prompt(k, "first_error", shown, templates["first_error"].messages(work.question, block),
                                   first_error_regex(shown) if guided else None, clipped))
        if "roles" in templates:
            for shown, block, clipped in role_windows(work.text, work.spans, max_chars, steps_per_prompt):
                prompts.append(_Prompt(k, "roles", shown, templates["roles"].messages(work.question, block),
                                       roles_regex(shown) if guided else None, clipped))
    return prompts


def verdicts_from_answers(works: Sequence[CotWork], prompts: Sequence[_Prompt], answers: Sequence[Generation],
                          tasks: Sequence[str], *, max_new_tokens: int) -> list[CotVerdict]:
    """Parse a batch's answers into one verdict per CoT (pure: the tests call it directly)."""
    by_cot: dict[int, list[tuple[_Prompt, Generation]]] = {}
    for prompt, answer in zip(prompts, answers):
        by_cot.setdefault(prompt.cot, []).append((prompt, answer))
    out = []
    for k, work in enumerate(works):
        n = len(work.spans)
        verdict = CotVerdict(cot_id=work.cot_id, spans=list(work.spans), n_tokens=list(work.n_tokens),
                             roles=[None] * n, wrong=[None] * n)
        note: dict[str, Any] = {"steps": n}
        judged = n
        if n == 0:
            verdict.scores.append((DONE_METRIC, 0.0, json.dumps(note), "the CoT has no step text to judge"))
            out.append(verdict)
            continue
        pairs = by_cot.get(k, [])
        for prompt, answer in pairs:
            verdict.generated_tokens += answer.completion_tokens
            verdict.clipped_steps += prompt.clipped
        if "first_error" in tasks:
            prompt, answer = next((p, a) for p, a in pairs if p.task == "first_error")
            value, error = parse_first_error(answer.text, len(prompt.shown))
            if error:
                error += _length_note(answer, max_new_tokens)
            verdict.wrong = wrong_from_first_error(value, len(prompt.shown), n)
            verdict.scores.append(("first_error_label", None if value is None else float(value), answer.text, error))
            judged = len(prompt.shown)
            note.update(first_error_shown=judged, first_error_finish=answer.finish_reason)
        if "roles" in tasks:
            windows = [(p, a) for p, a in pairs if p.task == "roles"]
            reasons, raws = [], []
            for prompt, answer in windows:
                roles, error = parse_roles(answer.text, prompt.shown)
                for i, role in roles.items():
                    verdict.roles[i] = role
                if error:
                    reasons.append(error + _length_note(answer, max_new_tokens))
                raws.append(answer.text if len(windows) == 1 else
                            f"--- steps {prompt.shown[0]}-{prompt.shown[-1]} ---\n{answer.text}")
            given = sum(r is not None for r in verdict.roles)
            error = None if given == n else ("; ".join(reasons) if len(windows) == 1 else
                                             f"no role for {n - given} of {n} steps ({'; '.join(reasons)})")
            verdict.scores.append(("roles_given", float(given), "\n\n".join(raws), error))
            note.update(role_prompts=len(windows), roles_finish=sorted({a.finish_reason for _, a in windows}))
        note["clipped_steps"] = verdict.clipped_steps
        verdict.scores.append((DONE_METRIC, float(judged), json.dumps(note), None))
        out.append(verdict)
    return out


def judge_batch(engine, works: Sequence[CotWork], options: StepJudgeOptions, templates: dict[str, StepTemplate], *,
                on_step=None, cancelled: CancelledFn | None = None) -> list[CotVerdict]:
    """Judge one batch of CoTs with ``engine`` (a core.generation backend, or a core.prm
    scorer for the prm backend). Shared by the local and the Ray runs. A cancel during the
    generation raises :class:`core.progress.JobCancelled`: nothing of the batch is returned."""
    if options.backend in PRM_BACKENDS:
        return prm_verdicts(engine, works, threshold=options.threshold, max_input_tokens=options.max_input_tokens,
                            cancelled=cancelled)
    prompts = build_prompts(works, templates, max_chars=options.max_chars, steps_per_prompt=options.steps_per_prompt,
                            guided=options.guided)
    answers: list[Generation] = []
    if prompts:
        answers = engine.generate([p.messages for p in prompts], max_new_tokens=options.max_new_tokens,
                                  temperature=options.temperature,
                                  regexes=[p.regex for p in prompts] if options.guided else None,
                                  on_step=on_step, cancelled=cancelled)
    return verdicts_from_answers(works, prompts, answers, options.tasks, max_new_tokens=options.max_new_tokens)


def prm_verdicts(scorer, works: Sequence[CotWork], *, threshold: float, max_input_tokens: int | None,
                 cancelled: CancelledFn | None = None) -> list[CotVerdict]:
    """Verdicts from a process reward model (a core.prm.PrmScorer): per step its score
    (``prm_score``) and ``wrong`` = score < threshold, for the steps that fit in
    ``max_input_tokens``; per CoT ``first_error_label`` (the first step below the threshold,
    -1 when none), ``prm_min``, ``prm_mean``, ``prm_last`` and ``steps_judged``."""
    with_steps = [w for w in works if w.spans]
    results = scorer.score([(w.question, [w.text[a:b].strip() for a, b in w.spans]) for w in with_steps],
                           max_input_tokens=max_input_tokens, cancelled=cancelled)
    by_id = {w.cot_id: r for w, r in zip(with_steps, results)}
    verdicts = []
    for work in works:
        n = len(work.spans)
        probs, tokens = by_id.get(work.cot_id, ([], 0))
        k = len(probs)
        verdict = CotVerdict(cot_id=work.cot_id, spans=list(work.spans), n_tokens=list(work.n_tokens), roles=[None] * n,
                             wrong=[p < threshold for p in probs] + [None] * (n - k))
        verdict.step_scores = [(i, "prm_score", float(p), None) for i, p in enumerate(probs)]
        note = {"steps": n, "prm_steps_scored": k, "input_tokens": tokens}
        if n == 0:
            verdict.scores.append((DONE_METRIC, 0.0, json.dumps(note), "the CoT has no step text to judge"))
        elif k == 0:
            why = f"the problem and the first step are longer than max_input_tokens ({max_input_tokens})"
            verdict.scores.append(("first_error_label", None, None, why))
            verdict.scores.append((DONE_METRIC, 0.0, json.dumps(note), why))
        else:
            first = next((i for i, p in enumerate(probs) if p < threshold), -1)
            raw = "prm scores: " + ", ".join(f"{p:.4f}" for p in probs)
            verdict.scores += [("first_error_label", float(first), raw, None), ("prm_min", min(probs), None, None),
                               ("prm_mean", sum(probs) / k, None, None), ("prm_last", probs[-1], None, None),
                               (DONE_METRIC, float(k), json.dumps(note), None)]
        verdicts.append(verdict)
    return verdicts


# ---------------------------------------------------------------------------- reading the work


def step_source_id(db, name: str) -> int:
    """The id of a step source to take steps from; StepJudgeError when there is none."""
    rows = store.read_rows("SELECT ss.source_id, count(s.cot_id) FROM score_sources ss LEFT JOIN steps s USING (source_id) "
                           "WHERE ss.name = ? GROUP BY ss.source_id", [name], db=db)
    if not rows or not rows[0][1]:
        known = [r[0] for r in store.read_rows(
            "SELECT DISTINCT ss.name FROM steps s JOIN score_sources ss USING (source_id) ORDER BY 1", db=db)]
        raise StepJudgeError(f"There is no step source '{name}' to take steps from; the step sources are "
                             f"{', '.join(repr(k) for k in known) or 'none (run `python -m core split-steps`)'}.")
    return rows[0][0]


def read_work(db, ids: Sequence[int], *, unit: str, from_source_id: int | None, tokenizer) -> list[CotWork]:
    """The batch's CoTs with their steps: another source's, or split here (with token counts)."""
    ids = sorted(set(ids))
    if not ids:
        return []
    with store.connect(db, read_only=True) as con:
        con.register("work_ids", pa.table({"cot_id": pa.array(ids, pa.int64())}))
        rows = con.execute(
            f"SELECT c.cot_id, p.question, {STEP_TEXT_SQL} FROM cots c JOIN work_ids USING (cot_id) "
            "JOIN problems p ON p.problem_id = c.problem_id").fetchall()
        given: dict[int, list[tuple]] = {}
        if from_source_id is not None:
            for cot_id, a, b, n in con.execute(
                "SELECT s.cot_id, s.char_start, s.char_end, s.n_tokens FROM steps s JOIN work_ids USING (cot_id) "
                "WHERE s.source_id = ? ORDER BY s.cot_id, s.step_idx", [from_source_id],
            ).fetchall():
                given.setdefault(cot_id, []).append((a, b, n))
        con.unregister("work_ids")
    found = {cot_id: (question or "", text or "") for cot_id, question, text in rows}
    works = []
    for cot_id in ids:
        question, text = found.get(cot_id, ("", ""))
        if from_source_id is not None:
            steps = given.get(cot_id, [])
            works.append(CotWork(cot_id, question, text, [(a, b) for a, b, _ in steps], [n for *_, n in steps]))
        else:
            works.append(CotWork(cot_id, question, text, steps_mod.split_spans(text, unit), []))
    if from_source_id is None:
        encodings = tokenizer.encode_batch([w.text for w in works], add_special_tokens=False) if tokenizer else [None] * len(works)
        for work, encoding in zip(works, encodings):
            work.n_tokens = (steps_mod.span_token_counts(encoding, work.spans) if encoding is not None
                             else [None] * len(work.spans))
    return works


def _done_ids(db, source_id: int, lo: int, hi: int) -> set[int]:
    return {r[0] for r in store.read_rows(
        "SELECT cot_id FROM scores WHERE source_id = ? AND metric = ? AND cot_id BETWEEN ? AND ?",
        [source_id, DONE_METRIC, lo, hi], db=db)}


def pending_ids(db, source_id: int, ids: list[int], *, from_source_id: int | None = None,
                window: int = 4096) -> Iterator[int]:
    """The run's CoTs not judged yet, in id order (with ``from_source_id``: only CoTs that source
    has steps for), read window by window."""
    for start in range(0, len(ids), window):
        chunk = ids[start:start + window]
        done = _done_ids(db, source_id, chunk[0], chunk[-1])
        if from_source_id is not None:
            having = {r[0] for r in store.read_rows(
                "SELECT DISTINCT cot_id FROM steps WHERE source_id = ? AND cot_id BETWEEN ? AND ?",
                [from_source_id, chunk[0], chunk[-1]], db=db)}
            done |= set(chunk) - having
        yield from (c for c in chunk if c not in done)


def count_done(db, source_id: int, ids: list[int]) -> int:
    if not ids:
        return 0
    with store.connect(db, read_only=True) as con:
        con.register("target_ids", pa.table({"cot_id": pa.array(ids, pa.int64())}))
        return con.execute("SELECT count(DISTINCT s.cot_id) FROM scores s SEMI JOIN target_ids t ON t.cot_id = s.cot_id "
                           "WHERE s.source_id = ? AND s.metric = ?", [source_id, DONE_METRIC]).fetchone()[0]


def count_without_steps(db, ids: list[int], from_source_id: int) -> int:
    """How many of ``ids`` the from-source has no steps for (they are not judged)."""
    if not ids:
        return 0
    with store.connect(db, read_only=True) as con:
        con.register("target_ids", pa.table({"cot_id": pa.array(ids, pa.int64())}))
        return con.execute("SELECT count(*) FROM target_ids t WHERE NOT EXISTS "
                           "(SELECT 1 FROM steps s WHERE s.source_id = ? AND s.cot_id = t.cot_id)",
                           [from_source_id]).fetchone()[0]


# ---------------------------------------------------------------------------- writing


def _tables(verdicts: Sequence[CotVerdict]) -> tuple[pa.Table, pa.Table, pa.Table]:
    steps_cols: dict[str, list] = {name: [] for name in step_stage.STEP_SCHEMA.names}
    step_score_cols: dict[str, list] = {"cot_id": [], "step_idx": [], "metric": [], "value": [], "raw": []}
    score_cols: dict[str, list] = {"cot_id": [], "metric": [], "value": [], "raw": [], "error": []}
    for v in verdicts:
        for k, ((a, b), n, role, wrong) in enumerate(zip(v.spans, v.n_tokens or [None] * len(v.spans), v.roles, v.wrong)):
            for name, value in (("cot_id", v.cot_id), ("step_idx", k), ("char_start", a), ("char_end", b),
                                ("n_tokens", n), ("role", role), ("micro_actions", None), ("wrong", wrong)):
                steps_cols[name].append(value)
        for k, metric, value, raw in v.step_scores:
            for name, item in (("cot_id", v.cot_id), ("step_idx", k), ("metric", metric), ("value", value), ("raw", raw)):
                step_score_cols[name].append(item)
        for metric, value, raw, error in v.scores:
            for name, item in (("cot_id", v.cot_id), ("metric", metric), ("value", value), ("raw", raw), ("error", error)):
                score_cols[name].append(item)
    steps = pa.Table.from_arrays([pa.array(steps_cols[f.name], f.type) for f in step_stage.STEP_SCHEMA],
                                 schema=step_stage.STEP_SCHEMA)
    step_scores = pa.table({"cot_id": pa.array(step_score_cols["cot_id"], pa.int64()),
                            "step_idx": pa.array(step_score_cols["step_idx"], pa.int32()),
                            "metric": pa.array(step_score_cols["metric"], pa.string()),
                            "value": pa.array(step_score_cols["value"], pa.float64()),
                            "raw": pa.array(step_score_cols["raw"], pa.string())})
    scores = pa.table({"cot_id": pa.array(score_cols["cot_id"], pa.int64()), "metric": pa.array(score_cols["metric"], pa.string()),
                       "value": pa.array(score_cols["value"], pa.float64()), "raw": pa.array(score_cols["raw"], pa.string()),
                       "error": pa.array(score_cols["error"], pa.string())})
    return steps, step_scores, scores


def commit_verdicts(db, source_id: int, source: str, verdicts: Sequence[CotVerdict]) -> int:
    """Write a batch's verdicts in one transaction: steps, per-step scores, per-CoT scores and
    the step figures under ``<source> (step figures)``. A CoT the source already holds is
    skipped (two workers of one run never duplicate it). Returns the CoTs written."""
    if not verdicts:
        return 0
    ids = [v.cot_id for v in verdicts]
    with store.connect(db, read_only=False) as con:
        con.execute("BEGIN")
        done = {r[0] for r in con.execute(
            "SELECT cot_id FROM scores WHERE source_id = ? AND metric = ? AND list_contains(?, cot_id)",
            [source_id, DONE_METRIC, ids]).fetchall()}
        fresh = [v for v in verdicts if v.cot_id not in done]
        if not fresh:
            con.execute("ROLLBACK")
            return 0
        steps, step_scores, scores = _tables(fresh)
        step_stage.insert_steps(con, source_id, steps)
        if step_scores.num_rows:
            con.register("judge_step_scores", step_scores)
            con.execute("INSERT INTO step_scores (cot_id, source_id, step_idx, metric, value, raw) "
                        "SELECT cot_id, ?, step_idx, metric, value, raw FROM judge_step_scores", [source_id])
            con.unregister("judge_step_scores")
        con.register("judge_cot_scores", scores)
        con.execute("INSERT INTO scores (cot_id, source_id, metric, value, raw, error) "
                    "SELECT cot_id, ?, metric, value, raw, error FROM judge_cot_scores", [source_id])
        con.unregister("judge_cot_scores")
        figures_id = store.ensure_source(con, figures_name(source), "stage",
                                         params=json.dumps({"stage": "step figures", "of": source}))
        step_stage.write_figures(con, source_id, figures_id, [v.cot_id for v in fresh])
        con.execute("COMMIT")
    return len(fresh)


def drop_sources_if_empty(db, source: str, source_id: int) -> None:
    """Remove a source (and its figures source) that a run created and never wrote into."""
    with store.connect(db, read_only=False) as con:
        con.execute("BEGIN")
        if not con.execute("SELECT 1 FROM scores WHERE source_id = ? LIMIT 1", [source_id]).fetchall():
            con.execute("DELETE FROM score_sources WHERE source_id = ? OR name = ?", [source_id, figures_name(source)])
        con.execute("COMMIT")


# ---------------------------------------------------------------------------- runs


@dataclass
class StepJudgeRun:
    """What a step-judge run did. ``total`` counts CoTs the run was asked for."""

    source: str
    source_id: int
    total: int
    already_done: int
    judged: int = 0
    steps: int = 0
    first_errors_found: int = 0  # CoTs the judge says have a wrong step
    first_error_missing: int = 0  # CoTs whose first-error answer could not be read
    roles_given: int = 0
    roles_missing: int = 0  # steps without a role from the roles task
    without_steps: int = 0  # CoTs the from-source has no steps for (not judged)
    clipped_steps: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0
    cancelled: bool = False
    stopped: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def count(self, verdicts: Sequence[CotVerdict]) -> None:
        for v in verdicts:
            self.judged += 1
            self.steps += len(v.spans)
            self.clipped_steps += v.clipped_steps
            self.generated_tokens += v.generated_tokens
            first = v.score("first_error_label")
            if first is not None:
                self.first_error_missing += first[0] is None
                self.first_errors_found += first[0] is not None and first[0] >= 0
            if v.score("roles_given") is not None:
                given = sum(r is not None for r in v.roles)
                self.roles_given += given
                self.roles_missing += len(v.roles) - given


def step_tokenizer(options: StepJudgeOptions):
    """The tokenizer for the steps' token counts (None when the steps come from another source)."""
    if options.from_source:
        return None
    from core.tokens import DEFAULT_TOKENIZER, load_tokenizer

    if options.tokenizer == "none":
        return None
    tok = load_tokenizer(options.tokenizer or DEFAULT_TOKENIZER)
    tok.no_truncation()
    tok.no_padding()
    return tok


def open_engine(options: StepJudgeOptions, backend_options: dict[str, Any] | None = None):
    """The run's model, opened once per process: a generation backend, or the PRM scorer."""
    extra = dict(backend_options or {})
    if options.backend in PRM_BACKENDS:
        from core.prm import cached_prm

        return cached_prm(options.model, options.backend, batch_size=options.cots_per_batch(), **extra)
    return cached_backend(options.backend, options.model,
                          **dict(extra, adapter=options.adapter, batch_size=extra.get("batch_size", DEFAULT_BATCH[options.backend])))


def prepare(db, cots: Sequence[int] | CotFilter | None, options: StepJudgeOptions) -> tuple[list[StepTemplate], dict, str, list[int], int | None]:
    """(templates, params, source name, CoT ids, from-source id) of a run; writes nothing."""
    templates = options.templates()
    params = run_params(options, templates)
    from_id = step_source_id(db, options.from_source) if options.from_source else None
    ids = target_ids(db, cots)
    if not ids:
        raise StepJudgeError("No CoT matches what was chosen to judge; widen the filter.")
    return templates, params, options.source_name or default_source_name(options.model), ids, from_id


def _options(options: StepJudgeOptions | None, fields: dict[str, Any]) -> tuple[StepJudgeOptions, Any]:
    engine = None
    if "backend" in fields and not isinstance(fields["backend"], str):
        engine = fields["backend"]
        fields = dict(fields, backend=engine.name)
    options = dataclasses.replace(options, **fields) if options is not None else StepJudgeOptions(**fields)
    return options, engine


def judge_steps(db, cots: Sequence[int] | CotFilter | None, options: StepJudgeOptions | None = None, *,
                progress: ProgressFn | None = None, cancelled: CancelledFn | None = None,
                backend_options: dict[str, Any] | None = None, **fields) -> StepJudgeRun:
    """Judge every CoT of ``cots`` (ids, a filter, or None for all) step by step, as ``options``
    say (or :class:`StepJudgeOptions` made from keyword ``fields``). ``backend`` may be an
    opened engine (anything with ``name`` and ``generate``, or a core.prm scorer).

    Batches of ``batch_size`` CoTs are committed one by one; ``progress("judge steps", done,
    total)`` follows the committed CoTs, the tokens of the batch in flight go to
    :func:`core.progress.report_activity`. ``cancelled()`` is looked at before each batch and
    at every decoding step: True stops the run cleanly, and a rerun under the same
    ``source_name`` goes on from there.
    """
    options, engine = _options(options, fields)
    started = time.perf_counter()
    templates, params, name, ids, from_id = prepare(db, cots, options)
    existed = bool(store.read_rows("SELECT 1 FROM score_sources WHERE name = ?", [name], db=db)) if store.db_path(db).exists() else False
    source_id = open_source(db, name, model=options.model, template_hash=templates_hash(templates) if templates else None,
                            params=params)
    run = StepJudgeRun(source=name, source_id=source_id, total=len(ids), already_done=count_done(db, source_id, ids),
                       params=params)
    if from_id is not None:
        run.without_steps = count_without_steps(db, ids, from_id)
    if progress:
        progress(STAGE, run.already_done, run.total)
    by_task = {t.task: t for t in templates}
    size = options.cots_per_batch()
    pending = run.total - run.already_done - run.without_steps
    clock = RunClock(calls=max(1, math.ceil(pending / size)))

    def on_step(status) -> None:
        report_activity(progress, clock.text(status), eta_s=clock.eta(status))

    tokenizer = None
    batch: list[int] = []
    for cot_id in [*pending_ids(db, source_id, ids, from_source_id=from_id), None]:
        if cot_id is not None:
            batch.append(cot_id)
            if len(batch) < size:
                continue
        if not batch:
            break
        if cancelled is not None and cancelled():
            run.cancelled, run.stopped = True, "before the next batch"
            break
        if engine is None:  # opened only when there is work: a finished run loads no model
            try:
                engine = open_engine(options, backend_options)
            except BaseException:
                if not existed:
                    drop_sources_if_empty(db, name, source_id)  # a model that does not open leaves the store as it was
                raise
        if tokenizer is None and not options.from_source:
            tokenizer = step_tokenizer(options)
        works = read_work(db, batch, unit=options.unit, from_source_id=from_id, tokenizer=tokenizer)
        clock.start_call()
        try:
            verdicts = judge_batch(engine, works, options, by_task, on_step=on_step if progress else None, cancelled=cancelled)
        except JobCancelled as exc:
            run.cancelled, run.stopped = True, str(exc) or "during a batch"
            break
        clock.end_call()
        commit_verdicts(db, source_id, name, verdicts)
        run.count(verdicts)
        if progress:
            progress(STAGE, run.already_done + run.judged, run.total)  # after the commit: committed work only
        batch = []
    run.seconds = time.perf_counter() - started
    return run


# ---------------------------------------------------------------------------- cost


def estimate_cost(db, target: ScoreTarget, options: StepJudgeOptions):
    """What judging ``target`` will cost (core.generation.RunCost): prompts (one first-error
    prompt per CoT, role windows by step count or, without steps yet, by length), their mean
    size, and the time at a speed measured on this machine. Reads the store; loads no model."""
    from core.generation import RunCost, known_speed

    ids = target.resolve(db)
    chars = options.max_chars or 10**12
    with store.connect(db, read_only=True) as con:
        con.register("cost_ids", pa.table({"cot_id": pa.array(ids, pa.int64())}))
        from_id = None
        if options.from_source:
            from_id = step_source_id(db, options.from_source)
        n_steps = ("(SELECT count(*) FROM steps s WHERE s.source_id = ? AND s.cot_id = c.cot_id)" if from_id is not None
                   else "NULL")
        windows, shown_chars, question_chars = con.execute(
            f"SELECT sum(greatest(1, ceil(length({STEP_TEXT_SQL}) / ?), coalesce(ceil({n_steps} / ?), 0))), "
            f"avg(least(length({STEP_TEXT_SQL}), ?)), avg(length(p.question)) "
            "FROM cost_ids i JOIN cots c ON c.cot_id = i.cot_id JOIN problems p ON p.problem_id = c.problem_id",
            [chars, *([from_id] if from_id is not None else []), options.steps_per_prompt, chars]).fetchone()
    tasks = options.tasks
    prompts = len(ids) * ("first_error" in tasks) + (int(windows or 0) if "roles" in tasks else 0)
    size = options.cots_per_batch()
    prompt_chars = int((shown_chars or 0) + (question_chars or 0) + 900)
    backend = options.backend
    notes = [f"steps: {'those of ' + repr(options.from_source) if options.from_source else options.unit}",
             f"at most {options.max_chars:,} characters of steps per prompt" if options.max_chars else "steps not clipped"]
    if backend in PRM_BACKENDS:
        notes.append("one forward pass per CoT, no generation (the speed of a PRM is not measured here)")
        return RunCost(what=f"{len(ids):,} CoTs scored by a process reward model", answers=len(ids),
                       batches=math.ceil(len(ids) / size), batch_size=size, max_new_tokens=0, prompt_chars=prompt_chars,
                       notes=notes, speed=None, measure={})
    # transformers answers a call in forward batches of DEFAULT_BATCH prompts (the speed measured
    # is per such batch); vLLM takes a whole batch of CoTs' prompts as one call
    forward = DEFAULT_BATCH["transformers"] if backend == "transformers" else max(1, math.ceil(prompts / math.ceil(len(ids) / size)))
    batches = math.ceil(prompts / forward) if backend == "transformers" else math.ceil(len(ids) / size)
    return RunCost(
        what=f"{len(ids):,} CoTs x {' + '.join(tasks)} = about {prompts:,} judge prompts", answers=prompts,
        batches=batches, batch_size=forward, max_new_tokens=options.max_new_tokens, prompt_chars=prompt_chars, notes=notes,
        speed=known_speed(backend, options.model, options.adapter, forward, 1, prompt_chars),
        measure={"backend": backend, "model": options.model, "adapter": options.adapter, "batch_size": forward, "n": 1,
                 "prompt_chars": prompt_chars})
