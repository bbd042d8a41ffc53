"""Pure metric functions over a frame of CoTs (one row per CoT).

Input columns (each function names the ones it needs; the rest are optional):

``problem_id`` (int), ``model`` (str), ``n_tokens`` (int, may be null), ``correct`` (bool, or a
0/1 number; null = unknown), ``truncated`` (bool), ``rv`` / ``cd`` (int 0-9, may be null), plus any
grouping columns (``dataset``, ``benchmark``, ...).

Conventions shared by every function:

* ``correct`` may be Boolean or numeric; a number counts as correct when it is >= 0.5 and NaN is
  treated as null (unknown).
* Functions that measure correctness (``mean_and_pass_at_k``, ``accuracy_at_budgets``,
  ``problem_pass_rates``) ignore rows whose correctness is unknown; where it matters they count
  them (``problems_skipped``, ``excluded``). ``length_by_correctness``, ``length_histogram`` and
  ``ecdf`` keep them under the label ``"unknown"``.
* ``group_by`` is any sequence of column names; an empty sequence (or None) means one group over
  the whole frame (no group columns in the output).
* Output rows are sorted by the group columns, so results are deterministic.
* An empty input frame gives an empty output frame with the documented columns. A column the
  function needs must exist unless the frame is empty.

Nothing here touches streamlit or the store.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

__all__ = [
    "CORRECTNESS_LABELS",
    "pass_at_k",
    "mean_and_pass_at_k",
    "accuracy_at_budgets",
    "length_by_correctness",
    "length_histogram",
    "ecdf",
    "score_histogram",
    "score_null_count",
    "rv_cd_matrix",
    "problem_pass_rates",
]

DEFAULT_BUDGETS: tuple[int, ...] = (2048, 4096, 8192, 16384, 32768)

#: The labels ``correct`` is mapped to where it is reported as a category, in display order.
CORRECTNESS_LABELS: tuple[str, ...] = ("correct", "incorrect", "unknown")

SCORE_LEVELS = range(10)

_ALL = "__metrics_all__"  # constant group key used when group_by is empty

# dtype given to a missing column of an empty frame
_DEFAULT_DTYPES: dict[str, pl.DataType] = {
    "problem_id": pl.Int64(),
    "n_tokens": pl.Int64(),
    "correct": pl.Boolean(),
    "truncated": pl.Boolean(),
    "rv": pl.Int64(),
    "cd": pl.Int64(),
}


# --------------------------------------------------------------------------- helpers


def _keys(group_by: Sequence[str] | str | None) -> list[str]:
    if group_by is None:
        return []
    if isinstance(group_by, str):
        return [group_by]
    return list(group_by)


def _prepare(df: pl.DataFrame, required: Sequence[str], optional: Sequence[str] = ()) -> pl.DataFrame:
    """Check ``required`` columns exist (an empty frame gets them added, typed, with no rows) and
    add any missing ``optional`` column as nulls."""
    missing = [c for c in dict.fromkeys(required) if c not in df.columns]
    if missing and df.height > 0:
        raise ValueError(f"missing column(s): {', '.join(missing)} (have: {', '.join(df.columns)})")
    add = missing + [c for c in dict.fromkeys(optional) if c not in df.columns and c not in missing]
    if add:
        df = df.with_columns(
            pl.lit(None, dtype=_DEFAULT_DTYPES.get(c, pl.String())).alias(c) for c in add
        )
    return df


def _with_all_key(df: pl.DataFrame, keys: list[str]) -> tuple[pl.DataFrame, list[str]]:
    """Group keys to use: the given ones, or a constant key when there are none."""
    if keys:
        return df, keys
    return df.with_columns(pl.lit(0, dtype=pl.Int8).alias(_ALL)), [_ALL]


def _drop_all_key(df: pl.DataFrame) -> pl.DataFrame:
    return df.drop(_ALL) if _ALL in df.columns else df


def _correct_bool(df: pl.DataFrame, col: str = "correct") -> pl.Expr:
    """``col`` as a nullable Boolean: Booleans as-is, numbers >= 0.5 true, NaN -> null."""
    dtype = df.schema[col]
    if dtype == pl.Boolean:
        return pl.col(col)
    if dtype == pl.Null:
        return pl.col(col).cast(pl.Boolean)
    if dtype == pl.String:
        s = pl.col(col).str.strip_chars().str.to_lowercase()
        return (
            pl.when(s.is_in(["true", "1", "1.0", "yes"]))
            .then(True)
            .when(s.is_in(["false", "0", "0.0", "no"]))
            .then(False)
            .otherwise(None)
        )
    if dtype.is_numeric():
        return pl.col(col).cast(pl.Float64).fill_nan(None) >= 0.5
    raise TypeError(f"column {col!r} has dtype {dtype}; expected Boolean or numeric")


def _correct_label(df: pl.DataFrame, col: str = "correct") -> pl.Expr:
    b = _correct_bool(df, col)
    return (
        pl.when(b.is_null())
        .then(pl.lit("unknown"))
        .when(b)
        .then(pl.lit("correct"))
        .otherwise(pl.lit("incorrect"))
    )


def _length(df: pl.DataFrame, col: str) -> pl.Expr:
    return pl.col(col).cast(pl.Float64).fill_nan(None)


def _sort(df: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    by = [c for c in by if c in df.columns]
    return df.sort(by, nulls_last=True, maintain_order=True) if by and df.height else df


def _label_order(col: str) -> pl.Expr:
    return pl.col(col).replace_strict(
        list(CORRECTNESS_LABELS), list(range(len(CORRECTNESS_LABELS))), default=len(CORRECTNESS_LABELS)
    )


# --------------------------------------------------------------------------- pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimate from ``n`` samples of which ``c`` are correct.

    Computes ``1 - C(n-c, k) / C(n, k)`` in the stable product form
    ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` (Chen et al., 2021).

    Returns
    -------
    float
        1.0 when ``n - c < k`` (every k-subset holds a correct sample); 0.0 when ``c == 0``.

    Raises
    ------
    ValueError
        If any argument is negative, or ``k > n`` or ``c > n``.
    """
    n, c, k = int(n), int(c), int(k)
    if n < 0 or c < 0 or k < 0:
        raise ValueError(f"pass_at_k needs non-negative n, c, k (got n={n}, c={c}, k={k})")
    if k > n:
        raise ValueError(f"pass_at_k needs k <= n (got n={n}, k={k})")
    if c > n:
        raise ValueError(f"pass_at_k needs c <= n (got n={n}, c={c})")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_and_pass_at_k(
    df: pl.DataFrame, *, k: int, group_by: Sequence[str] | None = ("model",)
) -> pl.DataFrame:
    """Mean@k and unbiased Pass@k per group.

    Per group and ``problem_id``: ``n`` = samples with known correctness (rows with null
    ``correct`` are ignored), ``c`` = correct ones. Problems with ``n < k`` are left out and
    counted in ``problems_skipped``. ``mean_at_k`` is the mean over the kept problems of ``c/n``
    (expected per-sample accuracy); ``pass_at_k`` the mean of ``pass_at_k(n, c, k)``. Both are
    null for a group with no kept problem.

    Returns
    -------
    pl.DataFrame
        Group columns, ``k``, ``problems``, ``problems_skipped``, ``mean_at_k``, ``pass_at_k``.
    """
    if int(k) < 1:
        raise ValueError(f"k must be >= 1 (got {k})")
    k = int(k)
    keys = _keys(group_by)
    df = _prepare(df, [*keys, "problem_id", "correct"])
    df, gkeys = _with_all_key(df, keys)

    per_problem = (
        df.select(*gkeys, "problem_id", _correct_bool(df).alias("_ok"))
        .group_by([*gkeys, "problem_id"], maintain_order=True)
        .agg(
            pl.col("_ok").count().cast(pl.Int64).alias("_n"),
            pl.col("_ok").cast(pl.Int64).sum().cast(pl.Int64).alias("_c"),
        )
    )
    # pass_at_k runs once per distinct (n, c) pair, not per problem: a few hundred pairs for
    # millions of CoTs, and the very same float as calling it per problem.
    pairs = per_problem.select("_n", "_c").unique().filter(pl.col("_n") >= k)
    pairs = pairs.with_columns(pl.Series(
        "_pass", [pass_at_k(n, c, k) for n, c in zip(pairs["_n"].to_list(), pairs["_c"].to_list())],
        dtype=pl.Float64,
    ))
    kept = pl.col("_n") >= k
    per_problem = per_problem.join(pairs, on=["_n", "_c"], how="left", maintain_order="left").with_columns(
        kept.alias("_kept"),
        pl.when(kept).then(pl.col("_c") / pl.col("_n")).otherwise(None).cast(pl.Float64).alias("_mean"),
    )
    out = (
        per_problem.group_by(gkeys, maintain_order=True)
        .agg(
            pl.col("_kept").sum().cast(pl.Int64).alias("problems"),
            (~pl.col("_kept")).sum().cast(pl.Int64).alias("problems_skipped"),
            pl.col("_mean").mean().cast(pl.Float64).alias("mean_at_k"),
            pl.col("_pass").mean().cast(pl.Float64).alias("pass_at_k"),
        )
        .with_columns(pl.lit(k, dtype=pl.Int64).alias("k"))
        .select(*gkeys, "k", "problems", "problems_skipped", "mean_at_k", "pass_at_k")
    )
    return _drop_all_key(_sort(out, keys))


