"""Full-text search over every CoT and question, through a tantivy index beside the store.

DuckDB's ``fts`` extension is not in the wheel and cannot be downloaded offline, and a substring
scan reads all the text on every search (seconds at 2M CoTs). tantivy (a Rust, Lucene-like
engine; pip ``tantivy``) keeps an inverted index with positions, so a phrase query touches only
the postings of its words.

Layout: ``<store file>.search/`` (or ``$THOUGHTSCOPE_SEARCH_INDEX``, or an explicit ``path=``)
holds the tantivy index and ``manifest.json``. One document per CoT (``cot_id``,
``problem_id`` and its ``full_text``) and one per problem (``problem_id`` + its question), each
with its ``dataset_id``; text is indexed with positions and not stored (the store has it).
A search answers with CoT ids only (its text matches, or its problem's question does), so
the SQL side is one semi-join on ``cot_id``.

Semantics (not those of the substring scan): the default tokenizer splits on every character
that is not a letter or digit and lowercases, so a search matches whole words, case-insensitive,
punctuation ignored: ``"let me check"`` matches "Let me check," and "let me, check" but not
"let me checking"; ``wait`` matches "Wait," but not "waiting". Words over 40 bytes are not
indexed. A search whose text has no word (only punctuation) falls back to the substring scan.

The index is built per dataset, in one tantivy commit each (delete the dataset's documents,
add them all, commit), then the manifest records the dataset's fingerprint. A killed build
loses only the dataset it was on, and the next ``build`` redoes just that one. A dataset whose
fingerprint changed (dropped and re-ingested) is rebuilt; one gone from the store is deleted.
Queries use the index only when it covers every ready dataset (``coverage``); otherwise
callers fall back to the substring scan, and say so.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from core import store
from core.progress import ProgressFn

SCHEMA_VERSION = 2
BATCH_ROWS = 20_000  # CoTs read per short read-only connection while building
WRITER_HEAP_BYTES = 256_000_000  # tantivy flushes a segment to disk when its heap fills
HIT_CACHE_FILES = 64  # hit files kept per index (each search's ids, reused by the SQL)


class IndexBusy(RuntimeError):
    """Another process is writing the index (tantivy's writer lock)."""


# ---------------------------------------------------------------------------- locations


def index_dir(db=None, path: str | os.PathLike | None = None) -> Path:
    """The index folder of store ``db``: ``path`` if given, else $THOUGHTSCOPE_SEARCH_INDEX,
    else ``<store file>.search`` beside the store (so every store has its own)."""
    chosen = path or os.environ.get("THOUGHTSCOPE_SEARCH_INDEX")
    if chosen:
        return Path(chosen).expanduser().resolve()
    target = store.db_path(db)
    return target.with_name(target.name + ".search")


def _schema():
    import tantivy

    sb = tantivy.SchemaBuilder()
    sb.add_unsigned_field("cot_id", fast=True)
    # On CoT documents too: a question's hits become its CoTs inside the index.
    sb.add_unsigned_field("problem_id", indexed=True, fast=True)
    sb.add_unsigned_field("dataset_id", indexed=True)
    sb.add_text_field("text", stored=False)  # a CoT's full_text, with positions
    sb.add_text_field("question", stored=False)  # a problem's question, with positions
    return sb.build()


# Opened indexes per folder: opening costs a few ms, and a reader reload picks up new commits.
_open_lock = threading.Lock()
_open_indexes: dict[Path, object] = {}


def _open(folder: Path, *, create: bool = False):
    import tantivy

    with _open_lock:
        index = _open_indexes.get(folder)
        if index is None:
            if not (folder / "meta.json").exists():
                if not create:
                    return None
                folder.mkdir(parents=True, exist_ok=True)
            index = tantivy.Index(_schema(), path=str(folder), reuse=True)
            _open_indexes[folder] = index
    return index


# ---------------------------------------------------------------------------- manifest


def read_manifest(folder: Path) -> dict:
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"schema": SCHEMA_VERSION, "generation": 0, "datasets": {}}
    if manifest.get("schema") != SCHEMA_VERSION:
        return {"schema": SCHEMA_VERSION, "generation": manifest.get("generation", 0), "datasets": {}}
    return manifest


def _write_manifest(folder: Path, manifest: dict) -> None:
    tmp = folder / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, folder / "manifest.json")  # atomic: readers see the old or the new one


_ready_cache: dict[Path, tuple[tuple, dict]] = {}


