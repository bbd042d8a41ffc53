"""core.metrics against small frames whose answers were worked out by hand."""

from __future__ import annotations

import math

import polars as pl
import pytest


from core.metrics import (  # noqa: E402
    accuracy_at_budgets,
    ecdf,
    length_by_correctness,
    length_histogram,
    mean_and_pass_at_k,
    pass_at_k,
    problem_pass_rates,
    rv_cd_matrix,
    score_histogram,
    score_null_count,
)

approx = pytest.approx

EMPTY = pl.DataFrame(
    schema={
        "problem_id": pl.Int64,
        "model": pl.String,
        "n_tokens": pl.Int64,
        "correct": pl.Boolean,
        "truncated": pl.Boolean,
        "rv": pl.Int64,
        "cd": pl.Int64,
    }
)


def rows_of(df: pl.DataFrame) -> list[dict]:
    return df.to_dicts()


# --------------------------------------------------------------------------- pass_at_k


@pytest.mark.parametrize(
    "n,c,k,expected",
    [
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (10, 3, 1, 0.3),  # pass@1 = c/n
        (10, 5, 3, 11 / 12),  # 1 - C(5,3)/C(10,3) = 1 - 10/120
        (4, 2, 2, 5 / 6),  # 1 - C(2,2)/C(4,2) = 1 - 1/6
        (10, 0, 3, 0.0),  # all wrong
        (3, 3, 1, 1.0),  # all correct
        (4, 1, 4, 1.0),  # n - c = 3 < k = 4
        (1, 0, 1, 0.0),
        (1, 1, 1, 1.0),
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == approx(expected)


def test_pass_at_k_matches_binomial_form_for_large_n():
    for n, c, k in [(200, 13, 10), (64, 1, 32), (100, 50, 1), (1000, 3, 100)]:
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == approx(exact, rel=1e-9, abs=1e-12)


def test_pass_at_k_k_zero_is_zero():
    assert pass_at_k(5, 2, 0) == 0.0


@pytest.mark.parametrize("n,c,k", [(3, 1, 4), (3, 4, 1), (-1, 0, 0), (3, -1, 1), (3, 1, -1)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


# --------------------------------------------------------------------------- mean_and_pass_at_k


def _pk_frame() -> pl.DataFrame:
    # model A: p1 [T,F,F,T] n=4 c=2; p2 [F,F,F] n=3 c=0; p3 [T] n=1; p4 [T,None,T] n=2 c=2
    # model B: p1 [T,T] n=2 c=2 (all correct);  model C: p1 [F,F] n=2 c=0 (all wrong)
    # model D: p1 [None, None] n=0
    rows = (
        [("A", 1, v) for v in (True, False, False, True)]
        + [("A", 2, v) for v in (False, False, False)]
        + [("A", 3, True)]
        + [("A", 4, v) for v in (True, None, True)]
        + [("B", 1, True), ("B", 1, True)]
        + [("C", 1, False), ("C", 1, False)]
        + [("D", 1, None), ("D", 1, None)]
    )
    return pl.DataFrame(
        {
            "model": [r[0] for r in rows],
            "problem_id": [r[1] for r in rows],
            "correct": [r[2] for r in rows],
        },
        schema={"model": pl.String, "problem_id": pl.Int64, "correct": pl.Boolean},
    )


def test_mean_and_pass_at_k_k2():
    out = mean_and_pass_at_k(_pk_frame(), k=2)
    assert out.columns == ["model", "k", "problems", "problems_skipped", "mean_at_k", "pass_at_k"]
    by = {r["model"]: r for r in rows_of(out)}
    assert list(by) == ["A", "B", "C", "D"]
    a = by["A"]
    assert (a["k"], a["problems"], a["problems_skipped"]) == (2, 3, 1)
    assert a["mean_at_k"] == approx((0.5 + 0.0 + 1.0) / 3)
    assert a["pass_at_k"] == approx((5 / 6 + 0.0 + 1.0) / 3)  # = 11/18
    assert (by["B"]["mean_at_k"], by["B"]["pass_at_k"]) == (1.0, 1.0)
    assert (by["C"]["mean_at_k"], by["C"]["pass_at_k"]) == (0.0, 0.0)
    d = by["D"]
    assert (d["problems"], d["problems_skipped"], d["mean_at_k"], d["pass_at_k"]) == (0, 1, None, None)


def test_mean_and_pass_at_k_k1_equals_mean():
    out = mean_and_pass_at_k(_pk_frame(), k=1)
    a = out.filter(pl.col("model") == "A").row(0, named=True)
    assert (a["problems"], a["problems_skipped"]) == (4, 0)
    assert a["mean_at_k"] == approx(0.625)  # (0.5 + 0 + 1 + 1) / 4
    assert a["pass_at_k"] == approx(0.625)


def test_mean_and_pass_at_k_all_skipped_when_k_large():
    out = mean_and_pass_at_k(_pk_frame(), k=5)
    a = out.filter(pl.col("model") == "A").row(0, named=True)
    assert (a["problems"], a["problems_skipped"], a["mean_at_k"], a["pass_at_k"]) == (0, 4, None, None)


def test_mean_and_pass_at_k_float_correctness_and_grouping():
    df = pl.DataFrame(
        {
            "model": ["m"] * 6,
            "dataset": ["x", "x", "x", "y", "y", "y"],
            "problem_id": [1, 1, 1, 1, 1, 1],
            "correct": [1.0, 0.0, float("nan"), 1.0, 1.0, None],
        }
    )
    out = mean_and_pass_at_k(df, k=2, group_by=["model", "dataset"])
    assert out.columns[:2] == ["model", "dataset"]
    x, y = rows_of(out)
    assert x["dataset"] == "x" and x["mean_at_k"] == approx(0.5) and x["pass_at_k"] == approx(1.0)
    assert y["dataset"] == "y" and y["mean_at_k"] == approx(1.0) and y["pass_at_k"] == approx(1.0)
    # no grouping: one row over everything (problem 1 pools all 4 known samples: n=4, c=3)
    overall = mean_and_pass_at_k(df, k=2, group_by=[])
    assert overall.columns == ["k", "problems", "problems_skipped", "mean_at_k", "pass_at_k"]
    assert overall.height == 1
    assert overall["mean_at_k"][0] == approx(0.75)
    assert overall["pass_at_k"][0] == approx(1.0)  # n - c = 1 < 2


def test_mean_and_pass_at_k_empty_and_bad_k():
    out = mean_and_pass_at_k(EMPTY, k=2)
    assert out.height == 0
    assert out.columns == ["model", "k", "problems", "problems_skipped", "mean_at_k", "pass_at_k"]
    assert mean_and_pass_at_k(pl.DataFrame(), k=1).columns == out.columns
    with pytest.raises(ValueError):
        mean_and_pass_at_k(_pk_frame(), k=0)
    with pytest.raises(ValueError):
        mean_and_pass_at_k(_pk_frame().drop("problem_id"), k=1)


# --------------------------------------------------------------------------- budgets


def _budget_frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "model": ["A"] * 6 + ["B"],
            "n_tokens": [100, 200, 300, 400, None, 50, 5000],
            "correct": [True, True, False, False, True, None, True],
            "truncated": [False, False, False, True, False, False, False],
        }
    )


BUDGET_COLS = ["model", "budget", "n", "accuracy", "truncation_rate", "excluded", "full_accuracy"]


def test_accuracy_at_budgets_hand_values():
    out = accuracy_at_budgets(_budget_frame(), budgets=[1000, 100, 250, 250])
    assert out.columns == BUDGET_COLS
    got = [
        (r["model"], r["budget"], r["n"], r["accuracy"], r["truncation_rate"], r["excluded"], r["full_accuracy"])
        for r in rows_of(out)
    ]
    assert got == [
        # B=100: solved only the 100-token CoT (exactly B is within budget); 200/300/400 > B
        ("A", 100, 4, approx(0.25), approx(0.75), 2, approx(0.5)),
        # B=250: 100 and 200 solved; 300 > B and 400 > B
        ("A", 250, 4, approx(0.5), approx(0.5), 2, approx(0.5)),
        # B=1000: nothing longer than B, but the 400-token CoT is flagged truncated
        ("A", 1000, 4, approx(0.5), approx(0.25), 2, approx(0.5)),
        ("B", 100, 1, approx(0.0), approx(1.0), 0, approx(1.0)),
        ("B", 250, 1, approx(0.0), approx(1.0), 0, approx(1.0)),
        ("B", 1000, 1, approx(0.0), approx(1.0), 0, approx(1.0)),
    ]


def test_accuracy_at_budgets_without_truncated_column_and_float_correct():
    df = pl.DataFrame({"model": ["m"] * 3, "n_tokens": [10, 20, 30], "correct": [1.0, 0.0, 1.0]})
    out = accuracy_at_budgets(df, budgets=[20])
    r = out.row(0, named=True)
    assert (r["n"], r["excluded"]) == (3, 0)
    assert r["accuracy"] == approx(1 / 3)
    assert r["truncation_rate"] == approx(1 / 3)
    assert r["full_accuracy"] == approx(2 / 3)


def test_accuracy_at_budgets_all_excluded_group_and_empty():
    df = pl.DataFrame(
        {"model": ["z", "z"], "n_tokens": [None, 5], "correct": [True, None], "truncated": [False, False]},
        schema={"model": pl.String, "n_tokens": pl.Int64, "correct": pl.Boolean, "truncated": pl.Boolean},
    )
    r = accuracy_at_budgets(df, budgets=[10]).row(0, named=True)
    assert (r["n"], r["excluded"], r["accuracy"], r["truncation_rate"], r["full_accuracy"]) == (
        0,
        2,
        None,
        None,
        None,
    )
    empty = accuracy_at_budgets(EMPTY)
    assert empty.height == 0 and empty.columns == BUDGET_COLS
    default = accuracy_at_budgets(_budget_frame())
    assert default.filter(pl.col("model") == "A")["budget"].to_list() == [2048, 4096, 8192, 16384, 32768]


# --------------------------------------------------------------------------- length_by_correctness


def test_length_by_correctness_hand_values():
    df = pl.DataFrame(
        {
            "model": ["A"] * 8 + ["B"],
            "n_tokens": [10, 20, 30, 40, 50, 100, 7, None, 3],
            "correct": [True, True, True, True, True, False, None, None, False],
        }
    )
    out = length_by_correctness(df)
    assert out.columns == ["model", "correct", "count", "mean", "median", "p10", "p90"]
    got = [tuple(r.values()) for r in rows_of(out)]
    assert got == [
        # linear quantiles of [10..50]: p10 at position 0.4 -> 14, p90 at 3.6 -> 46
        ("A", "correct", 5, approx(30.0), approx(30.0), approx(14.0), approx(46.0)),
        ("A", "incorrect", 1, approx(100.0), approx(100.0), approx(100.0), approx(100.0)),
        ("A", "unknown", 1, approx(7.0), approx(7.0), approx(7.0), approx(7.0)),  # null length dropped
        ("B", "incorrect", 1, approx(3.0), approx(3.0), approx(3.0), approx(3.0)),
    ]
    empty = length_by_correctness(EMPTY)
    assert empty.height == 0 and empty.columns == out.columns


# --------------------------------------------------------------------------- histogram / ecdf


def test_length_histogram_common_edges():
    df = pl.DataFrame(
        {"n_tokens": [0, 1, 2, 10, None], "correct": [True, True, True, False, False], "model": list("aabbb")}
    )
    out = length_histogram(df, bins=5)
    assert out.columns == ["bin_start", "bin_end", "correct", "count"]
    # edges 0,2,4,6,8,10 for both splits; [0,2) holds 0 and 1, [2,4) holds 2, last bin is closed
    assert out["bin_start"].to_list() == approx([0, 2, 4, 6, 8] * 2)
    assert out["bin_end"].to_list() == approx([2, 4, 6, 8, 10] * 2)
    assert out["correct"].to_list() == ["correct"] * 5 + ["incorrect"] * 5
    assert out["count"].to_list() == [2, 1, 0, 0, 0, 0, 0, 0, 0, 1]

    by_model = length_histogram(df, bins=5, split_by="model")
    assert by_model["model"].to_list() == ["a"] * 5 + ["b"] * 5
    assert by_model["count"].to_list() == [2, 0, 0, 0, 0, 0, 1, 0, 0, 1]

    unsplit = length_histogram(df, bins=5, split_by=None)
    assert unsplit.columns == ["bin_start", "bin_end", "count"]
    assert unsplit["count"].to_list() == [2, 1, 0, 0, 1]


def test_length_histogram_log_and_constant():
    df = pl.DataFrame({"n_tokens": [0, 1, 5, 20, 100], "correct": [True] * 5})
    out = length_histogram(df, bins=2, log=True)
    # 0 dropped under log; edges 1, 10, 100
    assert out["bin_start"].to_list() == approx([1.0, 10.0])
    assert out["bin_end"].to_list() == approx([10.0, 100.0])
    assert out["count"].to_list() == [2, 2]

    const = length_histogram(pl.DataFrame({"n_tokens": [7, 7], "correct": [True, None]}), bins=3)
    assert const["bin_start"][0] == approx(7.0) and const["bin_end"][-1] == approx(8.0)
    assert const["count"].to_list() == [1, 0, 0, 1, 0, 0]  # correct: one 7, unknown: one 7


def test_length_histogram_empty():
    out = length_histogram(EMPTY)
    assert out.height == 0 and out.columns == ["bin_start", "bin_end", "correct", "count"]
    with pytest.raises(ValueError):
        length_histogram(EMPTY, bins=0)


def test_ecdf_hand_values():
    df = pl.DataFrame({"n_tokens": [3, 1, 3, 5, 2, None], "correct": [True, True, True, True, False, False]})
    out = ecdf(df, length_col="n_tokens", split_by="correct")
    assert out.columns == ["correct", "length", "cum_share"]
    assert [tuple(r.values()) for r in rows_of(out)] == [
        ("correct", 1.0, approx(0.25)),
        ("correct", 3.0, approx(0.75)),
        ("correct", 5.0, approx(1.0)),
        ("incorrect", 2.0, approx(1.0)),
    ]
    empty = ecdf(EMPTY, length_col="n_tokens", split_by="correct")
    assert empty.height == 0 and empty.columns == out.columns


# --------------------------------------------------------------------------- scores


def test_score_histogram_and_nulls():
    df = pl.DataFrame({"rv": [0, 9, 9, 3, None, None]}, schema={"rv": pl.Int64})
    out = score_histogram(df, col="rv")
    assert out.columns == ["level", "count"]
    assert out["level"].to_list() == list(range(10))
    assert out["count"].to_list() == [1, 0, 0, 1, 0, 0, 0, 0, 0, 2]
    assert score_null_count(df, col="rv") == 2

    floats = pl.DataFrame({"cd": [2.0, float("nan"), None, 2.0]})
    assert score_histogram(floats, col="cd")["count"].to_list() == [0, 0, 2, 0, 0, 0, 0, 0, 0, 0]
    assert score_null_count(floats, col="cd") == 2

    empty = score_histogram(EMPTY, col="rv")
    assert empty["count"].to_list() == [0] * 10
    assert score_null_count(EMPTY, col="rv") == 0


def test_rv_cd_matrix():
    df = pl.DataFrame({"rv": [1, 1, 0, None, 4], "cd": [2, 2, 9, 3, None]}, schema={"rv": pl.Int64, "cd": pl.Int64})
    out = rv_cd_matrix(df)
    assert out.columns == ["rv", "cd", "count"]
    assert out.height == 100
    assert out.select("rv", "cd").rows()[:3] == [(0, 0), (0, 1), (0, 2)]
    cells = {(r["rv"], r["cd"]): r["count"] for r in rows_of(out)}
    assert cells[(1, 2)] == 2 and cells[(0, 9)] == 1
    assert sum(cells.values()) == 3
    empty = rv_cd_matrix(EMPTY)
    assert empty.height == 100 and empty["count"].sum() == 0


# --------------------------------------------------------------------------- per problem


def test_problem_pass_rates():
    df = pl.DataFrame(
        {
            "model": ["A", "A", "A", "A", "B"],
            "problem_id": [1, 1, 1, 2, 1],
            "correct": [True, False, None, None, True],
            "n_tokens": [10, 20, 60, None, 8],
        }
    )
    out = problem_pass_rates(df)
    assert out.columns == ["model", "problem_id", "n", "c", "pass_rate", "mean_tokens", "median_tokens"]
    assert [tuple(r.values()) for r in rows_of(out)] == [
        # tokens use every row of the problem, the unknown-correctness one included
        ("A", 1, 2, 1, approx(0.5), approx(30.0), approx(20.0)),
        ("A", 2, 0, 0, None, None, None),
        ("B", 1, 1, 1, approx(1.0), approx(8.0), approx(8.0)),
    ]
    empty = problem_pass_rates(EMPTY)
    assert empty.height == 0 and empty.columns == out.columns
