"""core.charts: the figures show exactly the numbers of their metric inputs.

Expected values are worked out by hand for a small frame, so a chart that drew the wrong column,
dropped a group or shifted a bin would fail here without a browser.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
import polars as pl
import pytest

from core import charts, metrics

# Two models, two problems each, two samples per problem.
#   A: p1 (correct, 1000 tokens), (wrong, 3000); p2 (correct, 5000), (correct, 1500)
#   B: p1 (wrong, 9000), (wrong, 10000);        p2 (correct, 2000), (unknown, no count)
FRAME = pl.DataFrame(
    {
        "cot_id": [1, 2, 3, 4, 5, 6, 7, 8],
        "problem_id": [1, 1, 2, 2, 1, 1, 2, 2],
        "dataset": ["d"] * 8,
        "model": ["A"] * 4 + ["B"] * 4,
        "benchmark": ["bench"] * 8,
        "n_tokens": [1000, 3000, 5000, 1500, 9000, 10000, 2000, None],
        "truncated": [False] * 8,
        "correct": [True, False, True, True, False, False, True, None],
        "rv": [1, 1, 2, None, 5, 5, 9, 0],
        "cd": [3, 3, None, 4, 5, 6, 9, None],
    },
    schema_overrides={"rv": pl.Int64, "cd": pl.Int64, "n_tokens": pl.Int64},
)


def _title(fig: go.Figure) -> str:
    return fig.layout.title.text


def test_score_histogram_bars_are_the_level_counts():
    hist = metrics.score_histogram(FRAME, col="rv")
    fig = charts.score_histogram_figure(hist, metric="rv", source="judge", n_cots=FRAME.height,
                                        unscored=metrics.score_null_count(FRAME, col="rv"))
    (bar,) = fig.data
    assert list(bar.x) == list(range(10))
    # rv values 1, 1, 2, 5, 5, 9, 0 (one null)
    assert list(bar.y) == [1, 2, 1, 0, 0, 2, 0, 0, 0, 1]
    assert list(bar.customdata) == list(range(10))  # what a click narrows the filter to
    assert "computed on 8 CoTs (all matching rows)" in _title(fig)
    assert "1 without RV" in _title(fig)
    assert "judge" in _title(fig)


def test_cd_histogram_counts():
    fig = charts.score_histogram_figure(metrics.score_histogram(FRAME, col="cd"), metric="cd", source="s",
                                        n_cots=8, unscored=2)
    assert list(fig.data[0].y) == [0, 0, 0, 2, 1, 1, 1, 0, 0, 1]
    assert "Cognitive Difficulty" in _title(fig)


def test_heatmap_z_matrix_rows_are_rv_columns_cd():
    fig = charts.rv_cd_heatmap(metrics.rv_cd_matrix(FRAME), rv_source="r", cd_source="c", n_cots=8)
    heat, cells = fig.data
    z = [list(row) for row in heat.z]
    expected = [[0] * 10 for _ in range(10)]
    # (rv, cd) pairs with both set: (1,3), (1,3), (5,5), (5,6), (9,9)
    for rv, cd in [(1, 3), (1, 3), (5, 5), (5, 6), (9, 9)]:
        expected[rv][cd] += 1
    assert z == expected
    assert list(heat.text[1]) == expected[1]  # counts written in the cells
    assert sum(map(sum, z)) == 5
    # the clickable cell markers carry the same counts at (x = CD, y = RV)
    assert {(x, y): n for x, y, n in zip(cells.x, cells.y, cells.customdata)} == {
        (cd, rv): expected[rv][cd] for rv in range(10) for cd in range(10)}
    assert "5 have both RV and CD" in _title(fig)
    assert "computed on 8 CoTs" in _title(fig)


def test_length_histogram_shared_bins_and_counts():
    frame = charts.length_distribution_frame(FRAME, facet_by="model", kind="histogram", bins=9)
    # one set of edges for every facet and label
    edges = {tuple(g["bin_start"].to_list()) for _, g in frame.group_by(["facet", "correct"])}
    assert len(edges) == 1
    starts = frame.filter((pl.col("facet") == "A") & (pl.col("correct") == "correct"))["bin_start"].to_list()
    assert starts[0] == 1000.0 and math.isclose(starts[1], 2000.0)  # 1000..10000 in 9 bins of 1000
    # counts per facet and label are the number of rows with a length
    totals = {(f, c): n for f, c, n in frame.group_by(["facet", "correct"]).agg(pl.col("count").sum()).iter_rows()}
    assert totals == {("A", "correct"): 3, ("A", "incorrect"): 1, ("B", "incorrect"): 2, ("B", "correct"): 1}

    fig = charts.length_distribution_figure(frame, kind="histogram", n_cots=8, facet_label="model",
                                            no_length=1, correctness_source="harness")
    traces = {(t.meta, t.name): t for t in fig.data}
    assert set(traces) == set(totals)
    a_correct = traces[("A", "correct")]
    counts = frame.filter((pl.col("facet") == "A") & (pl.col("correct") == "correct"))["count"].to_list()
    assert list(a_correct.y) == counts and a_correct.type == "bar"
    # A correct: 1000 and 1500 fall in the first bin, 5000 in the fifth
    assert counts[0] == 2 and counts[4] == 1 and sum(counts) == 3
    assert "computed on 8 CoTs" in _title(fig) and "1 without a token count" in _title(fig)
    # side by side: within each bin of 1000 tokens, correct in the first half, incorrect in the second,
    # never over each other (overlaid translucent fills turned brown, issue 11)
    a_wrong = traces[("A", "incorrect")]
    for j in range(9):
        left = (a_correct.x[j] - a_correct.width[j] / 2, a_correct.x[j] + a_correct.width[j] / 2)
        right = (a_wrong.x[j] - a_wrong.width[j] / 2, a_wrong.x[j] + a_wrong.width[j] / 2)
        assert 1000 + 1000 * j <= left[0] < left[1] <= right[0] < right[1] <= 2000 + 1000 * j
    assert fig.layout.barmode == "overlay"
    # a bar's customdata: the whole token counts it holds, its label and panel (what a click narrows to)
    assert [list(d) for d in a_correct.customdata[:2]] == [[1000, 1999, "correct", "A"], [2000, 2999, "correct", "A"]]
    assert list(a_correct.customdata[-1][:2]) == [9000, 10000]  # the last bin holds its end


def test_log_histogram_keeps_bin_widths_on_a_labelled_linear_axis():
    frame = charts.length_distribution_frame(FRAME, kind="histogram", bins=4, log=True)
    fig = charts.length_distribution_figure(frame, kind="histogram", n_cots=8, log_x=True)
    correct = next(t for t in fig.data if t.name == "correct")
    starts = frame.filter(pl.col("correct") == "correct")["bin_start"].to_list()
    # drawn over log10(tokens): 1000 .. 10000 is 3 .. 4, in 4 bins of 0.25
    assert math.log10(starts[0]) == pytest.approx(3.0)
    assert correct.x[0] == pytest.approx(3.0 + 0.25 / 2 / 2)  # the first of two slots of the first bin
    assert fig.layout.xaxis.type == "linear"
    ticks = dict(zip(fig.layout.xaxis.ticktext, fig.layout.xaxis.tickvals))
    assert ticks["1k"] == pytest.approx(3.0) and ticks["10k"] == pytest.approx(4.0) and ticks["2k"] == pytest.approx(math.log10(2000))


def test_length_frame_cd_facets_and_unknown_label():
    frame = charts.length_distribution_frame(FRAME, facet_by="cd", kind="histogram", bins=3)
    assert set(frame["facet"].unique()) == {"CD 3", "CD 4", "CD 5", "CD 6", "CD 9", "CD unscored"}
    unscored = frame.filter(pl.col("facet") == "CD unscored")
    # cot 3 (correct, 5000) and cot 8 (unknown correctness, no length: left out)
    assert unscored.group_by("correct").agg(pl.col("count").sum()).rows() == [("correct", 1)]


def test_ecdf_variant_ends_at_one_per_label():
    frame = charts.length_distribution_frame(FRAME, facet_by=None, kind="ecdf")
    last = frame.group_by("correct").agg(pl.col("cum_share").last(), pl.col("length").max())
    assert dict(last.select("correct", "cum_share").iter_rows()) == {"correct": 1.0, "incorrect": 1.0}
    fig = charts.length_distribution_figure(frame, kind="ecdf", n_cots=8, log_x=True)
    correct = next(t for t in fig.data if t.name == "correct")
    assert list(correct.x) == [1000.0, 1500.0, 2000.0, 5000.0]
    assert list(correct.y) == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert fig.layout.xaxis.type == "log"


def test_budget_curves_are_hand_computed_accuracy_and_truncation():
    acc = metrics.accuracy_at_budgets(FRAME, budgets=[2048, 4096, 8192], group_by=charts.GROUP_COLUMNS)
    fig = charts.budget_figure(acc, n_cots=8)
    by_name = {}
    for t in fig.data:
        by_name.setdefault(t.name, []).append(t)
    assert set(by_name) == {"A", "B"}  # dataset and benchmark are constant, so not in the label
    a_acc, a_trunc = by_name["A"]
    b_acc, b_trunc = by_name["B"]
    assert list(a_acc.x) == [2048, 4096, 8192]
    assert list(a_acc.y) == pytest.approx([0.5, 0.5, 0.75])
    assert list(a_trunc.y) == pytest.approx([0.5, 0.25, 0.0])
    # B: the row with unknown correctness and no count is left out (3 usable rows)
    assert list(b_acc.y) == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    assert list(b_trunc.y) == pytest.approx([2 / 3, 2 / 3, 2 / 3])
    assert fig.layout.xaxis.type == "log" and list(fig.layout.xaxis.ticktext) == ["2k", "4k", "8k"]
    assert "computed on 8 CoTs" in _title(fig) and "1 without a token count or correctness" in _title(fig)

    table = charts.budget_table(acc)
    rows = {r["model"]: r for r in table.iter_rows(named=True)}
    assert rows["A"]["acc@2k"] == pytest.approx(0.5) and rows["A"]["trunc@4k"] == pytest.approx(0.25)
    assert rows["A"]["full_accuracy"] == pytest.approx(0.75) and rows["B"]["full_accuracy"] == pytest.approx(1 / 3)
    assert rows["B"]["n"] == 3 and rows["B"]["excluded"] == 1


def test_mean_and_pass_at_k_bars():
    mp1 = metrics.mean_and_pass_at_k(FRAME, k=1, group_by=charts.GROUP_COLUMNS)
    fig = charts.mean_pass_at_k_figure(mp1, n_cots=8, k=1)
    mean, pas = fig.data
    assert (mean.name, pas.name) == ("Mean@1", "Pass@1")
    assert list(mean.y) == ["A", "B"] and list(mean.customdata) == ["A", "B"]
    # A: p1 1/2, p2 2/2 -> 0.75; B: p1 0/2, p2 1/1 (the unknown sample is ignored) -> 0.5
    assert list(mean.x) == pytest.approx([0.75, 0.5])
    assert list(pas.x) == pytest.approx([0.75, 0.5])

    mp2 = metrics.mean_and_pass_at_k(FRAME, k=2, group_by=charts.GROUP_COLUMNS)
    fig2 = charts.mean_pass_at_k_figure(mp2, n_cots=8, k=2)
    mean2, pass2 = fig2.data
    # A: pass@2 is 1 on both problems; B: p2 has one judged sample, so only p1 (0 of 2) counts
    assert list(mean2.x) == pytest.approx([0.75, 0.0])
    assert list(pass2.x) == pytest.approx([1.0, 0.0])
    assert "fewer than 2 judged samples left out: 1" in _title(fig2)
    assert charts.max_samples_per_problem(FRAME) == 2


def test_pass_rate_scatter_points():
    pr = metrics.problem_pass_rates(FRAME, group_by=charts.GROUP_COLUMNS)
    fig = charts.pass_rate_scatter(pr, n_cots=8, log_x=False)
    a = next(t for t in fig.data if t.name == "A")
    assert list(a.x) == pytest.approx([2000.0, 3250.0])  # mean tokens of p1, p2
    assert list(a.y) == pytest.approx([0.5, 1.0])
    assert [list(c) for c in a.customdata] == [[1, 2], [2, 2]]
    b = next(t for t in fig.data if t.name == "B")
    assert list(b.y) == pytest.approx([0.0, 1.0])


def test_group_labels_name_what_varies():
    df = pl.DataFrame({"dataset": ["d", "d"], "model": ["m", "m"], "benchmark": ["aime24", "math500"]})
    assert charts.group_labels(df) == ["m · aime24", "m · math500"]


def test_generated_datasets_are_labelled():
    assert charts.dataset_label("demo", True) == "demo (generated)"
    assert charts.dataset_label("demo (generated)", True) == "demo (generated)"
    assert charts.dataset_label("real", False) == "real"
    df = pl.DataFrame({"dataset": ["demo", "real", None]})
    assert charts.label_generated(df, ["demo"])["dataset"].to_list() == ["demo (generated)", "real", None]


def test_empty_inputs_give_figures_that_say_so():
    empty = FRAME.head(0)
    frame = charts.length_distribution_frame(empty)
    assert frame.height == 0
    fig = charts.length_distribution_figure(frame, kind="histogram", n_cots=0)
    assert "computed on 0 CoTs" in _title(fig) and fig.layout.annotations
    fig = charts.budget_figure(metrics.accuracy_at_budgets(empty, group_by=charts.GROUP_COLUMNS), n_cots=0)
    assert any("No CoT" in a.text for a in fig.layout.annotations)
    assert charts.max_samples_per_problem(empty) == 0


def test_pass_rate_density_counts_every_point_when_too_many(monkeypatch):
    monkeypatch.setattr(charts, "SCATTER_POINT_LIMIT", 2)
    pr = metrics.problem_pass_rates(FRAME, group_by=charts.GROUP_COLUMNS)
    fig = charts.pass_rate_scatter(pr, n_cots=8, log_x=True)
    (heat,) = fig.data
    assert heat.type == "heatmap"
    assert sum(map(sum, heat.z)) == 4  # A p1, A p2, B p1, B p2
    # the 1.0 pass rates sit in the top row, the 0.0 in the bottom one
    assert sum(heat.z[-1]) == 2 and sum(heat.z[0]) == 1 and sum(heat.z[10]) == 1
    assert "4 problem × group points" in _title(fig)


def test_long_ecdf_is_thinned_but_keeps_its_shape(monkeypatch):
    monkeypatch.setattr(charts, "ECDF_POINTS", 10)
    lengths = list(range(1, 1001))
    df = pl.DataFrame({"n_tokens": lengths, "correct": [True] * 1000})
    frame = charts.length_distribution_frame(df, kind="ecdf")
    assert frame.height == 1000
    (trace,) = charts.length_distribution_figure(frame, kind="ecdf", n_cots=1000).data
    assert len(trace.x) <= 11 and trace.x[-1] == 1000 and trace.y[-1] == 1.0
    # each drawn point is a true point of the ECDF
    assert all(y == pytest.approx(x / 1000) for x, y in zip(trace.x, trace.y))
    assert max(b - a for a, b in zip([0.0, *trace.y], trace.y)) <= 0.1 + 1e-9