def _store_signature(target: Path) -> tuple:
    """Changes whenever the store is written (its file or its write-ahead log)."""
    sig = []
    for f in (target, target.with_name(target.name + ".wal")):
        try:
            st = f.stat()
            sig.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except FileNotFoundError:
            sig.append(None)
    return tuple(sig)


def _ready_datasets(db) -> dict[str, dict]:
    """Ready datasets by id (as a string, like the manifest's keys) with their fingerprint:
    a dataset dropped and ingested again gets a new one, so its documents are rebuilt.
    Cached until the store file changes: every search asks, and a connection costs ~50 ms."""
    target = store.db_path(db)
    signature = _store_signature(target)
    cached = _ready_cache.get(target)
    if cached and cached[0] == signature:
        return cached[1]
    ready = _read_ready_datasets(db)
    _ready_cache[target] = (signature, ready)
    return ready


def _read_ready_datasets(db) -> dict[str, dict]:
    rows = store.read_rows(
        "SELECT dataset_id, name, content_hash, n_cots, created_at FROM datasets WHERE status = 'ready' "
        "ORDER BY dataset_id", db=db,
    )
    return {
        str(r[0]): {"name": r[1], "n_cots": r[3], "content_hash": r[2], "fingerprint": f"{r[2]}|{r[3]}|{r[4]}"}
        for r in rows
    }


@dataclass(frozen=True)
class Coverage:
    """Whether the index can answer searches for the store as it is now."""

    folder: Path
    exists: bool
    covered: tuple[int, ...]  # ready datasets indexed with their current fingerprint
    missing: tuple[int, ...]  # ready datasets not (or no longer) indexed
    generation: int

    @property
    def complete(self) -> bool:
        return self.exists and not self.missing

    def describe(self) -> str:
        if self.complete:
            return f"full-text index ({len(self.covered)} dataset(s))"
        if not self.exists:
            return "no search index yet (run `python -m core index`): substring scan"
        return (f"search index is missing {len(self.missing)} dataset(s) (run `python -m core index`): "
                "substring scan")


def coverage(db=None, *, path=None) -> Coverage:
    folder = index_dir(db, path)
    manifest = read_manifest(folder)
    exists = (folder / "meta.json").exists() and (folder / "manifest.json").exists()
    if not exists:  # without an index, do not even open the store
        return Coverage(folder, False, (), (), 0)
    ready = _ready_datasets(db)
    indexed = manifest["datasets"]
    covered = tuple(int(d) for d, info in ready.items() if indexed.get(d, {}).get("fingerprint") == info["fingerprint"])
    missing = tuple(int(d) for d in ready if int(d) not in covered)
    return Coverage(folder, exists, covered, missing, int(manifest.get("generation", 0)))


# ---------------------------------------------------------------------------- building


def _add_rows(writer, rows: list[tuple], id_field: str, text_field: str, dataset_id: int) -> int:
    """Rows are (id, text) for problems, (cot_id, text, problem_id) for CoTs."""
    import tantivy

    for row in rows:
        doc = tantivy.Document()
        doc.add_unsigned(id_field, int(row[0]))  # explicit u64: a plain int would be taken as i64
        if len(row) > 2:
            doc.add_unsigned("problem_id", int(row[2]))
        doc.add_unsigned("dataset_id", int(dataset_id))
        doc.add_text(text_field, row[1] or "")
        writer.add_document(doc)
    return len(rows)


def _stream(db, table: str, id_col: str, text_col: str, dataset_id: int, batch_rows: int, extra: str = ""):
    """(id, text) batches of one dataset, each read on its own short read-only connection so a
    long build never locks an ingest out. Ids are dense ranges per dataset (see store.ID_SHIFT)."""
    lo, hi = store.read_rows(
        f"SELECT min({id_col}), max({id_col}) FROM {table} WHERE dataset_id = ?", [dataset_id], db=db,
    )[0]
    if lo is None:
        return
    start = lo
    while start <= hi:
        rows = store.read_rows(
            f"SELECT {id_col}, {text_col}{extra} FROM {table} WHERE dataset_id = ? AND {id_col} >= ? AND {id_col} < ?",
            [dataset_id, start, start + batch_rows], db=db,
        )
        start += batch_rows
        if rows:
            yield rows


def _drop_if_old_schema(folder: Path) -> None:
    """An index written by another version of this module is rebuilt from scratch."""
    try:
        old = json.loads((folder / "manifest.json").read_text()).get("schema")
    except (FileNotFoundError, json.JSONDecodeError):
        return
    if old != SCHEMA_VERSION:
        import shutil

        with _open_lock:
            _open_indexes.pop(folder, None)
        shutil.rmtree(folder)


