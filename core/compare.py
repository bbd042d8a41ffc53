"""Two evaluation runs on one benchmark side by side: what a researcher looks at after a fine-tune.

A *run* is one (dataset, model, benchmark) of the store: an evaluation job's answers (``python
-m core evaluate``, one dataset per run) or one model's answers in an ingested harness tree.
:func:`compare` matches the two runs' problems through the problem identity key
(:mod:`core.identity`: the same question under two prompt wrappers is one problem) and, on the
problems both runs answered:

* **accuracy with a 95% confidence interval** per run: the mean over problems of each problem's
  share of correct samples (Mean@k; plain accuracy when k = 1). The interval is Wilson's score
  interval when every problem has one judged sample, else a normal interval over the problems'
  pass rates (the samples of one problem are not independent, so problems are the unit);
* **the paired difference** B - A with its normal 95% interval over the problems' differences,
  and, when every problem has one sample per run, McNemar's exact test on the problems that
  flipped (two-sided binomial test of the flips against a fair coin);
* **the flipped problems**: a problem is *solved* by a run when at least half of its judged
  samples are correct (k = 1: when its answer is correct); ``lost`` are solved by A and not by
  B, ``gained`` the other way round, each with one CoT of each run to read (a correct one from
  the run that solves it, an incorrect one from the other);
* the frames the page draws the budget curves and the length by correctness from.

Correctness is read as everywhere else (``correct_source``; by default each dataset's own, which
for an evaluation run is math-verify). CoTs with unknown correctness are left out and counted.

:func:`budget_caps` says, per run of any filter, the token budget its answers were generated
under (evaluations record it) and how many stopped there (finish reason ``length``): the budget
charts draw it as a line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from core import identity, metrics, store
from core.errors import UserError
from core.queries import OWN_CORRECTNESS, CotFilter, matching_sql

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


@dataclass(frozen=True)
class Run:
    """One (dataset, model, benchmark) of the store."""

    dataset: str
    model: str
    benchmark: str

    @property
    def label(self) -> str:
        return f"{self.model} · {self.dataset}"

    def cot_filter(self, correct_source: str | None = OWN_CORRECTNESS) -> CotFilter:
        return CotFilter(datasets=(self.dataset,), models=(self.model,), benchmarks=(self.benchmark,),
                         correct_source=correct_source)


def list_runs(*, db=None) -> pl.DataFrame:
    """Every run in the store: dataset, model, benchmark, problems, cots, k (the most samples a
    problem has), max_new_tokens (the budget an evaluation job recorded, else null); evaluation
    datasets first, then by benchmark and name."""
    return store.read_df(
        "SELECT d.name AS dataset, c.model, p.benchmark, count(DISTINCT c.problem_id) AS problems, count(*) AS cots, "
        "  max(c.sample_idx) + 1 AS k, max(TRY_CAST(json_extract(c.extra, '$.max_new_tokens') AS BIGINT)) AS max_new_tokens, "
        "  min(d.dataset_id) AS dataset_id "
        "FROM cots c JOIN problems p ON p.problem_id = c.problem_id JOIN datasets d ON d.dataset_id = c.dataset_id "
        "WHERE d.status = 'ready' AND p.benchmark IS NOT NULL AND c.model IS NOT NULL AND d.format <> 'benchmark' "
        "GROUP BY d.name, c.model, p.benchmark "
        "ORDER BY max_new_tokens IS NULL, p.benchmark, min(d.dataset_id), c.model", db=db,
    ).drop("dataset_id")


def run_cots(run: Run, *, correct_source: str | None = OWN_CORRECTNESS, db=None) -> pl.DataFrame:
    """A run's CoTs: cot_id, problem_id, sample_idx, n_tokens, correct (bool, null unknown),
    truncated, finish_reason, max_new_tokens, question, key (its question key)."""
    sql, params = matching_sql(run.cot_filter(correct_source), db=db)
    has_keys = identity.tables_present("problem_keys", db=db)
    key_join = ("LEFT JOIN problem_keys k ON k.problem_id = m.problem_id AND k.key_version = ?" if has_keys else "")
    frame = store.read_df(
        f"SELECT m.cot_id, m.problem_id, m.sample_idx, m.n_tokens, m.correct, m.truncated, c.finish_reason, "
        f"  TRY_CAST(json_extract(c.extra, '$.max_new_tokens') AS BIGINT) AS max_new_tokens, p.question, "
        f"  {'k.question_key' if has_keys else 'NULL::VARCHAR'} AS key "
        f"FROM ({sql}) m JOIN cots c ON c.cot_id = m.cot_id JOIN problems p ON p.problem_id = m.problem_id {key_join} "
        f"ORDER BY m.problem_id, m.sample_idx, m.cot_id",
        params + ([identity.KEY_VERSION] if has_keys else []), db=db,
    )
    if frame.height and frame["key"].null_count():  # problems ingested before keys existed: key them here
        frame = frame.with_columns(pl.when(pl.col("key").is_null())
                                   .then(pl.col("question").map_elements(identity.question_key, return_dtype=pl.String))
                                   .otherwise(pl.col("key")).alias("key"))
    return frame


# ---------------------------------------------------------------------------- statistics


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a binomial proportion (95% by default)."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values: list[float], z: float = Z95, *, bounds: tuple[float, float] | None = (0.0, 1.0)) -> tuple[float, float]:
    """mean +- z * sd / sqrt(n) (sample sd), clipped to ``bounds``."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    low, high = mean - z * sd / math.sqrt(n), mean + z * sd / math.sqrt(n)
    return (max(bounds[0], low), min(bounds[1], high)) if bounds else (low, high)


