"""What the pages show of the problem stages (core.identity, core.contamination, core.neardup):
the Overview's distinct problem count and contamination / near-duplicate tables, and the
Reader's "this problem elsewhere" section. Widgets and rendering only; the figures come from
core/."""

from __future__ import annotations

from collections.abc import Callable

import polars as pl
import streamlit as st

from core import contamination, identity, neardup, queries, render
from core.figures import Condition, Figure
from ui import common


@st.cache_data(ttl=600, show_spinner=False)
def _problem_counts(db: str, stamp) -> dict[str, int]:
    del stamp
    return identity.problem_counts(db=db)


@st.cache_data(ttl=600, show_spinner=False)
def _contamination_counts(db: str, stamp, f=None) -> pl.DataFrame:
    del stamp
    return contamination.counts(f=f, db=db)


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


def overview_section(f=None) -> None:
    """Contamination per dataset x benchmark (among the problems with a CoT the sidebar filter
    ``f`` matches) and near-duplicate clusters per dataset, with a button that brings each stage
    up to date in a background job."""
    db, stamp = str(common.db_file()), common.store_stamp()
    st.subheader("Benchmark contamination")
    table = _contamination_counts(db, stamp, f)
    if table.height:
        st.caption("Per dataset and benchmark: problems whose question matches a benchmark problem (equal normalised "
                   "question, or at least the stage's share of the benchmark problem's 8-grams). The Reader shows each "
                   "match beside the benchmark problem. Counted among the problems with a CoT the sidebar filter "
                   "matches; same table: `python -m core contamination --json` with the same filter.")
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


# ---------------------------------------------------------------------------- the contamination control


_CONTAMINATION_MODES = {"all": "every problem", "drop": "drop contaminated", "only": "only contaminated"}
_ANY_BENCHMARK = "(any benchmark)"


def contamination_state(prefix: str, control: contamination.ContaminationFilter) -> dict:
    """Session values that show ``control`` in contamination_widgets(prefix=...)."""
    return {f"{prefix}contam_mode": control.mode,
            f"{prefix}contam_drop": list(control.benchmarks) if control.mode == "drop" else [],
            f"{prefix}contam_only": control.benchmarks[0] if control.mode == "only" and control.benchmarks else _ANY_BENCHMARK}


def _drop_every_benchmark(prefix: str, benchmarks: tuple[str, ...]) -> None:
    """on_change of the mode: 'drop contaminated' starts with every benchmark checked."""
    if st.session_state.get(f"{prefix}contam_mode") == "drop" and not st.session_state.get(f"{prefix}contam_drop"):
        st.session_state[f"{prefix}contam_drop"] = list(benchmarks)


