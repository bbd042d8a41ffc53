"""Select: decide which of the CoTs the sidebar filter matches to keep for training.

The sidebar filter is the pool; conditions on any figure (a judge's logic, a stage's pass
rate, ...) drop CoTs inside it, each under its own reason; then a mode decides kept against
dropped among the rest (thresholds, capacity-matched sampling after OmniThought in this
project's reconstruction, EasyDistill's RV/CD mixer, a per-problem rule, or a target size with
the pool's model mix). Controls and charts for a metric the pool
has no value of are not shown, and a selection that keeps nothing says why. Counts, shares and histograms are computed on every CoT of the pool; the pool's
numbers are read once per filter into memory (core.selection.LoadedPool). A threshold slider's
report comes from the pool's index without deciding every CoT; the other modes rerun their
decision in memory. A selection can be saved as a named recipe, loaded back, compared with another, and
exported on the Export page.
"""

from __future__ import annotations

import json
import math

import polars as pl
import streamlit as st

from core import contamination, ids, labels, recipes, render, selection, tokens
from core.errors import UserError
from core.figures import Figure
from core.selection import (
    CapacityMatched, PerCluster, PerProblem, RvCdMix, Score, ScoreSources, Selection, TargetSize, Thresholds,
)
from ui import common, difficulty_view, frames, problems

MODES = {
    "thresholds": "Thresholds",
    "capacity": "Capacity-matched (our reconstruction of OmniThought's)",
    "rvcd_mix": "RV/CD mix (EasyDistill)",
    "per_problem": "Per problem",
    "target": "Target size",
    "per_cluster": "Across clusters",
}
CLUSTER_UNIT_LABELS = {"problems": "problems", "cots": "CoTs"}
CLUSTER_SPREAD_LABELS = {"cap": "at most m per cluster", "proportional": "n in proportion",
                         "uniform": "n spread evenly"}
CLUSTER_PICK_LABELS = {"most_cots": "most CoTs", "score": "best by a figure", "random": "random (seed)"}
PER_PROBLEM_LABELS = {"shortest_correct": "shortest correct", "top_k": "top k by a score", "all_correct": "all correct"}
BALANCE_LABELS = {"model": "model", "dataset": "dataset", "model_dataset": "model and dataset"}
WITHIN_LABELS = {"shortest_correct": "shortest correct", "score": "best by a score"}
PRESETS = {"7B": "7B student (C = 5)", "32B": "32B student (C = 7)", "custom": "custom"}
WEIGHTS_LABELS = {"relative": "relative within a problem (k per problem)",
                  "absolute": "absolute per CoT (a problem far above C can give none)"}
MIX_TARGETS = {"matched": "matched (rises with the CD bin)", "low": "low (2)", "medium": "medium (5)", "high": "high (8)",
               "number": "a number"}
PAGE_SIZES = (25, 50, 100)
PERCENT = st.column_config.NumberColumn(format="percent")


# ---------------------------------------------------------------------------- cached core calls


def labels_stamp(stamp: tuple, sel: Selection) -> tuple:
    """The cache stamp for a selection: it changes with every new label when the selection
    reads people's labels (core/labels.py), else it is the store's."""
    if labels.uses_labels(sel):
        common.labels_in_view()
        return common.store_stamp()
    return stamp


def cached_pool(pool_key: str, db: str, stamp: tuple[float, float], _sel: Selection) -> selection.LoadedPool:
    """The pool in memory (LoadedPool), shared by every rerun and session with the same filter;
    kept in the byte-bounded cache with the Distributions frames (ui.frames.cached)."""
    whole = selection.whole_store_selection(_sel)
    # every CoT's pool numbers, read once and kept until what they read changes (ui.frames.versioned);
    # a new filter's pool is cut from them with the filter's mask, itself computed in memory
    # (with its index: a filter's index is cut from it too)
    whole_pool = frames.versioned(
        "whole_pool", selection.pool_key(whole), db, stamp, lambda: selection.score_source_names(whole),
        lambda: selection.load_pool(whole, rows=selection.pool_rows(whole, ordered=True)),
        spinner="Reading every CoT's pool numbers…")

    def load() -> selection.LoadedPool:
        ids, matches = frames.filter_mask(_sel.base)
        return selection.cut_pool(whole_pool, _sel, ids, matches) or selection.load_pool(_sel)

    return frames.cached("pool", pool_key, db, stamp, load, spinner="Cutting the pool…")


def cached_decision(selection_key: str, db: str, stamp: tuple[float, float], _sel: Selection, _pool):
    """The decision on every pool CoT (~180 MB at 2M CoTs), in the byte-bounded cache with the
    pools and frames: a count bound let four of them hold 0.7 GB beside it."""
    return frames.cached("decision", selection_key, db, stamp, lambda: selection.decide(_sel, pool=_pool),
                         spinner="Applying the selection…")


