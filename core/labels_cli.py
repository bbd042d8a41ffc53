"""``python -m core labels ...``: the human labels kept beside the store (core/labels.py).

    python -m core labels export [--out FILE] [--annotator NAME ...]   # every label event, JSONL (stdout without --out)
    python -m core labels import FILE                                   # add another file's events (twice adds nothing)
    python -m core labels summary [--json]                              # per annotator and kind: labels, CoTs, latest

The line format is in the README ("Human labels"): one event a line, merged by event id.
"""

from __future__ import annotations

import json
import sys


def cmd_export(args) -> int:
    from core import labels

    annotators = tuple(args.annotator or ())
    if args.out:
        n = labels.export_jsonl(args.out, db=args.db, annotators=annotators)
        print(f"Wrote {n:,} label events to {args.out}", file=sys.stderr)
        return 0
    for line in labels.export_lines(db=args.db, annotators=annotators):
        sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
    return 0


def cmd_import(args) -> int:
    from core import labels

    result = labels.import_jsonl(args.file, db=args.db)
    print(json.dumps(result))
    return 0


def cmd_summary(args) -> int:
    import polars as pl

    from core import labels

    frame = labels.summary(db=args.db)
    if args.json:
        print(json.dumps(frame.to_dicts(), indent=1, default=str))
    elif frame.is_empty():
        print("No labels yet.")
    else:
        with pl.Config(tbl_rows=-1, tbl_width_chars=160, tbl_hide_dataframe_shape=True):
            print(frame)
    return 0


def add_labels_cli(sub) -> None:
    p = sub.add_parser("labels", help="human labels: export, import (JSONL), summary")
    labels_sub = p.add_subparsers(dest="labels_command", required=True)
    e = labels_sub.add_parser("export", help="every label event as JSONL (stdout, or --out FILE)")
    e.add_argument("--out", help="write to this file (atomically) instead of stdout")
    e.add_argument("--annotator", action="append", help="only this annotator's events (repeatable)")
    e.set_defaults(func=cmd_export)
    i = labels_sub.add_parser("import", help="add the events of a labels JSONL file (already present ones are skipped)")
    i.add_argument("file")
    i.set_defaults(func=cmd_import)
    s = labels_sub.add_parser("summary", help="per annotator and kind of label: labels, CoTs, not in this store, latest")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_summary)
