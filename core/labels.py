"""Human labels on CoTs: tags, a flag, a note, scores on the judges' scales and step roles, by
named annotators, and labelling queues.

Each annotator is a score source of kind ``human`` (``human: <name>``); everyone's tags, flags
and notes are also under the source ``annotations``. Labels are kept beside the store
(core/label_store.py says where and why) and merged into every read, so they are figures like
any other: ``rv · human: alice`` is a sidebar filter, a Select condition, a score to rank by,
a side on the Agreement page, and a column in the SQL console's ``scores`` (the console also
has ``labels`` and ``label_events``). Tags and flags are marks (value 1): ``tag:<tag>`` and
``flag:exclude`` / ``flag:include`` / ``flag:review``, so "only tag X" and "drop flagged
exclude" are plain conditions on figures (:func:`only_tag`, :func:`drop_flag`), carried by URLs,
recipes and manifests like every condition::

    >>> from core import labels
    >>> labels.record(cot_id, {"rv": 7, "flag": "exclude", "tag:degenerate": True}, annotator="alice", db=db)
    >>> labels.labels_of([cot_id], db=db)              # who, what, when
    >>> CotFilter(conditions=(labels.drop_flag("exclude"),))   # every CoT nobody flagged exclude

The scales (:data:`SCALES`) are the judges': RV and CD 0-9, logic and correct 0/1. A field set
to ``None`` clears it; a tag set to False removes it. The latest label per annotator, CoT and
field counts; every label ever given stays in the log with who and when.

A *queue* (:func:`create_queue`) is a fixed sample of the CoTs a filter matches: random with a
seed, stratified by a figure (equal numbers per level of, say, a judge's RV), or where two
figures disagree (a judge against the dataset's labels); its progress is per annotator.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import unicodedata
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from core import label_store, store
from core.errors import UserError
from core.figures import Condition, Figure
from core.label_store import COMBINED, SOURCE_PREFIX, is_human_source, source_name
from core.options import option
from core.queries import CotFilter

__all__ = ["COMBINED", "SOURCE_PREFIX", "is_human_source", "source_name"]

# The judges' scales: metric -> allowed values.
SCALES: dict[str, tuple[int, ...]] = {
    "rv": tuple(range(10)), "cd": tuple(range(10)), "logic": (0, 1), "correct": (0, 1),
}
SCALE_NAMES = {"rv": "RV (reasoning verbosity)", "cd": "CD (cognitive difficulty)", "logic": "logic", "correct": "correct"}
FLAGS: dict[str, str] = {"exclude": "exclude", "include": "include", "review": "needs review"}
MAX_TAG = 64
MAX_NOTE = 20_000
MAX_ANNOTATOR = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class LabelError(UserError):
    """A label that cannot be recorded as given (the message says why)."""


# ---------------------------------------------------------------------------- fields and values


def check_annotator(name: str | None) -> str:
    """The annotator name, stripped; refuses an empty, over-long or control-character name."""
    text = (name or "").strip()
    if not text:
        raise LabelError("labels need an annotator: sign in, set THOUGHTSCOPE_USER, or give a name")
    if len(text) > MAX_ANNOTATOR or _CONTROL.search(text):
        raise LabelError(f"an annotator name is at most {MAX_ANNOTATOR} characters without control characters")
    return text


def normalize_tag(text: str) -> str:
    """A tag as stored: NFKC, lower case, runs of whitespace as one space, stripped."""
    tag = " ".join(unicodedata.normalize("NFKC", str(text)).lower().split())
    if not tag:
        raise LabelError("a tag cannot be empty")
    if len(tag) > MAX_TAG or _CONTROL.search(tag):
        raise LabelError(f"a tag is at most {MAX_TAG} characters without control characters: '{tag[:80]}'")
    return tag


def tag_field(tag: str) -> str:
    return f"tag:{normalize_tag(tag)}"


def step_field(char_start: int, char_end: int) -> str:
    """The field of a step's role label: the step's characters in the CoT's step text."""
    return f"step:{int(char_start)}-{int(char_end)}"


_STEP = re.compile(r"^step:(\d+)-(\d+)$")


