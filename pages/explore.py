"""Explore: every CoT the shared filter matches, in a table sorted and paged by the store.

Sorting and paging run in DuckDB (core.queries.page), so the table covers all matching CoTs,
however many, one page at a time. Picking a row opens its problem in the Reader. The figures
the sidebar's conditions filter on are shown as columns of their own.
"""

import math

import polars as pl
import streamlit as st

from core import queries
from core.queries import CotFilter
from ui import annotate, common, problems

PAGE_SIZES = (25, 50, 100, 250)
# What each sortable column is called in the sort menu and the table header.
COLUMN_LABELS = {
    "cot_id": "CoT id", "problem_id": "problem id", "dataset": "dataset", "model": "model / teacher",
    "benchmark": "benchmark", "sample_idx": "sample", "n_tokens": "tokens", "tokenizer": "tokenizer", "n_chars": "characters",
    "n_reflections": "reflection markers", "truncated": "truncated", "rv": "RV", "cd": "CD",
    "correct": "correct", "answer": "extracted answer",
}


@st.cache_data(ttl=600, show_spinner=False)
def cached_count(stamp: tuple[float, float], f: CotFilter) -> dict[str, int]:
    del stamp  # only the cache key: a write to the store gives fresh numbers
    return queries.count(f)


@st.cache_data(ttl=600, show_spinner=False)
def cached_page(stamp, f: CotFilter, sort_by: str, descending: bool, offset: int, limit: int) -> pl.DataFrame:
    del stamp
    rows = queries.page(f, sort_by=sort_by, descending=descending, offset=offset, limit=limit)
    wanted = [c.figure for c in f.conditions if not c.figure.is_column]
    if not wanted:
        return rows
    values = queries.figure_values(rows["cot_id"].to_list(), wanted)
    return rows.join(values, on="cot_id", how="left", maintain_order="left")


def open_in_reader(problem_id: int, cot_id: int | None) -> None:
    st.session_state["reader_problem_id"] = int(problem_id)
    st.session_state["reader_cot_id"] = None if cot_id is None else int(cot_id)
    # a fresh table key next time, so coming back here does not reopen the same row
    st.session_state["explore_table_nonce"] = st.session_state.get("explore_table_nonce", 0) + 1
    st.switch_page("pages/reader.py", query_params={"problem": str(int(problem_id))})


st.title("Explore")
with common.guard():
    f = common.sidebar_filter()
    stamp = common.store_stamp()
    counts = cached_count(stamp, f)
    left, right, note = st.columns([1, 1, 3])
    left.metric("Matching CoTs", f"{counts['cots']:,}")
    right.metric("Problems", f"{counts['problems']:,}")
    if f.text:  # whole-word index search and substring scan can give different matches
        st.caption(f"Text search: {queries.text_search_mode(f.text)}")
    generated = common.catalogue(stamp)["generated"]
    shown_generated = [d for d in generated if not f.datasets or d in f.datasets]
    if shown_generated:
        note.caption(
            "Generated (synthetic) data: " + ", ".join(shown_generated)
            + ". Its rows are ticked in the table's 'generated' column; it is test data, not a real dataset."
        )

    if counts["cots"] == 0:
        common.explain_empty(f)
        st.stop()

    sort_col, order_col, size_col, page_col = st.columns([2, 2, 1, 1])
    sort_by = sort_col.selectbox(
        "Sort by", queries.SORTABLE, format_func=lambda c: COLUMN_LABELS.get(c, c), key="explore_sort",
    )
    descending = order_col.radio("Order", ["ascending", "descending"], horizontal=True, key="explore_order") == "descending"
    page_size = size_col.selectbox("Rows per page", PAGE_SIZES, index=1, key="explore_page_size")
    n_pages = max(1, math.ceil(counts["cots"] / page_size))
    # A new filter, order or page size starts again at page 1; a page past the end is clamped.
    view = (f, sort_by, descending, page_size)
    if st.session_state.get("explore_view") != view:
        st.session_state["explore_view"] = view
        st.session_state["explore_page"] = 1
    st.session_state["explore_page"] = min(max(1, st.session_state.get("explore_page", 1)), n_pages)
    page_number = page_col.number_input("Page", min_value=1, max_value=n_pages, step=1, key="explore_page")
    offset = (int(page_number) - 1) * page_size
    rows = cached_page(stamp, f, sort_by, descending, offset, page_size)
    st.caption(
        f"Page {int(page_number):,} of {n_pages:,} · rows {offset + 1:,}–{offset + rows.height:,} of "
        f"{counts['cots']:,}, sorted by {COLUMN_LABELS.get(sort_by, sort_by)} ({'descending' if descending else 'ascending'}). "
        "Click a row to read its problem."
    )

    verdict = (
        pl.when(pl.col("correct_value") == 1).then(pl.lit("correct"))
        .when(pl.col("correct_value") == 0).then(pl.lit("incorrect"))
        .when(pl.col("correct_value").is_null()).then(pl.lit("—"))
        .otherwise(pl.col("correct_value").cast(pl.String))
    )
    table = rows.with_columns(verdict.alias("correct"))
    columns = ["cot_id", "problem_id", "dataset", "generated", "model", "benchmark", "sample_idx",
               "n_tokens", "tokenizer", "n_chars", "n_reflections", "truncated"]
    config = {c: st.column_config.Column(COLUMN_LABELS[c]) for c in columns if c in COLUMN_LABELS}
    config["cot_id"] = st.column_config.NumberColumn("CoT id", format="%d")
    config["problem_id"] = st.column_config.NumberColumn("problem id", format="%d")
    config["generated"] = st.column_config.CheckboxColumn("generated", help="synthetic data made by the demo generator")
    config["question"] = st.column_config.TextColumn("question (opening)", width="large")
    for name, source in (("rv", f.rv_source), ("cd", f.cd_source), ("correct", f.correct_source)):
        if source:  # without a chosen source the column would be empty
            columns.append(name)
            config[name] = st.column_config.Column(f"{COLUMN_LABELS[name]} ({queries.correctness_label(source)})")
    # the figures the sidebar's conditions filter on (CoT columns are in the table already)
    columns += [c for c in dict.fromkeys(cond.figure.label() for cond in f.conditions if not cond.figure.is_column)]
    columns += ["answer", "question"]  # the scores before the long text, so they show without scrolling
    nonce = st.session_state.get("explore_table_nonce", 0)
    event = st.dataframe(
        table, column_order=columns, column_config=config, hide_index=True,
        on_select="rerun", selection_mode="single-row", key=f"explore_table_{nonce}",
    )
    picked = event.selection.rows if event is not None else []
    if picked:
        row = table.row(picked[0], named=True)
        open_in_reader(row["problem_id"], row["cot_id"])
    annotate.explore_panel(rows)  # label the page's CoTs one after another (ui/annotate.py)

    problems.explore_section(rows, lambda problem_id: open_in_reader(problem_id, None))

    with st.form("explore_open_form", border=False):
        id_col, button_col = st.columns([2, 1], vertical_alignment="bottom")
        wanted = id_col.number_input("Open a CoT by id", min_value=0, value=None, step=1, format="%d", key="explore_open_cot")
        if button_col.form_submit_button("Open in Reader", key="explore_open"):
            problem_id = queries.problem_of_cot(int(wanted)) if wanted is not None else None
            if problem_id is None:
                st.warning("Type the id of a CoT in the store (the table's first column).")
            else:
                open_in_reader(problem_id, int(wanted))