# --------------------------------------------------------------------------- budgets


def accuracy_at_budgets(
    df: pl.DataFrame,
    *,
    budgets: Sequence[int] = DEFAULT_BUDGETS,
    group_by: Sequence[str] | None = ("model",),
) -> pl.DataFrame:
    """Accuracy and truncation rate if generation had been cut at each token budget.

    Rows with null ``n_tokens`` or null ``correct`` are excluded (counted in ``excluded``). At
    budget ``B`` a CoT is solved iff it is correct and ``n_tokens <= B`` (exactly ``B`` tokens is
    within budget); it is truncated iff ``n_tokens > B`` or its ``truncated`` flag is set (an
    already-truncated CoT counts as truncated at every budget; a missing ``truncated`` column or
    null flag counts as not set). ``full_accuracy`` is the accuracy of the same rows with no
    budget. Rates are null for a group with no usable row (``n == 0``).

    Returns
    -------
    pl.DataFrame
        Group columns, ``budget``, ``n``, ``accuracy``, ``truncation_rate``, ``excluded``,
        ``full_accuracy``; one row per group and budget (budgets ascending, duplicates dropped).
    """
    bs = sorted({int(b) for b in budgets})
    if any(b < 0 for b in bs):
        raise ValueError(f"budgets must be non-negative (got {list(budgets)})")
    keys = _keys(group_by)
    df = _prepare(df, [*keys, "n_tokens", "correct"], optional=["truncated"])
    df, gkeys = _with_all_key(df, keys)

    base = df.select(
        *gkeys,
        _length(df, "n_tokens").alias("_tok"),
        _correct_bool(df).alias("_ok"),
        pl.col("truncated").cast(pl.Boolean).fill_null(False).alias("_trunc"),
    ).with_columns((pl.col("_tok").is_not_null() & pl.col("_ok").is_not_null()).alias("_valid"))

    v = pl.col("_valid")
    n_expr = v.sum().cast(pl.Int64)
    common = [
        n_expr.alias("n"),
        (~v).sum().cast(pl.Int64).alias("excluded"),
        (pl.col("_ok").filter(v).cast(pl.Float64).mean()).alias("full_accuracy"),
    ]
    frames = []
    if bs:
        # one pass over the rows for every budget (a group_by per budget costs a pass each)
        per_budget = []
        for i, b in enumerate(bs):
            solved = (pl.col("_ok") & (pl.col("_tok") <= b)).filter(v)
            trunc = ((pl.col("_tok") > b) | pl.col("_trunc")).filter(v)
            per_budget += [solved.cast(pl.Float64).mean().alias(f"_acc{i}"),
                           trunc.cast(pl.Float64).mean().alias(f"_trunc{i}")]
        wide = base.group_by(gkeys, maintain_order=True).agg(*common, *per_budget)
        for i, b in enumerate(bs):
            frames.append(wide.select(
                *gkeys, "n", "excluded", "full_accuracy",
                pl.col(f"_acc{i}").alias("accuracy"), pl.col(f"_trunc{i}").alias("truncation_rate"),
                pl.lit(b, dtype=pl.Int64).alias("budget"),
            ))
    cols = [*gkeys, "budget", "n", "accuracy", "truncation_rate", "excluded", "full_accuracy"]
    if not frames:
        out = base.head(0).select(*gkeys).with_columns(
            pl.lit(None, dtype=pl.Int64).alias("budget"),
            pl.lit(None, dtype=pl.Int64).alias("n"),
            pl.lit(None, dtype=pl.Float64).alias("accuracy"),
            pl.lit(None, dtype=pl.Float64).alias("truncation_rate"),
            pl.lit(None, dtype=pl.Int64).alias("excluded"),
            pl.lit(None, dtype=pl.Float64).alias("full_accuracy"),
        )
    else:
        out = pl.concat([f.select(cols) for f in frames], how="vertical")
        out = out.with_columns(
            pl.col("accuracy", "truncation_rate", "full_accuracy").cast(pl.Float64)
        )
    out = _sort(out.select(cols), [*keys, "budget"])
    return _drop_all_key(out)