def check_value(field: str, value: Any) -> Any:
    """The value as stored for ``field`` (None clears), or LabelError saying what is allowed."""
    kind = label_store.label_kind(field)
    if kind == "tag":
        if normalize_tag(field[4:]) != field[4:]:
            raise LabelError(f"'{field}': tags are stored normalised, as '{tag_field(field[4:])}'")
        if value is None or isinstance(value, bool):
            return value
        raise LabelError(f"'{field}': a tag is true (set) or false (removed), not {value!r}")
    if value is None:
        return None
    if kind == "flag":
        if value not in FLAGS:
            raise LabelError(f"a flag is one of {', '.join(FLAGS)} (or null), not {value!r}")
        return value
    if kind == "note":
        if not isinstance(value, str) or len(value) > MAX_NOTE:
            raise LabelError(f"a note is text of at most {MAX_NOTE:,} characters")
        return value if value.strip() else None
    if kind == "step_role":
        from core.steps import ROLES

        match = _STEP.match(field)
        if not match or int(match.group(1)) >= int(match.group(2)):
            raise LabelError(f"'{field}': a step field is step:<first character>-<end>, with end after the start")
        if value not in ROLES:
            raise LabelError(f"a step role is one of {', '.join(ROLES)}, not {value!r}")
        return value
    if field not in SCALES:
        raise LabelError(f"'{field}' is not a label field: {', '.join(SCALES)}, tag:<tag>, flag, note or step:<a>-<b>")
    number = value
    if isinstance(value, bool):
        number = int(value)
    if not isinstance(number, (int, float)) or float(number) != int(number) or int(number) not in SCALES[field]:
        allowed = SCALES[field]
        raise LabelError(f"{field} is a whole number from {allowed[0]} to {allowed[-1]}, not {value!r}")
    return int(number)


# ---------------------------------------------------------------------------- writing


def _labels_file(db) -> Path:
    return label_store.path_for(store.db_path(db))


# identities() per (store file, its write stamp, cot_id): a labelling pass records several
# labels per CoT, and a CoT's content cannot change while the store is not written
_identity_cache: dict[tuple, dict[str, Any]] = {}
_identity_lock = threading.Lock()


def identities(cot_ids: list[int], *, db=None) -> dict[int, dict[str, Any]]:
    """Per CoT id: its content key, response length and where it sits (dataset, model, sample,
    problem key): what a label records about its CoT. Ids not in a ready dataset are absent."""
    if not cot_ids:
        return {}
    where = (str(store.db_path(db)), store.write_stamp(db))
    with _identity_lock:
        known = {c: _identity_cache[(*where, c)] for c in cot_ids if (*where, c) in _identity_cache}
    if len(known) == len(set(cot_ids)):
        return known
    found = _identities([c for c in cot_ids if c not in known], db=db)
    with _identity_lock:
        if len(_identity_cache) > 10_000:
            _identity_cache.clear()
        _identity_cache.update({(*where, c): v for c, v in found.items()})
    return {**known, **found}


def _identities(cot_ids: list[int], *, db=None) -> dict[int, dict[str, Any]]:
    where, params = label_store.ids_in("c.cot_id", cot_ids)
    with store.labels_off():
        rows = store.read_rows(
            f"SELECT c.cot_id, {label_store.KEY_SQL}, c.n_chars, d.name, c.model, c.sample_idx, p.problem_key "
            "FROM cots c JOIN problems p ON p.problem_id = c.problem_id JOIN datasets d ON d.dataset_id = c.dataset_id "
            f"WHERE d.status = 'ready' AND {where}", params, db=db)
    return {r[0]: {"cot_key": r[1], "n_chars": r[2], "context": {"dataset": r[3], "model": r[4], "sample": r[5],
                                                                   "problem_key": r[6]}} for r in rows}


def record(cot_id: int, changes: dict[str, Any], *, annotator: str, db=None,
           context: dict[str, Any] | None = None) -> int:
    """Record ``annotator``'s labels of one CoT: ``{field: value}`` (see :func:`check_value`;
    None clears a field). One event per field, all in one transaction beside the store: the store
    itself is not opened for writing, so no reader waits. Returns how many were recorded."""
    annotator = check_annotator(annotator)
    checked = {field: check_value(field, value) for field, value in changes.items()}
    if not checked:
        return 0
    found = identities([int(cot_id)], db=db).get(int(cot_id))
    if found is None:
        raise LabelError(f"there is no CoT {cot_id} in a ready dataset of this store")
    at = label_store.now_iso()
    where = json.dumps({**found["context"], **(context or {})}, ensure_ascii=False, default=str)
    events = [{"event_id": uuid.uuid4().hex, "at": at, "annotator": annotator, "cot_key": found["cot_key"],
               "field": field, "value": json.dumps(value, ensure_ascii=False), "cot_id": int(cot_id),
               "n_chars": found["n_chars"], "context": where} for field, value in checked.items()]
    return label_store.append(_labels_file(db), events)


