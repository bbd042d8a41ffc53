"""Step labels that datasets carry, ingested as a step source (a score source at step level).

    python -m core ingest STEPS_FILE --steps-for DATASET [--step-source NAME] [--skip-bad]
    python -m core ingest PROCESSBENCH_OR_PRM800K_FILE          # CoTs and their step labels at once

Layouts (detected from the fields; ``--format`` names one):

* ``thought_anchors``: one step a line, ``problem_id, model, chunk_idx, chunk, function_tags``
  plus per-step numbers (``accuracy``, ``*_importance_*``, ``overdeterminedness``, ...),
  ``depends_on`` and ``summary``; the CoTs come from its solutions file (``problem_id, model,
  bucket, question, response, correct``), which ``python -m core ingest`` reads as a dataset
  without a ``--map`` (:func:`cot_mapping`). The role is the first function tag.
* ``prm800k``: one labelled solution a line, ``question.problem``, the steps
  (``question.pre_generated_steps``, else the chosen completion of each ``label.steps`` entry),
  and a -1/0/+1 rating per labelled step (PRM800K's). A step rated -1 is wrong.
* ``processbench``: ``id, generator, problem, steps[], final_answer_correct, label`` (the index of
  the first wrong step, -1 when none). Steps before it are correct, it is wrong, later ones are
  not labelled.

Matching (``--steps-for``): a record's CoT is the dataset's CoT of the same problem (its id when
the layout gives one and the dataset has it, else the question text), the same model where both
name one, the same sample where the record gives one, and whose step text holds the record's
steps in order (whitespace aside). Among several such CoTs the first not yet labelled in this
run wins (PRM800K repeats a solution for several labellers). The steps are placed on the CoT's
text (core.steps.align_steps), so they rebuild it like the rule set's steps, and get token
counts with the same tokenizer. A record that matches no CoT stops the ingest with its file
and line (``--skip-bad`` reports it and goes on); nothing is written until every record is
matched, in one transaction, so a failed ingest leaves the store as it was.

Without ``--steps-for``, a PRM800K or ProcessBench file becomes a dataset of its own first (the
steps joined by a blank line are the CoT), then its labels are attached.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from core import step_stage, store
from core import steps as steps_mod
from core.errors import UserError
from core.options import option
from core.records import IngestError
from core.steps import ROLES, STEP_TEXT_SQL

FORMATS = ("thought_anchors", "prm800k", "processbench")
DEFAULT_SOURCE = {"thought_anchors": "thought anchors", "prm800k": "prm800k", "processbench": "processbench"}
STEP_JOIN = "\n\n"  # how PRM800K / ProcessBench steps are joined into a CoT's text
# Thought Anchors' per-step numbers (kept as step_scores; any other numeric field is kept too)
TA_KNOWN = {"problem_id", "model", "bucket", "chunk_idx", "chunk", "function_tags", "depends_on", "summary"}

ProgressFn = Callable[[str, int, int | None], None]


@dataclass
class StepRecord:
    """One CoT's worth of labelled steps, as a layout gives them."""

    file: str
    line: int
    steps: list[str]
    key: str | None = None  # the problem's id in the layout
    question: str | None = None
    model: str | None = None
    sample: int | None = None
    roles: list[str | None] | None = None
    wrong: list[bool | None] | None = None
    step_scores: list[dict[str, tuple[float | None, str | None]]] = field(default_factory=list)
    cot_labels: dict[str, tuple[float | None, str | None]] = field(default_factory=dict)
    answer: str | None = None  # the reference answer, for a dataset made from the file

    def where(self) -> str:
        return f"{self.file}, line {self.line}"


