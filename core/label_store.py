"""Where human labels live: an append-only log beside the store, merged into every read.

Why not in the DuckDB store itself (measured in bench/bench_labels.py, figures in bench/README.md):
DuckDB lets one process hold the file for writing, and inside the app process a read-write
connection must wait until every read-only one has closed (and new reads wait behind it). A
label written into the store from a browser session would wait for the slowest page read in
flight, hold every other session's reads while it commits, wait for any ingest, job or console
that holds the file in another process, and change the store's write stamp, so every cached
page of every session would be recomputed after each label. Measured on a 4.8M-CoT store
(2 cores under a load of ~20): a label into the store 1,748 ms p50, beside it 100 ms; with
another process reading for 3 s, 3,187 ms against 152 ms.

So labels go to ``<store file>.labels.sqlite`` (SQLite in WAL mode: many writers in many
processes take turns in transactions of a millisecond, readers never wait for them; each
transaction is synced to disk before the call returns). The log is append-only: a label is an
*event* (who, when, which CoT, which field, which value; ``null`` clears), and the current
state is the latest event per (annotator, CoT, field), by time then event id. Events have
global ids, so merging two labs' logs is a union (``python -m core labels import``).

A label names its CoT by *content*: ``cot_key`` = md5 of the question and the whole response
text (:data:`KEY_SQL`), with the store's cot_id at the time as a hint and the response's length
to narrow a search. A dropped and re-ingested dataset gets new ids; its labels find their CoTs
again by content (``resolve``), and labels of CoTs no store holds wait, unresolved, until one
does.

Merged into reads: every *read-only* connection ``core.store.connect`` opens (the app's
queries, the SQL console's process, the CLI) gets, when a labels file exists,

* ``scores``, ``score_sources`` and ``steps`` as temporary views: the store's own rows plus the
  labels as rows of human score sources (kind ``human``, one per annotator, ``human: <name>``,
  and ``annotations`` for everyone's tags, flags and notes; ids from :data:`HUMAN_SOURCE_BASE`
  up, so they sort after every store source). So the figure catalogue, the sidebar's filters,
  Select's conditions, recipes, the export manifest, the Agreement page and the step views read
  human labels with no code of their own. The store's own tables stay reachable as
  ``<catalog>.main.scores`` (``SELECT current_database()`` names the catalog).
* ``labels`` (the current labels, one row per annotator, CoT and field, with who and when) and
  ``label_events`` (every event), for the SQL console.

How a label becomes a score row (metric of its annotator's source; value 1 where the label is
a mark): ``rv``/``cd``/``logic``/``correct`` the value; a tag ``tag:<tag>``; a flag
``flag:exclude`` | ``flag:include`` | ``flag:review``; a note ``note`` (raw: its text). A step
role is a row of ``steps`` under the annotator's source at the step's characters.

The per-connection cost is a few registered Arrow tables and five view definitions (a read
connection opened and closed: 129 ms p50 merged against 90 ms store-only, same run as above);
the state and the key resolution are cached per process and redone only for what changed (new
events; a new or dropped dataset). Read connections inside ``store.labels_off()`` see the store
alone (the app caches store-only figures that way, so a label does not invalidate them).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

SUFFIX = ".labels.sqlite"
SOURCE_PREFIX = "human: "
COMBINED = "annotations"  # everyone's tags, flags and notes under one source
HUMAN_SOURCE_BASE = 1_000_000_000  # COMBINED; annotators from +1 in order of their first label
# The content identity of a CoT, in the store's SQL (c: cots, p: problems). chr(31) (unit
# separator) never starts a response, so question/response boundaries cannot shift.
KEY_SQL = "md5(p.question || chr(31) || c.full_text)"
METRIC_FIELDS = ("rv", "cd", "logic", "correct")

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- order in this file (imports append)
    event_id TEXT NOT NULL UNIQUE,          -- global id: merging two logs is a union
    at TEXT NOT NULL,                       -- ISO 8601 UTC, microseconds: the latest wins
    annotator TEXT NOT NULL,
    cot_key TEXT NOT NULL,                  -- KEY_SQL of the CoT
    field TEXT NOT NULL,                    -- rv | cd | logic | correct | tag:<t> | flag | note | step:<a>-<b>
    value TEXT,                             -- JSON; null clears the field
    cot_id INTEGER,                         -- the CoT's id where it was labelled (a hint)
    n_chars INTEGER NOT NULL,               -- the response's length (narrows a search by content)
    context TEXT                            -- JSON: dataset, model, sample, segmentation, ... (for people)
);
CREATE TABLE IF NOT EXISTS queues (
    queue_id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    created_by TEXT,
    created_at TEXT NOT NULL,
    spec TEXT NOT NULL,                     -- JSON: the filter, the sampling and what it found
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS queue_items (
    queue_id INTEGER NOT NULL,
    position INTEGER NOT NULL,
    cot_key TEXT NOT NULL,
    cot_id INTEGER,
    n_chars INTEGER NOT NULL,
    stratum TEXT,
    PRIMARY KEY (queue_id, position)
);
"""

