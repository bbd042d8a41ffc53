"""The filter every page shares, and the read queries the app runs through it.

A ``CotFilter`` says which CoTs a researcher is looking at; ``matching_sql`` turns it into one
SQL query with every user value bound as a parameter. Pages never write SQL: they build a
filter from widgets (or the URL) and call these functions, which return polars frames.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import polars as pl

from core import store

SORTABLE = (
    "cot_id", "dataset", "model", "benchmark", "sample_idx", "n_tokens", "n_chars",
    "n_reflections", "truncated", "rv", "cd", "correct", "answer", "problem_id",
)


@dataclass(frozen=True)
class CotFilter:
    """Which CoTs to look at. Empty lists and None ranges mean 'no constraint'."""

    datasets: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    benchmarks: tuple[str, ...] = ()
    rv_source: str | None = None
    rv_range: tuple[float, float] | None = None
    cd_source: str | None = None
    cd_range: tuple[float, float] | None = None
    correct_source: str | None = None
    correct: str = "any"  # any | correct | incorrect | unknown
    tokens_range: tuple[int, int] | None = None
    reflections_range: tuple[int, int] | None = None
    truncated: bool | None = None
    text: str = ""  # words of the question or the CoT text (see text_search_mode), case-insensitive
    problem_ids: tuple[int, ...] = ()
    problem_set: str = ""  # key of a saved set of problems (core.problem_sets), e.g. a lasso on the map

    # ---- URL round trip: a view can be shared and reloaded
    def to_params(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value in (None, (), "", "any"):
                continue
            if isinstance(value, tuple):
                out[f.name] = ",".join(str(v) for v in value)
            elif isinstance(value, bool):
                out[f.name] = "1" if value else "0"
            else:
                out[f.name] = str(value)
        return out

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> CotFilter:
        """Inverse of to_params; unknown keys and unparsable values are ignored, so an old
        or hand-edited URL still opens."""
        kwargs: dict[str, Any] = {}

        def get(name):
            value = params.get(name)
            if isinstance(value, list):
                value = value[-1] if value else None
            return value

        for name in ("datasets", "models", "benchmarks"):
            if get(name):
                kwargs[name] = tuple(v for v in str(get(name)).split(",") if v)
        if get("problem_ids"):
            try:
                kwargs["problem_ids"] = tuple(int(v) for v in str(get("problem_ids")).split(","))
            except ValueError:
                pass
        for name in ("rv_source", "cd_source", "correct_source", "text"):
            if get(name):
                kwargs[name] = str(get(name))
        if get("problem_set"):
            from core.problem_sets import is_key

            if is_key(str(get("problem_set"))):
                kwargs["problem_set"] = str(get("problem_set"))
        if get("correct") in ("correct", "incorrect", "unknown"):
            kwargs["correct"] = get("correct")
        for name, cast in (("rv_range", float), ("cd_range", float), ("tokens_range", int), ("reflections_range", int)):
            raw = get(name)
            if raw:
                try:
                    lo, hi = (cast(float(v)) for v in str(raw).split(","))
                    kwargs[name] = (lo, hi)
                except ValueError:
                    pass
        if get("truncated") in ("0", "1"):
            kwargs["truncated"] = get("truncated") == "1"
        return cls(**kwargs)

    def with_(self, **changes) -> CotFilter:
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _score_join(alias: str, source: str | None, metric: str, params: list) -> tuple[str, str]:
    """(select column, LEFT JOIN) for one metric of one source as column ``alias``.

    A hash join on the source's scores: at 2M CoTs a correlated subquery per row costs
    several times more."""
    if not source:
        return f", NULL::DOUBLE AS {alias}", ""
    params.extend([source, metric])
    join = (
        f" LEFT JOIN (SELECT s.cot_id, any_value(s.value) AS value FROM scores s "
        f"JOIN score_sources ss USING (source_id) WHERE ss.name = ? AND s.metric = ? "
        f"GROUP BY s.cot_id) {alias}_s ON {alias}_s.cot_id = c.cot_id"
    )
    return f", {alias}_s.value AS {alias}", join


def matching_sql(f: CotFilter, *, text_columns: bool = False, db=None) -> tuple[str, list]:
    """SQL for every CoT the filter matches, one row per CoT with its metadata and the
    chosen RV, CD and correctness values; plus its bound parameters.

    A text search goes through the store's full-text index (core.search) when it covers every
    ready dataset, else through a substring scan; ``db`` says which store's index to use."""
    params: list = []
    select = (
        "SELECT c.cot_id, c.problem_id, c.dataset_id, d.name AS dataset, d.generated, c.model, "
        "p.benchmark, c.sample_idx, c.n_tokens, c.n_chars, c.n_paragraphs, c.n_reflections, "
        "c.truncated, c.answer"
    )
    joins = ""
    for alias, source, metric in (("rv", f.rv_source, "rv"), ("cd", f.cd_source, "cd"),
                                  ("correct_value", f.correct_source, "correct")):
        column, join = _score_join(alias, source, metric, params)
        select += column
        joins += join
    if text_columns:
        select += ", p.question, p.reference_answer, c.thinking, c.solution, c.full_text"
    where = ["d.status = 'ready'"]
    if f.datasets:
        where.append(f"d.name IN ({', '.join('?' * len(f.datasets))})")
        params.extend(f.datasets)
    if f.models:
        where.append(f"c.model IN ({', '.join('?' * len(f.models))})")
        params.extend(f.models)
    if f.benchmarks:
        where.append(f"p.benchmark IN ({', '.join('?' * len(f.benchmarks))})")
        params.extend(f.benchmarks)
    if f.problem_ids:
        where.append(f"c.problem_id IN ({', '.join('?' * len(f.problem_ids))})")
        params.extend(f.problem_ids)
    if f.problem_set:
        from core import problem_sets

        condition, set_params = problem_sets.filter_sql(f.problem_set)
        where.append(condition)
        params.extend(set_params)
    if f.tokens_range:
        where.append("c.n_tokens BETWEEN ? AND ?")
        params.extend(f.tokens_range)
    if f.reflections_range:
        where.append("c.n_reflections BETWEEN ? AND ?")
        params.extend(f.reflections_range)
    if f.truncated is not None:
        where.append("c.truncated = ?")
        params.append(f.truncated)
    if f.text:
        condition, text_params = _text_condition(f.text, db)
        where.append(condition)
        params.extend(text_params)
    sql = (
        f"{select} FROM cots c JOIN datasets d ON d.dataset_id = c.dataset_id "
        f"JOIN problems p ON p.problem_id = c.problem_id{joins} WHERE {' AND '.join(where)}"
    )
    outer = []
    if f.rv_source and f.rv_range:
        outer.append("rv BETWEEN ? AND ?")
        params.extend(f.rv_range)
    if f.cd_source and f.cd_range:
        outer.append("cd BETWEEN ? AND ?")
        params.extend(f.cd_range)
    if f.correct_source and f.correct != "any":
        outer.append({"correct": "correct_value = 1", "incorrect": "correct_value = 0", "unknown": "correct_value IS NULL"}[f.correct])
    sql = f"SELECT *, (correct_value = 1) AS correct FROM ({sql}) m"
    if outer:
        sql += " WHERE " + " AND ".join(outer)
    return sql, params