# --------------------------------------------------------------------------- lengths


def length_by_correctness(
    df: pl.DataFrame, *, group_by: Sequence[str] | None = ("model",), length_col: str = "n_tokens"
) -> pl.DataFrame:
    """Length statistics per group and correctness.

    ``correct`` is reported as the label ``"correct"``, ``"incorrect"`` or ``"unknown"`` (null
    correctness). Rows with a null length are left out. Quantiles use linear interpolation
    (numpy's default).

    Returns
    -------
    pl.DataFrame
        Group columns, ``correct`` (str label), ``count``, ``mean``, ``median``, ``p10``,
        ``p90``; labels ordered correct, incorrect, unknown within each group.
    """
    keys = _keys(group_by)
    df = _prepare(df, [*keys, length_col, "correct"])
    df, gkeys = _with_all_key(df, keys)
    length = pl.col("_len")
    out = (
        df.select(*gkeys, _correct_label(df).alias("correct"), _length(df, length_col).alias("_len"))
        .filter(length.is_not_null())
        .group_by([*gkeys, "correct"], maintain_order=True)
        .agg(
            length.count().cast(pl.Int64).alias("count"),
            length.mean().cast(pl.Float64).alias("mean"),
            length.median().cast(pl.Float64).alias("median"),
            length.quantile(0.1, interpolation="linear").cast(pl.Float64).alias("p10"),
            length.quantile(0.9, interpolation="linear").cast(pl.Float64).alias("p90"),
        )
        .with_columns(_label_order("correct").alias("_order"))
    )
    out = _sort(out, [*keys, "_order"]).drop("_order")
    return _drop_all_key(out.select(*gkeys, "correct", "count", "mean", "median", "p10", "p90"))