EVENT_COLUMNS = ("seq", "event_id", "at", "annotator", "cot_key", "field", "value", "cot_id", "n_chars", "context")


def path_for(db_path: str | os.PathLike) -> Path:
    """The labels file of the store at ``db_path`` (resolved)."""
    target = Path(db_path)
    return target.with_name(target.name + SUFFIX)


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def source_name(annotator: str) -> str:
    return SOURCE_PREFIX + annotator


def is_human_source(name: str | None) -> bool:
    """Whether a score source name is one of the labels' (by its name: no I/O)."""
    return bool(name) and (name == COMBINED or name.startswith(SOURCE_PREFIX))


# ---------------------------------------------------------------------------- the SQLite file


def open_file(path: Path, *, create: bool = False) -> sqlite3.Connection:
    """A connection to the labels file (WAL, every commit synced, 30 s patience for a writer)."""
    if not path.exists():
        if not create:
            raise FileNotFoundError(path)
        _create_file(path)
    con = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA busy_timeout = 30000")
    if create:
        con.executescript(SCHEMA)  # a file of an older layout gains new tables
    con.execute("PRAGMA synchronous = FULL")
    return con


def _create_file(path: Path) -> None:
    """Make the labels file whole, under another name, then link it into place: a reader that
    sees the file always finds its tables (made in place, a page reading while the first label
    was written found the file without them: "no such table: events"). Two processes making it
    at once: the first link wins, the other's copy is dropped."""
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=".labels-new-", suffix=".sqlite", dir=path.parent)
    os.close(fd)
    try:
        con = sqlite3.connect(tmp, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode = WAL")  # kept in the file's header
            con.executescript(SCHEMA)
        finally:
            con.close()
        os.chmod(tmp, 0o644)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)


@contextlib.contextmanager
def writing(path: Path) -> Iterator[sqlite3.Connection]:
    """One write transaction on the labels file (created if missing); other writers wait for it
    (SQLite's lock, a millisecond), readers never do."""
    con = open_file(path, create=True)
    try:
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
    finally:
        con.close()


class EventConflict(ValueError):
    """An event id already in the file with other content (who, when, which CoT, field, value)."""

    def __init__(self, event: dict):
        super().__init__(f"event {event['event_id']} is already in the labels with other content")
        self.event = event


def append(path: Path, events: list[dict]) -> int:
    """Add ``events`` (dicts with the EVENT_COLUMNS but seq; value and context already JSON) in
    one transaction and return how many were new. An event whose id is already in the file is
    skipped when its content is the same, and refused (EventConflict, nothing added) when not."""
    columns = [c for c in EVENT_COLUMNS if c != "seq"]
    compared = ("at", "annotator", "cot_key", "field", "value")
    added = 0
    with writing(path) as con:
        for event in events:
            cur = con.execute(
                f"INSERT OR IGNORE INTO events ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                [event.get(c) for c in columns],
            )
            if cur.rowcount:
                added += 1
                continue
            stored = con.execute(f"SELECT {', '.join(compared)} FROM events WHERE event_id = ?",
                                 [event["event_id"]]).fetchone()
            if stored != tuple(event.get(c) for c in compared):
                raise EventConflict(event)
    return added