SUBSTRING_SQL = "(contains(lower(p.question), lower(?)) OR contains(lower(c.full_text), lower(?)))"


def _text_condition(text: str, db) -> tuple[str, list]:
    """The text search as SQL: the index's hits where it can answer, else the substring scan."""
    from core import search

    indexed = search.hit_filter_sql(text, db)
    return indexed if indexed is not None else (SUBSTRING_SQL, [text, text])


def text_search_mode(text: str, *, db=None) -> str:
    """How a text search runs, for the page to say: 'index' (whole words, through the
    full-text index) or 'substring' (a scan of all the text), with why."""
    from core import search

    if not text:
        return ""
    if not search.words(text):
        return "substring: the search has no word for the index to look up"
    cov = search.coverage(db)
    return "index: whole words, case-insensitive" if cov.complete else cov.describe()


def _scores_only_shown(f: CotFilter) -> CotFilter | None:
    """``f`` without its score sources when the scores only add columns (no RV / CD range, no
    correctness constraint): the same rows, without joining every score of the store (each
    join aggregates a whole source, seconds at 2M CoTs). None when the scores decide rows."""
    if (f.rv_source and f.rv_range) or (f.cd_source and f.cd_range) or (f.correct_source and f.correct != "any"):
        return None
    return f.with_(rv_source=None, cd_source=None, correct_source=None)