@st.cache_data(ttl=600, max_entries=32, show_spinner=False)
def cached_report(selection_key: str, db: str, stamp: tuple[float, float], _sel: Selection, _pool, _decision):
    """From the decision when there is one, else (Thresholds) from the pool's index."""
    del selection_key, db, stamp
    if _decision is None:
        return selection.evaluate(_sel, pool=_pool)
    return selection.summarize(_decision, _sel)


@st.cache_data(ttl=600, max_entries=64, show_spinner=False)
def cached_dropped(selection_key: str, db: str, stamp, sort_by: str, descending: bool, offset: int, limit: int,
                   _sel: Selection, _pool, _decision) -> pl.DataFrame:
    del selection_key, db, stamp
    page = selection.dropped_page(_decision, sel=_sel, pool=_pool, offset=offset, limit=limit, sort_by=sort_by,
                                  descending=descending)
    # each row's readable id first (what the Reader and Explore's "Open a CoT by id" take)
    readable = ids.cot_ids_frame(page["cot_id"].to_list()).select("cot_id", pl.col("readable_id").alias("id"))
    page = page.join(readable, on="cot_id", how="left", maintain_order="left")
    return page.select("id", pl.exclude("id"))


@st.cache_data(ttl=600, max_entries=8, show_spinner="Comparing the two recipes…")
def cached_compare(key: str, db: str, stamp, _a: recipes.Recipe, _b: recipes.Recipe) -> pl.DataFrame:
    del key, db, stamp
    return recipes.compare(_a, _b)


@st.cache_data(ttl=600, max_entries=16, show_spinner=False)
def cached_tokenizers(filter_key: str, db: str, stamp, _base) -> dict:
    """Which tokenizers the pool's token counts come from (as core.queries.tokenizers, from the
    filter's mask in memory: ui.frames.tokenizers)."""
    del filter_key, db, stamp
    return frames.tokenizers(_base)


def score_choices(stamp: tuple[float, float]) -> dict[str, Figure]:
    """What a rule can rank by: any figure of the store (per-CoT columns, every (source,
    metric) of scores and of problem_scores), by its label."""
    return {row["label"]: figure for figure, row in common.catalogue_rows(stamp).items()}


# ---------------------------------------------------------------------------- widget state


def _defaults(cat: dict, max_tokens: int) -> dict:
    return {
        "sel_mode": "thresholds",
        # every source but people's labels, which a selection reads only when asked to
        **{f"sel_{m}_sources": [s for s in cat[m] if not labels.is_human_source(s)] for m in ("rv", "cd", "correct")},
        "sel_rv_range": (0, 9), "sel_cd_range": (0, 9), "sel_tokens_range": (0, max_tokens), "sel_thr_correct": False,
        "sel_cap_preset": "7B", "sel_cap_c": 5.0, "sel_cap_lambda": 1.0, "sel_cap_beta": 0.5, "sel_cap_k": 1,
        "sel_cap_correct": False, "sel_cap_weights": "relative", "sel_seed": 0,
        "sel_mix_bins": "0, 3, 6, 10", "sel_mix_target": "matched", "sel_mix_target_value": 5.0, "sel_mix_n": 0,
        "sel_mix_logic": "(correctness sources)", "sel_mix_min": 1.0,
        "sel_pp_rule": "shortest_correct", "sel_pp_k": 1, "sel_pp_correct": False,
        "sel_score": "tokens", "sel_score_order": "highest first",
        "sel_tg_n": 1000, "sel_tg_balance": "model", "sel_tg_within": "shortest_correct", "sel_tg_correct": True,
        "sel_cl_unit": "problems", "sel_cl_spread": "cap", "sel_cl_m": 1, "sel_cl_n": 1000, "sel_cl_pick": "most_cots",
    }


