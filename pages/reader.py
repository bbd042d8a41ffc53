"""Reader: one CoT, or one problem with every CoT of it, their answers, verdicts and scores,
and a diff of any two of them.

``?cot=<id>`` opens that CoT alone (its thinking open, scrolled to), and that address is its
permalink; ``?problem=<id>`` opens the whole problem. Ids are readable ones (core.ids:
``dataset:problem key:n``) or internal ones. Explore, Agreement and the other pages open it
through ui.reader_view; without an address the Reader shows the filter's first problem.
Keys: j / k the next / previous CoT the filter matches, n / p the next / previous problem
(ui.reader_view says in which order).

Text is shown as Markdown with LaTeX through core.render (HTML in the data shows as text),
with reflection markers, the sidebar's search words and a find-in-this-CoT phrase
highlighted. Thinking opens on demand and very long texts show their first part until asked
for all of it (core.render.DISPLAY_LIMIT): Chromium took about 4 s more to lay out 20k
characters of math-heavy Markdown, 35-45 s more for 165k.
"""

import streamlit as st

from core import ids, queries, render
from ui import annotate, common, reader_view
from ui import problems as problem_ui
from ui.reader_view import FOCUS, PROBLEM, VIEW_COT

DIFF_LINES_SHOWN = 1500  # a diff longer than this shows its start, and offers the whole file


@st.cache_data(ttl=600, show_spinner=False)
def cached_problem(stamp, problem_id: int):
    del stamp  # only the cache key
    return queries.problem(problem_id), queries.cots_of_problem(problem_id), queries.scores_of_problem(problem_id)


@st.cache_data(ttl=600, show_spinner=False)
def cached_readable(stamp, problem_id: int) -> tuple[str | None, dict[int, str]]:
    """The problem's readable id and its CoTs'."""
    del stamp
    cots = [r[0] for r in queries.cots_of_problem(problem_id).select("cot_id").rows()]
    return ids.readable_problem_id(problem_id), ids.readable_cot_ids(cots)


@st.cache_data(ttl=600, show_spinner=False, max_entries=32)
def cached_diff(a: str, b: str, a_name: str, b_name: str) -> str:
    return render.cot_diff(a, b, a_name=a_name, b_name=b_name)


def go_to(problem_id: int | None) -> None:
    """Show another problem, whole (None: the filter's first one)."""
    reader_view.open_problem(problem_id)
    if problem_id is None:
        for key in ("problem", "cot"):
            if key in st.query_params:
                del st.query_params[key]


def from_address(asked_cot: str | None, asked_problem: str | None) -> tuple[int | None, int | None]:
    """(CoT shown alone, problem) that the address names; a warning says what it could not read."""
    if asked_cot:
        found = ids.resolve(asked_cot)
        if found and found[0] == "cot":
            return found[1], queries.problem_of_cot(found[1])
        if found:  # a problem's id given as ?cot=
            return None, found[1]
        st.warning(f"'{render.escape_inline(asked_cot)}' in the address is not a CoT of this store; "
                   "showing the filter's first problem.")
        return None, None
    if asked_problem:
        found = ids.resolve(asked_problem)
        if found:
            return None, found[1] if found[0] == "problem" else queries.problem_of_cot(found[1])
        if asked_problem.strip().isdigit():
            return None, int(asked_problem)  # said below: not in the store
        st.warning(f"'{render.escape_inline(asked_problem)}' in the address is not a problem id; "
                   "showing the filter's first problem.")
    return None, None


def mirror_address(view_cot: int | None, readable_cot: str | None, readable_problem: str | None, problem_id: int) -> None:
    """The address says what is shown: ?cot= alone, else ?problem= (other parameters are the filter's)."""
    wanted, other = (("cot", readable_cot or str(view_cot)) if view_cot is not None
                     else ("problem", readable_problem or str(problem_id))), ("problem" if view_cot is not None else "cot")
    if other in st.query_params:
        del st.query_params[other]
    if st.query_params.get(wanted[0]) != wanted[1]:
        st.query_params[wanted[0]] = wanted[1]


