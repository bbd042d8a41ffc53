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
import contextvars
import functools
import os
import random
import re
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

-- Sentence embeddings of problem questions (core.problem_map), one row per problem and model:
-- stored once, reused by every later map.
CREATE TABLE IF NOT EXISTS problem_embeddings (
    problem_id BIGINT NOT NULL,
    model VARCHAR NOT NULL,
    dim SMALLINT NOT NULL,
    vector FLOAT[] NOT NULL           -- L2-normalised
);

-- A published map of the problems (core.problem_map) under its stage score source: 2-D
-- position and cluster per problem, and per cluster its centre, example problems and words.
CREATE TABLE IF NOT EXISTS problem_map (
    source_id INTEGER NOT NULL,
    problem_id BIGINT NOT NULL,
    x REAL NOT NULL,
    y REAL NOT NULL,
    cluster INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS map_clusters (
    source_id INTEGER NOT NULL,
    cluster INTEGER NOT NULL,
    n_problems BIGINT NOT NULL,       -- when the map was made (the page counts live)
    x REAL,
    y REAL,
    examples BIGINT[],                -- problem ids nearest the cluster's centroid
    terms VARCHAR                     -- the words most particular to the cluster
);

-- Steps inside a CoT (core/steps.py): one row per step of one step source's segmentation of
-- the CoT's step text (its thinking, else its whole response). [char_start, char_end) are
-- offsets in that text; one source's steps of a CoT are contiguous and rebuild it, so the text
-- itself is not stored again. A step source is a score source (the rule set's stage, a
-- dataset's labels, a judge); its per-CoT figures (role shares, first error, ...) are rows of
-- scores, and its per-step numbers (importance, a PRM rating, ...) rows of step_scores.
CREATE TABLE IF NOT EXISTS steps (
    cot_id BIGINT NOT NULL,
    source_id INTEGER NOT NULL,
    step_idx INTEGER NOT NULL,        -- 0, 1, ... in text order
    char_start INTEGER NOT NULL,
    char_end INTEGER NOT NULL,
    n_tokens INTEGER,                 -- tokens whose first character is in the step
    role VARCHAR,                     -- one of core.steps.ROLES, or NULL when the source gives none
    micro_actions VARCHAR[],          -- e.g. [pause, verify]; NULL when none or not looked for
    wrong BOOLEAN                     -- the source marks the step wrong; NULL when it does not say
);

CREATE TABLE IF NOT EXISTS step_scores (
    cot_id BIGINT NOT NULL,
    source_id INTEGER NOT NULL,
    step_idx INTEGER NOT NULL,
    metric VARCHAR NOT NULL,          -- accuracy, counterfactual_importance_kl, rating, correct, ...
    value DOUBLE,
    raw VARCHAR,
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

-- Difficulty from samples (core.difficulty): per problem and model, under the difficulty
-- stage's score source (one per correctness source). The pooled and per-CoT figures are rows of
-- problem_scores and scores; this table keeps the per-model detail `python -m core problems` shows.
CREATE TABLE IF NOT EXISTS problem_model_figures (
    problem_id BIGINT NOT NULL,
    source_id INTEGER NOT NULL,
    model VARCHAR NOT NULL,
    n INTEGER NOT NULL,               -- samples with a verdict
    c INTEGER NOT NULL,               -- correct ones
    shortest_correct_tokens INTEGER,  -- NULL: no correct sample, or samples counted by different tokenizers
    median_tokens_correct DOUBLE,
    median_tokens_incorrect DOUBLE
);

-- How far a stage that publishes figures per dataset has got (core.difficulty: difficulty, student):
-- the inputs it saw (fingerprint), the last id committed, and whether the dataset is done.
CREATE TABLE IF NOT EXISTS stage_state (
    stage VARCHAR NOT NULL,
    source_id INTEGER NOT NULL,
    dataset_id INTEGER NOT NULL,
    fingerprint VARCHAR NOT NULL,
    done_through BIGINT NOT NULL,
    complete BOOLEAN NOT NULL
);

-- Which reflection-marker set (and counting rule) each dataset's counts were made with
-- (core/markers.py): the recount stage redoes a dataset whose hash differs, batch by batch.
CREATE TABLE IF NOT EXISTS marker_counts (
    dataset_id INTEGER NOT NULL,
    markers_hash VARCHAR NOT NULL,    -- core.markers.markers_hash
    done_through BIGINT NOT NULL,     -- CoTs up to this id are counted with it
    complete BOOLEAN NOT NULL
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


def write_stamp(path: str | os.PathLike | None = None) -> tuple[float, float]:
    """Changes whenever the store is written (the file or its WAL): a cache key for figures read
    from it. A read-only connection leaves it unchanged."""
    target = db_path(path)
    wal = target.with_name(target.name + ".wal")
    return (target.stat().st_mtime if target.exists() else 0.0, wal.stat().st_mtime if wal.exists() else 0.0)


def data_dir() -> Path:
    """Where exports, recipes, jobs and models go: $THOUGHTSCOPE_DATA, else data/."""
    path = Path(os.environ.get("THOUGHTSCOPE_DATA") or ROOT / "data").expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc)
    return "lock" in text.lower() or "Could not set lock" in text


class _ReadWriteLock:
    """Read-only connections share it, a read-write one holds it alone.

    One process must not mix read-only and read-write connections to one file, so a writer
    waits for the readers to close (and new readers wait while a writer waits). Readers do
    not wait for each other: one session's long read (a console query, a new filter at 2M
    CoTs) no longer holds up every other session's page, as a single lock made it do.
    Re-entrant per thread, as the lock before it was.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers: dict[int, int] = {}  # thread -> depth
        self._writer: int | None = None
        self._write_depth = 0
        self._writers_waiting = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._writer != me and me not in self._readers:
                while self._writer is not None or self._writers_waiting:
                    self._cond.wait()
            self._readers[me] = self._readers.get(me, 0) + 1
        try:
            yield
        finally:
            with self._cond:
                self._readers[me] -= 1
                if not self._readers[me]:
                    del self._readers[me]
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._writer != me:
                if me in self._readers:
                    raise RuntimeError("A read-write store connection cannot open inside a read-only one in the same thread.")
                self._writers_waiting += 1
                try:
                    while self._writer is not None or self._readers:
                        self._cond.wait()
                finally:
                    self._writers_waiting -= 1
                self._writer = me
            self._write_depth += 1
        try:
            yield
        finally:
            with self._cond:
                self._write_depth -= 1
                if not self._write_depth:
                    self._writer = None
                    self._cond.notify_all()


# Connections of this process to the store (see connect()).
_process_lock = _ReadWriteLock()

# DuckDB 2.0's Python client can hand one thread the database instance another thread is still
# opening, and a query there that scans a registered Arrow table (the labels merged into reads,
# an export's batch ids) then fails with "Table Function with name python_arrow_scan does not
# exist" (4 threads opening and closing one file: 3 of 4 failed within 300 connections;
# serialised, none of 4,800). Opening is serialised; the queries still run side by side.
_open_lock = threading.Lock()

# Whether read-only connections see the human labels (core/label_store.py); labels_off() sets
# it to False for the calls inside it, in this thread.
_with_labels: contextvars.ContextVar[bool] = contextvars.ContextVar("thoughtscope_with_labels", default=True)


@contextlib.contextmanager
def labels_off() -> Iterator[None]:
    """Read connections opened inside see the store's own tables only, without the human labels
    that every other read connection sees merged in (core/label_store.py): for figures cached
    until the store changes, which a new label must not invalidate."""
    token = _with_labels.set(False)
    try:
        yield
    finally:
        _with_labels.reset(token)


@contextlib.contextmanager
def connect(
    path: str | os.PathLike | None = None,
    *,
    read_only: bool = True,
    timeout_s: float = 60.0,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short-lived connection, retried while another process holds the lock.

    A read-only connection also sees the human labels kept beside the store (``scores``,
    ``score_sources`` and ``steps`` with the labels' rows added, and ``labels``; see
    core/label_store.py), unless opened inside :func:`labels_off`.

    Keep the ``with`` block short: while it is open, a read-write connection locks every
    other process out, and a read-only one locks writers out.
    """
    target = db_path(path)
    if read_only and not target.exists():
        init_store(target)
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    with _process_lock.read() if read_only else _process_lock.write():
        while True:
            try:
                with _open_lock:
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
            if read_only:
                _stand_in_for_missing_tables(con, target)
            if read_only and _with_labels.get():
                from core import label_store

                label_store.attach(con, target)  # the labels beside the store, merged into reads
            yield con
        finally:
            con.close()


@functools.lru_cache(maxsize=1)
def _table_ddl() -> dict[str, str]:
    """Each table's CREATE statement in SCHEMA, by table name (parsed once)."""
    statements = [x for x in re.split(r";[ \t]*(?:--[^\n]*)?\n", SCHEMA) if "CREATE TABLE" in x]
    return {re.search(r"CREATE TABLE IF NOT EXISTS (\w+)", x).group(1): x for x in statements}


_missing_tables: dict[tuple, tuple[str, ...]] = {}


def _stand_in_for_missing_tables(con, target: Path) -> None:
    """A store made before a table existed lacks it until its next write (init_store runs
    with every ingest and stage), and a read-only connection cannot create it: an empty
    temporary table of the same shape stands in, so every reader works on an old store and
    sees no rows there. Which tables are missing is remembered per file version."""
    wal = target.with_name(target.name + ".wal")
    stat, wal_stat = target.stat(), (wal.stat() if wal.exists() else None)
    key = (str(target), stat.st_mtime_ns, stat.st_size,
           *((wal_stat.st_mtime_ns, wal_stat.st_size) if wal_stat else (0, 0)))
    missing = _missing_tables.get(key)
    if missing is None:
        present = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE NOT temporary").fetchall()}
        missing = tuple(name for name in _table_ddl() if name not in present)
        if len(_missing_tables) > 64:
            _missing_tables.clear()
        _missing_tables[key] = missing
    ddl = _table_ddl() if missing else {}
    for name in missing:
        con.execute(ddl[name].replace("CREATE TABLE IF NOT EXISTS", "CREATE TEMP TABLE IF NOT EXISTS", 1))


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
    # fetchall, not fetchone: a result left unfinished makes the connection refuse register()
    rows = con.execute("SELECT source_id FROM score_sources WHERE name = ?", [name]).fetchall()
    if rows:
        return rows[0][0]
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
    con.execute("DELETE FROM problem_embeddings WHERE problem_id >= ? AND problem_id < ?", [lo, hi])
    con.execute("DELETE FROM problem_map WHERE problem_id >= ? AND problem_id < ?", [lo, hi])
    con.execute("DELETE FROM steps WHERE cot_id >= ? AND cot_id < ?", [lo, hi])
    con.execute("DELETE FROM step_scores WHERE cot_id >= ? AND cot_id < ?", [lo, hi])
    con.execute("DELETE FROM problem_keys WHERE problem_id >= ? AND problem_id < ?", [lo, hi])
    con.execute("DELETE FROM contamination_matches WHERE (problem_id >= ? AND problem_id < ?) "
                "OR (benchmark_problem_id >= ? AND benchmark_problem_id < ?)", [lo, hi, lo, hi])
    con.execute("DELETE FROM contamination_state WHERE dataset_id = ?", [dataset_id])
    con.execute("DELETE FROM problem_minhash WHERE problem_id >= ? AND problem_id < ?", [lo, hi])
    con.execute("DELETE FROM near_duplicate_pairs WHERE (problem_id >= ? AND problem_id < ?) "
                "OR (other_id >= ? AND other_id < ?)", [lo, hi, lo, hi])
    con.execute("DELETE FROM problem_model_figures WHERE problem_id >= ? AND problem_id < ?", [lo, hi])
    con.execute("DELETE FROM stage_state WHERE dataset_id = ?", [dataset_id])
    # a student's pass rates (core.difficulty) were read from this dataset: they go with it
    student = ("(SELECT source_id FROM score_sources WHERE kind = 'stage' "
               "AND json_extract(params, '$.student_of_dataset_id')::INTEGER = ?)")
    con.execute(f"DELETE FROM problem_scores WHERE source_id IN {student}", [dataset_id])
    con.execute(f"DELETE FROM stage_state WHERE source_id IN {student}", [dataset_id])
    con.execute("DELETE FROM cots WHERE dataset_id = ?", [dataset_id])
    con.execute("DELETE FROM problems WHERE dataset_id = ?", [dataset_id])
    con.execute("DELETE FROM run_metrics WHERE dataset_id = ?", [dataset_id])
    con.execute("DELETE FROM marker_counts WHERE dataset_id = ?", [dataset_id])
    con.execute("DELETE FROM datasets WHERE dataset_id = ?", [dataset_id])


def drop_dataset(dataset_id: int, *, db=None) -> None:
    with connect(db, read_only=False) as con:
        con.execute("BEGIN")
        delete_dataset_rows(con, dataset_id)
        con.execute("COMMIT")