# ---------------------------------------------------------------------------- the state, per process


@dataclass
class Snapshot:
    """Every event of a labels file read so far, and the current labels (latest per key)."""

    seq: int = 0
    events: object = None  # polars DataFrame (EVENT_COLUMNS)
    current: object = None  # polars DataFrame: the latest event per (annotator, cot_key, field)
    sources: dict = field(default_factory=dict)  # annotator -> source_id


_lock = threading.RLock()
_snapshots: dict[tuple[str, int], Snapshot] = {}  # (path, inode) -> snapshot
_readers: dict[tuple[str, int], sqlite3.Connection] = {}


def _event_schema():
    import polars as pl

    return {"seq": pl.Int64, "event_id": pl.String, "at": pl.String, "annotator": pl.String, "cot_key": pl.String,
            "field": pl.String, "value": pl.String, "cot_id": pl.Int64, "n_chars": pl.Int64, "context": pl.String}


def snapshot(path: Path) -> Snapshot | None:
    """The labels file's events and current state, read incrementally (only events this process
    has not seen); None when there is no labels file."""
    import polars as pl

    try:
        inode = path.stat().st_ino
    except FileNotFoundError:
        return None
    key = (str(path), inode)
    with _lock:
        reader = _readers.get(key)
        if reader is None:
            reader = _readers[key] = open_file(path)
        last = reader.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        snap = _snapshots.get(key)
        if snap is not None and snap.seq == last:
            return snap
        since = snap.seq if snap is not None else 0
        rows = reader.execute(f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE seq > ? AND seq <= ? ORDER BY seq",
                              [since, last]).fetchall()
        new = pl.DataFrame(rows, schema=_event_schema(), orient="row")
        events = new if snap is None else pl.concat([snap.events, new])
        # latest per key by (at, event_id): the same answer in any order of arrival
        base = new if snap is None else pl.concat([snap.current, new])
        current = base.sort(["at", "event_id"]).unique(["annotator", "cot_key", "field"], keep="last", maintain_order=True)
        sources = dict(snap.sources) if snap is not None else {}
        for annotator in new["annotator"].unique(maintain_order=True).to_list():
            if annotator not in sources:
                sources[annotator] = HUMAN_SOURCE_BASE + 1 + len(sources)
        snap = Snapshot(last, events, current.sort("seq"), sources)
        _snapshots[key] = snap
        return snap


def version(path: Path) -> int:
    """Changes whenever an event is added to the labels file (0: no file, or no event)."""
    snap = snapshot(path)
    return 0 if snap is None else snap.seq


# ---------------------------------------------------------------------------- content keys -> CoTs


@dataclass
class _Resolution:
    stamp: tuple = ()
    fingerprint: str | None = None
    found: dict = field(default_factory=dict)  # cot_key -> tuple of cot_ids in ready datasets
    generation: int = 0


_resolutions: dict[str, _Resolution] = {}


def _store_stamp(target: Path) -> tuple:
    wal = target.with_name(target.name + ".wal")
    return tuple(p.stat().st_mtime_ns if p.exists() else 0 for p in (target, wal))


def ids_in(column: str, ids) -> tuple[str, list]:
    """``column IN (...)`` for these CoT ids, and its parameters. A short list goes in as
    placeholders, so DuckDB skips row groups by their min/max (one CoT's identity on a
    4.8M-CoT store: 16 ms, against 458 ms as ``IN (SELECT unnest(?))``, which scans every
    row); a long one as an unnested list."""
    ids = [int(i) for i in ids]
    if 0 < len(ids) <= 1000:
        return f"{column} IN ({', '.join('?' * len(ids))})", ids
    return f"{column} IN (SELECT unnest(?::BIGINT[]))", [ids]


