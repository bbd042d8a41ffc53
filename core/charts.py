"""Plotly figures for the Distributions and Overview pages, built from ``core.metrics`` results.

Every builder takes polars frames and plain values and returns a ``plotly.graph_objects.Figure``,
so the numbers on screen can be checked in tests without a browser. The frames come from
``core.metrics`` run on *all* rows that match the filter; each title says how many CoTs that was
(``n_cots``) and how many of them a chart had to leave out (no score, no token count).

    >>> from core import metrics, charts
    >>> fig = charts.score_histogram_figure(metrics.score_histogram(df, col="rv"), metric="rv",
    ...                                     source="omnithought (QwQ-32B)", n_cots=df.height,
    ...                                     unscored=metrics.score_null_count(df, col="rv"))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from core import metrics
from core.render import inert_figure

__all__ = [
    "GROUP_COLUMNS",
    "FACETS",
    "dataset_label",
    "label_generated",
    "group_labels",
    "score_histogram_figure",
    "rv_cd_heatmap",
    "length_distribution_frame",
    "length_distribution_figure",
    "token_range",
    "budget_figure",
    "budget_table",
    "mean_pass_at_k_figure",
    "pass_rate_scatter",
    "budget_label",
    "max_samples_per_problem",
    "tokenizers_of",
    "tokens_name",
    "group_columns",
]

#: The columns accuracy tables are grouped by, as in ``python -m core summary``.
GROUP_COLUMNS: tuple[str, ...] = ("dataset", "model", "benchmark")

#: What the length distribution can be faceted by: label shown to the user -> column.
FACETS: dict[str, str | None] = {"none": None, "model": "model", "CD level": "cd", "dataset": "dataset"}

CORRECTNESS_COLOURS = {"correct": "#2ca02c", "incorrect": "#d62728", "unknown": "#7f7f7f"}
METRIC_NAMES = {"rv": "Reasoning Verbosity (RV)", "cd": "Cognitive Difficulty (CD)"}
_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd",
    "#e6550d", "#31a354", "#756bb1", "#636363", "#6baed6", "#fd8d3c", "#74c476", "#9e9ac8",
    "#969696", "#9c9ede", "#cedb9c", "#e7ba52", "#e7969c", "#de9ed6",
)
SCATTER_POINT_LIMIT = 20_000  # more points than this are drawn as a density
ECDF_POINTS = 2_000  # an ECDF curve is drawn with about this many points, whatever the row count
_SEP = "\x1f"  # joins facet and correctness into one split key; never occurs in names


# --------------------------------------------------------------------------- labels


def dataset_label(name: str, generated: bool) -> str:
    """A dataset's display name; generated (synthetic) data always says so."""
    if generated and "(generated)" not in name:
        return f"{name} (generated)"
    return name


def label_generated(df: pl.DataFrame, generated_names: Sequence[str]) -> pl.DataFrame:
    """``df`` with its ``dataset`` column relabelled so generated datasets read "(generated)"."""
    names = [n for n in generated_names if "(generated)" not in n]
    if not names or "dataset" not in df.columns:
        return df
    return df.with_columns(
        pl.when(pl.col("dataset").is_in(names))
        .then(pl.col("dataset") + " (generated)")
        .otherwise(pl.col("dataset"))
        .alias("dataset")
    )


def tokenizers_of(df: pl.DataFrame) -> dict[str | None, int]:
    """CoTs with a token count per tokenizer in a metric frame (``tokenizer`` column), largest
    first; {} when the frame has no such column or no count."""
    if "tokenizer" not in df.columns or "n_tokens" not in df.columns:
        return {}
    counted = df.filter(pl.col("n_tokens").is_not_null()).group_by("tokenizer").len().sort(
        ["len", "tokenizer"], descending=[True, False], nulls_last=True)  # as queries.tokenizers' ORDER BY
    return dict(zip(counted["tokenizer"].to_list(), counted["len"].to_list()))


def tokens_name(df: pl.DataFrame) -> str:
    """The token unit of a frame's counts, for axis titles: 'tokens (SmolLM2-135M-Instruct)'
    (core.tokens.token_unit)."""
    from core.tokens import token_unit

    return token_unit(tokenizers_of(df))