def mcnemar_exact(lost: int, gained: int) -> float:
    """Two-sided exact McNemar p-value: the flips against a fair coin."""
    n = lost + gained
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(lost, gained) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


# ---------------------------------------------------------------------------- comparison


@dataclass
class RunSummary:
    run: Run
    problems: int  # shared problems with at least one judged sample
    samples: int  # judged samples on them
    accuracy: float | None
    ci: tuple[float, float] | None
    interval: str  # how the interval was computed
    unknown: int  # CoTs of the shared problems with unknown correctness (left out)
    max_new_tokens: int | None
    hit_budget: int  # CoTs that stopped at the budget (finish reason 'length')
    cots: int


@dataclass
class Comparison:
    a: RunSummary
    b: RunSummary
    shared: int  # problems in both runs with judged samples in both
    only_a: int
    only_b: int
    difference: float | None  # accuracy B - A on the shared problems
    difference_ci: tuple[float, float] | None
    mcnemar_p: float | None  # when every shared problem has one judged sample per run
    problems: pl.DataFrame  # one row per shared problem: key, question, pass rates, solved, the CoTs to read
    lost: pl.DataFrame  # solved by A, not by B
    gained: pl.DataFrame  # solved by B, not by A
    cots: pl.DataFrame  # both runs' judged CoTs on the shared problems, with a 'run' column (A / B label)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        def summary(s: RunSummary) -> dict[str, Any]:
            return {"dataset": s.run.dataset, "model": s.run.model, "benchmark": s.run.benchmark, "problems": s.problems,
                    "samples": s.samples, "accuracy": s.accuracy, "ci95": list(s.ci) if s.ci else None, "interval": s.interval,
                    "unknown_correctness": s.unknown, "max_new_tokens": s.max_new_tokens, "hit_max_new_tokens": s.hit_budget}
        return {"a": summary(self.a), "b": summary(self.b), "shared_problems": self.shared, "only_a": self.only_a,
                "only_b": self.only_b, "difference": self.difference,
                "difference_ci95": list(self.difference_ci) if self.difference_ci else None, "mcnemar_p": self.mcnemar_p,
                "lost": self.lost["key"].to_list(), "gained": self.gained["key"].to_list(), "notes": self.notes}


def _per_problem(cots: pl.DataFrame) -> pl.DataFrame:
    """key -> n, c, pass rate, solved, and the CoT to read (the first correct one when solved,
    else the first incorrect one), over judged CoTs."""
    judged = cots.filter(pl.col("correct").is_not_null())
    return judged.group_by("key").agg(
        pl.len().alias("n"),
        pl.col("correct").cast(pl.Int64).sum().alias("c"),
        pl.col("problem_id").first(),
        pl.col("question").first(),
        pl.col("cot_id").filter(pl.col("correct")).first().alias("correct_cot"),
        pl.col("cot_id").filter(~pl.col("correct")).first().alias("incorrect_cot"),
        pl.col("n_tokens").filter(pl.col("correct")).first().alias("correct_tokens"),
        pl.col("n_tokens").filter(~pl.col("correct")).first().alias("incorrect_tokens"),
    ).with_columns(
        (pl.col("c") / pl.col("n")).alias("pass_rate"),
        (pl.col("c") * 2 >= pl.col("n")).alias("solved"),
    ).with_columns(
        pl.when(pl.col("solved")).then(pl.col("correct_cot")).otherwise(pl.col("incorrect_cot")).alias("cot_id"),
        pl.when(pl.col("solved")).then(pl.col("correct_tokens")).otherwise(pl.col("incorrect_tokens")).alias("tokens"),
    ).select("key", "problem_id", "question", "n", "c", "pass_rate", "solved", "cot_id", "tokens")