st.title("Reader")
top = st.container(key="reader_top")
with common.guard():
    asked_cot, asked_problem = st.query_params.get("cot"), st.query_params.get("problem")  # before the filter rewrites the URL
    f = common.sidebar_filter()
    common.labels_in_view()  # the CoTs' labels show here: cached reads refresh after each label
    stamp = common.store_stamp()

    view_cot, problem_id = st.session_state.get(VIEW_COT), st.session_state.get(PROBLEM)
    if view_cot is None and problem_id is None:  # nothing chosen in this session yet: the address says
        view_cot, problem_id = from_address(asked_cot, asked_problem)
        if view_cot is not None:
            st.session_state[f"reader_think_{view_cot}"] = True
    if problem_id is None:
        first = queries.page(f, sort_by="problem_id", limit=1)
        if first.height == 0:
            common.explain_empty(f)
            st.stop()
        problem_id = int(first["problem_id"][0])
    st.session_state[VIEW_COT], st.session_state[PROBLEM] = view_cot, problem_id
    alone = view_cot is not None

    problem, cots, scores = cached_problem(stamp, problem_id)
    if problem is None or (alone and view_cot not in set(cots["cot_id"].to_list())):
        st.warning(f"Problem {problem_id} is not in the store (its dataset may have been removed).")
        st.button("Show the filter's first problem", key="reader_reset", on_click=go_to, args=(None,))
        st.stop()
    readable_problem, readable = cached_readable(stamp, problem_id)
    mirror_address(view_cot, readable.get(view_cot), readable_problem, problem_id)
    focus = view_cot if alone else st.session_state.get(FOCUS)
    with top:  # at the top, so its place on the page (and so its frame) stays put between reruns
        # the view is in the token: "Whole problem" from a CoT alone keeps the key and the problem,
        # and must still scroll to the CoT in focus among the others
        reader_view.scroll_to(f"reader_cot_{focus}" if focus is not None else "reader_top",
                              token=f"{problem_id}{'alone' if alone else 'whole'}")

    # ---------------------------------------------------------------- where am I, where next
    matching_order = queries.matching_cots_of_problem(f, problem_id)
    matching = set(matching_order)
    previous_id, next_id = queries.neighbours(f, problem_id)
    order = cots["cot_id"].to_list()
    at = order.index(focus) if focus in order else -1
    later = any(c in matching for c in order[at + 1:])
    earlier = at > 0 and any(c in matching for c in order[:at])
    nav = st.columns(4, vertical_alignment="center")
    nav[0].button("← Previous problem", key="reader_prev", on_click=reader_view.step_problem,
                  args=(f, previous_id, alone), disabled=previous_id is None, width="stretch", shortcut="P")
    nav[1].button("↑ Previous CoT", key="reader_prev_cot", on_click=reader_view.step_cot,
                  args=(f, problem_id, focus, -1, alone), disabled=not (earlier or previous_id is not None),
                  width="stretch", shortcut="K")
    nav[2].button("Next CoT ↓", key="reader_next_cot", on_click=reader_view.step_cot,
                  args=(f, problem_id, focus, 1, alone), disabled=not (later or next_id is not None),
                  width="stretch", shortcut="J")
    nav[3].button("Next problem →", key="reader_next", on_click=reader_view.step_problem,
                  args=(f, next_id, alone), disabled=next_id is None, width="stretch", shortcut="N")

    dataset = render.escape_inline(problem["dataset"])
    if problem["generated"]:
        dataset += " :orange-badge[generated]"
    benchmark = f" · benchmark {render.escape_inline(problem['benchmark'])}" if problem["benchmark"] else ""
    shown_id = readable.get(view_cot) if alone else readable_problem
    title, whole = st.columns([5, 1], vertical_alignment="center")
    if alone:
        title.markdown(f"**CoT {render.inline_code(shown_id)}** · problem {render.inline_code(readable_problem)} · dataset {dataset}{benchmark} · "
                       f"{matching_order.index(view_cot) + 1 if view_cot in matching else '–'} of {len(matching_order)} "
                       "CoTs of this problem that match the filter")
        whole.button(f"Whole problem ({cots.height} CoTs)", key="reader_whole", on_click=reader_view.open_problem,
                     args=(problem_id, view_cot), width="stretch")
    else:
        title.markdown(f"**Problem {render.inline_code(shown_id)}** · dataset {dataset}{benchmark} · {cots.height} CoTs")
    st.code(reader_view.permalink(shown_id or "", what="cot" if alone else "problem"), language=None, wrap_lines=True)
    st.caption("Permalink above (copy it with the button at its right). Keys: j / k next / previous CoT of the filter, "
               "n / p next / previous problem. " + (f"Internal id {view_cot}." if alone else f"Internal id {problem_id}."))
    if not matching:
        st.caption("None of this problem's CoTs matches the current filter; the keys and buttons move within the filter.")
    terms = render.search_words(f.text)
    st.markdown(render.legend(terms=bool(terms), find=True))

    st.subheader("Question")
    st.markdown(render.highlight(render.safe_markdown(problem["question"]), terms=terms))
    reference = problem["reference_answer"]
    st.markdown("**Reference answer:** " + (reader_view.math_markdown(reference) if reference else "none given"))
    if problem.get("reference_solution"):
        ref_box = st.expander("Reference solution", key=f"reader_refsol_{problem_id}", on_change="rerun")
        if ref_box.open:
            with ref_box:
                reader_view.show_text(problem["reference_solution"], f"reader_refsol_all_{problem_id}", empty="")
    if not alone:
        problem_ui.reader_section(problem_id, problem["question"], go_to)

    # every source, so a missing verdict shows (people's own verdicts are in the labels line)
    correct_sources = [s for s in common.catalogue(stamp)["correct"] if not annotate.labels.is_human_source(s)]
    shown_cots = cots.filter(cots["cot_id"] == view_cot) if alone else cots
    st.subheader("CoT" if alone else f"CoTs ({cots.height})")
    labeller = annotate.Labeller(problem_id, cots, focus=focus, go_to_cot=reader_view.go_to_cot, next_problem_id=next_id)
    labeller.bar()  # who labels, the labelling queue, the keys (ui/annotate.py)
    for cot in shown_cots.iter_rows(named=True):
        cot_id = cot["cot_id"]
        reader_view.cot_block(
            cot, problem_id=problem_id, readable=readable.get(cot_id), scores=scores, correct_sources=correct_sources,
            matching=matching, expanded=alone or cot_id == focus, terms=terms,
            open_alone=None if alone else (lambda c=cot_id: reader_view.open_cot(c, problem_id)),
            panel=labeller.show,  # its labels; the labelling panel on the focused CoT
        )

    if alone:
        st.stop()
    st.subheader("Side by side")
    if cots.height < 2:
        st.caption("This problem has a single CoT: nothing to compare.")
        st.stop()
    # rendered only when opened, like the thinking: two long CoTs take seconds to lay out
    compare = st.expander("Compare two CoTs of this problem", key=f"reader_compare_{problem_id}", on_change="rerun")
    if not compare.open:
        st.stop()
    with compare:
        labels = {row["cot_id"]: reader_view.cot_label(row, readable.get(row["cot_id"])) for row in cots.iter_rows(named=True)}
        choices = list(labels)
        pick_a, pick_b, pick_part = st.columns([2, 2, 1])
        a_id = pick_a.selectbox("Left CoT", choices, index=0, format_func=labels.get, key=f"reader_left_{problem_id}")
        b_id = pick_b.selectbox("Right CoT", choices, index=1, format_func=labels.get, key=f"reader_right_{problem_id}")
        part = pick_part.radio("Compare", ["full text", "thinking", "solution"], key="reader_compare_part")
        column = {"full text": "full_text", "thinking": "thinking", "solution": "solution"}[part]
        a = cots.row(choices.index(a_id), named=True)
        b = cots.row(choices.index(b_id), named=True)
        for col, cot, side in zip(st.columns(2), (a, b), ("left", "right")):
            with col:
                st.markdown(reader_view.cot_header(cot, matching, readable.get(cot["cot_id"])))
                with st.container(height=520, key=f"reader_side_{side}"):
                    reader_view.show_text(cot[column], f"reader_side_all_{side}_{cot['cot_id']}", empty=f"No {part}.")
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
