"""Agreement: two score sources on the same CoTs as a confusion matrix, with exact agreement,
agreement within ±1, Cohen's kappa (quadratic-weighted for 0-9 scales) and the mean absolute
difference, overall and split by model. Click a cell (or pick it below the chart) to list its
CoTs, all or one model's, with what each source recorded, the answer the data gave, the answer
extracted from the CoT and the reference; open one in the Reader. A person's labels are a source
too (``human: <name>``): against a judge, this is how far to trust the judge on the CoTs
nobody labelled.

Every number is computed on all CoTs the sidebar filter matches that both sides scored.
"""

from __future__ import annotations

import math

import polars as pl
import streamlit as st

from core import agreement, labels, render, store
from core.agreement import Side
from core.queries import CotFilter
from ui import common, reader_view, steps_view

PAGE_SIZE = 25


@st.cache_data(ttl=600, show_spinner="Pairing the scores…", max_entries=16)
def cached_pairs(filter_key: str, stamp: tuple[float, float], a: Side, b: Side, _f: CotFilter) -> pl.DataFrame:
    del filter_key, stamp  # the cache key only
    return agreement.pairs(a, b, _f)


@st.cache_data(ttl=600, show_spinner=False)
def cached_catalogue(stamp: tuple[float, float]) -> dict:
    del stamp
    with store.labels_off():  # the labels' sources are added fresh (with_human_sources)
        return agreement.metric_sources()


def with_human_sources(catalogue: dict) -> dict:
    """The store's sources per metric plus the human labels' (every annotator is a source)."""
    out = {metric: list(found) for metric, found in catalogue.items()}
    for metric, source in common.human_figures().select("metric", "source").iter_rows():
        if source != labels.COMBINED:
            out.setdefault(metric, []).append({"name": source, "kind": "human"})
    return out


def _cell_from_click() -> None:
    """on_select: a click on a heatmap cell becomes the cell picked below the chart."""
    event = st.session_state.get("agr_heatmap")
    points = event.selection.points if event is not None else []
    if points and points[0].get("x") is not None and points[0].get("y") is not None:
        st.session_state["agr_cell_a"] = int(points[0]["y"])
        st.session_state["agr_cell_b"] = int(points[0]["x"])
        st.session_state["agr_page"] = 1


def _side_widgets(column, which: str, catalogue: dict, default: Side | None) -> Side | None:
    metrics = sorted(catalogue)
    metric_key, sources_key = f"agr_{which}_metric", f"agr_{which}_sources"
    if metric_key not in st.session_state and default is not None:
        st.session_state[metric_key] = default.metric
        st.session_state[sources_key] = list(default.sources)
    metric = column.selectbox(f"{which.upper()}: metric", metrics, key=metric_key)
    names = [s["name"] for s in catalogue.get(metric, [])]
    # sources of another metric, left from before the metric changed, are dropped
    st.session_state[sources_key] = [n for n in st.session_state.get(sources_key, names[:1]) if n in names] or names[:1]
    sources = column.multiselect(
        f"{which.upper()}: sources (first listed wins)", names, key=sources_key,
        help="Several sources count as one: a CoT takes the value of the first listed source that scored it "
             "(OmniThought's labels spread RV and CD over one source per judge).",
    )
    return Side(tuple(sources), metric) if sources and metric else None


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


