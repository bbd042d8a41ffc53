"""The ThoughtScope store: one DuckDB file, its schema, and how processes share it.

DuckDB lets one process hold the file read-write and then locks every other process out,
readers included. So nobody holds a connection open: readers open a short read-only
connection per query, writers open a read-write one per short transaction, and both retry
while the other holds the lock. Long work (an ingest, a job) stages its rows outside the
store and loads them in short transactions; a dataset becomes visible only when its row in
``datasets`` flips to ``ready``, so readers never see half an ingest.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB = ROOT / "data" / "thoughtscope.duckdb"

SCHEMA_VERSION = 1

# Ids are (dataset_id << ID_SHIFT) + a dataset-local index, so an ingest allocates its ids
# without reading the store and a failed ingest is removed by id range.
ID_SHIFT = 32

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);

CREATE TABLE IF NOT EXISTS datasets (
    dataset_id INTEGER PRIMARY KEY,
    name VARCHAR NOT NULL,
    source VARCHAR NOT NULL,          -- path or hub id it came from
    format VARCHAR NOT NULL,
    content_hash VARCHAR,
    n_problems BIGINT DEFAULT 0,
    n_cots BIGINT DEFAULT 0,
    status VARCHAR NOT NULL,          -- loading | ready
    generated BOOLEAN DEFAULT FALSE,  -- synthetic demo/bench data, labelled as such in the app
    created_at TIMESTAMP DEFAULT current_timestamp,
    options JSON                      -- how it was ingested (mapping, tokenizer, ...)
);

-- problems and cots carry no PRIMARY KEY: ids are allocated by the ingest itself, and an ART
-- index over millions of rows would cost memory and slow every bulk insert.
CREATE TABLE IF NOT EXISTS problems (
    problem_id BIGINT NOT NULL,
    dataset_id INTEGER NOT NULL,
    problem_key VARCHAR NOT NULL,     -- the source's own id (idx, id, line), unique per dataset
    benchmark VARCHAR,
    question VARCHAR NOT NULL,
    reference_answer VARCHAR,
    reference_solution VARCHAR,
    extra JSON                        -- input fields the store has no column for
);

CREATE TABLE IF NOT EXISTS cots (
    cot_id BIGINT NOT NULL,
    problem_id BIGINT NOT NULL,
    dataset_id INTEGER NOT NULL,
    model VARCHAR,                    -- generating model or teacher
    sample_idx INTEGER NOT NULL,
    thinking VARCHAR,
    solution VARCHAR,
    full_text VARCHAR NOT NULL,
    thinking_unclosed BOOLEAN NOT NULL,  -- thinking opened and never closed
    truncated BOOLEAN NOT NULL,          -- unclosed thinking or a length finish reason
    finish_reason VARCHAR,
    answer VARCHAR,                   -- final answer extracted from the solution
    n_chars INTEGER NOT NULL,
    n_paragraphs INTEGER NOT NULL,
    n_reflections INTEGER NOT NULL,   -- sum over reflection markers
    reflections MAP(VARCHAR, INTEGER),
    n_tokens INTEGER,                 -- filled by the token stage; NULL until counted
    tokenizer VARCHAR,
    extra JSON
);

CREATE TABLE IF NOT EXISTS score_sources (
    source_id INTEGER PRIMARY KEY,
    name VARCHAR NOT NULL UNIQUE,
    kind VARCHAR NOT NULL,            -- label (the dataset's own) | judge | verifier | human | stage
    model VARCHAR,
    template_hash VARCHAR,
    params JSON,
    created_at TIMESTAMP DEFAULT current_timestamp
);

-- Long format: a metric is looked up by source, so two judges sit side by side.
CREATE TABLE IF NOT EXISTS scores (
    cot_id BIGINT NOT NULL,
    source_id INTEGER NOT NULL,
    metric VARCHAR NOT NULL,          -- rv | cd | correct | logic | ...
    value DOUBLE,                     -- NULL when the source gave no usable value
    raw VARCHAR,                      -- raw judge output or label as given
    error VARCHAR                     -- why value is NULL
);

-- Problem-level numbers (difficulty, contamination, near-duplicate cluster, ...), long format
-- like scores and under the same score sources: the stage that computes them owns a source
-- (kind 'stage'), and a filter or a selection rule looks a metric up by (source, metric).
CREATE TABLE IF NOT EXISTS problem_scores (
    problem_id BIGINT NOT NULL,
    source_id INTEGER NOT NULL,
    metric VARCHAR NOT NULL,
    value DOUBLE,
    raw VARCHAR,                      -- detail as text (e.g. which benchmark problem matched)
    error VARCHAR
);

-- Problem identity (core.identity): each problem's normalised question, so the same problem
-- in a teacher dataset, a benchmark and an evaluation run meets by key.
CREATE TABLE IF NOT EXISTS problem_keys (
    problem_id BIGINT NOT NULL,
    key_version INTEGER NOT NULL,     -- core.identity.KEY_VERSION the key was made with
    question_key VARCHAR NOT NULL,
    key_hash BIGINT NOT NULL          -- 64-bit hash of question_key, for joins
);

-- Benchmark contamination (core.contamination): each match of a problem's question (or, with
-- the CoT check, of one of its CoTs) against a benchmark problem; the per-problem figures are
-- in problem_scores under the stage's score source.
CREATE TABLE IF NOT EXISTS contamination_matches (
    problem_id BIGINT NOT NULL,
    benchmark VARCHAR NOT NULL,
    benchmark_problem_id BIGINT NOT NULL,
    cot_id BIGINT,                    -- NULL: the question matched; else this CoT's text did
    shared_ngrams INTEGER NOT NULL,
    overlap DOUBLE NOT NULL,          -- share of the benchmark problem's n-grams found
    exact BOOLEAN NOT NULL            -- equal question keys
);

-- Which (dataset, benchmark) comparisons are done, against which reference set and options.
CREATE TABLE IF NOT EXISTS contamination_state (
    dataset_id INTEGER NOT NULL,
    benchmark VARCHAR NOT NULL,
    scope VARCHAR NOT NULL,           -- question | cot
    fingerprint VARCHAR NOT NULL,     -- the benchmark's reference problems and the options
    done_through BIGINT NOT NULL,     -- problems (or CoTs) up to this id are committed
    complete BOOLEAN NOT NULL
);

-- Near-duplicate problems (core.neardup): each problem's MinHash signature, and the pairs
-- whose Jaccard similarity reaches the threshold (problem_id < other_id).
CREATE TABLE IF NOT EXISTS problem_minhash (
    problem_id BIGINT NOT NULL,
    signature BLOB NOT NULL,          -- uint32 MinHash values
    bands_done INTEGER NOT NULL       -- LSH bands it was queried in (all: its near-duplicates are stored)
);

CREATE TABLE IF NOT EXISTS near_duplicate_pairs (
    problem_id BIGINT NOT NULL,
    other_id BIGINT NOT NULL,
    jaccard DOUBLE NOT NULL
);

-- The eval harness's own figures (Qwen2.5-Math *_metrics.json), shown beside ours.
CREATE TABLE IF NOT EXISTS run_metrics (
    dataset_id INTEGER NOT NULL,
    model VARCHAR,
    benchmark VARCHAR,
    metric VARCHAR NOT NULL,
    value DOUBLE
);
"""