@dataclass
class StepLabelOptions:
    """A step-label ingest (job kind ``step_labels``; on the command line ``python -m core ingest
    FILE --steps-for DATASET``)."""

    path: str = option(help="the step-label file (.jsonl, .json or .parquet)")
    dataset: str | None = option(None, help="attach the labels to this dataset's CoTs (empty: PRM800K and ProcessBench "
                                            "files become a dataset of their own)")
    format: str | None = option(None, help=f"the file's layout: {', '.join(FORMATS)} (default: detected)")
    source_name: str | None = option(None, help="the step source's name (default: the layout's name)")
    tokenizer: str | None = option(None, help="tokenizer for step token counts (default: the offline SmolLM2 one)")
    skip_bad: bool = option(False, help="ingest the good records, report the bad ones")
    dataset_name: str | None = option(None, help="the new dataset's name (without a dataset; default: the file's stem)")

    def __post_init__(self):
        if not str(self.path or "").strip():
            raise UserError("Give the step-label file's path.")
        if self.format is not None and self.format not in FORMATS:
            raise UserError(f"The step-label layout '{self.format}' is not one of {', '.join(FORMATS)}.")


# ---------------------------------------------------------------------------------- reading


def _rows(path: Path) -> Iterator[tuple[int, dict]]:
    from core.formats import iter_json, iter_jsonl, iter_parquet

    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        items = iter_jsonl(path, 64)
    elif suffix == ".json":
        items = iter_json(path)
    elif suffix == ".parquet":
        items = iter_parquet(path)
    else:
        raise IngestError(path, None, None, f"a step-label file must be .jsonl, .json or .parquet, not '{suffix}'")
    for item in items:
        if isinstance(item, IngestError):
            raise item
        yield item.line, item.data


def format_of(data: dict) -> str | None:
    keys = set(data)
    if {"chunk", "chunk_idx", "problem_id"} <= keys:
        return "thought_anchors"
    if "question" in keys and isinstance(data.get("label"), dict) and "steps" in data["label"]:
        return "prm800k"
    if {"steps", "label"} <= keys and isinstance(data.get("steps"), list) and ("problem" in keys or "question" in keys):
        return "processbench"
    return None


def is_ta_solutions(data: dict) -> bool:
    """The Thought Anchors solutions file (the CoTs its steps file labels)."""
    return {"problem_id", "model", "response", "question"} <= set(data) and "chunk" not in data


def cot_mapping() -> dict[str, str]:
    """The generic-format mapping that reads Thought Anchors' solutions file as a dataset."""
    return {"question": "question", "response": "response", "answer": "reference_answer", "model": "model",
            "id": "problem_id", "correct": "correct"}


def detect(path: str | os.PathLike) -> str | None:
    """The step layout of a file, 'ta_solutions' for Thought Anchors' CoT file, or None."""
    p = Path(path)
    if not p.is_file() or p.suffix.lower() not in (".jsonl", ".ndjson", ".json", ".parquet"):
        return None
    try:
        for _, data in _rows(p):
            return "ta_solutions" if is_ta_solutions(data) else format_of(data)
    except IngestError:
        return None
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _err(file, line, fieldname, message) -> IngestError:
    return IngestError(file, line, fieldname, message)


def read_thought_anchors(path: Path) -> Iterator[StepRecord | IngestError]:
    """Group the step lines by (problem_id, model, bucket), in chunk_idx order."""
    groups: dict[tuple, list[tuple[int, dict]]] = {}
    for line, data in _rows(path):
        missing = [k for k in ("problem_id", "chunk_idx", "chunk") if data.get(k) is None]
        if missing:
            yield _err(path, line, missing[0], "required field is missing")
            continue
        if not isinstance(data["chunk"], str) or not isinstance(data["chunk_idx"], int) or isinstance(data["chunk_idx"], bool):
            yield _err(path, line, "chunk" if not isinstance(data["chunk"], str) else "chunk_idx",
                       "expected a string chunk and an integer chunk_idx")
            continue
        groups.setdefault((str(data["problem_id"]), data.get("model"), data.get("bucket")), []).append((line, data))
    for (key, model, bucket), items in groups.items():
        items.sort(key=lambda item: item[1]["chunk_idx"])
        first_line = items[0][0]
        indices = [d["chunk_idx"] for _, d in items]
        if indices != list(range(len(items))):
            yield _err(path, first_line, "chunk_idx",
                       f"problem {key!r} ({model}, {bucket}): chunk indices are not 0..{len(items) - 1} (got {indices[:8]}...)")
            continue
        record = StepRecord(file=str(path), line=first_line, steps=[], key=key, model=model, roles=[])
        for _line, data in items:
            tags = data.get("function_tags") or []
            if isinstance(tags, str):
                tags = [tags]
            role = tags[0] if tags and tags[0] in ROLES else None
            record.steps.append(data["chunk"])
            record.roles.append(role)
            numbers: dict[str, tuple[float | None, str | None]] = {}
            for name, value in data.items():
                if name in TA_KNOWN:
                    continue
                number = _number(value)
                if number is not None:
                    numbers[name] = (number, None)
            if tags and role is None or len(tags) > 1:
                numbers["function_tags"] = (None, json.dumps(tags))
            if data.get("depends_on") is not None:
                deps = data["depends_on"]
                numbers["depends_on"] = (float(len(deps)) if isinstance(deps, list) else None, json.dumps(deps))
            if data.get("summary"):
                numbers["summary"] = (None, str(data["summary"]))
            record.step_scores.append(numbers)
        yield record


