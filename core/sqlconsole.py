"""A read-only SQL console over the store.

Two independent guards, so one mistake in either cannot write to the store or touch a file:

1. the statement is parsed by DuckDB itself: exactly one SELECT (or EXPLAIN of one), and no
   table function that reads files or runs SQL from a string, and no file path in FROM
   (DuckDB reads ``FROM 'x.csv'`` as a file);
2. it runs on a read-only connection on which ``enable_external_access`` is switched off and
   the configuration then locked, so no statement can reach the file system, attach a
   database, load an extension or change a setting back.

A query that runs too long is interrupted (it would otherwise hold the store's read lock
and keep jobs from committing).

A console query runs in a process of its own (core.console_worker) with its own DuckDB memory
limit and threads, a time limit DuckDB enforces and the parent backs with a kill, and a memory
ceiling the parent watches: a slow or greedy query holds up no other session of the app and
cannot take the server's memory. Functions that reveal where the server keeps things
(settings, database files, temporary files, environment) are refused, and the server's own
folders are replaced by placeholders in whatever a result or an error still shows.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl

from core import store
from core.errors import UserError

DEFAULT_LIMIT = 10_000
DEFAULT_TIMEOUT_S = float(os.environ.get("THOUGHTSCOPE_CONSOLE_TIMEOUT_S", "60"))
# The console process's own limits (DuckDB's memory_limit and threads); the parent kills it
# past the memory limit plus HEADROOM_MB (Python, libraries, the page of rows) or GRACE_S
# after its time limit.
MEMORY_MB = int(os.environ.get("THOUGHTSCOPE_CONSOLE_MEMORY_MB", "1024"))
THREADS = int(os.environ.get("THOUGHTSCOPE_CONSOLE_THREADS", "1"))
HEADROOM_MB = 768
GRACE_S = 5.0

# What each refused statement type would do, for the sentence the user sees.
_REFUSED = {
    "INSERT": "writing to the store (INSERT)",
    "UPDATE": "writing to the store (UPDATE)",
    "DELETE": "writing to the store (DELETE)",
    "MERGE_INTO": "writing to the store (MERGE)",
    "CREATE": "creating tables, views, macros or secrets (CREATE)",
    "CREATE_FUNC": "creating functions (CREATE MACRO)",
    "DROP": "dropping tables or other objects (DROP)",
    "ALTER": "changing the schema (ALTER)",
    "ATTACH": "attaching another database (ATTACH)",
    "DETACH": "detaching a database (DETACH)",
    "COPY": "copying data to or from files (COPY)",
    "COPY_DATABASE": "copying a database (COPY FROM DATABASE)",
    "EXPORT": "exporting the database to files (EXPORT)",
    "LOAD": "installing or loading extensions (INSTALL / LOAD)",
    "EXTENSION": "installing or loading extensions",
    "SET": "changing settings (SET / RESET / USE)",
    "VARIABLE_SET": "changing settings (SET VARIABLE)",
    "PRAGMA": "PRAGMA statements (for metadata, query the table functions instead, e.g. SELECT * FROM pragma_table_info('cots'))",
    "CALL": "CALL statements (use SELECT * FROM the_function(...) instead)",
    "TRANSACTION": "transaction control (BEGIN / COMMIT / ROLLBACK)",
    "VACUUM": "VACUUM",
    "ANALYZE": "ANALYZE",
    "PREPARE": "prepared statements (PREPARE)",
    "EXECUTE": "prepared statements (EXECUTE)",
    "RELATION": "this kind of statement",
    "MULTI": "a PIVOT without an IN list (it creates a type first; write PIVOT ... ON column IN (...))",
    "UPDATE_EXTENSIONS": "updating extensions",
}

# Table functions that read files or directories, or run SQL given as a string (which the
# parse check could not see into). External access is off anyway; this names the problem.
FILE_FUNCTIONS = frozenset({
    "read_csv", "read_csv_auto", "sniff_csv", "read_json", "read_json_auto", "read_json_objects",
    "read_json_objects_auto", "read_ndjson", "read_ndjson_auto", "read_ndjson_objects",
    "read_parquet", "parquet_scan", "parquet_metadata", "parquet_schema", "parquet_file_metadata",
    "parquet_kv_metadata", "parquet_bloom_probe", "read_text", "read_blob", "glob", "read_xlsx",
    "iceberg_scan", "delta_scan", "sqlite_scan", "postgres_scan", "mysql_scan",
    "parquet_full_metadata", "read_duckdb", "read_single_csv_file", "read_single_json_file",
    "read_single_parquet_file",
})
SQL_STRING_FUNCTIONS = frozenset({"query", "query_table"})
# Functions whose answers name the server's folders and files: the store file and its
# temporary folder, settings, secrets, extensions, logs, environment variables.
PATH_FUNCTIONS = frozenset({
    "current_setting", "duckdb_settings", "duckdb_databases", "pragma_database_list",
    "duckdb_temporary_files", "duckdb_secrets", "which_secret", "duckdb_extensions",
    "duckdb_extension_repositories", "duckdb_logs", "duckdb_log_contexts", "getenv",
    "duckdb_external_file_cache", "pragma_user_agent", "duckdb_secret_types",
})

_EXPLAIN = re.compile(r"^\s*EXPLAIN(\s+ANALY[SZ]E)?\b", re.IGNORECASE)


@dataclass(frozen=True)
class QueryResult:
    """One page of a console query: ``frame`` holds rows ``offset`` .. offset+len of
    ``total_rows``."""

    frame: pl.DataFrame
    total_rows: int
    offset: int
    seconds: float

    @property
    def complete(self) -> bool:
        """Whether ``frame`` holds every row of the result."""
        return self.offset == 0 and self.frame.height == self.total_rows

    @property
    def note(self) -> str:
        if self.total_rows == 0:
            return "The query returned no rows."
        if self.complete:
            return f"{self.total_rows:,} row{'s' if self.total_rows != 1 else ''} ({self.seconds:.2f} s)."
        first, last = self.offset + 1, self.offset + self.frame.height
        if self.offset == 0:
            return f"Showing the first {self.frame.height:,} of {self.total_rows:,} rows ({self.seconds:.2f} s)."
        return f"Showing rows {first:,}–{last:,} of {self.total_rows:,} ({self.seconds:.2f} s)."


def _walk(node, found: list[tuple[str, str]]) -> None:
    """Collect (kind, name) of table functions and base tables in a serialized parse tree."""
    if isinstance(node, dict):
        kind = node.get("type")
        if kind == "TABLE_FUNCTION":
            function = node.get("function") or {}
            found.append(("function", str(function.get("function_name", "")).lower()))
        elif kind == "FUNCTION":
            found.append(("scalar", str(node.get("function_name", "")).lower()))
        elif kind == "BASE_TABLE":
            found.append(("table", str(node.get("table_name", ""))))
        for value in node.values():
            _walk(value, found)
    elif isinstance(node, list):
        for value in node:
            _walk(value, found)


def _check_select(sql: str) -> None:
    """Refuse file-reading table functions and file paths in FROM anywhere in a SELECT."""
    with duckdb.connect() as parser:
        tree = json.loads(parser.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0])
    if tree.get("error"):
        return  # e.g. PIVOT cannot be serialized; the locked connection still guards it
    found: list[tuple[str, str]] = []
    _walk(tree.get("statements", []), found)
    for kind, name in found:
        if name in PATH_FUNCTIONS:
            raise UserError(
                f"The console does not show the server's settings, files or environment: {name}() is not allowed; "
                "query the store's tables instead."
            )
        if kind == "function" and name in FILE_FUNCTIONS:
            raise UserError(f"The console cannot read files: {name}() is not allowed; query the store's tables instead.")
        if kind == "function" and name in SQL_STRING_FUNCTIONS:
            raise UserError(f"The console does not run SQL given as a string: {name}() is not allowed; write the query out.")
        if kind == "table" and re.search(r"[./\\:*?]", name):
            raise UserError(
                f"The console cannot read files: '{name}' in FROM names a file, not a table; "
                "the tables are datasets, problems, cots, score_sources, scores, labels and run_metrics."
            )


def check_readonly(sql: str) -> str:
    """The one statement in ``sql`` if the console may run it; raises ValueError otherwise."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise UserError(f"DuckDB could not parse the query: {_first_line(exc)}") from exc
    if not statements:
        raise UserError("There is no query to run; write a SELECT statement.")
    if len(statements) > 1:
        raise UserError(f"The console runs one statement at a time; this text holds {len(statements)} (separated by ';').")
    statement = statements[0]
    kind = statement.type.name
    text = statement.query.strip().rstrip(";").strip()
    if kind == "EXPLAIN":
        inner = _EXPLAIN.sub("", text, count=1)
        if not inner.strip() or inner == text:
            raise UserError("The console only explains SELECT statements: EXPLAIN [ANALYZE] SELECT ...")
        check_readonly(inner)
        return text
    if kind != "SELECT":
        what = _REFUSED.get(kind, f"{kind} statements")
        raise UserError(f"The console is read-only and does not allow {what}. Only SELECT (and EXPLAIN SELECT) queries run here.")
    _check_select(text)
    return text


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _explain_sentence(kind: str, message: str, memory_mb: int = MEMORY_MB) -> str:
    """The sentence for a DuckDB error of class ``kind`` raised in the console process."""
    if kind == "PermissionException":
        return "The console cannot read or write files, attach databases or load extensions; query the store's tables instead."
    if kind == "InterruptException":
        return "The query was stopped because it ran too long; add a WHERE clause or aggregate first."
    if kind == "OutOfMemoryException":
        return (f"The query needed more than the console's {memory_mb:,} MB of memory; aggregate first, "
                "or select fewer columns (the long text columns take the most).")
    return f"DuckDB refused the query: {message.strip()}"


