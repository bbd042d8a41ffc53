"""Reader: one problem with every CoT of it, their answers, verdicts and scores, and a diff
of any two of them.

The problem comes from the Explore page (session state), else the URL (``?problem=<id>``),
else the first problem the shared filter matches. Text is shown as Markdown with LaTeX
through core.render (HTML in the data shows as text). Thinking opens on demand and very long
texts show their first part until asked for all of it (core.render.DISPLAY_LIMIT): Chromium
took about 4 s more to lay out 20k characters of math-heavy Markdown, 35-45 s more for 165k.
"""

import polars as pl
import streamlit as st

from core import markers, queries, render
from core.text import load_markers
from ui import annotate, common, steps_view
from ui import problems as problem_ui

DIFF_LINES_SHOWN = 1500  # a diff longer than this shows its start, and offers the whole file
MARKERS = load_markers()


@st.cache_data(ttl=600, show_spinner=False)
def cached_problem(stamp, problem_id: int):
    del stamp  # only the cache key
    return queries.problem(problem_id), queries.cots_of_problem(problem_id), queries.scores_of_problem(problem_id)


@st.cache_data(ttl=600, show_spinner=False, max_entries=32)
def cached_diff(a: str, b: str, a_name: str, b_name: str) -> str:
    return render.cot_diff(a, b, a_name=a_name, b_name=b_name)


def go_to(problem_id: int | None) -> None:
    """Show another problem (None: the filter's first one)."""
    st.session_state["reader_problem_id"] = problem_id
    st.session_state["reader_cot_id"] = None
    if problem_id is None:
        del st.query_params["problem"]


def go_to_cot(problem_id: int | None, cot_id: int | None) -> None:
    """Show a problem with one of its CoTs focused (None: its first); labelling moves this way."""
    st.session_state["reader_problem_id"] = problem_id
    st.session_state["reader_cot_id"] = cot_id


def show_text(text: str | None, key: str, *, empty: str) -> None:
    """Markdown with LaTeX and highlighted reflection markers; a very long text shows its
    first part with a toggle for the rest."""
    if not text:
        st.caption(empty)
        return
    shown, clipped = render.clip_for_display(text)
    if clipped and st.toggle(f"Show all {len(text):,} characters (slow to render)", key=key):
        shown, clipped = text, False
    if clipped:
        st.caption(f"Showing the first {len(shown):,} of {len(text):,} characters.")
    st.markdown(render.highlight_markers(render.safe_markdown(shown), MARKERS))


def math_markdown(value: str) -> str:
    """A short answer as inline math (its dollar signs dropped), made safe."""
    body = value.replace("$", "").strip()
    return render.safe_markdown(f"${body}$") if body else ""


def cot_label(cot: dict) -> str:
    return f"{cot['model'] or 'unknown model'} · sample {cot['sample_idx']} · CoT {cot['cot_id']}"


def cot_header(cot: dict, matching: set[int]) -> str:
    tokens = (
        f"{cot['n_tokens']:,} tokens ({render.escape_inline(cot['tokenizer'])})"
        if cot["n_tokens"] is not None else "tokens not counted yet"
    )
    parts = [
        f"**{render.escape_inline(cot['model'] or 'unknown model')}**", f"sample {cot['sample_idx']}", tokens,
        f"{cot['n_chars']:,} characters",
        render.escape_inline(markers.describe_counts(cot["reflections"], cot["n_reflections"], cot["n_tokens"])),
        f"CoT {cot['cot_id']}",
    ]
    badges = []
    if cot["truncated"]:
        reason = "thinking never closed" if cot["thinking_unclosed"] else f"finish reason {cot['finish_reason']}"
        badges.append(f":red-badge[truncated: {render.escape_inline(reason)}]")
    if cot["cot_id"] in matching:
        badges.append(":blue-badge[matches the filter]")
    return " · ".join(parts) + ("  " + " ".join(badges) if badges else "")