def contamination_widgets(where, prefix: str, *, modes: tuple[str, ...] = contamination.MODES,
                          title: str = "Benchmark contamination") -> tuple[Condition, ...]:
    """An expander to keep every problem, drop the problems contaminated with chosen benchmarks,
    or keep only contaminated ones; returns the ordinary conditions that says
    (core.contamination.ContaminationFilter). Nothing is drawn when no benchmark was checked
    and none is asked for. State lives under ``prefix`` + "contam_"."""
    table = common.per_stamp("contamination_benchmarks", contamination.checked_benchmarks)
    checked = table["benchmark"].to_list()
    flagged = dict(zip(checked, table["flagged"].to_list()))
    unchecked = dict(zip(checked, table["unchecked"].to_list()))
    mode_key, drop_key, only_key = (f"{prefix}contam_{name}" for name in ("mode", "drop", "only"))
    named = [*(st.session_state.get(drop_key) or []), st.session_state.get(only_key, _ANY_BENCHMARK)]
    options = sorted(set(checked) | {b for b in named if b != _ANY_BENCHMARK})
    if not options:
        return ()
    if st.session_state.get(mode_key) not in modes:
        st.session_state[mode_key] = "all"

    def label(benchmark: str) -> str:
        if benchmark == _ANY_BENCHMARK:
            return benchmark
        return f"{benchmark} ({flagged[benchmark]:,} flagged)" if benchmark in flagged else f"{benchmark} (not checked here)"

    active = st.session_state[mode_key] != "all"
    with where.expander(title + (" · on" if active else ""), expanded=active):
        mode = st.radio(title, modes, format_func=_CONTAMINATION_MODES.get, key=mode_key, horizontal=True,
                        label_visibility="collapsed", on_change=_drop_every_benchmark, args=(prefix, tuple(checked)),
                        help="Problems whose question matches a benchmark problem (the contamination check on the "
                             "Overview page: equal normalised question, or enough shared 8-grams).")
        control = contamination.ContaminationFilter()
        if mode == "drop":
            chosen = st.multiselect("Drop problems contaminated with", options, key=drop_key, format_func=label,
                                    placeholder="the benchmarks you will report on")
            control = contamination.ContaminationFilter("drop", tuple(chosen))
        elif mode == "only":
            st.session_state[only_key] = st.session_state.get(only_key, _ANY_BENCHMARK)
            choice = st.selectbox("Only problems contaminated with", [_ANY_BENCHMARK, *options], key=only_key,
                                  format_func=label)
            control = contamination.ContaminationFilter("only", () if choice == _ANY_BENCHMARK else (choice,))
        wanted = control.benchmarks or (tuple(checked) if mode == "only" else ())
        missing = sorted({d for b in wanted for d in unchecked.get(b, [])})
        if missing:
            st.caption("Not (completely) checked against " + ", ".join(map(render.escape_inline, wanted)) + ": "
                       + ", ".join(map(render.escape_inline, missing)) + ". Their problems count as clean until the "
                       "check runs (Overview, or `python -m core contamination`).")
    return control.conditions()


# ---------------------------------------------------------------------------- Explore: near-duplicates


@st.cache_data(ttl=600, show_spinner=False)
def _cluster_sizes(db: str, stamp, cots: tuple[tuple[int, int], ...]) -> dict[int, int]:
    """Problem -> its near-duplicate cluster's size, for the (cot_id, problem_id) pairs of a
    page whose problem has at least one near-duplicate, in the page's order."""
    del stamp
    if not identity.tables_present("problem_scores", db=db):  # a store from before the problem stages
        return {}
    size = Figure("cluster_size", neardup.SOURCE, level="problem")
    values = queries.figure_values([c for c, _ in cots], [size], db=db)
    of_cot = dict(zip(values["cot_id"], values[size.label()])) if size.label() in values.columns else {}
    return {p: int(of_cot[c]) for c, p in cots if of_cot.get(c) is not None and of_cot[c] > 1}


@st.cache_data(ttl=600, show_spinner=False)
def _near_of(db: str, stamp, problem_id: int) -> pl.DataFrame:
    del stamp
    return neardup.near_duplicates_of(problem_id, limit=20, db=db)


def explore_section(rows: pl.DataFrame, open_problem: Callable[[int], None]) -> None:
    """Below Explore's table: the near-duplicate clusters of the page's problems (those with at
    least one near-duplicate), and for a chosen one its near-duplicates, each opening in the
    Reader. Nothing is drawn when none of the page's problems has one."""
    db, stamp = str(common.db_file()), common.store_stamp()
    sizes = _cluster_sizes(db, stamp, tuple(zip(rows["cot_id"].to_list(), rows["problem_id"].to_list())))
    if not sizes:
        return
    with st.expander(f"Near-duplicates: {len(sizes)} problem(s) on this page have some"):
        chosen = st.selectbox("Problem", list(sizes), key="explore_near_problem",
                              format_func=lambda p: f"problem {p} · cluster of {sizes[p]}")
        near = _near_of(db, stamp, chosen)
        for row in near.iter_rows(named=True):
            text = (f"{row['jaccard']:.2f} · {render.escape_inline(row['dataset'])} · "
                    f"{render.escape_inline(row['question'][:120])}")
            if st.button(text, key=f"explore_near_{chosen}_{row['problem_id']}"):
                open_problem(row["problem_id"])  # in the script's run, not a callback: it may switch page
        st.caption("Jaccard similarity of word bigrams to the chosen problem; click one to read it. Select's "
                   "'Across clusters' keeps one problem per cluster.")