def _split_frame(
    df: pl.DataFrame, length_col: str, split_by: str | None
) -> tuple[pl.DataFrame, str | None]:
    """Frame with ``_len`` (Float64, nulls dropped) and the split column; ``correct`` as labels."""
    df = _prepare(df, [length_col] + ([split_by] if split_by else []))
    exprs = [_length(df, length_col).alias("_len")]
    if split_by:
        if split_by == "correct":
            exprs.append(_correct_label(df).alias(split_by))
        else:
            exprs.append(pl.col(split_by))
    return df.select(exprs).filter(pl.col("_len").is_not_null()), split_by


def _split_sort(df: pl.DataFrame, split_by: str | None, then: list[str]) -> pl.DataFrame:
    if not split_by:
        return _sort(df, then)
    if split_by == "correct":
        return _sort(df.with_columns(_label_order(split_by).alias("_order")), ["_order", *then]).drop(
            "_order"
        )
    return _sort(df, [split_by, *then])


def length_histogram(
    df: pl.DataFrame,
    *,
    bins: int = 50,
    length_col: str = "n_tokens",
    split_by: str | None = "correct",
    log: bool = False,
) -> pl.DataFrame:
    """Histogram of lengths with one set of bin edges shared by every split value.

    Edges span the min to max length over all rows (null lengths dropped), evenly spaced, or
    geometrically spaced when ``log`` (then lengths <= 0 are dropped). Bins are half-open
    ``[bin_start, bin_end)`` except the last, which includes its end. If every length is equal
    the edges span ``[v, v + 1]``. Every (split value, bin) pair appears, zero-filled. When
    ``split_by`` is ``"correct"`` its values are the labels correct/incorrect/unknown; any other
    split column keeps its values (null is a value). ``split_by=None`` gives no split column.

    Returns
    -------
    pl.DataFrame
        ``bin_start``, ``bin_end`` (Float64), the split column, ``count`` (Int64).
    """
    if int(bins) < 1:
        raise ValueError(f"bins must be >= 1 (got {bins})")
    bins = int(bins)
    data, split = _split_frame(df, length_col, split_by)
    if log:
        data = data.filter(pl.col("_len") > 0)
    split_cols = [split] if split else []
    split_dtype = data.schema[split] if split else None
    empty = pl.DataFrame(
        schema={
            "bin_start": pl.Float64,
            "bin_end": pl.Float64,
            **({split: split_dtype} if split else {}),
            "count": pl.Int64,
        }
    )
    if data.height == 0:
        return empty

    values = data["_len"].to_numpy()
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        hi = lo + 1.0
    edges = np.geomspace(lo, hi, bins + 1) if log else np.linspace(lo, hi, bins + 1)
    idx = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, bins - 1)
    data = data.with_columns(pl.Series("_bin", idx, dtype=pl.Int64))

    grid = pl.DataFrame(
        {
            "_bin": np.arange(bins, dtype=np.int64),
            "bin_start": edges[:-1].astype(np.float64),
            "bin_end": edges[1:].astype(np.float64),
        }
    )
    if split:
        grid = data.select(split).unique(maintain_order=True).join(grid, how="cross")
    counts = data.group_by([*split_cols, "_bin"]).agg(pl.len().cast(pl.Int64).alias("count"))
    out = grid.join(counts, on=[*split_cols, "_bin"], how="left", nulls_equal=True).with_columns(
        pl.col("count").fill_null(0).cast(pl.Int64)
    )
    out = _split_sort(out, split, ["_bin"])
    return out.select("bin_start", "bin_end", *split_cols, "count")


