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
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass

import duckdb
import polars as pl

from core import store
from core.errors import UserError

DEFAULT_LIMIT = 10_000
DEFAULT_TIMEOUT_S = 60.0

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
})
SQL_STRING_FUNCTIONS = frozenset({"query", "query_table"})

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
        if kind == "function" and name in FILE_FUNCTIONS:
            raise UserError(f"The console cannot read files: {name}() is not allowed; query the store's tables instead.")
        if kind == "function" and name in SQL_STRING_FUNCTIONS:
            raise UserError(f"The console does not run SQL given as a string: {name}() is not allowed; write the query out.")
        if kind == "table" and re.search(r"[./\\:*?]", name):
            raise UserError(
                f"The console cannot read files: '{name}' in FROM names a file, not a table; "
                "the tables are datasets, problems, cots, score_sources, scores and run_metrics."
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


def _explain_sentence(exc: duckdb.Error) -> str:
    if isinstance(exc, duckdb.PermissionException):
        return "The console cannot read or write files, attach databases or load extensions; query the store's tables instead."
    if isinstance(exc, duckdb.InterruptException):
        return "The query was stopped because it ran too long; add a WHERE clause or aggregate first."
    return f"DuckDB refused the query: {str(exc).strip()}"


def run_query(
    sql: str,
    *,
    db=None,
    limit: int = DEFAULT_LIMIT,
    offset: int = 0,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> QueryResult:
    """Run one read-only statement; return rows ``offset`` .. ``offset + limit`` and how many
    rows the whole result has. Raises ValueError with a sentence for anything refused or failed."""
    if limit < 1 or offset < 0:
        raise UserError("limit must be at least 1 and offset at least 0.")
    text = check_readonly(sql)
    explain = _EXPLAIN.match(text) is not None
    started = time.perf_counter()
    with store.connect(db, read_only=True) as con:
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        timer = threading.Timer(timeout_s, con.interrupt)
        timer.daemon = True
        timer.start()
        try:
            if explain:
                frame = store.fetch_pl(con, text)
                total = frame.height
            else:
                # The subquery keeps the user's ORDER BY; LIMIT + 1 tells whether there is more.
                frame = store.fetch_pl(con, f"SELECT * FROM ({text}\n) LIMIT {int(limit) + 1} OFFSET {int(offset)}")
                if offset == 0 and frame.height <= limit:
                    total = frame.height
                else:
                    total = con.execute(f"SELECT count(*) FROM ({text}\n)").fetchone()[0]
                frame = frame.head(limit)
        except duckdb.Error as exc:
            raise UserError(_explain_sentence(exc)) from exc
        finally:
            timer.cancel()
    return QueryResult(frame, int(total), offset, time.perf_counter() - started)


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
    return fig


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