def _summary(run: Run, per: pl.DataFrame, cots: pl.DataFrame) -> RunSummary:
    rates = per["pass_rate"].to_list()
    single = per.height > 0 and per["n"].max() == 1
    if not rates:
        accuracy, ci, how = None, None, "no judged sample"
    elif single:
        accuracy = sum(rates) / len(rates)
        ci, how = wilson_interval(int(per["c"].sum()), per.height), "Wilson 95% interval (one sample per problem)"
    else:
        accuracy = sum(rates) / len(rates)
        ci, how = mean_interval(rates), "normal 95% interval over the problems' pass rates"
    budgets = cots["max_new_tokens"].drop_nulls()
    return RunSummary(run=run, problems=per.height, samples=int(per["n"].sum()) if per.height else 0, accuracy=accuracy,
                      ci=ci, interval=how, unknown=int(cots["correct"].null_count()),
                      max_new_tokens=int(budgets.max()) if budgets.len() else None,
                      hit_budget=int((cots["finish_reason"] == "length").sum()), cots=cots.height)


def compare(a: Run, b: Run, *, correct_source: str | None = OWN_CORRECTNESS, db=None) -> Comparison:
    """Run ``b`` against run ``a`` on the problems both answered (see the module docstring)."""
    if a == b:
        raise UserError("Choose two different runs to compare.")
    if not correct_source:
        raise UserError("Choose a correctness source: comparing runs needs to know which answers are correct.")
    cots_a, cots_b = run_cots(a, correct_source=correct_source, db=db), run_cots(b, correct_source=correct_source, db=db)
    for run, frame in ((a, cots_a), (b, cots_b)):
        if frame.height == 0:
            raise UserError(f"The run {run.label} on {run.benchmark} has no CoT in the store.")
    per_a, per_b = _per_problem(cots_a), _per_problem(cots_b)
    shared_keys = set(per_a["key"].to_list()) & set(per_b["key"].to_list())
    notes = []
    if a.benchmark != b.benchmark:
        notes.append(f"The runs name different benchmarks ({a.benchmark}, {b.benchmark}); they are compared on the "
                     f"problems whose question keys match ({len(shared_keys)}).")
    keys = pl.Series("key", sorted(shared_keys), dtype=pl.String).implode()  # one list: is_in tests membership
    per_a_shared = per_a.filter(pl.col("key").is_in(keys))
    per_b_shared = per_b.filter(pl.col("key").is_in(keys))
    shared_cots = pl.concat([cots_a.filter(pl.col("key").is_in(keys)).with_columns(pl.lit("A").alias("side")),
                             cots_b.filter(pl.col("key").is_in(keys)).with_columns(pl.lit("B").alias("side"))])
    summary_a = _summary(a, per_a_shared, shared_cots.filter(pl.col("side") == "A"))
    summary_b = _summary(b, per_b_shared, shared_cots.filter(pl.col("side") == "B"))
    problems = per_a_shared.join(per_b_shared.drop("question"), on="key", suffix="_b").rename({
        "problem_id": "problem_id_a", "n": "n_a", "c": "c_a", "pass_rate": "pass_rate_a", "solved": "solved_a",
        "cot_id": "cot_id_a", "tokens": "tokens_a"}).sort("problem_id_a")
    differences = (problems["pass_rate_b"] - problems["pass_rate_a"]).to_list()
    difference = sum(differences) / len(differences) if differences else None
    difference_ci = mean_interval(differences, bounds=(-1.0, 1.0)) if differences else None
    lost = problems.filter(pl.col("solved_a") & ~pl.col("solved_b"))
    gained = problems.filter(~pl.col("solved_a") & pl.col("solved_b"))
    single = problems.height > 0 and problems["n_a"].max() == 1 and problems["n_b"].max() == 1
    labels = {"A": f"A: {a.label}", "B": f"B: {b.label}"}
    cots = shared_cots.filter(pl.col("correct").is_not_null()).with_columns(
        pl.col("side").replace_strict(labels, return_dtype=pl.String).alias("run"))
    return Comparison(
        a=summary_a, b=summary_b, shared=problems.height,
        only_a=per_a.height - per_a_shared.height, only_b=per_b.height - per_b_shared.height,
        difference=difference, difference_ci=difference_ci,
        mcnemar_p=mcnemar_exact(lost.height, gained.height) if single else None,
        problems=problems, lost=lost, gained=gained, cots=cots, notes=notes,
    )


# ---------------------------------------------------------------------------- budgets


