"""Reading steps back: the step sources in the store, one CoT's steps from every source, and
dataset-level statistics over the CoTs a filter matches (steps and tokens per role by
correctness, first-error positions), and how two step sources agree.

    python -m core steps --json [--source S] [--source S2] [--dataset D] [--correct-source C]

Agreement between two step sources is counted on B's steps: each of B's steps takes A's
label from the A step that overlaps it most (by characters of the CoT's step text), so two
sources with different segmentations can be compared; where A's steps are B's (the rule set run
``--from-source`` B) every step pairs with its own. First-error agreement places A's first wrong
step on B's steps the same way and compares step indices (exact, within one step).

    >>> from core import step_stats
    >>> step_stats.role_agreement("step rules on thought anchors", "thought anchors")["kappa"]
"""

from __future__ import annotations

import json
from typing import Any

import polars as pl

from core import store
from core.agreement import cohen_kappa
from core.queries import CotFilter, matching_sql
from core.steps import ROLES, STEP_TEXT_SQL

NO_ROLE = "(none)"
CORRECTNESS = ("correct", "incorrect", "unknown")
FIRST_ERROR_BINS = 10


def _source_id(name: str, db=None) -> int:
    rows = store.read_rows("SELECT source_id FROM score_sources WHERE name = ?", [name], db=db)
    if not rows:
        raise ValueError(f"There is no score source named '{name}'.")
    return rows[0][0]


def step_sources(*, db=None) -> pl.DataFrame:
    """Every step source: name, kind, CoTs, steps, whether it gives roles and verdicts, its
    per-step metrics and the source its per-CoT figures are under. A store made before steps
    existed (read-only connections create no table) has none."""
    present = {r[0] for r in store.read_rows("SELECT table_name FROM duckdb_tables()", db=db)}
    if not {"steps", "step_scores"} <= present:
        return pl.DataFrame(schema={"source": pl.String, "kind": pl.String, "cots": pl.Int64, "steps": pl.Int64,
                                    "has_roles": pl.Boolean, "has_verdicts": pl.Boolean, "has_actions": pl.Boolean,
                                    "step_metrics": pl.List(pl.String), "figures_source": pl.String})
    frame = store.read_df(
        "SELECT ss.name AS source, ss.kind, count(DISTINCT s.cot_id) AS cots, count(*) AS steps, "
        "count(s.role) > 0 AS has_roles, count(s.wrong) > 0 AS has_verdicts, "
        "count(s.micro_actions) > 0 AS has_actions, min(ss.source_id) AS source_id "
        "FROM steps s JOIN score_sources ss USING (source_id) GROUP BY ss.name, ss.kind ORDER BY source_id", db=db,
    )
    metrics = store.read_rows(
        "SELECT ss.name, list(DISTINCT st.metric ORDER BY st.metric) FROM step_scores st "
        "JOIN score_sources ss USING (source_id) WHERE st.value IS NOT NULL GROUP BY ss.name", db=db,
    )
    by_source = dict(metrics)
    return frame.with_columns(
        pl.col("source").map_elements(lambda s: by_source.get(s, []), return_dtype=pl.List(pl.String)).alias("step_metrics"),
        pl.struct("source", "kind").map_elements(
            lambda r: r["source"] if r["kind"] == "stage" else f"{r['source']} (step figures)", return_dtype=pl.String,
        ).alias("figures_source"),
    ).drop("source_id")


def cot_steps(cot_id: int, *, db=None) -> tuple[str, pl.DataFrame, pl.DataFrame]:
    """One CoT's step text, its steps from every source (source, kind, step_idx, char_start,
    char_end, n_tokens, role, micro_actions, wrong) and their per-step scores (source,
    step_idx, metric, value, raw)."""
    with store.connect(db, read_only=True) as con:
        found = con.execute(f"SELECT {STEP_TEXT_SQL} FROM cots c WHERE c.cot_id = ?", [cot_id]).fetchall()
        row = found[0] if found else None
        steps = store.fetch_pl(
            con, "SELECT ss.name AS source, ss.kind, s.step_idx, s.char_start, s.char_end, s.n_tokens, s.role, "
            "s.micro_actions, s.wrong FROM steps s JOIN score_sources ss USING (source_id) WHERE s.cot_id = ? "
            "ORDER BY ss.source_id, s.step_idx", [cot_id],
        )
        scores = store.fetch_pl(
            con, "SELECT ss.name AS source, st.step_idx, st.metric, st.value, st.raw FROM step_scores st "
            "JOIN score_sources ss USING (source_id) WHERE st.cot_id = ? ORDER BY ss.source_id, st.step_idx, st.metric",
            [cot_id],
        )
    return (row[0] or "") if row else "", steps, scores


