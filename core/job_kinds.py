"""Every kind of background job: its options, the function that runs it, its CLI command.

A kind is one :class:`JobKind` in :data:`KINDS`. From it come, with no more code:

* ``jobs.submit(kind, params)`` checks ``params`` against the kind's options classes before
  the job is queued (a bad value is refused with a sentence, never a failed worker);
* the worker (core.worker) runs ``run(*options, ctx)``: the options instances made from the
  job's params, then a context with ``db``, ``progress``, ``cancelled``, ``log``, ``job_id``;
* with ``command=True``, ``python -m core <name> --flag ...`` (``_`` in the name becomes
  ``-``; ``command="split-steps"`` names the command itself): flags generated from the
  options' fields (core.options), run in this process with a progress bar, the result
  printed as one JSON line; ``cli="module:function"`` lets a kind add flags of its own to
  its command (``--json``, ``--no-run``, the app's filters) and print what a person reads
  (core.cli.add_job_commands says how);
* the Jobs page's forms read their defaults from the same options classes, and a kind with
  no hand-written form gets one generated from its fields (``ui.job_forms.options_form``).

Adding a kind, e.g. a contamination check:

1. in its domain module, an options dataclass (fields made with ``core.options.option(...,
   help=...)``, checks in ``__post_init__`` raising ``core.errors.UserError``) and the work as
   a function taking that options object and ``progress``/``cancelled``/``log`` callbacks
   (core.progress), resumable and committing as it goes;
2. a runner ``def contamination_job(opts, ctx) -> dict`` (core/worker.py, or beside the work)
   that calls it with ``ctx.db``, ``ctx.progress``, ``ctx.cancelled``, ``ctx.log``;
3. one entry below: ``JobKind("contamination", "core.worker:contamination_job",
   options=(ContaminationOptions,), help="...", command=True)``.

A kind whose runner still takes the raw params dict (``def x_job(params, ctx)``, the older
style) is registered without ``options``; its params are then passed through unchecked. Only
``ingest`` is left so (its params name a file, a mapping and the stages to run after it).

This module imports only the options classes (no model library), so the app can check a job
before submitting it; the runners are imported by name when a job runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.contamination import ContaminationOptions
from core.errors import UserError
from core.difficulty import DifficultyOptions, StudentOptions
from core.efficiency import EfficiencyOptions, EfficiencyRayOptions
from core.evaluate import EvalOptions
from core.finetune import FinetuneOptions
from core.identity import KeyOptions
from core.judge import JudgeOptions, ScoreTarget
from core.judge_ray import RayOptions
from core.markers import MarkersOptions
from core.neardup import NearDupOptions
from core.options import from_params, param_names
from core.problem_map import MapOptions
from core.step_judge import StepJudgeOptions
from core.step_labels import StepLabelOptions
from core.step_stage import StepOptions
from core.tokens import TokensOptions
from core.verify import VerifyOptions


@dataclass(frozen=True)
class JobKind:
    """One kind of job. ``run`` is "module:function"; ``options`` the dataclasses whose fields
    are the job's params (flat: two classes may not share a param name); ``check``, if given,
    is called with the options instances for rules that span them; ``hidden`` are result keys
    the CLI does not print; ``command`` True (or the command's own name) makes it a command,
    and ``cli`` ("module:function") adds that command's own flags and printing."""

    name: str
    run: str
    options: tuple[type, ...] = ()
    help: str = ""
    command: bool | str = False
    check: Callable[..., None] | None = None
    hidden: tuple[str, ...] = ()
    cli: str | None = None

    def __post_init__(self):
        seen: dict[str, str] = {}
        for cls in self.options:
            for key in param_names(cls):
                if key in seen:
                    raise TypeError(f"job kind {self.name}: {cls.__name__} and {seen[key]} both have the param '{key}'")
                seen[key] = cls.__name__

    def runner(self) -> Callable[..., dict]:
        return _load(self.run)

    def command_name(self) -> str | None:
        """The ``python -m core`` command of this kind, None when it has none."""
        if not self.command:
            return None
        return self.command if isinstance(self.command, str) else self.name.replace("_", "-")

    def cli_hook(self) -> Callable | None:
        return _load(self.cli) if self.cli else None

    def parse(self, params: dict[str, Any]) -> tuple:
        """The options instances of a job's params; UserError (a sentence) when they do not fit."""
        known = {key for cls in self.options for key in param_names(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise UserError(f"A {self.name} job has no option {', '.join(unknown)}; its options are {', '.join(sorted(known))}.")
        parsed = tuple(from_params(cls, params) for cls in self.options)
        if self.check is not None:
            self.check(*parsed)
        return parsed


def _load(target: str) -> Callable:
    """The function a "module:function" string names, imported when first needed."""
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def _check_score(target: ScoreTarget, judge: JudgeOptions, ray: RayOptions) -> None:
    ray.check_cluster()


KINDS: dict[str, JobKind] = {}


def register(kind: JobKind) -> JobKind:
    KINDS[kind.name] = kind
    return kind


register(JobKind("ingest", "core.worker:ingest_job",
                 help="ingest a file, a folder or a hub id as a new dataset, then verify, count tokens, index"))
register(JobKind("tokens", "core.worker:tokens_job", options=(TokensOptions,), command=True,
                 help="count tokens of CoTs without a count (resumable)"))
register(JobKind("markers", "core.markers:markers_job", options=(MarkersOptions,), command=True,
                 help="recount reflection markers counted with another marker set; publish their density per 1,000 tokens (resumable)"))
register(JobKind("verify", "core.worker:verify_job", options=(VerifyOptions,), command=True,
                 help="check answers against reference answers with math-verify (resumable)"))
register(JobKind("score", "core.worker:score_job", options=(ScoreTarget, JudgeOptions, RayOptions), command=True,
                 check=_check_score, hidden=("params",),
                 help="re-score CoTs with an LLM judge as a new score source (resumable)"))
register(JobKind("finetune", "core.worker:finetune_job", options=(FinetuneOptions,), command=True,
                 hidden=("losses", "export_manifest", "options", "data_sha256"),
                 help="LoRA SFT on an exported TRL messages file or a recipe (resumable)"))
register(JobKind("evaluate", "core.worker:evaluate_job", options=(EvalOptions,), command=True, hidden=("summary",),
                 help="generate k answers per benchmark problem, ingest, verify (resumable)"))
register(JobKind("steps", "core.step_stage:steps_job", options=(StepOptions,), command="split-steps",
                 cli="core.step_stats:split_steps_command",
                 help="split CoTs into steps with roles by the rule set (resumable)"))
register(JobKind("step_labels", "core.step_labels:step_labels_job", options=(StepLabelOptions,),
                 help="ingest a step-label file (Thought Anchors, PRM800K, ProcessBench) for a dataset "
                      "(on the command line: ingest FILE --steps-for DATASET)"))
register(JobKind("judge-steps", "core.worker:judge_steps_job", options=(ScoreTarget, StepJudgeOptions, RayOptions),
                 command=True, check=_check_score, hidden=("params",),
                 help="judge CoTs step by step (first wrong step, role of each step) with an LLM or a PRM, as a step source (resumable)"))
register(JobKind("keys", "core.problems_cli:keys_job", options=(KeyOptions,), command=True,
                 help="give every problem its normalised question key (resumable)"))
register(JobKind("contamination", "core.problems_cli:contamination_job", options=(ContaminationOptions,), command=True,
                 cli="core.problems_cli:contamination_command",
                 help="check problems against every ingested benchmark (resumable); print dataset x benchmark counts"))
register(JobKind("near_duplicates", "core.problems_cli:near_duplicates_job", options=(NearDupOptions,), command=True,
                 cli="core.problems_cli:near_duplicates_command",
                 help="cluster near-duplicate problems with MinHash/LSH (resumable); print per dataset"))
register(JobKind("map", "core.worker:map_job", options=(MapOptions,), command=True, cli="core.problems_cli:map_command",
                 help="embed, project and cluster the problems for the Map page (resumable)"))
register(JobKind("difficulty", "core.difficulty:difficulty_job", options=(DifficultyOptions,), command=True,
                 help="per problem and model: samples, correct, pass rate, pass@k, token figures (resumable)"))
register(JobKind("student", "core.difficulty:student_job", options=(StudentOptions,), command=True,
                 help="a student's pass rates from an evaluation on every problem with the same question key"))
register(JobKind("efficiency", "core.efficiency:efficiency_job", options=(EfficiencyOptions, EfficiencyRayOptions),
                 command=True, help="per CoT: first-correct position, overthinking tail, strategy switches (resumable; Ray)"))


def get(kind: str) -> JobKind:
    if kind not in KINDS:
        raise UserError(f"There is no job kind '{kind}'; the kinds are {', '.join(sorted(KINDS))}.")
    return KINDS[kind]


def check(kind: str, params: dict[str, Any]) -> None:
    """Refuse ``params`` that the kind's options do not accept (UserError, a sentence)."""
    job_kind = get(kind)
    if job_kind.options:
        job_kind.parse(params)