class StoreBusy(RuntimeError):
    """Another process held the store's lock for longer than we were willing to wait."""


def db_path(path: str | os.PathLike | None = None) -> Path:
    """The store file: explicit path, else $THOUGHTSCOPE_DB, else data/thoughtscope.duckdb."""
    chosen = path or os.environ.get("THOUGHTSCOPE_DB") or DEFAULT_DB
    return Path(chosen).expanduser().resolve()


def data_dir() -> Path:
    """Where exports, recipes, jobs and models go: $THOUGHTSCOPE_DATA, else data/."""
    path = Path(os.environ.get("THOUGHTSCOPE_DATA") or ROOT / "data").expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc)
    return "lock" in text.lower() or "Could not set lock" in text


# One process must not mix read-only and read-write connections to one file, so a process
# that writes takes its reads through this lock too (see connect()).
_process_lock = threading.RLock()


@contextlib.contextmanager
def connect(
    path: str | os.PathLike | None = None,
    *,
    read_only: bool = True,
    timeout_s: float = 60.0,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short-lived connection, retried while another process holds the lock.

    Keep the ``with`` block short: while it is open, a read-write connection locks every
    other process out, and a read-only one locks writers out.
    """
    target = db_path(path)
    if read_only and not target.exists():
        init_store(target)
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    with _process_lock:
        while True:
            try:
                con = duckdb.connect(str(target), read_only=read_only)
                break
            except duckdb.Error as exc:  # IOException / ConnectionException on lock
                if not _is_lock_error(exc) or time.monotonic() > deadline:
                    if _is_lock_error(exc):
                        raise StoreBusy(
                            f"The store {target} stayed locked by another process for "
                            f"{timeout_s:.0f} s; try again when the running ingest or job "
                            "commits its next batch."
                        ) from exc
                    raise
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 1.6, 0.25)
        try:
            yield con
        finally:
            con.close()


def init_store(path: str | os.PathLike | None = None) -> Path:
    """Create the store file and its tables if missing; idempotent."""
    target = db_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with connect(target, read_only=False) as con:
        con.execute(SCHEMA)
        con.execute(
            "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)]
        )
    return target


def fetch_pl(con: duckdb.DuckDBPyConnection, sql: str, params: list | dict | None = None):
    """A query's result as a polars DataFrame (through a relation: no extra Arrow copy)."""
    return con.sql(sql, params=params or None).pl()


def read_df(sql: str, params: list | dict | None = None, *, db=None):
    """Run a read query on a short read-only connection and return a polars DataFrame."""
    with connect(db, read_only=True) as con:
        return fetch_pl(con, sql, params)


def read_rows(sql: str, params: list | dict | None = None, *, db=None) -> list[tuple]:
    with connect(db, read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def ensure_source(
    con: duckdb.DuckDBPyConnection,
    name: str,
    kind: str,
    *,
    model: str | None = None,
    template_hash: str | None = None,
    params: str | None = None,
) -> int:
    """The id of score source ``name``, created if new (inside the caller's transaction)."""
    row = con.execute("SELECT source_id FROM score_sources WHERE name = ?", [name]).fetchone()
    if row:
        return row[0]
    next_id = con.execute("SELECT coalesce(max(source_id), 0) + 1 FROM score_sources").fetchone()[0]
    con.execute(
        "INSERT INTO score_sources (source_id, name, kind, model, template_hash, params) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [next_id, name, kind, model, template_hash, params],
    )
    return next_id


def delete_dataset_rows(con: duckdb.DuckDBPyConnection, dataset_id: int) -> None:
    """Remove every row an ingest of ``dataset_id`` wrote (used to undo a failed load)."""
    lo, hi = dataset_id << ID_SHIFT, (dataset_id + 1) << ID_SHIFT
    con.execute("DELETE FROM scores WHERE cot_id >= ? AND cot_id < ?", [lo, hi])
    con.execute("DELETE FROM problem_scores WHERE problem_id >= ? AND problem_id < ?", [lo, hi])
    con.execute("DELETE FROM problem_keys WHERE problem_id >= ? AND problem_id < ?", [lo, hi])
    con.execute("DELETE FROM contamination_matches WHERE (problem_id >= ? AND problem_id < ?) "
                "OR (benchmark_problem_id >= ? AND benchmark_problem_id < ?)", [lo, hi, lo, hi])
    con.execute("DELETE FROM contamination_state WHERE dataset_id = ?", [dataset_id])
    con.execute("DELETE FROM problem_minhash WHERE problem_id >= ? AND problem_id < ?", [lo, hi])
    con.execute("DELETE FROM near_duplicate_pairs WHERE (problem_id >= ? AND problem_id < ?) "
                "OR (other_id >= ? AND other_id < ?)", [lo, hi, lo, hi])
    con.execute("DELETE FROM cots WHERE dataset_id = ?", [dataset_id])
    con.execute("DELETE FROM problems WHERE dataset_id = ?", [dataset_id])
    con.execute("DELETE FROM run_metrics WHERE dataset_id = ?", [dataset_id])
    con.execute("DELETE FROM datasets WHERE dataset_id = ?", [dataset_id])


def drop_dataset(dataset_id: int, *, db=None) -> None:
    with connect(db, read_only=False) as con:
        con.execute("BEGIN")
        delete_dataset_rows(con, dataset_id)
        con.execute("COMMIT")
