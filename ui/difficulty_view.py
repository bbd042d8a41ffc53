"""Difficulty, students and efficiency on the pages: the Distributions page's "Efficiency by model"
section, the Select page's difficulty and student presets, and how many problems a student fails.
Widgets and rendering only; the figures come from core.difficulty and core.efficiency.
"""

from __future__ import annotations

import polars as pl
import streamlit as st

from core import difficulty, efficiency, queries
from core.figures import Condition, Figure
from core.queries import CotFilter
from ui import common, frames

PERCENT = st.column_config.NumberColumn(format="percent")


# ---------------------------------------------------------------------------------- cached reads


def _efficiency(f: CotFilter) -> tuple[pl.DataFrame, pl.DataFrame]:
    """model_efficiency and accuracy_by_length of ``f``, computed on its frame already in memory
    (ui.frames) with the stage's tails read once per store write: no read of the store per filter."""
    tails = frames.per_store("efficiency_tails", efficiency.tails)
    return frames.derived("efficiency", f, lambda d: (efficiency.efficiency_of(d, tails), efficiency.length_bins_of(d)))


@st.cache_data(ttl=600, show_spinner=False, max_entries=16)
def _stage_sources(stamp, stage: str) -> list[dict]:
    del stamp
    return difficulty.stage_sources(stage)


@st.cache_data(ttl=600, show_spinner=False, max_entries=16)
def _student_report(stamp, source: str, rare: float) -> pl.DataFrame:
    del stamp
    return difficulty.student_report(source, rare=rare)


# ---------------------------------------------------------------------------------- Distributions


def _narrow(key: str) -> None:
    """on_select: a bar narrows the filter to its model, a length point to its model and bin."""
    event = st.session_state.get(key)
    points = event.selection.points if event is not None else []
    if not points:
        return
    data = points[0].get("customdata")
    data = data if isinstance(data, list) else [data]
    st.session_state.eff_selection_gen = st.session_state.get("eff_selection_gen", 0) + 1
    changes = {}
    if data and data[0]:
        changes["models"] = [data[0]]
    if len(data) >= 3 and data[1] is not None:
        hi = int(data[2]) - 1 if data[2] is not None and int(data[2]) > 0 else common.catalogue(common.store_stamp())["max_tokens"]
        changes["tokens_range"] = (int(data[1]), max(int(data[1]), hi))
    if changes:
        common.narrow_filter(**changes)


def _chart(fig, name: str) -> None:
    key = f"eff_{name}_{st.session_state.get('eff_selection_gen', 0)}"
    st.plotly_chart(fig, key=key, on_select=lambda: _narrow(key), selection_mode=("points",), width="stretch")


def distributions_section(f: CotFilter) -> None:
    """Models side by side: accuracy per 1,000 tokens, tokens per correct answer, median
    overthinking tail and accuracy against CoT length; a click narrows the filter."""
    st.subheader("Efficiency by model")
    if not f.correct_source:
        st.info("Choose a correctness source in the sidebar to compare models' efficiency.")
        return
    eff, bins = _efficiency(f)
    judged = int(eff["judged"].sum() or 0)
    if not judged:
        st.info(f"None of the matching CoTs has both a verdict from {queries.correctness_label(f.correct_source)} and a "
                "token count, so there is no efficiency to compare.")
        return
    st.caption("Over the matching CoTs with a verdict and a token count. Accuracy per 1,000 tokens = 1,000 × correct "
               "CoTs / their tokens; tokens per correct answer = tokens / correct CoTs; the overthinking tail is what a "
               "CoT spends after the answer first appears in its thinking (`python -m core efficiency`). Click a bar "
               "or a point to narrow the filter to that model (and length).")
    left, right = st.columns(2)
    with left:
        _chart(efficiency.efficiency_bar_figure(eff, "acc_per_1k_tokens", n_cots=judged), "acc_per_1k")
    with right:
        _chart(efficiency.efficiency_bar_figure(eff, "tokens_per_correct", n_cots=judged), "tokens_per_correct")
    with_tail = int(eff["with_tail"].sum() or 0)
    if with_tail:
        _chart(efficiency.efficiency_bar_figure(eff, "median_overthinking_tail", n_cots=with_tail), "tail")
    else:
        st.caption("No matching CoT has an overthinking tail yet: run `python -m core efficiency` (or the efficiency job) "
                   "to find where each CoT's answer first appears.")
    _chart(efficiency.accuracy_length_figure(bins, n_cots=judged), "length")
    with st.expander("Efficiency table"):
        st.dataframe(eff, hide_index=True, key="eff_table", column_config={"accuracy": PERCENT})
        st.dataframe(bins, hide_index=True, key="eff_bins", column_config={"accuracy": PERCENT})