def read_prm800k(path: Path) -> Iterator[StepRecord | IngestError]:
    for line, data in _rows(path):
        question, label = data.get("question"), data.get("label")
        if not isinstance(question, dict) or not isinstance(question.get("problem"), str):
            yield _err(path, line, "question.problem", "required field is missing or not a string")
            continue
        if not isinstance(label, dict) or not isinstance(label.get("steps"), list):
            yield _err(path, line, "label.steps", "required field is missing or not a list")
            continue
        labelled = label["steps"]
        pre = question.get("pre_generated_steps")
        try:
            if isinstance(pre, list) and pre:
                texts = [str(s) for s in pre]
            else:  # phase 1: the trajectory is the chosen (or human) completion of each step
                texts = []
                for step in labelled:
                    chosen = step.get("chosen_completion")
                    text = step.get("human_completion") if chosen is None else step["completions"][chosen]["text"]
                    if text is None:
                        break  # labelling stopped at a step with no chosen completion
                    texts.append(text if isinstance(text, str) else str(text.get("text", "")))
            ratings: list[float | None] = []
            for i, text in enumerate(texts):
                if i >= len(labelled):
                    ratings.append(None)  # after the labeller stopped
                    continue
                step = labelled[i]
                completions = step.get("completions") or []
                chosen = step.get("chosen_completion")
                rating = None
                same = [c for c in completions if c.get("text") == text]
                if same:
                    rating = same[0].get("rating")
                elif chosen is not None and chosen < len(completions):
                    rating = completions[chosen].get("rating")
                elif step.get("human_completion") is not None:
                    rating = 1  # a labeller's own step is a +1 step
                ratings.append(None if rating is None else float(rating))
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            yield _err(path, line, "label.steps", f"not in PRM800K's layout: {type(exc).__name__}: {exc}")
            continue
        bad = [r for r in ratings if r is not None and r not in (-1.0, 0.0, 1.0)]
        if bad:
            yield _err(path, line, "label.steps", f"a rating must be -1, 0 or +1, got {bad[0]!r}")
            continue
        if not texts:
            yield _err(path, line, "question.pre_generated_steps", "the solution has no steps")
            continue
        record = StepRecord(
            file=str(path), line=line, steps=texts, question=question["problem"],
            wrong=[None if r is None else r < 0 for r in ratings],
            step_scores=[{"rating": (r, None)} if r is not None else {} for r in ratings],
            answer=None if question.get("ground_truth_answer") is None else str(question["ground_truth_answer"]),
        )
        if label.get("finish_reason"):
            record.cot_labels["finish_reason"] = (None, str(label["finish_reason"]))
        yield record


