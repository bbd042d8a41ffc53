"""The filter every page shares, and the read queries the app runs through it.

A ``CotFilter`` says which CoTs a researcher is looking at; ``matching_sql`` turns it into one
SQL query with every user value bound as a parameter. Pages never write SQL: they build a
filter from widgets (or the URL) and call these functions, which return polars frames.

Besides its fixed fields (datasets, models, RV/CD/correctness from a chosen source, tokens,
...), a filter carries ``conditions``: any number of :class:`core.figures.Condition` on any
figure of the store (a CoT column, any (source, metric) of ``scores`` or of
``problem_scores``), each a range or "has a value" / "has no value". See core/figures.py for
how a stage's figures become filterable without touching this module.

Correctness defaults to each dataset's own source (``correct_source=OWN_CORRECTNESS``): a CoT
takes the verdict of the first label source (the dataset's own, in store order) that judged it,
else of a verifier (math-verify); :func:`correctness_in_use` says which source each dataset's
CoTs got. When a filter matches nothing, :func:`empty_diagnosis` counts what each condition
alone would let back in.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import polars as pl

from core import store
from core.figures import Condition, FigureError, conditions_from_json, conditions_to_json, fmt, where_sql

# correct_source meaning "each dataset's own": per CoT, the first label source that judged it,
# else a verifier's verdict (see own_correctness_sources)
OWN_CORRECTNESS = "@own"
OWN_CORRECTNESS_LABEL = "each dataset's own (its label, else math-verify)"

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
    conditions: tuple[Condition, ...] = ()  # on any figure (core.figures); all must hold
    problem_set: str = ""  # key of a saved set of problems (core.problem_sets), e.g. a lasso on the map

    # ---- URL round trip: a view can be shared and reloaded
    def to_params(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value in (None, (), "", "any"):
                continue
            if f.name == "conditions":
                out[f.name] = conditions_to_json(value)
            elif isinstance(value, tuple):
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
        if get("conditions"):
            try:
                kwargs["conditions"] = conditions_from_json(str(get("conditions")))
            except FigureError:
                pass
        return cls(**kwargs)

    def with_(self, **changes) -> CotFilter:
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (conditions as flat dicts); recipes.filter_from_dict reverses it."""
        out = asdict(replace(self, conditions=()))
        out["conditions"] = [c.as_dict() for c in self.conditions]
        return out

    def relaxations(self) -> list[tuple[str, CotFilter]]:
        """Each constraint of the filter in words, with the filter that has all the others: what
        :func:`empty_diagnosis` counts to say which condition emptied a view."""
        out: list[tuple[str, CotFilter]] = []
        for name, label in (("datasets", "datasets"), ("models", "models"), ("benchmarks", "benchmarks")):
            if getattr(self, name):
                out.append((f"{label}: {', '.join(getattr(self, name))}", self.with_(**{name: ()})))
        for name, label, source in (("rv_range", "RV", self.rv_source), ("cd_range", "CD", self.cd_source)):
            bounds = getattr(self, name)
            if source and bounds:
                out.append((f"{label} {fmt(bounds[0])}–{fmt(bounds[1])} ({source})", self.with_(**{name: None})))
        if self.correct_source and self.correct != "any":
            out.append((f"correctness: {self.correct} ({correctness_label(self.correct_source)})",
                        self.with_(correct="any")))
        if self.tokens_range:
            out.append((f"tokens {fmt(self.tokens_range[0])}–{fmt(self.tokens_range[1])}", self.with_(tokens_range=None)))
        if self.reflections_range:
            lo, hi = self.reflections_range
            out.append((f"reflection markers {fmt(lo)}–{fmt(hi)}", self.with_(reflections_range=None)))
        if self.truncated is not None:
            out.append(("only truncated" if self.truncated else "only complete", self.with_(truncated=None)))
        if self.text:
            out.append((f"search “{self.text}”", self.with_(text="")))
        if self.problem_ids:
            out.append((f"{len(self.problem_ids):,} picked problem(s)", self.with_(problem_ids=())))
        if self.problem_set:
            out.append(("problems picked on the map", self.with_(problem_set="")))
        for i, cond in enumerate(self.conditions):
            out.append((cond.describe(), self.with_(conditions=self.conditions[:i] + self.conditions[i + 1:])))
        return out


def correctness_label(source: str | None) -> str:
    """How a correctness source is named on screen ('each dataset's own ...' for OWN_CORRECTNESS)."""
    return OWN_CORRECTNESS_LABEL if source == OWN_CORRECTNESS else (source or "none")


