"""A new sidebar filter answered from memory: every ready CoT's numbers are read once per choice
of score sources (the *base*; read again only when what it reads changes, see data_version), and
each filter is then cut from it.

Why: at 2M CoTs a filter's own DuckDB read costs ~480 ms (the join of every chosen score
source's scores, the problems for the benchmark, the datasets), and a lab's sessions each on
their own filter paid it again and again, each keeping its own copy of the numbers. Reading
the base once and cutting a filter from it with a polars mask costs a fraction of that
(``bench/bench_filter_cost.py``), and the sessions share one base in memory.

One definition of what a filter means stays in SQL (``queries.matching_sql``): the base is
that query for the filter's score sources alone, and the constraints a mask cannot express
(a text search through the index, picked problems, a set from the map, conditions on any
figure) are asked of DuckDB as matching ids. Only the plain constraints (datasets, models,
benchmarks, the RV / CD / correctness / token / reflection ranges, truncation) are masks here;
``tests/test_frame_filter.py`` checks that every kind of filter gives exactly the rows and
values of ``queries.metric_frame``.
"""

from __future__ import annotations

import polars as pl

from core import queries, store
from core.queries import CotFilter

# what queries.metric_frame returns, in its order
FRAME_COLUMNS = ("cot_id", "problem_id", "dataset", "model", "benchmark", "n_tokens", "tokenizer", "n_reflections",
                 "truncated", "rv", "cd", "correct")
# kept in the base only to cut filters from it
CUT_COLUMNS = ("dataset_id", "correct_value")


def score_sources_of(f: CotFilter, *, db=None) -> tuple[str, ...]:
    """Every score source the base of ``f`` reads (each dataset's own correctness resolved to
    its sources), sorted."""
    names: set[str] = set()
    for source in (f.rv_source, f.cd_source, f.correct_source):
        names.update(queries._sources_of(source, db=db))
    return tuple(sorted(names))


def data_version(score_sources: tuple[str, ...], *, db=None) -> tuple:
    """A fingerprint of everything a base frame or a whole-store pool reads: the ready datasets,
    the problems (ids, keys, benchmarks), every CoT's numbers, all problem-level figures, and
    the scores of ``score_sources`` (counts and sums of row hashes). Equal fingerprints mean
    equal reads, so a shared base is kept across store writes that touch none of it (a job
    scoring with another source, a label of another person): at 2M CoTs this costs ~70 ms
    against ~570 ms and ~1 GB of transient memory for reading the base again."""
    rows = store.read_rows(
        "SELECT (SELECT list_value(count(*), sum(hash(dataset_id, name, status, generated, content_hash))) FROM datasets), "
        "(SELECT list_value(count(*), sum(hash(problem_id, dataset_id, problem_key, benchmark))) FROM problems), "
        "(SELECT list_value(count(*), sum(hash(cot_id, problem_id, dataset_id, model, sample_idx, n_tokens, tokenizer, "
        "n_chars, n_paragraphs, n_reflections, truncated))) FROM cots), "
        "(SELECT list_value(count(*), sum(hash(problem_id, source_id, metric, value))) FROM problem_scores), "
        "(SELECT list_value(count(*), sum(hash(s.cot_id, ss.name, s.metric, s.value))) FROM scores s "
        " JOIN score_sources ss USING (source_id) WHERE ss.name IN (SELECT unnest(?::VARCHAR[])))",
        [list(score_sources)], db=db)
    return (score_sources, *(tuple(str(v) for v in part) for part in rows[0]))


def base_filter(f: CotFilter) -> CotFilter:
    """The filter with ``f``'s score sources and no constraint: whose rows every filter with
    those sources is cut from."""
    return CotFilter(rv_source=f.rv_source, cd_source=f.cd_source, correct_source=f.correct_source)


def _residual(f: CotFilter) -> CotFilter:
    """The constraints of ``f`` that only the store can answer (index search, picked problems,
    a saved problem set, conditions on any figure), without score sources."""
    return CotFilter(text=f.text, problem_ids=f.problem_ids, conditions=f.conditions, problem_set=f.problem_set)


def base_frame(f: CotFilter, *, db=None) -> pl.DataFrame:
    """Every ready CoT's numbers with ``f``'s RV, CD and correctness sources, in cot_id order:
    the columns of ``queries.metric_frame`` plus those a cut needs (``CUT_COLUMNS``)."""
    sql, params = queries.matching_sql(base_filter(f), db=db)
    # in cot_id order: a mask over it lines up with any other whole-store table read in that
    # order (Select's whole-store pool, selection.pool_rows(ordered=True))
    return store.read_df(f"SELECT {', '.join(FRAME_COLUMNS + CUT_COLUMNS)} FROM ({sql}) ORDER BY cot_id", params, db=db)


def _dataset_ids(names: tuple[str, ...], db) -> list[int]:
    """Every dataset id under these names (a name is not unique in the schema: SQL's
    ``d.name IN (...)`` matches all of them, so the mask does too)."""
    return [r[0] for r in store.read_rows(
        "SELECT dataset_id FROM datasets WHERE name IN (SELECT unnest(?::VARCHAR[]))", [list(names)], db=db)]


def _mask(f: CotFilter, db) -> pl.Expr | None:
    """The plain constraints of ``f`` as one polars predicate, with SQL's meaning (a NULL never
    matches a range or a list); None when there is none."""
    parts: list[pl.Expr] = []
    if f.datasets:
        parts.append(pl.col("dataset_id").is_in(_dataset_ids(f.datasets, db)))
    for column, values in (("model", f.models), ("benchmark", f.benchmarks)):
        if values:
            parts.append(pl.col(column).is_in(list(values)))
    for column, bounds in (("n_tokens", f.tokens_range), ("n_reflections", f.reflections_range),
                           ("rv", f.rv_range if f.rv_source else None), ("cd", f.cd_range if f.cd_source else None)):
        if bounds:
            parts.append(pl.col(column).is_between(bounds[0], bounds[1], closed="both"))
    if f.truncated is not None:
        parts.append(pl.col("truncated") == f.truncated)
    if f.correct_source and f.correct != "any":
        value = pl.col("correct_value")
        parts.append({"correct": value == 1, "incorrect": value == 0, "unknown": value.is_null()}[f.correct])
    if not parts:
        return None
    mask = parts[0]
    for part in parts[1:]:
        mask = mask & part
    return mask.fill_null(False)


def mask(base: pl.DataFrame, f: CotFilter, *, db=None) -> pl.Series:
    """One boolean per row of ``base`` (``base_frame`` of ``f``'s sources): whether ``f``
    matches it."""
    expr = _mask(f, db)
    keep = base.select(expr).to_series() if expr is not None else pl.repeat(True, base.height, eager=True)
    residual = _residual(f)
    if residual != CotFilter():
        sql, params = queries.matching_sql(residual, db=db)
        ids = store.read_df(f"SELECT cot_id FROM ({sql})", params, db=db)["cot_id"]
        keep = keep & base["cot_id"].is_in(ids.implode())
    return keep.alias("matches")


def cut(base: pl.DataFrame, f: CotFilter, *, db=None, matches: pl.Series | None = None) -> pl.DataFrame:
    """The rows of ``base`` (``base_frame`` of ``f``'s sources) that ``f`` matches (``matches``,
    its mask, when the caller has it), with the columns of ``queries.metric_frame``: the same rows
    and values it returns, in base order."""
    return base.filter(mask(base, f, db=db) if matches is None else matches).select(FRAME_COLUMNS)