def ecdf(
    df: pl.DataFrame, *, length_col: str = "n_tokens", split_by: str | None = "correct"
) -> pl.DataFrame:
    """Empirical CDF of lengths per split value.

    One row per split value and distinct length, ``cum_share`` = share of that split's rows with
    length <= ``length`` (so the last row of each split is 1.0). Null lengths are dropped; split
    values as in ``length_histogram``.

    Returns
    -------
    pl.DataFrame
        The split column (unless ``split_by`` is None), ``length`` (Float64), ``cum_share``.
    """
    data, split = _split_frame(df, length_col, split_by)
    split_cols = [split] if split else []
    if data.height == 0:
        schema = {**({split: data.schema[split]} if split else {}), "length": pl.Float64, "cum_share": pl.Float64}
        return pl.DataFrame(schema=schema)
    data, gkeys = _with_all_key(data, split_cols)
    counts = data.group_by([*gkeys, "_len"]).agg(pl.len().alias("_k"))
    counts = counts.sort([*gkeys, "_len"], nulls_last=True)
    out = counts.with_columns(
        (
            pl.col("_k").cum_sum().over(gkeys) / pl.col("_k").sum().over(gkeys)
        ).cast(pl.Float64).alias("cum_share")
    ).rename({"_len": "length"})
    out = _drop_all_key(out)
    out = _split_sort(out, split, ["length"])
    return out.select(*split_cols, "length", "cum_share")


# --------------------------------------------------------------------------- scores


def _score_values(df: pl.DataFrame, col: str) -> pl.Expr:
    return pl.col(col).cast(pl.Float64).fill_nan(None)


def score_histogram(df: pl.DataFrame, *, col: str) -> pl.DataFrame:
    """Counts of each integer score level 0..9 in ``col``, zero-filled.

    Nulls (and NaN) are not in the frame; get them from ``score_null_count``. Values that are not
    an integer in 0..9 are not counted either.

    Returns
    -------
    pl.DataFrame
        ``level`` (Int64, 0..9), ``count`` (Int64); always 10 rows.
    """
    df = _prepare(df, [col])
    vals = df.select(_score_values(df, col).alias("_v")).filter(
        pl.col("_v").is_not_null() & (pl.col("_v") == pl.col("_v").round(0))
    )
    counts = vals.select(pl.col("_v").cast(pl.Int64).alias("level")).group_by("level").agg(
        pl.len().cast(pl.Int64).alias("count")
    )
    grid = pl.DataFrame({"level": pl.Series(list(SCORE_LEVELS), dtype=pl.Int64)})
    return grid.join(counts, on="level", how="left").with_columns(
        pl.col("count").fill_null(0).cast(pl.Int64)
    ).sort("level")


