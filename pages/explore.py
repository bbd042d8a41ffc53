"""Explore: every CoT the shared filter matches, in a table sorted and paged by the store.

Sorting and paging run in DuckDB (core.queries.page), so the table covers all matching CoTs,
however many, one page at a time. Picking a row opens that CoT in the Reader (its problem is
one click further). Each row shows its readable id (core.ids), and "Open a CoT by id" takes a
readable or an internal id. With a text search, each row shows where it matched, and the
page's hits are listed below the table with the words highlighted. The figures the sidebar's
conditions filter on are shown as columns of their own.
"""

import math

import polars as pl
import streamlit as st

from core import ids, queries, render
from core.queries import CotFilter
from ui import annotate, common, problems, reader_view

PAGE_SIZES = (25, 50, 100, 250)
# What each sortable column is called in the sort menu and the table header.
COLUMN_LABELS = {
    "readable_id": "id", "cot_id": "CoT id (internal)", "problem_id": "problem id", "dataset": "dataset", "model": "model / teacher",
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
    readable = ids.cot_ids_frame(rows["cot_id"].to_list()).select("cot_id", "readable_id")
    rows = rows.join(readable, on="cot_id", how="left", maintain_order="left")
    if f.text:  # where the search matched, as a cell: the hit between « »
        hits = queries.search_snippets(rows["cot_id"].to_list(), f.text)
        rows = rows.join(hits, on="cot_id", how="left", maintain_order="left").with_columns(
            pl.when(pl.col("hit").is_null()).then(None).otherwise(
                pl.when(pl.col("where") == "question").then(pl.lit("question: ")).otherwise(pl.lit(""))
                + pl.col("before") + pl.lit("«") + pl.col("hit") + pl.lit("»") + pl.col("after")).alias("match"))
    wanted = [c.figure for c in f.conditions if not c.figure.is_column]
    if not wanted:
        return rows
    values = queries.figure_values(rows["cot_id"].to_list(), wanted)
    return rows.join(values, on="cot_id", how="left", maintain_order="left")


def open_in_reader(problem_id: int, cot_id: int | None) -> None:
    """Show that CoT alone in the Reader (its problem is one click further there); no CoT: the
    whole problem."""
    if cot_id is None:
        reader_view.open_problem(problem_id)
        st.switch_page("pages/reader.py", query_params={"problem": str(int(problem_id))})
    reader_view.open_cot(cot_id, problem_id)
    # a fresh table key next time, so coming back here does not reopen the same row
    st.session_state["explore_table_nonce"] = st.session_state.get("explore_table_nonce", 0) + 1
    st.switch_page("pages/reader.py", query_params=reader_view.cot_address(cot_id))


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
        "Click a row to read that CoT."
    )

    verdict = (
        pl.when(pl.col("correct_value") == 1).then(pl.lit("correct"))
        .when(pl.col("correct_value") == 0).then(pl.lit("incorrect"))
        .when(pl.col("correct_value").is_null()).then(pl.lit("—"))
        .otherwise(pl.col("correct_value").cast(pl.String))
    )
    # long model names cut in the middle, not at the end where they differ (same labels on every page)
    model_labels = render.short_labels(common.catalogue(stamp)["models"])
    table = rows.with_columns(verdict.alias("correct"),
                              pl.col("model").replace_strict(model_labels, default=pl.col("model")).alias("model_shown"))
    columns = ["readable_id", *(["match"] if f.text else []), "dataset", "generated", "model_shown", "benchmark",
               "sample_idx", "n_tokens", "tokenizer", "n_chars", "n_reflections", "truncated"]
    config = {c: st.column_config.Column(COLUMN_LABELS[c]) for c in columns if c in COLUMN_LABELS}
    config["readable_id"] = st.column_config.TextColumn(
        "id", help="dataset:problem key:n, the n-th CoT of that problem; what the Reader's permalink and "
                   "'Open a CoT by id' take")
    config["match"] = st.column_config.TextColumn("search match", width="large",
                                                  help="Where the search matched, the words between « »")
    config["model_shown"] = st.column_config.TextColumn(
        COLUMN_LABELS["model"], width="medium",
        help=f"Names longer than {render.NAME_WIDTH} characters keep their start and end ('…' between); the Reader shows them whole")
    config["cot_id"] = st.column_config.NumberColumn("CoT id (internal)", format="%d")
    config["problem_id"] = st.column_config.NumberColumn("problem id (internal)", format="%d")
    config["generated"] = st.column_config.CheckboxColumn("generated", help="synthetic data made by the demo generator")
    config["question"] = st.column_config.TextColumn("question (opening)", width="large")
    for name, source in (("rv", f.rv_source), ("cd", f.cd_source), ("correct", f.correct_source)):
        if source:  # without a chosen source the column would be empty
            columns.append(name)
            config[name] = st.column_config.Column(f"{COLUMN_LABELS[name]} ({queries.correctness_label(source)})")
    # the figures the sidebar's conditions filter on (CoT columns are in the table already)
    columns += [c for c in dict.fromkeys(cond.figure.label() for cond in f.conditions if not cond.figure.is_column)]
    columns += ["answer", "question", "cot_id", "problem_id"]  # the scores before the long text, the internal ids last
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

    if f.text:
        with st.expander("Search hits on this page, highlighted", expanded=True):
            for row in table.filter(pl.col("hit").is_not_null()).iter_rows(named=True):
                where = " (in the question)" if row["where"] == "question" else ""
                st.markdown(f"{render.inline_code(row['readable_id'])}{where} · " + render.snippet_markdown(
                    (row["before"], row["hit"], row["after"])))

    with st.form("explore_open_form", border=False):
        id_col, button_col = st.columns([2, 1], vertical_alignment="bottom")
        wanted = id_col.text_input("Open a CoT by id", key="explore_open_cot", placeholder="dataset:problem key:n, or an internal id",
                                   help="The table's id column (e.g. qwen25-math-eval:aime24/3:2), or the 11-digit internal id")
        if button_col.form_submit_button("Open in Reader", key="explore_open"):
            found = ids.resolve(wanted)
            if found is None:
                st.warning(f"'{render.escape_inline(wanted.strip())}' is not the id of a CoT in the store: type one "
                           "from the table's id column (dataset:problem key:n) or an internal id.")
            elif found[0] == "problem":
                reader_view.open_problem(found[1])
                st.switch_page("pages/reader.py", query_params={"problem": wanted.strip()})
            else:
                open_in_reader(queries.problem_of_cot(found[1]), found[1])