st.title("Agreement")
with common.guard():
    f = common.sidebar_filter()
    if st.segmented_control("Compare", ["CoT scores", "step labels"], default="CoT scores", key="agr_mode") == "step labels":
        steps_view.agreement_section(f)  # two step sources, step by step (ui/steps_view.py)
        st.stop()
    stamp = common.store_stamp()
    catalogue = with_human_sources(cached_catalogue(stamp[:2]))
    if not catalogue:
        st.info("The store holds no scores yet. Ingest a dataset with labels, verify answers, or run a judge on the Jobs page.")
        st.stop()
    st.caption("Compare two sources of scores on the same CoTs: a judge against the dataset's labels, two judges, "
               "or a judge's logic verdict against the verifier's correctness. Values are rounded to whole levels "
               "for the matrix and the kappas; the mean absolute difference uses them as they are.")
    left, right = st.columns(2)
    defaults = agreement.default_sides(catalogue) or (None, None)
    a = _side_widgets(left, "a", catalogue, defaults[0])
    b = _side_widgets(right, "b", catalogue, defaults[1])
    if a is None or b is None:
        st.info("Choose a metric and at least one source for each side.")
        st.stop()

    if any(labels.is_human_source(s) for s in (*a.sources, *b.sources)):
        common.labels_in_view()  # a side is people's labels: refresh after each new label
        stamp = common.store_stamp()
    frame = cached_pairs(repr(f), stamp, a, b, f)
    if frame.height == 0:
        st.info("No CoT matching the filter has a value from both sides. Sources that split a metric between them "
                "(one per judge) score different CoTs: list them together on one side, or widen the filter.")
        st.stop()
    shown = agreement.levels(frame)
    stats = agreement.statistics(frame, shown)
    cells = [*st.columns(3), *st.columns(3)]
    cells[0].metric("CoTs scored by both", f"{stats['n']:,}")
    cells[1].metric("Exact agreement", _percent(stats["exact"]))
    cells[2].metric("Within ±1", _percent(stats["within_1"]), help="Only for scales with more than two levels.")
    cells[3].metric("Cohen's kappa", _number(stats["kappa"]),
                    help="Agreement beyond chance: 1 is perfect, 0 what chance gives. '—' when one side gives a single level only.")
    cells[4].metric("Quadratic-weighted kappa", _number(stats["weighted_kappa"]),
                    help="Kappa that counts a disagreement by its squared distance (ordinal scales).")
    cells[5].metric("Mean absolute difference", _number(stats["mad"]))
    if frame["model"].n_unique() > 1 and st.toggle("Split by model", key="agr_split"):
        st.dataframe(agreement.by_model(frame, shown), hide_index=True, key="agr_by_model", column_config={
            "model": st.column_config.TextColumn("model", width="large"), "n": "CoTs scored by both",
            "exact": st.column_config.NumberColumn("exact agreement", format="percent"),
            "within_1": st.column_config.NumberColumn("within ±1", format="percent"),
            "kappa": st.column_config.NumberColumn("Cohen's kappa", format="%.3f"),
            "weighted_kappa": st.column_config.NumberColumn("weighted kappa", format="%.3f"),
            "mad": st.column_config.NumberColumn("mean abs. difference", format="%.3f")})

    matrix = agreement.confusion(frame, shown)
    st.plotly_chart(agreement.confusion_figure(matrix, shown, a, b), key="agr_heatmap", on_select=_cell_from_click,
                    selection_mode=("points",), width="stretch")

    st.subheader("CoTs in a cell")
    pick_a, pick_b, page_col = st.columns([2, 2, 1])
    for key in ("agr_cell_a", "agr_cell_b"):
        if st.session_state.get(key) not in (None, *shown):
            st.session_state[key] = None  # a level the new comparison does not have
    options = [None, *shown]
    cell_a = pick_a.selectbox(f"A level ({render.escape_inline(a.label())})", options, key="agr_cell_a",
                              format_func=lambda v: "choose, or click a cell" if v is None else str(v))
    cell_b = pick_b.selectbox(f"B level ({render.escape_inline(b.label())})", options, key="agr_cell_b",
                              format_func=lambda v: "choose, or click a cell" if v is None else str(v))
    if cell_a is None or cell_b is None:
        st.caption("Click a cell of the matrix, or choose both levels, to list its CoTs.")
        st.stop()
    count = matrix[shown.index(cell_a)][shown.index(cell_b)]
    if count == 0:
        st.info(f"No CoT has A = {cell_a} and B = {cell_b}.")
        st.stop()
    in_cell = frame.filter((pl.col("a_level") == cell_a) & (pl.col("b_level") == cell_b))["model"].value_counts(
        sort=True, name="n")
    models = [None, *in_cell["model"].to_list()]
    counts = dict(in_cell.iter_rows())
    if st.session_state.get("agr_cell_model") not in models:
        st.session_state["agr_cell_model"] = None
    model = st.selectbox("Model", models, key="agr_cell_model",
                         format_func=lambda m: f"all models ({count:,})" if m is None else f"{m or 'unknown model'} ({counts[m]:,})")
    n_pages = max(1, math.ceil((count if model is None else counts[model]) / PAGE_SIZE))
    st.session_state["agr_page"] = min(max(1, int(st.session_state.get("agr_page", 1))), n_pages)
    page_number = page_col.number_input("Page", min_value=1, max_value=n_pages, step=1, key="agr_page")
    offset = (int(page_number) - 1) * PAGE_SIZE
    rows, total = agreement.cell_page(a, b, f, cell_a, cell_b, offset=offset, limit=PAGE_SIZE, model=model)
    st.caption(f"A = {cell_a}, B = {cell_b}{'' if model is None else ', model ' + render.escape_inline(model)}: "
               f"{total:,} CoTs · page {int(page_number):,} of {n_pages:,} (rows {offset + 1:,}–{offset + rows.height:,}). "
               "Each row: what each source recorded, the answer the data gave (a harness run's `pred`), the answer "
               "extracted from the CoT (what math-verify checks) and the reference.")
    st.dataframe(
        rows, hide_index=True, key="agr_cell_table",
        column_config={
            "readable_id": st.column_config.TextColumn("id"),
            "model": st.column_config.TextColumn("model", width="medium"),
            "cot_id": st.column_config.NumberColumn("CoT id (internal)", format="%d"),
            "problem_id": st.column_config.NumberColumn("problem id (internal)", format="%d"),
            "a": st.column_config.NumberColumn(f"A: {a.label()}"),
            "b": st.column_config.NumberColumn(f"B: {b.label()}"),
            "a_raw": st.column_config.TextColumn("A recorded", help=f"raw value of {render.escape_inline(a.label())}"),
            "b_raw": st.column_config.TextColumn("B recorded", help=f"raw value of {render.escape_inline(b.label())}"),
            "data_answer": st.column_config.TextColumn("answer in the data", help="the input's own answer (harness pred)"),
            "answer": st.column_config.TextColumn("extracted answer", help="the answer ThoughtScope extracted; math-verify checks it"),
            "reference": st.column_config.TextColumn("reference"),
            "question": st.column_config.TextColumn("question (opening)", width="large"),
        },
    )
    choices = rows.select("cot_id", "problem_id", "model", "readable_id").rows()
    chosen = st.selectbox("CoT to read", choices, key="agr_open_choice",
                          format_func=lambda r: f"{r[3]} · {r[2] or 'unknown model'}")
    if st.button("Open in the Reader", key="agr_open", disabled=chosen is None):
        reader_view.open_cot(int(chosen[0]), int(chosen[1]))
        st.switch_page("pages/reader.py", query_params=reader_view.cot_address(int(chosen[0])))
