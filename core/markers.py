"""Reflection markers: the stage that keeps every CoT's counts current, and their density.

Counts are made at ingest (core.text.MarkerCounter over the whole response; the phrases are in
core/reflection_markers.yaml). What a count means depends on the marker set and on the
counting rule, so each dataset records the hash of both it was counted with (table
``marker_counts``). This stage

1. **recounts** the CoTs of every dataset counted with another marker set or rule (a store
   ingested before the longest-match rule, or after the YAML was edited), batch by batch: each
   batch's counts and the dataset's progress commit in one transaction, so a killed run
   resumes at the first CoT not yet recounted and redoes nothing;
2. **publishes the density** ``reflections_per_1k_tokens`` = 1,000 x n_reflections / n_tokens
   of every CoT with a token count, as a figure: rows of ``scores`` under the stage source
   ``reflection markers`` (kind ``stage``), so the sidebar, Select conditions, recipes and the
   export manifest read it like any other figure. Each row's ``raw`` names the tokenizer its
   token count came from (a density over SmolLM2 tokens is not one over Qwen tokens; the
   sidebar warns when a filter mixes tokenizers). A row whose count or tokenizer changed since
   is replaced; a CoT without a token count has no density.

Existing stores are recounted by this stage (``python -m core markers``, or the ``markers`` job
on the Jobs page); re-running a dataset's ``python -m core ingest`` command also recounts that
dataset (the same content is not loaded twice, but its unfinished stages run), and every
ingest, token count and evaluation publishes the density of what it touched.

    >>> from core import markers
    >>> markers.run(db="data/thoughtscope.duckdb")           # doctest: +SKIP
    {'recounted': 12034, 'datasets': 1, 'density': 12034, 'markers_hash': '...'}
    >>> markers.DENSITY                                      # the figure, for conditions and scores
    Figure(metric='reflections_per_1k_tokens', source='reflection markers', level='cot')
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from core import store
from core.errors import UserError
from core.figures import Figure
from core.options import option
from core.progress import CancelledFn, LogFn, ProgressFn, raise_if_cancelled
from core.text import COUNTING_RULE, MarkerCounter, load_markers

SOURCE = "reflection markers"
DENSITY_METRIC = "reflections_per_1k_tokens"
DENSITY = Figure(DENSITY_METRIC, SOURCE)
BATCH_COTS = 4096


def markers_hash(markers: dict[str, list[str]]) -> str:
    """What a stored count depends on: the marker names and phrases, in order, and the
    counting rule (core.text.COUNTING_RULE)."""
    text = json.dumps({"rule": COUNTING_RULE, "markers": markers}, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def per_1k(count: int | None, n_tokens: int | None) -> float | None:
    """``count`` per 1,000 tokens; None without a positive token count."""
    if count is None or not n_tokens or n_tokens <= 0:
        return None
    return 1000.0 * count / n_tokens


def describe_counts(reflections: dict[str, int] | list | None, n_reflections: int, n_tokens: int | None,
                    tokenizer: str | None = None) -> str:
    """One line for a CoT: its raw counts with their densities per 1,000 tokens beside them, e.g.
    '5 reflection markers, 2.5 per 1,000 tokens (SmolLM2-135M-Instruct): wait 3 (1.5), hmm 2 (1.0)'
    (the tokenizer left out when None: the caller names it beside the token count)."""
    if isinstance(reflections, list):  # a DuckDB MAP read into polars: [{"key": k, "value": v}, ...]
        reflections = {item["key"]: item["value"] for item in reflections}
    parts = [(name, count) for name, count in (reflections or {}).items() if count]
    density = per_1k(n_reflections, n_tokens)
    head = f"{n_reflections:,} reflection marker{'' if n_reflections == 1 else 's'}"
    if density is not None:
        head += f", {density:.1f} per 1,000 tokens" + (f" ({tokenizer})" if tokenizer else "")
    if not parts:
        return head
    detail = ", ".join(f"{name} {count:,}" + (f" ({per_1k(count, n_tokens):.1f})" if density is not None else "")
                       for name, count in parts)
    return f"{head}: {detail}"


@dataclass
class MarkersOptions:
    """A reflection-marker job (``python -m core markers``): recount what another marker set
    counted, then publish the density figure."""

    markers: str | None = option(None, label="Marker file",
                                 help="a marker YAML (default: the bundled core/reflection_markers.yaml)")
    dataset_id: int | None = option(None, help="only this dataset (default: every dataset)")
    batch_cots: int = option(BATCH_COTS, help="CoTs per committed batch")

    def __post_init__(self):
        if self.batch_cots < 1:
            raise UserError(f"batch cots must be at least 1, got {self.batch_cots}.")
        if self.markers and not Path(self.markers).expanduser().is_file():
            raise UserError(f"The marker file {self.markers} does not exist; give a YAML of name: [phrases].")


def _load(path: str | None) -> dict[str, list[str]]:
    try:
        return load_markers(Path(path).expanduser() if path else None)
    except (OSError, ValueError) as exc:
        raise UserError(f"The marker file cannot be read: {exc}") from exc


def stale_datasets(*, db=None, markers_path: str | None = None, dataset_id: int | None = None) -> list[dict]:
    """Ready datasets whose counts were made with another marker set or rule (or are half
    recounted): dataset_id, name, n_cots, and from where the recount goes on (``after``)."""
    current = markers_hash(_load(markers_path))
    sql = (
        "SELECT d.dataset_id, d.name, d.n_cots, m.markers_hash, m.done_through, m.complete FROM datasets d "
        "LEFT JOIN marker_counts m USING (dataset_id) WHERE d.status = 'ready'"
    )
    params: list = []
    if dataset_id is not None:
        sql += " AND d.dataset_id = ?"
        params.append(dataset_id)
    out = []
    for ds, name, n_cots, stored, done, complete in store.read_rows(sql + " ORDER BY d.dataset_id", params, db=db):
        if stored == current and complete:
            continue
        after = done if stored == current and done is not None else -1
        out.append({"dataset_id": ds, "name": name, "n_cots": n_cots, "after": after})
    return out


def recount(
    *, db=None, markers_path: str | None = None, dataset_id: int | None = None, batch_cots: int = BATCH_COTS,
    progress: ProgressFn | None = None, cancelled: CancelledFn | None = None, log: LogFn | None = None,
) -> dict:
    """Recount the reflection markers of every CoT of the stale datasets (stale_datasets);
    returns {'recounted': CoTs, 'datasets': n, 'markers_hash': ...}."""
    store.init_store(db)  # an old store gains the marker_counts table
    markers = _load(markers_path)
    current = markers_hash(markers)
    counter = MarkerCounter(markers)
    names = counter.names
    todo = stale_datasets(db=db, markers_path=markers_path, dataset_id=dataset_id)
    total = sum(d["n_cots"] for d in todo)
    done = 0
    for ds in todo:
        if log:
            log(f"recounting the reflection markers of '{ds['name']}' ({ds['n_cots']:,} CoTs) with marker set {current}")
        after = ds["after"]
        while True:
            raise_if_cancelled(cancelled)
            rows = store.read_rows(
                "SELECT cot_id, full_text FROM cots WHERE dataset_id = ? AND cot_id > ? ORDER BY cot_id LIMIT ?",
                [ds["dataset_id"], after, batch_cots], db=db,
            )
            ids = [r[0] for r in rows]
            counts = [counter.counts(r[1]) for r in rows]
            del rows
            with store.connect(db, read_only=False) as con:
                con.execute("BEGIN")
                if ids:
                    k = len(names)
                    flat = [n for row in counts for n in row]
                    table = pa.table({
                        "cot_id": pa.array(ids, pa.int64()),
                        "n": pa.array([sum(row) for row in counts], pa.int32()),
                        "m": pa.MapArray.from_arrays(pa.array(range(0, len(ids) * k + 1, k), pa.int32()),
                                                     pa.array(names * len(ids), pa.string()), pa.array(flat, pa.int32())),
                    })
                    con.register("marker_batch", table)
                    con.execute("UPDATE cots SET n_reflections = b.n, reflections = b.m FROM marker_batch b "
                                "WHERE cots.cot_id = b.cot_id")
                    con.unregister("marker_batch")
                con.execute("DELETE FROM marker_counts WHERE dataset_id = ?", [ds["dataset_id"]])
                con.execute("INSERT INTO marker_counts VALUES (?, ?, ?, ?)",
                            [ds["dataset_id"], current, ids[-1] if ids else after, not ids])
                con.execute("COMMIT")
            if not ids:
                break
            after = ids[-1]
            done += len(ids)
            if progress:
                progress("markers", done, total)
    return {"recounted": done, "datasets": len(todo), "markers_hash": current}


def publish_density(*, db=None, dataset_id: int | None = None) -> dict:
    """Write ``reflections_per_1k_tokens`` for every CoT (of ``dataset_id``, else of every
    ready dataset) whose density is missing or out of date (its count, its token count or its
    tokenizer changed); one transaction per dataset. Returns {'density': rows written}."""
    store.init_store(db)
    datasets = [r[0] for r in store.read_rows(
        "SELECT dataset_id FROM datasets WHERE status = 'ready'" + (" AND dataset_id = ?" if dataset_id is not None else "")
        + " ORDER BY dataset_id", [] if dataset_id is None else [dataset_id], db=db)]
    written = 0
    # what each CoT's row should hold; a row that differs is out of date (recounted markers,
    # recounted tokens, another tokenizer) and is replaced
    expected = ("SELECT c.cot_id, 1000.0 * c.n_reflections / c.n_tokens AS value, coalesce(c.tokenizer, 'unknown') "
                "AS raw FROM cots c WHERE c.dataset_id = ? AND c.n_tokens > 0")
    current = ("EXISTS (SELECT 1 FROM ({expected}) e WHERE e.cot_id = s.cot_id AND e.value = s.value AND e.raw = s.raw)"
               .format(expected=expected))
    for ds in datasets:
        lo, hi = ds << store.ID_SHIFT, (ds + 1) << store.ID_SHIFT
        with store.connect(db, read_only=False) as con:
            con.execute("BEGIN")
            source_id = store.ensure_source(con, SOURCE, "stage", params=json.dumps({
                "metric": DENSITY_METRIC, "formula": "1000 * n_reflections / n_tokens",
                "tokens": "each CoT's own token count; the row's raw names its tokenizer",
                "markers": "the marker set each dataset was counted with (table marker_counts)",
            }))
            mine = "s.source_id = ? AND s.metric = ? AND s.cot_id >= ? AND s.cot_id < ?"
            con.execute(f"DELETE FROM scores s WHERE {mine} AND NOT {current}", [source_id, DENSITY_METRIC, lo, hi, ds])
            inserted = con.execute(
                f"INSERT INTO scores (cot_id, source_id, metric, value, raw) SELECT e.cot_id, ?, ?, e.value, e.raw "
                f"FROM ({expected}) e WHERE NOT EXISTS (SELECT 1 FROM scores s WHERE {mine} AND s.cot_id = e.cot_id)",
                [source_id, DENSITY_METRIC, ds, source_id, DENSITY_METRIC, lo, hi]).fetchone()[0]
            con.execute("COMMIT")
        written += int(inserted)
    return {"density": written}


def run(
    *, db=None, markers_path: str | None = None, dataset_id: int | None = None, batch_cots: int = BATCH_COTS,
    progress: ProgressFn | None = None, cancelled: CancelledFn | None = None, log: LogFn | None = None,
) -> dict:
    """recount, then publish_density: the whole stage."""
    started = time.perf_counter()
    result = recount(db=db, markers_path=markers_path, dataset_id=dataset_id, batch_cots=batch_cots,
                     progress=progress, cancelled=cancelled, log=log)
    result.update(publish_density(db=db, dataset_id=dataset_id))
    result["seconds"] = time.perf_counter() - started
    return result


def markers_job(opts: MarkersOptions, ctx) -> dict:
    """The ``markers`` job kind (core.job_kinds)."""
    result = run(db=ctx.db, markers_path=opts.markers, dataset_id=opts.dataset_id, batch_cots=opts.batch_cots,
                 progress=ctx.progress, cancelled=ctx.cancelled, log=ctx.log)
    ctx.log(f"recounted {result['recounted']:,} CoTs of {result['datasets']} dataset(s); wrote {result['density']:,} "
            "densities")
    return result
