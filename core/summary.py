"""Per dataset, model and benchmark: counts, accuracy by every correctness source, token
statistics, and the eval harness's own accuracy beside ours.

Token statistics name the tokenizer their counts come from; a group whose CoTs were counted
by several tokenizers says so in ``tokenizer`` and has no mean or median (a SmolLM2 token and
a Qwen token are not one unit: recount the group with one tokenizer to get them)."""

from __future__ import annotations

import polars as pl

from core import store

_COUNTS = """
SELECT d.name AS dataset, d.generated, c.model, p.benchmark,
       count(DISTINCT c.problem_id) AS problems, count(*) AS cots,
       CASE WHEN count(DISTINCT c.tokenizer) <= 1 THEN avg(c.n_tokens) END AS mean_tokens,
       CASE WHEN count(DISTINCT c.tokenizer) <= 1 THEN median(c.n_tokens) END AS median_tokens,
       count(c.n_tokens) AS counted,
       CASE WHEN count(DISTINCT c.tokenizer) <= 1 THEN min(c.tokenizer)
            ELSE 'mixed, not pooled: ' || string_agg(DISTINCT c.tokenizer, ', ' ORDER BY c.tokenizer) END AS tokenizer,
       avg(c.truncated::INTEGER) AS truncated_share
FROM cots c JOIN problems p USING (problem_id) JOIN datasets d ON d.dataset_id = c.dataset_id
WHERE d.status = 'ready'
GROUP BY ALL
"""

_ACCURACY = """
SELECT d.name AS dataset, c.model, p.benchmark, ss.name AS source,
       avg(s.value) AS accuracy, count(s.value) AS judged
FROM scores s
JOIN score_sources ss USING (source_id)
JOIN cots c USING (cot_id)
JOIN problems p ON p.problem_id = c.problem_id
JOIN datasets d ON d.dataset_id = c.dataset_id
WHERE d.status = 'ready' AND s.metric = 'correct'
GROUP BY ALL
"""

_HARNESS = """
SELECT d.name AS dataset, r.model, r.benchmark,
       max(r.value) FILTER (WHERE r.metric = 'acc') AS harness_acc,
       max(r.value) FILTER (WHERE r.metric = 'num_samples') AS harness_num_samples
FROM run_metrics r JOIN datasets d USING (dataset_id)
WHERE d.status = 'ready'
GROUP BY ALL
"""

KEYS = ["dataset", "model", "benchmark"]


def summary(*, db=None, efficiency: bool = False) -> pl.DataFrame:
    """One row per (dataset, model, benchmark); accuracy columns are ``acc[<source>]`` in
    percent, plus ``harness_acc`` where the input carried the harness's own figure. With
    ``efficiency`` (``summary --json``), also core.efficiency's figures by each dataset's own
    correctness: acc_per_1k_tokens, tokens_per_correct, median_overthinking_tail and
    accuracy_by_length (a list of {lo, hi, cots, accuracy})."""
    with store.connect(db, read_only=True) as con:
        counts = store.fetch_pl(con, _COUNTS)
        accuracy = store.fetch_pl(con, _ACCURACY)
        harness = store.fetch_pl(con, _HARNESS)
    if counts.is_empty():
        return counts
    out = counts
    if not accuracy.is_empty():
        wide = accuracy.with_columns((pl.col("accuracy") * 100).round(2)).pivot(
            on="source", index=KEYS, values="accuracy"
        )
        wide = wide.rename({c: f"acc[{c}]" for c in wide.columns if c not in KEYS})
        out = out.join(wide, on=KEYS, how="left", nulls_equal=True)
    if not harness.is_empty():
        out = out.join(harness, on=KEYS, how="left", nulls_equal=True)
    if efficiency:
        from core.efficiency import summary_figures

        out = out.join(summary_figures(db=db), on=KEYS, how="left", nulls_equal=True)
    return out.sort(KEYS, nulls_last=True)


def empty_message(*, db=None, dataset: str | None = None) -> str:
    """What to say when the summary has no row: a store (or ``dataset``) with problems but no
    CoTs (a benchmark file: questions and reference answers) is not an empty store."""
    where = "WHERE status = 'ready'" + (" AND name = ?" if dataset is not None else "")
    n_sets, n_problems = store.read_rows(
        f"SELECT count(*), coalesce(sum(n_problems), 0) FROM datasets {where}", [dataset] if dataset else [], db=db)[0]
    if not n_sets:
        return "The store is empty: ingest a dataset with `python -m core ingest PATH`."
    what = f"'{dataset}' holds" if dataset is not None else f"The store holds {n_sets:,} dataset(s) with"
    return (f"{what} {n_problems:,} problems and no CoTs (a benchmark: questions with reference answers). "
            "Evaluation runs of it attach to its problems by question; `python -m core evaluate --benchmark NAME` "
            "answers them with a model.")


def format_table(df: pl.DataFrame, *, empty: str | None = None) -> str:
    if df.is_empty():
        return empty or "The store is empty: ingest a dataset with `python -m core ingest PATH`."
    shown = df.drop("generated").with_columns(
        pl.col("mean_tokens").round(0), pl.col("truncated_share").round(3)
    )
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=250, fmt_str_lengths=48, tbl_hide_dataframe_shape=True):
        return str(shown)