def _state_of(recipe: recipes.Recipe, max_tokens: int, choices: dict, rows: dict) -> dict:
    """Widget values that show ``recipe`` (its base filter goes to the sidebar separately)."""
    sel, rule = recipe.selection, recipe.selection.rule
    control, others = contamination.split_conditions(sel.conditions, with_only=False)  # the drop control's own
    state = {
        "sel_mode": rule.mode, "sel_seed": sel.seed, "sel_draw": sel.draw,
        "sel_rv_sources": list(sel.sources.rv), "sel_cd_sources": list(sel.sources.cd),
        "sel_correct_sources": list(sel.sources.correct),
        **problems.contamination_state("sel_", control),
        **common.conditions_state("sel_", others, rows),
    }
    if isinstance(rule, Thresholds):
        state.update(
            **common.range_state("sel_rv_range", tuple(int(v) for v in rule.rv_range or (0, 9))),
            **common.range_state("sel_cd_range", tuple(int(v) for v in rule.cd_range or (0, 9))),
            **common.range_state("sel_tokens_range", tuple(rule.tokens_range or (0, max_tokens))),
            sel_thr_correct=rule.require_correct,
        )
    elif isinstance(rule, CapacityMatched):
        preset = next((k for k, c in selection.CAPACITY_PRESETS.items() if c == rule.capacity and rule.beta == 0.5), "custom")
        state.update(sel_cap_preset=preset, sel_cap_c=rule.capacity, sel_cap_lambda=rule.lam, sel_cap_beta=rule.beta,
                     sel_cap_k=rule.k, sel_cap_correct=rule.require_correct, sel_cap_weights=rule.weights)
    elif isinstance(rule, RvCdMix):
        numeric = isinstance(rule.rv_target, float)
        state.update(sel_mix_bins=", ".join(f"{e:g}" for e in rule.cd_bins),
                     sel_mix_target="number" if numeric else rule.rv_target,
                     sel_mix_target_value=rule.rv_target if numeric else 5.0, sel_mix_n=rule.samples_per_bin or 0,
                     sel_mix_min=rule.min_correctness)
        if rule.score is not None:
            label = next((k for k, v in choices.items() if v == rule.score.figure), None)
            if label is None:
                raise ValueError(f"the recipe reads logical correctness from {rule.score.label()}, which this store "
                                 "does not have")
            state["sel_mix_logic"] = label
    elif isinstance(rule, PerProblem):
        state.update(sel_pp_rule=rule.rule, sel_pp_k=rule.k, sel_pp_correct=rule.require_correct)
    elif isinstance(rule, TargetSize):
        state.update(sel_tg_n=rule.n, sel_tg_balance=rule.balance, sel_tg_within=rule.within,
                     sel_tg_correct=rule.require_correct)
    elif isinstance(rule, PerCluster):
        label = next((k for k, v in choices.items() if v == rule.cluster), None)
        if label is None:
            raise ValueError(f"the recipe groups by {rule.cluster.label()}, which this store does not have")
        state.update(sel_cl_figure=label, sel_cl_unit=rule.unit, sel_cl_spread=rule.spread, sel_cl_m=rule.m,
                     sel_cl_n=rule.n, sel_cl_pick=rule.pick)
    score = getattr(rule, "score", None)
    if score is not None and not isinstance(rule, RvCdMix):
        label = next((k for k, v in choices.items() if v == score.figure), None)
        if label is None:
            raise ValueError(f"the recipe ranks by {score.label()}, which this store does not have")
        state.update(sel_score=label, sel_score_order="highest first" if score.higher_is_better else "lowest first")
    return state


def _load_recipe(name: str, max_tokens: int, choices: dict, rows: dict) -> None:
    """on_click: show a saved recipe; runs before the page, so widget values can still change."""
    try:
        recipe = recipes.load(name)
        state = _state_of(recipe, max_tokens, choices, rows)
    except ValueError as exc:
        st.session_state.sel_flash = ("error", f"Could not load '{name}': {exc}")
        return
    st.session_state.update(state)
    common.set_filter(recipe.selection.base)
    st.session_state.current_recipe_name = recipe.name
    st.session_state.sel_flash = ("success", f"Loaded recipe '{recipe.name}'.")


def _apply_preset() -> None:
    preset = st.session_state.sel_cap_preset
    if preset in selection.CAPACITY_PRESETS:
        st.session_state.sel_cap_c = selection.CAPACITY_PRESETS[preset]
        st.session_state.sel_cap_beta = 0.5


def _full(value: tuple, full: tuple):
    """A slider at its full extent is no constraint."""
    return None if tuple(value) == tuple(full) else tuple(value)


def _score_widgets(choices: dict, where) -> Score:
    left, right = where.columns([3, 2])
    label = left.selectbox("Score", list(choices), key="sel_score",
                           help="Any figure: a CoT column, a judge's or a stage's per-CoT score, or a per-problem "
                                "figure (every CoT of a problem ranks by its problem's value).")
    order = right.radio("Keep", ["highest first", "lowest first"], horizontal=True, key="sel_score_order")
    figure = choices[label]
    return Score(figure.metric, figure.source, higher_is_better=order == "highest first", level=figure.level)


def _mix_widgets(where, choices: dict) -> RvCdMix:
    """The RV/CD mixer's controls; the rule they describe."""
    where.caption(
        "EasyDistill 2.0's RV/CD mixer (its `CoTRVCDMixer`, reimplemented here from its code): the logically correct "
        "CoTs are binned by CD; each bin has an RV target, and the CoTs closest to it are kept, at most N per bin "
        "(over the whole pool, not per problem). Ties go to the seeded per-CoT draw.")
    c1, c2, c3, c4 = where.columns([2, 2, 1, 1])
    text = c1.text_input("CD bin edges", key="sel_mix_bins", help="Increasing CD values; EasyDistill's default is "
                         "0, 3, 6, 10 (bins [0, 3), [3, 6), [6, 10]). A CoT with a CD outside them is dropped.")
    try:
        edges = tuple(float(v) for v in text.replace(";", ",").split(",") if v.strip())
    except ValueError:
        raise UserError(f"CD bin edges are numbers separated by commas, e.g. 0, 3, 6, 10; not {text!r}") from None
    target = c2.selectbox("RV target", list(MIX_TARGETS), format_func=MIX_TARGETS.get, key="sel_mix_target")
    value = c3.number_input("RV target value", 0.0, 9.0, step=0.5, key="sel_mix_target_value",
                            disabled=target != "number")
    n = c4.number_input("Per bin (0 = all)", 0, 100_000_000, step=100, key="sel_mix_n")
    c5, c6, c7 = where.columns([3, 1, 1])
    logic_choices = ["(correctness sources)", *choices]
    logic = c5.selectbox("Logical correctness from", logic_choices, key="sel_mix_logic",
                         help="EasyDistill keeps CoTs whose judge gave logical_correctness ≥ the minimum: choose the "
                              "judge's logic figure; '(correctness sources)' uses the verdicts under 'Score sources'.")
    minimum = c6.number_input("at least", -1e9, 1e9, step=1.0, key="sel_mix_min", disabled=logic == logic_choices[0])
    c7.number_input("Seed", 0, 2**31 - 1, step=1, key="sel_seed", help="Breaks ties in |RV − target|.")
    score = None
    if logic != logic_choices[0]:
        figure = choices[logic]
        score = Score(figure.metric, figure.source, level=figure.level)
    rule = RvCdMix(cd_bins=edges, rv_target=value if target == "number" else target, samples_per_bin=int(n) or None,
                   score=score, min_correctness=minimum if score is not None else 1.0)
    where.caption("RV target per CD bin: " + "; ".join(f"{rule.bin_label(b)} → {rule.target(b):g}"
                                                       for b in range(rule.n_bins)))
    return rule