def server_paths(db=None) -> list[tuple[str, str]]:
    """(folder, placeholder) for the server's own folders, longest first: what a console
    answer or error must not show."""
    target = store.db_path(db)
    # DuckDB's temporary folder sits beside the store file. Generic folders (/tmp, the home
    # folder) are left alone: CoT text about Linux mentions them.
    folders = {
        str(target.parent): "<store folder>",
        str(store.data_dir()): "<data folder>",
        str(store.ROOT): "<project folder>",
    }
    return sorted(((f, p) for f, p in folders.items() if len(f) > 1), key=lambda item: -len(item[0]))


def redact(text: str, paths: list[tuple[str, str]]) -> str:
    for folder, placeholder in paths:
        text = text.replace(folder, placeholder)
    return text


def _redact_frame(frame: pl.DataFrame, paths: list[tuple[str, str]]) -> pl.DataFrame:
    text_columns = [name for name, dtype in frame.schema.items() if dtype == pl.String]
    if not text_columns or frame.height == 0:
        return frame
    expressions = []
    for name in text_columns:
        expression = pl.col(name)
        for folder, placeholder in paths:
            expression = expression.str.replace_all(folder, placeholder, literal=True)
        expressions.append(expression)
    return frame.with_columns(expressions)


@dataclass
class _Worker:
    proc: subprocess.Popen
    folder: tempfile.TemporaryDirectory

    @property
    def path(self) -> Path:
        return Path(self.folder.name)