def read_processbench(path: Path) -> Iterator[StepRecord | IngestError]:
    for line, data in _rows(path):
        steps = data.get("steps")
        problem = data.get("problem", data.get("question"))
        if not isinstance(problem, str):
            yield _err(path, line, "problem", "required field is missing or not a string")
            continue
        if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
            yield _err(path, line, "steps", "expected a non-empty list of strings")
            continue
        first_wrong = data.get("label")
        if not isinstance(first_wrong, int) or isinstance(first_wrong, bool) or not -1 <= first_wrong < len(steps):
            yield _err(path, line, "label", f"expected the index of the first wrong step (0-{len(steps) - 1}) or -1, got {first_wrong!r}")
            continue
        verdicts = [False] * len(steps) if first_wrong < 0 else [False] * first_wrong + [True] + [None] * (len(steps) - first_wrong - 1)
        record = StepRecord(
            file=str(path), line=line, steps=steps, key=None if data.get("id") is None else str(data["id"]),
            question=problem, model=None if data.get("generator") is None else str(data["generator"]),
            wrong=verdicts,
            step_scores=[{} if v is None else {"correct": (0.0 if v else 1.0, None)} for v in verdicts],
        )
        record.cot_labels["first_error_label"] = (float(first_wrong), str(first_wrong))
        if data.get("final_answer_correct") is not None:
            record.cot_labels["correct"] = (float(bool(data["final_answer_correct"])), str(data["final_answer_correct"]))
        yield record


READERS = {"thought_anchors": read_thought_anchors, "prm800k": read_prm800k, "processbench": read_processbench}


# ---------------------------------------------------------------------------------- matching


@dataclass
class _Cot:
    cot_id: int
    problem_key: str
    model: str | None
    sample: int


def _dataset_id(db, name: str) -> int:
    rows = store.read_rows("SELECT dataset_id FROM datasets WHERE name = ? AND status = 'ready'", [name], db=db)
    if not rows:
        known = [r[0] for r in store.read_rows("SELECT name FROM datasets WHERE status = 'ready' ORDER BY 1", db=db)]
        raise UserError(f"No ready dataset named '{name}' to attach step labels to; the datasets are {', '.join(known) or 'none'}.")
    return rows[0][0]


def _question_hash(text: str) -> str:
    return hashlib.sha1(" ".join(text.split()).encode()).hexdigest()


def _candidates(db, dataset_id: int) -> tuple[dict[str, list[_Cot]], dict[str, list[str]]]:
    """The dataset's CoTs by problem key, and problem keys by question (whitespace-folded)."""
    by_key: dict[str, list[_Cot]] = {}
    by_question: dict[str, list[str]] = {}
    with store.connect(db, read_only=True) as con:
        for cot_id, key, model, sample in con.execute(
            "SELECT c.cot_id, p.problem_key, c.model, c.sample_idx FROM cots c JOIN problems p USING (problem_id) "
            "WHERE c.dataset_id = ? ORDER BY c.cot_id", [dataset_id],
        ).fetchall():
            by_key.setdefault(key, []).append(_Cot(cot_id, key, model, sample))
        for key, question in con.execute("SELECT problem_key, question FROM problems WHERE dataset_id = ?", [dataset_id]).fetchall():
            by_question.setdefault(_question_hash(question), []).append(key)
    return by_key, by_question


def _texts(db, cot_ids: list[int]) -> dict[int, str]:
    if not cot_ids:
        return {}
    with store.connect(db, read_only=True) as con:
        con.register("want_ids", pa.table({"cot_id": pa.array(sorted(set(cot_ids)), pa.int64())}))
        rows = con.execute(f"SELECT c.cot_id, {STEP_TEXT_SQL} FROM cots c JOIN want_ids USING (cot_id)").fetchall()
        con.unregister("want_ids")
    return {cot_id: text or "" for cot_id, text in rows}


@dataclass
class _Match:
    record: StepRecord
    cot_id: int
    spans: list[tuple[int, int]]
    skipped_chars: int


