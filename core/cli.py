"""ThoughtScope from the command line.

    python -m core ingest PATH [--format F] [--name NAME] [--map role=COL,...] [--skip-bad]
    python -m core summary [--json]
    python -m core tokens [--tokenizer NAME] [--recount]
    python -m core verify
    python -m core demo [--problems N] [--out FILE]
    python -m core index [--path DIR] [--json]
    python -m core score|finetune|evaluate ...   (see core/ml_cli.py)
    python -m core keys|contamination|near-duplicates ...   (see core/problems_cli.py)
    python -m core jobs [--json]

The store is --db, else $THOUGHTSCOPE_DB, else data/thoughtscope.duckdb.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core import jobs, store
from core.ml_cli import add_ml_cli
from core.problems_cli import add_problems_cli


def _bar(desc: str):
    """A tqdm bar per stage, fed by the (stage, done, total) progress callbacks."""
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def update(stage: str, done: int, total: int | None) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=f"{desc}: {stage}", unit={"read": "row", "load": "chunk"}.get(stage, "cot"), file=sys.stderr)
        bar.total = total
        bar.n = done
        bar.refresh()

    def close() -> None:
        for bar in bars.values():
            bar.close()

    return update, close


def parse_mapping(text: str | None) -> dict[str, str]:
    """'question=prompt,response=output,score:rv=verbosity' -> {role: column}."""
    mapping = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        if "=" not in part:
            raise SystemExit(f"--map: '{part}' is not role=column")
        role, column = part.split("=", 1)
        mapping[role.strip()] = column.strip()
    return mapping


def cmd_ingest(args) -> int:
    from core.formats import FORMATS, ReadOptions
    from core.ingest import ingest
    from core.records import IngestError
    from core.tokens import count_tokens_stage
    from core.verify import verify_stage

    if args.format and args.format not in FORMATS:
        raise SystemExit(f"--format must be one of {', '.join(FORMATS)}")
    opts = ReadOptions(mapping=parse_mapping(args.map), model=args.model, split=args.split, max_line_mb=args.max_line_mb)
    update, close = _bar("ingest")
    try:
        result = ingest(
            args.path, fmt=args.format, name=args.name, db=args.db, opts=opts,
            skip_bad=args.skip_bad, report_path=args.report, generated=args.generated, progress=update,
        )
        if result.already_present:
            close()
            print(f"Already in the store as dataset '{result.name}' (id {result.dataset_id}, same content hash); nothing to do.")
            return 0
        if not args.no_verify:
            verify_stage(db=args.db, dataset_id=result.dataset_id, progress=update)
        if not args.no_tokens:
            count_tokens_stage(db=args.db, tokenizer=args.tokenizer, dataset_id=result.dataset_id, progress=update)
    except IngestError as exc:
        close()
        print(f"error: {exc}\nThe store was not changed.", file=sys.stderr)
        return 2
    if not getattr(args, "no_index", False):
        from core.search import build_quietly

        build_quietly(args.db, log=lambda message: print(message, file=sys.stderr))
    close()
    print(f"Ingested '{result.name}' (id {result.dataset_id}, format {result.format}): "
          f"{result.problems} problems, {result.cots} CoTs.")
    if result.skipped_rows:
        print(f"Skipped {result.skipped_rows} bad rows; report: {result.bad_rows_report}")
    import polars as pl

    from core.summary import format_table, summary

    table = summary(db=args.db).filter(pl.col("dataset") == result.name)
    print(format_table(table))
    return 0


def cmd_summary(args) -> int:
    from core.summary import format_table, summary

    df = summary(db=args.db)
    if args.json:
        print(json.dumps(df.to_dicts(), indent=1, default=str))
    else:
        print(format_table(df))
    return 0


def cmd_tokens(args) -> int:
    from core.tokens import count_tokens_stage

    update, close = _bar("tokens")
    result = count_tokens_stage(db=args.db, tokenizer=args.tokenizer, recount=args.recount, progress=update)
    close()
    print(json.dumps(result))
    return 0


def cmd_verify(args) -> int:
    from core.verify import verify_stage

    update, close = _bar("verify")
    result = verify_stage(db=args.db, progress=update)
    close()
    print(json.dumps(result))
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
            print(f"The store {store.db_path(args.db)} already holds {ready} dataset(s); no demo needed.")
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
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("index", help="build the full-text search index of datasets not indexed yet (resumable)")
    p.add_argument("--path", help="index folder (default <store file>.search or $THOUGHTSCOPE_SEARCH_INDEX)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("summary", help="per dataset and model: counts, accuracy, tokens")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("tokens", help="count tokens of CoTs without a count (resumable)")
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER)
    p.add_argument("--recount", action="store_true", help="also recount CoTs counted by another tokenizer")
    p.set_defaults(func=cmd_tokens)

    p = sub.add_parser("verify", help="check answers against reference answers with math-verify (resumable)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("demo", help="generate and ingest the OmniThought-shaped demo dataset")
    p.add_argument("--problems", type=int, default=400)
    p.add_argument("--if-empty", action="store_true", help="only when the store holds no dataset yet")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out")
    p.add_argument("--name")
    p.add_argument("--no-ingest", action="store_true")
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER)
    p.set_defaults(func=cmd_demo)

    jobs.add_cli(sub)  # worker --job ID, jobs [--json]
    add_ml_cli(sub)  # score, finetune, evaluate
    add_problems_cli(sub)  # keys, contamination, near-duplicates
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except store.StoreBusy as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
