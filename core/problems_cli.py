"""The problem stages as jobs and commands: question keys, benchmark contamination,
near-duplicate problems, the map of the problems.

    python -m core keys                                   # question keys of problems without one
    python -m core contamination [--n 8] [--min-overlap 0.2] [--cots] [--dataset D,..] [--benchmark B,..] [--no-run] [--json]
                                 [the app's filter: --filter URL-or-JSON, --model M, --condition JSON, ...]
    python -m core near-duplicates [--threshold 0.6] [--no-run] [--json]
    python -m core map [--model M] [--device cuda] [--clusters K] [--no-project] [--json]

Each is a job kind (core/job_kinds.py): its flags are generated from its options class
(``KeyOptions``, ``ContaminationOptions``, ``NearDupOptions``, ``MapOptions``), so the command,
a job started from the Jobs page and its form take the same options. The runners below run
the stage; the ``*_command`` functions add what each command prints for a person:
``contamination`` and ``near-duplicates`` first bring their stage up to date (a no-op when
nothing is new; ``--no-run`` skips it), then print their figures (contamination as one row per
dataset x benchmark, counting the problems the app's filter matches (core.filter_args),
near-duplicates as one row per dataset); ``map`` says what it did in a sentence, or prints the
result as JSON with ``--json``.
"""

from __future__ import annotations

import json
import sys


def _print_table(df, as_json: bool, empty: str) -> None:
    import polars as pl

    if as_json:
        print(json.dumps(df.to_dicts(), indent=1, default=str))
    elif df.is_empty():
        print(empty)
    else:
        with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200, tbl_hide_dataframe_shape=True):
            print(df)


def _csv(values) -> tuple[str, ...]:
    """A repeatable, comma-separated flag's values."""
    return tuple(p.strip() for v in values or () for p in str(v).split(",") if p.strip())


# ---------------------------------------------------------------------------- commands (core.cli)


def contamination_command(parser):
    """`python -m core contamination`: bring the check up to date, then print the dataset x
    benchmark counts."""
    from core.filter_args import add_filter_arguments

    parser.add_argument("--benchmark", action="append", help="print only these benchmarks, comma-separated")
    parser.add_argument("--no-run", action="store_true", help="print the stored figures without updating them")
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    # the app's filter (--dataset is the option above, --benchmark the benchmarks compared with)
    add_filter_arguments(parser, skip=("dataset", "benchmark"))

    def command(args, options, run) -> int:
        from core.contamination import counts
        from core.filter_args import filter_from_args

        (opts,) = options
        if not args.no_run:
            result = run()
            if not result["benchmarks"]:
                print("No benchmark in the store: ingest one with `python -m core ingest FILE --format benchmark` "
                      "(or evaluation runs, whose benchmarks count too).", file=sys.stderr)
            elif not args.json:
                print(f"Checked {result['checked_problems']:,} problems"
                      + (f" and {result['checked_cots']:,} CoTs" if opts.check_cots else "")
                      + f" against {', '.join(result['benchmarks'])} in {result['seconds']:.1f} s.", file=sys.stderr)
        f = filter_from_args(args, datasets=opts.datasets)
        table = counts(datasets=opts.datasets, benchmarks=_csv(args.benchmark), f=f, db=args.db)
        _print_table(table, args.json, "No contamination figures yet: run `python -m core contamination`.")
        return 0

    return command


def near_duplicates_command(parser):
    """`python -m core near-duplicates`: bring the clusters up to date, then print them per dataset."""
    parser.add_argument("--no-run", action="store_true", help="print the stored figures without updating them")
    parser.add_argument("--json", action="store_true", help="print the per-dataset figures as JSON")

    def command(args, options, run) -> int:
        from core.neardup import summary

        if not args.no_run:
            result = run()
            if not args.json:
                print(f"Near-duplicates up to date ({result['seconds']:.1f} s): {result['sketched']:,} problems sketched, "
                      f"{result['queried']:,} queried, {result['pairs_new']:,} new pairs.", file=sys.stderr)
        _print_table(summary(db=args.db), args.json, "No near-duplicate figures yet: run `python -m core near-duplicates`.")
        return 0

    return command


def map_command(parser):
    """`python -m core map`: embed what is new, then project, cluster and publish; one sentence
    (or the result as JSON)."""
    parser.add_argument("--json", action="store_true", help="print the result as JSON")

    def command(args, options, run) -> int:
        result = run()
        if args.json:
            print(json.dumps(result, default=str))
            return 0
        embed, made = result["embed"], result.get("map")
        print(f"Embedded {embed['embedded']:,} problems with {embed['model']}; "
              + ("the map was already current." if made and made.get("current") else
                 f"map '{made['source']}': {made['problems']:,} problems, {made['clusters']} clusters." if made else
                 f"no projection yet ({embed['pending']:,} problems still to embed)." if embed["pending"] else
                 "no projection (--no-project)."))
        return 0

    return command


# ---------------------------------------------------------------------------- job kinds (core.job_kinds)


def _raise_if_cancelled(result: dict) -> dict:
    """A stage stopped by its cancelled() check returns; the job must still end as cancelled."""
    if result.get("cancelled"):
        from core.progress import JobCancelled

        raise JobCancelled()
    return result


def keys_job(opts, ctx) -> dict:
    """Job kind 'keys' (core.identity.KeyOptions)."""
    from core.identity import run_problem_keys

    return _raise_if_cancelled(run_problem_keys(ctx.db, opts, progress=ctx.progress, cancelled=ctx.cancelled))


def contamination_job(opts, ctx) -> dict:
    """Job kind 'contamination' (core.contamination.ContaminationOptions)."""
    from core.contamination import run_contamination

    result = _raise_if_cancelled(run_contamination(ctx.db, opts, progress=ctx.progress, cancelled=ctx.cancelled))
    ctx.log(f"checked {result['checked_problems']:,} problems against {len(result['benchmarks'])} benchmark(s), "
            f"{result['matches']:,} matches")
    return result


def near_duplicates_job(opts, ctx) -> dict:
    """Job kind 'near_duplicates' (core.neardup.NearDupOptions)."""
    from core.neardup import run_near_duplicates

    result = _raise_if_cancelled(run_near_duplicates(ctx.db, opts, progress=ctx.progress, cancelled=ctx.cancelled))
    ctx.log(f"near-duplicates: {result.get('pairs_new', 0):,} new pairs")
    return result
