"""Export the CoTs a recipe (or a plain filter) keeps, streamed, with a manifest beside them.

Formats:

* ``jsonl`` / ``parquet``: one record per CoT with its ids (internal, readable, problem key),
  metadata, text fields and the selection's numbers (rv, cd, correct, score, weight);
* ``trl``: TRL's conversational format, ``{"messages": [{"role": "user", "content": question},
  {"role": "assistant", "content": response}]}``, loadable by ``datasets.load_dataset("json",
  ...)`` and trained on by ``trl.SFTTrainer`` as it is;
* ``sharegpt``: ``{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}]}``;
* ``alpaca``: ``{"instruction": question, "input": "", "output": response}``.

Every row of the three conversational formats also carries ``metadata``: ``{"cot_id",
"readable_id", "problem_key", "dataset", "model"}`` (core.ids), so a row can be traced back
without the manifest.

The response of the conversational formats keeps the thinking in the style asked for:
``think_tags`` (``<think>\\n...\\n</think>\\n\\nsolution``), ``begin_of_thought`` (Sky-T1's
``<|begin_of_thought|> ... <|end_of_solution|>`` markers) or ``none`` (the solution alone). A
CoT with no separate thinking (no markers in its text) is exported as its solution.

Streaming: the kept ids and numbers are computed first (no text), then the text is read in
batches of ``batch_size`` CoTs, each batch in its own short read-only connection (so an ingest
can commit between batches), and appended to a temporary file that is renamed into place when
complete. The manifest (``<file>.manifest.json``) records the recipe or filter, counts, source
datasets, every condition on a figure (the filter's and the selection's, in words and as
data) with the CoTs each drop reason removed, the score sources read (with their kind, model
and parameters; each dataset's own correctness resolved to the sources it read), the
benchmarks the exported datasets were checked against for contamination and the problems
dropped for each (``contamination``), the file's sha256 and size, the format and when it was made.

    >>> from core import export
    >>> result = export.export(recipe, "trl", thinking="think_tags")
    >>> result.path, result.manifest["sha256"]
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

from core import ids, labels, queries, store
from core.errors import UserError
from core.progress import ProgressFn
from core.queries import OWN_CORRECTNESS, CotFilter
from core.recipes import Recipe, slug
from core.selection import Selection, decide, kept_numbers

FORMATS: dict[str, str] = {
    "trl": ".jsonl", "sharegpt": ".jsonl", "alpaca": ".jsonl", "jsonl": ".jsonl", "parquet": ".parquet",
}
FORMAT_LABELS = {
    "trl": "TRL conversational (messages)", "sharegpt": "ShareGPT (conversations)",
    "alpaca": "Alpaca (instruction / input / output)", "jsonl": "JSONL, every field", "parquet": "Parquet, every field",
}
THINKING_STYLES: dict[str, str] = {
    "think_tags": "<think> ... </think> then the solution",
    "begin_of_thought": "<|begin_of_thought|> ... <|end_of_solution|> (Sky-T1 style)",
    "none": "solution only (thinking dropped)",
}
CONVERSATIONAL = ("trl", "sharegpt", "alpaca")
BATCH_ROWS = 2000

# The text of a batch of kept CoTs; the id range lets DuckDB skip row groups (ids are
# allocated in insertion order).
# ``n`` numbers a CoT among its problem's CoTs by id, for its readable id (core.ids): the
# window runs over the CoTs of the batch's problems only.
_TEXT_SQL = """
SELECT c.cot_id, c.dataset_id, p.problem_key, o.n, p.benchmark, c.sample_idx, p.question, p.reference_answer,
       c.thinking, c.solution, c.full_text, c.answer, c.truncated
FROM cots c JOIN problems p ON p.problem_id = c.problem_id
JOIN (SELECT cot_id, row_number() OVER (PARTITION BY problem_id ORDER BY cot_id) - 1 AS n
      FROM cots WHERE problem_id BETWEEN ? AND ?) o ON o.cot_id = c.cot_id
WHERE c.cot_id BETWEEN ? AND ? AND p.problem_id BETWEEN ? AND ?
  AND c.cot_id IN (SELECT cot_id FROM export_batch_ids)