# own_correctness_sources is read on every matching_sql of the default filter: cached per store
# file and write stamp (a read never changes the stamp)
_own_cache: dict[tuple[str, tuple[float, float]], tuple[str, ...]] = {}
_own_lock = threading.Lock()


def own_correctness_sources(*, db=None) -> tuple[str, ...]:
    """The sources OWN_CORRECTNESS reads, in priority order: every label source that gave
    'correct' to some CoT (a dataset's own verdicts; in store order), then every verifier
    (math-verify). A label source only judges its own dataset's CoTs, so a CoT gets its
    dataset's label where it has one, else the verifier's verdict."""
    key = (str(store.db_path(db)), store.write_stamp(db))
    with _own_lock:
        if key in _own_cache:
            return _own_cache[key]
    rows = store.read_rows(
        "SELECT ss.name FROM score_sources ss WHERE ss.kind IN ('label', 'verifier') AND EXISTS "
        "(SELECT 1 FROM scores s WHERE s.source_id = ss.source_id AND s.metric = 'correct') "
        "ORDER BY ss.kind <> 'label', ss.source_id", db=db,
    )
    names = tuple(r[0] for r in rows)
    with _own_lock:
        if len(_own_cache) > 16:
            _own_cache.clear()
        _own_cache[key] = names
    return names


def _sources_of(source: str | None, *, db=None) -> tuple[str, ...]:
    """A filter's source field as the priority list of sources it reads."""
    if not source:
        return ()
    return own_correctness_sources(db=db) if source == OWN_CORRECTNESS else (source,)


def _score_join(alias: str, sources: tuple[str, ...], metric: str, params: list) -> tuple[str, str]:
    """(select column, LEFT JOIN) for one metric as column ``alias``, from one source or, given
    several, from the first of them (in order) that has a value for the CoT.

    A hash join on the source's scores: at 2M CoTs a correlated subquery per row costs
    several times more."""
    if not sources:
        return f", NULL::DOUBLE AS {alias}", ""
    if len(sources) == 1:
        params.extend([sources[0], metric])
        join = (
            f" LEFT JOIN (SELECT s.cot_id, any_value(s.value) AS value FROM scores s "
            f"JOIN score_sources ss USING (source_id) WHERE ss.name = ? AND s.metric = ? "
            f"GROUP BY s.cot_id) {alias}_s ON {alias}_s.cot_id = c.cot_id"
        )
    else:
        params.extend([list(sources), list(range(len(sources))), metric])
        join = (
            f" LEFT JOIN (SELECT s.cot_id, arg_min(s.value, w.priority) AS value FROM scores s JOIN "
            f"(SELECT ss.source_id, w.priority FROM (SELECT unnest(?::VARCHAR[]) AS name, unnest(?::INTEGER[]) AS priority) w "
            f"JOIN score_sources ss USING (name)) w USING (source_id) WHERE s.metric = ? AND s.value IS NOT NULL "
            f"GROUP BY s.cot_id) {alias}_s ON {alias}_s.cot_id = c.cot_id"
        )
    return f", {alias}_s.value AS {alias}", join


# matching_sql pivots the scores in one scan from this many chosen metrics on (a single metric
# keeps its own join, the same work); bench/bench_filter_cost.py sets it out of reach for the
# before-side of its comparison
PIVOT_MIN_METRICS = 2


def _scores_pivot(wanted: list[tuple[str, tuple[str, ...], str]], params: list) -> tuple[str, str]:
    """(select columns, one LEFT JOIN) for several metrics at once: every wanted (source,
    metric) pair's scores read in ONE scan and pivoted into a column per metric, each the value
    of its first source (in priority order) that scored the CoT.

    Same values as one ``_score_join`` per metric (any_value and arg_min skip NULL values), for
    0.70x the DuckDB CPU with RV, CD and correctness chosen (one hash aggregate and one join
    instead of three of each; bench/bench_filter_cost.py at 300k CoTs, bench/README.md). The
    metric names each column, so no two wanted pairs collide."""
    names, metrics, priorities = [], [], []
    columns, picks = "", []
    for alias, sources, metric in wanted:
        if not sources:
            columns += f", NULL::DOUBLE AS {alias}"
            continue
        for i, name in enumerate(sources):
            names.append(name)
            metrics.append(metric)
            priorities.append(i)
        picks.append(f"arg_min(s.value, w.priority) FILTER (WHERE w.metric = '{metric}') AS {alias}")
        columns += f", sc.{alias} AS {alias}"
    params.extend([names, metrics, priorities])
    join = (
        f" LEFT JOIN (SELECT s.cot_id, {', '.join(picks)} FROM scores s JOIN (SELECT w.metric, w.priority, ss.source_id "
        "FROM (SELECT unnest(?::VARCHAR[]) AS name, unnest(?::VARCHAR[]) AS metric, unnest(?::INTEGER[]) AS priority) w "
        "JOIN score_sources ss USING (name)) w ON w.source_id = s.source_id AND w.metric = s.metric "
        "WHERE s.value IS NOT NULL GROUP BY s.cot_id) sc ON sc.cot_id = c.cot_id"
    )
    return columns, join


