"""`python -m core select` and `python -m core export`: a recipe applied, and its CoTs
exported, from the command line, with the same code (and the same manifest) as the Select and
Export pages.

    python -m core select --recipe NAME_OR_FILE [--json]
    python -m core export --recipe NAME_OR_FILE --format jsonl|parquet|trl|sharegpt|alpaca --out PATH
                          [--thinking think_tags|begin_of_thought|none]

``--recipe`` is a saved recipe's name or a JSON file written by hand (core/recipes.py documents
the schema; a mistake is named by its field). ``select`` prints the pool, kept and dropped
counts per model and per drop reason; with ``--json`` one JSON object that also lists the kept
and the dropped ids (cot_id, as the store gave them; the export's records carry the same ids).
"""

from __future__ import annotations

import json
import sys

import polars as pl


def add_cli(sub) -> None:
    """Register `select` and `export`."""
    from core.export import FORMATS, THINKING_STYLES

    p = sub.add_parser("select", help="apply a recipe: kept and dropped counts (per model, per reason) and ids")
    p.add_argument("--recipe", required=True, help="a saved recipe's name, or a recipe JSON file")
    p.add_argument("--json", action="store_true", help="one JSON object with the counts and the kept and dropped ids")
    p.set_defaults(func=_cmd_select)

    p = sub.add_parser("export", help="export the CoTs a recipe keeps, with the app's manifest beside the file")
    p.add_argument("--recipe", required=True, help="a saved recipe's name, or a recipe JSON file")
    p.add_argument("--format", required=True, choices=tuple(FORMATS), help="the file's format")
    p.add_argument("--out", required=True, help="the file to write (its manifest goes to OUT.manifest.json)")
    p.add_argument("--thinking", default="think_tags", choices=tuple(THINKING_STYLES),
                   help="trl/sharegpt/alpaca: how the thinking is kept in the response")
    p.add_argument("--batch-size", type=int, default=None, help="CoTs read per batch (default 2000)")
    p.set_defaults(func=_cmd_export)


def selection_result(recipe, *, db=None) -> dict:
    """What `select --json` prints: the recipe, pool / kept / dropped counts, per model and per
    drop reason, and the kept and dropped cot_ids (ascending)."""
    from core.selection import decide, summarize

    decision = decide(recipe.selection, db=db)
    report = summarize(decision, recipe.selection)
    frame = pl.from_arrow(decision.select(["cot_id", "kept"])).sort("cot_id")
    return {
        "recipe": recipe.name,
        "mode": recipe.selection.rule.mode,
        "seed": recipe.selection.seed,
        "draw": recipe.selection.draw,
        "pool_cots": report.pool_cots,
        "kept_cots": report.kept_cots,
        "dropped_cots": report.dropped_cots,
        "pool_problems": report.pool_problems,
        "kept_problems": report.kept_problems,
        "by_model": [{k: row[k] for k in ("group", "pool", "kept", "dropped")} for row in report.by_model.iter_rows(named=True)],
        "dropped_by_reason": dict(zip(report.reasons["reason"].to_list(), report.reasons["cots"].to_list())),
        "kept_ids": frame.filter("kept")["cot_id"].to_list(),
        "dropped_ids": frame.filter(~pl.col("kept"))["cot_id"].to_list(),
    }


def _cmd_select(args) -> int:
    from core import recipes

    result = selection_result(recipes.load(args.recipe), db=args.db)
    if args.json:
        json.dump(result, sys.stdout)
        print()
        return 0
    print(f"Recipe '{result['recipe']}' ({result['mode']}, seed {result['seed']}, draws keyed on {result['draw']}): "
          f"kept {result['kept_cots']:,} of {result['pool_cots']:,} CoTs ({result['kept_problems']:,} of "
          f"{result['pool_problems']:,} problems); dropped {result['dropped_cots']:,}.")
    width = max([len(str(m["group"])) for m in result["by_model"]] + [5])
    print(f"\n{'model':<{width}}  {'pool':>10}  {'kept':>10}  {'dropped':>10}")
    for m in result["by_model"]:
        print(f"{str(m['group']):<{width}}  {m['pool']:>10,}  {m['kept']:>10,}  {m['dropped']:>10,}")
    if result["dropped_by_reason"]:
        print("\ndropped because")
        for reason, n in result["dropped_by_reason"].items():
            print(f"  {n:>10,}  {reason}")
    print("\n(--json lists the kept and dropped cot_ids)")
    return 0


def _cmd_export(args) -> int:
    from core import export, recipes
    from core.progress import ProgressBar

    recipe = recipes.load(args.recipe)
    kwargs = {} if args.batch_size is None else {"batch_size": args.batch_size}
    with ProgressBar("export") as bar:
        result = export.export(recipe, args.format, thinking=args.thinking, out_path=args.out, db=args.db,
                               progress=bar, **kwargs)
    counts = result.manifest["counts"]
    print(json.dumps({"path": str(result.path), "manifest": str(result.manifest_path), "rows": result.rows,
                      "sha256": result.manifest["sha256"], "counts": counts}))
    return 0
