"""Command line and job glue for the problem stages: question keys, benchmark contamination,
near-duplicate problems.

    python -m core keys                                   # question keys of problems without one
    python -m core contamination [--n 8] [--min-overlap 0.2] [--cots] [--dataset D,..] [--benchmark B,..] [--no-run] [--json]
    python -m core near-duplicates [--threshold 0.6] [--no-run] [--json]

``contamination`` and ``near-duplicates`` first bring their stage up to date (a no-op when
nothing is new; ``--no-run`` skips it), then print their figures: contamination as one row per
dataset x benchmark (problems, flagged, exact), near-duplicates as one row per dataset.
"""

from __future__ import annotations

import json
import sys
from dataclasses import fields
from typing import Any


def options_from(cls, params: dict[str, Any]):
    """An options dataclass from a job's params (unknown keys ignored, lists made tuples)."""
    names = {f.name for f in fields(cls)}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items() if k in names and v is not None}
    return cls(**kwargs)


def _csv(text: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (text or "").split(",") if p.strip())


def _bar(desc: str):
    from core.progress import ProgressBar

    bar = ProgressBar(desc)
    return bar, bar.close


def _print_table(df, as_json: bool, empty: str) -> None:
    import polars as pl

    if as_json:
        print(json.dumps(df.to_dicts(), indent=1, default=str))
    elif df.is_empty():
        print(empty)
    else:
        with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200, tbl_hide_dataframe_shape=True):
            print(df)


def cmd_keys(args) -> int:
    from core.identity import run_problem_keys

    update, close = _bar("keys")
    result = run_problem_keys(args.db, progress=update)
    close()
    print(json.dumps(result))
    return 0


def cmd_contamination(args) -> int:
    from core.contamination import ContaminationOptions, counts, run_contamination

    if not args.no_run:
        options = ContaminationOptions(n=args.n, min_overlap=args.min_overlap, check_cots=args.cots,
                                       cot_min_overlap=args.cot_min_overlap, datasets=_csv(args.dataset))
        update, close = _bar("contamination")
        try:
            result = run_contamination(args.db, options, progress=update)
        except ValueError as exc:
            close()
            print(f"error: {exc}", file=sys.stderr)
            return 2
        close()
        if not result["benchmarks"]:
            print("No benchmark in the store: ingest one with `python -m core ingest FILE --format benchmark` "
                  "(or evaluation runs, whose benchmarks count too).", file=sys.stderr)
        elif not args.json:
            print(f"Checked {result['checked_problems']:,} problems"
                  + (f" and {result['checked_cots']:,} CoTs" if options.check_cots else "")
                  + f" against {', '.join(result['benchmarks'])} in {result['seconds']:.1f} s.", file=sys.stderr)
    table = counts(datasets=_csv(args.dataset), benchmarks=_csv(args.benchmark), db=args.db)
    _print_table(table, args.json, "No contamination figures yet: run `python -m core contamination`.")
    return 0


def cmd_near_duplicates(args) -> int:
    from core.neardup import NearDupOptions, run_near_duplicates, summary

    if not args.no_run:
        options = NearDupOptions(threshold=args.threshold, shingle=args.shingle, num_perm=args.num_perm)
        update, close = _bar("near-duplicates")
        result = run_near_duplicates(args.db, options, progress=update)
        close()
        if not args.json:
            print(f"Near-duplicates up to date ({result['seconds']:.1f} s): {result['sketched']:,} problems sketched, "
                  f"{result['queried']:,} queried, {result['pairs_new']:,} new pairs.", file=sys.stderr)
    _print_table(summary(db=args.db), args.json, "No near-duplicate figures yet: run `python -m core near-duplicates`.")
    return 0


def add_problems_cli(sub) -> None:
    from core.contamination import DEFAULT_COT_MIN_OVERLAP, DEFAULT_MIN_OVERLAP, DEFAULT_N
    from core.neardup import DEFAULT_NUM_PERM, DEFAULT_SHINGLE, DEFAULT_THRESHOLD

    p = sub.add_parser("keys", help="give every problem its normalised question key (resumable)")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("contamination", help="check every dataset's problems against every benchmark (resumable); "
                                            "print dataset x benchmark counts")
    p.add_argument("--n", type=int, default=DEFAULT_N, help="words per n-gram (default %(default)s)")
    p.add_argument("--min-overlap", type=float, default=DEFAULT_MIN_OVERLAP,
                   help="share of a benchmark problem's n-grams that flags a problem; 0: any shared n-gram (default %(default)s)")
    p.add_argument("--cots", action="store_true", help="also look for benchmark problems quoted in CoT text (slow)")
    p.add_argument("--cot-min-overlap", type=float, default=DEFAULT_COT_MIN_OVERLAP)
    p.add_argument("--dataset", help="only these datasets, comma-separated (checked and printed)")
    p.add_argument("--benchmark", help="print only these benchmarks, comma-separated")
    p.add_argument("--no-run", action="store_true", help="print the stored figures without updating them")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_contamination)

    p = sub.add_parser("near-duplicates", help="MinHash/LSH near-duplicate clusters of problems (resumable); print per dataset")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="Jaccard similarity (default %(default)s)")
    p.add_argument("--shingle", type=int, default=DEFAULT_SHINGLE, help="words per shingle (default %(default)s)")
    p.add_argument("--num-perm", type=int, default=DEFAULT_NUM_PERM, help="MinHash permutations (default %(default)s)")
    p.add_argument("--no-run", action="store_true", help="print the stored figures without updating them")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_near_duplicates)


# ---------------------------------------------------------------------------- job kinds (core.worker)


def _raise_if_cancelled(result: dict) -> dict:
    """A stage stopped by its cancelled() check returns; the job must still end as cancelled."""
    if result.get("cancelled"):
        from core.progress import JobCancelled

        raise JobCancelled()
    return result


def keys_job(params: dict[str, Any], ctx) -> dict:
    from core.identity import KeyOptions, run_problem_keys

    return _raise_if_cancelled(run_problem_keys(ctx.db, options_from(KeyOptions, params), progress=ctx.progress,
                                                cancelled=ctx.cancelled))


def contamination_job(params: dict[str, Any], ctx) -> dict:
    from core.contamination import ContaminationOptions, run_contamination

    result = run_contamination(ctx.db, options_from(ContaminationOptions, params), progress=ctx.progress,
                               cancelled=ctx.cancelled)
    _raise_if_cancelled(result)
    ctx.log(f"checked {result['checked_problems']:,} problems against {len(result['benchmarks'])} benchmark(s), "
            f"{result['matches']:,} matches")
    return result


def near_duplicates_job(params: dict[str, Any], ctx) -> dict:
    from core.neardup import NearDupOptions, run_near_duplicates

    result = run_near_duplicates(ctx.db, options_from(NearDupOptions, params), progress=ctx.progress,
                                 cancelled=ctx.cancelled)
    _raise_if_cancelled(result)
    ctx.log(f"near-duplicates: {result.get('pairs_new', 0):,} new pairs")
    return result