def step_counts_of_problem(problem_id: int, *, db=None) -> dict[int, dict[str, int]]:
    """For each CoT of a problem that has steps: steps per step source."""
    out: dict[int, dict[str, int]] = {}
    for cot_id, name, n in store.read_rows(
        "SELECT s.cot_id, ss.name, count(*) FROM steps s JOIN score_sources ss USING (source_id) "
        "JOIN cots c USING (cot_id) WHERE c.problem_id = ? GROUP BY ALL ORDER BY 1, min(ss.source_id)", [problem_id], db=db,
    ):
        out.setdefault(cot_id, {})[name] = n
    return out


def overlay(base: pl.DataFrame, other: pl.DataFrame) -> list[int | None]:
    """For each step of ``base`` (char_start, char_end), the index (row) of the ``other`` step
    overlapping it most, or None; both of one CoT, in text order."""
    out: list[int | None] = []
    o_starts, o_ends = other["char_start"].to_list(), other["char_end"].to_list()
    j = 0
    for a, b in zip(base["char_start"].to_list(), base["char_end"].to_list()):
        while j < len(o_ends) and o_ends[j] <= a:
            j += 1
        best, best_overlap, k = None, 0, j
        while k < len(o_starts) and o_starts[k] < b:
            overlap = min(b, o_ends[k]) - max(a, o_starts[k])
            if overlap > best_overlap:
                best, best_overlap = k, overlap
            k += 1
        out.append(best)
    return out


# ---------------------------------------------------------------------------------- statistics


def _correctness_sql(alias: str = "m") -> str:
    return (f"CASE WHEN {alias}.correct_value = 1 THEN 'correct' WHEN {alias}.correct_value = 0 THEN 'incorrect' "
            "ELSE 'unknown' END")


def role_table(source: str, f: CotFilter | None = None, *, by: str = "correctness", db=None) -> pl.DataFrame:
    """Steps and tokens per role and group (``by``: correctness | model | dataset) for the CoTs
    ``f`` matches, with each role's share of the group's step tokens (characters where a step
    has no token count). One hash join of the source's steps with the matching CoTs: 0.3 s at
    10M steps, 10 s at 200M (README "Steps")."""
    f = f or CotFilter()
    group = {"correctness": _correctness_sql(), "model": "coalesce(m.model, '(no model)')", "dataset": "m.dataset"}[by]
    matching, params = matching_sql(f, db=db)
    frame = store.read_df(
        f"SELECT {group} AS grp, coalesce(s.role, '{NO_ROLE}') AS role, count(*) AS steps, "
        "sum(coalesce(s.n_tokens, s.char_end - s.char_start))::BIGINT AS tokens "
        f"FROM steps s JOIN ({matching}) m ON m.cot_id = s.cot_id WHERE s.source_id = ? GROUP BY ALL",
        [*params, _source_id(source, db)], db=db,
    )
    if frame.height == 0:
        return pl.DataFrame(schema={by: pl.String, "role": pl.String, "steps": pl.Int64, "tokens": pl.Int64,
                                    "share": pl.Float64})
    order = {r: i for i, r in enumerate((*ROLES, NO_ROLE))}
    return (
        frame.with_columns((pl.col("tokens") / pl.col("tokens").sum().over("grp")).alias("share"))
        .rename({"grp": by})
        .with_columns(pl.col("role").replace_strict(order, default=len(order)).alias("_o"))
        .sort(by, "_o").drop("_o")
    )


# The per-CoT figures the pages and the CLI summary read (role shares come from role_table).
FIGURE_COLUMNS = ("n_steps", "mean_step_tokens", "mean_step_chars", "n_self_checks", "has_error", "first_error_step",
                  "first_error_frac", "first_error_before_answer")


