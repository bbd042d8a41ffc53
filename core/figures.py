"""Figures: every number the store holds about a CoT or a problem, and conditions on them.

A *figure* is named by ``(level, source, metric)``:

* level ``"cot"``, no source: a column of ``cots`` (:data:`COT_COLUMNS`: tokens, characters,
  paragraphs, reflection markers);
* level ``"cot"``, source ``S``: metric ``M`` of score source ``S`` in ``scores`` (a dataset's
  labels, a judge's rv/cd/logic, math-verify's correct, a stage's per-CoT figure);
* level ``"problem"``, source ``S``: metric ``M`` of ``S`` in ``problem_scores`` (pass rate,
  contamination, near-duplicate cluster, ...); every CoT of the problem has that value.

A :class:`Condition` on a figure keeps the CoTs whose figure has a value inside ``[lo, hi]``
(bounds included; either bound None is open, both None is "has a value"), or, with
``missing=True``, the CoTs whose figure has no value ("not contaminated" where a stage writes
rows only for flagged problems). A score row whose value is NULL (a judge answer that did not
parse) counts as no value.

Where conditions apply
----------------------
* ``CotFilter.conditions`` (core.queries; the sidebar's "filters on figures", kept in the URL
  as ``conditions=`` JSON and in recipes): a WHERE clause of ``queries.matching_sql``, so every
  page, export and job sees only the CoTs that pass.
* ``Selection.conditions`` (core.selection; the Select page's conditions): applied inside the
  pool before the rule, and each CoT a condition drops is counted under its own reason
  ("no logic · judge X", "logic · judge X outside 1-1") in the report, like the rules' reasons.

How a new figure gets into the app (nothing to edit outside your own stage)
---------------------------------------------------------------------------
Write your numbers as rows of ``scores`` (per CoT) or ``problem_scores`` (per problem) under
a score source of kind ``'stage'`` that your stage owns, with its parameters as JSON::

    with store.connect(db, read_only=False) as con:
        source_id = store.ensure_source(con, "difficulty", "stage", params=json.dumps({"k": 32}))
        con.execute("INSERT INTO problem_scores (problem_id, source_id, metric, value) "
                    "SELECT problem_id, ?, 'pass_rate', rate FROM my_rates", [source_id])

:func:`catalogue` then lists ``pass_rate · difficulty`` (level problem) with its count,
range and whether it is integer or binary; the sidebar offers it under "Add a filter on a
figure", the Select page as a condition and as a score to rank by (``selection.Score(metric,
source, level="problem")``), and recipes and export manifests record the conditions and the
score sources (with their parameters) they used. In code::

    >>> from core.figures import Condition, Figure
    >>> logic = Figure("logic", "judge smollm")             # per CoT, from a judge
    >>> Condition(logic, lo=1).describe()
    'logic · judge smollm ≥ 1'
    >>> clean = Condition(Figure("contaminated", "contamination", level="problem"), missing=True)
    >>> CotFilter(conditions=(Condition(logic, lo=1), clean))   # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import polars as pl

from core import store
from core.errors import UserError

LEVELS = ("cot", "problem")

# Per-CoT columns of `cots` a condition or a score may use without a score source.
COT_COLUMNS: dict[str, str] = {
    "n_tokens": "tokens",
    "n_chars": "characters",
    "n_paragraphs": "paragraphs",
    "n_reflections": "reflection markers",
}


class FigureError(UserError):
    """A figure or condition that cannot be used as given (the message says why)."""


@dataclass(frozen=True)
class Figure:
    """One number per CoT (level 'cot') or per problem (level 'problem'), by source and metric;
    a per-CoT column of ``cots`` when ``source`` is None."""

    metric: str
    source: str | None = None
    level: str = "cot"

    def __post_init__(self):
        if self.level not in LEVELS:
            raise FigureError(f"a figure's level is 'cot' or 'problem', not {self.level!r}")
        if not self.metric:
            raise FigureError("a figure needs a metric")
        if self.source is None and (self.level != "cot" or self.metric not in COT_COLUMNS):
            raise FigureError(
                f"the figure '{self.metric}' needs a score source; without one a figure is a CoT column: "
                f"{', '.join(COT_COLUMNS)}"
            )

    @property
    def is_column(self) -> bool:
        return self.source is None

    def label(self) -> str:
        """How the app names it: 'tokens', 'logic · judge X', 'pass_rate · difficulty (per problem)'."""
        if self.source is None:
            return COT_COLUMNS[self.metric]
        return f"{self.metric} · {self.source}" + (" (per problem)" if self.level == "problem" else "")

    def as_dict(self) -> dict[str, Any]:
        return {"level": self.level, "source": self.source, "metric": self.metric}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Figure:
        return cls(metric=str(data["metric"]), source=None if data.get("source") is None else str(data["source"]),
                   level=str(data.get("level") or "cot"))


def _number(value) -> float | None:
    if value is None:
        return None
    number = float(value)
    if number != number:  # NaN
        raise FigureError("a bound must be a number, not NaN")
    return number


def fmt(value: float) -> str:
    """A bound as people write it: 3, 0.25, 44,782."""
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.6g}"


@dataclass(frozen=True)
class Condition:
    """Keep CoTs whose ``figure`` has a value in [lo, hi] (None: open bound; both None: has a
    value), or with ``missing`` the CoTs whose figure has no value."""

    figure: Figure
    lo: float | None = None
    hi: float | None = None
    missing: bool = False

    def __post_init__(self):
        object.__setattr__(self, "lo", _number(self.lo))
        object.__setattr__(self, "hi", _number(self.hi))
        object.__setattr__(self, "missing", bool(self.missing))
        if self.missing and (self.lo is not None or self.hi is not None):
            raise FigureError(f"'{self.figure.label()} has no value' cannot also have bounds")
        if self.lo is not None and self.hi is not None and self.lo > self.hi:
            raise FigureError(f"{self.figure.label()}: the lower bound {fmt(self.lo)} is above the upper {fmt(self.hi)}")

    def range_text(self) -> str:
        if self.missing:
            return "has no value"
        if self.lo is None and self.hi is None:
            return "has a value"
        if self.lo is None:
            return f"≤ {fmt(self.hi)}"
        if self.hi is None:
            return f"≥ {fmt(self.lo)}"
        return f"in {fmt(self.lo)}–{fmt(self.hi)}"

    def describe(self) -> str:
        """One line for the sidebar, the reasons and the manifest: 'logic · judge X ≥ 1'."""
        text = self.range_text()
        joined = " " if text[0] in "≤≥" else ": " if text.startswith("has") else " "
        return f"{self.figure.label()}{joined}{text}"

    def reasons(self) -> tuple[str, str]:
        """(reason when the value is missing, reason when it is outside) for a dropped CoT; with
        ``missing`` the second is the reason for a CoT that has a value."""
        label = self.figure.label()
        if self.missing:
            return "", f"{label} has a value"
        if self.lo is None and self.hi is None:
            return f"no {label}", ""
        if self.lo is None:
            return f"no {label}", f"{label} above {fmt(self.hi)}"
        if self.hi is None:
            return f"no {label}", f"{label} below {fmt(self.lo)}"
        return f"no {label}", f"{label} outside {fmt(self.lo)}–{fmt(self.hi)}"

    def as_dict(self) -> dict[str, Any]:
        """Flat JSON-able form (URL, recipes, manifests): level, source, metric, lo, hi, missing."""
        return {**self.figure.as_dict(), "lo": self.lo, "hi": self.hi, "missing": self.missing}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Condition:
        """Inverse of as_dict; a field it does not know is refused (it would change the meaning)."""
        if not isinstance(data, dict):
            raise FigureError(f"a condition is an object with level, source, metric, lo, hi, missing; got {data!r}")
        unknown = set(data) - {"level", "source", "metric", "lo", "hi", "missing"}
        if unknown:
            raise FigureError(f"a condition has no field(s) {sorted(unknown)}")
        if "metric" not in data:
            raise FigureError("a condition needs a metric")
        try:
            return cls(Figure.from_dict(data), lo=data.get("lo"), hi=data.get("hi"), missing=bool(data.get("missing")))
        except (TypeError, ValueError) as exc:
            raise FigureError(f"bad condition {json.dumps(data)}: {exc}") from exc


def conditions_to_json(conditions: tuple[Condition, ...]) -> str:
    return json.dumps([c.as_dict() for c in conditions], separators=(",", ":"), ensure_ascii=False)


def conditions_from_json(text: str) -> tuple[Condition, ...]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FigureError(f"the conditions are not JSON: {exc}") from exc
    if not isinstance(data, list):
        raise FigureError("the conditions are a JSON list")
    return tuple(Condition.from_dict(d) for d in data)


# ---------------------------------------------------------------------------- SQL


def _bounds(column: str, cond: Condition) -> tuple[list[str], list]:
    terms, params = [], []
    if cond.lo is not None:
        terms.append(f"{column} >= ?")
        params.append(cond.lo)
    if cond.hi is not None:
        terms.append(f"{column} <= ?")
        params.append(cond.hi)
    return terms, params


def _with_value_sql(figure: Figure, extra: list[str]) -> str:
    """Ids (cot_id or problem_id) whose figure has a value satisfying ``extra`` terms on ``v.value``."""
    table, key = ("scores", "cot_id") if figure.level == "cot" else ("problem_scores", "problem_id")
    terms = " AND ".join(["v.metric = ?", "v.value IS NOT NULL", *extra])
    return (f"SELECT v.{key} FROM {table} v JOIN score_sources vs ON vs.source_id = v.source_id "
            f"AND vs.name = ? WHERE {terms}")


def where_sql(cond: Condition) -> tuple[str, list]:
    """SQL true for the CoTs (alias ``c`` of ``cots``) the condition keeps, and its parameters.

    A score figure is a semi-join on that source's rows (one scan of them, no aggregation), so a
    condition costs about one pass over the rows of its metric, never over the whole store."""
    figure = cond.figure
    if figure.is_column:
        column = f"c.{figure.metric}"
        if cond.missing:
            return f"{column} IS NULL", []
        terms, params = _bounds(column, cond)
        return " AND ".join(terms or [f"{column} IS NOT NULL"]), params
    key = "c.cot_id" if figure.level == "cot" else "c.problem_id"
    if cond.missing:
        return f"{key} NOT IN ({_with_value_sql(figure, [])})", [figure.source, figure.metric]
    terms, params = _bounds("v.value", cond)
    return f"{key} IN ({_with_value_sql(figure, terms)})", [figure.source, figure.metric, *params]


def reason_sql(cond: Condition, column: str) -> tuple[str, list]:
    """A CASE over ``column`` (the figure's value in a pool) giving the drop reason, NULL when
    the condition passes."""
    missing_reason, outside_reason = cond.reasons()
    if cond.missing:
        return f"CASE WHEN {column} IS NOT NULL THEN ? END", [outside_reason]
    terms, params = _bounds(column, cond)
    if not terms:
        return f"CASE WHEN {column} IS NULL THEN ? END", [missing_reason]
    return (f"CASE WHEN {column} IS NULL THEN ? WHEN NOT ({' AND '.join(terms)}) THEN ? END",
            [missing_reason, *params, outside_reason])


def passes_sql(cond: Condition, column: str) -> tuple[str, list]:
    """SQL true exactly when ``column`` passes the condition (reason_sql gives NULL)."""
    if cond.missing:
        return f"{column} IS NULL", []
    terms, params = _bounds(column, cond)
    return " AND ".join([f"{column} IS NOT NULL", *terms]), params


# ---------------------------------------------------------------------------- catalogue

CATALOGUE_SCHEMA = {
    "level": pl.String, "source": pl.String, "kind": pl.String, "metric": pl.String, "label": pl.String,
    "count": pl.Int64, "min": pl.Float64, "max": pl.Float64, "integer": pl.Boolean, "binary": pl.Boolean,
}


def catalogue(*, db=None) -> pl.DataFrame:
    """Every figure the store has values for (ready datasets only), for the widgets: level,
    source (None for a CoT column), kind (of the source; 'column'), metric, label, count (CoTs or
    problems with a value), min, max, integer (every value whole), binary (every value 0 or 1).
    CoT columns first, then CoT scores, then problem scores, each by source then metric."""
    shift = store.ID_SHIFT
    ready = "(SELECT dataset_id FROM datasets WHERE status = 'ready')"
    columns = ", ".join(
        f"count({c}), min({c})::DOUBLE, max({c})::DOUBLE" for c in COT_COLUMNS
    )
    stats = "count(v.value) AS count, min(v.value) AS min, max(v.value) AS max, " \
            "coalesce(bool_and(v.value = floor(v.value)), true) AS integer, " \
            "coalesce(bool_and(v.value IN (0, 1)), false) AS binary"
    with store.connect(db, read_only=True) as con:
        row = con.execute(f"SELECT {columns} FROM cots WHERE dataset_id IN {ready}").fetchall()[0]
        scored = []
        # read-only connections create no table: a store from before problem_scores lacks it
        present = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        for level, table, key in (("cot", "scores", "cot_id"), ("problem", "problem_scores", "problem_id")):
            if table not in present:
                continue
            frame = store.fetch_pl(
                con,
                f"SELECT '{level}' AS level, ss.name AS source, ss.kind, v.metric, {stats} FROM {table} v "
                f"JOIN score_sources ss USING (source_id) WHERE (v.{key} >> {shift}) IN {ready} "
                "GROUP BY ss.source_id, ss.name, ss.kind, v.metric HAVING count(v.value) > 0 "
                "ORDER BY ss.source_id, v.metric",
            )
            scored.append(frame)
    rows = []
    for i, (metric, _) in enumerate(COT_COLUMNS.items()):
        count, lo, hi = row[3 * i: 3 * i + 3]
        if count:
            rows.append({"level": "cot", "source": None, "kind": "column", "metric": metric, "count": count,
                         "min": lo, "max": hi, "integer": True, "binary": False})
    out = pl.concat([pl.DataFrame(rows, schema={k: v for k, v in CATALOGUE_SCHEMA.items() if k != "label"}),
                     *(f.cast({k: v for k, v in CATALOGUE_SCHEMA.items() if k in f.columns}) for f in scored)],
                    how="diagonal_relaxed")
    labels = [figure_of(r).label() for r in out.iter_rows(named=True)]
    return out.with_columns(label=pl.Series(labels, dtype=pl.String)).select(list(CATALOGUE_SCHEMA))


def figure_of(row: dict[str, Any]) -> Figure:
    """The Figure a catalogue row describes."""
    return Figure(row["metric"], row["source"], row["level"])