def resolve(con, target: Path, wanted) -> dict[str, tuple[int, ...]]:
    """cot_key -> the ids of the CoTs of ready datasets with that content, for the keys of
    ``wanted`` (a frame of cot_key, cot_id hint, n_chars), on the read connection ``con``.

    A key's hint is checked first (the CoT it was labelled on, if it still has that content);
    otherwise every CoT of the same length is hashed and compared. Cached per store until a
    dataset is added or dropped; a key no CoT has is remembered as such until then."""
    import polars as pl

    with _lock:
        res = _resolutions.setdefault(str(target), _Resolution())
        stamp = _store_stamp(target)
        if stamp != res.stamp:
            fingerprint = con.execute(
                "SELECT coalesce(string_agg(dataset_id || ':' || created_at || ':' || coalesce(content_hash, '') || ':' || n_cots, ',' "
                "ORDER BY dataset_id), '') FROM datasets WHERE status = 'ready'").fetchall()[0][0]
            if fingerprint != res.fingerprint:
                res.found, res.fingerprint = {}, fingerprint
                res.generation += 1
            res.stamp = stamp
        todo = wanted.filter(~pl.col("cot_key").is_in(list(res.found))).unique("cot_key", keep="last")
        if todo.height == 0:
            return res.found
        found: dict[str, list[int]] = {}
        hints = todo.filter(pl.col("cot_id").is_not_null())
        if hints.height:
            where, params = ids_in("c.cot_id", hints["cot_id"].to_list())
            rows = con.execute(
                f"SELECT c.cot_id, {KEY_SQL} FROM cots c JOIN problems p ON p.problem_id = c.problem_id "
                f"JOIN datasets d ON d.dataset_id = c.dataset_id WHERE d.status = 'ready' AND {where}", params).fetchall()
            by_id = dict(rows)
            for key, hint in hints.select("cot_key", "cot_id").iter_rows():
                if by_id.get(hint) == key:
                    found[key] = [hint]
        missing = todo.filter(~pl.col("cot_key").is_in(list(found)))
        if missing.height:
            rows = con.execute(
                "WITH cand AS MATERIALIZED (SELECT c.cot_id, c.problem_id, c.full_text FROM cots c "
                "JOIN datasets d ON d.dataset_id = c.dataset_id WHERE d.status = 'ready' "
                "AND c.n_chars IN (SELECT unnest(?::INTEGER[]))) "
                f"SELECT c.cot_id, {KEY_SQL} AS cot_key FROM cand c JOIN problems p ON p.problem_id = c.problem_id "
                "WHERE cot_key IN (SELECT unnest(?::VARCHAR[])) ORDER BY c.cot_id",
                [missing["n_chars"].unique().to_list(), missing["cot_key"].to_list()]).fetchall()
            for cot_id, key in rows:
                found.setdefault(key, []).append(cot_id)
        for key in todo["cot_key"].to_list():
            res.found[key] = tuple(found.get(key, ()))
        res.generation += 1
        return res.found


# ---------------------------------------------------------------------------- relations for DuckDB


def _json(text: str | None):
    return None if text is None else json.loads(text)


_relations: dict[str, tuple[tuple, dict]] = {}  # labels path -> ((seq, generation), tables)


