"""The step judge on a Ray cluster: the same steps, prompts, parsers, source and resume rules as
:func:`core.step_judge.judge_steps`, with the judging spread over Ray Data actors (one engine
each: a vLLM engine per GPU, transformers or a PRM on CPU or GPU) while this process alone reads
and writes the store.

    python -m core judge-steps --dataset "my data" --backend vllm --model Qwen/Qwen2.5-7B-Instruct \\
        --ray-address auto --ray-replicas 8 --source-name "step judge qwen7b"

The driver reads the pending CoTs with their steps (split here, or taken from ``--from-source``)
and hands them to the cluster as JSON work items, in parts of ``ray_part_rows`` CoTs in Ray's
object store or, with ``ray_staging_dir``, as Parquet files on storage every node reads; the
actors judge batches of ``batch_size`` CoTs (:func:`core.step_judge.judge_batch`) and send back
one JSON verdict per CoT, which the driver commits every ``ray_commit_every`` CoTs
(:func:`core.step_judge.commit_verdicts`). Ray is joined, and the code shipped, as for the
RV/CD judge (core.judge_ray.ray_session).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

from core import store
from core.judge import open_source, templates_hash
from core.judge_ray import RayOptions, actor_resources, portable_path, ray_session, remove_staging, staging_filesystem
from core.progress import CancelledFn, ProgressFn
from core.queries import CotFilter
from core.step_judge import (
    STAGE,
    CotVerdict,
    CotWork,
    StepJudgeOptions,
    StepJudgeRun,
    StepTemplate,
    commit_verdicts,
    count_done,
    count_without_steps,
    drop_sources_if_empty,
    judge_batch,
    open_engine,
    pending_ids,
    prepare,
    read_work,
    step_tokenizer,
)


def _work_tables(db, source_id: int, ids: list[int], options: StepJudgeOptions, from_id: int | None,
                 cots_per_part: int) -> Iterator[pa.Table]:
    """The pending CoTs with their steps, ``cots_per_part`` at a time: (cot_id, work JSON)."""
    tokenizer = None if options.from_source else step_tokenizer(options)
    part: list[int] = []
    for cot_id in [*pending_ids(db, source_id, ids, from_source_id=from_id), None]:
        if cot_id is not None:
            part.append(cot_id)
            if len(part) < cots_per_part:
                continue
        if not part:
            break
        works = read_work(db, part, unit=options.unit, from_source_id=from_id, tokenizer=tokenizer)
        yield pa.table({"cot_id": pa.array([w.cot_id for w in works], pa.int64()),
                        "work": pa.array([json.dumps(w.as_dict()) for w in works], pa.large_string())})
        part = []


class RayStepJudgeActor:
    """A Ray Data actor: opens the engine once, then judges batches of work items with the same
    prompts and parsers as a local run; each output row is (cot_id, verdict JSON)."""

    def __init__(self, options: StepJudgeOptions, templates: dict[str, StepTemplate], backend_options: dict[str, Any]):
        # models (and vLLM) are imported here, inside the actor's process, never on the driver
        self.options, self.templates = options, templates
        self.engine = open_engine(options, backend_options)

    def __call__(self, batch: pa.Table) -> pa.Table:
        works = [CotWork.from_dict(json.loads(w)) for w in batch.column("work").to_pylist()]
        verdicts = judge_batch(self.engine, works, self.options, self.templates)
        return pa.table({"cot_id": pa.array([v.cot_id for v in verdicts], pa.int64()),
                         "verdict": pa.array([json.dumps(v.as_dict()) for v in verdicts], pa.large_string())})


def judge_steps_ray(db, cots: Sequence[int] | CotFilter | None, options: StepJudgeOptions, ray_options: RayOptions, *,
                    progress: ProgressFn | None = None, cancelled: CancelledFn | None = None,
                    backend_options: dict[str, Any] | None = None) -> StepJudgeRun:
    """:func:`core.step_judge.judge_steps` across a Ray cluster (see the module docstring).
    Each actor takes ``ray_gpus_per_replica`` GPUs (default 1 for vllm and prm-vllm, 0
    otherwise: give 1 for the prm backend on GPUs) and ``ray_cpus_per_replica`` CPUs. A run that fails before committing
    anything removes the source it created: the store is left as it was."""
    started = time.perf_counter()
    templates, params, name, ids, from_id = prepare(db, cots, options)
    replicas, cpus, gpus = actor_resources(ray_options, "vllm" if options.backend in ("vllm", "prm-vllm") else "transformers")
    with ray_session(ray_options):
        import ray
        import ray.data

        existed = bool(store.read_rows("SELECT 1 FROM score_sources WHERE name = ?", [name], db=db))
        source_id = None
        folder = None
        try:
            source_id = open_source(db, name, model=options.model,
                                    template_hash=templates_hash(templates) if templates else None, params=params)
            run = StepJudgeRun(source=name, source_id=source_id, total=len(ids), already_done=count_done(db, source_id, ids),
                               params=params)
            if from_id is not None:
                run.without_steps = count_without_steps(db, ids, from_id)
            if progress:
                progress(STAGE, run.already_done, run.total)
            tables = _work_tables(db, source_id, ids, options, from_id, ray_options.part_rows)
            if ray_options.staging_dir is not None:
                import pyarrow.parquet as pq

                folder = f"{str(ray_options.staging_dir).rstrip('/')}/step-judge-ray-{source_id}"
                fs, path = staging_filesystem(folder)
                remove_staging(folder)  # a killed run's staging is stale
                fs.create_dir(path, recursive=True)
                parts = 0
                for part, table in enumerate(tables):
                    pq.write_table(table, f"{path}/part-{part:05d}.parquet", filesystem=fs)
                    parts += 1
                dataset = ray.data.read_parquet(folder) if parts else None
            else:
                refs = [ray.put(table) for table in tables]
                dataset = ray.data.from_arrow_refs(refs) if refs else None
            if dataset is not None and not (cancelled is not None and cancelled()):
                _judge_on_ray(dataset, run, db, options, {t.task: t for t in templates}, backend_options,
                              replicas=replicas, cpus=cpus, gpus=gpus, commit_every=ray_options.commit_every,
                              progress=progress, cancelled=cancelled)
            elif dataset is not None:
                run.cancelled, run.stopped = True, "before the first batch"
        except BaseException:
            if source_id is not None and not existed:
                drop_sources_if_empty(db, name, source_id)
            raise
        finally:
            if folder is not None:
                remove_staging(folder)
    run.seconds = time.perf_counter() - started
    return run


def _judge_on_ray(dataset, run: StepJudgeRun, db, options: StepJudgeOptions, templates: dict[str, StepTemplate],
                  backend_options: dict[str, Any] | None, *, replicas: int, cpus: float, gpus: float, commit_every: int,
                  progress: ProgressFn | None, cancelled: CancelledFn | None) -> None:
    """Run the actors over ``dataset`` and commit their verdicts into the store as they come."""
    from ray.data import ActorPoolStrategy

    engine_options = dict(backend_options or {})
    if options.backend not in ("vllm", "prm-vllm") and gpus == 0:
        # Ray gives an actor ``cpus`` cores; torch would otherwise start one thread per core of the node
        engine_options.setdefault("threads", max(1, int(cpus)))
        engine_options.setdefault("device", "cpu")
    portable = dataclasses.replace(options, model=portable_path(options.model), adapter=portable_path(options.adapter))
    judged = dataset.map_batches(
        RayStepJudgeActor, fn_constructor_kwargs={"options": portable, "templates": templates, "backend_options": engine_options},
        batch_size=options.cots_per_batch(), batch_format="pyarrow", compute=ActorPoolStrategy(size=replicas),
        num_gpus=gpus, num_cpus=cpus,
    )
    batches = iter(judged.iter_batches(batch_size=commit_every, batch_format="pyarrow"))
    try:
        for batch in batches:
            verdicts = [CotVerdict.from_dict(json.loads(v)) for v in batch.column("verdict").to_pylist()]
            commit_verdicts(db, run.source_id, run.source, verdicts)
            run.count(verdicts)
            if progress:
                progress(STAGE, run.already_done + run.judged, run.total)
            if cancelled is not None and cancelled():
                run.cancelled, run.stopped = True, "after a commit"
                break
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # stops the streaming execution and its actors on a cancel or an error
