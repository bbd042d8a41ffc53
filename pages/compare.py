"""Compare runs: two evaluation runs on one benchmark side by side (core/compare.py).

Accuracy with its 95% interval and the paired difference, the budget curves overlaid (with each
run's max new tokens marked), length by correctness side by side, and the problems that flipped,
each showing both runs' CoTs and opening them in the Reader. The runs' problems meet through the
question key (core/identity.py). The sidebar filter does not apply: a run is compared whole.
"""

from __future__ import annotations

import polars as pl
import streamlit as st

from core import charts, compare, queries, render
from core.queries import OWN_CORRECTNESS
from ui import common, reader_view

PERCENT = st.column_config.NumberColumn(format="percent")


@st.cache_data(ttl=600, show_spinner="Comparing the two runs…", max_entries=16)
def cached_comparison(db: str, stamp, a: tuple, b: tuple, source: str) -> compare.Comparison:
    del stamp  # the cache key only
    return compare.compare(compare.Run(*a), compare.Run(*b), correct_source=source, db=db)


@st.cache_data(ttl=600, show_spinner=False, max_entries=64)
def cot_text(db: str, stamp, cot_id: int) -> dict | None:
    del stamp
    return compare.cot_text(cot_id, db=db)


def open_in_reader(problem_id: int, cot_id: int) -> None:
    reader_view.open_cot(cot_id, problem_id)
    st.switch_page("pages/reader.py", query_params=reader_view.cot_address(cot_id))


def interval(ci: tuple[float, float] | None, *, points: bool = False) -> str:
    if ci is None:
        return "no interval"
    if points:
        return f"{100 * ci[0]:+.1f} to {100 * ci[1]:+.1f} points"
    return f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f} %"


def run_metric(column, name: str, summary: compare.RunSummary) -> None:
    value = "—" if summary.accuracy is None else f"{100 * summary.accuracy:.1f} %"
    column.metric(f"Accuracy {name}", value, help=summary.interval)
    column.caption(f"95% CI {interval(summary.ci)} · {summary.problems:,} problems, {summary.samples:,} judged answers"
                   + (f" · {summary.unknown:,} without a verdict left out" if summary.unknown else "")
                   + (f" · max new tokens {summary.max_new_tokens:,}, {summary.hit_budget:,} answers hit it"
                      if summary.max_new_tokens else ""))


def flipped(table: pl.DataFrame, key: str, comparison: compare.Comparison, db: str, stamp) -> None:
    if table.height == 0:
        st.caption("None.")
        return
    shown = table.select(
        pl.col("question").str.slice(0, 160).alias("problem"),
        pl.col("pass_rate_a").alias("A pass rate"), pl.col("pass_rate_b").alias("B pass rate"),
        pl.col("tokens_a").alias("A tokens"), pl.col("tokens_b").alias("B tokens"),
    )
    event = st.dataframe(shown, hide_index=True, key=key, on_select="rerun", selection_mode="single-row",
                         column_config={"A pass rate": PERCENT, "B pass rate": PERCENT})
    rows = event.selection.rows if event is not None else []
    if not rows:
        st.caption("Select a problem to read both runs' CoTs here, or open them in the Reader.")
        return
    row = table.row(rows[0], named=True)
    st.markdown(f"**Problem:** {render.safe_markdown(row['question'][:600])}")
    for column, side, run in zip(st.columns(2), ("a", "b"), (comparison.a.run, comparison.b.run)):
        with column:
            cot_id, problem_id, solved = row[f"cot_id_{side}"], row[f"problem_id_{side}"], row[f"solved_{side}"]
            cot = cot_text(db, stamp, cot_id) if cot_id is not None else None
            st.markdown(f"**{side.upper()}: {render.escape_inline(run.label)}** · "
                        + (":green-badge[solved]" if solved else ":red-badge[not solved]")
                        + f" · pass rate {row[f'pass_rate_{side}']:.0%} of {row[f'n_{side}']}")
            if cot is None:
                st.caption("No CoT to show.")
                continue
            tokens = f"{cot['n_tokens']:,} tokens" if cot["n_tokens"] is not None else "tokens not counted"
            st.caption(f"CoT {cot_id} · {tokens} · finish: {cot['finish_reason'] or 'unknown'} · answer: "
                       f"{render.escape_inline(cot['answer'] or 'none found')}")
            with st.container(height=420, key=f"compare_text_{key}_{side}"):
                shown_text, clipped = render.clip_for_display(cot["text"])
                if clipped:
                    st.caption(f"The first {len(shown_text):,} of {len(cot['text']):,} characters; the Reader shows all.")
                st.markdown(render.safe_markdown(shown_text))
            if st.button(f"Open {side.upper()}'s CoT in the Reader", key=f"compare_open_{key}_{side}"):
                open_in_reader(problem_id, cot_id)  # in the script run: st.switch_page does not work in a callback