def group_columns(df: pl.DataFrame, cols: Sequence[str] = GROUP_COLUMNS) -> tuple[str, ...]:
    """``cols``, plus ``tokenizer`` when the frame's token counts come from several tokenizers:
    figures over token counts are then computed per tokenizer, never pooled across them."""
    return (*cols, "tokenizer") if len(tokenizers_of(df)) > 1 else tuple(cols)


def budget_label(tokens: int) -> str:
    """2048 -> '2k', 32768 -> '32k', 1000 -> '1000'."""
    return f"{tokens // 1024}k" if tokens >= 1024 and tokens % 1024 == 0 else str(tokens)


def _varying(df: pl.DataFrame, cols: Sequence[str]) -> list[str]:
    """The columns of ``cols`` that tell groups apart (model always, when present)."""
    out = [c for c in cols if c in df.columns and (c == "model" or df[c].n_unique() > 1)]
    return out or [c for c in cols if c in df.columns][:1]


def group_labels(df: pl.DataFrame, cols: Sequence[str] = GROUP_COLUMNS) -> list[str]:
    """One display label per row: the values of the group columns that vary, joined by ' · '."""
    shown = _varying(df, cols)
    return [
        " · ".join("—" if row[c] is None else str(row[c]) for c in shown)
        for row in df.select(shown).iter_rows(named=True)
    ] if shown else ["all"] * df.height


def _title(text: str, n_cots: int, note: str | None = None) -> dict:
    sub = f"computed on {n_cots:,} CoTs (all matching rows)"
    if note:
        sub += f"; {note}"
    return {"text": f"{text}<br><sup>{sub}</sup>", "x": 0.0, "xanchor": "left"}