_spare: _Worker | None = None
_spare_lock = threading.Lock()


def _start_worker() -> _Worker:
    folder = tempfile.TemporaryDirectory(prefix="thoughtscope-console-")
    path = Path(folder.name)
    with open(path / "stdout", "wb") as out, open(path / "stderr", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "core.console_worker"], cwd=store.ROOT,
            stdin=subprocess.PIPE, stdout=out, stderr=err,
        )
    return _Worker(proc, folder)


def _take_worker() -> _Worker:
    """A console process that has already started (the spare, if there is one): one process
    per query, without the query waiting for Python and DuckDB to start (0.25 s on an idle
    machine, 0.75 s measured under load)."""
    global _spare
    with _spare_lock:
        worker, _spare = _spare, None
    if worker is not None and worker.proc.poll() is None:
        return worker
    return _start_worker()


def _refill_spare() -> None:
    """Start the next query's process, after this query (so it does not compete for CPU)."""
    global _spare
    with _spare_lock:
        if _spare is None or _spare.proc.poll() is not None:
            _spare = _start_worker()


def _run_in_own_process(request: dict, timeout_s: float) -> tuple[pl.DataFrame, int]:
    """Run the request in core.console_worker; kill it past its time or memory."""
    import psutil
    import pyarrow as pa

    ceiling = (int(request["memory_mb"]) + HEADROOM_MB) * 1024 * 1024
    worker = _take_worker()
    with worker.folder:
        folder = worker.path
        proc = worker.proc
        request = {**request, "out": str(folder / "result.arrow")}
        with open(folder / "stdout", "rb") as out, open(folder / "stderr", "rb") as err:
            try:
                proc.stdin.write(json.dumps(request).encode())
                proc.stdin.close()
                watched = psutil.Process(proc.pid)
                deadline = time.monotonic() + timeout_s + GRACE_S
                while proc.poll() is None:
                    if time.monotonic() > deadline:
                        raise UserError(_explain_sentence("InterruptException", ""))
                    try:
                        over = watched.memory_info().rss > ceiling
                    except psutil.NoSuchProcess:
                        over = False
                    if over:
                        raise UserError(_explain_sentence("OutOfMemoryException", "", request["memory_mb"]))
                    time.sleep(0.02)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            lines = out.read().decode("utf-8", errors="replace").strip().splitlines()
            if proc.returncode != 0 or not lines:
                detail = err.read().decode("utf-8", errors="replace").strip().splitlines()
                raise UserError(f"The console process stopped without an answer ({detail[-1] if detail else f'exit {proc.returncode}'}).")
        reply = json.loads(lines[-1])
        if reply.get("error") == "StoreBusy":  # the pages say so as a warning, and retry
            raise store.StoreBusy(reply["message"])
        if "error" in reply:
            raise UserError(_explain_sentence(reply["error"], reply["message"], request["memory_mb"]))
        with pa.OSFile(request["out"], "rb") as source:
            table = pa.ipc.open_file(source).read_all()
    return pl.from_arrow(table) if table.num_columns else pl.DataFrame(), int(reply["total"])