def count(f: CotFilter, *, db=None) -> dict[str, int]:
    sql, params = matching_sql(_scores_only_shown(f) or f, db=db)
    row = store.read_rows(f"SELECT count(*), count(DISTINCT problem_id) FROM ({sql})", params, db=db)[0]
    return {"cots": row[0], "problems": row[1]}


def _page_scores(f: CotFilter, rows: pl.DataFrame, con) -> pl.DataFrame:
    """``rows`` (a page read without score joins) with its rv, cd, correct_value and correct
    filled from ``f``'s sources: a look-up of the page's few ids, as the joins would give."""
    wanted = [(alias, source, metric) for alias, source, metric in
              (("rv", f.rv_source, "rv"), ("cd", f.cd_source, "cd"), ("correct_value", f.correct_source, "correct"))
              if source]
    if not wanted or rows.height == 0:
        return rows
    picks = " ".join(f"any_value(s.value) FILTER (WHERE ss.name = ? AND s.metric = ?) AS {a}," for a, _, _ in wanted)
    params: list = [p for _, source, metric in wanted for p in (source, metric)]
    values = store.fetch_pl(
        con, f"SELECT s.cot_id, {picks.rstrip(',')} FROM scores s JOIN score_sources ss USING (source_id) "
        f"WHERE s.cot_id IN (SELECT unnest(?::BIGINT[])) GROUP BY s.cot_id",
        [*params, rows["cot_id"].to_list()],
    )
    filled = rows.drop([a for a, _, _ in wanted]).join(values, on="cot_id", how="left", maintain_order="left")
    filled = filled.with_columns(pl.col(a).cast(pl.Float64) for a, _, _ in wanted)
    if f.correct_source:
        filled = filled.with_columns((pl.col("correct_value") == 1).alias("correct"))
    return filled.select(rows.columns)


def page(
    f: CotFilter,
    *,
    sort_by: str = "cot_id",
    descending: bool = False,
    offset: int = 0,
    limit: int = 50,
    db=None,
) -> pl.DataFrame:
    """One page of matching CoTs for the table, with the question's opening words."""
    if sort_by not in SORTABLE:
        raise ValueError(f"cannot sort by {sort_by!r}; choose one of {', '.join(SORTABLE)}")
    # Sorted by a column of its own, the page is found without the score joins and its few
    # rows get their scores afterwards (same rows, same order, a fraction of the work).
    lean = _scores_only_shown(f) if sort_by not in ("rv", "cd", "correct") else None
    sql, params = matching_sql(lean or f, db=db)
    order = f"{sort_by} {'DESC' if descending else 'ASC'} NULLS LAST, cot_id"
    with store.connect(db, read_only=True) as con:
        rows = store.fetch_pl(
            con, f"SELECT m.*, left(p.question, 120) AS question FROM ({sql}) m "
            f"JOIN problems p ON p.problem_id = m.problem_id ORDER BY {order} LIMIT ? OFFSET ?",
            [*params, int(limit), int(offset)],
        )
        return _page_scores(f, rows, con) if lean is not None else rows


def metric_frame(f: CotFilter, *, db=None) -> pl.DataFrame:
    """Every matching CoT's numbers (no text) for the metrics in core.metrics."""
    sql, params = matching_sql(f, db=db)
    return store.read_df(
        f"SELECT cot_id, problem_id, dataset, model, benchmark, n_tokens, n_reflections, "
        f"truncated, rv, cd, correct FROM ({sql})", params, db=db,
    )