# ---------------------------------------------------------------------------- reading


def version(*, db=None) -> int:
    """Changes whenever a label is added (0 without labels): a cache key for what reads them."""
    return label_store.version(_labels_file(db))


LABEL_COLUMNS = {"cot_id": pl.Int64, "annotator": pl.String, "source": pl.String, "kind": pl.String,
                 "field": pl.String, "value": pl.Float64, "text": pl.String, "labelled_at": pl.Datetime("us")}


def labels_of(cot_ids: list[int], *, db=None) -> pl.DataFrame:
    """The current labels of these CoTs, every annotator's: cot_id, annotator, source, kind
    (metric | tag | flag | note | step_role), field, value, text, labelled_at."""
    if not cot_ids or not _labels_file(db).exists():
        return pl.DataFrame(schema=LABEL_COLUMNS)
    return store.read_df(
        f"SELECT {', '.join(LABEL_COLUMNS)} FROM labels WHERE cot_id IN (SELECT unnest(?::BIGINT[])) "
        "ORDER BY cot_id, annotator, field", [list(cot_ids)], db=db,
    ).cast(LABEL_COLUMNS)


def mine(labels: pl.DataFrame, cot_id: int, annotator: str) -> dict[str, Any]:
    """One annotator's current labels of one CoT from a labels_of frame, as values to show:
    {metric: int, 'flag': name, 'note': text, 'tags': [...], 'steps': {(a, b): role}}."""
    out: dict[str, Any] = {"tags": [], "steps": {}}
    for row in labels.filter((pl.col("cot_id") == cot_id) & (pl.col("annotator") == annotator)).iter_rows(named=True):
        kind = row["kind"]
        if kind == "metric":
            out[row["field"]] = int(row["value"])
        elif kind == "tag":
            out["tags"].append(row["text"])
        elif kind == "step_role":
            start, end = (int(v) for v in row["field"][5:].split("-"))
            out["steps"][(start, end)] = row["text"]
        else:
            out[kind] = row["text"]
    out["tags"].sort()
    return out


def tags(*, db=None) -> list[str]:
    """Every tag in use (anyone's), most used first: the tag box's suggestions."""
    snap = label_store.snapshot(_labels_file(db))
    if snap is None or snap.current.height == 0:
        return []
    current = snap.current.filter(pl.col("field").str.starts_with("tag:") & (pl.col("value") == "true"))
    counted = current.group_by("field").len().sort(["len", "field"], descending=[True, False])
    return [f[4:] for f in counted["field"].to_list()]


def annotators(*, db=None) -> list[str]:
    snap = label_store.snapshot(_labels_file(db))
    return [] if snap is None else list(snap.sources)


def summary(*, db=None) -> pl.DataFrame:
    """Per annotator and kind of label: labels, CoTs labelled, labels whose CoT this store does
    not hold (a dropped dataset, an imported lab's CoTs), the latest label."""
    schema = {"annotator": pl.String, "kind": pl.String, "labels": pl.Int64, "cots": pl.Int64,
              "not_in_store": pl.Int64, "latest": pl.Datetime("us")}
    if not _labels_file(db).exists():
        return pl.DataFrame(schema=schema)
    return store.read_df(
        "SELECT annotator, kind, count(DISTINCT (cot_key, field)) AS labels, count(DISTINCT cot_id) AS cots, "
        "count(DISTINCT (cot_key, field)) FILTER (WHERE cot_id IS NULL) AS not_in_store, max(labelled_at) AS latest "
        "FROM labels GROUP BY ALL ORDER BY annotator, kind", db=db,
    ).cast(schema)


def human_figures(*, db=None) -> pl.DataFrame:
    """The figures the labels give (the catalogue's columns, core.figures.CATALOGUE_SCHEMA):
    one row per human source and metric with its count, range and whether it is integer or binary,
    over ready datasets. Cheap (the labels only), so it can be read after every label."""
    from core.figures import CATALOGUE_SCHEMA

    if not _labels_file(db).exists():
        return pl.DataFrame(schema=CATALOGUE_SCHEMA)
    frame = store.read_df(
        "SELECT 'cot' AS level, ss.name AS source, ss.kind, v.metric, count(v.value) AS count, min(v.value) AS min, "
        "max(v.value) AS max, coalesce(bool_and(v.value = floor(v.value)), true) AS integer, "
        "coalesce(bool_and(v.value IN (0, 1)), false) AS binary FROM __labels_scores v "
        "JOIN __labels_score_sources ss USING (source_id) GROUP BY ss.source_id, ss.name, ss.kind, v.metric "
        "HAVING count(v.value) > 0 ORDER BY ss.source_id, v.metric", db=db)
    return frame.with_columns(label=pl.concat_str([pl.col("metric"), pl.lit(" · "), pl.col("source")])) \
        .cast({k: v for k, v in CATALOGUE_SCHEMA.items()}).select(list(CATALOGUE_SCHEMA))


