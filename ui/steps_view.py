"""Steps inside CoTs on the pages: the Reader's step view, the Distributions page's step
section and the Agreement page's step-label comparison. Widgets and rendering only; the data
and figures come from core.step_stats and core.step_charts. Step text is shown through
core.render's safe Markdown, like every other dataset text.
"""

from __future__ import annotations

import math

import polars as pl
import streamlit as st

from core import render, step_charts, step_stats
from core.queries import CotFilter
from ui import common

STEPS_PER_PAGE = 40


# ---------------------------------------------------------------------------------- cached reads


@st.cache_data(ttl=600, show_spinner=False)
def step_sources(stamp) -> pl.DataFrame:
    del stamp  # only the cache key
    return step_stats.step_sources()


@st.cache_data(ttl=600, show_spinner=False, max_entries=64)
def cot_steps(stamp, cot_id: int):
    del stamp
    return step_stats.cot_steps(cot_id)


@st.cache_data(ttl=600, show_spinner="Counting steps…", max_entries=32)
def role_table(filter_key: str, stamp, source: str, by: str, _f: CotFilter) -> pl.DataFrame:
    del filter_key, stamp
    return step_stats.role_table(source, _f, by=by)


@st.cache_data(ttl=600, show_spinner="Reading step figures…", max_entries=32)
def figure_frame(filter_key: str, stamp, source: str, _f: CotFilter) -> pl.DataFrame:
    del filter_key, stamp
    return step_stats.figure_frame(source, _f)


@st.cache_data(ttl=600, show_spinner="Pairing the steps…", max_entries=16)
def agreement(filter_key: str, stamp, a: str, b: str, _f: CotFilter) -> tuple[dict, dict]:
    del filter_key, stamp
    return step_stats.role_agreement(a, b, _f), step_stats.first_error_agreement(a, b, _f)


# ---------------------------------------------------------------------------------- Reader


def _jump(cot_id: int, step_idx: int, page: int) -> None:
    st.session_state[f"reader_steps_roles_{cot_id}"] = []  # the role filter must not hide it
    st.session_state[f"reader_steps_page_{cot_id}"] = page
    st.session_state[f"reader_steps_focus_{cot_id}"] = step_idx


@st.cache_data(ttl=600, show_spinner=False, max_entries=64)
def step_counts(stamp, problem_id: int) -> dict[int, dict[str, int]]:
    del stamp
    return step_stats.step_counts_of_problem(problem_id)


def steps_expander(problem_id: int, cot_id: int, expanded: bool) -> None:
    """An expander under a CoT's thinking with its step view, rendered only when opened."""
    counts = step_counts(common.store_stamp(), problem_id).get(cot_id)
    if not counts:
        return
    label = ", ".join(f"{n:,} from {render.escape_inline(name)}" for name, n in counts.items())  # names from the data
    box = st.expander(f"Steps ({label})", expanded=expanded, key=f"reader_steps_{cot_id}", on_change="rerun")
    if box.open:
        with box:
            show_steps(cot_id)