def neighbours(f: CotFilter, problem_id: int, *, db=None) -> tuple[int | None, int | None]:
    """The previous and next problem within the filter (for the Reader's buttons)."""
    sql, params = matching_sql(f, db=db)
    row = store.read_rows(
        f"SELECT max(problem_id) FILTER (WHERE problem_id < ?), min(problem_id) FILTER (WHERE problem_id > ?) "
        f"FROM ({sql})", [problem_id, problem_id, *params], db=db,  # FILTER params come first
    )
    return row[0][0], row[0][1]


# ------------------------------------------------------------------ catalogue queries


def datasets(*, db=None) -> pl.DataFrame:
    return store.read_df(
        "SELECT dataset_id, name, format, source, n_problems, n_cots, generated, created_at, content_hash "
        "FROM datasets WHERE status = 'ready' ORDER BY dataset_id", db=db,
    )


def distinct_values(column: str, *, db=None) -> list[str]:
    """Models or benchmarks present in ready datasets."""
    table = {"model": "c.model", "benchmark": "p.benchmark"}[column]
    rows = store.read_rows(
        f"SELECT DISTINCT {table} FROM cots c JOIN problems p USING (problem_id) "
        f"JOIN datasets d ON d.dataset_id = c.dataset_id WHERE d.status = 'ready' AND {table} IS NOT NULL ORDER BY 1",
        db=db,
    )
    return [r[0] for r in rows]


def sources(metric: str | None = None, *, db=None) -> list[str]:
    """Score sources that gave ``metric`` (rv, cd, correct, ...) to some CoT."""
    if metric is None:
        return [r[0] for r in store.read_rows("SELECT name FROM score_sources ORDER BY source_id", db=db)]
    rows = store.read_rows(
        "SELECT ss.name FROM score_sources ss WHERE EXISTS "
        "(SELECT 1 FROM scores s WHERE s.source_id = ss.source_id AND s.metric = ?) ORDER BY ss.source_id",
        [metric], db=db,
    )
    return [r[0] for r in rows]


def score_sources(*, db=None) -> pl.DataFrame:
    return store.read_df(
        "SELECT ss.name, ss.kind, ss.model, ss.template_hash, ss.created_at, s.metric, count(*) AS scores, "
        "count(s.value) AS with_value FROM score_sources ss JOIN scores s USING (source_id) "
        "GROUP BY ALL ORDER BY ss.name, s.metric", db=db,
    )


def default_sources(*, db=None) -> dict[str, str | None]:
    """A sensible first choice of source per metric: the first source that has it."""
    return {m: (sources(m, db=db) or [None])[0] for m in ("rv", "cd", "correct")}


def problem(problem_id: int, *, db=None) -> dict[str, Any] | None:
    df = store.read_df(
        "SELECT p.*, d.name AS dataset, d.generated FROM problems p JOIN datasets d USING (dataset_id) "
        "WHERE p.problem_id = ? AND d.status = 'ready'", [problem_id], db=db,
    )
    return df.to_dicts()[0] if df.height else None


def cots_of_problem(problem_id: int, *, db=None) -> pl.DataFrame:
    return store.read_df(
        "SELECT cot_id, model, sample_idx, thinking, solution, full_text, thinking_unclosed, truncated, "
        "finish_reason, answer, n_tokens, tokenizer, n_chars, n_paragraphs, n_reflections, reflections, extra "
        "FROM cots WHERE problem_id = ? ORDER BY model, sample_idx, cot_id", [problem_id], db=db,
    )


def scores_of_problem(problem_id: int, *, db=None) -> pl.DataFrame:
    """Every score of every CoT of a problem, long format: cot_id, source, kind, metric, value, raw, error."""
    return store.read_df(
        "SELECT s.cot_id, ss.name AS source, ss.kind, s.metric, s.value, s.raw, s.error "
        "FROM scores s JOIN score_sources ss USING (source_id) JOIN cots c USING (cot_id) "
        "WHERE c.problem_id = ? ORDER BY s.cot_id, s.metric, ss.name", [problem_id], db=db,
    )


def problem_of_cot(cot_id: int, *, db=None) -> int | None:
    rows = store.read_rows("SELECT problem_id FROM cots WHERE cot_id = ?", [cot_id], db=db)
    return rows[0][0] if rows else None