def sources_by_metric(*, db=None) -> dict[str, list[str]]:
    """Per metric, the human sources that gave it (for the source pickers)."""
    frame = human_figures(db=db)
    out: dict[str, list[str]] = {}
    for metric, source in frame.select("metric", "source").iter_rows():
        out.setdefault(metric, []).append(source)
    return out


# ---------------------------------------------------------------------------- conditions


def only_tag(tag: str, source: str = COMBINED) -> Condition:
    """Keep only CoTs tagged ``tag`` (by anyone, or by ``source``'s annotator)."""
    return Condition(Figure(tag_field(tag), source))


def drop_tag(tag: str, source: str = COMBINED) -> Condition:
    return Condition(Figure(tag_field(tag), source), missing=True)


def drop_flag(flag: str, source: str = COMBINED) -> Condition:
    """Drop CoTs flagged ``flag`` (by anyone, or by ``source``'s annotator)."""
    if flag not in FLAGS:
        raise LabelError(f"a flag is one of {', '.join(FLAGS)}")
    return Condition(Figure(f"flag:{flag}", source), missing=True)


def only_flag(flag: str, source: str = COMBINED) -> Condition:
    if flag not in FLAGS:
        raise LabelError(f"a flag is one of {', '.join(FLAGS)}")
    return Condition(Figure(f"flag:{flag}", source))


def human_sources_of(what) -> list[str]:
    """The human sources a filter, a selection or a recipe reads (conditions, score sources,
    the score it ranks by), in order, each once."""
    sel = getattr(what, "selection", what)
    base = getattr(sel, "base", sel)
    names = [base.rv_source, base.cd_source, base.correct_source, *(c.figure.source for c in base.conditions)]
    if sel is not base:
        names += [*sel.sources.rv, *sel.sources.cd, *sel.sources.correct, *(c.figure.source for c in sel.conditions)]
        score = getattr(sel.rule, "score", None)
        names.append(score.source if score is not None else None)
    return list(dict.fromkeys(n for n in names if is_human_source(n)))


def uses_labels(what) -> bool:
    return bool(human_sources_of(what))


def state(source_names: list[str], *, db=None) -> dict[str, Any] | None:
    """The annotation state a result read from these human sources (others are ignored): how
    many labels, the latest, and a sha256 over them (annotator, CoT key, field, value, sorted),
    so a recipe or an export says which labels it used and a later run can tell whether they
    changed. None when no source is human."""
    human = [n for n in dict.fromkeys(source_names) if is_human_source(n)]
    if not human:
        return None
    snap = label_store.snapshot(_labels_file(db))
    rows: list[tuple] = []
    if snap is not None:
        people = {n[len(SOURCE_PREFIX):] for n in human if n != COMBINED}
        marks = COMBINED in human
        for event in snap.current.iter_rows(named=True):
            value = json.loads(event["value"]) if event["value"] is not None else None
            if value is None or value is False:
                continue
            mark = label_store.label_kind(event["field"]) in ("tag", "flag", "note")
            if event["annotator"] in people or (marks and mark):
                rows.append((event["annotator"], event["cot_key"], event["field"], event["value"], event["at"]))
    rows.sort()
    digest = hashlib.sha256("\n".join(json.dumps(r[:4], ensure_ascii=False) for r in rows).encode()).hexdigest()
    return {"sources": human, "labels": len(rows), "latest": max((r[4] for r in rows), default=None), "sha256": digest}


# ---------------------------------------------------------------------------- export and import

LINE_FIELDS = ("event_id", "at", "annotator", "cot_key", "chars", "field", "value", "cot_id", "context")
_KEY = re.compile(r"^[0-9a-f]{32}$")
_AT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