def matching_sql(f: CotFilter, *, text_columns: bool = False, db=None) -> tuple[str, list]:
    """SQL for every CoT the filter matches, one row per CoT with its metadata and the
    chosen RV, CD and correctness values; plus its bound parameters.

    A text search goes through the store's full-text index (core.search) when it covers every
    ready dataset, else through a substring scan; ``db`` says which store's index to use."""
    params: list = []
    select = (
        "SELECT c.cot_id, c.problem_id, c.dataset_id, d.name AS dataset, d.generated, c.model, "
        "p.benchmark, c.sample_idx, c.n_tokens, c.tokenizer, c.n_chars, c.n_paragraphs, c.n_reflections, "
        "c.truncated, c.answer"
    )
    joins = ""
    wanted = [(alias, _sources_of(source, db=db), metric) for alias, source, metric in
              (("rv", f.rv_source, "rv"), ("cd", f.cd_source, "cd"), ("correct_value", f.correct_source, "correct"))]
    if sum(bool(sources) for _, sources, _ in wanted) >= PIVOT_MIN_METRICS:
        column, joins = _scores_pivot(wanted, params)
        select += column
    else:
        for alias, sources, metric in wanted:
            column, join = _score_join(alias, sources, metric, params)
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
    for cond in f.conditions:
        condition, cond_params = where_sql(cond)
        where.append(condition)
        params.extend(cond_params)
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


def rows_only(f: CotFilter) -> CotFilter:
    """``f`` without the score sources that decide no row (see _scores_only_shown): for a caller
    that reads the scores itself (Select's pool pivots its own), the same rows without a
    second scan of ``scores``."""
    return _scores_only_shown(f) or f


def count(f: CotFilter, *, db=None) -> dict[str, int]:
    sql, params = matching_sql(_scores_only_shown(f) or f, db=db)
    row = store.read_rows(f"SELECT count(*), count(DISTINCT problem_id) FROM ({sql})", params, db=db)[0]
    return {"cots": row[0], "problems": row[1]}


def empty_diagnosis(f: CotFilter, *, db=None) -> pl.DataFrame:
    """For a filter that matches nothing: each of its constraints (in words) and how many CoTs
    the filter matches without it (the others kept), largest first. A constraint whose row
    is non-zero is one that emptied the view on its own; if every row is 0, several
    constraints together do."""
    rows = [{"condition": label, "cots_without_it": count(relaxed, db=db)["cots"]} for label, relaxed in f.relaxations()]
    schema = {"condition": pl.String, "cots_without_it": pl.Int64}
    return pl.DataFrame(rows, schema=schema).sort("cots_without_it", descending=True, maintain_order=True)


def correctness_in_use(source: str | None, *, datasets: tuple[str, ...] = (), db=None) -> pl.DataFrame:
    """Which sources give each dataset's CoTs their correctness under ``source`` (a source name
    or OWN_CORRECTNESS): dataset, n_cots (its CoTs), source, priority (0 is read first), cots
    (its CoTs with a verdict from that source); a dataset no source judged has one row with
    source None. One scan of the 'correct' scores (ids carry their dataset), no per-CoT join:
    it runs after every store write, for the sidebar."""
    sources = list(_sources_of(source, db=db))
    where = "d.status = 'ready'"
    params: list = [sources, list(range(len(sources)))]
    if datasets:
        where += f" AND d.name IN ({', '.join('?' * len(datasets))})"
        params.extend(datasets)
    return store.read_df(
        "WITH w AS (SELECT ss.source_id, w.name, w.priority FROM (SELECT unnest(?::VARCHAR[]) AS name, "
        " unnest(?::INTEGER[]) AS priority) w JOIN score_sources ss USING (name)), "
        f"judged AS (SELECT (s.cot_id >> {store.ID_SHIFT})::INTEGER AS dataset_id, w.name AS source, w.priority, "
        " count(*) AS cots FROM scores s JOIN w USING (source_id) WHERE s.metric = 'correct' AND s.value IS NOT NULL "
        " GROUP BY ALL) "
        "SELECT d.name AS dataset, d.n_cots, j.source, j.priority, coalesce(j.cots, 0) AS cots FROM datasets d "
        f"LEFT JOIN judged j USING (dataset_id) WHERE {where} ORDER BY d.dataset_id, j.priority", params, db=db,
    )