def budgets_for(cots: pl.DataFrame, caps: list[int] = ()) -> list[int]:
    """Token budgets to draw a run's budget curve at: powers of two from 64 up to the first one
    at or above the longest CoT, and each run's own max new tokens."""
    longest = int(cots["n_tokens"].max() or 64) if cots.height else 64
    out, b = [], 64
    while True:
        out.append(b)
        if b >= longest:
            break
        b *= 2
    return sorted(set(out) | {int(c) for c in caps if c})


def budget_curves(comparison: Comparison) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(accuracy at budgets per run on the shared problems, the runs' caps) for
    ``charts.budget_figure(acc, group_cols=("run",), caps=caps)``."""
    caps = [s.max_new_tokens for s in (comparison.a, comparison.b) if s.max_new_tokens]
    acc = metrics.accuracy_at_budgets(comparison.cots, budgets=budgets_for(comparison.cots, caps), group_by=("run",))
    cap_rows = [{"run": f"{side}: {s.run.label}", "max_new_tokens": s.max_new_tokens, "hit": s.hit_budget, "n": s.cots}
                for side, s in (("A", comparison.a), ("B", comparison.b)) if s.max_new_tokens]
    schema = {"run": pl.String, "max_new_tokens": pl.Int64, "hit": pl.Int64, "n": pl.Int64}
    return acc, pl.DataFrame(cap_rows, schema=schema)


def cap_rows(*, db=None) -> pl.DataFrame:
    """Every CoT that recorded the budget it was generated under (evaluation runs): cot_id,
    max_new_tokens, hit (its answer stopped there: finish reason 'length'). Few rows: read once
    per store write by the app and joined to any filter's frame by :func:`caps_of`."""
    return store.read_df(
        "SELECT cot_id, TRY_CAST(json_extract(extra, '$.max_new_tokens') AS BIGINT) AS max_new_tokens, "
        "coalesce(finish_reason = 'length', false) AS hit FROM cots WHERE json_extract(extra, '$.max_new_tokens') IS NOT NULL",
        db=db)


def caps_of(frame: pl.DataFrame, caps: pl.DataFrame) -> pl.DataFrame:
    """:func:`budget_caps` over a metric frame (``queries.metric_frame`` columns) and
    :func:`cap_rows`."""
    keys = ["dataset", "model", "benchmark"]
    out = frame.select(*keys, "cot_id").join(caps, on="cot_id", how="inner").group_by(keys).agg(
        max_new_tokens=pl.col("max_new_tokens").max(), hit=pl.col("hit").sum().cast(pl.Int64), n=pl.len().cast(pl.Int64))
    return out.with_columns(pl.col(k).cast(pl.String) for k in keys).sort(keys, nulls_last=True)


def budget_caps(f: CotFilter, *, db=None) -> pl.DataFrame:
    """Per dataset, model and benchmark of the filter's CoTs that recorded the budget they were
    generated under (evaluation runs): ``max_new_tokens``, ``hit`` (answers that stopped there,
    finish reason 'length') and ``n`` (their CoTs). For ``charts.budget_figure(caps=...)``."""
    from core import queries

    return caps_of(queries.metric_frame(f, db=db), cap_rows(db=db))


# ---------------------------------------------------------------------------- figures


def length_figure(comparison: Comparison):
    """Token length by correctness, the two runs side by side (box plots over the judged CoTs
    of the shared problems)."""
    import plotly.graph_objects as go

    from core.charts import CORRECTNESS_COLOURS
    from core.render import inert_figure

    fig = go.Figure()
    frame = comparison.cots.filter(pl.col("n_tokens").is_not_null())
    order = [f"A: {comparison.a.run.label}", f"B: {comparison.b.run.label}"]
    for label, value in (("correct", True), ("incorrect", False)):
        part = frame.filter(pl.col("correct") == value)
        fig.add_trace(go.Box(x=part["run"].to_list(), y=part["n_tokens"].to_list(), name=label, boxmean=True,
                             marker_color=CORRECTNESS_COLOURS[label], offsetgroup=label, boxpoints="outliers",
                             hovertemplate=f"%{{x}}<br>{label}: %{{y:,}} tokens<extra></extra>"))
    fig.update_layout(boxmode="group", height=420, yaxis_title="tokens", xaxis={"categoryorder": "array", "categoryarray": order},
                      title={"text": f"Length by correctness<br><sup>{frame.height:,} judged CoTs on the "
                                     f"{comparison.shared:,} shared problems</sup>", "x": 0.0},
                      legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1.0, "xanchor": "right"})
    return inert_figure(fig)