ORDER BY c.cot_id
"""
# One read-only connection serves the batches for at most this long, then is let go so that
# an ingest waiting for the store can commit (a writer waits about this long at most). Opening
# a connection per batch cost more than the batch's own query at 2M CoTs.
CONNECTION_HOLD_S = 1.0

RECORD_COLUMNS = (
    "cot_id", "readable_id", "problem_id", "problem_key", "dataset", "model", "benchmark", "sample_idx",
    "question", "reference_answer",
    "thinking", "solution", "full_text", "answer", "n_tokens", "truncated", "rv", "cd", "correct", "score", "weight",
)


class ExportError(UserError):
    """An export that cannot be made as asked."""


@dataclass
class ExportResult:
    path: Path
    manifest_path: Path
    manifest: dict[str, Any]
    rows: int
    batches: int

    def read_bytes(self) -> bytes:
        """The file's bytes, for a browser download."""
        return self.path.read_bytes()


def exports_dir() -> Path:
    path = store.data_dir() / "exports"
    path.mkdir(parents=True, exist_ok=True)
    return path


def response_expr(style: str) -> pl.Expr:
    """The assistant turn from the ``thinking`` and ``solution`` columns in ``style``."""
    if style not in THINKING_STYLES:
        raise ExportError(f"unknown thinking style '{style}'; choose one of {', '.join(THINKING_STYLES)}")
    solution = pl.col("solution").fill_null("")
    if style == "none":
        return solution
    if style == "think_tags":
        wrapped = pl.concat_str([pl.lit("<think>\n"), pl.col("thinking"), pl.lit("\n</think>\n\n"), solution])
    else:
        wrapped = pl.concat_str([
            pl.lit("<|begin_of_thought|>\n\n"), pl.col("thinking"), pl.lit("\n\n<|end_of_thought|>\n\n<|begin_of_solution|>\n\n"),
            solution, pl.lit("\n\n<|end_of_solution|>"),
        ])
    return pl.when(pl.col("thinking").is_null()).then(solution).otherwise(wrapped)


# What every row of a conversational format carries beside the conversation, so a row can be
# traced to the store without the manifest: TRL's SFTTrainer drops columns its model does not
# take (remove_unused_columns), and the others leave unknown keys alone.
METADATA_COLUMNS = ("cot_id", "readable_id", "problem_key", "dataset", "model")


def shape(batch: pl.DataFrame, fmt: str, style: str) -> pl.DataFrame:
    """A batch of full records (RECORD_COLUMNS) in the export format's row shape; the
    conversational formats add a ``metadata`` object (METADATA_COLUMNS)."""
    if fmt in ("jsonl", "parquet"):
        return batch.select(RECORD_COLUMNS)
    response = response_expr(style)
    metadata = pl.struct(*METADATA_COLUMNS).alias("metadata")
    if fmt == "trl":
        return batch.select(messages=pl.concat_list([
            pl.struct(role=pl.lit("user"), content=pl.col("question")),
            pl.struct(role=pl.lit("assistant"), content=response),
        ]), metadata=metadata)
    if fmt == "sharegpt":
        return batch.select(conversations=pl.concat_list([
            pl.struct(**{"from": pl.lit("human"), "value": pl.col("question")}),
            pl.struct(**{"from": pl.lit("gpt"), "value": response}),
        ]), metadata=metadata)
    if fmt == "alpaca":
        return batch.select(instruction=pl.col("question"), input=pl.lit(""), output=response, metadata=metadata)
    raise ExportError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")


def _filter_numbers(f: CotFilter, *, db=None) -> pl.DataFrame:
    """Ids and numbers of every CoT a plain filter matches (its own sources' rv, cd, correct)."""
    sql, params = queries.matching_sql(f, db=db)
    return store.read_df(
        f"SELECT cot_id, problem_id, dataset, model, n_tokens, rv, cd, correct, NULL::DOUBLE AS score, "
        f"NULL::DOUBLE AS weight FROM ({sql}) ORDER BY cot_id", params, db=db,
    )