def figure_frame(source: str, f: CotFilter | None = None, *, metrics: tuple[str, ...] = FIGURE_COLUMNS,
                 db=None) -> pl.DataFrame:
    """Per-CoT step figures of ``source`` (from its figures source) for the CoTs ``f`` matches
    that have them: cot_id, problem_id, model, dataset, correctness and one column per metric
    (NULL where the source gives none). Pivoted in DuckDB: 0.4 s at 100k CoTs, 5 s at 2M."""
    f = f or CotFilter()
    kind = store.read_rows("SELECT kind FROM score_sources WHERE name = ?", [source], db=db)
    if not kind:
        raise ValueError(f"There is no score source named '{source}'.")
    figures = source if kind[0][0] == "stage" else f"{source} (step figures)"
    figures_id = store.read_rows("SELECT source_id FROM score_sources WHERE name = ?", [figures], db=db)
    matching, params = matching_sql(f, db=db)
    columns = ", ".join(f"max(s.value) FILTER (WHERE s.metric = '{m}') AS {m}" for m in metrics)
    return store.read_df(
        f"SELECT m.cot_id, m.problem_id, m.model, m.dataset, {_correctness_sql()} AS correctness, {columns} "
        f"FROM ({matching}) m JOIN scores s ON s.cot_id = m.cot_id "
        f"WHERE s.source_id = ? AND s.metric IN ({', '.join(repr(m) for m in metrics)}) GROUP BY ALL ORDER BY m.cot_id",
        [*params, figures_id[0][0] if figures_id else -1], db=db,
    )


