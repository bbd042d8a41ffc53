"""Select: decide which of the CoTs the sidebar filter matches to keep for training.

The sidebar filter is the pool; conditions on any figure (a judge's logic, a stage's pass
rate, ...) drop CoTs inside it, each under its own reason; then a mode decides kept against
dropped among the rest (thresholds, OmniThought's capacity-matched sampling, a per-problem
rule, or a target size with the pool's model mix). Controls and charts for a metric the pool
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

from core import ids, recipes, render, selection
from core.figures import Figure
from core.selection import CapacityMatched, PerProblem, Score, ScoreSources, Selection, TargetSize, Thresholds
from ui import common

MODES = {
    "thresholds": "Thresholds",
    "capacity": "Capacity-matched (OmniThought)",
    "per_problem": "Per problem",
    "target": "Target size",
}
PER_PROBLEM_LABELS = {"shortest_correct": "shortest correct", "top_k": "top k by a score", "all_correct": "all correct"}
BALANCE_LABELS = {"model": "model", "dataset": "dataset", "model_dataset": "model and dataset"}
WITHIN_LABELS = {"shortest_correct": "shortest correct", "score": "best by a score"}
PRESETS = {"7B": "7B student (C = 5)", "32B": "32B student (C = 7)", "custom": "custom"}
PAGE_SIZES = (25, 50, 100)
PERCENT = st.column_config.NumberColumn(format="percent")


# ---------------------------------------------------------------------------- cached core calls


@st.cache_resource(ttl=600, max_entries=2, show_spinner="Reading the pool's ids and numbers…")
def cached_pool(pool_key: str, db: str, stamp: tuple[float, float], _sel: Selection) -> selection.LoadedPool:
    """The pool in memory (LoadedPool), shared by every rerun and session with the same filter."""
    del pool_key, db, stamp  # the cache key only
    return selection.load_pool(_sel)


@st.cache_resource(ttl=600, max_entries=4, show_spinner="Applying the selection…")
def cached_decision(selection_key: str, db: str, stamp: tuple[float, float], _sel: Selection, _pool):
    del selection_key, db, stamp
    return selection.decide(_sel, pool=_pool)


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


def score_choices(stamp: tuple[float, float]) -> dict[str, Figure]:
    """What a rule can rank by: any figure of the store (per-CoT columns, every (source,
    metric) of scores and of problem_scores), by its label."""
    return {row["label"]: figure for figure, row in common.catalogue_rows(stamp).items()}


# ---------------------------------------------------------------------------- widget state


def _defaults(cat: dict, max_tokens: int) -> dict:
    return {
        "sel_mode": "thresholds",
        "sel_rv_sources": list(cat["rv"]), "sel_cd_sources": list(cat["cd"]), "sel_correct_sources": list(cat["correct"]),
        "sel_rv_range": (0, 9), "sel_cd_range": (0, 9), "sel_tokens_range": (0, max_tokens), "sel_thr_correct": False,
        "sel_cap_preset": "7B", "sel_cap_c": 5.0, "sel_cap_lambda": 1.0, "sel_cap_beta": 0.5, "sel_cap_k": 1,
        "sel_cap_correct": False, "sel_seed": 0,
        "sel_pp_rule": "shortest_correct", "sel_pp_k": 1, "sel_pp_correct": False,
        "sel_score": "tokens", "sel_score_order": "highest first",
        "sel_tg_n": 1000, "sel_tg_balance": "model", "sel_tg_within": "shortest_correct", "sel_tg_correct": True,
    }


def _state_of(recipe: recipes.Recipe, max_tokens: int, choices: dict, rows: dict) -> dict:
    """Widget values that show ``recipe`` (its base filter goes to the sidebar separately)."""
    sel, rule = recipe.selection, recipe.selection.rule
    state = {
        "sel_mode": rule.mode, "sel_seed": sel.seed,
        "sel_rv_sources": list(sel.sources.rv), "sel_cd_sources": list(sel.sources.cd),
        "sel_correct_sources": list(sel.sources.correct),
        **common.conditions_state("sel_", sel.conditions, rows),
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
                     sel_cap_k=rule.k, sel_cap_correct=rule.require_correct)
    elif isinstance(rule, PerProblem):
        state.update(sel_pp_rule=rule.rule, sel_pp_k=rule.k, sel_pp_correct=rule.require_correct)
    elif isinstance(rule, TargetSize):
        state.update(sel_tg_n=rule.n, sel_tg_balance=rule.balance, sel_tg_within=rule.within,
                     sel_tg_correct=rule.require_correct)
    score = getattr(rule, "score", None)
    if score is not None:
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


def _slider_with_histogram(slot, label: str, key: str, lo: int, hi: int):
    """A range slider with typed bounds and an empty container above it, for its histogram once
    counts are known."""
    with slot:
        chart = st.container()
        value = common.range_input(st, label, key, lo, hi)
    return chart, value


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

    n_conditions = len(st.session_state.get("sel_conds", []))
    with st.expander(f"Conditions on figures ({n_conditions})" if n_conditions else "Conditions on figures",
                     expanded=bool(n_conditions)):
        st.caption("Applied first, inside the pool: a CoT that fails a condition is dropped with that condition as "
                   "its reason ('Why dropped' below); the mode then decides among the CoTs that pass them all. "
                   "E.g. a judge's logic ≥ 1 for EasyDistill's ThoughtX recipe.")
        conditions = common.condition_widgets(st, rows, "sel_")

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
            histogram_slots["n_tokens"], tok = _slider_with_histogram(slots["n_tokens"], "Tokens", "sel_tokens_range", 0,
                                                                      max_tokens)
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
        controls.latex(selection.CAPACITY_FORMULA)
        c1, c2, c3, c4, c5 = controls.columns([2, 1, 1, 1, 1])
        c1.selectbox("Student", list(PRESETS), format_func=PRESETS.get, key="sel_cap_preset", on_change=_apply_preset,
                     help="The paper's best CD centre for Qwen2.5-7B-Instruct is 5 and for Qwen2.5-32B-Instruct 7, "
                          "with beta = 0.5.")
        capacity = c2.number_input("C (capacity)", 0.0, 9.0, step=0.5, key="sel_cap_c",
                                   disabled=st.session_state.sel_cap_preset != "custom")
        lam = c3.number_input("λ (CD above C)", 0.0, 20.0, step=0.1, key="sel_cap_lambda")
        beta = c4.number_input("β (|CD − RV|)", 0.0, 20.0, step=0.1, key="sel_cap_beta",
                               disabled=st.session_state.sel_cap_preset != "custom")
        k = c5.number_input("k per problem", 1, 50, step=1, key="sel_cap_k")
        c6, c7 = controls.columns([1, 3])
        c6.number_input("Seed", 0, 2**31 - 1, step=1, key="sel_seed",
                        help="The same seed keeps the same CoTs; another seed draws another subset.")
        require = c7.checkbox("Only verified-correct CoTs are candidates", key="sel_cap_correct")
        rule = CapacityMatched(capacity=capacity, lam=lam, beta=beta, k=int(k), require_correct=require)
        example = selection.capacity_weight(capacity + 2, capacity + 1, capacity=capacity, lam=lam, beta=beta)
        controls.caption(
            f"Per problem, {int(k)} CoT(s) drawn without replacement with probability proportional to w (u uniform "
            f"per seed and CoT). E.g. a CoT with CD = {capacity + 2:g} and RV = {capacity + 1:g} weighs "
            f"exp(−{lam:g}·2 − {beta:g}·1) = {example:.3f}; one with CD ≤ C and RV = CD weighs 1. "
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
    else:
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

    sel = Selection(base=base, rule=rule, sources=sources, seed=int(st.session_state.sel_seed), conditions=conditions)
    st.session_state.current_selection = sel
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
    titles = {"rv": "RV", "cd": "CD", "n_tokens": "tokens"}
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