# ---------------------------------------------------------------------------------- Select


def _add_conditions(prefix: str, conditions: tuple[Condition, ...], rows: dict) -> None:
    """Append conditions to a condition_widgets(prefix) list, as its figure picker does."""
    ident = st.session_state.get(f"{prefix}cond_next", 0)
    entries = list(st.session_state.get(f"{prefix}conds", []))
    for cond in conditions:
        entries.append({"id": ident, **cond.figure.as_dict()})
        st.session_state.update(common._condition_state(prefix, ident, cond, rows))
        ident += 1
    st.session_state[f"{prefix}conds"] = entries
    st.session_state[f"{prefix}cond_next"] = ident


def _apply_preset(prefix: str, rows: dict, presets: dict[str, tuple[Condition, ...]]) -> None:
    chosen = st.session_state.get(f"{prefix}difficulty_preset")
    if chosen in presets:
        _add_conditions(prefix, presets[chosen], rows)
    st.session_state[f"{prefix}difficulty_preset"] = None


def presets(stamp) -> dict[str, tuple[Condition, ...]]:
    """The named difficulty bands of every difficulty source and the failure / rare conditions
    of every student source, by the label the picker shows."""
    out: dict[str, tuple[Condition, ...]] = {}
    for source in _stage_sources(stamp, difficulty.STAGE):
        for band, (label, _) in difficulty.BANDS.items():
            out[f"{label} · {source['name']}"] = difficulty.band_conditions(band, source["name"])
    for source in _stage_sources(stamp, difficulty.STUDENT_STAGE):
        name = source["name"]
        out[f"the student fails (no correct sample) · {name}"] = (
            Condition(Figure("failed", name, level="problem"), lo=1),)
        out[f"the student solves rarely (pass rate ≤ 0.25) · {name}"] = (
            Condition(Figure("pass_rate", name, level="problem"), hi=0.25),)
    return out


def select_presets(where, rows: dict, prefix: str = "sel_") -> None:
    """A picker that adds a named band's conditions (LIMO's 1-3 of 32, unsolved by every model,
    a student's failures, ...) to the Select page's conditions."""
    stamp = common.store_stamp()
    options = presets(stamp)
    if not options:
        return
    where.selectbox("Add a difficulty band or a student's failures", list(options), index=None,
                    key=f"{prefix}difficulty_preset", placeholder="solved 1–3 of 32, unsolved by every model, …",
                    on_change=_apply_preset, args=(prefix, rows, options),
                    help="Adds the band's conditions on the difficulty stage's figures (per problem: c correct of n "
                         "samples, pass rate, solved or unsolved by every model), or on a student's pass rates, to the "
                         "list above, where they can be changed.")


def student_counts(conditions: tuple[Condition, ...]) -> None:
    """For each student source the conditions read: how many problems of each dataset the
    student fails or solves rarely (core.difficulty.student_report)."""
    stamp = common.store_stamp()
    students = {s["name"]: s["params"] for s in _stage_sources(stamp, difficulty.STUDENT_STAGE)}
    used = list(dict.fromkeys(c.figure.source for c in conditions if c.figure.source in students))
    for name in used:
        rare = next((c.hi for c in conditions if c.figure.source == name and c.figure.metric == "pass_rate"
                     and c.hi is not None and c.hi > 0), 0.25)
        report = _student_report(stamp, name, float(rare))
        params = students[name]
        st.caption(f"**{name}**: {params.get('model')} evaluated on {params.get('problems_evaluated', 0):,} problems of "
                   f"'{params.get('evaluation')}' ({params.get('samples', 0):,} answers). Per dataset: problems it fails "
                   f"(no correct answer) and solves rarely (pass rate above 0 and at most {rare:g}), and their CoTs.")
        st.dataframe(report, hide_index=True, key=f"sel_student_{name}")