def _dataset_query(index, dataset_id: int):
    """All documents of a dataset. (A query, not delete_documents_by_term: that one takes a
    plain int as an i64 term, which never matches this u64 field.)"""
    import tantivy

    return tantivy.Query.term_query(index.schema, "dataset_id", dataset_id)


def build(
    db=None,
    *,
    path=None,
    batch_rows: int = BATCH_ROWS,
    heap_bytes: int = WRITER_HEAP_BYTES,
    threads: int = 0,
    progress: ProgressFn | None = None,
    after_dataset: Callable[[int], None] | None = None,
) -> dict:
    """Bring the index up to date with the store's ready datasets; idempotent and resumable.

    Returns what it did: datasets indexed and removed, documents, text bytes, seconds.
    ``after_dataset`` (tests) runs after each dataset's commit, before the manifest records it.
    """
    folder = index_dir(db, path)
    started = time.perf_counter()
    _drop_if_old_schema(folder)
    index = _open(folder, create=True)
    manifest = read_manifest(folder)
    if not (folder / "manifest.json").exists():
        _write_manifest(folder, manifest)
    ready = _ready_datasets(db)
    indexed = manifest["datasets"]
    stale = [d for d in indexed if d not in ready or indexed[d]["fingerprint"] != ready[d]["fingerprint"]]
    todo = [d for d in ready if indexed.get(d, {}).get("fingerprint") != ready[d]["fingerprint"]]
    result = {"index": str(folder), "indexed": [], "removed": [], "cots": 0, "problems": 0, "text_bytes": 0}
    if not stale and not todo:
        result["seconds"] = time.perf_counter() - started
        return result
    try:
        writer = index.writer(heap_size=heap_bytes, num_threads=threads)
    except ValueError as exc:
        if "lock" in str(exc).lower():
            raise IndexBusy(f"The search index {folder} is being written by another process; "
                            "it will be brought up to date by that one.") from exc
        raise
    try:
        for d in stale:  # gone from the store (or changed): its documents go first
            writer.delete_documents_by_query(_dataset_query(index, int(d)))
            if d not in ready:
                result["removed"].append(int(d))
        if stale:
            writer.commit()
            for d in stale:
                indexed.pop(d, None)
            manifest["generation"] = int(manifest.get("generation", 0)) + 1
            _write_manifest(folder, manifest)
        for d in todo:
            dataset_id = int(d)
            # Documents a killed earlier build committed for it (without its manifest entry).
            writer.delete_documents_by_query(_dataset_query(index, dataset_id))
            total = ready[d]["n_cots"]
            done = 0
            for rows in _stream(db, "cots", "cot_id", "full_text", dataset_id, batch_rows, ", problem_id"):
                done += _add_rows(writer, rows, "cot_id", "text", dataset_id)
                result["text_bytes"] += sum(len((r[1] or "").encode()) for r in rows)
                if progress:
                    progress("index", done, total)
            result["cots"] += done
            for rows in _stream(db, "problems", "problem_id", "question", dataset_id, batch_rows):
                result["problems"] += _add_rows(writer, rows, "problem_id", "question", dataset_id)
                result["text_bytes"] += sum(len((t or "").encode()) for _, t in rows)
            writer.commit()  # the dataset becomes searchable all at once
            if after_dataset:
                after_dataset(dataset_id)
            indexed[d] = {"fingerprint": ready[d]["fingerprint"], "name": ready[d]["name"], "cots": done,
                          "content_hash": ready[d]["content_hash"], "n_cots": ready[d]["n_cots"]}
            manifest["generation"] = int(manifest.get("generation", 0)) + 1
            _write_manifest(folder, manifest)
            result["indexed"].append(dataset_id)
        writer.wait_merging_threads()
    finally:
        del writer  # releases tantivy's writer lock
    index.reload()
    _clear_hit_cache(folder)
    result["seconds"] = time.perf_counter() - started
    return result


def build_quietly(db=None, *, log: Callable[[str], None] | None = None) -> dict | None:
    """The post-ingest hook: bring the index up to date; a failure is reported, never raised
    (searches fall back to the substring scan until ``python -m core index`` is run)."""
    try:
        result = build(db)
    except IndexBusy as exc:
        if log:
            log(str(exc))
        return None
    except Exception as exc:  # noqa: BLE001 - the ingest itself succeeded; say why search is slower
        if log:
            log(f"search index not updated ({type(exc).__name__}: {exc}); run `python -m core index`")
        return None
    if log and (result["indexed"] or result["removed"]):
        log(f"search index: {result['cots']:,} CoTs of {len(result['indexed'])} dataset(s) indexed "
            f"in {result['seconds']:.1f} s")
    return result


