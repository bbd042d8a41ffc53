"""What the pages show of the problem stages (core.identity, core.contamination, core.neardup):
the Overview's distinct problem count and contamination / near-duplicate tables, and the
Reader's "this problem elsewhere" section. Widgets and rendering only; the figures come from
core/."""

from __future__ import annotations

from collections.abc import Callable

import polars as pl
import streamlit as st

from core import contamination, identity, neardup, render
from ui import common


@st.cache_data(ttl=600, show_spinner=False)
def _problem_counts(db: str, stamp) -> dict[str, int]:
    del stamp
    return identity.problem_counts(db=db)


@st.cache_data(ttl=600, show_spinner=False)
def _contamination_counts(db: str, stamp) -> pl.DataFrame:
    del stamp
    return contamination.counts(db=db)


@st.cache_data(ttl=600, show_spinner=False)
def _near_dup_summary(db: str, stamp) -> pl.DataFrame:
    del stamp
    return neardup.summary(db=db)


@st.cache_data(ttl=600, show_spinner=False)
def _relations(db: str, stamp, problem_id: int) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    del stamp
    return (identity.same_problem(problem_id, db=db), contamination.matches_of(problem_id, db=db),
            neardup.near_duplicates_of(problem_id, limit=20, db=db))


def problem_metric(column) -> None:
    """The Overview's problem count: one per question key, so a benchmark's problem and its
    evaluation runs' copies of it count once."""
    counts = _problem_counts(str(common.db_file()), common.store_stamp())
    column.metric("Problems", f"{counts['distinct']:,}",
                  help=f"{counts['rows']:,} problem rows in the datasets; the same question (by its normalised "
                       "key) in a benchmark, its evaluation runs or a teacher dataset counts once.")


def _submit(kind: str) -> None:
    from core import jobs

    st.session_state[f"overview_{kind}_job"] = jobs.submit(kind, {})


def overview_section() -> None:
    """Contamination per dataset x benchmark and near-duplicate clusters per dataset, with a
    button that brings each stage up to date in a background job."""
    db, stamp = str(common.db_file()), common.store_stamp()
    st.subheader("Benchmark contamination")
    table = _contamination_counts(db, stamp)
    if table.height:
        st.caption("Per dataset and benchmark: problems whose question matches a benchmark problem (equal normalised "
                   "question, or at least the stage's share of the benchmark problem's 8-grams). The Reader shows each "
                   "match beside the benchmark problem. Same table: `python -m core contamination`.")
        st.dataframe(table, hide_index=True, key="overview_contamination")
    else:
        st.caption("Not checked yet: the check compares every problem of every dataset with every ingested "
                   "benchmark (`python -m core contamination`).")
    near = _near_dup_summary(db, stamp)
    st.subheader("Near-duplicate problems")
    if near.height:
        st.caption("Per dataset: problems with a near-duplicate (MinHash/LSH, Jaccard of word bigrams at the stage's "
                   "threshold), clusters, and clusters shared with another dataset. `python -m core near-duplicates`.")
        st.dataframe(near, hide_index=True, key="overview_near_duplicates")
    else:
        st.caption("Not computed yet (`python -m core near-duplicates`).")
    left, right = st.columns(2)
    left.button("Check contamination now", key="overview_run_contamination", on_click=_submit, args=("contamination",),
                help="A background job; it checks only what is new since the last run.")
    right.button("Find near-duplicates now", key="overview_run_near_duplicates", on_click=_submit,
                 args=("near_duplicates",), help="A background job; it sketches and queries only new problems.")
    for kind in ("contamination", "near_duplicates"):
        if st.session_state.get(f"overview_{kind}_job") is not None:
            st.caption(f"Started job {st.session_state[f'overview_{kind}_job']} ({kind.replace('_', '-')}); "
                       "its progress is on the Jobs page.")


def reader_section(problem_id: int, question: str, go_to: Callable[[int], None]) -> None:
    """The same problem in other datasets, the benchmark problems it matches (side by side),
    and its near-duplicates; each one opens in the Reader."""
    same, matches, near = _relations(str(common.db_file()), common.store_stamp(), problem_id)
    label = (f"Elsewhere: {same.height} same, {matches.filter(pl.col('cot_id').is_null()).height} benchmark "
             f"match(es), {near.height} near-duplicate(s)")
    box = st.expander(label, key=f"reader_relations_{problem_id}", on_change="rerun")
    if not box.open:
        return
    with box:
        if same.height:
            st.markdown("**The same problem** (equal normalised question) in other datasets:")
            for row in same.iter_rows(named=True):
                text = (f"{render.escape_inline(row['dataset'])} ({row['format']}) · key "
                        f"{render.escape_inline(row['problem_key'])} · {row['cots']:,} CoTs")
                st.button(text, key=f"reader_same_{problem_id}_{row['problem_id']}", on_click=go_to, args=(row["problem_id"],))
        if matches.height:
            st.markdown("**Benchmark matches** (contamination check):")
            for i, row in enumerate(matches.iter_rows(named=True)):
                what = "exact (equal normalised question)" if row["exact"] else (
                    f"{row['overlap']:.0%} of its n-grams ({row['shared_ngrams']:,})")
                where = f"CoT {row['cot_id']} quotes" if row["cot_id"] is not None else "matches"
                st.markdown(f"{where} **{render.escape_inline(row['benchmark'])}** problem "
                            f"{render.escape_inline(row['benchmark_problem_key'])} ({render.escape_inline(row['benchmark_dataset'])}): {what}")
                mine, theirs = st.columns(2)
                with mine.container(height=220, key=f"reader_match_mine_{problem_id}_{i}"):
                    st.markdown(render.safe_markdown(question))
                with theirs.container(height=220, key=f"reader_match_bench_{problem_id}_{i}"):
                    st.markdown(render.safe_markdown(row["benchmark_question"]))
                st.button("Open the benchmark problem", key=f"reader_match_open_{problem_id}_{i}", on_click=go_to,
                          args=(row["benchmark_problem_id"],))
        if near.height:
            st.markdown("**Near-duplicates** (Jaccard similarity of word bigrams):")
            for row in near.iter_rows(named=True):
                text = (f"{row['jaccard']:.2f} · {render.escape_inline(row['dataset'])} · "
                        f"{render.escape_inline(row['question'][:120])}")
                st.button(text, key=f"reader_near_{problem_id}_{row['problem_id']}", on_click=go_to, args=(row["problem_id"],))
        if not (same.height or matches.height or near.height):
            st.caption("No copy, benchmark match or near-duplicate known (or the stages have not run: "
                       "`python -m core contamination`, `python -m core near-duplicates`).")
