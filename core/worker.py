"""The job worker: runs one job recorded in data/jobs.sqlite, in its own process.

    python -m core.worker --job ID        # what core.jobs.submit() starts

The job's kind (core.job_kinds) names its runner, ``run(*options, ctx)`` -- or
``run(params, ctx)`` for a kind without options classes -- which returns a JSON-able dict.
``ctx`` is a :class:`JobContext`: ``ctx.db``, ``ctx.log``, ``ctx.cancelled`` and
``ctx.progress``, the ``progress=`` callback every stage in core/ accepts. It records
committed progress (at most a few times a second, with throughput and ETA), takes work in
flight through :func:`core.progress.report_activity`, and raises
:class:`core.progress.JobCancelled` once cancelling was asked for; ``ctx.cancelled()`` turns
True within a second of a cancel, and generation and training look at it as they go. Job
functions must be resumable: run again after a crash, they skip the work an earlier run
committed. The CLI runs the same runners in its own process (core.cli), with a
:class:`core.progress.RunContext` in place of the job's context.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from core import job_kinds, jobs, store
from core.errors import UserError
from core.progress import JobCancelled, ProgressFn

PROGRESS_EVERY_S = 0.25  # at most ~4 progress writes a second
RATE_WINDOW_S = 10.0  # throughput is measured over the last seconds of the stage
ACTIVITY_FRESH_S = 30.0  # an estimate of the time left from work in flight counts this long


class _JobProgress:
    """``ctx.progress``: committed progress as ``(stage, done, total)``, work in flight as
    ``activity(text, eta_s=)`` (core.progress.report_activity)."""

    def __init__(self, ctx: JobContext):
        self._ctx = ctx

    def __call__(self, stage: str, done: int, total: int | None = None) -> None:
        self._ctx._progress(stage, done, total)

    def activity(self, text: str, *, eta_s: float | None = None) -> None:
        self._ctx._activity(text, eta_s)


class JobContext:
    """What a job function gets besides its params: progress, log, cancelled(), db, job_id."""

    def __init__(self, job_id: int, pid: int, db: Path, params: dict[str, Any]):
        self.job_id = job_id
        self.pid = pid
        self.db = db
        self.params = params
        self._cancel = threading.Event()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._stage: str | None = None
        self._latest: tuple[str, int, int | None, float | None, float | None] | None = None
        self._samples: deque[tuple[float, int]] = deque()
        self._last_call = time.monotonic()
        self._last_write = 0.0
        self._activity_text: str | None = None
        self._activity_eta: tuple[float, float] | None = None  # (when, seconds left)
        self.superseded = False
        self.progress: ProgressFn = _JobProgress(self)

    # ---------------------------------------------------------------- the job's side

    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def _progress(self, stage: str, done: int, total: int | None = None) -> None:
        if self._cancel.is_set():
            raise JobCancelled()
        now = time.monotonic()
        new_stage = stage != self._stage
        if new_stage:
            self._stage = stage
            self._activity_text = self._activity_eta = None
            # The stage's first batch started when the previous call returned.
            self._samples = deque([(self._last_call, 0)])
            self.log(f"stage {stage}" + (f": {total:,} to do" if total else ""))
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[1][0] > RATE_WINDOW_S:
            self._samples.popleft()
        t0, d0 = self._samples[0]
        rate = (done - d0) / (now - t0) if now > t0 and done > d0 else None
        eta = (total - done) / rate if rate and total is not None and total >= done else None
        self._latest = (stage, done, total, rate, eta)
        self._last_call = now
        if new_stage or now - self._last_write >= PROGRESS_EVERY_S or (total is not None and done >= total):
            self._write_progress()

    def _activity(self, text: str, eta_s: float | None) -> None:
        """Work in flight: shown beside the committed counts; its estimate of the time left,
        made from the rate inside the current batch, wins over the committed rate's. (It
        never raises: a generation learns of a cancel from ctx.cancelled, at its next step.)"""
        now = time.monotonic()
        self._activity_text = text[:300]
        if eta_s is not None:
            self._activity_eta = (now, eta_s)
        if now - self._last_write >= PROGRESS_EVERY_S:
            self._write_progress()

    def log(self, message: str) -> None:
        """A line in the job's log file; the latest also shows as the job's message."""
        print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)
        with jobs.connect(write=True) as con:
            con.execute("UPDATE jobs SET message = ? WHERE id = ? AND pid = ?", [message[:500], self.job_id, self.pid])

    # ---------------------------------------------------------------- the worker's side

    def _write_progress(self) -> None:
        if self._latest is None:
            return
        stage, done, total, rate, eta = self._latest
        now = time.monotonic()
        if self._activity_eta is not None and now - self._activity_eta[0] < ACTIVITY_FRESH_S:
            eta = max(0.0, self._activity_eta[1] - (now - self._activity_eta[0]))
        with jobs.connect(write=True) as con:
            con.execute(
                "UPDATE jobs SET stage = ?, done = ?, total = ?, throughput = ?, eta_s = ?, activity = ?, heartbeat_at = ? "
                "WHERE id = ? AND pid = ?",
                [stage, done, total, rate, eta, self._activity_text, time.time(), self.job_id, self.pid],
            )
        self._last_write = now

    def start_heartbeat(self) -> None:
        self._heartbeat = threading.Thread(target=self._beat, name=f"job-{self.job_id}-heartbeat", daemon=True)
        self._heartbeat.start()

    def _beat(self) -> None:
        """Every second: say we are alive, and pick up a cancel request (or a newer worker
        having taken the job over, after this one was given up for dead)."""
        while not self._stop.wait(jobs.HEARTBEAT_S):
            try:
                with jobs.connect(write=True) as con:
                    updated = con.execute(
                        "UPDATE jobs SET heartbeat_at = ? WHERE id = ? AND pid = ? AND state = 'running'",
                        [time.time(), self.job_id, self.pid],
                    ).rowcount
                    flag = con.execute("SELECT cancel_requested FROM jobs WHERE id = ?", [self.job_id]).fetchone()
            except Exception as exc:  # a busy jobs file must not kill the job; try next beat
                print(f"heartbeat: {exc}", file=sys.stderr, flush=True)
                continue
            if not updated:
                self.superseded = True
                self._cancel.set()
            elif flag and flag[0]:
                self._cancel.set()

    def finish(self, state: str, *, result: dict | None = None, error: str | None = None, message: str | None = None) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
        if self._latest is not None:
            self._write_progress()
        with jobs.connect(write=True) as con:
            con.execute(
                "UPDATE jobs SET state = ?, result = ?, error = ?, message = coalesce(?, message), "
                "finished_at = ?, eta_s = NULL, activity = NULL, heartbeat_at = ? WHERE id = ? AND pid = ?",
                [state, json.dumps(result, default=str) if result is not None else None, error, message,
                 time.time(), time.time(), self.job_id, self.pid],
            )


# --------------------------------------------------------------------------- job kinds


def ingest_job(params: dict[str, Any], ctx: JobContext) -> dict:
    """Ingest params['source'] as a new dataset, then verify answers, count tokens and bring
    the full-text search index up to date.

    Params: source, format, name, mapping {role: column}, model, split, max_line_mb, skip_bad,
    verify (default true), tokens (default true), index (default true), tokenizer. Run again
    after a crash, the ingest first removes the dead run's invisible 'loading' dataset; after a
    finished load it finds the same content already stored and goes on with verify, tokens and
    the index, which skip what is already done.
    """
    from core.access import confine_to_roots
    from core.formats import ReadOptions
    from core.ingest import ingest
    from core.tokens import DEFAULT_TOKENIZER, count_tokens_stage
    from core.verify import verify_stage

    if not params.get("source"):
        raise ValueError("An ingest job needs a 'source': a file, a folder or a hub id.")
    # started from the browser: only files under the ingest roots (symlinks resolved)
    source = confine_to_roots(params["source"], params.get("format"))
    opts = ReadOptions(mapping=dict(params.get("mapping") or {}), model=params.get("model"), split=params.get("split"))
    if params.get("max_line_mb"):
        opts.max_line_mb = float(params["max_line_mb"])
    ctx.log(f"ingesting {source}")
    result = ingest(
        source, fmt=params.get("format"), name=params.get("name"), db=ctx.db, opts=opts,
        skip_bad=bool(params.get("skip_bad")), generated=bool(params.get("generated")), progress=ctx.progress,
    )
    outcome: dict[str, Any] = {"ingest": result.as_dict()}
    if result.already_present:
        ctx.log(f"already in the store as dataset '{result.name}' (id {result.dataset_id})")
    else:
        ctx.log(f"loaded dataset '{result.name}' (id {result.dataset_id}): {result.problems:,} problems, {result.cots:,} CoTs")
    if params.get("verify", True):
        outcome["verify"] = verify_stage(db=ctx.db, dataset_id=result.dataset_id, progress=ctx.progress)
        ctx.log(f"verified {outcome['verify']['cots']:,} CoTs")
    if params.get("tokens", True):
        outcome["tokens"] = count_tokens_stage(
            db=ctx.db, tokenizer=params.get("tokenizer") or DEFAULT_TOKENIZER,
            dataset_id=result.dataset_id, progress=ctx.progress,
        )
        ctx.log(f"counted tokens of {outcome['tokens']['cots']:,} CoTs")
    from core import markers  # recount what an older marker set counted; publish the densities

    outcome["markers"] = markers.run(db=ctx.db, dataset_id=result.dataset_id, progress=ctx.progress)
    if params.get("index", True):
        from core.search import build_quietly

        outcome["index"] = build_quietly(ctx.db, log=ctx.log)
    return outcome


def tokens_job(opts, ctx) -> dict:
    """Count tokens of CoTs without a count; with recount, also of those counted by another
    tokenizer (core.tokens.TokensOptions). Each batch commits, so a re-run starts at the
    first CoT still to do."""
    from core.tokens import count_tokens_stage, load_tokenizer

    try:  # loaded once here only to say clearly what is wrong with a bad name or file
        load_tokenizer(opts.tokenizer)
    except Exception as exc:
        raise UserError(
            f"The tokenizer '{opts.tokenizer}' could not be loaded ({type(exc).__name__}: {exc}); give a Hugging Face "
            "hub id (needs the network the first time), a folder with tokenizer.json, or the default"
        ) from exc
    ctx.log("counting tokens with each model's own tokenizer where known, else " + opts.tokenizer if opts.per_model
            else f"counting tokens with {opts.tokenizer}" + (" (recount)" if opts.recount else ""))
    result = count_tokens_stage(db=ctx.db, tokenizer=opts.tokenizer, dataset_id=opts.dataset_id, recount=opts.recount,
                                batch_cots=opts.batch_cots, progress=ctx.progress, per_model=opts.per_model,
                                tokenizer_map=opts.tokenizer_map, log=ctx.log)
    ctx.log(f"counted {result['cots']:,} CoTs, {result['tokens']:,} tokens")
    from core.markers import publish_density  # reflection markers per 1,000 of the new counts

    result.update(publish_density(db=ctx.db, dataset_id=opts.dataset_id))
    return result


def verify_job(opts, ctx) -> dict:
    """Check final answers against reference answers with math-verify (CoTs not yet
    verified only; core.verify.VerifyOptions)."""
    from core.verify import verify_stage

    ctx.log("verifying answers with math-verify")
    result = verify_stage(db=ctx.db, dataset_id=opts.dataset_id, progress=ctx.progress)
    ctx.log(f"verified {result['cots']:,} CoTs, {result['correct']:,} correct")
    return result


def _job_file(ctx, suffix: str) -> Path:
    return store.data_dir() / "jobs" / f"{ctx.job_id}.{suffix}"


def score_job(target, options, ray, ctx) -> dict:
    """Re-score CoTs with an LLM judge as a new score source: core.judge.score_cots, or
    core.judge_ray.score_cots_ray when a Ray address is given (``target``: which CoTs,
    ``options``: the judge's settings, ``ray``: the cluster).

    As a job, the CoT ids are fixed on the first run (kept beside the job's log) and the
    source name defaults to the job's own (judge:<model>:job<id>), so a resumed job judges
    exactly the pairs the killed one had not committed. From the command line the default
    name is new per run (give --source-name to resume).
    """
    from core import judge, judge_ray

    ids, options = _fixed_cots(target, options, ctx, "judge")
    address = ray.resolved_address()
    ctx.log(f"judging {len(ids):,} CoTs on {', '.join(options.metrics)} with {options.model} ({options.backend})"
            + (f" on Ray at {address}" if address else "") + (f" as source '{options.source_name}'" if options.source_name else ""))
    if address is not None:
        run = judge_ray.score_cots_ray(ctx.db, ids, options, ray, progress=ctx.progress, cancelled=ctx.cancelled)
    else:
        run = judge.score_cots(ctx.db, ids, options, progress=ctx.progress, cancelled=ctx.cancelled)
    if run.cancelled:
        ctx.log(f"cancelled ({run.stopped}); {run.scored:,} pairs committed by this run are kept")
        raise JobCancelled()
    ctx.log(f"scored {run.scored:,} pairs ({run.errors:,} without a usable value) into '{run.source}'; "
            f"{run.clipped_cots:,} of {len(ids):,} CoTs clipped ({judge.clip_description(options.max_chars)})")
    outcome = asdict(run)
    outcome["cots"] = len(ids)
    return outcome


def _fixed_cots(target, options, ctx, prefix: str):
    """The CoT ids a judging job works on, fixed on its first run (a resumed job judges exactly
    the CoTs the killed one had not committed), and its options with the source name defaulting
    to the job's own (``<prefix>:<model>:job<id>``). Outside a job: the target's ids as they are."""
    if ctx.job_id is None:
        return target.resolve(ctx.db), options
    ids_file = _job_file(ctx, "cots.json")
    if ids_file.exists():
        ids = json.loads(ids_file.read_text())
    else:
        ids = target.resolve(ctx.db)
        ids_file.write_text(json.dumps(ids))
    if not options.source_name:
        short = Path(options.model).name if Path(options.model).exists() else options.model
        options = replace(options, source_name=f"{prefix}:{short}:job{ctx.job_id}")
    return ids, options


def judge_steps_job(target, options, ray, ctx) -> dict:
    """Judge CoTs step by step (core.step_judge.judge_steps, or core.step_judge_ray's twin when
    a Ray address is given) as a step source. As with ``score_job``, a job fixes its CoT ids on
    the first run and its source name defaults to the job's own (step judge:<model>:job<id>),
    so a resumed job judges exactly the CoTs the killed one had not committed."""
    from core import step_judge, step_judge_ray

    ids, options = _fixed_cots(target, options, ctx, "step judge")
    address = ray.resolved_address()
    steps = f"the steps of '{options.from_source}'" if options.from_source else f"{options.unit} steps"
    ctx.log(f"judging {len(ids):,} CoTs ({steps}) on {', '.join(options.tasks)} with {options.model} ({options.backend})"
            + (f" on Ray at {address}" if address else "") + (f" as source '{options.source_name}'" if options.source_name else ""))
    if address is not None:
        run = step_judge_ray.judge_steps_ray(ctx.db, ids, options, ray, progress=ctx.progress, cancelled=ctx.cancelled)
    else:
        run = step_judge.judge_steps(ctx.db, ids, options, progress=ctx.progress, cancelled=ctx.cancelled)
    if run.cancelled:
        ctx.log(f"cancelled ({run.stopped}); {run.judged:,} CoTs committed by this run are kept")
        raise JobCancelled()
    ctx.log(f"judged {run.judged:,} CoTs, {run.steps:,} steps into '{run.source}' "
            f"(step figures under '{step_judge.figures_name(run.source)}')")
    outcome = asdict(run)
    outcome["figures_source"] = step_judge.figures_name(run.source)
    return outcome


def recipe_export(name: str, recipe_name: str, thinking: str = "think_tags", *, db=None,
                  log: Callable[[str], None] = print, progress=None) -> str:
    """The recipe's CoTs in TRL messages format, written beside the model (data/models/<name>/
    data); returns the file. A resumed job reuses the export it made, if the recipe has not
    changed since."""
    from core import export, recipes
    from core.finetune import model_dir

    recipe = recipes.load(recipe_name)
    wanted = json.loads(json.dumps(recipe.as_dict(), default=str))  # as the manifest stores it
    folder = model_dir(name) / "data"
    for manifest in sorted(folder.glob("*.manifest.json")):
        made = json.loads(manifest.read_text())
        if made.get("recipe") == wanted and made.get("thinking") == thinking and Path(made["path"]).exists():
            log(f"reusing the export {made['path']} of recipe '{recipe_name}'")
            return made["path"]
    log(f"exporting recipe '{recipe_name}' as TRL messages")
    result = export.export(recipe, "trl", thinking=thinking, out_dir=folder, db=db, progress=progress)
    if result.rows == 0:
        result.path.unlink(missing_ok=True)
        result.manifest_path.unlink(missing_ok=True)
        raise UserError(f"Recipe '{recipe_name}' keeps no CoT in this store; nothing to train on.")
    log(f"exported {result.rows:,} CoTs to {result.path}")
    return str(result.path)


def finetune_job(opts, ctx) -> dict:
    """LoRA SFT (core.finetune); with a ``recipe`` and no ``data``, the recipe is first
    exported to TRL messages (``thinking`` style). Resumes from the last checkpoint; a cancel
    saves one first."""
    from core.finetune import finetune

    if not opts.data:
        opts = replace(opts, data=recipe_export(opts.name, opts.recipe, opts.thinking, db=ctx.db, log=ctx.log,
                                                progress=ctx.progress))
    return finetune(opts, progress=ctx.progress, cancelled=ctx.cancelled, log=ctx.log)


def evaluate_job(opts, ctx) -> dict:
    """Evaluate a model (with an optional LoRA adapter) on a benchmark (core.evaluate).
    Generations already made are kept on a resume; a cancel stops the batch's generation."""
    from core.evaluate import evaluate

    return evaluate(opts, db=ctx.db, progress=ctx.progress, cancelled=ctx.cancelled, log=ctx.log)


def map_job(opts, ctx) -> dict:
    """The map of the problems (core.problem_map.run_map, options MapOptions). Each committed
    batch of embeddings is kept on a cancel or a crash; a resumed job embeds the rest, then
    projects."""
    from core.problem_map import run_map

    ctx.log(f"mapping the problems with {opts.model}")
    result = run_map(ctx.db, opts, progress=ctx.progress, cancelled=ctx.cancelled)
    if result.get("cancelled"):
        raise JobCancelled()
    ctx.log(f"embedded {result['embed']['embedded']:,} problems; map: {result.get('map')}")
    return result


JobFn = Callable[..., dict]


def _bind(kind: job_kinds.JobKind) -> JobFn:
    """A kind's runner as ``fn(params, ctx)``: options kinds get their options parsed first."""
    def run(params: dict[str, Any], ctx) -> dict:
        fn = kind.runner()
        return fn(*kind.parse(params), ctx) if kind.options else fn(params, ctx)

    run.__name__ = f"{kind.name}_job"
    return run


# Every registered kind, as fn(params, ctx); tests add their own kinds here.
JOB_KINDS: dict[str, JobFn] = {name: _bind(kind) for name, kind in job_kinds.KINDS.items()}


# --------------------------------------------------------------------------- running one


def describe_error(exc: BaseException) -> str:
    """What went wrong, as a sentence for the Jobs page."""
    from core.records import IngestError

    if isinstance(exc, IngestError):
        return f"That input cannot be ingested: {exc}. The store was not changed."
    if isinstance(exc, store.StoreBusy):
        return str(exc)
    text = str(exc).strip() or type(exc).__name__
    if not isinstance(exc, (ValueError, RuntimeError, OSError)):  # UserError is a ValueError
        text = f"{type(exc).__name__}: {text}"
    return text if text.endswith((".", "!", "?")) else text + "."


def _claim(job_id: int, pid: int) -> dict[str, Any] | None:
    """Take a queued job for this process; None when it is not ours to run."""
    now = time.time()
    with jobs.connect(write=True) as con:
        row = con.execute("SELECT * FROM jobs WHERE id = ?", [job_id]).fetchone()
        if row is None:
            print(f"There is no job {job_id} in {jobs.jobs_db_path()}.", flush=True)
            return None
        row = dict(row)
        if row["state"] != "queued" or row["pid"] not in (None, pid):
            print(f"Job {job_id} is {row['state']} (worker pid {row['pid']}); nothing to do.", flush=True)
            return None
        if row["cancel_requested"]:
            con.execute(
                "UPDATE jobs SET state = 'cancelled', pid = ?, finished_at = ?, message = 'cancelled before it started' "
                "WHERE id = ?", [pid, now, job_id],
            )
            return None
        con.execute(
            "UPDATE jobs SET state = 'running', pid = ?, started_at = ?, heartbeat_at = ?, "
            "attempts = attempts + 1, stage = NULL, done = NULL, total = NULL WHERE id = ?",
            [pid, now, now, job_id],
        )
    return row


def run_job(job_id: int) -> str:
    """Run job ``job_id`` in this process; returns its final state."""
    pid = os.getpid()
    row = _claim(job_id, pid)
    if row is None:
        return jobs.get(job_id)["state"] if _exists(job_id) else "missing"
    params = json.loads(row["params"])
    # Whatever the environment says, the job works on the store it was submitted for.
    os.environ["THOUGHTSCOPE_DB"] = row["store"]
    ctx = JobContext(job_id, pid, Path(row["store"]), params)
    ctx.start_heartbeat()
    ctx.log(f"job {job_id} ({row['kind']}) started in process {pid} on {row['store']}; params {json.dumps(params, sort_keys=True)}")
    started = time.perf_counter()
    try:
        fn = JOB_KINDS.get(row["kind"])
        if fn is None:
            raise ValueError(f"There is no job kind '{row['kind']}' in this version of ThoughtScope.")
        result = fn(params, ctx)
    except JobCancelled as exc:
        if ctx.superseded:
            print("another worker has taken this job over; stopping", flush=True)
            return "superseded"
        ctx.log("cancelled" + (f" ({exc})" if str(exc) else "") + "; work committed so far is kept, a half-loaded dataset is removed")
        ctx.finish("cancelled")
        return "cancelled"
    except Exception as exc:
        traceback.print_exc()
        error = describe_error(exc)
        ctx.log(f"failed: {error}")
        ctx.finish("failed", error=error)
        return "failed"
    ctx.log(f"done in {time.perf_counter() - started:.1f} s")
    ctx.finish("done", result=result)
    return "done"


def _exists(job_id: int) -> bool:
    with jobs.connect() as con:
        return con.execute("SELECT 1 FROM jobs WHERE id = ?", [job_id]).fetchone() is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.worker", description="Run one ThoughtScope background job.")
    parser.add_argument("--job", type=int, required=True)
    args = parser.parse_args(argv)
    return 0 if run_job(args.job) == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
