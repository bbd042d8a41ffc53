"""ThoughtScope from the command line.

    python -m core ingest PATH [--format F] [--name NAME] [--map role=COL,...] [--skip-bad]
    python -m core summary [--json]
    python -m core demo [--problems N] [--out FILE]
    python -m core index [--path DIR] [--json]
    python -m core problems [--json] [--filter QUERY] [--dataset D] [--condition JSON]   (core/difficulty.py)
    python -m core jobs [--json]
    python -m core compare --a DATASET --b DATASET [--json] | --list   (core/compare.py)
    python -m core tokens|markers|verify|score|finetune|evaluate [--flags]   (one per job kind, core/job_kinds.py)
    python -m core keys|contamination|near-duplicates|map [--flags]  (job kinds too; core/problems_cli.py)
    python -m core split-steps [--unit sentence|paragraph] [--from-source S]   (the job kind 'steps')
    python -m core ingest STEPS_FILE --steps-for DATASET   (core/step_labels.py)
    python -m core steps [--json] [--source S [--source S2]]
    python -m core labels export|import|summary   (core/labels_cli.py)
    python -m core select --recipe NAME_OR_FILE [--json]   (core/select_cli.py)
    python -m core export --recipe NAME_OR_FILE --format jsonl|parquet|trl|sharegpt|alpaca --out PATH

The store is --db, else $THOUGHTSCOPE_DB, else data/thoughtscope.duckdb. The job-kind commands
run the job's own runner in this process with a progress bar, their flags generated from the
kind's options classes (core.options), so a command line and a job started from the Jobs page
take the same options and give the same result; the result is printed as one JSON line, or
as the kind's own ``cli`` hook prints it (a table, a sentence; see add_job_commands). A
request that cannot go ahead (core.errors.UserError) prints "error: ..." and exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core import job_kinds, store
from core.compare import add_compare_cli
from core.errors import UserError
from core.options import add_arguments, from_namespace
from core.progress import ProgressBar, RunContext
from core.labels_cli import add_labels_cli


def _bar(desc: str):
    """(progress callback, close) for a command: a tqdm bar per stage (core.progress.ProgressBar)."""
    bar = ProgressBar(desc)
    return bar, bar.close


def parse_mapping(text: str | None) -> dict[str, str]:
    """'question=prompt,response=output,score:rv=verbosity' -> {role: column}."""
    mapping = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        if "=" not in part:
            raise SystemExit(f"--map: '{part}' is not role=column")
        role, column = part.split("=", 1)
        mapping[role.strip()] = column.strip()
    return mapping


def _finish_stages(args, dataset_id: int, update) -> list[str]:
    """Run the stages after the load (verify, tokens) for one dataset, as the flags ask. Each
    skips what is already done, so after a killed run this finishes its work and adds nothing
    twice. Returns a sentence per stage that had work left."""
    from core.tokens import count_tokens_stage
    from core.verify import verify_stage

    done = []
    if not args.no_verify:
        verified = verify_stage(db=args.db, dataset_id=dataset_id, progress=update)
        if verified["cots"]:
            done.append(f"verified {verified['cots']:,} CoTs")
    # (looked up first: loading a tokenizer takes seconds, and `make run` comes here each time)
    uncounted = store.read_rows("SELECT count(*) FROM cots WHERE dataset_id = ? AND n_tokens IS NULL", [dataset_id], db=args.db)[0][0]
    if not args.no_tokens and uncounted:
        counted = count_tokens_stage(db=args.db, tokenizer=args.tokenizer, dataset_id=dataset_id, progress=update)
        if counted["cots"]:
            done.append(f"counted the tokens of {counted['cots']:,} CoTs")
    # reflection markers counted with an older marker set are recounted; densities published
    from core import markers

    marked = markers.run(db=args.db, dataset_id=dataset_id, progress=update)
    if marked["recounted"]:
        done.append(f"recounted the reflection markers of {marked['recounted']:,} CoTs")
    return done


def cmd_ingest(args) -> int:
    from core.formats import FORMATS, ReadOptions
    from core.ingest import ingest
    from core.records import IngestError

    from core import step_labels

    routed = step_labels.route_ingest(args)  # step-label files and --steps-for (core/step_labels.py)
    if routed is not None:
        return routed
    if args.format and args.format not in FORMATS:
        raise SystemExit(f"--format must be one of {', '.join(FORMATS + step_labels.FORMATS)}")
    opts = ReadOptions(mapping=parse_mapping(args.map), model=args.model, split=args.split, max_line_mb=args.max_line_mb)
    update, close = _bar("ingest")
    try:
        result = ingest(
            args.path, fmt=args.format, name=args.name, db=args.db, opts=opts,
            skip_bad=args.skip_bad, report_path=args.report, generated=args.generated, progress=update,
        )
        # Also when the data was already loaded: a run killed during verify or tokens left
        # them unfinished, and running the same command again finishes them.
        finished = _finish_stages(args, result.dataset_id, update)
    except IngestError as exc:
        close()
        print(f"error: {exc}\nThe store was not changed.", file=sys.stderr)
        return 2
    index = None
    if not getattr(args, "no_index", False):
        from core.search import build_quietly

        index = build_quietly(args.db, log=lambda message: print(message, file=sys.stderr))
    close()
    if result.already_present:
        if index and index["indexed"]:
            finished.append(f"indexed {index['cots']:,} CoTs for search")
        left = "; finished what an earlier run left undone: " + ", ".join(finished) if finished else "; nothing to do"
        print(f"Already in the store as dataset '{result.name}' (id {result.dataset_id}, same content hash){left}.")
        return 0
    named = f" The name comes from {result.name_from}; --name sets another." if result.name_from else ""
    print(f"Ingested '{result.name}' (id {result.dataset_id}, format {result.format}): "
          f"{result.problems} problems, {result.cots} CoTs.{named}")
    if result.skipped_rows:
        print(f"Skipped {result.skipped_rows} bad rows; report: {result.bad_rows_report}")
    import polars as pl

    from core.summary import empty_message, format_table, summary

    table = summary(db=args.db).filter(pl.col("dataset") == result.name)
    print(format_table(table, empty=empty_message(db=args.db, dataset=result.name)))
    return 0


def cmd_summary(args) -> int:
    from core.summary import empty_message, format_table, summary

    df = summary(db=args.db, efficiency=args.json)
    if args.json:
        print(json.dumps(df.to_dicts(), indent=1, default=str))
    else:
        print(format_table(df, empty=empty_message(db=args.db)))
    return 0


def cmd_index(args) -> int:
    """Bring the full-text search index up to date (only datasets not indexed yet)."""
    from core.search import IndexBusy, build

    update, close = _bar("search index")
    try:
        result = build(args.db, path=args.path, progress=update)
    except IndexBusy as exc:
        close()
        print(f"error: {exc}", file=sys.stderr)
        return 3
    close()
    if args.json:
        print(json.dumps(result))
    elif result["indexed"] or result["removed"]:
        print(f"Indexed {result['cots']:,} CoTs and {result['problems']:,} questions of {len(result['indexed'])} "
              f"dataset(s) ({result['text_bytes'] / 1e6:,.0f} MB of text) in {result['seconds']:.1f} s; "
              f"removed {len(result['removed'])}; index {result['index']}")
    else:
        print(f"The search index {result['index']} already covers every ready dataset.")
    return 0


def cmd_demo(args) -> int:
    """Write the generated OmniThought-shaped demo and ingest it (labelled as generated)."""
    from core.demo import write_omnithought

    if args.if_empty:
        store.init_store(args.db)
        ready = store.read_rows("SELECT count(*) FROM datasets WHERE status = 'ready'", db=args.db)[0][0]
        if ready:
            # a `make run` killed during the demo's verify or tokens left them undone: finish them
            args.no_verify = args.no_tokens = False
            update, close = _bar("demo")
            demo_ids = [r[0] for r in store.read_rows(
                "SELECT dataset_id FROM datasets WHERE status = 'ready' AND generated AND name = ?",
                [args.name or "demo (generated)"], db=args.db)]
            finished = [step for dataset_id in demo_ids for step in _finish_stages(args, dataset_id, update)]
            from core.search import build_quietly

            index = build_quietly(args.db, log=lambda message: print(message, file=sys.stderr))
            if index and index["indexed"]:
                finished.append(f"indexed {index['cots']:,} CoTs for search")
            close()
            left = f"; finished the demo's stages: {', '.join(finished)}" if finished else ""
            print(f"The store {store.db_path(args.db)} already holds {ready} dataset(s); no demo needed{left}.")
            return 0
    out = Path(args.out or store.db_path(args.db).parent / "demo" / "omnithought-demo.parquet")
    out.parent.mkdir(parents=True, exist_ok=True)
    info = write_omnithought(out, args.problems, seed=args.seed)
    print(f"Wrote {info['problems']} generated problems, {info['cots']} CoTs to {out}")
    if args.no_ingest:
        return 0
    args.path, args.format, args.name, args.map, args.model, args.split = str(out), "omnithought", args.name or "demo (generated)", None, None, None
    args.skip_bad, args.report, args.generated, args.no_verify, args.no_tokens = False, None, True, False, False
    args.max_line_mb = 32
    return cmd_ingest(args)


def cmd_jobs(args) -> int:
    """The job list, as on the Jobs page."""
    from core import jobs

    frame = jobs.list_jobs(limit=None)
    if args.json:
        print(json.dumps([jobs.get(i) for i in frame["id"].to_list()], indent=1, default=str))
        return 0
    if frame.is_empty():
        print(f"No jobs in {jobs.jobs_db_path()}.")
        return 0
    for job_id in frame["id"].to_list():
        job = jobs.get(job_id)
        line = f"#{job['id']:<4} {job['kind']:<10} {job['state']:<12} {jobs.progress_text(job)}"
        if job["error"]:
            line += f"\n      error: {job['error']}"
        print(line)
    return 0


def _run_kind(kind: job_kinds.JobKind, args, command=None) -> int:
    """A job kind's runner in this process: options from the flags, a progress bar, the
    result printed as one JSON line (log lines go to stderr), or handed to the kind's own
    ``command`` (see add_job_commands)."""
    options = tuple(from_namespace(cls, args) for cls in kind.options)
    if kind.check is not None:
        kind.check(*options)

    def run() -> dict:
        with ProgressBar(kind.name) as bar:
            ctx = RunContext(db=args.db, progress=bar, log=lambda message: print(message, file=sys.stderr))
            return kind.runner()(*options, ctx)

    if command is not None:
        return command(args, options, run)
    result = run()
    print(json.dumps({k: v for k, v in result.items() if k not in kind.hidden}, default=str))
    return 0


def add_job_commands(subparsers) -> None:
    """A command per job kind with ``command`` set, its flags from the kind's options.

    A kind's ``cli`` hook, ``hook(parser) -> command``, adds the command's own flags (``--json``,
    ``--no-run``, ...) and returns ``command(args, options, run) -> exit code``: ``options`` are
    the kind's options instances made from the flags, ``run()`` runs the job's runner on them
    here with a progress bar and returns its result, and the command prints what it wants."""
    for kind in job_kinds.KINDS.values():
        name = kind.command_name()
        if name is None:
            continue
        p = subparsers.add_parser(name, help=kind.help, description=kind.help)
        for cls in kind.options:
            add_arguments(p, cls, title=getattr(cls, "OPTION_GROUP", cls.__name__) if len(kind.options) > 1 else None)
        hook = kind.cli_hook()
        command = hook(p) if hook is not None else None
        p.set_defaults(func=lambda args, kind=kind, command=command: _run_kind(kind, args, command))


def build_parser() -> argparse.ArgumentParser:
    from core.tokens import DEFAULT_TOKENIZER

    parser = argparse.ArgumentParser(prog="python -m core", description="ThoughtScope: curate chain-of-thought data.")
    parser.add_argument("--db", help="store file (default $THOUGHTSCOPE_DB or data/thoughtscope.duckdb)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="ingest a file, a folder or a hub id as a new dataset")
    p.add_argument("path")
    p.add_argument("--format", help="omnithought | qwen_eval | openr1 | generic | benchmark (default: detected)")
    p.add_argument("--name", help="dataset name (default: the file name)")
    p.add_argument("--map", help="generic format: role=column pairs, roles question, response, answer, model, "
                                 "sample, correct, id, thinking, solution, benchmark, score:METRIC")
    p.add_argument("--model", help="model/teacher name when the input has none")
    p.add_argument("--split", help="datasets folder or hub id: the split (default train)")
    p.add_argument("--skip-bad", action="store_true", help="ingest the good rows, report the bad ones")
    p.add_argument("--report", help="where --skip-bad writes the bad rows (JSONL)")
    p.add_argument("--max-line-mb", type=float, default=32, help="reject JSONL lines longer than this")
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help="HF id, local path, or the offline default")
    p.add_argument("--no-tokens", action="store_true", help="skip the token-count stage (run `tokens` later)")
    p.add_argument("--no-verify", action="store_true", help="skip math-verify (run `verify` later)")
    p.add_argument("--no-index", action="store_true", help="skip the search index (run `index` later)")
    p.add_argument("--generated", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--steps-for", help="PATH holds step labels (thought_anchors | prm800k | processbench) for this dataset's CoTs")
    p.add_argument("--step-source", help="step labels: the step source's name (default: the layout's name)")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("index", help="build the full-text search index of datasets not indexed yet (resumable)")
    p.add_argument("--path", help="index folder (default <store file>.search or $THOUGHTSCOPE_SEARCH_INDEX)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("summary", help="per dataset and model: counts, accuracy, tokens")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("demo", help="generate and ingest the OmniThought-shaped demo dataset")
    p.add_argument("--problems", type=int, default=400)
    p.add_argument("--if-empty", action="store_true", help="only when the store holds no dataset yet")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out")
    p.add_argument("--name")
    p.add_argument("--no-ingest", action="store_true")
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER)
    p.set_defaults(func=cmd_demo)

    from core import step_stats

    step_stats.add_cli(sub)  # steps [--json]: statistics, not a job

    from core import select_cli

    select_cli.add_cli(sub)  # select, export

    p = sub.add_parser("jobs", help="list background jobs and their state")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_jobs)

    add_job_commands(sub)  # tokens, verify, score, finetune, evaluate, keys, contamination, near-duplicates, map, split-steps
    add_labels_cli(sub)  # labels export|import|summary
    from core.difficulty import add_cli as add_difficulty_cli

    add_difficulty_cli(sub)  # problems
    add_compare_cli(sub)  # compare two evaluation runs
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except store.StoreBusy as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