def verdict_badges(cot_scores: pl.DataFrame, correct_sources: list[str]) -> str:
    """The CoT's correctness by each correctness source in the store."""
    by_source = {r["source"]: r for r in cot_scores.filter(pl.col("metric") == "correct").iter_rows(named=True)}
    badges = []
    for source in correct_sources:
        name = render.escape_inline(source)
        row = by_source.get(source)
        if row is None:
            badges.append(f":gray-badge[{name}: not scored]")
        elif row["value"] is None:
            why = f" ({render.escape_inline(row['error'])})" if row["error"] else ""
            badges.append(f":gray-badge[{name}: no verdict{why}]")
        elif row["value"] >= 1:
            badges.append(f":green-badge[{name}: correct]")
        else:
            badges.append(f":red-badge[{name}: incorrect]")
    return " ".join(badges) if badges else "no correctness source in the store"


st.title("Reader")
with common.guard():
    requested = st.query_params.get("problem")  # read first: the filter rewrites the URL
    f = common.sidebar_filter()
    common.labels_in_view()  # the CoTs' labels show here: cached reads refresh after each label
    stamp = common.store_stamp()

    problem_id = st.session_state.get("reader_problem_id")
    if problem_id is None and requested:
        try:
            problem_id = int(requested)
        except ValueError:
            st.warning(f"'{render.escape_inline(requested)}' in the address is not a problem id; showing the filter's first problem.")
    if problem_id is None:
        first = queries.page(f, sort_by="problem_id", limit=1)
        if first.height == 0:
            common.explain_empty(f)
            st.stop()
        problem_id = int(first["problem_id"][0])
    st.session_state["reader_problem_id"] = problem_id
    if st.query_params.get("problem") != str(problem_id):
        st.query_params["problem"] = str(problem_id)

    problem, cots, scores = cached_problem(stamp, problem_id)
    if problem is None:
        st.warning(f"Problem {problem_id} is not in the store (its dataset may have been removed).")
        st.button("Show the filter's first problem", key="reader_reset", on_click=go_to, args=(None,))
        st.stop()

    previous_id, next_id = queries.neighbours(f, problem_id)
    nav_prev, nav_title, nav_next = st.columns([1, 4, 1], vertical_alignment="center")
    nav_prev.button("← Previous problem", key="reader_prev", on_click=go_to, args=(previous_id,),
                    disabled=previous_id is None, width="stretch")
    nav_next.button("Next problem →", key="reader_next", on_click=go_to, args=(next_id,),
                    disabled=next_id is None, width="stretch")
    dataset = render.escape_inline(problem["dataset"])
    if problem["generated"]:
        dataset += " :orange-badge[generated]"
    benchmark = f" · benchmark {render.escape_inline(problem['benchmark'])}" if problem["benchmark"] else ""
    nav_title.markdown(f"**Problem {problem_id}** · dataset {dataset}{benchmark} · {cots.height} CoTs")
    matching = set(queries.page(f.with_(problem_ids=(problem_id,)), limit=max(cots.height, 1))["cot_id"].to_list())
    if not matching:
        st.caption("None of this problem's CoTs matches the current filter; Previous and Next move within the filter.")

    st.subheader("Question")
    st.markdown(render.safe_markdown(problem["question"]))
    reference = problem["reference_answer"]
    st.markdown("**Reference answer:** " + (math_markdown(reference) if reference else "none given"))
    if problem.get("reference_solution"):
        ref_box = st.expander("Reference solution", key=f"reader_refsol_{problem_id}", on_change="rerun")
        if ref_box.open:
            with ref_box:
                show_text(problem["reference_solution"], f"reader_refsol_all_{problem_id}", empty="")
    problem_ui.reader_section(problem_id, problem["question"], go_to)

    # every source, so a missing verdict shows (people's own verdicts are in the labels line)
    correct_sources = [s for s in common.catalogue(stamp)["correct"] if not annotate.labels.is_human_source(s)]
    st.subheader(f"CoTs ({cots.height})")
    wanted_cot = st.session_state.get("reader_cot_id")
    labeller = annotate.Labeller(problem_id, cots, focus=wanted_cot, go_to_cot=go_to_cot, next_problem_id=next_id)
    labeller.bar()  # who labels, the labelling queue, the keys (ui/annotate.py)
    for cot in cots.iter_rows(named=True):
        cot_id = cot["cot_id"]
        with st.container(border=True, key=f"reader_cot_{cot_id}"):
            st.markdown(cot_header(cot, matching))
            think = st.expander(
                f"Thinking ({len(cot['thinking']):,} characters)" if cot["thinking"] else "Thinking (none marked)",
                expanded=cot_id == wanted_cot, key=f"reader_think_{cot_id}", on_change="rerun",
            )
            if think.open:  # rendered only when opened: a problem can have dozens of long CoTs
                with think:
                    show_text(cot["thinking"], f"reader_think_all_{cot_id}",
                              empty="No separate thinking: the response had no thinking markers, so all of it is the solution below.")
            steps_view.steps_expander(problem_id, cot_id, expanded=False)  # the step view, when a source split it
            st.markdown("**Solution**")
            show_text(cot["solution"], f"reader_solution_all_{cot_id}", empty="The response has no solution after its thinking.")
            answer = math_markdown(cot["answer"]) if cot["answer"] else "none found"
            cot_scores = scores.filter(pl.col("cot_id") == cot_id)
            st.markdown(f"**Extracted answer:** {answer} · {verdict_badges(cot_scores, correct_sources)}")
            if cot_scores.height:
                st.dataframe(
                    cot_scores.select("metric", "source", "value", "raw", "error"), hide_index=True,
                    key=f"reader_scores_{cot_id}",
                )
            else:
                st.caption("No scores for this CoT yet.")
            labeller.show(cot)  # its labels; the labelling panel on the focused CoT

    st.subheader("Side by side")
    if cots.height < 2:
        st.caption("This problem has a single CoT: nothing to compare.")
        st.stop()
    # rendered only when opened, like the thinking: two long CoTs take seconds to lay out
    compare = st.expander("Compare two CoTs of this problem", key=f"reader_compare_{problem_id}", on_change="rerun")
    if not compare.open:
        st.stop()
    with compare:
        labels = {row["cot_id"]: cot_label(row) for row in cots.iter_rows(named=True)}
        ids = list(labels)
        pick_a, pick_b, pick_part = st.columns([2, 2, 1])
        a_id = pick_a.selectbox("Left CoT", ids, index=0, format_func=labels.get, key=f"reader_left_{problem_id}")
        b_id = pick_b.selectbox("Right CoT", ids, index=1, format_func=labels.get, key=f"reader_right_{problem_id}")
        part = pick_part.radio("Compare", ["full text", "thinking", "solution"], key="reader_compare_part")
        column = {"full text": "full_text", "thinking": "thinking", "solution": "solution"}[part]
        a = cots.row(ids.index(a_id), named=True)
        b = cots.row(ids.index(b_id), named=True)
        for col, cot, side in zip(st.columns(2), (a, b), ("left", "right")):
            with col:
                st.markdown(cot_header(cot, matching))
                with st.container(height=520, key=f"reader_side_{side}"):
                    show_text(cot[column], f"reader_side_all_{side}_{cot['cot_id']}", empty=f"No {part}.")
        diff = cached_diff(a[column] or "", b[column] or "", labels[a_id], labels[b_id])
        if not diff:
            st.info(f"The two CoTs have the same {part}.")
        else:
            diff_lines = diff.split("\n")
            added = sum(1 for line in diff_lines if line.startswith("+") and not line.startswith("+++"))
            removed = sum(1 for line in diff_lines if line.startswith("-") and not line.startswith("---"))
            st.markdown(
                f"**Diff of the {part}** (by line; long lines by sentence): {added:,} lines only on the right, "
                f"{removed:,} only on the left."
            )
            shown = diff_lines
            if len(diff_lines) > DIFF_LINES_SHOWN and not st.toggle(
                f"Show the whole diff ({len(diff_lines):,} lines)", key="reader_diff_all"
            ):
                shown = diff_lines[:DIFF_LINES_SHOWN]
                st.caption(f"Showing the first {DIFF_LINES_SHOWN:,} of {len(diff_lines):,} lines.")
            st.code("\n".join(shown), language="diff", height=520 if len(shown) > 25 else "content")
            st.download_button(
                "Download the diff", diff, file_name=f"diff_{a_id}_{b_id}.diff", mime="text/x-diff", key="reader_diff_download",
            )