def _schemas():
    import pyarrow as pa

    return {
        "scores": pa.schema([("cot_id", pa.int64()), ("source_id", pa.int32()), ("metric", pa.string()),
                             ("value", pa.float64()), ("raw", pa.string()), ("error", pa.string())]),
        "score_sources": pa.schema([("source_id", pa.int32()), ("name", pa.string()), ("kind", pa.string()),
                                    ("model", pa.string()), ("template_hash", pa.string()), ("params", pa.string()),
                                    ("created_at", pa.timestamp("us"))]),
        "steps": pa.schema([("cot_id", pa.int64()), ("source_id", pa.int32()), ("step_idx", pa.int32()),
                            ("char_start", pa.int32()), ("char_end", pa.int32()), ("n_tokens", pa.int32()),
                            ("role", pa.string()), ("micro_actions", pa.list_(pa.string())), ("wrong", pa.bool_())]),
        "labels": pa.schema([("cot_id", pa.int64()), ("annotator", pa.string()), ("source", pa.string()),
                             ("kind", pa.string()), ("field", pa.string()), ("value", pa.float64()),
                             ("text", pa.string()), ("labelled_at", pa.timestamp("us")), ("cot_key", pa.string()),
                             ("event_id", pa.string())]),
        "label_events": pa.schema([("seq", pa.int64()), ("event_id", pa.string()), ("labelled_at", pa.timestamp("us")),
                                   ("annotator", pa.string()), ("cot_key", pa.string()), ("field", pa.string()),
                                   ("value", pa.string()), ("cot_id_hint", pa.int64()), ("n_chars", pa.int64()),
                                   ("context", pa.string())]),
    }


