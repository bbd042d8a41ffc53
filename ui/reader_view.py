"""The Reader's parts, as functions the page puts together: where it is (one CoT, or a whole
problem with one CoT in focus), how it moves (j/k, n/p, the buttons), a CoT's block (header,
thinking, steps, solution, verdicts, scores), its permalink, and scrolling to it.

Where the Reader is lives in session state and is mirrored in the URL: ``?cot=<readable id>``
shows that CoT alone, ``?problem=<readable id>`` the whole problem (core.ids; internal ids are
accepted too). Other pages open it with :func:`open_cot` / :func:`open_problem` and
``st.switch_page``. A panel that belongs to one CoT goes into :func:`cot_block` (it gets the
CoT's row), so it shows in both views.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

import polars as pl
import streamlit as st

from core import ids, markers, queries, render
from core.queries import CotFilter
from core.text import load_markers
from ui import steps_view

MARKERS = load_markers()

# session keys: the CoT shown alone (None: the problem view), the problem shown, the CoT in
# focus in the problem view (expanded and scrolled to)
VIEW_COT, PROBLEM, FOCUS = "reader_view_cot", "reader_problem_id", "reader_cot_id"


# ---------------------------------------------------------------------------- where the Reader is


def open_cot(cot_id: int, problem_id: int) -> None:
    """Show one CoT alone, its thinking open (call from a callback, or before st.switch_page)."""
    st.session_state[VIEW_COT] = int(cot_id)
    st.session_state[PROBLEM] = int(problem_id)
    st.session_state[FOCUS] = int(cot_id)
    st.session_state[f"reader_think_{int(cot_id)}"] = True


def open_problem(problem_id: int | None, focus: int | None = None) -> None:
    """Show a whole problem (None: the filter's first), with ``focus`` expanded and scrolled to."""
    st.session_state[VIEW_COT] = None
    st.session_state[PROBLEM] = None if problem_id is None else int(problem_id)
    st.session_state[FOCUS] = None if focus is None else int(focus)
    if focus is not None:
        st.session_state[f"reader_think_{int(focus)}"] = True


def cot_address(cot_id: int) -> dict[str, str]:
    """Query parameters that open a CoT alone (for st.switch_page)."""
    return {"cot": ids.readable_cot_id(cot_id) or str(int(cot_id))}


def step_cot(f: CotFilter, problem_id: int, cot_id: int | None, step: int, alone: bool) -> None:
    """j / k: the next or previous CoT the filter matches, in the view the Reader is in."""
    target = queries.step_cot(f, problem_id, cot_id, step)
    if target is None:
        return
    target_problem, target_cot = target
    if alone:
        open_cot(target_cot, target_problem)
    else:
        open_problem(target_problem, focus=target_cot)


def step_problem(f: CotFilter, problem_id: int | None, alone: bool) -> None:
    """n / p: another problem of the filter; alone, its first matching CoT."""
    if problem_id is None:
        return
    if alone:
        cots = queries.matching_cots_of_problem(f, problem_id)
        if cots:
            open_cot(cots[0], problem_id)
            return
    open_problem(problem_id)


def permalink(readable_id: str, *, what: str = "cot") -> str:
    """The address that opens this CoT (or problem) on this server, from any browser."""
    base = (st.context.url or "").split("?")[0].rstrip("/")
    page = base if base.endswith("/reader") else (base + "/reader" if base else "/reader")
    return f"{page}?{what}={quote(readable_id, safe=':/')}"


def scroll_to(key: str, token: str = "") -> None:
    """Scroll the page so that the element with ``key`` is at the top, once per change of
    ``key`` or ``token`` (the component's HTML is the same on a rerun that keeps both, so the
    browser does not run it again: put it where its place on the page does not change). The
    script only reads the page it sits in; it loads nothing."""
    target = "st-key-" + "".join(ch for ch in key if ch.isalnum() or ch in "_-")
    st.iframe(
        f"<!-- {''.join(ch for ch in token if ch.isalnum())} -->\n<script>\n"
        f"const target = {target!r};\n"
        "const doc = window.parent.document;\n"
        "let tries = 0, moved = false, laidAt = null;\n"
        # scrolled once the run has finished drawing (before, the previous view's block may
        # still be there), then held at the top while the content above it still moves it down
        # (a layout shift); the reader's own scrolling ends the holding
        "for (const kind of ['wheel', 'touchmove', 'keydown', 'mousedown']) {\n"
        "  doc.addEventListener(kind, () => { moved = true; }, {once: true, capture: true});\n"
        "}\n"
        "function drawn() {\n"
        "  const app = doc.querySelector(\"[data-testid='stApp']\");\n"
        "  return !app || app.getAttribute('data-test-script-state') !== 'running';\n"
        "}\n"
        "function layoutTop(el) { let y = 0; for (let e = el; e; e = e.offsetParent) y += e.offsetTop; return y; }\n"
        "function hold(left) {\n"
        "  const el = doc.querySelector('.' + target);\n"
        "  if (moved || !el) return;\n"
        "  const at = layoutTop(el);\n"
        "  if (at !== laidAt) { el.scrollIntoView({block: 'start'}); laidAt = at; }\n"
        "  if (left > 0) setTimeout(() => hold(left - 1), 250);\n"
        "}\n"
        "function go() {\n"
        "  const el = doc.querySelector('.' + target);\n"
        "  if (el && drawn()) { el.scrollIntoView({block: 'start'}); laidAt = layoutTop(el); setTimeout(() => hold(8), 250); }\n"
        "  else if (tries++ < 300) { setTimeout(go, 100); }\n"
        "}\n"
        "go();\n"
        "</script>",
        height=1,
    )


# ---------------------------------------------------------------------------- a CoT's parts


def show_text(text: str | None, key: str, *, empty: str, terms: tuple[str, ...] = (), find: str = "") -> None:
    """Markdown with LaTeX and highlighted reflection markers, search terms and found words; a
    very long text shows its first part with a toggle for the rest (and says how many found
    words lie in the part not shown)."""
    if not text:
        st.caption(empty)
        return
    shown, clipped = render.clip_for_display(text)
    if clipped and st.toggle(f"Show all {len(text):,} characters (slow to render)", key=key):
        shown, clipped = text, False
    if clipped:
        hidden = render.count_matches(text[len(shown):], terms=terms, find=find) if (terms or find) else 0
        more = f" {hidden:,} of the highlighted words are in the rest: show all to see them." if hidden else ""
        st.caption(f"Showing the first {len(shown):,} of {len(text):,} characters.{more}")
    st.markdown(render.highlight(render.safe_markdown(shown), markers=MARKERS, terms=terms, find=find))


def math_markdown(value: str) -> str:
    """A short answer as inline math (its dollar signs dropped), made safe."""
    body = value.replace("$", "").strip()
    return render.safe_markdown(f"${body}$") if body else ""


def cot_label(cot: dict, readable: str | None = None) -> str:
    return f"{cot['model'] or 'unknown model'} · sample {cot['sample_idx']} · {readable or 'CoT ' + str(cot['cot_id'])}"


def cot_header(cot: dict, matching: set[int], readable: str | None = None) -> str:
    tokens = (
        f"{cot['n_tokens']:,} tokens ({render.escape_inline(cot['tokenizer'])})"
        if cot["n_tokens"] is not None else "tokens not counted yet"
    )
    parts = [
        f"**{render.escape_inline(cot['model'] or 'unknown model')}**", f"sample {cot['sample_idx']}", tokens,
        f"{cot['n_chars']:,} characters",
        render.escape_inline(markers.describe_counts(cot["reflections"], cot["n_reflections"], cot["n_tokens"])),
        render.inline_code(readable) if readable else f"CoT {cot['cot_id']}",
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


def cot_block(cot: dict, *, problem_id: int, readable: str | None, scores: pl.DataFrame, correct_sources: list[str],
              matching: set[int], expanded: bool, terms: tuple[str, ...] = (),
              open_alone: Callable[[], None] | None = None, panel: Callable[[dict], None] | None = None) -> None:
    """One CoT in a bordered container keyed ``reader_cot_<id>`` (what scroll_to finds): its
    header, a find box, the thinking (open when ``expanded``), its steps, the solution, the
    extracted answer with every source's verdict, and its scores. ``open_alone`` adds a button
    that shows this CoT by itself (the problem view's way to a permalink); ``panel`` draws what
    else belongs to the CoT at its end (the labelling panel, ui/annotate.py)."""
    cot_id = cot["cot_id"]
    with st.container(border=True, key=f"reader_cot_{cot_id}"):
        columns = st.columns([6, 2, 1] if open_alone else [6, 2], vertical_alignment="center")
        columns[0].markdown(cot_header(cot, matching, readable))
        find = columns[1].text_input(
            "Find in this CoT", key=f"reader_find_{cot_id}", placeholder="Find in this CoT", label_visibility="collapsed",
            help="Highlights these words, in this order, in the thinking and the solution").strip()
        if open_alone is not None:
            columns[2].button("Open", key=f"reader_alone_{cot_id}", on_click=open_alone,
                              help="This CoT alone, with its permalink")
        if find:
            found = [render.count_matches(cot[part], find=find) for part in ("thinking", "solution")]
            st.caption(f"“{render.escape_inline(find)}”: {found[0]:,} in the thinking, {found[1]:,} in the solution.")
            # a new find that occurs in the thinking opens it once (closing it again is the reader's choice)
            if found[0] and st.session_state.get(f"reader_find_opened_{cot_id}") != find:
                st.session_state[f"reader_think_{cot_id}"] = True
                st.session_state[f"reader_find_opened_{cot_id}"] = find
        think = st.expander(
            f"Thinking ({len(cot['thinking']):,} characters)" if cot["thinking"] else "Thinking (none marked)",
            expanded=expanded, key=f"reader_think_{cot_id}", on_change="rerun",
        )
        if think.open:  # rendered only when opened: a problem can have dozens of long CoTs
            with think:
                show_text(cot["thinking"], f"reader_think_all_{cot_id}", terms=terms, find=find,
                          empty="No separate thinking: the response had no thinking markers, so all of it is the solution below.")
        steps_view.steps_expander(problem_id, cot_id, expanded=False)  # the step view, when a source split it
        st.markdown("**Solution**")
        show_text(cot["solution"], f"reader_solution_all_{cot_id}", terms=terms, find=find,
                  empty="The response has no solution after its thinking.")
        answer = math_markdown(cot["answer"]) if cot["answer"] else "none found"
        cot_scores = scores.filter(pl.col("cot_id") == cot_id)
        st.markdown(f"**Extracted answer:** {answer} · {verdict_badges(cot_scores, correct_sources)}")
        if cot_scores.height:
            st.dataframe(cot_scores.select("metric", "source", "value", "raw", "error"), hide_index=True,
                         key=f"reader_scores_{cot_id}")
        else:
            st.caption("No scores for this CoT yet.")
        if panel is not None:
            panel(cot)


def go_to_cot(problem_id: int | None, cot_id: int | None) -> None:
    """Show a problem with one of its CoTs in focus (None: its first); labelling moves this way.
    A CoT shown alone stays alone: the next one is shown alone too."""
    if st.session_state.get(VIEW_COT) is not None and cot_id is not None:
        st.session_state[VIEW_COT] = cot_id
    st.session_state[PROBLEM] = problem_id
    st.session_state[FOCUS] = cot_id
