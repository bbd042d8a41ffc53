"""Ingest: read any supported input into the store without ever locking readers out for long.

Stages:
1. hash the input; a content hash already in the store means nothing to do;
2. read and validate every row, deriving the per-CoT signals, into Parquet files in a staging
   folder (the store is not touched, so bad input leaves it exactly as it was);
3. load the staged chunks, about one DuckDB row group (LOAD_COTS) per transaction, under a
   dataset row marked ``loading`` (invisible to every query), then flip it to ``ready`` in
   one last short transaction;
4. verify answers with math-verify and count tokens, each its own resumable stage
   (core.verify, core.tokens), so the data can be browsed while they fill in.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from core import identity, store
from core.markers import markers_hash
from core.formats import (
    MERGING_FORMATS,
    ReadOptions,
    detect_format,
    input_files,
    read_records,
    run_metrics_of,
    source_kind,
)
from core.progress import ProgressFn, process_alive
from core.records import IngestError, ProblemRecord
from core.text import (
    MarkerCounter,
    count_paragraphs,
    extract_answer,
    load_markers,
    split_thinking,
    thinking_unclosed,
)

CHUNK_COTS = 5000  # CoTs per staged Parquet chunk (bounds the read pass's memory)
LOAD_COTS = 122_880  # CoTs per load transaction, at least: one DuckDB row group

PROBLEM_SCHEMA = pa.schema([
    ("problem_id", pa.int64()), ("dataset_id", pa.int32()), ("problem_key", pa.string()),
    ("benchmark", pa.string()), ("question", pa.string()), ("reference_answer", pa.string()),
    ("reference_solution", pa.string()), ("extra", pa.string()),
])
COT_SCHEMA = pa.schema([
    ("cot_id", pa.int64()), ("problem_id", pa.int64()), ("dataset_id", pa.int32()),
    ("model", pa.string()), ("sample_idx", pa.int32()), ("thinking", pa.string()),
    ("solution", pa.string()), ("full_text", pa.string()), ("thinking_unclosed", pa.bool_()),
    ("truncated", pa.bool_()), ("finish_reason", pa.string()), ("answer", pa.string()),
    ("n_chars", pa.int32()), ("n_paragraphs", pa.int32()), ("n_reflections", pa.int32()),
    ("reflections", pa.map_(pa.string(), pa.int32())), ("extra", pa.string()),
])
SCORE_SCHEMA = pa.schema([
    ("cot_id", pa.int64()), ("source", pa.string()), ("kind", pa.string()),
    ("metric", pa.string()), ("value", pa.float64()), ("raw", pa.string()),
])


@dataclass
class IngestResult:
    dataset_id: int
    name: str
    format: str
    problems: int
    cots: int
    skipped_rows: int = 0
    already_present: bool = False
    bad_rows_report: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    name_from: str | None = None  # how a name not given was chosen (None: it was given)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# Folder names that say nothing about what a harness tree holds: a tree named so is named
# after the nearest folder above it that says more.
_GENERIC_FOLDERS = {"outputs", "output", "out", "results", "result", "eval", "evals", "evaluation", "runs", "data", ""}


def default_name(source: str, fmt: str, files: list[Path]) -> tuple[str, str]:
    """A dataset name for an ingest without ``--name``, and how it was chosen.

    A file is named by its stem (``aime24_test.jsonl``: ``aime24_test``); a hub id by itself
    (``/`` becomes ``__``). A Qwen2.5-Math harness tree (``outputs/``) by the nearest folder above
    it that is not a generic one (``outputs``, ``results``, ``eval``, ...:
    ``qwen25_math_eval/outputs`` gives ``qwen25_math_eval``), else by the benchmarks it holds
    (``aime24+math500 eval``)."""
    path = Path(source)
    if not path.exists():
        return source.replace("/", "__"), "the hub id"
    if path.is_dir() and fmt == "qwen_eval" and path.resolve().name.lower() in _GENERIC_FOLDERS:
        for parent in path.resolve().parents:
            if parent.name.lower() not in _GENERIC_FOLDERS:
                return parent.name, f"the folder that holds {path.resolve().name}/"
        from core.formats import qwen_run_identity

        benches = sorted({qwen_run_identity(path, f)[1] for f in files})
        return "+".join(benches) + " eval", "the benchmarks in the tree"
    return path.stem, "the file name" if path.is_file() else "the folder name"


def content_hash(source: str, files: list[Path], opts: ReadOptions, fmt: str) -> str:
    """sha256 over the input bytes (relative names included for a folder) and the options
    that change what is stored, so the same file ingested with another mapping is new."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": fmt, "mapping": opts.mapping, "model": opts.model, "split": opts.split}, sort_keys=True).encode())
    root = Path(source)
    if not files:  # hub id: the id names the content
        digest.update(source.encode())
    for file in files:
        digest.update(str(file.relative_to(root) if root.is_dir() else file.name).encode())
        with open(file, "rb") as fh:
            while chunk := fh.read(8 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _json_or_none(value: dict) -> str | None:
    if not value:
        return None
    return json.dumps(value, ensure_ascii=False, default=str)


class _Stager:
    """Writes problems, CoTs and labels to Parquet chunks in a staging folder."""

    def __init__(self, folder: Path, dataset_id: int, markers: MarkerCounter):
        self.folder = folder
        self.dataset_id = dataset_id
        self.base = dataset_id << store.ID_SHIFT
        self.markers = markers
        self.problems: dict[str, tuple[int, str, str, int]] = {}  # key -> (id, question, file, line)
        # (problem key, model) -> sample indices taken; kept only for the formats whose rows
        # merge into problems read before (eval runs, one-CoT-per-row files)
        self.samples: dict[tuple, set[int]] = {}
        self.n_cots = 0
        self.chunk = 0
        self.chunk_cots: list[int] = []  # CoTs in each staged chunk
        self._reset()

    def _reset(self):
        # Column lists, turned into Arrow arrays at flush: building a table column by column
        # costs about a sixteenth of pa.Table.from_pylist over row dicts (measured at 13.5k CoTs).
        self.p_cols: dict[str, list] = {name: [] for name in PROBLEM_SCHEMA.names}
        self.c_cols: dict[str, list] = {name: [] for name in COT_SCHEMA.names if name != "reflections"}
        self.c_marker_counts: list[int] = []  # len(markers.names) per CoT, in that order
        self.s_cols: dict[str, list] = {name: [] for name in SCORE_SCHEMA.names}

    @property
    def pending_cots(self) -> int:
        return len(self.c_cols["cot_id"])

    def add(self, rec: ProblemRecord, fmt: str) -> None:
        known = self.problems.get(rec.key)
        merging = fmt in MERGING_FORMATS
        if known is not None:
            problem_id, question, file, line = known
            if not merging:
                where = f"line {line}" if file == rec.file else f"{file}, line {line}"
                raise IngestError(rec.file, rec.line, "id", f"duplicate id '{rec.key}': already at {where}")
            if question != rec.question:
                raise IngestError(rec.file, rec.line, "question", f"problem '{rec.key}' was read before ({file}, line {line}) with a different question")
        else:
            problem_id = self.base + len(self.problems)
            self.problems[rec.key] = (problem_id, rec.question, rec.file, rec.line)
            p = self.p_cols
            p["problem_id"].append(problem_id)
            p["dataset_id"].append(self.dataset_id)
            p["problem_key"].append(rec.key)
            p["benchmark"].append(rec.benchmark)
            p["question"].append(rec.question)
            p["reference_answer"].append(rec.reference_answer)
            p["reference_solution"].append(rec.reference_solution)
            p["extra"].append(_json_or_none(rec.extra))
        for cot in rec.cots:
            if merging:
                self._assign_sample(rec, cot, fmt)
            self._add_cot(problem_id, cot)
        if self.pending_cots >= CHUNK_COTS:
            self.flush()

    def _assign_sample(self, rec: ProblemRecord, cot, fmt: str) -> None:
        """Give each CoT of a (problem, model) its own sample index.

        Several eval runs of one model (seeds) become samples 0..n-1 of each problem, which is
        what Mean@k and Pass@k need; a generic file without a sample column is numbered in
        order; a sample index given twice in a generic file is an input error."""
        taken = self.samples.setdefault((rec.key, cot.model), set())
        if cot.sample_idx in taken or cot.sample_idx < 0:
            if fmt == "generic" and cot.sample_idx >= 0:
                raise IngestError(rec.file, rec.line, "sample", f"duplicate CoT: problem '{rec.key}', model {cot.model!r}, sample {cot.sample_idx} was already read")
            if cot.sample_idx >= 0:  # keep the run's own index beside the renumbered one
                cot.extra["source_sample_idx"] = cot.sample_idx
            cot.sample_idx = max(taken, default=-1) + 1
        taken.add(cot.sample_idx)

    def _add_cot(self, problem_id: int, cot) -> None:
        cot_id = self.base + (1 << 31) + self.n_cots  # CoT ids sit above the problem ids
        self.n_cots += 1
        full_text = cot.full_text
        if cot.thinking is not None and cot.solution is not None:  # given (OmniThought)
            thinking, solution, unclosed = cot.thinking, cot.solution, thinking_unclosed(full_text)
        else:
            thinking, solution, unclosed = split_thinking(full_text)
            if cot.thinking is not None or cot.solution is not None:
                thinking = cot.thinking if cot.thinking is not None else thinking
                solution = cot.solution if cot.solution is not None else solution
        counts = self.markers.counts(full_text)
        finish = cot.finish_reason
        c = self.c_cols
        c["cot_id"].append(cot_id)
        c["problem_id"].append(problem_id)
        c["dataset_id"].append(self.dataset_id)
        c["model"].append(cot.model)
        c["sample_idx"].append(cot.sample_idx)
        c["thinking"].append(thinking)
        c["solution"].append(solution)
        c["full_text"].append(full_text)
        c["thinking_unclosed"].append(unclosed)
        c["truncated"].append(unclosed or (finish or "").lower() in ("length", "max_tokens", "truncated"))
        c["finish_reason"].append(finish)
        c["answer"].append(extract_answer(solution or full_text))
        c["n_chars"].append(len(full_text))
        c["n_paragraphs"].append(count_paragraphs(full_text))
        c["n_reflections"].append(sum(counts))
        c["extra"].append(_json_or_none(cot.extra))
        self.c_marker_counts.extend(counts)
        s = self.s_cols
        for label in cot.labels:
            s["cot_id"].append(cot_id)
            s["source"].append(label.source)
            s["kind"].append(label.kind)
            s["metric"].append(label.metric)
            s["value"].append(label.value)
            s["raw"].append(label.raw)

    def _reflections_array(self, n: int) -> pa.MapArray:
        names = self.markers.names
        k = len(names)
        return pa.MapArray.from_arrays(
            pa.array(range(0, n * k + 1, k), pa.int32()),
            pa.array(names * n, pa.string()),
            pa.array(self.c_marker_counts, pa.int32()),
        )

    def flush(self) -> None:
        n = self.pending_cots
        if not (self.p_cols["problem_id"] or n):
            return
        name = f"{self.chunk:06d}"
        cot_arrays = [
            self._reflections_array(n) if f.name == "reflections" else pa.array(self.c_cols[f.name], f.type)
            for f in COT_SCHEMA
        ]
        tables = {
            "problems": pa.Table.from_arrays([pa.array(self.p_cols[f.name], f.type) for f in PROBLEM_SCHEMA], schema=PROBLEM_SCHEMA),
            # each problem's question key (core.identity), so it meets its copies in other datasets
            "problem_keys": identity.key_columns(self.p_cols["problem_id"], self.p_cols["question"]),
            "cots": pa.Table.from_arrays(cot_arrays, schema=COT_SCHEMA),
            "scores": pa.Table.from_arrays([pa.array(self.s_cols[f.name], f.type) for f in SCORE_SCHEMA], schema=SCORE_SCHEMA),
        }
        for table, data in tables.items():
            (self.folder / table).mkdir(exist_ok=True)
            pq.write_table(data, self.folder / table / f"{name}.parquet", compression="zstd")
        self.chunk_cots.append(n)
        self.chunk += 1
        self._reset()


def clean_abandoned_loads(db=None) -> list[int]:
    """Remove datasets left 'loading' by an ingest whose process died (SIGKILL, power loss)."""
    rows = store.read_rows("SELECT dataset_id, options FROM datasets WHERE status = 'loading'", db=db)
    dead = [d for d, opts in rows if not process_alive(int(json.loads(opts or "{}").get("pid", 0) or 0))]
    for dataset_id in dead:
        store.drop_dataset(dataset_id, db=db)
        for staging in store.db_path(db).parent.glob(f"ingest-{dataset_id}-*"):
            shutil.rmtree(staging, ignore_errors=True)  # the killed run's staged Parquet
    return dead


def _allocate_dataset(db, name: str, source: str, fmt: str, digest: str, options: dict, generated: bool) -> tuple[int, int | None]:
    """Insert the invisible 'loading' dataset row; returns (new id, id of a ready twin)."""
    with store.connect(db, read_only=False) as con:
        con.execute("BEGIN")
        twin = con.execute(
            "SELECT dataset_id FROM datasets WHERE content_hash = ? AND status = 'ready'", [digest]
        ).fetchone()
        if twin:
            con.execute("ROLLBACK")
            return twin[0], twin[0]
        taken = con.execute("SELECT count(*) FROM datasets WHERE name = ?", [name]).fetchone()[0]
        if taken:
            con.execute("ROLLBACK")
            raise IngestError(source, None, None, f"a dataset named '{name}' is already in the store; choose another --name")
        dataset_id = con.execute("SELECT coalesce(max(dataset_id), 0) + 1 FROM datasets").fetchone()[0]
        con.execute(
            "INSERT INTO datasets (dataset_id, name, source, format, content_hash, status, generated, options) "
            "VALUES (?, ?, ?, ?, ?, 'loading', ?, ?)",
            [dataset_id, name, source, fmt, digest, generated, json.dumps(options)],
        )
        con.execute("COMMIT")
    return dataset_id, None


def _load_groups(folder: Path, chunks: int) -> list[list[str]]:
    """Consecutive staged chunks, grouped so that each group holds at least LOAD_COTS CoTs."""
    groups: list[list[str]] = [[]]
    held = 0
    for i in range(chunks):
        name = f"{i:06d}.parquet"
        if held >= LOAD_COTS:
            groups.append([])
            held = 0
        groups[-1].append(name)
        held += pq.read_metadata(folder / "cots" / name).num_rows
    return groups if groups[0] else []


def _load_chunks(db, folder: Path, dataset_id: int, chunks: int, progress: ProgressFn | None) -> None:
    """Load the staged chunks, one transaction per group of about a row group of CoTs.

    Every commit rewrites the table's last, partly filled row group; loading a whole row
    group a transaction instead of one 5,000-CoT chunk cut the load's CPU ~2x at 2M CoTs,
    while a reader waits for at most one group's insert."""
    sources = {}
    groups = _load_groups(folder, chunks)
    for done, names in enumerate(groups, start=1):
        files = {table: [str(folder / table / name) for name in names] for table in ("problems", "problem_keys", "cots", "scores")}
        with store.connect(db, read_only=False) as con:
            con.execute("BEGIN")
            con.execute("INSERT INTO problems SELECT * FROM read_parquet(?)", [files["problems"]])
            con.execute("INSERT INTO problem_keys SELECT * FROM read_parquet(?)", [files["problem_keys"]])
            con.execute(
                f"INSERT INTO cots ({', '.join(COT_SCHEMA.names)}) "
                "SELECT * FROM read_parquet(?)", [files["cots"]]
            )
            staged = con.execute(
                "SELECT DISTINCT source, kind FROM read_parquet(?)", [files["scores"]]
            ).fetchall()
            for source, kind in staged:
                if source not in sources:
                    sources[source] = store.ensure_source(con, source, kind)
            if staged:
                con.execute("CREATE TEMP TABLE source_ids (name VARCHAR, source_id INTEGER)")
                con.executemany("INSERT INTO source_ids VALUES (?, ?)", list(sources.items()))
                con.execute(
                    "INSERT INTO scores (cot_id, source_id, metric, value, raw) "
                    "SELECT s.cot_id, i.source_id, s.metric, s.value, s.raw FROM read_parquet(?) s "
                    "JOIN source_ids i ON i.name = s.source",
                    [files["scores"]],
                )
                con.execute("DROP TABLE source_ids")
            con.execute("COMMIT")
        if progress:
            progress("load", done, len(groups))


def ingest(
    source: str | os.PathLike,
    *,
    fmt: str | None = None,
    name: str | None = None,
    db=None,
    opts: ReadOptions | None = None,
    skip_bad: bool = False,
    report_path: str | os.PathLike | None = None,
    markers_path: str | os.PathLike | None = None,
    generated: bool = False,
    progress: ProgressFn | None = None,
) -> IngestResult:
    """Ingest ``source`` (a file, a folder or a hub id) as one new dataset.

    Raises IngestError on the first bad row unless ``skip_bad``, in which case bad rows are
    written to a JSONL report and the good ones are ingested. Either way a failure leaves the
    store as it was.
    """
    source = str(source)
    opts = opts or ReadOptions()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    source_kind(source, fmt)  # a missing path or a dangling link is "no such file", never a hub lookup
    store.init_store(db)
    clean_abandoned_loads(db)
    fmt = fmt or detect_format(source, opts)
    files = input_files(source, fmt)
    if Path(source).exists() and not files:
        raise IngestError(source, None, None, f"no input files for format '{fmt}' here")
    name_from = None
    if not name:
        name, name_from = default_name(source, fmt, files)
    opts.dataset_name = name
    digest = content_hash(source, files, opts, fmt)
    timings["hash"] = time.perf_counter() - t0
    options = {"pid": os.getpid(), "mapping": opts.mapping, "model": opts.model, "split": opts.split, "files": len(files)}
    dataset_id, twin = _allocate_dataset(db, name, source, fmt, digest, options, generated)
    if twin is not None:
        row = store.read_rows("SELECT name, n_problems, n_cots FROM datasets WHERE dataset_id = ?", [twin], db=db)[0]
        return IngestResult(twin, row[0], fmt, row[1], row[2], already_present=True)

    sources_before = {r[0] for r in store.read_rows("SELECT source_id FROM score_sources", db=db)}
    staging = Path(tempfile.mkdtemp(prefix=f"ingest-{dataset_id}-", dir=store.db_path(db).parent))
    bad: list[IngestError] = []
    try:
        t1 = time.perf_counter()
        markers = load_markers(markers_path)
        stager = _Stager(staging, dataset_id, MarkerCounter(markers))
        for n, item in enumerate(read_records(source, fmt, opts), start=1):
            if isinstance(item, ProblemRecord):
                try:
                    stager.add(item, fmt)
                except IngestError as exc:
                    item = exc
            if isinstance(item, IngestError):
                if not skip_bad or not item.skippable:  # a file-level error cannot be skipped
                    raise item
                bad.append(item)
            if progress and n % 200 == 0:
                progress("read", n, None)
        stager.flush()
        if not stager.problems:
            raise IngestError(source, None, None, "no valid rows to ingest" + (f" ({len(bad)} bad rows)" if bad else ""))
        timings["read"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        _load_chunks(db, staging, dataset_id, stager.chunk, progress)
        with store.connect(db, read_only=False) as con:
            con.execute("BEGIN")
            for model, bench, metric, value in run_metrics_of(source, fmt, opts):
                con.execute("INSERT INTO run_metrics VALUES (?, ?, ?, ?, ?)", [dataset_id, model, bench, metric, value])
            # which marker set counted it (core.markers recounts a dataset counted with another)
            con.execute("INSERT INTO marker_counts VALUES (?, ?, ?, true)",
                        [dataset_id, markers_hash(markers), stager.base + (1 << 31) + stager.n_cots - 1])
            con.execute(
                "UPDATE datasets SET status = 'ready', n_problems = ?, n_cots = ? WHERE dataset_id = ?",
                [len(stager.problems), stager.n_cots, dataset_id],
            )
            con.execute("COMMIT")
        timings["load"] = time.perf_counter() - t2
    except BaseException:
        # Undo whatever chunks were committed; the dataset was never visible.
        with store.connect(db, read_only=False) as con:
            con.execute("BEGIN")
            store.delete_dataset_rows(con, dataset_id)
            # score sources this load created, unless something else scored under them since
            con.execute(
                "DELETE FROM score_sources WHERE source_id NOT IN (SELECT unnest(?::INTEGER[])) "
                "AND source_id NOT IN (SELECT DISTINCT source_id FROM scores)",
                [sorted(sources_before)],
            )
            con.execute("COMMIT")
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    report = None
    if bad:
        report = str(report_path or store.db_path(db).parent / f"ingest-{name}-bad-rows.jsonl")
        with open(report, "w") as fh:
            for err in bad:
                fh.write(json.dumps(err.as_dict()) + "\n")
    return IngestResult(dataset_id, name, fmt, len(stager.problems), stager.n_cots, len(bad), False, report, timings,
                        name_from)
