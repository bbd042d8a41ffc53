"""The job queue: long work (ingest, token counts, verification, judging, ...) recorded here
and run in worker processes.

    python -m core jobs [--json]          # list jobs

The Streamlit server never runs a job itself: :func:`submit` checks the job's params against
its kind (core.job_kinds), records it and starts a detached worker process
(``python -m core.worker --job ID``), which survives a browser reload and an app restart.
The queue knows kinds by name only; what runs them is core.worker's business. Job state lives in a small SQLite file (``data_dir()/jobs.sqlite``, WAL
mode), not in the DuckDB store: DuckDB's file lock would block every page of the app each time
a job wrote its progress. The worker writes progress at most a few times a second and a
heartbeat every second; a job whose worker died (dead pid or stale heartbeat) reads as
``interrupted`` and can be resumed, because every job function skips work already committed.

This module imports nothing heavy: the app imports it, and the job functions (core.worker)
import their libraries only when they run.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from core import access, job_kinds, store
from core.errors import UserError
from core.progress import JobCancelled, duration_text, process_alive

__all__ = ["JobCancelled", "cancel", "fraction_done", "get", "list_jobs", "progress_text", "resume", "submit", "worker_alive"]

FINISHED = ("done", "failed", "cancelled")
RESUMABLE = ("failed", "cancelled", "interrupted")
HEARTBEAT_S = 1.0  # how often a worker beats and looks at its cancel flag
STALE_S = 30.0  # a running job whose heartbeat is older than this has lost its worker
LOG_TAIL_LINES = 40

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    params TEXT NOT NULL,             -- JSON
    store TEXT NOT NULL,              -- the DuckDB store the job works on
    state TEXT NOT NULL,              -- queued | running | done | failed | cancelled
    stage TEXT,
    done INTEGER,
    total INTEGER,
    throughput REAL,                  -- units of the stage per second, recent
    eta_s REAL,
    message TEXT,                     -- the last log line
    activity TEXT,                    -- work in flight, not yet committed (tokens of the current batch)
    error TEXT,                       -- why it failed, as a sentence
    result TEXT,                      -- JSON
    created_at REAL NOT NULL,         -- epoch seconds
    started_at REAL,
    finished_at REAL,
    pid INTEGER,                      -- the worker's
    heartbeat_at REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0
);
"""

# Workers this process started, so their exit is noticed (and the zombie reaped) at once.
_children: dict[int, subprocess.Popen] = {}


def jobs_db_path() -> Path:
    return store.data_dir() / "jobs.sqlite"


def log_path(job_id: int) -> Path:
    folder = store.data_dir() / "jobs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{job_id}.log"


@contextlib.contextmanager
def connect(*, write: bool = False) -> Iterator[sqlite3.Connection]:
    """A short-lived connection to the job table, one transaction, closed afterwards.

    One per call keeps it safe across threads (the worker's heartbeat thread) and processes;
    ``write`` takes the write lock at the start so a read-then-update cannot interleave.
    """
    con = sqlite3.connect(jobs_db_path(), timeout=30.0, isolation_level=None)
    try:
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA busy_timeout = 30000")
        if con.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA synchronous = NORMAL")
        con.execute(SCHEMA)
        _migrate(con)
        con.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield con
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    finally:
        con.close()


_COLUMNS_ADDED = {"activity": "TEXT"}  # after the first release of the table


def _migrate(con: sqlite3.Connection) -> None:
    """Add the columns a jobs file made by an older version lacks."""
    have = {r[1] for r in con.execute("PRAGMA table_info(jobs)")}
    for column, kind in _COLUMNS_ADDED.items():
        if column not in have:
            try:
                con.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
            except sqlite3.OperationalError as exc:  # another process added it first
                if "duplicate column" not in str(exc):
                    raise


def _row(job_id: int) -> dict[str, Any]:
    with connect() as con:
        row = con.execute("SELECT * FROM jobs WHERE id = ?", [job_id]).fetchone()
    if row is None:
        raise KeyError(f"There is no job {job_id} in {jobs_db_path()}.")
    return dict(row)


def _reap() -> None:
    """Collect the exit status of workers this process started that have ended, so none
    lingers as a zombie (which would also look alive to os.kill)."""
    for pid, proc in list(_children.items()):
        if proc.poll() is not None:
            _children.pop(pid, None)


def worker_alive(pid: int | None) -> bool:
    """Whether process ``pid`` is running (a zombie that has exited counts as dead)."""
    if not pid:
        return False
    _reap()
    if pid in _children:
        return True
    return process_alive(pid)