def length_table(comparison: Comparison) -> pl.DataFrame:
    """``metrics.length_by_correctness`` of the two runs (their judged CoTs on the shared problems)."""
    return metrics.length_by_correctness(comparison.cots, group_by=("run",))


def cot_text(cot_id: int, *, db=None) -> dict | None:
    """One CoT's text and what the comparison shows beside it: full text, extracted answer,
    tokens, finish reason, problem id (None when it is not in the store)."""
    rows = store.read_rows("SELECT full_text, answer, n_tokens, finish_reason, problem_id FROM cots WHERE cot_id = ?",
                           [cot_id], db=db)
    return dict(zip(("text", "answer", "n_tokens", "finish_reason", "problem_id"), rows[0])) if rows else None


# ---------------------------------------------------------------------------- command line


def resolve_run(dataset: str, model: str | None = None, benchmark: str | None = None, *, db=None) -> Run:
    """The run of ``dataset`` (with ``model`` / ``benchmark`` where the dataset holds several)."""
    runs = list_runs(db=db).filter(pl.col("dataset") == dataset)
    if runs.height == 0:
        raise UserError(f"No run in the dataset '{dataset}': `python -m core compare --list` lists the runs.")
    if model:
        runs = runs.filter(pl.col("model") == model)
    if benchmark:
        runs = runs.filter(pl.col("benchmark") == benchmark)
    if runs.height != 1:
        choices = "; ".join(f"{r['model']} on {r['benchmark']}" for r in list_runs(db=db).filter(
            pl.col("dataset") == dataset).to_dicts())
        raise UserError(f"The dataset '{dataset}' holds {'no' if runs.height == 0 else runs.height} such runs "
                        f"({choices}): name one with its model and benchmark flags.")
    row = runs.row(0, named=True)
    return Run(dataset, row["model"], row["benchmark"])


def cmd_compare(args) -> int:
    import json

    if args.list:
        runs = list_runs(db=args.db)
        print(json.dumps(runs.to_dicts(), indent=1) if args.json else runs)
        return 0
    if not (args.a and args.b):
        raise UserError("Name the two runs' datasets with --a and --b (`python -m core compare --list` lists them).")
    a = resolve_run(args.a, args.model_a, args.benchmark, db=args.db)
    b = resolve_run(args.b, args.model_b, args.benchmark, db=args.db)
    result = compare(a, b, correct_source=args.correct_source or OWN_CORRECTNESS, db=args.db)
    out = result.as_dict()
    if args.json:
        print(json.dumps(out))
        return 0
    for side, s in (("A", result.a), ("B", result.b)):
        acc = "no judged answer" if s.accuracy is None else (
            f"{100 * s.accuracy:.1f} % (95% CI {100 * s.ci[0]:.1f}-{100 * s.ci[1]:.1f} %, {s.interval})")
        print(f"{side}: {s.run.label} on {s.run.benchmark}: {acc}; {s.problems} problems, {s.samples} judged answers"
              + (f"; max new tokens {s.max_new_tokens}, {s.hit_budget} answers hit it" if s.max_new_tokens else ""))
    if result.difference is not None:
        lo, hi = result.difference_ci
        print(f"B - A: {100 * result.difference:+.1f} points (95% CI {100 * lo:+.1f} to {100 * hi:+.1f}) on "
              f"{result.shared} shared problems ({result.only_a} only in A, {result.only_b} only in B)"
              + (f"; McNemar's exact p = {result.mcnemar_p:.3g}" if result.mcnemar_p is not None else ""))
    print(f"flipped: {result.gained.height} solved by B only, {result.lost.height} solved by A only")
    for note in result.notes:
        print(note)
    return 0


def add_compare_cli(sub) -> None:
    """``python -m core compare --a DATASET --b DATASET [--model-a M] [--model-b M] [--benchmark B]
    [--correct-source S] [--json]``, or ``--list`` for the runs in the store."""
    p = sub.add_parser("compare", help="compare two evaluation runs on one benchmark (accuracy, CI, flipped problems)")
    p.add_argument("--a", help="run A's dataset (e.g. the base model's evaluation)")
    p.add_argument("--b", help="run B's dataset (e.g. the fine-tune's evaluation)")
    p.add_argument("--model-a", help="run A's model, where its dataset holds several")
    p.add_argument("--model-b", help="run B's model, where its dataset holds several")
    p.add_argument("--benchmark", help="the benchmark, where a dataset holds several")
    p.add_argument("--correct-source", help="the correctness source (default: each dataset's own)")
    p.add_argument("--list", action="store_true", help="list the runs in the store")
    p.add_argument("--json", action="store_true", help="one JSON object (the lost/gained problems' question keys included)")
    p.set_defaults(func=cmd_compare)