def _describe(what: Recipe | Selection | CotFilter) -> tuple[str, dict[str, Any]]:
    """A name for the file and what the manifest says was exported."""
    if isinstance(what, Recipe):
        return what.name, {"recipe": what.as_dict(), "filter": what.selection.base.as_dict()}
    if isinstance(what, Selection):
        unnamed = Recipe("selection", what)
        return "selection", {"recipe": unnamed.as_dict(), "filter": what.base.as_dict()}
    if isinstance(what, CotFilter):
        return "filter", {"recipe": None, "filter": what.as_dict()}
    raise ExportError(f"cannot export a {type(what).__name__}; give a recipe, a selection or a filter")


def _sources_used(what: Recipe | Selection | CotFilter, *, db=None) -> list[str]:
    """Every score source the export read: the filter's, the selection's, its score's and its
    conditions' (each dataset's own correctness as the sources it reads)."""
    sel = what.selection if isinstance(what, Recipe) else what
    base = sel.base if isinstance(sel, Selection) else sel
    names = [base.rv_source, base.cd_source]
    if base.correct_source == OWN_CORRECTNESS:
        names += queries.own_correctness_sources(db=db)
    else:
        names.append(base.correct_source)
    names += [c.figure.source for c in base.conditions]
    if isinstance(sel, Selection):
        names += [*sel.sources.rv, *sel.sources.cd, *sel.sources.correct]
        names += [c.figure.source for c in sel.conditions]
        score = getattr(sel.rule, "score", None)
        if score is not None and score.source:
            names.append(score.source)
    return list(dict.fromkeys(n for n in names if n))


def _conditions(what: Recipe | Selection | CotFilter, *, db=None) -> dict[str, Any]:
    """The conditions on figures the export applied, in words and as data, and how the
    filter's correctness was read."""
    sel = what.selection if isinstance(what, Recipe) else what
    base = sel.base if isinstance(sel, Selection) else sel
    listed = [{"applies_to": "filter", "condition": c.describe(), **c.as_dict()} for c in base.conditions]
    if isinstance(sel, Selection):
        listed += [{"applies_to": "selection", "condition": c.describe(), **c.as_dict()} for c in sel.conditions]
    out: dict[str, Any] = {"conditions": listed}
    if base.correct_source:
        out["filter_correctness"] = {
            "source": queries.correctness_label(base.correct_source),
            "reads": list(queries.own_correctness_sources(db=db)) if base.correct_source == OWN_CORRECTNESS
            else [base.correct_source],
        }
    return out


def _counts(numbers: pl.DataFrame) -> dict[str, Any]:
    def by(column: str) -> dict[str, int]:
        grouped = numbers.group_by(column).len().sort(column)
        return {str(k): int(v) for k, v in zip(grouped[column], grouped["len"])}

    return {
        "rows": numbers.height,
        "problems": numbers["problem_id"].n_unique(),
        "by_model": by("model"),
        "by_dataset": by("dataset"),
        "correct": int(numbers["correct"].sum() or 0),
        "correctness_unknown": int(numbers["correct"].null_count()),
    }


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _target_path(out_dir: Path, name: str, fmt: str, now: datetime) -> Path:
    stem = f"{slug(name)}-{fmt}-{now.strftime('%Y%m%d-%H%M%S')}"
    path = out_dir / f"{stem}{FORMATS[fmt]}"
    n = 1
    while path.exists():
        n += 1
        path = out_dir / f"{stem}-{n}{FORMATS[fmt]}"
    return path