def run_query(
    sql: str,
    *,
    db=None,
    limit: int = DEFAULT_LIMIT,
    offset: int = 0,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int | None = None,
) -> QueryResult:
    """Run one read-only statement in a process of its own; return rows ``offset`` ..
    ``offset + limit`` and how many rows the whole result has. Raises ValueError with a
    sentence for anything refused or failed; no server folder shows in either."""
    if limit < 1 or offset < 0:
        raise UserError("limit must be at least 1 and offset at least 0.")
    text = check_readonly(sql)
    paths = server_paths(db)
    request = {
        "sql": text, "explain": _EXPLAIN.match(text) is not None, "db": str(store.db_path(db)),
        "limit": int(limit), "offset": int(offset), "timeout_s": float(timeout_s),
        "memory_mb": int(memory_mb or MEMORY_MB), "threads": THREADS,
    }
    started = time.perf_counter()
    try:
        frame, total = _run_in_own_process(request, timeout_s)
    except ValueError as exc:
        raise UserError(redact(str(exc), paths)) from None
    except store.StoreBusy as exc:
        raise store.StoreBusy(redact(str(exc), paths)) from None
    finally:
        _refill_spare()
    return QueryResult(_redact_frame(frame, paths), total, offset, time.perf_counter() - started)


def run_readonly(sql: str, *, db=None, limit: int = DEFAULT_LIMIT) -> pl.DataFrame:
    """The first ``limit`` rows of one read-only statement over the store, as a DataFrame.

    Refuses (ValueError, with a sentence) anything but a single SELECT or EXPLAIN SELECT:
    writes, ATTACH, COPY, INSTALL/LOAD, SET, PRAGMA, and any read of files.
    """
    return run_query(sql, db=db, limit=limit).frame


CHART_KINDS = ("bar", "line", "scatter")


def chart_defaults(frame: pl.DataFrame) -> dict[str, str | None]:
    """A sensible first chart of a result: x the first label column, y the last numeric
    column, colour a second label column (so 'model, source, accuracy' groups by source)."""
    numeric = [c for c, t in frame.schema.items() if t.is_numeric()]
    labels = [c for c in frame.columns if c not in numeric]
    x = labels[0] if labels else frame.columns[0]
    y = next((c for c in reversed(numeric) if c != x), frame.columns[min(1, frame.width - 1)])
    color = next((c for c in labels if c not in (x, y)), None)
    return {"x": x, "y": y, "color": color}