def figure_values(cot_ids: list[int], figures: list, *, db=None) -> pl.DataFrame:
    """cot_id and one column per figure (named by its label) for a few CoTs, e.g. a page of
    Explore: the values of the figures the filter's conditions use."""
    frame = pl.DataFrame({"cot_id": cot_ids}, schema={"cot_id": pl.Int64})
    if not cot_ids or not figures:
        return frame
    with store.connect(db, read_only=True) as con:
        for figure in dict.fromkeys(figures):
            if figure.is_column:
                sql = f"SELECT cot_id, {figure.metric}::DOUBLE AS value FROM cots WHERE cot_id IN (SELECT unnest(?::BIGINT[]))"
                params = [cot_ids]
            else:
                table, key = ("scores", "cot_id") if figure.level == "cot" else ("problem_scores", "problem_id")
                sql = (f"SELECT c.cot_id, any_value(v.value) AS value FROM cots c JOIN {table} v ON v.{key} = c.{key} "
                       "JOIN score_sources ss ON ss.source_id = v.source_id AND ss.name = ? "
                       "WHERE v.metric = ? AND c.cot_id IN (SELECT unnest(?::BIGINT[])) GROUP BY c.cot_id")
                params = [figure.source, figure.metric, cot_ids]
            values = store.fetch_pl(con, sql, params).rename({"value": figure.label()})
            frame = frame.join(values.cast({"cot_id": pl.Int64}), on="cot_id", how="left", maintain_order="left")
    return frame


