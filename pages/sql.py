"""SQL: a read-only DuckDB console over the store, with example queries and a quick chart."""

from __future__ import annotations

import math

import streamlit as st

from core import sqlconsole
from ui import common

PAGE_ROWS = sqlconsole.DEFAULT_LIMIT
CHOOSE = "(choose an example)"
NO_COLOR = "(none)"


def _load_example() -> None:
    name = st.session_state.sql_example
    if name in sqlconsole.EXAMPLES:
        st.session_state.sql_text = sqlconsole.EXAMPLES[name]


def _run() -> None:
    st.session_state.sql_submitted = st.session_state.sql_text
    st.session_state.sql_page = 1


def _chart(result: sqlconsole.QueryResult) -> None:
    frame = result.frame
    st.subheader("Quick chart")
    if not result.complete:
        st.info(f"The result has {result.total_rows:,} rows, more than one page; a chart of one page would "
                "leave rows out. Aggregate in SQL (GROUP BY) to chart it.")
        return
    if frame.width < 2 or frame.height == 0:
        st.caption("A chart needs at least two columns and one row.")
        return
    columns = frame.columns
    start = sqlconsole.chart_defaults(frame)
    # A new result resets the choices (and drops ones naming columns it does not have).
    if st.session_state.get("sql_chart_for") != (st.session_state.sql_submitted, tuple(columns)):
        st.session_state.sql_chart_for = (st.session_state.sql_submitted, tuple(columns))
        st.session_state.sql_chart_x = start["x"]
        st.session_state.sql_chart_y = start["y"]
        st.session_state.sql_chart_color = start["color"] or NO_COLOR
    c1, c2, c3, c4 = st.columns(4)
    x = c1.selectbox("x", columns, key="sql_chart_x")
    y = c2.selectbox("y", columns, key="sql_chart_y")
    color = c3.selectbox("colour by", [NO_COLOR, *columns], key="sql_chart_color")
    kind = c4.radio("kind", sqlconsole.CHART_KINDS, horizontal=True, key="sql_chart_kind")
    fig = sqlconsole.quick_chart(frame, x=x, y=y, kind=kind, color=None if color == NO_COLOR else color)
    st.plotly_chart(fig, key="sql_chart", width="stretch")


st.title("SQL console")
st.caption("Read-only DuckDB SQL over the store: tables datasets, problems, cots, score_sources, "
           "scores (long: cot_id, source_id, metric, value) and run_metrics. One SELECT at a time; "
           "writes, files, extensions and settings are refused. A dataset still being ingested has "
           "status 'loading': filter on datasets.status = 'ready' to leave it out.")

st.selectbox("Example queries", [CHOOSE, *sqlconsole.EXAMPLES], key="sql_example", on_change=_load_example)
st.text_area("Query", key="sql_text", height=200, placeholder=sqlconsole.PLACEHOLDER)
st.button("Run", key="sql_run", type="primary", on_click=_run)

query = st.session_state.get("sql_submitted")
if query:
    with common.guard():
        page = int(st.session_state.get("sql_page", 1))
        result = sqlconsole.run_query(query, limit=PAGE_ROWS, offset=(page - 1) * PAGE_ROWS)
        if page > 1 and result.frame.height == 0:  # the result shrank (the store changed)
            st.session_state.sql_page = 1
            st.rerun()
        st.caption(result.note)
        st.dataframe(result.frame, hide_index=True, key="sql_result")
        if not result.complete:
            pages = max(1, math.ceil(result.total_rows / PAGE_ROWS))
            st.number_input(f"Page (of {pages:,}, {PAGE_ROWS:,} rows each)", min_value=1, max_value=pages,
                            step=1, key="sql_page")
        _chart(result)