def export(
    what: Recipe | Selection | CotFilter,
    fmt: str,
    *,
    thinking: str = "think_tags",
    out_dir: str | os.PathLike | None = None,
    out_path: str | os.PathLike | None = None,
    batch_size: int = BATCH_ROWS,
    db=None,
    progress: ProgressFn | None = None,
) -> ExportResult:
    """Write the CoTs ``what`` keeps to ``out_dir`` (default data/exports) in ``fmt`` and a
    manifest beside them; returns where they are and the manifest. ``out_path`` names the file
    itself instead (the command line's --out); an existing file there is refused."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    response_expr(thinking)  # validates the style
    if batch_size < 1:
        raise ExportError("the batch size must be at least 1")
    name, described = _describe(what)
    sel = what.selection if isinstance(what, Recipe) else what
    dropped: dict[str, int] | None = None
    if isinstance(sel, Selection):
        decision = decide(sel, db=db)
        numbers = kept_numbers(sel, decision=decision)
        reasons = pl.from_arrow(decision.select(["kept", "reason"])).filter(~pl.col("kept"))
        grouped = reasons.with_columns(pl.col("reason").cast(pl.String)).group_by("reason").len().sort(
            ["len", "reason"], descending=[True, False])
        dropped = dict(zip(grouped["reason"].to_list(), grouped["len"].to_list()))
    else:
        numbers = _filter_numbers(sel, db=db)

    now = datetime.now(timezone.utc)
    if out_path is not None:
        target = Path(out_path).absolute()
        if target.exists() or target.with_name(target.name + ".manifest.json").exists():
            raise ExportError(f"{target} (or its manifest) already exists; remove it or choose another path")
        out = target.parent
    else:
        out = Path(out_dir) if out_dir is not None else exports_dir()
    out.mkdir(parents=True, exist_ok=True)
    if out_path is None:
        target = _target_path(out, name, fmt, now)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=".part", dir=out)
    os.close(fd)
    tmp = Path(tmp_name)
    # the conversational formats never write full_text (thinking and solution make the
    # response): not reading it saves about a third of the text read
    text_sql = _TEXT_SQL.replace("c.full_text", "NULL::VARCHAR AS full_text") if fmt in CONVERSATIONAL else _TEXT_SQL
    batches = truncated = 0
    short = ids.dataset_short_names(db=db)  # readable ids' first part
    writer = None
    held = contextlib.ExitStack()
    con, opened = None, 0.0
    try:
        with open(tmp, "wb") as fh:
            for start in range(0, max(numbers.height, 1), batch_size):
                chunk = numbers.slice(start, batch_size)
                cot_ids, problems = chunk["cot_id"], chunk["problem_id"]
                problem_range = [problems.min() if chunk.height else 0, problems.max() if chunk.height else -1]
                params = [*problem_range, cot_ids.min() if chunk.height else 0, cot_ids.max() if chunk.height else -1,
                          *problem_range]
                if con is not None and time.monotonic() - opened > CONNECTION_HOLD_S:
                    held.close()
                    con = None
                if con is None:
                    con, opened = held.enter_context(store.connect(db, read_only=True)), time.monotonic()
                # the batch's ids as a registered Arrow table: binding 2,000 ids as a list
                # parameter cost more than the query itself
                con.register("export_batch_ids", chunk.select("cot_id").to_arrow())
                try:
                    text = pl.from_arrow(con.sql(text_sql, params=params).to_arrow_table())
                finally:
                    con.unregister("export_batch_ids")
                if text.height != chunk.height:
                    raise ExportError(
                        "the store changed while exporting (some kept CoTs are gone); export again"
                    )
                text = text.with_columns(readable_id=pl.concat_str([
                    pl.col("dataset_id").replace_strict(short, default=pl.lit("d") + pl.col("dataset_id").cast(pl.String),
                                                        return_dtype=pl.String),
                    pl.col("problem_key"), pl.col("n").cast(pl.String)], separator=":")).drop("dataset_id", "n")
                batch = chunk.join(text, on="cot_id", how="left", maintain_order="left")
                truncated += int(batch["truncated"].sum() or 0)
                rows = shape(batch, fmt, thinking)
                if fmt == "parquet":
                    import pyarrow.parquet as pq

                    table = rows.to_arrow()
                    if writer is None:
                        writer = pq.ParquetWriter(fh, table.schema, compression="zstd")
                    writer.write_table(table)
                else:
                    rows.write_ndjson(fh)
                batches += 1
                if progress:
                    progress("export", min(start + batch_size, numbers.height), numbers.height)
            if writer is not None:
                writer.close()
                writer = None
        held.close()
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; an export is meant to be shared
        os.replace(tmp, target)
    except BaseException:
        held.close()
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        raise

    manifest = {
        "format": fmt,
        "format_label": FORMAT_LABELS[fmt],
        "thinking": thinking if fmt in CONVERSATIONAL else None,
        "file": target.name,
        "path": str(target),
        "sha256": sha256_of(target),
        "bytes": target.stat().st_size,
        "created_at": now.isoformat(timespec="seconds"),
        **described,
        "counts": {**_counts(numbers), "truncated": truncated},
        "dropped_by_reason": dropped,
        **_conditions(what, db=db),
        "source_datasets": _datasets_of(numbers, db=db),
        "contamination": _contamination(sel, numbers, db=db),
        "score_sources": _score_sources(_sources_used(what, db=db), db=db),
        # the human labels read (core/labels.py): how many, the latest, a hash; absent when none
        **({"annotations": state} if (state := labels.state(_sources_used(what, db=db), db=db)) else {}),
        "problem_figures": _problem_figures(what, numbers, target, db=db),
        "batches": batches,
        "batch_size": batch_size,
        "store_schema_version": store.SCHEMA_VERSION,
    }
    manifest_path = target.with_name(target.name + ".manifest.json")
    text = json.dumps(manifest, indent=2, ensure_ascii=False, default=str)
    manifest_path.write_text(text + "\n")
    # hand back what the file says (lists, not tuples), so the two never differ
    return ExportResult(target, manifest_path, json.loads(text), numbers.height, batches)


def _problem_figures(what: Recipe | Selection | CotFilter, numbers: pl.DataFrame, target: Path, *, db=None):
    """The difficulty and student figures the export's conditions or score read, per exported
    problem, in a file beside it, and the student evaluations they were matched against
    (core.difficulty.manifest_section; None when it read none)."""
    from core.difficulty import manifest_section

    sel = what.selection if isinstance(what, Recipe) else what
    base = sel.base if isinstance(sel, Selection) else sel
    conditions = [*base.conditions, *(sel.conditions if isinstance(sel, Selection) else ())]
    score = getattr(sel.rule, "score", None) if isinstance(sel, Selection) else None
    return manifest_section(conditions, score.source if score is not None else None,
                            numbers["problem_id"].unique().to_list(), target, db=db)


def _contamination(sel: Selection | CotFilter, numbers: pl.DataFrame, *, db=None) -> dict[str, Any]:
    """The benchmarks the exported datasets were checked against, and the problems dropped for
    each (core.contamination.export_summary)."""
    from core import contamination

    if isinstance(sel, Selection):
        return contamination.export_summary(sel.base, sel.conditions, numbers, db=db)
    return contamination.export_summary(sel, (), numbers, db=db)


def _datasets_of(numbers: pl.DataFrame, *, db=None) -> list[dict[str, Any]]:
    names = numbers["dataset"].unique().drop_nulls().sort().to_list()
    if not names:
        return []
    return store.read_df(
        "SELECT name, source, format, content_hash, generated, n_problems, n_cots FROM datasets "
        "WHERE name IN (SELECT unnest(?::VARCHAR[])) ORDER BY name", [names], db=db,
    ).to_dicts()


def _score_sources(names: list[str], *, db=None) -> list[dict[str, Any]]:
    if not names:
        return []
    df = store.read_df(
        "SELECT name, kind, model, template_hash, params FROM score_sources WHERE name IN (SELECT unnest(?::VARCHAR[]))",
        [names], db=db,
    )
    order = {n: i for i, n in enumerate(names)}
    return sorted(df.to_dicts(), key=lambda r: order[r["name"]])


def list_exports(out_dir: str | os.PathLike | None = None) -> pl.DataFrame:
    """The exports in ``out_dir`` (default data/exports) from their manifests, newest first:
    file, format, thinking, rows, bytes, created_at, recipe (name or None), path."""
    folder = Path(out_dir) if out_dir is not None else exports_dir()
    rows = []
    for path in folder.glob("*.manifest.json"):
        try:
            m = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a manifest being written or damaged by hand: not listed
        rows.append({
            "file": m.get("file"), "format": m.get("format"), "thinking": m.get("thinking"),
            "rows": (m.get("counts") or {}).get("rows"), "bytes": m.get("bytes"), "created_at": m.get("created_at"),
            "recipe": (m.get("recipe") or {}).get("name"), "path": m.get("path"),
        })
    schema = {"file": pl.String, "format": pl.String, "thinking": pl.String, "rows": pl.Int64, "bytes": pl.Int64,
              "created_at": pl.String, "recipe": pl.String, "path": pl.String}
    return pl.DataFrame(rows, schema=schema).sort("created_at", descending=True, nulls_last=True)