def _page_scores(f: CotFilter, rows: pl.DataFrame, con, db=None) -> pl.DataFrame:
    """``rows`` (a page read without score joins) with its rv, cd, correct_value and correct
    filled from ``f``'s sources: a look-up of the page's few ids, as the joins would give."""
    wanted = [(alias, _sources_of(source, db=db), metric) for alias, source, metric in
              (("rv", f.rv_source, "rv"), ("cd", f.cd_source, "cd"), ("correct_value", f.correct_source, "correct"))
              if source]
    wanted = [w for w in wanted if w[1]]
    if not wanted or rows.height == 0:
        return rows
    # per alias, the value of its first source (in priority order) that scored the CoT
    picks = " ".join(f"arg_min(s.value, w.priority) FILTER (WHERE w.alias = '{a}') AS {a}," for a, _, _ in wanted)
    pairs = [(alias, metric, name, i) for alias, names, metric in wanted for i, name in enumerate(names)]
    aliases, metrics, names, priorities = (list(column) for column in zip(*pairs))
    values = store.fetch_pl(
        con, f"SELECT s.cot_id, {picks.rstrip(',')} FROM scores s JOIN (SELECT w.*, ss.source_id FROM ("
        "SELECT unnest(?::VARCHAR[]) AS alias, unnest(?::VARCHAR[]) AS metric, unnest(?::VARCHAR[]) AS name, "
        "unnest(?::INTEGER[]) AS priority) w JOIN score_sources ss USING (name)) w "
        "ON w.source_id = s.source_id AND w.metric = s.metric "
        "WHERE s.value IS NOT NULL AND s.cot_id IN (SELECT unnest(?::BIGINT[])) GROUP BY s.cot_id",
        [aliases, metrics, names, priorities, rows["cot_id"].to_list()],
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
        return _page_scores(f, rows, con, db) if lean is not None else rows


def metric_frame(f: CotFilter, *, db=None) -> pl.DataFrame:
    """Every matching CoT's numbers (no text) for the metrics in core.metrics, with the
    tokenizer each token count came from."""
    sql, params = matching_sql(f, db=db)
    return store.read_df(
        f"SELECT cot_id, problem_id, dataset, model, benchmark, n_tokens, tokenizer, n_reflections, "
        f"truncated, rv, cd, correct FROM ({sql})", params, db=db,
    )


def tokenizers(f: CotFilter, *, db=None) -> dict[str | None, int]:
    """CoTs with a token count per tokenizer among those ``f`` matches, largest first: what a
    token axis over them must name (core.tokens.token_unit), and whether they mix tokenizers."""
    sql, params = matching_sql(_scores_only_shown(f) or f, db=db)
    return dict(store.read_rows(
        f"SELECT tokenizer, count(*) FROM ({sql}) WHERE n_tokens IS NOT NULL GROUP BY 1 ORDER BY 2 DESC, 1", params, db=db))


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


def slider_maxima(*, db=None) -> dict[str, int]:
    """The largest token count and reflection-marker count of any CoT (0 for an empty store):
    the upper ends of the sidebar's sliders."""
    tokens, reflections = store.read_rows(
        "SELECT coalesce(max(n_tokens), 0), coalesce(max(n_reflections), 0) FROM cots", db=db)[0]
    return {"max_tokens": int(tokens), "max_reflections": int(reflections)}


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


# ------------------------------------------------------------------ the Reader's CoT order

# How the Reader lists a problem's CoTs, and how j/k step through the filter: problem by
# problem (in id order, as n/p do), and within a problem by model, sample and id.
READER_ORDER = "model NULLS LAST, sample_idx, cot_id"


def matching_cots_of_problem(f: CotFilter, problem_id: int, *, db=None) -> list[int]:
    """The CoTs of one problem that ``f`` matches, in the Reader's order."""
    if f.problem_ids and problem_id not in f.problem_ids:
        return []
    narrowed = f.with_(problem_ids=(int(problem_id),))
    sql, params = matching_sql(_scores_only_shown(narrowed) or narrowed, db=db)
    return [r[0] for r in store.read_rows(f"SELECT cot_id FROM ({sql}) ORDER BY {READER_ORDER}", params, db=db)]


def step_cot(f: CotFilter, problem_id: int, cot_id: int | None, step: int, *, db=None) -> tuple[int, int] | None:
    """(problem id, CoT id) of the CoT the filter matches after (``step`` = 1) or before
    (``step`` = -1) ``cot_id`` of ``problem_id`` in the Reader's order; ``cot_id`` None stands
    before the problem's first CoT. None at either end of the filter. ``cot_id`` itself need
    not match the filter (a permalink opens any CoT)."""
    if step not in (1, -1):
        raise ValueError("step must be 1 or -1")
    order = [r[0] for r in store.read_rows(
        f"SELECT cot_id FROM cots WHERE problem_id = ? ORDER BY {READER_ORDER}", [int(problem_id)], db=db)]
    matching = set(matching_cots_of_problem(f, problem_id, db=db))
    at = order.index(cot_id) if cot_id in order else -1
    ahead = order[at + 1:] if step == 1 else (order[:at][::-1] if at >= 0 else [])
    for candidate in ahead:
        if candidate in matching:
            return int(problem_id), int(candidate)
    previous_id, next_id = neighbours(f, problem_id, db=db)
    other = next_id if step == 1 else previous_id
    if other is None:
        return None
    cots = matching_cots_of_problem(f, other, db=db)
    if not cots:  # cannot happen: neighbours are problems with a matching CoT
        return None
    return int(other), int(cots[0] if step == 1 else cots[-1])


def cot_texts(cot_ids: list[int], *, db=None) -> pl.DataFrame:
    """cot_id, question and full_text of a few CoTs (a page of Explore, for its search snippets)."""
    if not cot_ids:
        return pl.DataFrame(schema={"cot_id": pl.Int64, "question": pl.String, "full_text": pl.String})
    return store.read_df(
        "SELECT c.cot_id, p.question, c.full_text FROM cots c JOIN problems p ON p.problem_id = c.problem_id "
        "WHERE c.cot_id IN (SELECT unnest(?::BIGINT[]))", [[int(i) for i in cot_ids]], db=db,
    )


def search_snippets(cot_ids: list[int], phrase: str, *, db=None) -> pl.DataFrame:
    """Where a text search hit each of a few CoTs: cot_id, where ('CoT' or 'question': the
    search also matches a CoT through its problem's question), before, hit, after (the text
    around the first hit, core.render.snippet). Matched as the search ran: whole words in order
    through the index, else the substring; a CoT with no hit has nulls."""
    from core import render

    whole_words = text_search_mode(phrase, db=db).startswith("index")
    pattern = render.search_pattern(phrase, whole_words=whole_words)
    rows = []
    for cot_id, question, full_text in cot_texts(cot_ids, db=db).iter_rows():
        where, parts = "CoT", render.snippet(full_text, pattern)
        if parts is None:
            where, parts = "question", render.snippet(question, pattern)
        rows.append((cot_id, where if parts else None, *(parts or (None, None, None))))
    schema = {"cot_id": pl.Int64, "where": pl.String, "before": pl.String, "hit": pl.String, "after": pl.String}
    return pl.DataFrame(rows, schema=schema, orient="row")