def show_steps(cot_id: int) -> None:
    """The step view of one CoT: pick a step source, filter by role, page through the steps."""
    text, steps, scores = cot_steps(common.store_stamp(), cot_id)
    if steps.height == 0:
        st.caption("No step source has split this CoT yet: run `python -m core split-steps`, or ingest step labels "
                   "with `python -m core ingest FILE --steps-for DATASET`.")
        return
    sources = steps["source"].unique(maintain_order=True).to_list()
    pick, roles_col = st.columns([2, 3])
    source = pick.selectbox("Step source", sources, key=f"reader_steps_source_{cot_id}")
    role_key = f"reader_steps_roles_{cot_id}"
    roles = roles_col.multiselect("Only these roles", [*step_charts.ROLES, step_stats.NO_ROLE], key=role_key,
                                  format_func=step_charts.role_label)
    view = step_charts.step_view(text, steps, scores, source, roles or None)
    shown = view["shown"]
    n_pages = max(1, math.ceil(len(shown) / STEPS_PER_PAGE))
    page_key = f"reader_steps_page_{cot_id}"
    st.session_state[page_key] = min(max(1, int(st.session_state.get(page_key, 1))), n_pages)
    info, jump_col, page_col = st.columns([4, 2, 1], vertical_alignment="bottom")
    summary = f"{view['n_steps']:,} steps from '{render.escape_inline(source)}'"
    if roles:
        summary += f", {len(shown):,} of the chosen roles"
    if view["importance_metric"]:
        summary += f" · bars: |{render.escape_inline(view['importance_metric'])}| scaled to this CoT's largest"
    info.caption(summary)
    first = view["first_wrong"]
    if first is not None:
        position = next(i for i, row in enumerate(view["rows"]) if row["step_idx"] == first)
        jump_col.button(f"Jump to the first wrong step ({first})", key=f"reader_steps_jump_{cot_id}",
                        on_click=_jump, args=(cot_id, first, position // STEPS_PER_PAGE + 1))
    page = int(page_col.number_input("Page", 1, n_pages, key=page_key))
    focus = st.session_state.get(f"reader_steps_focus_{cot_id}")
    for row in shown[(page - 1) * STEPS_PER_PAGE: page * STEPS_PER_PAGE]:
        with st.container(border=row["step_idx"] == focus or row["step_idx"] == first,
                          key=f"reader_step_{cot_id}_{row['step_idx']}"):
            badges = [f"**{row['step_idx']}**", step_charts.role_badge(row["role"])]
            if row["wrong"]:
                badges.append(":red-badge[:material/close: first wrong step]" if row["step_idx"] == first
                              else ":red-badge[:material/close: wrong]")
            elif row["wrong"] is False:
                badges.append(":green-badge[ok]")
            if row["n_tokens"] is not None:
                badges.append(f"{row['n_tokens']:,} tokens")
            badges += [f":gray-badge[{render.escape_inline(a)}]" for a in row["micro_actions"]]
            for other in row["others"]:
                label = f"{render.escape_inline(other['source'])}: {render.escape_inline(step_charts.role_label(other['role']))}" if other["role"] \
                    else render.escape_inline(other["source"])
                if other["wrong"]:
                    label += " ✗"
                badges.append(f":small[{label}]")
            st.markdown(" ".join(badges))
            st.markdown(render.safe_markdown(row["text"]))
            if row["importance_bar"] is not None:
                st.progress(row["importance_bar"], text=f"{render.escape_inline(view['importance_metric'])}: {row['importance']:.3f}")
            numbers = {k: v for k, (v, _) in row["numbers"].items() if v is not None and k != view["importance_metric"]}
            if numbers:
                st.caption(" · ".join(f"{render.escape_inline(k)} {v:.3g}" for k, v in sorted(numbers.items())))


# ---------------------------------------------------------------------------------- Distributions


def _gen_key(name: str) -> str:
    return f"dist_steps_{name}_{st.session_state.get('dist_steps_gen', 0)}"


def _narrow(key: str, kind: str) -> None:
    """on_select: a click narrows the shared filter (runs before the page, so the sidebar's
    widgets can still be set)."""
    event = st.session_state.get(key)
    points = event.selection.points if event is not None else []
    changes = step_charts.click_narrowing(kind, points[0] if points else None)
    if changes:
        st.session_state.dist_steps_gen = st.session_state.get("dist_steps_gen", 0) + 1
        common.narrow_filter(**changes)


def _chart(fig, name: str, kind: str) -> None:
    key = _gen_key(name)
    fig = render.inert_figure(fig)  # model and source names in it come from the data
    st.plotly_chart(fig, key=key, on_select=lambda: _narrow(key, kind), selection_mode=("points",), width="stretch")


def distributions_section(f: CotFilter) -> None:
    """Role composition by correctness and by model, first-error positions, step count and
    mean step length against correctness, for the CoTs the filter matches."""
    st.subheader("Steps inside CoTs")
    stamp = common.store_stamp()
    sources = step_sources(stamp)
    if sources.height == 0:
        st.info("No CoT has steps yet. `python -m core split-steps` splits every CoT and labels its steps' roles with "
                "the rule set; `python -m core ingest FILE --steps-for DATASET` adds a dataset's own step labels.")
        return
    names = sources["source"].to_list()
    source = st.selectbox("Step source", names, key="dist_steps_source")
    key = repr(f)
    figures = figure_frame(key, stamp, source, f)
    n_cots = figures.height
    if n_cots == 0:
        st.info(f"None of the matching CoTs has steps from '{render.escape_inline(source)}'.")
        return
    st.caption(f"{n_cots:,} matching CoTs have steps from '{render.escape_inline(source)}'. Correctness: "
               f"{render.escape_inline(f.correct_source) or 'no source chosen (all unknown): pick one in the sidebar'}. "
               "Click a bar or a box to narrow the filter to its correctness or model.")
    _chart(step_charts.role_composition_figure(role_table(key, stamp, source, "correctness", f), by="correctness",
                                               source=source, n_cots=n_cots), "roles_correctness", "correctness")
    _chart(step_charts.role_composition_figure(role_table(key, stamp, source, "model", f), by="model",
                                               source=source, n_cots=n_cots), "roles_model", "model")
    _chart(step_charts.first_error_figure(figures, source=source, n_cots=n_cots), "first_error", "correctness")
    left, right = st.columns(2)
    with left:
        _chart(step_charts.by_correctness_figure(figures, metric="n_steps", title="Steps per CoT", axis="steps",
                                                 source=source, n_cots=n_cots), "n_steps", "correctness")
    with right:
        _chart(step_charts.by_correctness_figure(figures, metric="mean_step_tokens", title="Mean step length",
                                                 axis="tokens per step", source=source, n_cots=n_cots), "step_len", "correctness")


# ---------------------------------------------------------------------------------- Agreement


def agreement_section(f: CotFilter) -> None:
    """Two step sources' roles as a confusion matrix with kappa, and their first-error agreement."""
    stamp = common.store_stamp()
    sources = step_sources(stamp)
    if sources.height < 2:
        st.info("Comparing step labels needs two step sources: e.g. ingest Thought Anchors' steps with --steps-for, "
                "then `python -m core split-steps --from-source \"thought anchors\"`.")
        return
    names = sources["source"].to_list()
    left, right = st.columns(2)
    a = left.selectbox("A: step source", names, index=len(names) - 1, key="agr_steps_a")
    b = right.selectbox("B: step source (its steps are the units compared)", names, index=0, key="agr_steps_b")
    if a == b:
        st.info("Choose two different step sources.")
        return
    roles, first_error = agreement(repr(f), stamp, a, b, f)
    cells = st.columns(4)
    cells[0].metric("Steps compared", f"{roles['steps']:,}")
    cells[1].metric("Role agreement", "—" if roles["accuracy"] is None else f"{roles['accuracy']:.1%}")
    cells[2].metric("Cohen's kappa", "—" if roles["kappa"] is None else f"{roles['kappa']:.3f}")
    cells[3].metric("CoTs", f"{roles['cots']:,}")
    st.caption("Each of B's steps takes A's label from the A step that overlaps it most (same characters of the CoT); "
               "steps either source leaves without a role are left out.")
    if roles["steps"]:
        st.plotly_chart(step_charts.role_confusion_figure(roles), key="agr_steps_matrix", width="stretch")
        st.dataframe(pl.DataFrame(roles["per_role"]), hide_index=True, key="agr_steps_per_role",
                     column_config={c: st.column_config.NumberColumn(format="%.3f") for c in ("precision", "recall", "f1", "kappa")})
    st.subheader("First wrong step")
    if first_error["cots"] == 0:
        st.caption("No CoT has step verdicts from both sources (PRM800K / ProcessBench labels give them; the rule set does not).")
        return
    cells = st.columns(4)
    cells[0].metric("CoTs with verdicts from both", f"{first_error['cots']:,}")
    cells[1].metric("Same first wrong step", f"{first_error['exact']:.1%}")
    cells[2].metric("Within one step", f"{first_error['within_1']:.1%}")
    cells[3].metric("Only A / only B finds one", f"{first_error['only_a']:,} / {first_error['only_b']:,}")