def match_records(db, dataset_id: int, records: list[StepRecord], taken: set[int]) -> tuple[list[_Match], list[IngestError]]:
    """Each record's CoT and its steps' spans there; errors for records that match none."""
    by_key, by_question = _candidates(db, dataset_id)
    plans: list[tuple[StepRecord, list[_Cot], str]] = []
    for rec in records:
        keys = [rec.key] if rec.key is not None and rec.key in by_key else []
        how = f"problem '{rec.key}'" if keys else ""
        if not keys and rec.question is not None:
            keys = by_question.get(_question_hash(rec.question), [])
            how = "its question"
        cots = [c for k in keys for c in by_key.get(k, [])]
        if rec.model is not None and any(c.model is not None for c in cots):
            cots = [c for c in cots if c.model == rec.model]
            how += f", model {rec.model!r}"
        if rec.sample is not None:
            cots = [c for c in cots if c.sample == rec.sample]
            how += f", sample {rec.sample}"
        if not how:
            how = f"problem {rec.key!r}" if rec.key is not None else "no problem id or question"
        plans.append((rec, cots, how))
    texts = _texts(db, [c.cot_id for _, cots, _ in plans for c in cots])
    matches, errors = [], []
    for rec, cots, how in plans:
        if not cots:
            errors.append(_err(rec.file, rec.line, None, f"no CoT of the dataset matches ({how})"))
            continue
        found, why = None, ""
        for cot in cots:
            if cot.cot_id in taken:
                why = why or "every CoT that matches is already labelled by this source"
                continue
            try:
                spans, skipped = steps_mod.align_steps(texts.get(cot.cot_id, ""), rec.steps)
            except steps_mod.AlignmentError as exc:
                why = f"CoT {cot.cot_id}: {exc}"
                continue
            found = _Match(rec, cot.cot_id, spans, skipped)
            break
        if found is None:
            errors.append(_err(rec.file, rec.line, None,
                               f"{len(cots)} CoT(s) match ({how}) but none holds these steps in order: {why}"))
            continue
        taken.add(found.cot_id)
        matches.append(found)
    return matches, errors


# ---------------------------------------------------------------------------------- writing


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _token_counts(matches: list[_Match], texts: dict[int, str], tokenizer) -> list[list[int | None]]:
    if tokenizer is None:
        return [[None] * len(m.spans) for m in matches]
    encodings = tokenizer.encode_batch([texts[m.cot_id] for m in matches], add_special_tokens=False)
    return [steps_mod.span_token_counts(e, m.spans) for e, m in zip(encodings, matches)]


def _tables(matches: list[_Match], counts: list[list[int | None]]) -> tuple[pa.Table, pa.Table]:
    steps_cols: dict[str, list] = {name: [] for name in step_stage.STEP_SCHEMA.names}
    score_cols: dict[str, list] = {"cot_id": [], "step_idx": [], "metric": [], "value": [], "raw": []}
    for m, n_tokens in zip(matches, counts):
        rec = m.record
        for k, (a, b) in enumerate(m.spans):
            steps_cols["cot_id"].append(m.cot_id)
            steps_cols["step_idx"].append(k)
            steps_cols["char_start"].append(a)
            steps_cols["char_end"].append(b)
            steps_cols["n_tokens"].append(n_tokens[k])
            steps_cols["role"].append(rec.roles[k] if rec.roles else None)
            steps_cols["micro_actions"].append(None)
            steps_cols["wrong"].append(rec.wrong[k] if rec.wrong else None)
            for metric, (value, raw) in (rec.step_scores[k] if k < len(rec.step_scores) else {}).items():
                score_cols["cot_id"].append(m.cot_id)
                score_cols["step_idx"].append(k)
                score_cols["metric"].append(metric)
                score_cols["value"].append(value)
                score_cols["raw"].append(raw)
    steps_table = pa.Table.from_arrays([pa.array(steps_cols[f.name], f.type) for f in step_stage.STEP_SCHEMA],
                                       schema=step_stage.STEP_SCHEMA)
    scores_table = pa.table({
        "cot_id": pa.array(score_cols["cot_id"], pa.int64()), "step_idx": pa.array(score_cols["step_idx"], pa.int32()),
        "metric": pa.array(score_cols["metric"], pa.string()), "value": pa.array(score_cols["value"], pa.float64()),
        "raw": pa.array(score_cols["raw"], pa.string()),
    })
    return steps_table, scores_table


