"""Distributions: length by correctness, RV / CD, accuracy across token budgets, Mean@k and
Pass@k, per-problem pass rate, efficiency by model and steps, all on every CoT the sidebar filter
matches, one tab each; only the open tab is computed and drawn.

Clicking a bar or a heatmap cell narrows the shared filter to it. A chart whose metric the
matching CoTs have no value for (RV on data without RV labels, accuracy without a verdict) is
not drawn: a sentence says which source has nothing for them.
"""

from __future__ import annotations

import polars as pl
import streamlit as st

from core import charts, compare, metrics, queries, render, tokens
from core.queries import CotFilter
from ui import common, difficulty_view, frames, steps_view

SECTION_KEY = "dist_section"  # the open tab's label, in session state
SECTION_WIDGETS = ("dist_facet", "dist_kind", "dist_log_x", "dist_bins", "dist_budgets", "dist_k")
BUDGET_CHOICES = (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
PERCENT = st.column_config.NumberColumn(format="percent")


def budgets_and_k(f: CotFilter, budgets: tuple[int, ...], k: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Accuracy at budgets (per tokenizer too when the counts come from several) and Mean@k /
    Pass@k per dataset, model and benchmark (cached: a pass over every matching CoT)."""
    return frames.derived("budgets_and_k", f, lambda df: (
        metrics.accuracy_at_budgets(df, budgets=budgets, group_by=charts.group_columns(df)),
        metrics.mean_and_pass_at_k(df, k=k, group_by=charts.GROUP_COLUMNS),
    ), budgets, k)


def per_problem(f: CotFilter) -> tuple[int, pl.DataFrame]:
    """The largest usable k (samples with a known verdict) and the per-problem pass rates
    (cached like budgets_and_k)."""
    return frames.derived("per_problem", f, lambda df: (
        charts.max_samples_per_problem(df), metrics.problem_pass_rates(df, group_by=charts.group_columns(df))))


def _selection_key(name: str) -> str:
    """Chart key with a generation number: after a click has narrowed the filter the chart
    comes back under a new key, so the old selection is not applied again."""
    return f"dist_{name}_{st.session_state.get('dist_selection_gen', 0)}"


def _first_point(key: str) -> dict | None:
    event = st.session_state.get(key)
    points = event.selection.points if event is not None else []
    return points[0] if points else None


def _narrow_from(key: str, kind: str) -> None:
    """on_select callback: a click on a chart narrows the filter. Runs before the page, so the
    sidebar's widget values can still be changed."""
    point = _first_point(key)
    if point is None:
        return
    st.session_state.dist_selection_gen = st.session_state.get("dist_selection_gen", 0) + 1
    if kind == "rv" and point.get("x") is not None:
        common.narrow_filter(rv_range=(int(point["x"]), int(point["x"])))
    elif kind == "cd" and point.get("x") is not None:
        common.narrow_filter(cd_range=(int(point["x"]), int(point["x"])))
    elif kind == "heatmap" and point.get("x") is not None and point.get("y") is not None:
        common.narrow_filter(cd_range=(int(point["x"]), int(point["x"])), rv_range=(int(point["y"]), int(point["y"])))
    elif kind == "length":
        data = point.get("customdata")
        if isinstance(data, list) and len(data) >= 4:
            common.narrow_filter(**length_bar_filter(*data[:4]))
    elif kind == "model":
        model = point.get("customdata")
        model = model[0] if isinstance(model, list) else model
        if model:
            common.narrow_filter(models=[model])
    elif kind == "problem":
        data = point.get("customdata")
        if isinstance(data, list) and data:
            common.narrow_filter(problem_ids=[int(data[0])])


def length_bar_filter(lo, hi, label: str, facet: str) -> dict:
    """What a click on a length bar narrows: its whole token counts, its correctness (when a
    source is chosen: without one every bar is 'unknown') and its panel (a model, a dataset, a
    CD level)."""
    changes: dict = {"tokens_range": (int(lo), int(hi))}
    f = st.session_state.get("current_filter")
    if f is not None and f.correct_source and label in ("correct", "incorrect", "unknown"):
        changes["correct"] = label
    facet_col = charts.FACETS.get(st.session_state.get("dist_facet", "none"))
    cat = common.catalogue(common.store_stamp())
    if facet_col == "model" and facet in cat["models"]:
        changes["models"] = [facet]
    elif facet_col == "dataset":
        name = facet if facet in cat["datasets"] else facet.removesuffix(" (generated)")
        if name in cat["datasets"]:
            changes["datasets"] = [name]
    elif facet_col == "cd" and facet.startswith("CD ") and facet[3:].isdigit():
        changes["cd_range"] = (int(facet[3:]), int(facet[3:]))
    return changes


def _selectable_chart(fig, name: str, kind: str) -> None:
    key = _selection_key(name)
    st.plotly_chart(fig, key=key, on_select=lambda: _narrow_from(key, kind), selection_mode=("points",),
                    width="stretch")


def _names(names) -> str:
    """Names from the data (sources, datasets) in a sentence: escaped, so none is markup."""
    return ", ".join(render.escape_inline(n) for n in names)


def _score_sentence(f: CotFilter, cat: dict) -> str | None:
    """Why RV / CD charts are missing, naming the sources that exist; None when both are set."""
    if f.rv_source and f.cd_source:
        return None
    have = sorted(set(cat["rv"]) | set(cat["cd"]))
    names = _names  # source names come from the data: escaped, never markup
    if have:
        missing = " and ".join(m for m, s in (("RV", f.rv_source), ("CD", f.cd_source)) if not s)
        return (f"No {missing} source is chosen. Pick one under 'RV / CD' in the sidebar; sources with "
                f"RV scores: {names(cat['rv']) or 'none'}; with CD scores: {names(cat['cd']) or 'none'}.")
    others = queries.sources()
    return ("This store has no RV or CD scores, so there is nothing to plot for them. Its score sources are: "
            f"{names(others) if others else 'none'}. RV and CD come from a dataset's own labels "
            "(OmniThought has them) or from an LLM judge run on the Jobs page.")


def _length_section(f: CotFilter, unit: str, has_cd: bool) -> None:
    st.subheader("Length by correctness")
    facet_choices = [name for name, col in charts.FACETS.items() if col != "cd" or has_cd]
    c1, c2, c3, c4 = st.columns([2, 2, 1, 1])
    facet_name = c1.selectbox("Facet by", facet_choices, key="dist_facet")
    kind = c2.radio("Show as", ["histogram", "ECDF"], horizontal=True, key="dist_kind").lower()
    log_x = c3.checkbox("Log x", key="dist_log_x")
    bins = int(c4.number_input("Bins", min_value=5, max_value=200, value=40, step=5, key="dist_bins"))
    length_fig = frames.length_figure(f, facet_name=facet_name, kind=kind, bins=bins, log_x=log_x)
    if kind == "histogram":  # a click on a bar narrows the filter to its tokens, correctness and facet
        _selectable_chart(length_fig, "length", "length")
        st.caption("Click a bar to narrow the filter to its CoTs: its token range, its correctness and its panel's "
                   f"{facet_name if facet_name != 'none' else 'data'}.")
    else:
        st.plotly_chart(length_fig, key="dist_length", width="stretch")
    with st.expander(f"Length statistics by correctness, in {unit}"):
        st.dataframe(frames.derived("length_by_correctness", f, lambda d: metrics.length_by_correctness(
            d, group_by=[c for c in charts.group_columns(d, ("model",)) if c in d.columns])), hide_index=True,
            key="dist_length_table")


def _scores_section(f: CotFilter, df: pl.DataFrame, cat: dict, known: dict, has_rv: bool, has_cd: bool) -> None:
    st.subheader("Reasoning Verbosity and Cognitive Difficulty")
    sentence = _score_sentence(f, cat)
    if sentence:
        st.info(sentence)
    absent = [(name, source) for name, column, source in (("RV", "rv", f.rv_source), ("CD", "cd", f.cd_source))
              if source and not known[column]]
    for name, source in absent:
        st.info(f"None of the {df.height:,} matching CoTs has a {name} score from {render.escape_inline(source)}; pick another {name} "
                "source under 'RV / CD' in the sidebar, or run a judge on them from the Jobs page.")
    left, right = st.columns(2)
    if has_rv:
        with left:
            _selectable_chart(frames.derived("rv_hist", f, lambda d: charts.score_histogram_figure(
                metrics.score_histogram(d, col="rv"), metric="rv", source=f.rv_source, n_cots=d.height,
                unscored=metrics.score_null_count(d, col="rv"))), "rv_hist", "rv")
    if has_cd:
        with right:
            _selectable_chart(frames.derived("cd_hist", f, lambda d: charts.score_histogram_figure(
                metrics.score_histogram(d, col="cd"), metric="cd", source=f.cd_source, n_cots=d.height,
                unscored=metrics.score_null_count(d, col="cd"))), "cd_hist", "cd")
    if has_rv and has_cd:
        _selectable_chart(frames.derived("rv_cd", f, lambda d: charts.rv_cd_heatmap(
            metrics.rv_cd_matrix(d), rv_source=f.rv_source, cd_source=f.cd_source, n_cots=d.height)),
            "rv_cd", "heatmap")


def _accuracy_section(f: CotFilter, df: pl.DataFrame, cat: dict, known: dict, unit: str, mixed: str | None) -> None:
    st.subheader("Accuracy across token budgets")
    if not f.correct_source:
        st.info("Choose a correctness source in the sidebar to see accuracy; sources with correctness: "
                f"{_names(cat['correct']) or 'none (run verification on the Jobs page)'}.")
    elif not known["correct"]:
        st.info(f"None of the {df.height:,} matching CoTs has a verdict from "
                f"{render.escape_inline(queries.correctness_label(f.correct_source))}, so there is no accuracy to show; choose another "
                "correctness source in the sidebar, or verify them from the Jobs page.")
    else:
        c1, c2 = st.columns([3, 1])
        budgets = c1.multiselect(f"Budgets ({unit})", BUDGET_CHOICES, default=list(metrics.DEFAULT_BUDGETS),
                                 format_func=charts.budget_label, key="dist_budgets")
        max_samples, pass_rates = per_problem(f)
        max_k = max(1, max_samples)
        # a narrower filter can lower the largest usable k below the one chosen before
        st.session_state["dist_k"] = min(int(st.session_state.get("dist_k", 1)), max_k)
        k = int(c2.number_input("k for Mean@k / Pass@k", min_value=1, max_value=max_k, key="dist_k",
                                help=f"Up to {max_k}: the most CoTs with a known verdict one problem has within one "
                                     "dataset, model and benchmark (samples without a verdict do not count)."))
        if not budgets:
            st.info("Pick at least one budget.")
            acc, mp = budgets_and_k(f, (), k)
        else:
            acc, mp = budgets_and_k(f, tuple(sorted(budgets)), k)
            # evaluation runs recorded their max new tokens: the chart marks where answers hit it
            cap_rows = frames.per_store("cap_rows", compare.cap_rows)
            caps = frames.derived("budget_caps", f, lambda d: compare.caps_of(d, cap_rows))
            st.plotly_chart(frames.derived("budget_figure", f, lambda d: charts.budget_figure(
                acc, n_cots=d.height, group_cols=charts.group_columns(d), tokens=unit, caps=caps), tuple(sorted(budgets)), k),
                key="dist_budget", width="stretch")
            st.caption(f"Accuracy and truncation rate per dataset, model and benchmark{' and tokenizer' if mixed else ''} "
                       f"at each budget, in {unit}; `full_accuracy` is without a budget and matches the `acc[source]` "
                       "of `python -m core summary` for the chosen correctness source.")
            table = frames.derived("budget_table", f, lambda d: charts.budget_table(acc, charts.group_columns(d)),
                                   tuple(sorted(budgets)), k)
            st.dataframe(table, hide_index=True, key="dist_budget_table",
                         column_config={c: PERCENT for c in table.columns if c.startswith(("acc", "trunc", "full"))})

        st.subheader(f"Mean@{k} and Pass@{k}")
        _selectable_chart(frames.derived("mean_pass_figure", f, lambda d: charts.mean_pass_at_k_figure(
            mp, n_cots=d.height, k=k), k), "mean_pass", "model")
        st.caption(f"Mean@{k}: per-sample accuracy averaged over problems with at least {k} judged samples; "
                   f"Pass@{k}: the unbiased estimate 1 − C(n−c, {k}) / C(n, {k}). "
                   f"Correctness: {queries.correctness_label(f.correct_source)}.")
        st.dataframe(mp, hide_index=True, key="dist_mean_pass_table",
                     column_config={"mean_at_k": PERCENT, "pass_at_k": PERCENT})

        st.subheader("Per-problem pass rate against mean length")
        log_x = bool(st.session_state.get("dist_log_x", False))  # the length tab's "Log x"
        _selectable_chart(frames.derived("pass_rate_scatter", f, lambda d: charts.pass_rate_scatter(
            pass_rates, n_cots=d.height, log_x=log_x, group_cols=charts.group_columns(d), tokens=unit), log_x),
            "pass_rate", "problem")


st.title("Distributions")
with common.guard():
    f = common.sidebar_filter()
    cat = common.catalogue(common.store_stamp())
    df = frames.metric_frame(f)
    if df.height == 0:
        if not cat["datasets"]:
            st.info("The store is empty: ingest a dataset on the Overview page (or `python -m core ingest PATH`).")
        else:
            common.explain_empty(f)
        st.stop()
    n_problems = frames.derived("n_problems", f, lambda d: d["problem_id"].n_unique())
    # CoTs with a value of each metric: a metric without any gets a sentence, not an empty chart
    known = frames.derived("known", f, lambda d: {c: d.height - d[c].null_count() for c in ("rv", "cd", "correct")})
    has_rv, has_cd = bool(f.rv_source and known["rv"]), bool(f.cd_source and known["cd"])
    st.caption(f"{df.height:,} CoTs of {n_problems:,} problems match the filter; every chart "
               "in the tabs below is computed on all of them. Click a bar or a heatmap cell to narrow the filter.")
    tokenizers = frames.derived("tokenizers", f, charts.tokenizers_of)
    unit = tokens.token_unit(tokenizers)
    mixed = tokens.mixed_tokenizers_note(tokenizers)
    if mixed:
        st.warning(mixed)
    # a widget that is not drawn in a run loses its value; the tabs' settings are kept over
    # runs where their tab is closed by writing them back (Streamlit's documented way)
    for key in SECTION_WIDGETS:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]

    # only the open tab runs (on_change="rerun"): a new filter computes and draws one section's
    # figures, not all seven charts of the page (issue 17: 2M CoTs on a shared 2-core server)
    sections = {
        "Length by correctness": lambda: _length_section(f, unit, has_cd),
        "RV and CD": lambda: _scores_section(f, df, cat, known, has_rv, has_cd),
        "Accuracy and Pass@k": lambda: _accuracy_section(f, df, cat, known, unit, mixed),
        "Efficiency by model": lambda: difficulty_view.distributions_section(f),  # ui/difficulty_view.py
        "Steps": lambda: steps_view.distributions_section(f),  # ui/steps_view.py
    }
    for tab, show in zip(st.tabs(list(sections), key=SECTION_KEY, on_change="rerun"), sections.values(), strict=True):
        if tab.open:
            with tab:
                show()