def _distribution(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    s = pl.Series(values)
    hist = [0] * FIRST_ERROR_BINS
    for v in values:
        hist[min(int(v * FIRST_ERROR_BINS), FIRST_ERROR_BINS - 1)] += 1
    return {"n": len(values), "mean": float(s.mean()), "median": float(s.median()), "q25": float(s.quantile(0.25)),
            "q75": float(s.quantile(0.75)), "histogram": {"edges": [i / FIRST_ERROR_BINS for i in range(FIRST_ERROR_BINS + 1)], "counts": hist}}


def source_summary(source: str, f: CotFilter | None = None, *, db=None) -> dict[str, Any]:
    """What `python -m core steps --json` prints for one source."""
    roles = role_table(source, f, db=db)
    figs = figure_frame(source, f, db=db)
    out: dict[str, Any] = {
        "source": source,
        "cots": int(figs.height),
        "steps": int(roles["steps"].sum()) if roles.height else 0,
        "tokens": int(roles["tokens"].sum()) if roles.height else 0,
        "by_role": roles.to_dicts(),
    }
    if figs.height and "n_steps" in figs.columns:
        per = figs.group_by("correctness").agg(
            pl.len().alias("cots"), pl.col("n_steps").mean().alias("mean_steps"),
            *([pl.col("mean_step_tokens").mean().alias("mean_step_tokens")] if "mean_step_tokens" in figs.columns else []),
            *([pl.col("n_self_checks").mean().alias("mean_self_checks")] if "n_self_checks" in figs.columns else []),
        ).sort("correctness")
        out["by_correctness"] = per.to_dicts()
    if "has_error" in figs.columns:
        labelled = figs.filter(pl.col("has_error").is_not_null())
        with_error = labelled.filter(pl.col("has_error") == 1)
        out["first_error"] = {
            "cots_labelled": labelled.height,
            "cots_with_error": with_error.height,
            "before_final_answer": int((with_error["first_error_before_answer"] == 1).sum()) if "first_error_before_answer" in with_error.columns else None,
            "position": _distribution(with_error["first_error_frac"].drop_nulls().to_list()) if "first_error_frac" in with_error.columns else {"n": 0},
            "position_by_correctness": {
                c: _distribution(with_error.filter(pl.col("correctness") == c)["first_error_frac"].drop_nulls().to_list())
                for c in CORRECTNESS if "first_error_frac" in with_error.columns
            },
        }
    return out


# ---------------------------------------------------------------------------------- agreement


def aligned_steps(a: str, b: str, f: CotFilter | None = None, *, db=None) -> pl.DataFrame:
    """B's steps (of CoTs both sources split and ``f`` matches) with A's label on each:
    cot_id, step_idx, b_role, a_role, b_wrong, a_wrong (A's step overlapping most)."""
    f = f or CotFilter()
    matching, params = matching_sql(f, db=db)
    a_id, b_id = _source_id(a, db), _source_id(b, db)
    return store.read_df(
        f"""WITH m AS (SELECT cot_id FROM ({matching})),
        sa AS (SELECT s.* FROM steps s JOIN m USING (cot_id) WHERE s.source_id = ?),
        sb AS (SELECT s.* FROM steps s JOIN m USING (cot_id) WHERE s.source_id = ?
               AND s.cot_id IN (SELECT cot_id FROM sa))
        SELECT sb.cot_id, sb.step_idx, sb.char_start, sb.char_end, sb.role AS b_role, sb.wrong AS b_wrong,
               arg_max(sa.role, least(sa.char_end, sb.char_end) - greatest(sa.char_start, sb.char_start)) AS a_role,
               arg_max(sa.step_idx, least(sa.char_end, sb.char_end) - greatest(sa.char_start, sb.char_start)) AS a_step
        FROM sb JOIN sa ON sa.cot_id = sb.cot_id AND sa.char_start < sb.char_end AND sb.char_start < sa.char_end
        GROUP BY sb.cot_id, sb.step_idx, sb.char_start, sb.char_end, sb.role, sb.wrong
        ORDER BY sb.cot_id, sb.step_idx""",
        [*params, a_id, b_id], db=db,
    )


def role_agreement_from(pairs: pl.DataFrame) -> dict[str, Any]:
    """Confusion matrix (rows A, columns B, over ROLES), accuracy, Cohen's kappa and per-role
    precision / recall / F1 / one-vs-rest kappa of aligned steps (both with a role)."""
    both = pairs.filter(pl.col("a_role").is_not_null() & pl.col("b_role").is_not_null()
                        & pl.col("a_role").is_in(ROLES) & pl.col("b_role").is_in(ROLES))
    index = {r: i for i, r in enumerate(ROLES)}
    matrix = [[0] * len(ROLES) for _ in ROLES]
    for a_role, b_role, n in both.group_by("a_role", "b_role").len().iter_rows():
        matrix[index[a_role]][index[b_role]] += n
    n = both.height
    per_role = []
    for role, i in index.items():
        tp = matrix[i][i]
        a_n = sum(matrix[i])
        b_n = sum(matrix[r][i] for r in range(len(ROLES)))
        precision = tp / a_n if a_n else None
        recall = tp / b_n if b_n else None
        f1 = 2 * precision * recall / (precision + recall) if precision and recall else (0.0 if a_n and b_n else None)
        binary = [[tp, a_n - tp], [b_n - tp, n - a_n - b_n + tp]]
        per_role.append({"role": role, "b_steps": b_n, "a_steps": a_n, "both": tp, "precision": precision,
                         "recall": recall, "f1": f1, "kappa": cohen_kappa(binary) if n else None})
    return {
        "steps": n, "cots": both["cot_id"].n_unique() if n else 0,
        "accuracy": sum(matrix[i][i] for i in range(len(ROLES))) / n if n else None,
        "kappa": cohen_kappa(matrix) if n else None,
        "roles": list(ROLES), "matrix": matrix, "per_role": per_role,
        "unlabelled_pairs": pairs.height - n,
    }


def role_agreement(a: str, b: str, f: CotFilter | None = None, *, db=None) -> dict[str, Any]:
    """How A's roles agree with B's on B's steps (see the module docstring)."""
    result = role_agreement_from(aligned_steps(a, b, f, db=db))
    result.update({"a": a, "b": b})
    return result


def first_error_agreement_from(pairs: pl.DataFrame) -> dict[str, Any]:
    """Per CoT where both sources give step verdicts: B's first wrong step against A's (placed
    on B's steps), as exact and within-one-step agreement; 'none' when a source finds no error."""
    usable = pairs.group_by("cot_id").agg(
        pl.col("b_wrong").is_not_null().any().alias("b_labelled"),
        pl.col("step_idx").filter(pl.col("b_wrong")).min().alias("b_first"),
        pl.col("step_idx").filter(pl.col("a_wrong")).min().alias("a_first"),
        pl.col("a_wrong").is_not_null().any().alias("a_labelled"),
    ).filter(pl.col("a_labelled") & pl.col("b_labelled"))
    n = usable.height
    if n == 0:
        return {"cots": 0, "exact": None, "within_1": None, "both_none": 0, "only_a": 0, "only_b": 0}
    rows = usable.select("a_first", "b_first").rows()
    exact = sum(1 for a, b in rows if a == b)
    within = sum(1 for a, b in rows if (a is None and b is None) or (a is not None and b is not None and abs(a - b) <= 1))
    return {
        "cots": n, "exact": exact / n, "within_1": within / n,
        "both_none": sum(1 for a, b in rows if a is None and b is None),
        "only_a": sum(1 for a, b in rows if a is not None and b is None),
        "only_b": sum(1 for a, b in rows if a is None and b is not None),
    }


def _aligned_verdicts(a: str, b: str, f: CotFilter | None, db) -> pl.DataFrame:
    """B's steps with A's verdict placed on them: the verdict of the A step overlapping each
    B step most."""
    pairs = aligned_steps(a, b, f, db=db)
    if pairs.height == 0:
        return pairs.with_columns(pl.lit(None, pl.Boolean).alias("a_wrong"))
    matching, params = matching_sql(f or CotFilter(), db=db)
    a_wrong = store.read_df(
        f"SELECT s.cot_id, s.step_idx AS a_step, s.wrong AS a_wrong FROM steps s JOIN ({matching}) m USING (cot_id) "
        "WHERE s.source_id = ?", [*params, _source_id(a, db)], db=db,
    )
    return pairs.join(a_wrong, on=["cot_id", "a_step"], how="left")


def first_error_agreement(a: str, b: str, f: CotFilter | None = None, *, db=None) -> dict[str, Any]:
    result = first_error_agreement_from(_aligned_verdicts(a, b, f, db))
    result.update({"a": a, "b": b})
    return result


# ---------------------------------------------------------------------------------- CLI


def report(sources: list[str], f: CotFilter | None = None, *, db=None) -> dict[str, Any]:
    """`python -m core steps --json`: per source its summary; with two sources their agreement."""
    f = f or CotFilter()
    available = step_sources(db=db)
    if not sources:
        sources = available["source"].to_list()
    unknown = [s for s in sources if s not in available["source"].to_list()]
    if unknown:
        raise ValueError(f"No step source named {', '.join(repr(u) for u in unknown)}; the step sources are "
                         f"{', '.join(available['source'].to_list()) or 'none (run `python -m core split-steps`)'}.")
    out: dict[str, Any] = {"filter": f.to_params(), "correct_source": f.correct_source,
                           "sources": [source_summary(s, f, db=db) for s in sources]}
    if len(sources) == 2:
        out["agreement"] = {"roles": role_agreement(sources[0], sources[1], f, db=db),
                            "first_error": first_error_agreement(sources[0], sources[1], f, db=db)}
    return out


def add_cli(sub) -> None:
    """Register `steps` (statistics; `split-steps`, the rule stage, is the job kind 'steps')."""
    p = sub.add_parser("steps", help="step statistics of the filtered CoTs per step source; two sources: their agreement")
    from core.filter_args import add_filter_arguments

    p.add_argument("--source", action="append", default=[], help="a step source (repeat for two; default: every one)")
    p.add_argument("--json", action="store_true", help="print JSON (the default prints a short table)")
    add_filter_arguments(p)  # the app's filter; --correct-source splits correct from incorrect CoTs
    p.set_defaults(func=_cmd_steps)


def _cmd_steps(args) -> int:
    import sys

    from core.filter_args import filter_from_args

    try:
        result = report(args.source, filter_from_args(args), db=args.db)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=1, default=str))
        return 0
    for s in result["sources"]:
        print(f"{s['source']}: {s['cots']:,} CoTs, {s['steps']:,} steps, {s['tokens']:,} tokens")
        for row in s["by_role"]:
            print(f"  {row['correctness']:<10} {row['role']:<24} {row['steps']:>9,} steps {row['tokens']:>11,} tokens  {row['share']:.1%}")
        if "first_error" in s:
            fe = s["first_error"]
            print(f"  first error: {fe['cots_with_error']:,} of {fe['cots_labelled']:,} labelled CoTs; "
                  f"median position {fe['position'].get('median', float('nan')):.2f}")
    if "agreement" in result:
        ra, fe = result["agreement"]["roles"], result["agreement"]["first_error"]
        kappa = "—" if ra["kappa"] is None else f"{ra['kappa']:.3f}"
        accuracy = "—" if ra["accuracy"] is None else f"{ra['accuracy']:.1%}"
        print(f"agreement on {ra['steps']:,} steps: accuracy {accuracy}, kappa {kappa}; first error on {fe['cots']:,} CoTs")
    return 0


def split_steps_command(parser):
    """`python -m core split-steps` (job kind 'steps', flags from StepOptions): one sentence, or
    the result as JSON with --json."""
    parser.add_argument("--json", action="store_true", help="print the result as JSON")

    def command(args, options, run) -> int:
        result = run()
        if args.json:
            print(json.dumps(result))
        else:
            print(f"'{result['source']}': {result['cots']:,} CoTs, {result['steps']:,} steps, {result['tokens']:,} tokens "
                  f"in {result['seconds']:.1f} s" + (f"; {result['remaining']:,} still to do" if result["remaining"] else ""))
        return 0

    return command