def score_null_count(df: pl.DataFrame, *, col: str) -> int:
    """Number of rows whose ``col`` is null (or NaN), i.e. the ones ``score_histogram`` leaves out
    as unscored."""
    df = _prepare(df, [col])
    return int(df.select(_score_values(df, col).is_null().sum()).item())


def rv_cd_matrix(df: pl.DataFrame) -> pl.DataFrame:
    """Joint counts of (``rv``, ``cd``) over all 100 cells 0..9 x 0..9, zero-filled.

    Rows with null ``rv`` or ``cd`` (or a value outside the integer levels 0..9) are excluded.

    Returns
    -------
    pl.DataFrame
        ``rv``, ``cd``, ``count`` (all Int64); 100 rows ordered by rv, then cd.
    """
    df = _prepare(df, ["rv", "cd"])
    v = df.select(_score_values(df, "rv").alias("rv"), _score_values(df, "cd").alias("cd"))
    ok = pl.lit(True)
    for c in ("rv", "cd"):
        ok = ok & pl.col(c).is_not_null() & (pl.col(c) == pl.col(c).round(0)) & pl.col(c).is_between(0, 9)
    counts = (
        v.filter(ok)
        .select(pl.col("rv").cast(pl.Int64), pl.col("cd").cast(pl.Int64))
        .group_by("rv", "cd")
        .agg(pl.len().cast(pl.Int64).alias("count"))
    )
    levels = pl.Series(list(SCORE_LEVELS), dtype=pl.Int64)
    grid = pl.DataFrame({"rv": levels}).join(pl.DataFrame({"cd": levels}), how="cross")
    return (
        grid.join(counts, on=["rv", "cd"], how="left")
        .with_columns(pl.col("count").fill_null(0).cast(pl.Int64))
        .sort("rv", "cd")
    )


# --------------------------------------------------------------------------- per problem


def problem_pass_rates(
    df: pl.DataFrame, *, group_by: Sequence[str] | None = ("model",)
) -> pl.DataFrame:
    """Pass rate and token statistics per group and problem.

    ``n`` = samples with known correctness, ``c`` = correct ones, ``pass_rate`` = ``c/n`` (null
    when ``n == 0``). ``mean_tokens`` / ``median_tokens`` are over every row of the problem with a
    non-null ``n_tokens``, whatever its correctness (null if ``n_tokens`` is absent).

    Returns
    -------
    pl.DataFrame
        Group columns, ``problem_id``, ``n``, ``c``, ``pass_rate``, ``mean_tokens``,
        ``median_tokens``; sorted by group columns then problem_id.
    """
    keys = _keys(group_by)
    df = _prepare(df, [*keys, "problem_id", "correct"], optional=["n_tokens"])
    df, gkeys = _with_all_key(df, keys)
    out = (
        df.select(
            *gkeys,
            "problem_id",
            _correct_bool(df).alias("_ok"),
            _length(df, "n_tokens").alias("_tok"),
        )
        .group_by([*gkeys, "problem_id"], maintain_order=True)
        .agg(
            pl.col("_ok").count().cast(pl.Int64).alias("n"),
            pl.col("_ok").cast(pl.Int64).sum().cast(pl.Int64).alias("c"),
            pl.col("_tok").mean().cast(pl.Float64).alias("mean_tokens"),
            pl.col("_tok").median().cast(pl.Float64).alias("median_tokens"),
        )
        .with_columns(
            pl.when(pl.col("n") > 0)
            .then(pl.col("c") / pl.col("n"))
            .otherwise(None)
            .cast(pl.Float64)
            .alias("pass_rate")
        )
        .select(*gkeys, "problem_id", "n", "c", "pass_rate", "mean_tokens", "median_tokens")
    )
    return _drop_all_key(_sort(out, [*keys, "problem_id"]))
