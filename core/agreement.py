"""How far two score sources agree: a judge against the dataset's labels, two judges, or a
judge's ``logic`` / ``correct`` against the verifier's ``correct``.

Each side is a metric read from score sources in priority order (a CoT takes the value of the
first listed source that scored it, as core.selection does: the OmniThought labels spread RV
over one source per judge). Only CoTs both sides scored with a value are compared. Values are
put into integer levels by rounding (a fused RV like 4.6 counts as 5) for the confusion
matrix and the kappas; the mean absolute difference uses the values as they are.

    >>> from core import agreement
    >>> a = agreement.Side(("omnithought",), "correct")
    >>> b = agreement.Side(("math-verify",), "correct")
    >>> frame = agreement.pairs(a, b)
    >>> agreement.statistics(frame)["kappa"]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

from core import ids, store
from core.errors import UserError
from core.render import inert_figure
from core.queries import CotFilter, matching_sql



@dataclass(frozen=True)
class Side:
    """One side of a comparison: ``metric`` from ``sources`` (first listed source wins)."""

    sources: tuple[str, ...]
    metric: str

    def __post_init__(self):
        object.__setattr__(self, "sources", tuple(self.sources))
        if not self.sources:
            raise UserError("choose at least one score source for each side")
        if not self.metric:
            raise UserError("choose a metric for each side")

    def label(self) -> str:
        return f"{self.metric} · {' > '.join(self.sources)}"


# A metric's value per CoT from a list of sources, the first listed source winning.
_PICK = (
    "SELECT s.cot_id, arg_min(s.value, list_position(?::VARCHAR[], ss.name)) AS value "
    "FROM scores s JOIN score_sources ss USING (source_id) "
    "WHERE s.metric = ? AND s.value IS NOT NULL AND list_contains(?::VARCHAR[], ss.name) "
    "GROUP BY s.cot_id"
)


def _pairs_sql(a: Side, b: Side, f: CotFilter | None, db=None) -> tuple[str, list]:
    matching, params = matching_sql(f or CotFilter(), db=db)
    sql = (
        f"WITH side_a AS ({_PICK}), side_b AS ({_PICK}) "
        "SELECT m.cot_id, m.problem_id, m.dataset, m.model, m.benchmark, m.n_tokens, "
        "side_a.value AS a, side_b.value AS b, "
        "CAST(round(side_a.value) AS INTEGER) AS a_level, CAST(round(side_b.value) AS INTEGER) AS b_level "
        f"FROM ({matching}) m JOIN side_a ON side_a.cot_id = m.cot_id JOIN side_b ON side_b.cot_id = m.cot_id"
    )
    return sql, [list(a.sources), a.metric, list(a.sources), list(b.sources), b.metric, list(b.sources), *params]


def pairs(a: Side, b: Side, f: CotFilter | None = None, *, db=None) -> pl.DataFrame:
    """Every CoT matching ``f`` that both sides scored: cot_id, problem_id, dataset, model,
    benchmark, n_tokens, a, b (values) and a_level, b_level (rounded to integers)."""
    sql, params = _pairs_sql(a, b, f, db=db)
    return store.read_df(f"{sql} ORDER BY m.cot_id", params, db=db)


def cell_page(a: Side, b: Side, f: CotFilter | None, a_level: int, b_level: int, *, offset: int = 0,
              limit: int = 25, model: str | None = None, db=None) -> tuple[pl.DataFrame, int]:
    """One page of the CoTs in a confusion-matrix cell (of one ``model``'s CoTs, if given), and
    how many the cell holds.

    Each row: cot_id, readable_id (core.ids), problem_id, dataset, model, benchmark, n_tokens,
    a, b (the values), a_raw, b_raw (what each side's source recorded as given: a judge's
    output, a label's raw value), data_answer (the answer the input itself gave for the CoT and
    its label judged, e.g. a Qwen2.5-Math harness run's ``pred``), answer (the answer extracted
    from the CoT, which math-verify checks), reference (the problem's reference answer) and the
    question's opening words."""
    sql, params = _pairs_sql(a, b, f, db=db)
    cell = f"SELECT * FROM ({sql}) WHERE a_level = ? AND b_level = ?"
    cell_params = [*params, int(a_level), int(b_level)]
    if model is not None:
        cell += " AND model IS NOT DISTINCT FROM ?"
        cell_params.append(model)
    total = store.read_rows(f"SELECT count(*) FROM ({cell})", cell_params, db=db)[0][0]
    page = store.read_df(
        f"SELECT c.cot_id, c.problem_id, c.dataset, c.model, c.benchmark, c.n_tokens, c.a, c.b, "
        "json_extract_string(t.extra, '$.harness_pred') AS data_answer, t.answer, p.reference_answer AS reference, "
        f"left(p.question, 120) AS question FROM ({cell}) c JOIN problems p ON p.problem_id = c.problem_id "
        "JOIN cots t ON t.cot_id = c.cot_id ORDER BY c.cot_id LIMIT ? OFFSET ?",
        [*cell_params, int(limit), int(offset)], db=db,
    )
    cot_ids = page["cot_id"].to_list()
    page = page.with_columns(
        pl.Series("a_raw", _raws(a, cot_ids, db=db), dtype=pl.String),
        pl.Series("b_raw", _raws(b, cot_ids, db=db), dtype=pl.String),
    ).join(ids.cot_ids_frame(cot_ids, db=db).select("cot_id", "readable_id"), on="cot_id", how="left",
           maintain_order="left")
    return page.select(CELL_COLUMNS), total


CELL_COLUMNS = ("readable_id", "model", "a", "b", "a_raw", "b_raw", "data_answer", "answer", "reference", "dataset",
                "benchmark", "n_tokens", "question", "cot_id", "problem_id")


def _raws(side: Side, cot_ids: list[int], *, db=None) -> list[str | None]:
    """Per CoT, the ``raw`` of the score its side's value came from (the first listed source
    with a value)."""
    if not cot_ids:
        return []
    rows = store.read_rows(
        "SELECT s.cot_id, ss.name, s.raw FROM scores s JOIN score_sources ss USING (source_id) "
        "WHERE s.metric = ? AND s.value IS NOT NULL AND list_contains(?::VARCHAR[], ss.name) "
        "AND s.cot_id IN (SELECT unnest(?::BIGINT[]))", [side.metric, list(side.sources), cot_ids], db=db)
    best: dict[int, tuple[int, str | None]] = {}
    for cot_id, name, raw in rows:
        rank = side.sources.index(name)
        if cot_id not in best or rank < best[cot_id][0]:
            best[cot_id] = (rank, raw)
    return [best[c][1] if c in best else None for c in cot_ids]


def by_model(frame: pl.DataFrame, shown: list[int] | None = None) -> pl.DataFrame:
    """``statistics`` for each model's CoTs of ``pairs`` (on the same levels), largest first:
    model, n, exact, within_1, kappa, weighted_kappa, mad."""
    shown = levels(frame) if shown is None else shown
    rows = []
    for (model,), part in frame.group_by("model", maintain_order=True):
        stats = statistics(part, shown)
        rows.append({"model": model, **{k: stats[k] for k in ("n", "exact", "within_1", "kappa", "weighted_kappa", "mad")}})
    schema = {"model": pl.String, "n": pl.Int64, "exact": pl.Float64, "within_1": pl.Float64, "kappa": pl.Float64,
              "weighted_kappa": pl.Float64, "mad": pl.Float64}
    return pl.DataFrame(rows, schema=schema).sort(["n", "model"], descending=[True, False], nulls_last=True)


def levels(frame: pl.DataFrame) -> list[int]:
    """The integer levels the matrix shows: 0-9 when either side uses more than two levels
    inside 0-9 (RV / CD scales, so empty rows and columns still show), else those seen."""
    seen = sorted(set(frame["a_level"].to_list()) | set(frame["b_level"].to_list()))
    if seen and len(seen) > 2 and seen[0] >= 0 and seen[-1] <= 9:
        return list(range(10))
    if seen and set(seen) <= {0, 1}:
        return [0, 1]
    return seen


def confusion(frame: pl.DataFrame, shown: list[int] | None = None) -> list[list[int]]:
    """Counts: rows are side A's levels, columns side B's, in the order of ``shown``."""
    shown = levels(frame) if shown is None else shown
    index = {v: i for i, v in enumerate(shown)}
    matrix = [[0] * len(shown) for _ in shown]
    counts = frame.group_by("a_level", "b_level").len()
    for a_level, b_level, n in counts.iter_rows():
        matrix[index[a_level]][index[b_level]] += n
    return matrix


def cohen_kappa(matrix: list[list[int]], *, weights: str | None = None, values: list[float] | None = None) -> float | None:
    """Cohen's kappa of a square count matrix; ``weights="quadratic"`` gives the
    quadratic-weighted kappa, with disagreement (v_i - v_j)^2 over the level ``values``
    (default 0, 1, 2, ...). None when the chance agreement leaves nothing to beat (both sides
    constant on one level, or no pairs).

    >>> cohen_kappa([[20, 5], [10, 15]])
    0.4
    """
    k = len(matrix)
    n = sum(sum(row) for row in matrix)
    if n == 0 or k == 0:
        return None
    rows = [sum(matrix[i]) / n for i in range(k)]
    cols = [sum(matrix[i][j] for i in range(k)) / n for j in range(k)]
    if weights is None:
        observed = sum(matrix[i][i] for i in range(k)) / n
        expected = sum(rows[i] * cols[i] for i in range(k))
        return None if expected >= 1.0 else round((observed - expected) / (1.0 - expected), 12)
    if weights != "quadratic":
        raise ValueError("weights must be None or 'quadratic'")
    values = list(range(k)) if values is None else values
    w = [[(values[i] - values[j]) ** 2 for j in range(k)] for i in range(k)]
    observed = sum(w[i][j] * matrix[i][j] / n for i in range(k) for j in range(k))
    expected = sum(w[i][j] * rows[i] * cols[j] for i in range(k) for j in range(k))
    return None if expected == 0 else round(1.0 - observed / expected, 12)


def statistics(frame: pl.DataFrame, shown: list[int] | None = None) -> dict[str, Any]:
    """n, exact agreement, agreement within ±1 (scales with more than two levels), Cohen's
    kappa, quadratic-weighted kappa (more than two levels) and the mean absolute difference."""
    shown = levels(frame) if shown is None else shown
    n = frame.height
    ordinal = len(shown) > 2
    if n == 0:
        return {"n": 0, "exact": None, "within_1": None, "kappa": None, "weighted_kappa": None, "mad": None, "ordinal": ordinal}
    matrix = confusion(frame, shown)
    diff = (frame["a_level"] - frame["b_level"]).abs()
    return {
        "n": n,
        "exact": float((diff == 0).mean()),
        "within_1": float((diff <= 1).mean()) if ordinal else None,
        "kappa": cohen_kappa(matrix),
        "weighted_kappa": cohen_kappa(matrix, weights="quadratic", values=shown) if ordinal else None,
        "mad": float((frame["a"] - frame["b"]).abs().mean()),
        "ordinal": ordinal,
    }


def confusion_figure(matrix: list[list[int]], shown: list[int], a: Side, b: Side):
    """A plotly heatmap of the counts (A's levels down, B's across), each cell labelled.

    Plotly cannot select a heatmap cell, so an invisible point sits on every cell and carries
    the hover text and the click (``hoverdistance=-1``: a click anywhere in a cell picks that
    cell's point, the nearest one). The selected point's x and y are B's and A's level.
    """
    import plotly.graph_objects as go

    labels = [str(v) for v in shown]
    cells = [(labels[j], labels[i], matrix[i][j]) for i in range(len(labels)) for j in range(len(labels))]
    fig = go.Figure()
    fig.add_trace(go.Heatmap(
        z=matrix, x=labels, y=labels, colorscale="Blues", text=matrix, texttemplate="%{text}", hoverinfo="skip",
        colorbar={"title": "CoTs"},
    ))
    invisible = {"color": "rgba(0,0,0,0)", "size": 12}
    fig.add_trace(go.Scatter(
        x=[c[0] for c in cells], y=[c[1] for c in cells], customdata=[c[2] for c in cells], mode="markers",
        marker=invisible, selected={"marker": {"opacity": 0}}, unselected={"marker": {"opacity": 0}},
        hovertemplate=f"{b.label()}: %{{x}}<br>{a.label()}: %{{y}}<br>%{{customdata}} CoTs<extra></extra>",
        showlegend=False, name="cells",
    ))
    fig.update_layout(
        xaxis={"title": f"B: {b.label()}", "type": "category"},
        yaxis={"title": f"A: {a.label()}", "type": "category", "autorange": "reversed"},
        height=460 if len(shown) > 2 else 300, margin={"l": 60, "r": 10, "t": 20, "b": 60},
        hovermode="closest", hoverdistance=-1,
    )
    return inert_figure(fig)  # labels come from the data


def metric_sources(*, db=None) -> dict[str, list[dict[str, str]]]:
    """Per metric, the sources that gave it (name and kind), in the order they entered the store."""
    rows = store.read_rows(
        "SELECT s.metric, ss.name, ss.kind FROM score_sources ss "
        "JOIN (SELECT DISTINCT source_id, metric FROM scores) s USING (source_id) ORDER BY s.metric, ss.source_id",
        db=db,
    )
    out: dict[str, list[dict[str, str]]] = {}
    for metric, name, kind in rows:
        out.setdefault(metric, []).append({"name": name, "kind": kind})
    return out


def default_sides(catalogue: dict[str, list[dict[str, str]]]) -> tuple[Side, Side] | None:
    """A first comparison worth looking at: the newest judge's RV (or CD, or logic) against the
    dataset's labels of that metric; else a label's correctness against the verifier's; else the
    first two sources of one metric. None when no metric has two sources. Where people have
    labelled a metric that a judge, a verifier or a dataset's labels also give, that comparison
    comes first: the newest judge (else verifier, else dataset label) against the first annotator."""
    for metric in ("rv", "cd", "logic", "correct"):
        found = catalogue.get(metric, [])
        people = [s["name"] for s in found if s["kind"] == "human" and s["name"] != "annotations"]
        machines = next((names for kind in ("judge", "verifier", "label")
                         if (names := [s["name"] for s in found if s["kind"] == kind])), [])
        if people and machines:
            return Side((machines[-1],), metric), Side((people[0],), metric)
    for metric in ("rv", "cd"):
        found = catalogue.get(metric, [])
        judges = [s["name"] for s in found if s["kind"] == "judge"]
        labels = [s["name"] for s in found if s["kind"] != "judge"]
        if judges and labels:
            return Side((judges[-1],), metric), Side(tuple(labels), metric)
    correct = catalogue.get("correct", [])
    verifiers = [s["name"] for s in correct if s["kind"] == "verifier"]
    judged_logic = [s["name"] for s in catalogue.get("logic", []) if s["kind"] == "judge"]
    if judged_logic and verifiers:
        return Side((judged_logic[-1],), "logic"), Side((verifiers[0],), "correct")
    others = [s["name"] for s in correct if s["kind"] != "verifier"]
    if others and verifiers:
        return Side((others[0],), "correct"), Side((verifiers[0],), "correct")
    for metric, found in catalogue.items():
        if len(found) >= 2:
            return Side((found[-1]["name"],), metric), Side((found[0]["name"],), metric)
    return None