def _empty_note(fig: go.Figure, message: str) -> go.Figure:
    fig.add_annotation(text=message, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    return fig


# --------------------------------------------------------------------------- RV / CD


def score_histogram_figure(
    hist: pl.DataFrame, *, metric: str, source: str, n_cots: int, unscored: int
) -> go.Figure:
    """Bars of ``metrics.score_histogram`` (levels 0-9) for ``metric`` ('rv' or 'cd').

    Each bar carries its level in ``customdata`` so a click can narrow the filter to it.
    """
    name = METRIC_NAMES.get(metric, metric)
    levels = hist["level"].to_list()
    counts = hist["count"].to_list()
    fig = go.Figure(
        go.Bar(
            x=levels, y=counts, text=counts, textposition="outside", customdata=levels,
            marker_color="#4c78a8", name=metric.upper(),
            hovertemplate=f"{metric.upper()} %{{x}}: %{{y:,}} CoTs<extra></extra>",
        )
    )
    note = f"{unscored:,} without {metric.upper()} from this source" if unscored else None
    fig.update_layout(
        title=_title(f"{name} · source: {source}", n_cots, note),
        xaxis={"title": f"{metric.upper()} level", "tickmode": "array", "tickvals": list(range(10)), "range": [-0.5, 9.5]},
        yaxis={"title": "CoTs"}, bargap=0.15, showlegend=False, margin={"t": 80},
    )
    return inert_figure(fig)


def rv_cd_heatmap(matrix: pl.DataFrame, *, rv_source: str, cd_source: str, n_cots: int) -> go.Figure:
    """Heatmap of ``metrics.rv_cd_matrix``: CD on x, RV on y, the count written in each cell.

    ``data[0].z[i][j]`` is the number of CoTs with RV level ``i`` and CD level ``j``; ``data[1]``
    is an invisible marker per cell that makes cells clickable.
    """
    levels = list(range(10))
    lookup = {(r, c): n for r, c, n in matrix.select("rv", "cd", "count").iter_rows()}
    z = [[int(lookup.get((r, c), 0)) for c in levels] for r in levels]
    both = sum(map(sum, z))
    fig = go.Figure(
        go.Heatmap(
            x=levels, y=levels, z=z, text=z, texttemplate="%{text}", colorscale="Blues",
            hoverinfo="skip", colorbar={"title": "CoTs"},
        )
    )
    # Plotly reports no selection on heatmap cells, so an invisible marker sits on each cell:
    # hovering or clicking it gives the cell (x = CD, y = RV) to the page.
    cells = [(c, r) for r in levels for c in levels]
    fig.add_trace(go.Scatter(
        x=[c for c, _ in cells], y=[r for _, r in cells], customdata=[z[r][c] for c, r in cells],
        mode="markers", marker={"size": 26, "opacity": 0, "symbol": "square"}, showlegend=False,
        selected={"marker": {"opacity": 0}}, unselected={"marker": {"opacity": 0}}, name="cells",
        hovertemplate="CD %{x}, RV %{y}: %{customdata:,} CoTs<extra></extra>",
    ))
    sources = f"RV: {rv_source}, CD: {cd_source}"
    fig.update_layout(
        title=_title(f"RV × CD · {sources}", n_cots, f"{both:,} have both RV and CD"),
        xaxis={"title": "Cognitive Difficulty (CD)", "tickmode": "array", "tickvals": levels},
        yaxis={"title": "Reasoning Verbosity (RV)", "tickmode": "array", "tickvals": levels},
        margin={"t": 80},
    )
    return inert_figure(fig)


# --------------------------------------------------------------------------- lengths


def _correct_labels(df: pl.DataFrame) -> pl.Expr:
    """``correct`` (Boolean or 0/1 number, null = unknown) as metrics.CORRECTNESS_LABELS."""
    dtype = df.schema["correct"]
    ok = pl.col("correct") if dtype == pl.Boolean else pl.col("correct").cast(pl.Float64).fill_nan(None) >= 0.5
    return pl.when(ok.is_null()).then(pl.lit("unknown")).when(ok).then(pl.lit("correct")).otherwise(pl.lit("incorrect"))


def _facet_values(df: pl.DataFrame, facet_col: str | None) -> pl.Expr:
    if facet_col is None:
        return pl.lit("all")
    if facet_col == "cd":
        level = pl.col("cd").cast(pl.Float64).fill_nan(None)
        return pl.when(level.is_null()).then(pl.lit("CD unscored")).otherwise(
            pl.lit("CD ") + level.round(0).cast(pl.Int64).cast(pl.String)
        )
    return pl.col(facet_col).cast(pl.String).fill_null("(none)")


def length_distribution_frame(
    df: pl.DataFrame,
    *,
    facet_by: str | None = None,
    kind: str = "histogram",
    bins: int = 40,
    log: bool = False,
    length_col: str = "n_tokens",
) -> pl.DataFrame:
    """Length distribution by correctness, per facet, on one set of bins for every facet.

    ``facet_by`` is a column (``model``, ``cd``, ``dataset``) or None. ``kind='histogram'`` gives
    ``facet``, ``correct``, ``bin_start``, ``bin_end``, ``count`` from ``metrics.length_histogram``
    (the bins are shared by every facet and label because all of them are one split of one call);
    ``kind='ecdf'`` gives ``facet``, ``correct``, ``length``, ``cum_share`` from ``metrics.ecdf``.
    """
    if kind not in ("histogram", "ecdf"):
        raise ValueError(f"kind must be 'histogram' or 'ecdf' (got {kind!r})")
    if df.height == 0:
        base = {"facet": pl.String, "correct": pl.String}
        extra = {"bin_start": pl.Float64, "bin_end": pl.Float64, "count": pl.Int64} if kind == "histogram" else {
            "length": pl.Float64, "cum_share": pl.Float64}
        return pl.DataFrame(schema={**base, **extra})
    split = df.select(
        pl.col(length_col),
        (_facet_values(df, facet_by) + pl.lit(_SEP) + _correct_labels(df)).alias("_split"),
    )
    if kind == "histogram":
        out = metrics.length_histogram(split, bins=bins, length_col=length_col, split_by="_split", log=log)
    else:
        out = metrics.ecdf(split, length_col=length_col, split_by="_split")
    parts = pl.col("_split").str.split_exact(_SEP, 1)
    out = out.with_columns(parts.struct.field("field_0").alias("facet"), parts.struct.field("field_1").alias("correct"))
    order = {label: i for i, label in enumerate(metrics.CORRECTNESS_LABELS)}
    sort_col = "bin_start" if kind == "histogram" else "length"
    out = out.with_columns(pl.col("correct").replace_strict(order, default=len(order)).alias("_o"))
    out = out.sort(["facet", "_o", sort_col]).drop("_o", "_split")
    cols = ["bin_start", "bin_end", "count"] if kind == "histogram" else ["length", "cum_share"]
    return out.select("facet", "correct", *cols)


def _thin_ecdf(rows: pl.DataFrame, max_points: int) -> pl.DataFrame:
    """At most about ``max_points`` points of one ECDF curve: the last point of each
    1/max_points step of cumulative share (and the final point), so the drawn curve is off by
    less than 1/max_points anywhere while every row still counts in it."""
    if rows.height <= max_points:
        return rows
    bucket = (pl.col("cum_share") * max_points).floor()
    keep = (bucket != bucket.shift(-1)).fill_null(True)
    return rows.filter(keep)


def _short(name: str, limit: int = 40) -> str:
    """A panel title that fits a third of the page; the end is kept because that is where
    checkpoint names differ (the full name is in the hover)."""
    return name if len(name) <= limit else name[:12] + "…" + name[-(limit - 13):]


def _facet_order(facets: list[str]) -> list[str]:
    def key(f: str):
        if f.startswith("CD ") and f[3:].isdigit():
            return (0, int(f[3:]), f)
        return (1, 0, f)
    return sorted(facets, key=key)


def token_range(bin_start: float, bin_end: float, last: bool) -> tuple[int, int]:
    """The whole token counts a histogram bin holds: ``[bin_start, bin_end)``, the last bin
    ``[bin_start, bin_end]`` (metrics.length_histogram's edges). A filter on this range
    matches exactly the bin's CoTs.

    >>> token_range(1000.0, 1500.5, False), token_range(1000.0, 2000.0, False), token_range(9000.0, 10000.0, True)
    ((1000, 1500), (1000, 1999), (9000, 10000))
    """
    lo = math.ceil(bin_start)
    hi = math.floor(bin_end) if last else math.ceil(bin_end) - 1
    return lo, hi


def _log_ticks(lo: float, hi: float) -> tuple[list[float], list[str]]:
    """Tick positions (log10) and labels (1, 2, 5 times a power of ten) for a log axis drawn on
    a linear one."""
    vals, text = [], []
    for exponent in range(math.floor(lo) - 1, math.ceil(hi) + 1):
        for mantissa in (1, 2, 5):
            value = mantissa * 10 ** exponent
            if value > 0 and lo - 1e-9 <= math.log10(value) <= hi + 1e-9:
                vals.append(math.log10(value))
                text.append(f"{value / 1000:g}k" if value >= 1000 else f"{value:g}")
    return vals, text


def length_distribution_figure(
    frame: pl.DataFrame,
    *,
    kind: str,
    n_cots: int,
    facet_label: str | None = None,
    log_x: bool = False,
    no_length: int = 0,
    correctness_source: str | None = None,
    columns: int = 3,
    panel_height: int = 240,
    length_name: str = "tokens",
) -> go.Figure:
    """Correct / incorrect / unknown length distributions, one panel per facet.

    ``frame`` is ``length_distribution_frame``. Histograms put the labels' bars side by side
    within each shared bin (one slot per label, so no colour is drawn over another: overlaid
    translucent fills turned brown where they met, issue 11), each bar as wide as its slot;
    on a log axis the bars are drawn over log10 of the length with the ticks labelled in
    tokens, so they keep their widths. Each bar's ``customdata`` is [first token count, last
    token count, label, facet]: what a click narrows the filter to. ECDF traces are ``length``
    against ``cum_share``, thinned to about ``ECDF_POINTS`` points a curve.
    """
    facets = _facet_order(frame["facet"].unique().to_list()) if frame.height else []
    single = len(facets) <= 1
    cols = 1 if single else min(columns, len(facets))
    rows = max(1, -(-len(facets) // cols))
    titles = None if single else [_short(f) for f in facets]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, shared_xaxes=True,
                        vertical_spacing=min(0.12, 0.3 / rows), horizontal_spacing=0.06)
    shown_legend: set[str] = set()
    present = [label for label in metrics.CORRECTNESS_LABELS
               if kind == "histogram" and frame.height and frame.filter((pl.col("correct") == label) & (pl.col("count") > 0)).height]
    if kind == "histogram" and frame.height:
        last_end = frame["bin_end"].max()
    for i, facet in enumerate(facets):
        r, c = i // cols + 1, i % cols + 1
        part = frame.filter(pl.col("facet") == facet)
        for label in metrics.CORRECTNESS_LABELS:
            trace_rows = part.filter(pl.col("correct") == label)
            if trace_rows.height == 0 or (kind == "histogram" and trace_rows["count"].sum() == 0):
                continue
            colour = CORRECTNESS_COLOURS[label]
            common = {"name": label, "legendgroup": label, "showlegend": label not in shown_legend, "meta": facet}
            shown_legend.add(label)
            if kind == "histogram":
                starts, ends = np.array(trace_rows["bin_start"].to_list()), np.array(trace_rows["bin_end"].to_list())
                x0, x1 = (np.log10(starts), np.log10(ends)) if log_x else (starts, ends)
                slot = (x1 - x0) / len(present)
                ranges = [token_range(a, b, b >= last_end) for a, b in zip(starts, ends)]
                fig.add_trace(go.Bar(
                    x=(x0 + slot * (present.index(label) + 0.5)).tolist(), y=trace_rows["count"].to_list(),
                    width=(slot * 0.92).tolist(), marker={"color": colour, "line": {"width": 0}},
                    customdata=[[lo, hi, label, facet] for lo, hi in ranges],
                    hovertemplate=f"{label}: %{{y:,}} CoTs with %{{customdata[0]:,}} to %{{customdata[1]:,}} "
                                  f"{length_name}<extra>{facet}</extra>",
                    **common), row=r, col=c)
            else:
                trace_rows = _thin_ecdf(trace_rows, ECDF_POINTS)
                fig.add_trace(go.Scatter(
                    x=trace_rows["length"].to_list(), y=trace_rows["cum_share"].to_list(), mode="lines",
                    line={"color": colour, "shape": "hv", "width": 1.5},
                    hovertemplate=f"{label}: %{{y:.1%}} at or below %{{x:,.0f}} {length_name}<extra>{facet}</extra>",
                    **common), row=r, col=c)
    if kind == "histogram" and log_x and frame.height:
        vals, text = _log_ticks(math.log10(frame["bin_start"].min()), math.log10(frame["bin_end"].max()))
        fig.update_xaxes(type="linear", tickvals=vals, ticktext=text)
    else:
        fig.update_xaxes(type="log" if log_x else "linear")
    fig.update_xaxes(title_text=length_name + (" (log scale)" if log_x else ""), row=rows)
    fig.update_yaxes(title_text="CoTs" if kind == "histogram" else "share ≤ length", col=1)
    if kind == "ecdf":
        fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    notes = []
    if no_length:
        notes.append(f"{no_length:,} without a token count" + (" or with 0 tokens (log axis)" if log_x else ""))
    if correctness_source is None:
        notes.append("no correctness source chosen, so all show as unknown")
    else:
        notes.append(f"correctness: {correctness_source}")
    what = "Length by correctness" + (f", by {facet_label}" if facet_label and not single else "")
    what += " (ECDF)" if kind == "ecdf" else ""
    fig.update_layout(
        title=_title(what, n_cots, "; ".join(notes)), height=max(320, 110 + rows * panel_height),
        # top right of the whole figure, beside the title, clear of the panel titles
        legend={"orientation": "h", "yref": "container", "y": 0.995, "yanchor": "top", "x": 1.0, "xanchor": "right"},
        margin={"t": 110}, barmode="overlay", bargap=0,
    )
    fig.update_annotations(font_size=11)  # panel titles
    if not facets:
        _empty_note(fig, f"No CoT has a {length_name} count")
    return inert_figure(fig)


# --------------------------------------------------------------------------- budgets


def _legend(entries: int) -> dict:
    """Beside the plot for a few entries; below it, in rows, for many, so the plot keeps its width."""
    if entries > 8:
        return {"orientation": "h", "y": -0.18, "yanchor": "top", "x": 0, "font": {"size": 10}}
    return {"orientation": "v", "font": {"size": 10}}


def budget_figure(acc: pl.DataFrame, *, n_cots: int, group_cols: Sequence[str] = GROUP_COLUMNS,
                  tokens: str = "tokens", caps: pl.DataFrame | None = None) -> go.Figure:
    """Accuracy (left) and truncation rate (right) at each token budget, one line per group.

    ``acc`` is ``metrics.accuracy_at_budgets``. The x axes are logarithmic with a tick at each
    budget (2k, 4k, ... are equally spaced, i.e. a log2 scale). ``tokens`` names the unit
    (tokens_name: the tokenizer the counts come from). ``caps`` (group columns,
    ``max_new_tokens``, ``hit``, ``n``; ``core.compare.budget_caps``) marks where a group's
    generations were cut: a dotted vertical line in the group's colour at its max new tokens,
    saying how many of its answers stopped there.
    """
    cols = [c for c in group_cols if c in acc.columns]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Accuracy", "Truncation rate"), horizontal_spacing=0.08)
    groups = acc.select(cols).unique(maintain_order=True) if cols else pl.DataFrame({"_": [0]})
    labels = group_labels(groups, cols) if cols else ["all"]
    excluded = 0
    for i, (label, key) in enumerate(zip(labels, groups.iter_rows(named=True))):
        part = acc
        for c in cols:
            part = part.filter(pl.col(c).is_null() if key[c] is None else pl.col(c) == key[c])
        part = part.sort("budget")
        excluded += int(part["excluded"][0]) if part.height else 0
        colour = _PALETTE[i % len(_PALETTE)]
        budgets = part["budget"].to_list()
        n = int(part["n"][0]) if part.height else 0
        for col_idx, (y_col, show) in enumerate((("accuracy", True), ("truncation_rate", False)), start=1):
            fig.add_trace(go.Scatter(
                x=budgets, y=part[y_col].to_list(), mode="lines+markers", name=label, legendgroup=label,
                showlegend=show, line={"color": colour}, customdata=[key.get("model")] * len(budgets),
                hovertemplate=f"{label}<br>budget %{{x:,}}: %{{y:.1%}} (n={n:,})<extra></extra>",
            ), row=1, col=col_idx)
    if caps is not None and caps.height:
        _draw_caps(fig, caps, groups, labels, cols)
    ticks = sorted(set(acc["budget"].to_list())) if acc.height else []
    fig.update_xaxes(type="log", tickmode="array", tickvals=ticks, ticktext=[budget_label(t) for t in ticks],
                     title_text=f"budget in {tokens} (log2 scale)")
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    note = "a CoT longer than the budget counts as wrong and truncated"
    if excluded:
        note += f"; {excluded:,} without a token count or correctness left out"
    fig.update_layout(
        title=_title("Accuracy across token budgets", n_cots, note),
        height=460 + (9 * len(labels) if len(labels) > 8 else 0), margin={"t": 90}, legend=_legend(len(labels)),
    )
    if not acc.height:
        _empty_note(fig, "No CoT has both a token count and a correctness value")
    return inert_figure(fig)


def _draw_caps(fig: go.Figure, caps: pl.DataFrame, groups: pl.DataFrame, labels: list[str], cols: list[str]) -> None:
    """A dotted vertical line per capped group (a trace, so it sits right on the log axis)."""
    keys = [tuple(row[c] for c in cols) for row in groups.iter_rows(named=True)] if cols else [()]
    for row in caps.iter_rows(named=True):
        key = tuple(row.get(c) for c in cols)
        if key not in keys or not row.get("max_new_tokens"):
            continue
        i = keys.index(key)
        cap, hit, n = int(row["max_new_tokens"]), int(row.get("hit") or 0), int(row.get("n") or 0)
        text = f"{labels[i]}: max new tokens {cap:,}; {hit:,} of {n:,} answers stopped there"
        for col_idx in (1, 2):
            fig.add_trace(go.Scatter(
                x=[cap, cap], y=[0, 1.02], mode="lines", line={"color": _PALETTE[i % len(_PALETTE)], "dash": "dot", "width": 1.5},
                name=f"max new tokens · {labels[i]}", legendgroup=f"cap {labels[i]}", showlegend=col_idx == 1,
                hovertemplate=text + "<extra></extra>", meta={"max_new_tokens": cap, "hit": hit, "n": n},
            ), row=1, col=col_idx)


def budget_table(acc: pl.DataFrame, group_cols: Sequence[str] = GROUP_COLUMNS) -> pl.DataFrame:
    """The numbers behind ``budget_figure``, one row per group: ``n``, ``full_accuracy`` and one
    ``acc@<budget>`` and ``trunc@<budget>`` column per budget (fractions, not percent)."""
    cols = [c for c in group_cols if c in acc.columns]
    if acc.height == 0:
        return pl.DataFrame(schema={**{c: acc.schema[c] for c in cols}, "n": pl.Int64, "full_accuracy": pl.Float64})
    base = acc.group_by(cols, maintain_order=True).agg(
        pl.col("n").first(), pl.col("excluded").first(), pl.col("full_accuracy").first()
    )
    wide = base
    for b in sorted(set(acc["budget"].to_list())):
        at = acc.filter(pl.col("budget") == b).select(
            *cols, pl.col("accuracy").alias(f"acc@{budget_label(b)}"), pl.col("truncation_rate").alias(f"trunc@{budget_label(b)}")
        )
        wide = wide.join(at, on=cols, how="left", nulls_equal=True)
    acc_cols = [c for c in wide.columns if c.startswith("acc@")]
    trunc_cols = [c for c in wide.columns if c.startswith("trunc@")]
    return wide.select(*cols, "n", "excluded", "full_accuracy", *acc_cols, *trunc_cols).sort(cols, nulls_last=True)


# --------------------------------------------------------------------------- Mean@k / Pass@k


def mean_pass_at_k_figure(mp: pl.DataFrame, *, n_cots: int, k: int, group_cols: Sequence[str] = GROUP_COLUMNS) -> go.Figure:
    """Horizontal bars of Mean@k and Pass@k per group (``metrics.mean_and_pass_at_k``).

    Each bar's ``customdata`` is its model, so a click can narrow the filter to that model.
    """
    cols = [c for c in group_cols if c in mp.columns]
    labels = group_labels(mp, cols) if cols else ["all"] * mp.height
    models = mp["model"].to_list() if "model" in mp.columns else [None] * mp.height
    fig = go.Figure()
    for col, name, colour in (("mean_at_k", f"Mean@{k}", "#4c78a8"), ("pass_at_k", f"Pass@{k}", "#f58518")):
        values = mp[col].to_list()
        fig.add_trace(go.Bar(
            y=labels, x=values, name=name, orientation="h", marker_color=colour, customdata=models,
            text=[None if v is None else f"{v:.1%}" for v in values], textposition="outside",
            hovertemplate=f"%{{y}}<br>{name}: %{{x:.2%}}<extra></extra>",
        ))
    skipped = int(mp["problems_skipped"].sum()) if mp.height else 0
    note = f"problems with fewer than {k} judged samples left out: {skipped:,}" if skipped else None
    fig.update_layout(
        title=_title(f"Mean@{k} and Pass@{k}", n_cots, note), barmode="group",
        xaxis={"range": [0, 1.12], "tickformat": ".0%", "title": "share"},
        yaxis={"autorange": "reversed", "automargin": True},
        height=max(300, 140 + 46 * len(labels)), margin={"t": 90},
        legend={"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 1.0, "xanchor": "right"},
    )
    if not mp.height:
        _empty_note(fig, "No CoT has a correctness value")
    return inert_figure(fig)


# --------------------------------------------------------------------------- per problem


def pass_rate_scatter(
    pr: pl.DataFrame, *, n_cots: int, group_cols: Sequence[str] = GROUP_COLUMNS, log_x: bool = True,
    tokens: str = "tokens",
) -> go.Figure:
    """Per problem and group: mean token length (x) against pass rate (y), from
    ``metrics.problem_pass_rates``; problems with no judged sample or no length are left out.
    Each point's ``customdata`` is ``[problem_id, judged samples]``. Beyond
    ``SCATTER_POINT_LIMIT`` points (a browser cannot draw millions of markers) every point is
    counted into a density heatmap instead."""
    cols = [c for c in group_cols if c in pr.columns]
    usable = pr.filter(pl.col("pass_rate").is_not_null() & pl.col("mean_tokens").is_not_null())
    if usable.height > SCATTER_POINT_LIMIT:
        return _pass_rate_density(usable, n_cots=n_cots, left_out=pr.height - usable.height, log_x=log_x, tokens=tokens)
    fig = go.Figure()
    groups = usable.select(cols).unique(maintain_order=True) if cols else pl.DataFrame()
    labels = group_labels(groups, cols) if cols else ["all"]
    # WebGL only where SVG would struggle: it keeps small charts crisp in any browser
    trace_type = go.Scattergl if usable.height > 5000 else go.Scatter
    for i, label in enumerate(labels):
        part = usable
        if cols:
            key = groups.row(i, named=True)
            for c in cols:
                part = part.filter(pl.col(c).is_null() if key[c] is None else pl.col(c) == key[c])
        fig.add_trace(trace_type(
            x=part["mean_tokens"].to_list(), y=part["pass_rate"].to_list(), mode="markers", name=label,
            marker={"color": _PALETTE[i % len(_PALETTE)], "size": 6, "opacity": 0.7},
            customdata=list(zip(part["problem_id"].to_list(), part["n"].to_list())),
            hovertemplate=f"{label}<br>problem %{{customdata[0]}}: pass %{{y:.0%}} of %{{customdata[1]}}, "
                          "mean %{x:,.0f} tokens<extra></extra>",
        ))
    left_out = pr.height - usable.height
    note = f"{usable.height:,} problem × group points" + (f"; {left_out:,} without a judged sample or length" if left_out else "")
    if log_x and usable.height and usable["mean_tokens"].min() <= 0:
        note += "; problems with 0 mean tokens sit off the log axis"
    fig.update_layout(
        title=_title("Per-problem pass rate against mean length", n_cots, note),
        xaxis={"title": f"mean {tokens} per CoT of the problem", "type": "log" if log_x else "linear"},
        yaxis={"title": "pass rate", "tickformat": ".0%", "range": [-0.05, 1.05]},
        height=480 + (9 * len(labels) if len(labels) > 8 else 0), margin={"t": 90}, legend=_legend(len(labels)),
    )
    if not usable.height:
        _empty_note(fig, "No problem has both a judged sample and a token count")
    return inert_figure(fig)


def _pass_rate_density(usable: pl.DataFrame, *, n_cots: int, left_out: int, log_x: bool,
                       x_bins: int = 60, y_bins: int = 20, tokens: str = "tokens") -> go.Figure:
    """Counts of problem × group points in (mean tokens, pass rate) bins: the scatter for data
    too large to draw point by point."""
    x = usable["mean_tokens"].to_numpy()
    y = usable["pass_rate"].to_numpy()
    off_axis = 0
    if log_x:
        keep = x > 0
        off_axis = int((~keep).sum())
        x, y = x[keep], y[keep]
    lo, hi = (float(x.min()), float(x.max())) if len(x) else (1.0, 2.0)
    hi = hi if hi > lo else lo + 1.0
    x_edges = np.geomspace(lo, hi, x_bins + 1) if log_x else np.linspace(lo, hi, x_bins + 1)
    y_edges = np.linspace(0.0, 1.0, y_bins + 1)
    counts, _, _ = np.histogram2d(y, x, bins=[y_edges, x_edges])
    x_mid = np.sqrt(x_edges[:-1] * x_edges[1:]) if log_x else (x_edges[:-1] + x_edges[1:]) / 2
    fig = go.Figure(go.Heatmap(
        x=x_mid.tolist(), y=((y_edges[:-1] + y_edges[1:]) / 2).tolist(), z=counts.astype(int).tolist(),
        colorscale="Blues", colorbar={"title": "points"},
        hovertemplate="about %{x:,.0f} tokens, pass ≈ %{y:.0%}: %{z:,} problems<extra></extra>",
    ))
    note = f"{usable.height:,} problem × group points, too many to draw one by one, counted in bins"
    if left_out:
        note += f"; {left_out:,} without a judged sample or length"
    if off_axis:
        note += f"; {off_axis:,} with 0 mean tokens off the log axis"
    fig.update_layout(
        title=_title("Per-problem pass rate against mean length", n_cots, note),
        xaxis={"title": f"mean {tokens} per CoT of the problem", "type": "log" if log_x else "linear"},
        yaxis={"title": "pass rate", "tickformat": ".0%"}, height=480, margin={"t": 90},
    )
    return inert_figure(fig)


def max_samples_per_problem(df: pl.DataFrame, group_cols: Sequence[str] = GROUP_COLUMNS) -> int:
    """The most CoTs with a known verdict any one problem has within one group: the largest k
    Mean@k and Pass@k can use (they count only samples whose correctness is known, as
    ``metrics.mean_and_pass_at_k`` does)."""
    cols = [c for c in group_cols if c in df.columns]
    if "correct" in df.columns:
        df = df.filter(metrics._correct_bool(df).is_not_null())
    if df.height == 0:
        return 0
    return int(df.group_by([*cols, "problem_id"]).len()["len"].max())
