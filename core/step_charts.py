"""Figures and view rows for steps inside CoTs: the Distributions page's step charts, the
Reader's step view and the Agreement page's step matrix. Builders take polars frames (from
core.step_stats) and return plotly figures or plain rows, so tests check them without a browser.

Clickable bars carry what a click narrows the filter to in ``customdata``: a correctness
('correct' / 'incorrect') or a model.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
import polars as pl

from core import render
from core.charts import CORRECTNESS_COLOURS, _empty_note, _title
from core.step_stats import NO_ROLE, overlay
from core.steps import ROLES

# One hue per role, the same in charts (hex) and in Streamlit Markdown badges (its palette has
# seven named colours and 'primary'; red is kept for wrong steps).
ROLE_COLOURS = {
    "problem_setup": "#808495", "plan_generation": "#803df5", "fact_retrieval": "#1c83e1",
    "active_computation": "#21c354", "uncertainty_management": "#ff8700", "result_consolidation": "#e4b700",
    "self_checking": "#ff4b4b", "final_answer_emission": "#0e1117", NO_ROLE: "#d5dae5",
}
ROLE_BADGES = {
    "problem_setup": "gray", "plan_generation": "violet", "fact_retrieval": "blue", "active_computation": "green",
    "uncertainty_management": "orange", "result_consolidation": "yellow", "self_checking": "primary",
    "final_answer_emission": "blue",
}
IMPORTANCE_PREFERENCE = ("counterfactual_importance_accuracy", "resampling_importance_accuracy",
                         "forced_importance_accuracy", "counterfactual_importance_kl", "rating")


def role_label(role: str | None) -> str:
    return (role or NO_ROLE).replace("_", " ")


def role_badge(role: str | None) -> str:
    """A Streamlit Markdown badge for a role ('(none)' in gray)."""
    if role not in ROLE_BADGES:  # a role named by the data: escaped, so it cannot close the badge or be markup
        return f":gray-badge[{render.escape_inline(role_label(role))}]"
    return f":{ROLE_BADGES[role]}-badge[{role_label(role)}]"


# ---------------------------------------------------------------------------------- Distributions


def role_composition_figure(table: pl.DataFrame, *, by: str, source: str, n_cots: int) -> go.Figure:
    """Stacked horizontal bars: each group's (correctness or model) step tokens split by role,
    as shares, from ``step_stats.role_table``. A bar's customdata is its group."""
    fig = go.Figure()
    groups = table[by].unique(maintain_order=True).to_list() if table.height else []
    for role in (*ROLES, NO_ROLE):
        part = table.filter(pl.col("role") == role)
        if part.height == 0:
            continue
        share = dict(zip(part[by].to_list(), part["share"].to_list()))
        tokens = dict(zip(part[by].to_list(), part["tokens"].to_list()))
        fig.add_trace(go.Bar(
            y=groups, x=[share.get(g, 0.0) for g in groups], name=role_label(role), orientation="h",
            marker_color=ROLE_COLOURS[role], customdata=groups,
            text=[f"{share.get(g, 0):.0%}" if share.get(g, 0) >= 0.04 else None for g in groups], textposition="inside",
            hovertemplate=f"%{{y}} · {role_label(role)}<br>%{{x:.1%}} of step tokens<br>%{{text}}<extra></extra>",
            hovertext=[f"{tokens.get(g, 0):,} tokens" for g in groups],
        ))
    fig.update_layout(
        title=_title(f"Share of step tokens per role, by {by} · step source: {source}", n_cots),
        barmode="stack", xaxis={"range": [0, 1], "tickformat": ".0%", "title": "share of step tokens"},
        yaxis={"autorange": "reversed", "automargin": True, "type": "category"},
        # the legend sits between the title and the bars, where it never covers an axis
        height=max(300, 200 + 44 * len(groups)), margin={"t": 130},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0, "traceorder": "normal"},
    )
    if not groups:
        _empty_note(fig, "No step of this source among the matching CoTs")
    return fig


def first_error_figure(figures: pl.DataFrame, *, source: str, n_cots: int, bins: int = 20) -> go.Figure:
    """Histogram of where the first wrong step starts (a fraction of the CoT's step text) in
    CoTs the source finds an error in, one colour per correctness; customdata the correctness."""
    fig = go.Figure()
    has = "first_error_frac" in figures.columns and "has_error" in figures.columns
    failed = figures.filter(pl.col("has_error") == 1) if has else figures.head(0)
    labelled = figures.filter(pl.col("has_error").is_not_null()).height if has else 0
    width = 1.0 / bins
    for correctness in ("correct", "incorrect", "unknown"):
        values = failed.filter(pl.col("correctness") == correctness)["first_error_frac"].drop_nulls().to_list() if has else []
        if not values:
            continue
        counts = [0] * bins
        for v in values:
            counts[min(int(v / width), bins - 1)] += 1
        fig.add_trace(go.Bar(
            x=[(i + 0.5) * width for i in range(bins)], y=counts, width=width * 0.95, name=correctness,
            marker_color=CORRECTNESS_COLOURS[correctness], customdata=[correctness] * bins,
            hovertemplate=f"{correctness}: %{{y:,}} CoTs with the first error at %{{x:.0%}}<extra></extra>",
        ))
    note = f"{failed.height:,} of {labelled:,} CoTs with step verdicts have a wrong step"
    fig.update_layout(
        title=_title(f"Where the first wrong step starts · step source: {source}", n_cots, note),
        barmode="stack", xaxis={"range": [0, 1], "tickformat": ".0%", "title": "position in the CoT (share of its step text)"},
        yaxis={"title": "CoTs"}, margin={"t": 80}, height=340,
    )
    if failed.height == 0:
        _empty_note(fig, "This source marks no step wrong in the matching CoTs" if labelled else
                    "This source gives no step verdicts (PRM800K and ProcessBench labels do)")
    return fig