def _shown_state(row: dict[str, Any], now: float) -> str:
    """The stored state, or 'interrupted' for an unfinished job whose worker is gone."""
    state = row["state"]
    if state not in ("queued", "running"):
        return state
    if row["pid"] is None:  # between the insert and the spawn
        return "interrupted" if now - row["created_at"] > STALE_S else state
    if not worker_alive(row["pid"]):
        return "interrupted"
    beat = row["heartbeat_at"] or row["started_at"] or row["created_at"]
    if state == "running" and now - beat > STALE_S:
        return "interrupted"
    return state


def _log_tail(job_id: int, lines: int = LOG_TAIL_LINES) -> str:
    path = store.data_dir() / "jobs" / f"{job_id}.log"
    if not path.exists():
        return ""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 64 * 1024))
        text = fh.read().decode("utf-8", errors="replace")
    # tqdm-style carriage returns: keep what a terminal would show
    shown = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    return "\n".join(shown[-lines:])


def _public(row: dict[str, Any], now: float, *, with_log: bool) -> dict[str, Any]:
    job = {
        "id": row["id"],
        "kind": row["kind"],
        "params": json.loads(row["params"]),
        "store": row["store"],
        "state": _shown_state(row, now),
        "stage": row["stage"],
        "done": row["done"],
        "total": row["total"],
        "throughput": row["throughput"],
        "eta_s": row["eta_s"],
        "message": row["message"],
        "activity": row.get("activity"),
        "error": row["error"],
        "result": json.loads(row["result"]) if row["result"] else None,
        "created_at": row["created_at"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
        "pid": row["pid"],
        "heartbeat_at": row["heartbeat_at"],
        "cancel_requested": bool(row["cancel_requested"]),
        "attempts": row["attempts"],
    }
    if with_log:
        job["log_tail"] = _log_tail(row["id"])
    return job


def get(job_id: int) -> dict[str, Any]:
    """One job: id, kind, params, store, state (queued | running | done | failed | cancelled,
    or 'interrupted' when its worker died), stage, done, total, throughput (per second), eta_s,
    message, error, result, created_at/started_at/finished_at/heartbeat_at (epoch seconds),
    pid, cancel_requested, attempts and log_tail (its log's last lines)."""
    return _public(_row(job_id), time.time(), with_log=True)


def list_jobs(limit: int | None = 100) -> pl.DataFrame:
    """The newest ``limit`` jobs (all when None), newest first, one row each."""
    _reap()
    sql = "SELECT * FROM jobs ORDER BY id DESC" + (" LIMIT ?" if limit is not None else "")
    with connect() as con:
        rows = [dict(r) for r in con.execute(sql, [limit] if limit is not None else [])]
    now = time.time()
    shown = [_public(r, now, with_log=False) for r in rows]
    schema = {
        "id": pl.Int64, "kind": pl.String, "state": pl.String, "stage": pl.String,
        "done": pl.Int64, "total": pl.Int64, "progress": pl.Float64, "throughput": pl.Float64,
        "eta_s": pl.Float64, "message": pl.String, "error": pl.String, "params": pl.String,
        "created": pl.Datetime("us"), "started": pl.Datetime("us"), "finished": pl.Datetime("us"),
        "pid": pl.Int64,
    }
    return pl.DataFrame(
        [{
            "id": j["id"], "kind": j["kind"], "state": j["state"], "stage": j["stage"],
            "done": j["done"], "total": j["total"], "progress": fraction_done(j),
            "throughput": j["throughput"], "eta_s": j["eta_s"], "message": j["message"],
            "error": j["error"], "params": json.dumps(j["params"], sort_keys=True),
            "created": _local_time(j["created_at"]), "started": _local_time(j["started_at"]),
            "finished": _local_time(j["finished_at"]), "pid": j["pid"],
        } for j in shown],
        schema=schema,
    )


def _local_time(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch)


def fraction_done(job: dict[str, Any]) -> float | None:
    """0..1 for the current stage, 1 for a finished job, None when the total is unknown."""
    if job["state"] == "done":
        return 1.0
    if job["total"] and job["done"] is not None:
        return max(0.0, min(1.0, job["done"] / job["total"]))
    return None


def progress_text(job: dict[str, Any]) -> str:
    """One line for a progress bar: 'judge: 2 / 9 · batch 2 of 3: 214 tokens generated (27/s),
    3 of 4 answers complete · about 2 min 10 s left'. The counts are committed work; the
    activity (a running job's work in flight) and the time left come after them."""
    if not job["stage"]:
        return {"queued": "waiting for its worker to start", "running": "starting"}.get(job["state"], "stopped before its first stage")
    parts = [f"{job['stage']}: {job['done'] or 0:,}" + (f" / {job['total']:,}" if job["total"] else "")]
    running = job["state"] == "running"
    if running and job.get("activity"):
        parts.append(job["activity"])
    elif job["throughput"]:
        parts.append(f"{job['throughput']:,.0f}/s" if job["throughput"] >= 10 else f"{job['throughput']:.2f}/s")
    if running and job["eta_s"] is not None:
        parts.append(f"about {duration_text(job['eta_s'])} left")
    if job["state"] in FINISHED and job["started_at"] and job["finished_at"]:
        parts.append(f"took {duration_text(job['finished_at'] - job['started_at'])}")
    return " · ".join(parts)


def _spawn(job_id: int) -> int:
    """Start a detached worker for ``job_id``; returns its pid."""
    env = dict(os.environ)
    env["THOUGHTSCOPE_DATA"] = str(store.data_dir())
    env["THOUGHTSCOPE_DB"] = env.get("THOUGHTSCOPE_DB") or str(store.db_path())
    env["PYTHONUNBUFFERED"] = "1"  # the log file shows each line as it is written
    with open(log_path(job_id), "ab") as log:
        proc = subprocess.Popen(
            # core.worker directly: the worker needs nothing of the CLI's parser.
            [sys.executable, "-m", "core.worker", "--job", str(job_id)],
            cwd=store.ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl+C or restart of the app does not reach it
        )
    _children[proc.pid] = proc
    return proc.pid


def _start_worker(job_id: int) -> int:
    try:
        pid = _spawn(job_id)
    except OSError as exc:
        with connect(write=True) as con:
            con.execute(
                "UPDATE jobs SET state = 'failed', error = ?, finished_at = ? WHERE id = ?",
                [f"The worker process could not be started: {exc}.", time.time(), job_id],
            )
        raise RuntimeError(f"Job {job_id}: the worker process could not be started: {exc}.") from exc
    with connect(write=True) as con:
        # The worker writes its own pid when it claims the job; it is the same number.
        con.execute("UPDATE jobs SET pid = ? WHERE id = ? AND pid IS NULL", [pid, job_id])
    return pid


def submit(kind: str, params: dict[str, Any] | None = None, *, db=None) -> int:
    """Record a queued job of ``kind`` and start its worker; returns the job id.

    ``db`` is the store the job works on (default $THOUGHTSCOPE_DB or the default store).
    Params that the kind's options refuse raise :class:`core.errors.UserError` and queue nothing.
    """
    access.require_job_rights()  # a read-only server, or a user not among the job users
    params = dict(params or {})
    job_kinds.check(kind, params)
    text = json.dumps(params, sort_keys=True, default=str)
    with connect(write=True) as con:
        job_id = con.execute(
            "INSERT INTO jobs (kind, params, store, state, created_at) VALUES (?, ?, ?, 'queued', ?)",
            [kind, text, str(store.db_path(db)), time.time()],
        ).lastrowid
    _start_worker(job_id)
    return job_id


def cancel(job_id: int) -> dict[str, Any]:
    """Ask a job to stop. A live worker sees it within a second and stops within seconds: a
    generation at its next token, a training at the end of its step, other stages at their
    next batch (a half ingest is undone); committed work is kept. A job whose worker is gone
    is marked cancelled at once. Returns the job."""
    access.require_job_rights()
    job = get(job_id)
    if job["state"] in FINISHED:
        raise UserError(f"Job {job_id} has already finished ({job['state']}); there is nothing to cancel.")
    with connect(write=True) as con:
        con.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", [job_id])
    if job["state"] == "interrupted":
        with connect(write=True) as con:
            con.execute(
                "UPDATE jobs SET state = 'cancelled', finished_at = ?, message = ? "
                "WHERE id = ? AND state IN ('queued', 'running')",
                [time.time(), "cancelled after its worker had stopped", job_id],
            )
        if job["kind"] == "ingest":
            # The dead worker's invisible 'loading' dataset would otherwise wait for the next
            # ingest to remove it.
            from core.ingest import clean_abandoned_loads

            clean_abandoned_loads(job["store"])
    return get(job_id)


def resume(job_id: int) -> dict[str, Any]:
    """Start a new worker for a failed, cancelled or interrupted job. The job function skips
    what the earlier run committed (counted tokens, verified CoTs, a finished ingest)."""
    access.require_job_rights()
    job = get(job_id)
    if job["state"] not in RESUMABLE:
        raise UserError(
            f"Job {job_id} is {job['state']}; only a failed, cancelled or interrupted job can be resumed."
        )
    with connect(write=True) as con:
        changed = con.execute(
            "UPDATE jobs SET state = 'queued', pid = NULL, cancel_requested = 0, error = NULL, "
            "finished_at = NULL, heartbeat_at = NULL, throughput = NULL, eta_s = NULL, activity = NULL, "
            "message = 'resumed' WHERE id = ? AND state <> 'done'",
            [job_id],
        ).rowcount
    if not changed:
        raise UserError(f"Job {job_id} changed while it was being resumed; look again.")
    _start_worker(job_id)
    return get(job_id)