def _slider_with_histogram(slot, label: str, key: str, lo: int, hi: int):
    """A range slider with typed bounds and an empty container above it, for its histogram once
    counts are known."""
    with slot:
        chart = st.container()
        value = common.range_input(st, label, key, lo, hi)
    return chart, value


def _cluster_widgets(controls, choices: dict) -> PerCluster:
    """The 'Across clusters' mode: group by any problem figure naming a cluster (near-duplicate
    cluster_id, a map's cluster), at most m per cluster or n spread over them."""
    clusters = {label: f for label, f in choices.items() if f.level == "problem"}
    if not clusters:
        controls.info("No per-problem figure to group by: run the near-duplicate check (Overview) or build a map "
                      "(Map page), whose clusters then appear here.")
        st.stop()
    if st.session_state.get("sel_cl_figure") not in clusters:
        preferred = [k for k, f in clusters.items() if (f.metric, f.source) == ("cluster_id", "near-duplicates")]
        preferred += [k for k, f in clusters.items() if f.metric == "cluster"]
        st.session_state.sel_cl_figure = (preferred or list(clusters))[0]
    c1, c2, c3, c4 = controls.columns([3, 2, 3, 1])
    label = c1.selectbox("Clusters from", list(clusters), key="sel_cl_figure",
                         help="A per-problem figure whose value names a cluster: the near-duplicate stage's "
                              "cluster_id, a map's cluster. A problem without a value is a cluster of its own.")
    unit = c2.radio("Count", list(CLUSTER_UNIT_LABELS), format_func=CLUSTER_UNIT_LABELS.get, horizontal=True,
                    key="sel_cl_unit")
    spread = c3.radio("Keep", list(CLUSTER_SPREAD_LABELS), format_func=CLUSTER_SPREAD_LABELS.get, horizontal=True,
                      key="sel_cl_spread")
    if spread == "cap":
        m, n = int(c4.number_input("m", 1, 1_000_000, step=1, key="sel_cl_m")), int(st.session_state.sel_cl_n)
    else:
        m, n = int(st.session_state.sel_cl_m), int(c4.number_input("n", 0, 100_000_000, step=100, key="sel_cl_n"))
    pick = controls.radio("Within a cluster, keep those with", list(CLUSTER_PICK_LABELS),
                          format_func=CLUSTER_PICK_LABELS.get, horizontal=True, key="sel_cl_pick")
    score = None
    if pick == "score":
        score = _score_widgets(choices, controls)
    elif pick == "random":
        controls.number_input("Seed", 0, 2**31 - 1, step=1, key="sel_seed")
    figure = clusters[label]
    controls.caption("One problem per near-duplicate cluster: near-duplicates' cluster_id, count problems, at most 1. "
                     "A kept problem keeps every CoT that passed the conditions. Counting CoTs, they rank by the "
                     "choice below (a per-problem figure ranks all CoTs of a problem alike; 'most CoTs' prefers the "
                     "CoTs of the problems with the most).")
    return PerCluster(figure.metric, figure.source, unit=unit, spread=spread, m=m, n=n, pick=pick, score=score)


# ---------------------------------------------------------------------------- the page