def quick_chart(frame: pl.DataFrame, *, x: str, y: str, kind: str = "bar", color: str | None = None):
    """A plotly figure of column ``y`` against ``x`` (``color`` splits it into series)."""
    import plotly.express as px

    if kind not in CHART_KINDS:
        raise UserError(f"Chart kind must be one of {', '.join(CHART_KINDS)}.")
    for column in (x, y, color):
        if column is not None and column not in frame.columns:
            raise UserError(f"The result has no column '{column}'.")
    draw = {"bar": px.bar, "line": px.line, "scatter": px.scatter}[kind]
    try:
        fig = draw(frame, x=x, y=y, color=color)
    except (TypeError, ValueError) as exc:  # e.g. a list or map column
        raise UserError(f"These columns cannot be charted ({exc}); choose plain numbers and labels.") from exc
    if kind == "bar" and color is not None:
        fig.update_layout(barmode="group")
    fig.update_layout(margin={"l": 10, "r": 10, "t": 30, "b": 10})
    from core.render import inert_figure

    return inert_figure(fig)  # the labels are query results


# The query box's placeholder: the shortest useful example.
PLACEHOLDER = "SELECT model, count(*) FROM cots GROUP BY model"

EXAMPLES: dict[str, str] = {
    "Accuracy per model and correctness source": """\
SELECT c.model, ss.name AS source, count(*) AS cots,
       round(avg(s.value), 4) AS accuracy
FROM scores s
JOIN score_sources ss USING (source_id)
JOIN cots c USING (cot_id)
JOIN datasets d ON d.dataset_id = c.dataset_id
WHERE s.metric = 'correct' AND d.status = 'ready'
GROUP BY ALL
ORDER BY c.model, source""",
    "CoTs, problems and tokens per dataset and benchmark": """\
SELECT d.name AS dataset, p.benchmark, count(DISTINCT p.problem_id) AS problems,
       count(*) AS cots, round(avg(c.n_tokens)) AS mean_tokens,
       round(avg(c.truncated::INT), 4) AS truncated_share
FROM cots c
JOIN problems p USING (problem_id)
JOIN datasets d ON d.dataset_id = c.dataset_id
WHERE d.status = 'ready'
GROUP BY ALL
ORDER BY dataset, benchmark""",
    "Mean tokens and reflections per Reasoning Verbosity level": """\
SELECT ss.name AS source, s.value AS rv, count(*) AS cots,
       round(avg(c.n_tokens)) AS mean_tokens, round(avg(c.n_reflections), 1) AS mean_reflections
FROM scores s
JOIN score_sources ss USING (source_id)
JOIN cots c USING (cot_id)
WHERE s.metric = 'rv'
GROUP BY ALL
ORDER BY source, rv""",
    "Where the dataset's label and math-verify disagree": """\
SELECT c.model, count(*) AS cots,
       sum((l.value = 1 AND v.value = 0)::INT) AS label_right_verify_wrong,
       sum((l.value = 0 AND v.value = 1)::INT) AS label_wrong_verify_right
FROM scores l
JOIN score_sources ls ON ls.source_id = l.source_id AND ls.kind = 'label'
JOIN scores v ON v.cot_id = l.cot_id AND v.metric = 'correct'
JOIN score_sources vs ON vs.source_id = v.source_id AND vs.name = 'math-verify'
JOIN cots c ON c.cot_id = l.cot_id
WHERE l.metric = 'correct'
GROUP BY ALL
ORDER BY cots DESC""",
    "Longest CoTs": """\
SELECT c.cot_id, d.name AS dataset, c.model, c.n_tokens, c.n_reflections, c.truncated, c.answer
FROM cots c
JOIN datasets d ON d.dataset_id = c.dataset_id
WHERE d.status = 'ready'
ORDER BY c.n_tokens DESC NULLS LAST
LIMIT 50""",
    "Score sources": """\
SELECT ss.name, ss.kind, ss.model, s.metric, count(*) AS scores,
       count(s.value) AS with_value, count(s.error) AS with_error
FROM score_sources ss
JOIN scores s USING (source_id)
GROUP BY ALL
ORDER BY ss.name, s.metric""",
}