def attach(db, dataset: str, path: Path, fmt: str, *, source_name: str | None = None, tokenizer: str | None = None,
           skip_bad: bool = False, progress: ProgressFn | None = None) -> dict:
    """Match the file's step records to ``dataset``'s CoTs and write them as one step source,
    with its per-CoT figures, in one transaction. Returns what was done."""
    from core.tokens import DEFAULT_TOKENIZER, load_tokenizer

    started = time.perf_counter()
    source = source_name or DEFAULT_SOURCE[fmt]
    dataset_id = _dataset_id(db, dataset)
    sha = _file_sha256(path)
    row = store.read_rows("SELECT source_id, kind, params FROM score_sources WHERE name = ?", [source], db=db)
    params = json.loads(row[0][2] or "{}") if row else {}
    if row and row[0][1] != "label":
        raise UserError(f"The score source '{source}' is a {row[0][1]}, not dataset labels; choose another --step-source.")
    if any(f.get("sha256") == sha and f.get("dataset") == dataset for f in params.get("files", [])):
        return {"source": source, "dataset": dataset, "format": fmt, "already_present": True, "cots": 0, "steps": 0,
                "skipped_records": 0, "seconds": time.perf_counter() - started}
    records, errors = [], []
    for item in READERS[fmt](path):
        (errors if isinstance(item, IngestError) else records).append(item)
        if errors and not skip_bad:
            raise errors[0]
    if progress:
        progress("read steps", len(records), None)
    taken = {r[0] for r in store.read_rows(
        "SELECT DISTINCT s.cot_id FROM steps s JOIN score_sources ss USING (source_id) WHERE ss.name = ? "
        "AND s.cot_id >= ? AND s.cot_id < ?", [source, dataset_id << store.ID_SHIFT, (dataset_id + 1) << store.ID_SHIFT], db=db)}
    matches, unmatched = match_records(db, dataset_id, records, taken)
    errors.extend(unmatched)
    if errors and not skip_bad:
        raise errors[0]
    if not matches:
        raise IngestError(path, None, None, f"no record matches a CoT of dataset '{dataset}'" + (f" ({len(errors)} bad records)" if errors else ""))
    if progress:
        progress("match steps", len(matches), len(records))
    tok = None
    tokenizer_name = tokenizer or DEFAULT_TOKENIZER
    if tokenizer_name != "none":
        tok = load_tokenizer(tokenizer_name)
        tok.no_truncation()
        tok.no_padding()
    texts = _texts(db, [m.cot_id for m in matches])
    steps_table, scores_table = _tables(matches, _token_counts(matches, texts, tok))
    cot_ids = [m.cot_id for m in matches]
    file_entry = {"path": str(path), "sha256": sha, "dataset": dataset, "records": len(matches)}
    with store.connect(db, read_only=False) as con:
        con.execute("BEGIN")
        source_id = store.ensure_source(con, source, "label", params=json.dumps({"format": fmt, "files": []}))
        stored = json.loads(con.execute("SELECT params FROM score_sources WHERE source_id = ?", [source_id]).fetchone()[0] or "{}")
        stored.setdefault("files", []).append(file_entry)
        stored.update({"format": fmt, "tokenizer": tokenizer_name})
        con.execute("UPDATE score_sources SET params = ? WHERE source_id = ?", [json.dumps(stored), source_id])
        step_stage.insert_steps(con, source_id, steps_table)
        con.register("step_score_batch", scores_table)
        con.execute(
            "INSERT INTO step_scores (cot_id, source_id, step_idx, metric, value, raw) "
            "SELECT cot_id, ?, step_idx, metric, value, raw FROM step_score_batch", [source_id],
        )
        con.unregister("step_score_batch")
        cot_rows = [(m.cot_id, metric, value, raw) for m in matches for metric, (value, raw) in m.record.cot_labels.items()]
        if cot_rows:
            con.executemany("INSERT INTO scores (cot_id, source_id, metric, value, raw) VALUES (?, ?, ?, ?, ?)",
                            [(c, source_id, metric, v, r) for c, metric, v, r in cot_rows])
        figures_id = store.ensure_source(con, step_stage.figures_source_name(source, "label"), "stage",
                                         params=json.dumps({"stage": "step figures", "of": source}))
        step_stage.write_figures(con, source_id, figures_id, cot_ids)
        con.execute("COMMIT")
    if progress:
        progress("write steps", len(matches), len(matches))
    return {
        "source": source, "figures_source": step_stage.figures_source_name(source, "label"), "dataset": dataset,
        "format": fmt, "already_present": False, "cots": len(matches), "steps": steps_table.num_rows,
        "skipped_chars": sum(m.skipped_chars for m in matches), "skipped_records": len(errors),
        "bad_records": [e.as_dict() for e in errors][:100], "seconds": time.perf_counter() - started,
    }