st.title("Select")
with common.guard():
    base = common.sidebar_filter()
    stamp = common.store_stamp()
    db = str(common.db_file())
    cat = common.catalogue(stamp)
    rows = common.catalogue_rows(stamp)
    max_tokens = max(cat["max_tokens"], 1)
    choices = score_choices(stamp)
    defaults = _defaults(cat, max_tokens)
    current = st.session_state.get("current_selection")
    if "sel_mode" not in st.session_state and current is not None:
        # back from another page, which dropped this page's widget values: show the selection again
        try:
            st.session_state.update(_state_of(recipes.Recipe("current", current), max_tokens, choices, rows))
        except ValueError:
            pass  # its score is gone from the store: start from the defaults
    for key, value in defaults.items():
        # re-assigned each run, so a mode's settings survive while another mode is shown
        st.session_state[key] = st.session_state.get(key, value)
    # values the store no longer offers (a source or score gone, fewer tokens) are put back in range
    for key, metric in (("sel_rv_sources", "rv"), ("sel_cd_sources", "cd"), ("sel_correct_sources", "correct")):
        st.session_state[key] = [s for s in st.session_state[key] if s in cat[metric]]
    if st.session_state.sel_score not in choices:
        st.session_state.sel_score = "tokens"
    if "sel_flash" in st.session_state:
        kind, message = st.session_state.pop("sel_flash")
        getattr(st, kind)(message)

    if not cat["datasets"]:
        st.info("The store is empty: ingest a dataset on the Overview page (or `python -m core ingest PATH`).")
        st.stop()

    with st.expander("Score sources the selection reads", expanded=False):
        st.caption("Where several sources are listed, a CoT takes the value of the first one that scored it "
                   "(OmniThought's labels give each CoT's RV and CD under the judge that scored it; correctness "
                   "lists each dataset's own labels first, then math-verify).")
        c1, c2, c3 = st.columns(3)
        rv_sources = c1.multiselect("RV", cat["rv"], key="sel_rv_sources")
        cd_sources = c2.multiselect("CD", cat["cd"], key="sel_cd_sources")
        correct_sources = c3.multiselect("Correctness", cat["correct"], key="sel_correct_sources")
    sources = ScoreSources(tuple(rv_sources), tuple(cd_sources), tuple(correct_sources))

    # dropping contaminated problems is a preset of conditions (one per benchmark), applied with the others
    contaminated = problems.contamination_widgets(st, "sel_", modes=("all", "drop"), title="Drop contaminated problems")
    n_conditions = len(st.session_state.get("sel_conds", []))
    with st.expander(f"Conditions on figures ({n_conditions})" if n_conditions else "Conditions on figures",
                     expanded=bool(n_conditions)):
        st.caption("Applied first, inside the pool: a CoT that fails a condition is dropped with that condition as "
                   "its reason ('Why dropped' below); the mode then decides among the CoTs that pass them all. "
                   "E.g. a judge's logic ≥ 1 for EasyDistill's ThoughtX recipe.")
        conditions = (*contaminated, *common.condition_widgets(st, rows, "sel_"))
        difficulty_view.select_presets(st, rows, "sel_")  # difficulty bands, a student's failures
    stamp = labels_stamp(stamp, Selection(base=base, sources=sources, conditions=conditions))

    pool_tokenizers = cached_tokenizers(repr(base), db, stamp, base)
    unit = tokens.token_unit(pool_tokenizers)
    if tokens.mixed_tokenizers_note(pool_tokenizers):
        st.warning(tokens.mixed_tokenizers_note(pool_tokenizers) + " A token range or the shortest CoT compares "
                   "counts across them; narrow the filter to one tokenizer's datasets or models first.")

    mode = st.radio("Mode", list(MODES), format_func=MODES.get, horizontal=True, key="sel_mode")
    # the modes that rank by no score read the pool first, so they show only the controls for
    # metrics the pool has values of (the pool does not depend on their settings)
    known = None
    if mode in ("thresholds", "capacity"):
        unranked = Selection(base=base, sources=sources, conditions=conditions)
        known = cached_pool(selection.pool_key(unranked), db, stamp, unranked).known
    controls = st.container()
    histogram_slots: dict[str, object] = {}
    cut: dict[str, tuple | None] = {}
    mark: dict[str, float] = {}
    if mode == "thresholds":
        controls.caption("Keep the CoTs inside every range (bounds included); a range left at its full extent is no "
                         "constraint. EasyDistill's ThoughtX recipe keeps CoTs its judge found logically correct "
                         "(logic = 1, a condition on the judge's logic above), with RV 3–5 and one CD level.")
        shown = [c for c in ("rv", "cd", "n_tokens") if known[c]]
        slots = dict(zip(shown, controls.columns(len(shown)))) if shown else {}
        rv = cd = (0, 9)
        tok = (0, max_tokens)
        if "rv" in slots:
            histogram_slots["rv"], rv = _slider_with_histogram(slots["rv"], "Reasoning Verbosity", "sel_rv_range", 0, 9)
        if "cd" in slots:
            histogram_slots["cd"], cd = _slider_with_histogram(slots["cd"], "Cognitive Difficulty", "sel_cd_range", 0, 9)
        if "n_tokens" in slots:
            histogram_slots["n_tokens"], tok = _slider_with_histogram(slots["n_tokens"], unit[0].upper() + unit[1:],
                                                                      "sel_tokens_range", 0, max_tokens)
        missing = [name for name, column in (("RV", "rv"), ("CD", "cd"), ("token counts", "n_tokens")) if not known[column]]
        if missing:
            controls.caption(f"No CoT of the pool has {' or '.join(missing)} from the chosen sources, so "
                             f"{'that range is' if len(missing) == 1 else 'those ranges are'} not offered.")
        require = False
        if known["correct"]:
            require = controls.checkbox("Require correct (by the correctness sources above)", key="sel_thr_correct")
        else:
            controls.caption("No CoT of the pool has a verdict from the chosen correctness sources.")
        rv_range, cd_range, tok_range = _full(rv, (0, 9)), _full(cd, (0, 9)), _full(tok, (0, max_tokens))
        rule = Thresholds(rv_range=rv_range, cd_range=cd_range, tokens_range=tok_range, require_correct=require)
        cut = {"rv": rv_range, "cd": cd_range, "n_tokens": tok_range}
        if (rv_range and not rv_sources) or (cd_range and not cd_sources) or (require and not correct_sources):
            st.warning("A range or the correctness check is set but no source for it is chosen under "
                       "'Score sources', so every CoT fails it.")
    elif mode == "capacity":
        weights = st.session_state.sel_cap_weights
        controls.latex(selection.CAPACITY_FORMULA_ABSOLUTE if weights == "absolute" else selection.CAPACITY_FORMULA)
        controls.caption(
            "**This formula is this project's reconstruction, not the paper's.** The OmniThought paper says that CoTs "
            "with CD at or below the student's capacity are equally likely, that the chance falls as CD exceeds it, "
            "and that an RV/CD mismatch is penalised (β); its own formula is not reproduced in any source we have, "
            "so the exponential form and λ are ours. Its presets are the CD centre the paper found best for each "
            "student, used here as the capacity C.")
        c1, c2, c3, c4, c5 = controls.columns([2, 1, 1, 1, 1])
        c1.selectbox("Student", list(PRESETS), format_func=PRESETS.get, key="sel_cap_preset", on_change=_apply_preset,
                     help="The CD centre that trained each student best in the paper (5 for Qwen2.5-7B-Instruct, 7 for "
                          "Qwen2.5-32B-Instruct, with beta = 0.5), used here as the capacity C: that use is ours.")
        capacity = c2.number_input("C (capacity)", 0.0, 9.0, step=0.5, key="sel_cap_c",
                                   disabled=st.session_state.sel_cap_preset != "custom")
        lam = c3.number_input("λ (CD above C)", 0.0, 20.0, step=0.1, key="sel_cap_lambda")
        beta = c4.number_input("β (|CD − RV|)", 0.0, 20.0, step=0.1, key="sel_cap_beta",
                               disabled=st.session_state.sel_cap_preset != "custom")
        k = c5.number_input("k per problem", 1, 50, step=1, key="sel_cap_k")
        c6, c7, c8 = controls.columns([1, 2, 2])
        c6.number_input("Seed", 0, 2**31 - 1, step=1, key="sel_seed",
                        help="The same seed keeps the same CoTs, in this store and in any other that ingested the same "
                             "files (each CoT's draw is keyed on its content); another seed draws another subset.")
        c7.radio("Weights", list(WEIGHTS_LABELS), format_func=WEIGHTS_LABELS.get, key="sel_cap_weights",
                 help="Relative: w only compares a problem's CoTs, and each problem gives k of them. Absolute: w is "
                      "each CoT's own chance to be accepted; at most k accepted CoTs per problem are kept.")
        require = c8.checkbox("Only verified-correct CoTs are candidates", key="sel_cap_correct")
        rule = CapacityMatched(capacity=capacity, lam=lam, beta=beta, k=int(k), require_correct=require, weights=weights)
        example = selection.capacity_weight(capacity + 2, capacity + 1, capacity=capacity, lam=lam, beta=beta)
        how = (f"Per problem, {int(k)} CoT(s) drawn without replacement with probability proportional to w: weights "
               "are relative within the problem, so a problem gives its CoTs even when all lie far above C"
               if weights == "relative" else
               f"Each CoT accepted with probability w on its own (u < w), then at most {int(k)} accepted CoT(s) kept "
               "per problem, so a problem whose CoTs all lie far above C can give none")
        controls.caption(
            f"{how} (u uniform per seed and CoT). E.g. a CoT with CD = {capacity + 2:g} and RV = {capacity + 1:g} "
            f"weighs exp(−{lam:g}·2 − {beta:g}·1) = {example:.3f}; one with CD ≤ C and RV = CD weighs 1. "
            "CoTs without RV or CD are never drawn."
        )
        mark = {"cd": capacity}
        if not (known["rv"] and known["cd"]):
            lacking = " and ".join(m for m, c in (("RV", "rv"), ("CD", "cd")) if not known[c])
            controls.warning(
                f"Capacity-matched sampling draws among CoTs with both RV and CD, and no CoT of this pool has {lacking} "
                f"from the chosen sources (RV: {', '.join(rv_sources) or 'none'}; CD: {', '.join(cd_sources) or 'none'}), "
                "so it keeps nothing. Choose RV/CD sources under 'Score sources', score the CoTs with a judge on the "
                "Jobs page, or use another mode.")
    elif mode == "rvcd_mix":
        rule = _mix_widgets(controls, choices)
    elif mode == "per_problem":
        c1, c2 = controls.columns([3, 1])
        pp_rule = c1.radio("Keep per problem", list(PER_PROBLEM_LABELS), format_func=PER_PROBLEM_LABELS.get,
                           horizontal=True, key="sel_pp_rule")
        k = c2.number_input("k", 1, 50, step=1, key="sel_pp_k", disabled=pp_rule == "all_correct")
        score = None
        require = False
        if pp_rule == "top_k":
            score = _score_widgets(choices, controls)
            require = controls.checkbox("Only among verified-correct CoTs", key="sel_pp_correct")
        rule = PerProblem(rule=pp_rule, k=int(k), score=score, require_correct=require)
    elif mode == "target":
        c1, c2, c3 = controls.columns([1, 2, 2])
        n = c1.number_input("Target CoTs", 0, 100_000_000, step=100, key="sel_tg_n")
        balance = c2.radio("Keep the mix of", list(BALANCE_LABELS), format_func=BALANCE_LABELS.get, horizontal=True,
                           key="sel_tg_balance")
        within = c3.radio("Within each, keep the", list(WITHIN_LABELS), format_func=WITHIN_LABELS.get,
                          horizontal=True, key="sel_tg_within")
        score, require = None, True
        if within == "score":
            score = _score_widgets(choices, controls)
            require = controls.checkbox("Only verified-correct CoTs", key="sel_tg_correct")
        rule = TargetSize(n=int(n), balance=balance, within=within, score=score, require_correct=require)
    else:
        rule = _cluster_widgets(controls, choices)

    draw = st.session_state.get("sel_draw", "content")
    if draw == "cot_id" and isinstance(rule, selection.DRAWING_RULES):
        controls.caption("This recipe was saved before draws were keyed on each CoT's content: it still draws on "
                         "the store's cot_ids, so it keeps the CoTs it kept then, in this store only.")
    sel = Selection(base=base, rule=rule, sources=sources, seed=int(st.session_state.sel_seed), conditions=conditions,
                    draw=draw)
    st.session_state.current_selection = sel
    stamp = labels_stamp(stamp, sel)
    selection_key = json.dumps(recipes.Recipe("current", sel).as_dict(), sort_keys=True)
    pool = cached_pool(selection.pool_key(sel), db, stamp, sel)
    # a threshold rule is answered from the pool's index; the other rules decide every CoT once
    decision = None if isinstance(rule, Thresholds) else cached_decision(selection_key, db, stamp, sel, pool)
    report = cached_report(selection_key, db, stamp, sel, pool, decision)

    if report.pool_cots == 0:
        common.explain_empty(base, "No CoT matches the sidebar filter, so there is nothing to choose among")
        st.stop()
    if report.kept_cots == 0:
        top = report.reasons.head(5)
        st.warning(f"This selection keeps none of the pool's {report.pool_cots:,} CoTs. Why they were dropped:\n\n"
                   + "\n".join(f"- {render.escape_inline(r['reason'])}: {r['cots']:,} CoTs" for r in top.iter_rows(named=True))
                   + ("\n- …" if report.reasons.height > 5 else ""))

    # histograms above the sliders (or below the controls), kept against dropped, cut marked;
    # none for a metric no CoT of the pool has
    titles = {"rv": "RV", "cd": "CD", "n_tokens": unit}
    present = [c for c in titles if report.missing[c] < report.pool_cots]
    if not histogram_slots and present:
        histogram_slots = dict(zip(present, st.columns(len(present))))
    for column, slot in histogram_slots.items():
        if column not in present:
            continue
        missing = report.missing[column]
        title = titles[column] + (f" ({missing:,} without)" if missing else "")
        slot.plotly_chart(
            selection.histogram_figure(report.histograms[column], cut.get(column), title=title,
                                       discrete=column != "n_tokens", mark=mark.get(column)),
            key=f"sel_hist_{column}", width="stretch", config={"displayModeBar": False},
        )

    difficulty_view.student_counts((*base.conditions, *conditions))  # how many problems a student fails
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Kept CoTs", f"{report.kept_cots:,}")
    m2.metric("Dropped CoTs", f"{report.dropped_cots:,}")
    m3.metric("Kept share", f"{report.kept_cots / report.pool_cots:.1%}")
    m4.metric("Problems with a kept CoT", f"{report.kept_problems:,}", help=f"of {report.pool_problems:,} in the pool")
    st.caption(f"Pool: the {report.pool_cots:,} CoTs of {report.pool_problems:,} problems the sidebar filter matches. "
               "Every count and chart here covers all of them.")

    if report.quotas is not None:
        st.subheader("Quotas")
        st.caption("Each group's quota is its share of the pool (capped by what it can give); its threshold is the "
                   "token count or score of the last CoT it keeps.")
        st.dataframe(report.quotas, hide_index=True, key="sel_quotas")

    share_config = {"kept_share": PERCENT, "pool_share": PERCENT, "kept_mix": PERCENT}
    tab_model, tab_dataset, tab_cd, tab_reasons = st.tabs(["By model", "By dataset", "By CD level", "Why dropped"])
    for tab, frame, key in ((tab_model, report.by_model, "model"), (tab_dataset, report.by_dataset, "dataset"),
                            (tab_cd, report.by_cd, "cd")):
        tab.dataframe(frame, hide_index=True, key=f"sel_by_{key}", column_config=share_config)
    tab_model.caption("kept_share: kept / pool within the group; pool_share and kept_mix: the group's share of the "
                      "pool and of the kept set (equal when the selection keeps the mix).")
    tab_reasons.dataframe(report.reasons, hide_index=True, key="sel_reasons")

    st.subheader("Dropped CoTs")
    if report.dropped_cots == 0:
        st.caption("Nothing is dropped.")
    else:
        c1, c2, c3, c4 = st.columns([2, 2, 1, 1])
        sort_by = c1.selectbox("Sort by", selection.DROPPED_SORTABLE, key="sel_drop_sort")
        descending = c2.radio("Order", ["ascending", "descending"], horizontal=True, key="sel_drop_order") == "descending"
        page_size = c3.selectbox("Rows per page", PAGE_SIZES, index=1, key="sel_drop_size")
        n_pages = max(1, math.ceil(report.dropped_cots / page_size))
        view = (selection_key, sort_by, descending, page_size)
        if st.session_state.get("sel_drop_view") != view:
            st.session_state.sel_drop_view = view
            st.session_state.sel_drop_page = 1
        st.session_state.sel_drop_page = min(max(1, st.session_state.get("sel_drop_page", 1)), n_pages)
        page_number = c4.number_input("Page", min_value=1, max_value=n_pages, step=1, key="sel_drop_page")
        offset = (int(page_number) - 1) * page_size
        dropped = cached_dropped(selection_key, db, stamp, sort_by, descending, offset, page_size, sel, pool, decision)
        st.caption(f"Page {int(page_number):,} of {n_pages:,} · rows {offset + 1:,}–{offset + dropped.height:,} of "
                   f"{report.dropped_cots:,} dropped.")
        # score and weight only mean something in the modes that rank by them
        hidden = {"score"} if getattr(rule, "score", None) is None else set()
        hidden |= set() if mode == "capacity" else {"weight"}
        st.dataframe(dropped, hide_index=True, key="sel_dropped",
                     column_order=[c for c in dropped.columns if c not in hidden], column_config={
            "id": st.column_config.TextColumn("id", help="dataset:problem key:n, as the Reader takes it"),
            "cot_id": st.column_config.NumberColumn("CoT id (internal)", format="%d"),
            "problem_id": st.column_config.NumberColumn("problem id (internal)", format="%d"),
            "question": st.column_config.TextColumn("question (opening)", width="large"),
        })

    # ------------------------------------------------------------------------ recipes
    st.subheader("Recipes")
    saved = recipes.list_recipes()
    save_col, load_col = st.columns(2)
    # Enter in a box does not submit (it saved a half-filled form, and the Save button then
    # refused the name as taken, issue 11); only the button saves.
    with save_col.form("sel_save_form", border=True, enter_to_submit=False):
        name = st.text_input("Recipe name", key="sel_recipe_name")
        description = st.text_input("Description (optional)", key="sel_recipe_description")
        overwrite = st.checkbox("Replace a saved recipe of that name", key="sel_recipe_overwrite")
        if st.form_submit_button("Save the current selection as a recipe", key="sel_save"):
            recipe = recipes.Recipe(name.strip(), sel, description.strip())
            same = recipes.saved_as(recipe)  # saving the same selection again only updates its description
            path = recipes.save(recipe, overwrite=overwrite or same)
            st.session_state.current_recipe_name = name.strip()
            st.success(f"{'Updated' if same else 'Saved as'} {path}. It keeps {report.kept_cots:,} CoTs on this store.")
            saved = recipes.list_recipes()
    with load_col:
        if saved:
            chosen = st.selectbox("Saved recipes", saved, key="sel_load_name")
            st.button("Load this recipe", key="sel_load", on_click=_load_recipe, args=(chosen, max_tokens, choices, rows))
            st.caption("Loading sets the sidebar filter, the score sources and the mode's settings to the recipe's.")
        else:
            st.caption(f"No saved recipes yet (they go to {recipes.recipes_dir()}).")

    if len(saved) >= 2:
        st.markdown("**Compare two recipes**")
        c1, c2 = st.columns(2)
        name_a = c1.selectbox("Recipe A", saved, key="sel_cmp_a")
        name_b = c2.selectbox("Recipe B", saved, index=1, key="sel_cmp_b")
        a, b = recipes.load(name_a), recipes.load(name_b)
        key = json.dumps([a.as_dict(), b.as_dict()], sort_keys=True)
        st.dataframe(cached_compare(key, db, stamp, a, b), hide_index=True, key="sel_compare")
        st.caption("CoTs kept by both recipes, only by A and only by B, per model, on this store.")