def export_lines(*, db=None, annotators: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every label event (oldest first), as the JSONL lines of ``python -m core labels export``."""
    snap = label_store.snapshot(_labels_file(db))
    if snap is None:
        return []
    events = snap.events
    if annotators:
        events = events.filter(pl.col("annotator").is_in(list(annotators)))
    return [{"event_id": e["event_id"], "at": e["at"], "annotator": e["annotator"], "cot_key": e["cot_key"],
             "chars": e["n_chars"], "field": e["field"], "value": json.loads(e["value"]) if e["value"] is not None else None,
             "cot_id": e["cot_id"], "context": json.loads(e["context"]) if e["context"] else {}}
            for e in events.iter_rows(named=True)]


def export_jsonl(path: str | Path, *, db=None, annotators: tuple[str, ...] = ()) -> int:
    """Write the label events to ``path`` (JSONL, written to a temporary name then renamed)."""
    import os
    import tempfile

    target = Path(path)
    lines = export_lines(db=db, annotators=annotators)
    fd, tmp = tempfile.mkstemp(prefix=".labels-", suffix=".jsonl", dir=target.parent if str(target.parent) else ".")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        for line in lines:
            fh.write(json.dumps(line, ensure_ascii=False) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    return len(lines)


def _event_from_line(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise LabelError(f"{where}: a line is a JSON object with {', '.join(LINE_FIELDS)}")
    unknown = set(data) - set(LINE_FIELDS)
    if unknown:
        raise LabelError(f"{where}: unknown field(s) {sorted(unknown)}; a line has {', '.join(LINE_FIELDS)}")
    for name in ("event_id", "at", "annotator", "cot_key", "chars", "field"):
        if data.get(name) is None:
            raise LabelError(f"{where}: '{name}' is missing")
    event_id = str(data["event_id"])
    if not re.fullmatch(r"[0-9A-Za-z_-]{8,64}", event_id):
        raise LabelError(f"{where}: event_id is 8-64 letters, digits, '-' or '_', not {event_id!r}")
    if not isinstance(data["at"], str) or not _AT.match(data["at"]):
        raise LabelError(f"{where}: at is an ISO time in UTC with microseconds (2026-01-31T12:00:00.000000Z), "
                         f"not {data['at']!r}")
    if not isinstance(data["cot_key"], str) or not _KEY.match(data["cot_key"]):
        raise LabelError(f"{where}: cot_key is 32 lower-case hex digits (md5 of the question, chr(31), the response)")
    if not isinstance(data["chars"], int) or isinstance(data["chars"], bool) or data["chars"] < 0:
        raise LabelError(f"{where}: chars is the response's length in characters, a whole number")
    if data.get("cot_id") is not None and (not isinstance(data["cot_id"], int) or isinstance(data["cot_id"], bool)):
        raise LabelError(f"{where}: cot_id is a whole number or null")
    if not isinstance(data["field"], str):
        raise LabelError(f"{where}: field is a string")
    try:
        annotator = check_annotator(str(data["annotator"]))
        value = check_value(data["field"], data.get("value"))
    except LabelError as exc:
        raise LabelError(f"{where}: {exc}") from None
    context = data.get("context") or {}
    if not isinstance(context, dict):
        raise LabelError(f"{where}: context is a JSON object")
    return {"event_id": event_id, "at": data["at"], "annotator": annotator, "cot_key": data["cot_key"],
            "field": data["field"], "value": json.dumps(value, ensure_ascii=False), "cot_id": data.get("cot_id"),
            "n_chars": data["chars"], "context": json.dumps(context, ensure_ascii=False)}


def import_jsonl(path: str | Path, *, db=None) -> dict[str, int]:
    """Add the events of a labels JSONL file (another lab's export, say) to this store's labels:
    every line is checked first (a bad line stops the import, naming its line, and nothing is
    added); events already present are skipped, so importing twice adds nothing. An event id
    already present with other content is refused. Returns lines, added, already_present."""
    source = Path(path)
    if not source.is_file():
        raise LabelError(f"no such file: {source}")
    events = []
    with open(source, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            where = f"{source.name}, line {number}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise LabelError(f"{where}: not UTF-8") from None
            if not text.strip():
                continue
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise LabelError(f"{where}: not JSON ({exc.msg})") from None
            events.append((number, _event_from_line(data, where)))
    seen: dict[str, int] = {}
    for number, event in events:
        if event["event_id"] in seen:
            raise LabelError(f"{source.name}, line {number}: event_id {event['event_id']} is also on line "
                             f"{seen[event['event_id']]}")
        seen[event["event_id"]] = number

    try:
        added = label_store.append(_labels_file(db), [e for _, e in events])
    except label_store.EventConflict as exc:
        number = seen[exc.event["event_id"]]
        raise LabelError(f"{source.name}, line {number}: event_id {exc.event['event_id']} is already in this store's "
                         "labels with other content (who, when, CoT, field or value differ); nothing was imported") from None
    return {"lines": len(events), "added": added, "already_present": len(events) - added}


# ---------------------------------------------------------------------------- queues

SAMPLINGS = ("random", "stratified", "disagreement")


@dataclass(frozen=True)
class QueueOptions:
    """A labelling queue: ``n`` CoTs of a filter, drawn reproducibly with ``seed``.

    ``random``: uniformly. ``stratified``: equal numbers per level of the figure ``by`` (its
    values rounded; a figure with more than 10 levels is cut into 10 equal-count bins), a level
    with too few CoTs giving its share to the others. ``disagreement``: among CoTs where the
    figures ``a`` and ``b`` differ by at least ``min_gap`` once rounded (a judge's RV against the
    dataset's, a judge's logic against math-verify's correct)."""

    name: str = option(help="the queue's name (unique)")
    n: int = option(50, help="how many CoTs to put in it")
    sampling: str = option("random", help="random | stratified | disagreement", choices=SAMPLINGS)
    seed: int = option(0, help="seed of the draw (the same filter and seed give the same queue)")
    by: Figure | None = option(None, help="stratified: the figure whose levels are the strata", cli=False)
    a: Figure | None = option(None, help="disagreement: one figure", cli=False)
    b: Figure | None = option(None, help="disagreement: the other figure", cli=False)
    min_gap: float = option(1.0, help="disagreement: the least difference of the rounded values")

    def __post_init__(self):
        if not str(self.name).strip():
            raise LabelError("give the queue a name")
        if not 1 <= int(self.n) <= 100_000:
            raise LabelError("a queue holds 1 to 100,000 CoTs")
        if self.sampling not in SAMPLINGS:
            raise LabelError(f"sampling is one of {', '.join(SAMPLINGS)}")
        if self.sampling == "stratified" and self.by is None:
            raise LabelError("stratified sampling needs the figure whose levels are the strata")
        if self.sampling == "disagreement" and (self.a is None or self.b is None):
            raise LabelError("disagreement sampling needs two figures")
        if self.sampling == "disagreement" and self.a == self.b:
            raise LabelError("disagreement sampling needs two different figures")
        if self.min_gap <= 0:
            raise LabelError("the least difference must be above 0")

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "n": int(self.n), "sampling": self.sampling, "seed": int(self.seed),
                "by": self.by.as_dict() if self.by else None, "a": self.a.as_dict() if self.a else None,
                "b": self.b.as_dict() if self.b else None, "min_gap": float(self.min_gap)}


MAX_STRATA = 10


def equal_quotas(sizes: dict[Any, int], n: int) -> dict[Any, int]:
    """n split as equally as possible over strata of these sizes, none above its size; what a
    small stratum cannot take goes to the others (in their order).

    >>> equal_quotas({"a": 1, "b": 10, "c": 10}, 9)
    {'a': 1, 'b': 4, 'c': 4}
    """
    quotas = {k: 0 for k in sizes}
    left = min(n, sum(sizes.values()))
    while left > 0:
        open_ = [k for k in sizes if quotas[k] < sizes[k]]
        share, extra = divmod(left, len(open_))
        for i, k in enumerate(open_):
            take = min(sizes[k] - quotas[k], share + (1 if i < extra else 0))
            quotas[k] += take
            left -= take
    return quotas


def sample(f: CotFilter, opts: QueueOptions, *, db=None) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The CoTs a queue gets (cot_id, stratum, in queue order) and what the draw found."""
    from core import selection
    from core.selection import _uniform_sql  # the same per-(seed, cot_id) uniform as the capacity sampler

    figures = [g for g in (opts.by, opts.a, opts.b) if g is not None]
    sel = selection.Selection(base=f, conditions=tuple(Condition(g) for g in figures))
    pool, params = selection.pool_sql(sel, db=db)
    u = _uniform_sql(opts.seed, column="cot_id")
    names = [selection.figure_column(sel, g) for g in figures]
    base = f"SELECT cot_id, {', '.join(names) or 'NULL'} FROM ({pool})"
    found: dict[str, Any] = {}
    with store.connect(db, read_only=True) as con:
        total = con.execute(f"SELECT count(*) FROM ({pool})", params).fetchall()[0][0]
        found["pool"] = total
        if opts.sampling == "random":
            rows = con.execute(f"SELECT cot_id, NULL AS stratum, {u} AS u FROM ({pool}) ORDER BY u LIMIT ?",
                               [*params, int(opts.n)]).fetchall()
        elif opts.sampling == "disagreement":
            a, b = names
            where = f"{a} IS NOT NULL AND {b} IS NOT NULL AND abs(round({a}) - round({b})) >= ?"
            found["both_scored"] = con.execute(
                f"SELECT count(*) FROM ({base}) WHERE {a} IS NOT NULL AND {b} IS NOT NULL", params).fetchall()[0][0]
            found["disagreements"] = con.execute(f"SELECT count(*) FROM ({base}) WHERE {where}",
                                                 [*params, opts.min_gap]).fetchall()[0][0]
            rows = con.execute(
                f"SELECT cot_id, round({a})::INTEGER || ' vs ' || round({b})::INTEGER AS stratum, {u} AS u "
                f"FROM ({base}) WHERE {where} ORDER BY u LIMIT ?", [*params, opts.min_gap, int(opts.n)]).fetchall()
        else:
            (v,) = names
            levels = con.execute(f"SELECT count(DISTINCT round({v})) FROM ({base}) WHERE {v} IS NOT NULL",
                                 params).fetchall()[0][0]
            stratum = f"round({v})::BIGINT::VARCHAR" if levels <= MAX_STRATA else f"'bin ' || ntile({MAX_STRATA}) OVER (ORDER BY {v}, cot_id)"
            con.execute(f"CREATE TEMP TABLE queue_cand AS SELECT cot_id, {stratum} AS stratum, {u} AS u "
                        f"FROM ({base}) WHERE {v} IS NOT NULL", params).fetchall()
            sizes = dict(con.execute("SELECT stratum, count(*) FROM queue_cand GROUP BY ALL ORDER BY "
                                     "min(cot_id)").fetchall())
            order = sorted(sizes, key=lambda s: (float(s) if not s.startswith("bin ") else float(s[4:])))
            quotas = equal_quotas({s: sizes[s] for s in order}, int(opts.n))
            found["strata"] = {s: {"cots": sizes[s], "drawn": quotas[s]} for s in order}
            found["without_value"] = total - sum(sizes.values())
            rows = con.execute(
                "SELECT cot_id, stratum, u FROM (SELECT *, row_number() OVER (PARTITION BY stratum ORDER BY u) AS k "
                "FROM queue_cand) JOIN (SELECT unnest(?::VARCHAR[]) AS stratum, unnest(?::INTEGER[]) AS quota) "
                "USING (stratum) WHERE k <= quota ORDER BY u", [list(quotas), list(quotas.values())]).fetchall()
    frame = pl.DataFrame(rows, schema={"cot_id": pl.Int64, "stratum": pl.String, "u": pl.Float64}, orient="row")
    found["drawn"] = frame.height
    return frame.drop("u"), found


def create_queue(f: CotFilter, opts: QueueOptions, *, created_by: str | None = None, db=None) -> dict[str, Any]:
    """Draw a queue (sample) and keep it beside the store by CoT content, so it survives a
    re-ingest like the labels. Returns the queue (queue_id, name, size, spec)."""
    name = str(opts.name).strip()
    drawn, found = sample(f, opts, db=db)
    if drawn.height == 0:
        raise LabelError(f"the filter leaves no CoT to draw from ({found.get('pool', 0):,} in the filter"
                         + (f", {found['disagreements']:,} disagreeing" if "disagreements" in found else "")
                         + (", none with a value of the figure" if opts.sampling == "stratified" else "") + ")")
    ids = identities(drawn["cot_id"].to_list(), db=db)
    spec = {"filter": f.to_params(), "options": opts.as_dict(), "found": found}
    path = _labels_file(db)
    with label_store.writing(path) as con:
        if con.execute("SELECT 1 FROM queues WHERE name = ?", [name]).fetchone():
            raise LabelError(f"a queue named '{name}' exists already; choose another name")
        cur = con.execute("INSERT INTO queues (name, created_by, created_at, spec, size) VALUES (?, ?, ?, ?, ?)",
                          [name, created_by, label_store.now_iso(), json.dumps(spec, ensure_ascii=False), drawn.height])
        queue_id = cur.lastrowid
        con.executemany(
            "INSERT INTO queue_items (queue_id, position, cot_key, cot_id, n_chars, stratum) VALUES (?, ?, ?, ?, ?, ?)",
            [(queue_id, i, ids[c]["cot_key"], c, ids[c]["n_chars"], s)
             for i, (c, s) in enumerate(drawn.select("cot_id", "stratum").iter_rows())])
    return {"queue_id": queue_id, "name": name, "size": drawn.height, "spec": spec}


def queues(*, db=None) -> pl.DataFrame:
    """Every queue: queue_id, name, created_by, created_at, size, sampling."""
    schema = {"queue_id": pl.Int64, "name": pl.String, "created_by": pl.String, "created_at": pl.String,
              "size": pl.Int64, "sampling": pl.String}
    path = _labels_file(db)
    if not path.exists():
        return pl.DataFrame(schema=schema)
    con = label_store.open_file(path)
    try:
        rows = con.execute("SELECT queue_id, name, created_by, created_at, size, spec FROM queues ORDER BY queue_id").fetchall()
    finally:
        con.close()
    return pl.DataFrame([(*r[:5], json.loads(r[5])["options"]["sampling"]) for r in rows], schema=schema, orient="row")


def queue(queue_id: int, *, annotator: str | None = None, db=None) -> dict[str, Any]:
    """A queue's spec and items (position, cot_key, cot_id in this store or None, problem_id,
    stratum, done: labelled by ``annotator``), with done / total, in_store (items this store
    holds) and by_annotator ({annotator: items they labelled})."""
    path = _labels_file(db)
    con = label_store.open_file(path)
    try:
        head = con.execute("SELECT name, created_by, created_at, spec, size FROM queues WHERE queue_id = ?",
                           [queue_id]).fetchone()
        items = con.execute("SELECT position, cot_key, cot_id, n_chars, stratum FROM queue_items WHERE queue_id = ? "
                            "ORDER BY position", [queue_id]).fetchall()
    finally:
        con.close()
    if head is None:
        raise LabelError(f"there is no queue {queue_id}")
    frame = pl.DataFrame(items, schema={"position": pl.Int64, "cot_key": pl.String, "cot_id": pl.Int64,
                                        "n_chars": pl.Int64, "stratum": pl.String}, orient="row")
    with store.connect(db, read_only=True) as rcon:
        found = label_store.resolve(rcon, store.db_path(db), frame.select("cot_key", "cot_id", "n_chars"))
        here = frame.with_columns(pl.col("cot_key").map_elements(lambda k: (found.get(k) or (None,))[0],
                                                                  return_dtype=pl.Int64).alias("cot_id"))
        where, params = label_store.ids_in("cot_id", here["cot_id"].drop_nulls().to_list())
        problems = store.fetch_pl(rcon, f"SELECT cot_id, problem_id FROM cots WHERE {where}", params)
        by_annotator = dict(rcon.execute(
            "SELECT annotator, count(DISTINCT cot_key) FROM labels WHERE cot_key IN (SELECT unnest(?::VARCHAR[])) "
            "GROUP BY annotator ORDER BY annotator", [frame["cot_key"].to_list()]).fetchall())
        done_keys = set()
        if annotator:
            done_keys = {r[0] for r in rcon.execute(
                "SELECT DISTINCT cot_key FROM labels WHERE annotator = ? AND cot_key IN (SELECT unnest(?::VARCHAR[]))",
                [annotator, frame["cot_key"].to_list()]).fetchall()}
    here = here.join(problems.cast({"cot_id": pl.Int64}), on="cot_id", how="left", maintain_order="left") \
        .with_columns(done=pl.col("cot_key").is_in(list(done_keys)))
    return {"queue_id": queue_id, "name": head[0], "created_by": head[1], "created_at": head[2],
            "spec": json.loads(head[3]), "items": here.drop("n_chars"), "done": int(here["done"].sum()),
            "total": here.height, "by_annotator": by_annotator, "in_store": int(here["cot_id"].is_not_null().sum())}


def next_in_queue(items: pl.DataFrame, *, after_cot: int | None = None) -> dict[str, Any] | None:
    """The next item not done after ``after_cot`` (wrapping round), among those this store holds."""
    open_ = items.filter(~pl.col("done") & pl.col("cot_id").is_not_null())
    if open_.height == 0:
        return None
    if after_cot is not None:
        at = items.filter(pl.col("cot_id") == after_cot)["position"]
        if at.len():
            later = open_.filter(pl.col("position") > at[0])
            if later.height:
                return later.row(0, named=True)
    return open_.row(0, named=True)


def delete_queue(queue_id: int, *, db=None) -> None:
    with label_store.writing(_labels_file(db)) as con:
        con.execute("DELETE FROM queue_items WHERE queue_id = ?", [queue_id])
        con.execute("DELETE FROM queues WHERE queue_id = ?", [queue_id])