def by_correctness_figure(figures: pl.DataFrame, *, metric: str, title: str, axis: str, source: str, n_cots: int) -> go.Figure:
    """Box plots of one per-CoT step figure (n_steps, mean_step_tokens) per correctness;
    customdata the correctness."""
    fig = go.Figure()
    if metric in figures.columns:
        for correctness in ("correct", "incorrect", "unknown"):
            values = figures.filter(pl.col("correctness") == correctness)[metric].drop_nulls().to_list()
            if values:
                fig.add_trace(go.Box(
                    y=values, name=correctness, marker_color=CORRECTNESS_COLOURS[correctness], boxpoints=False,
                    customdata=[correctness] * len(values),
                ))
    fig.update_layout(title=_title(f"{title} · step source: {source}", n_cots), yaxis={"title": axis},
                      showlegend=False, margin={"t": 80}, height=340)
    if not fig.data:
        _empty_note(fig, "No CoT has this figure")
    return fig


def click_narrowing(kind: str, point: dict | None) -> dict | None:
    """What a click on a step chart narrows the shared filter to (``common.narrow_filter``
    keyword arguments), from the clicked point's customdata; None when nothing applies (a bar
    of unknown correctness, CoTs without a model)."""
    if not point:
        return None
    data = point.get("customdata")
    data = data[0] if isinstance(data, list) and data else data
    if not data:
        return None
    if kind == "correctness" and data in ("correct", "incorrect"):
        return {"correct": data}
    if kind == "model" and data != "(no model)":
        return {"models": [data]}
    return None


# ---------------------------------------------------------------------------------- Reader


def importance_metric(scores: pl.DataFrame, source: str) -> str | None:
    """The per-step metric to draw as the importance bar for ``source``, if it has one."""
    have = set(scores.filter((pl.col("source") == source) & pl.col("value").is_not_null())["metric"].to_list())
    for name in IMPORTANCE_PREFERENCE:
        if name in have:
            return name
    return next((m for m in sorted(have) if "importance" in m), None)


def step_view(text: str, steps: pl.DataFrame, scores: pl.DataFrame, source: str,
              roles: list[str] | None = None) -> dict[str, Any]:
    """The Reader's step list for one CoT and one step source: one row per step (index, text,
    role, tokens, micro-actions, wrong, this source's per-step numbers, the other sources' labels
    on the same characters, importance scaled to 0-1 of the CoT's largest), the first wrong
    step, and the rows ``roles`` keeps (all when None)."""
    own = steps.filter(pl.col("source") == source).sort("step_idx")
    others = {name: steps.filter(pl.col("source") == name).sort("step_idx")
              for name in steps["source"].unique(maintain_order=True).to_list() if name != source}
    placed = {name: overlay(own, frame) for name, frame in others.items()}
    mine = scores.filter(pl.col("source") == source)
    per_step: dict[int, dict[str, tuple]] = {}
    for idx, metric, value, raw in mine.select("step_idx", "metric", "value", "raw").iter_rows():
        per_step.setdefault(idx, {})[metric] = (value, raw)
    importance = importance_metric(scores, source)
    biggest = 0.0
    if importance:
        values = [v[importance][0] for v in per_step.values() if importance in v and v[importance][0] is not None]
        biggest = max((abs(v) for v in values), default=0.0)
    rows = []
    first_wrong = None
    for i, r in enumerate(own.iter_rows(named=True)):
        if r["wrong"] and first_wrong is None:
            first_wrong = r["step_idx"]
        numbers = per_step.get(r["step_idx"], {})
        other_labels = []
        for name, picks in placed.items():
            j = picks[i]
            if j is None:
                continue
            o = others[name].row(j, named=True)
            if o["role"] is not None or o["wrong"] is not None:
                other_labels.append({"source": name, "role": o["role"], "wrong": o["wrong"], "step_idx": o["step_idx"]})
        value = numbers.get(importance, (None, None))[0] if importance else None
        rows.append({
            "step_idx": r["step_idx"], "text": text[r["char_start"]:r["char_end"]], "char_start": r["char_start"],
            "role": r["role"], "n_tokens": r["n_tokens"], "micro_actions": list(r["micro_actions"] or []),
            "wrong": r["wrong"], "numbers": {k: v for k, v in numbers.items()}, "others": other_labels,
            "importance": value, "importance_bar": abs(value) / biggest if value is not None and biggest > 0 else None,
        })
    shown = rows if not roles else [row for row in rows if (row["role"] or NO_ROLE) in roles]
    return {"rows": rows, "shown": shown, "first_wrong": first_wrong, "importance_metric": importance,
            "n_steps": len(rows)}


# ---------------------------------------------------------------------------------- Agreement


def role_confusion_figure(result: dict) -> go.Figure:
    """Heatmap of a role agreement (step_stats.role_agreement): A's roles down, B's across."""
    labels = [role_label(r) for r in result["roles"]]
    fig = go.Figure(go.Heatmap(
        z=result["matrix"], x=labels, y=labels, colorscale="Blues", text=result["matrix"], texttemplate="%{text}",
        colorbar={"title": "steps"}, hovertemplate="A: %{y}<br>B: %{x}<br>%{z:,} steps<extra></extra>",
    ))
    fig.update_layout(
        xaxis={"title": f"B: {result['b']}", "type": "category"},
        yaxis={"title": f"A: {result['a']}", "type": "category", "autorange": "reversed"},
        height=520, margin={"l": 60, "r": 10, "t": 20, "b": 60},
    )
    return fig