def _dataset_rows(fmt: str, records: list[StepRecord]) -> list[dict]:
    """One generic-format row per record: the CoT a PRM800K / ProcessBench line describes."""
    rows = []
    for _i, rec in enumerate(records):
        row = {"question": rec.question, "response": STEP_JOIN.join(rec.steps), "model": rec.model, "answer": rec.answer,
               "id": rec.key if rec.key is not None else _question_hash(rec.question or "")[:16], "line": rec.line}
        if "correct" in rec.cot_labels:
            row["correct"] = bool(rec.cot_labels["correct"][0])
        rows.append(row)
    return rows


def make_dataset(db, path: Path, fmt: str, name: str | None = None, skip_bad: bool = False) -> tuple[Any, list[IngestError]]:
    """A dataset of the file's CoTs (PRM800K / ProcessBench), through the generic ingest."""
    from core.formats import ReadOptions
    from core.ingest import ingest

    records, errors = [], []
    for item in READERS[fmt](path):
        (errors if isinstance(item, IngestError) else records).append(item)
        if errors and not skip_bad:
            raise errors[0]
    if not records:
        raise IngestError(path, None, None, "no valid records" + (f" ({len(errors)} bad)" if errors else ""))
    rows = _dataset_rows(fmt, records)
    mapping = {"question": "question", "response": "response", "id": "id"}
    for role in ("model", "answer", "correct"):
        if any(r.get(role) is not None for r in rows):
            mapping[role] = role
    folder = Path(tempfile.mkdtemp(prefix="steps-dataset-", dir=store.db_path(db).parent))
    staged = folder / f"{name or path.stem}.jsonl"
    try:
        with open(staged, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        result = ingest(str(staged), fmt="generic", name=name or path.stem, db=db, opts=ReadOptions(mapping=mapping))
    finally:
        staged.unlink(missing_ok=True)
        folder.rmdir()
    if not result.already_present:
        with store.connect(db, read_only=False) as con:  # say where it really came from
            con.execute("UPDATE datasets SET source = ?, format = ? WHERE dataset_id = ?", [str(path), fmt, result.dataset_id])
    return result, errors


def run_step_labels(db=None, options: StepLabelOptions | None = None, progress: ProgressFn | None = None,
                    cancelled: Callable[[], bool] | None = None) -> dict:
    """Ingest a step-label file: attach it to ``options.dataset``, or (PRM800K, ProcessBench)
    make a dataset of it first. All or nothing: a failure leaves the store as it was."""
    if options is None:
        raise ValueError("run_step_labels needs options with a path")
    path = Path(options.path)
    if not path.is_file():
        raise IngestError(path, None, None, "no such file")
    store.init_store(db)
    fmt = options.format or detect(path)
    if fmt == "ta_solutions":
        raise IngestError(path, None, None, "this is Thought Anchors' solutions file (the CoTs): ingest it as a dataset "
                          "without --steps-for, then its chunks file with --steps-for that dataset")
    if fmt not in FORMATS:
        raise IngestError(path, None, None, f"cannot tell the step-label layout from the fields; pass --format with one of {', '.join(FORMATS)}")
    if cancelled is not None and cancelled():
        return {"cancelled": True}
    if options.dataset:
        return attach(db, options.dataset, path, fmt, source_name=options.source_name, tokenizer=options.tokenizer,
                      skip_bad=options.skip_bad, progress=progress)
    if fmt == "thought_anchors":
        raise IngestError(path, None, None, "Thought Anchors' steps label CoTs of its solutions file: ingest that first, "
                          "then pass --steps-for with its dataset name")
    made, bad = make_dataset(db, path, fmt, options.dataset_name, options.skip_bad)
    try:
        result = attach(db, made.name, path, fmt, source_name=options.source_name, tokenizer=options.tokenizer,
                        skip_bad=options.skip_bad, progress=progress)
    except BaseException:
        if not made.already_present:
            store.drop_dataset(made.dataset_id, db=db)
        raise
    result["dataset_created"] = not made.already_present
    result["dataset_id"] = made.dataset_id
    result["skipped_records"] = max(result["skipped_records"], len(bad))
    return result


def step_labels_job(opts: StepLabelOptions, ctx) -> dict:
    """Job kind 'step_labels': run_step_labels. Started from the browser, so the file must lie
    under an ingest root (core.access.confine_to_roots), as an ingest job's must."""
    from dataclasses import replace

    from core.access import confine_to_roots

    opts = replace(opts, path=confine_to_roots(opts.path, "generic"))
    ctx.log(f"ingesting step labels from {opts.path}" + (f" for dataset '{opts.dataset}'" if opts.dataset else ""))
    return run_step_labels(ctx.db, opts, progress=ctx.progress, cancelled=ctx.cancelled)


# ---------------------------------------------------------------------------------- CLI hook


def route_ingest(args) -> int | None:
    """`python -m core ingest`'s hook: a step-label file (or ``--steps-for``) is ingested here;
    Thought Anchors' solutions file gets the mapping that reads it as a dataset. None: the
    ordinary ingest goes on."""
    fmt = args.format if args.format in FORMATS else None
    kind = fmt or (None if args.format else detect(args.path))
    if getattr(args, "steps_for", None) or kind in FORMATS:
        return _cmd_ingest_steps(args, kind if kind in FORMATS else None)
    if kind == "ta_solutions" and not args.map:
        args.format = "generic"
        args.map = ",".join(f"{role}={column}" for role, column in cot_mapping().items())
    return None


def _cmd_ingest_steps(args, fmt: str | None) -> int:
    import sys

    from core.progress import ProgressBar

    update = ProgressBar("step labels")
    close = update.close
    opts = StepLabelOptions(path=args.path, dataset=args.steps_for, format=fmt, source_name=getattr(args, "step_source", None),
                            skip_bad=args.skip_bad, dataset_name=args.name)
    try:
        result = run_step_labels(args.db, opts, progress=update)
    except (IngestError, ValueError) as exc:
        close()
        print(f"error: {exc}\nThe store was not changed.", file=sys.stderr)
        return 2
    if result.get("dataset_created"):
        from core.tokens import count_tokens_stage
        from core.verify import verify_stage

        if not args.no_verify:
            verify_stage(db=args.db, dataset_id=result["dataset_id"], progress=update)
        if not args.no_tokens:
            count_tokens_stage(db=args.db, tokenizer=args.tokenizer, dataset_id=result["dataset_id"], progress=update)
        if not args.no_index:
            from core.search import build_quietly

            build_quietly(args.db, log=lambda message: print(message, file=sys.stderr))
    close()
    if result.get("already_present"):
        print(f"The step source '{result['source']}' already holds this file's labels for dataset '{result['dataset']}'; nothing to do.")
        return 0
    made = f"Made dataset '{result['dataset']}' from the file; " if result.get("dataset_created") else ""
    print(f"{made}{result['cots']:,} CoTs of '{result['dataset']}' got {result['steps']:,} labelled steps as step source "
          f"'{result['source']}' (per-CoT figures under '{result['figures_source']}').")
    if result["skipped_records"]:
        print(f"Skipped {result['skipped_records']:,} records that matched no CoT or were malformed; the first: "
              f"{result['bad_records'][0] if result.get('bad_records') else ''}")
    return 0