st.title("Compare runs")
st.caption("Two evaluation runs on one benchmark: the base model against a fine-tune, or two selections. Their problems "
           "are matched by question key, so the same problem under another prompt wrapper counts once. The sidebar "
           "filter does not apply here: each run is compared whole.")
with common.guard():
    stamp = common.store_stamp()
    db = str(common.db_file())
    runs = common.per_stamp("compare_runs", compare.list_runs)
    if runs.height < 2:
        st.info("Compare needs two evaluation runs in the store: evaluate a model and its fine-tune on the Jobs page "
                "(or `python -m core evaluate`), or ingest evaluation outputs (the qwen_eval format).")
        st.stop()
    rows = runs.to_dicts()
    labels = [f"{r['model']} · {r['dataset']} · {r['benchmark']} ({r['problems']:,} problems × {r['k']})" for r in rows]
    c1, c2 = st.columns(2)
    a_index = c1.selectbox("Run A", range(len(rows)), format_func=labels.__getitem__, key="compare_a")
    # B defaults to another run on A's benchmark
    same = [i for i, r in enumerate(rows) if i != a_index and r["benchmark"] == rows[a_index]["benchmark"]]
    b_default = same[0] if same else (1 if a_index == 0 else 0)
    b_index = c2.selectbox("Run B", range(len(rows)), index=b_default, format_func=labels.__getitem__, key="compare_b")
    sources = [OWN_CORRECTNESS, *common.catalogue(stamp)["correct"]]
    source = st.selectbox("Correctness", sources, format_func=queries.correctness_label, key="compare_source")
    a, b = rows[a_index], rows[b_index]
    comparison = cached_comparison(db, stamp, (a["dataset"], a["model"], a["benchmark"]),
                                   (b["dataset"], b["model"], b["benchmark"]), source)
    for note in comparison.notes:
        st.warning(note)
    st.caption(f"{comparison.shared:,} problems answered by both (judged in both); {comparison.only_a:,} only in A, "
               f"{comparison.only_b:,} only in B. Correctness: {queries.correctness_label(source)}.")
    if comparison.shared == 0:
        st.info("The two runs share no problem with a verdict in both: nothing to compare.")
        st.stop()

    c1, c2, c3, c4 = st.columns(4)
    run_metric(c1, "A", comparison.a)
    run_metric(c2, "B", comparison.b)
    c3.metric("B − A", f"{100 * comparison.difference:+.1f} points",
              help="The mean over the shared problems of B's pass rate minus A's.")
    c3.caption(f"95% CI {interval(comparison.difference_ci, points=True)} (paired, over the shared problems)")
    c4.metric("Problems that flipped", f"+{comparison.gained.height} / −{comparison.lost.height}",
              help="Solved (at least half of its answers correct) by B and not by A, and the other way round.")
    if comparison.mcnemar_p is not None:
        c4.caption(f"McNemar's exact test: p = {comparison.mcnemar_p:.3g}")

    st.subheader("Accuracy across token budgets")
    acc, caps = compare.budget_curves(comparison)
    st.plotly_chart(charts.budget_figure(acc, n_cots=comparison.cots.height, group_cols=("run",), caps=caps),
                    key="compare_budget", width="stretch")
    st.caption("Each run on the shared problems: an answer longer than the budget counts as wrong. A dotted line is a "
               "run's max new tokens, where its generations were cut.")

    st.subheader("Length by correctness")
    st.plotly_chart(compare.length_figure(comparison), key="compare_length", width="stretch")
    st.dataframe(compare.length_table(comparison), hide_index=True, key="compare_length_table")

    st.subheader("Problems that flipped")
    gained_tab, lost_tab = st.tabs([f"Solved by B only ({comparison.gained.height})",
                                    f"Solved by A only ({comparison.lost.height})"])
    with gained_tab:
        flipped(comparison.gained, "compare_gained", comparison, db, stamp)
    with lost_tab:
        flipped(comparison.lost, "compare_lost", comparison, db, stamp)