# ---------------------------------------------------------------------------- searching


def words(phrase: str) -> list[str]:
    """The phrase's words as the index sees them (tantivy's default tokenizer: split on
    non-alphanumerics, drop words over 40 bytes, lowercase)."""
    return _analyzer().analyze(phrase) if phrase else []


_analyzer_cache: list = []


def _analyzer():
    import tantivy

    if not _analyzer_cache:
        _analyzer_cache.append(
            tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
            .filter(tantivy.Filter.remove_long(40))
            .filter(tantivy.Filter.lowercase())
            .build()
        )
    return _analyzer_cache[0]


def _query(index, field: str, tokens: list[str]):
    import tantivy

    schema = index.schema
    if len(tokens) == 1:
        return tantivy.Query.term_query(schema, field, tokens[0])
    return tantivy.Query.phrase_query(schema, field, tokens)


def _ids(searcher, query, id_field: str) -> list[int]:
    """Every matching document's ``id_field``, no scoring (const score) and no stored fields."""
    import tantivy

    n = searcher.num_docs
    if n == 0:
        return []
    hits = searcher.search(tantivy.Query.const_score_query(query, 1.0), limit=n, count=False).hits
    return searcher.fast_field_values(id_field, [address for _, address in hits])


def _ids_or_complement(searcher, query, universe, id_field: str) -> tuple[list[int], bool, int]:
    """(ids, whether they are the complement within ``universe``, how many match). Handing ids
    to Python costs about a microsecond each, so when over half of the universe matches
    (e.g. "the"), the ones that do not are listed instead: at most half, whatever the phrase."""
    n_match = searcher.search(query, limit=1, count=True).count
    n_docs = searcher.search(universe, limit=1, count=True).count
    if n_match * 2 > n_docs:
        return _ids(searcher, universe.and_must_not_match(query), id_field), True, n_match
    return _ids(searcher, query, id_field), False, n_match


@dataclass(frozen=True)
class Hits:
    """A search's answer: the CoTs whose text or whose problem's question contains the phrase,
    as their ids, or (when over half match) as the ids of the CoTs that do not."""

    cot_ids: list[int]
    complement: bool
    n_cots: int  # CoTs that match (whatever the list holds)


def search(phrase: str, db=None, *, path=None) -> Hits | None:
    """Search the index; None when the phrase has no word or there is no index."""
    import tantivy

    tokens = words(phrase)
    folder = index_dir(db, path)
    index = _open(folder)
    if not tokens or index is None:
        return None
    index.reload()
    searcher = index.searcher()
    cot_docs = tantivy.Query.exists_query("cot_id")
    problem_docs = tantivy.Query.exists_query("problem_id").and_must_not_match(cot_docs)
    query = _query(index, "text", tokens)
    # ... or their problem's question matches: the problems' ids (or the complement's) become
    # a term set on the CoT documents' problem_id.
    problem_ids, problems_complement, _ = _ids_or_complement(
        searcher, _query(index, "question", tokens), problem_docs, "problem_id")
    if problems_complement:
        of_matching_problems = (cot_docs.and_must_not_match(
            tantivy.Query.term_set_query(index.schema, "problem_id", problem_ids)) if problem_ids else cot_docs)
        query = cot_docs.and_must_match(query.or_should_match(of_matching_problems))
    elif problem_ids:
        query = cot_docs.and_must_match(
            query.or_should_match(tantivy.Query.term_set_query(index.schema, "problem_id", problem_ids)))
    cot_ids, complement, n_match = _ids_or_complement(searcher, query, cot_docs, "cot_id")
    return Hits(cot_ids, complement, n_match)


def matching_ids(phrase: str, db=None, *, path=None, limit: int | None = None) -> list[int] | None:
    """Ids of the CoTs whose text, or whose problem's question, contains ``phrase`` (as
    words, see the module doc), in ready datasets, ascending; None when the index cannot
    answer (no index, not covering every ready dataset, no word in the phrase)."""
    if not coverage(db, path=path).complete:
        return None
    hit_sql = hit_filter_sql(phrase, db, path=path)
    if hit_sql is None:
        return None
    condition, params = hit_sql
    sql = (
        "SELECT c.cot_id FROM cots c JOIN datasets d ON d.dataset_id = c.dataset_id "
        f"WHERE d.status = 'ready' AND {condition} ORDER BY c.cot_id"
    )
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return [r[0] for r in store.read_rows(sql, params, db=db)]