def _timestamp(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")


def label_kind(field_name: str) -> str:
    """metric | tag | flag | note | step_role, from a field name."""
    if field_name in ("flag", "note"):
        return field_name
    if field_name.startswith("tag:"):
        return "tag"
    if field_name.startswith("step:"):
        return "step_role"
    return "metric"


def _label_rows(snap: Snapshot, found: dict) -> list[dict]:
    """The current labels that say something (a cleared field or a removed tag is no label),
    one row per CoT the key resolves to (cot_id None when it resolves to none)."""
    rows = []
    for event in snap.current.iter_rows(named=True):
        value = _json(event["value"])
        if value is None or value is False or value == "":
            continue
        kind = label_kind(event["field"])
        number = float(value) if kind == "metric" else 1.0
        text = None if kind == "metric" else event["field"][4:] if kind == "tag" else str(value)
        for cot_id in found.get(event["cot_key"]) or (None,):
            rows.append({"cot_id": cot_id, "annotator": event["annotator"], "source": source_name(event["annotator"]),
                         "kind": kind, "field": event["field"], "value": number, "text": text,
                         "labelled_at": _timestamp(event["at"]), "cot_key": event["cot_key"], "event_id": event["event_id"],
                         "context": event["context"]})
    return rows


def build_tables(snap: Snapshot, found: dict) -> dict:
    """The Arrow tables a read connection gets: scores, score_sources, steps (human rows only),
    labels, label_events."""
    import polars as pl
    import pyarrow as pa

    schemas = _schemas()
    labels = _label_rows(snap, found)
    scores, steps = [], {}
    marks: dict[tuple[int, str], list[str]] = {}  # (cot, metric) -> annotators, for COMBINED
    for row in labels:
        if row["cot_id"] is None:
            continue
        source_id = snap.sources[row["annotator"]]
        kind = row["kind"]
        if kind == "step_role":
            start, end = (int(v) for v in row["field"][5:].split("-"))
            steps.setdefault((row["cot_id"], source_id), []).append((start, end, row["text"]))
            continue
        metric = {"metric": row["field"], "tag": row["field"], "flag": f"flag:{row['text']}", "note": "note"}[kind]
        scores.append((row["cot_id"], source_id, metric, row["value"], row["text"] if kind == "note" else None, None))
        if kind != "metric":
            marks.setdefault((row["cot_id"], metric), []).append(row["annotator"])
    for (cot_id, metric), who in marks.items():
        scores.append((cot_id, HUMAN_SOURCE_BASE, metric, 1.0, ", ".join(sorted(set(who))), None))
    step_rows = []
    for (cot_id, source_id), spans in steps.items():
        for i, (start, end, role) in enumerate(sorted(spans)):
            step_rows.append((cot_id, source_id, i, start, end, None, role, None, None))
    first_at = dict(snap.events.group_by("annotator").agg(pl.col("at").min()).rows()) if snap.events.height else {}
    sources = [(HUMAN_SOURCE_BASE, COMBINED, "human", None, None, json.dumps({"annotators": sorted(snap.sources)}),
                _timestamp(min(first_at.values())) if first_at else None)]
    sources += [(sid, source_name(a), "human", None, None, json.dumps({"annotator": a}), _timestamp(first_at[a]))
                for a, sid in snap.sources.items()]

    def table(name, tuples):
        schema = schemas[name]
        columns = list(zip(*tuples)) if tuples else [[] for _ in schema]
        return pa.Table.from_arrays([pa.array(list(c), type=f.type) for c, f in zip(columns, schema)], schema=schema)

    events = snap.events
    return {
        "scores": table("scores", scores),
        "score_sources": table("score_sources", sources),
        "steps": table("steps", step_rows),
        "labels": table("labels", [tuple(r[f.name] for f in schemas["labels"]) for r in labels]),
        "label_events": table("label_events", [
            (r["seq"], r["event_id"], _timestamp(r["at"]), r["annotator"], r["cot_key"], r["field"], r["value"],
             r["cot_id"], r["n_chars"], r["context"]) for r in events.iter_rows(named=True)]),
    }


# The store's columns of each shadowed table, in order.
_COLUMNS = {
    "scores": "cot_id, source_id, metric, value, raw, error",
    "score_sources": "source_id, name, kind, model, template_hash, params, created_at",
    "steps": "cot_id, source_id, step_idx, char_start, char_end, n_tokens, role, micro_actions, wrong",
}


def tables_for(con, target: Path) -> dict | None:
    """The label tables for the store at ``target`` (resolving keys on ``con``), or None when
    it has no labels file."""
    path = path_for(target)
    snap = snapshot(path)
    if snap is None:
        return None
    with _lock:
        res = _resolutions.get(str(target))
        cached = _relations.get(str(path))
        if (cached is not None and res is not None and cached[0] == (snap.seq, res.generation, res.fingerprint)
                and res.stamp == _store_stamp(target)):
            return cached[1]  # nothing new: no label added, no dataset added or dropped
        found = resolve(con, target, snap.current.select("cot_key", "cot_id", "n_chars"))
        res = _resolutions[str(target)]
        key = (snap.seq, res.generation, res.fingerprint)
        if cached is None or cached[0] != key:
            cached = _relations[str(path)] = (key, build_tables(snap, found))
        return cached[1]


_catalogs: dict[str, str] = {}  # store file -> its catalog name in a connection


def attach(con, target: Path) -> None:
    """Make the labels of the store at ``target`` part of the read-only connection ``con``:
    temporary views ``scores``, ``score_sources``, ``steps`` (the store's rows plus the labels'),
    ``labels`` and ``label_events``. Nothing happens when the store has no labels file."""
    if not path_for(target).exists():
        return
    tables = tables_for(con, target)
    if tables is None:
        return
    catalog = _catalogs.get(str(target))
    if catalog is None:
        catalog = _catalogs[str(target)] = con.execute("SELECT current_database()").fetchall()[0][0].replace('"', '""')
    for name, table in tables.items():
        con.register(f"__labels_{name}", table)
    for name, columns in _COLUMNS.items():
        try:
            con.execute(f'CREATE TEMP VIEW {name} AS SELECT {columns} FROM "{catalog}".main.{name} '
                        f"UNION ALL SELECT {columns} FROM __labels_{name}").fetchall()
        except Exception as exc:  # a store from before steps existed (read-only: cannot create it)
            if "does not exist" not in str(exc):
                raise
    for name in ("labels", "label_events"):
        con.execute(f"CREATE TEMP VIEW {name} AS SELECT * FROM __labels_{name}").fetchall()
