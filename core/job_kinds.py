"""Every kind of background job: its options, the function that runs it, its CLI command.

A kind is one :class:`JobKind` in :data:`KINDS`. From it come, with no more code:

* ``jobs.submit(kind, params)`` checks ``params`` against the kind's options classes before
  the job is queued (a bad value is refused with a sentence, never a failed worker);
* the worker (core.worker) runs ``run(*options, ctx)``: the options instances made from the
  job's params, then a context with ``db``, ``progress``, ``cancelled``, ``log``, ``job_id``;
* with ``command=True``, ``python -m core <name> --flag ...``: flags generated from the
  options' fields (core.options), run in this process with a progress bar, the result
  printed as one JSON line;
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
style) is registered without ``options``; its params are then passed through unchecked.

This module imports only the options classes (no model library), so the app can check a job
before submitting it; the runners are imported by name when a job runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.errors import UserError
from core.evaluate import EvalOptions
from core.finetune import FinetuneOptions
from core.judge import JudgeOptions, ScoreTarget
from core.judge_ray import RayOptions
from core.markers import MarkersOptions
from core.options import from_params, param_names
from core.tokens import TokensOptions
from core.verify import VerifyOptions


@dataclass(frozen=True)
class JobKind:
    """One kind of job. ``run`` is "module:function"; ``options`` the dataclasses whose fields
    are the job's params (flat: two classes may not share a param name); ``check``, if given,
    is called with the options instances for rules that span them; ``hidden`` are result keys
    the CLI does not print."""

    name: str
    run: str
    options: tuple[type, ...] = ()
    help: str = ""
    command: bool = False
    check: Callable[..., None] | None = None
    hidden: tuple[str, ...] = ()

    def __post_init__(self):
        seen: dict[str, str] = {}
        for cls in self.options:
            for key in param_names(cls):
                if key in seen:
                    raise TypeError(f"job kind {self.name}: {cls.__name__} and {seen[key]} both have the param '{key}'")
                seen[key] = cls.__name__

    def runner(self) -> Callable[..., dict]:
        module, _, function = self.run.partition(":")
        return getattr(importlib.import_module(module), function)

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
register(JobKind("steps", "core.step_stage:steps_job",
                 help="split CoTs into steps with roles by the rule set (resumable)"))
register(JobKind("step_labels", "core.step_labels:step_labels_job",
                 help="ingest a step-label file (Thought Anchors, PRM800K, ProcessBench) for a dataset"))
register(JobKind("keys", "core.problems_cli:keys_job",
                 help="give every problem its normalised question key (resumable)"))
register(JobKind("contamination", "core.problems_cli:contamination_job",
                 help="check problems against every ingested benchmark (resumable)"))
register(JobKind("near_duplicates", "core.problems_cli:near_duplicates_job",
                 help="cluster near-duplicate problems with MinHash/LSH (resumable)"))
register(JobKind("map", "core.worker:map_job",
                 help="embed, project and cluster the problems for the Map page (resumable)"))


def get(kind: str) -> JobKind:
    if kind not in KINDS:
        raise UserError(f"There is no job kind '{kind}'; the kinds are {', '.join(sorted(KINDS))}.")
    return KINDS[kind]


def check(kind: str, params: dict[str, Any]) -> None:
    """Refuse ``params`` that the kind's options do not accept (UserError, a sentence)."""
    job_kind = get(kind)
    if job_kind.options:
        job_kind.parse(params)