# ---------------------------------------------------------------------------- hits as SQL


def _clear_hit_cache(folder: Path) -> None:
    cache = folder / "hits"
    if cache.exists():
        for f in cache.iterdir():
            f.unlink(missing_ok=True)


def _write_ids(target: Path, column: str, ids: list[int]) -> None:
    tmp = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    pq.write_table(pa.table({column: pa.array(ids, pa.int64())}), tmp, compression="zstd")
    os.replace(tmp, target)  # atomic: a concurrent search of the same phrase reads a whole file


def hit_files(phrase: str, db=None, *, path=None) -> tuple[Path, bool, tuple[int, ...]] | None:
    """A Parquet file of a search's CoT ids, whether they are the complement, and the datasets
    the index covers; cached per phrase and index generation, so the count, the table and
    the charts of one view search once. None when the index cannot answer."""
    cov = coverage(db, path=path)
    if not cov.complete or not words(phrase):
        return None
    key = hashlib.sha256(f"{cov.generation}\0{' '.join(words(phrase))}".encode()).hexdigest()[:24]
    cache = cov.folder / "hits"
    ids_file, meta_file = cache / f"{key}.parquet", cache / f"{key}.json"
    if meta_file.exists() and ids_file.exists():
        os.utime(meta_file)
        return ids_file, json.loads(meta_file.read_text())["complement"], cov.covered
    hits = search(phrase, db, path=path)
    if hits is None:
        return None
    cache.mkdir(parents=True, exist_ok=True)
    _write_ids(ids_file, "cot_id", hits.cot_ids)
    tmp = meta_file.with_name(f"{meta_file.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps({"phrase": phrase, "complement": hits.complement, "n_cots": hits.n_cots}))
    os.replace(tmp, meta_file)
    _trim_cache(cache)
    return ids_file, hits.complement, cov.covered


def _trim_cache(cache: Path) -> None:
    metas = sorted(cache.glob("*.json"), key=lambda p: p.stat().st_mtime)
    for meta in metas[:-HIT_CACHE_FILES]:
        meta.unlink(missing_ok=True)
        (cache / f"{meta.name[: -len('.json')]}.parquet").unlink(missing_ok=True)


def hit_filter_sql(phrase: str, db=None, *, path=None) -> tuple[str, list] | None:
    """A WHERE condition on CoTs ``c`` (and its params), true for the CoTs the phrase
    matches, through the index; None when the index cannot answer (use the substring scan).

    The ids travel as Parquet files read by ``read_parquet(?)``, so the condition is plain SQL
    that survives being embedded in any caller's query (selection, export, jobs). It holds for
    the datasets the index covered when it answered (one that became ready since matches
    nothing until indexed). An uncorrelated check, run once per query, makes the query fail
    with a clear message if it runs on another store than the one searched (a caller that
    built the SQL for one store and ran it on another): a substring fallback inside the same
    SQL would make DuckDB read every CoT's text even when the index answers."""
    files = hit_files(phrase, db, path=path)
    if files is None:
        return None
    ids_file, complement, covered = files
    if not covered:  # no ready dataset
        return "FALSE", []
    manifest = read_manifest(index_dir(db, path))["datasets"]
    guards, params = [], []
    for d in covered:
        info = manifest.get(str(d), {})
        guards.append("(sd.dataset_id = ? AND sd.content_hash IS NOT DISTINCT FROM ? AND sd.n_cots = ?)")
        params += [int(d), info.get("content_hash"), info.get("n_cots")]
    message = (f"The search index {index_dir(db, path)} does not belong to the store this query ran on; "
               "build the query with that store (matching_sql(..., db=...)).")
    check = (
        f"(SELECT CASE WHEN count(*) = {len(covered)} THEN TRUE ELSE error(?) END "
        f"FROM datasets sd WHERE {' OR '.join(guards)})"
    )
    params.insert(0, message)  # error(?) comes before the WHERE in the SQL text
    condition = (
        f"({check} AND c.dataset_id IN ({', '.join(str(int(d)) for d in covered)}) AND "
        f"c.cot_id {'NOT IN' if complement else 'IN'} (SELECT cot_id FROM read_parquet(?)))"
    )
    return condition, [*params, str(ids_file)]
