"""Map: every problem as a point (its question's sentence embedding projected to 2-D), coloured
by any problem figure; a lasso or box selection narrows the shared filter.

The map is computed once by the `map` job (core.problem_map: embeddings, UMAP, k-means) and
read from the store; this page only draws it (a WebGL scatter) and turns a selection into a saved
problem set (core.problem_sets) that the sidebar filter carries as a short key. The scatter is
drawn by ui.map_chart, which sends back only the selection's outline (see why there).
"""

from __future__ import annotations

import polars as pl
import streamlit as st

from core import jobs, problem_map, problem_sets, render
from core.queries import CotFilter
from ui import common, map_chart

SHOW_CHOICES = ("problems the filter matches", "every mapped problem")


@st.cache_resource(ttl=600, show_spinner="Reading the map…", max_entries=4)
def _points(filter_key: str, db: str, stamp, source_id: int, colour: str, only_matching: bool, _f: CotFilter) -> pl.DataFrame:
    del filter_key, db, stamp  # the cache key only
    return problem_map.map_points(_f, source_id, colour, only_matching=only_matching)


@st.cache_resource(ttl=600, show_spinner=False, max_entries=4)
def _figure_json(filter_key: str, db: str, stamp, source_id: int, colour: str, only_matching: bool, colour_label: str,
                 _points_frame: pl.DataFrame) -> str:
    """The figure as plotly JSON, cached: serialising 708k points costs most of a second."""
    import plotly.io

    del filter_key, db, stamp, source_id, only_matching  # the cache key only
    hover = None
    if _points_frame.height <= problem_map.HOVER_TEXT_MAX_POINTS:
        hover = _questions(tuple(_points_frame["problem_id"].to_list()))
    # the hover text is the questions: no tag in one may style the plot into a request
    fig = render.inert_figure(problem_map.map_figure(_points_frame, colour_label=colour_label,
                                                     categorical=colour in problem_map.CATEGORICAL, hover=hover))
    return plotly.io.to_json(fig, validate=False)


def _questions(ids: tuple[int, ...]) -> pl.DataFrame:
    return problem_map.question_heads(ids)


def _chart_key() -> str:
    # a new key after each applied selection, so the old one is not applied again
    return f"map_chart_{st.session_state.get('map_selection_gen', 0)}"


def _narrow_to(ids, origin: str) -> None:
    if len(ids) == 0:
        return
    key = problem_sets.save(ids, origin=origin)
    st.session_state.map_selection_gen = st.session_state.get("map_selection_gen", 0) + 1
    common.narrow_filter(problem_set=key)


def _on_select() -> None:
    """on_change callback (runs before the page): the problems inside the lasso's or box's
    outline become a saved set, and the filter narrows to it."""
    outline = st.session_state.get(_chart_key())
    points = st.session_state.get("map_points_frame")
    if not outline or points is None:
        return
    inside = problem_map.points_inside(points["x"].to_numpy(), points["y"].to_numpy(), outline)
    _narrow_to(points["problem_id"].to_numpy()[inside], f"map {outline.get('kind', 'selection')} on "
               f"{st.session_state.get('map_name', 'the map')}")


def _on_cluster_rows() -> None:
    event = st.session_state.get("map_cluster_table")
    rows = event.selection.rows if event is not None else []
    table = st.session_state.get("map_cluster_frame")
    points = st.session_state.get("map_points_frame")
    if not rows or table is None or points is None:
        return
    chosen = table["cluster"].gather(rows).to_list()
    ids = points.filter(pl.col("cluster").is_in(chosen))["problem_id"].to_numpy()
    _narrow_to(ids, f"clusters {', '.join(map(str, chosen))} of {st.session_state.get('map_name', 'the map')}")


def _start_job(model: str) -> None:
    job_id = jobs.submit("map", {"model": model})
    st.session_state.map_job_started = f"Started job {job_id}: embedding, projecting and clustering the problems."


st.title("Map")
with common.guard():
    f = common.sidebar_filter()
    stamp = common.store_stamp()
    available = common.per_stamp("maps", problem_map.maps)
    if st.session_state.get("map_job_started"):
        st.success(st.session_state.pop("map_job_started") + " Follow it on the Jobs page.")
    if available.is_empty():
        status = common.per_stamp("map_status", problem_map.status)
        st.info(
            f"No map yet. The map job embeds each problem's question ({status['problems']:,} problems in the store, "
            f"{status['embedded']:,} embedded so far) with {problem_map.DEFAULT_EMBEDDING_MODEL} (offline), projects "
            "them to 2-D with UMAP and clusters them; `python -m core map` does the same from the command line."
        )
        st.button("Compute the map", key="map_start", on_click=_start_job, args=(problem_map.DEFAULT_EMBEDDING_MODEL,),
                  disabled=status["problems"] == 0)
        st.stop()
    names = available["name"].to_list()
    top = st.columns([2, 2, 2])
    name = top[0].selectbox("Map", names, key="map_source") if len(names) > 1 else names[0]
    row = available.filter(pl.col("name") == name).row(0, named=True)
    st.session_state.map_name = name
    status = common.per_stamp(f"map_status_{row['source_id']}", lambda: problem_map.status(row["model"]))
    choices = common.per_stamp(f"map_colours_{row['source_id']}", lambda: problem_map.colour_choices(row["source_id"]))
    colour = top[1].selectbox("Colour by", list(choices), format_func=choices.get, key="map_colour")
    show = top[2].radio("Show", SHOW_CHOICES, key="map_show", horizontal=False)
    only_matching = show == SHOW_CHOICES[0]
    args = (repr(f), str(common.db_file()), stamp, int(row["source_id"]), colour, only_matching)
    points = _points(*args, f)
    st.session_state.map_points_frame = points
    mapped_note = ""
    if status["problems"] > status["mapped"]:
        mapped_note = (f" {status['problems'] - status['mapped']:,} problems of the store are not on this map yet "
                       "(new data since it was made): run the map job again.")
    st.caption(
        f"{points.height:,} problems on the map ({show}); {render.escape_inline(problem_map.canonical_model(row['model']))} embeddings, "
        "UMAP, k-means. Draw a lasso (or pick the box in the chart's toolbar) to narrow the filter to those problems."
        + mapped_note
    )
    needs = {"accuracy": ("correctness", f.correct_source), "rv": ("RV", f.rv_source), "cd": ("CD", f.cd_source)}.get(colour)
    if needs and not needs[1]:
        st.caption(f"Choose a {needs[0]} source in the sidebar to colour the map by it; the points are grey until then.")
    if points.is_empty():
        st.warning("No mapped problem matches the filter: widen the filter, or show every mapped problem.")
    else:
        map_chart.scatter(_figure_json(*args, choices[colour], points), key=_chart_key(), on_change=_on_select)
    if status["problems"] > status["mapped"] or not status["current"]:
        st.button("Update the map", key="map_update", on_click=_start_job, args=(row["model"],),
                  help="Embeds the problems not embedded yet, then projects and clusters again.")

    st.subheader("Clusters")
    table = problem_map.cluster_table(int(row["source_id"]), points)
    st.session_state.map_cluster_frame = table
    st.caption("Select rows to narrow the filter to those clusters' problems. Examples are the questions nearest "
               "each cluster's centre; words are the ones most particular to it.")
    st.dataframe(
        table.with_columns(pl.col("examples").list.join("  ‖  ")), key="map_cluster_table", on_select=_on_cluster_rows,
        selection_mode="multi-row", hide_index=True, width="stretch",
        column_config={"examples": st.column_config.TextColumn("example questions", width="large")},
    )
