"""Readers for the formats researchers have, each turning its input into ProblemRecords.

A reader yields ``ProblemRecord``s, or ``IngestError``s for rows it could not read, so the
ingest decides whether a bad row stops everything or is skipped and reported.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:  # orjson parses long CoT lines several times faster; json is the fallback
    import orjson

    _loads = orjson.loads
    _LOADS_BYTES = True  # orjson takes UTF-8 bytes as they are
    _JSONDecodeError: tuple[type[Exception], ...] = (orjson.JSONDecodeError,)
except ImportError:  # pragma: no cover
    _loads = json.loads
    _LOADS_BYTES = False  # json.loads would guess UTF-16/32 from bytes: decode first
    _JSONDecodeError = (json.JSONDecodeError,)

from core.records import CotRecord, IngestError, Label, ProblemRecord
from core.text import reference_from_gsm8k

FORMATS = ("omnithought", "qwen_eval", "openr1", "generic", "benchmark")
DEFAULT_MAX_LINE_MB = 32
ReadItem = ProblemRecord | IngestError


@dataclass
class ReadOptions:
    """Options the CLI and the app pass to the readers."""

    mapping: dict[str, str] = field(default_factory=dict)  # generic: role -> column
    model: str | None = None  # model/teacher name when the input has none
    split: str | None = None  # datasets: which split
    max_line_mb: float = DEFAULT_MAX_LINE_MB
    dataset_name: str = "dataset"  # generic score columns become this source's labels


# --------------------------------------------------------------------------- row sources


@dataclass
class Row:
    data: dict[str, Any]
    file: str
    line: int
    unit: str = "line"


def _is_hidden(path: Path, root: Path | None = None) -> bool:
    """A dot file, or a file under a dot folder (.ipynb_checkpoints, an editor's swap files)."""
    parts = path.relative_to(root).parts if root is not None and path.is_relative_to(root) else (path.name,)
    return any(part.startswith(".") for part in parts)


def iter_jsonl(path: Path, max_line_mb: float) -> Iterator[Row | IngestError]:
    limit = int(max_line_mb * 1024 * 1024)
    seen_any = False
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if len(raw) > limit:
                yield IngestError(
                    path, line_no, None,
                    f"the line is {len(raw) / 1e6:.1f} MB, over the {max_line_mb:g} MB limit; "
                    "raise it with --max-line-mb if the line is meant to be this long",
                )
                continue
            if not raw or raw.isspace():  # blank line (isspace: no copy of a long line)
                continue
            seen_any = True
            try:
                # orjson reads the bytes and checks the UTF-8 itself: no decoded copy of the line
                data = _loads(raw if _LOADS_BYTES else raw.decode("utf-8"))
            except (UnicodeDecodeError, *_JSONDecodeError) as exc:
                try:  # name the bad byte when that is what is wrong
                    raw.decode("utf-8")
                except UnicodeDecodeError as bad:
                    yield IngestError(
                        path, line_no, None,
                        f"not valid UTF-8 (byte {bad.start} of the line: {raw[bad.start:bad.start + 4]!r})",
                    )
                    continue
                yield IngestError(path, line_no, None, f"broken JSON: {exc}")
                continue
            if not isinstance(data, dict):
                yield IngestError(path, line_no, None, f"expected a JSON object, got {type(data).__name__}")
                continue
            yield Row(data, str(path), line_no)
    if not seen_any:
        yield IngestError(path, None, None, "the file is empty")


def iter_json(path: Path) -> Iterator[Row | IngestError]:
    raw = path.read_bytes()
    if not raw.strip():
        yield IngestError(path, None, None, "the file is empty")
        return
    try:
        data = _loads(raw)
    except _JSONDecodeError as exc:
        yield IngestError(path, None, None, f"broken JSON: {exc}")
        return
    if isinstance(data, dict):  # {"data": [...]} or {"train": [...]}
        lists = [v for v in data.values() if isinstance(v, list)]
        data = lists[0] if len(lists) == 1 else [data]
    if not isinstance(data, list):
        shown = "null" if data is None else f"{type(data).__name__} {_short(data)}"
        yield IngestError(path, None, None, f"expected an array of objects (or an object holding one) at the top level, got {shown}")
        return
    for i, item in enumerate(data, start=1):
        if not isinstance(item, dict):
            yield IngestError(path, i, None, f"expected an object, got {type(item).__name__}", unit="item")
            continue
        yield Row(item, str(path), i, "item")


def iter_parquet(path: Path) -> Iterator[Row | IngestError]:
    """Rows of a Parquet file, one row group at a time. A row group that cannot be decoded
    (a corrupt data page under an intact footer) is named with its rows and column; it is
    not a bad row that --skip-bad could skip."""
    import pyarrow.parquet as pq

    try:
        # page checksums are checked where the writer stored them
        pf = pq.ParquetFile(path, page_checksum_verification=True)
    except Exception as exc:  # pyarrow raises several types for a broken file
        yield IngestError(path, None, None, f"not a readable Parquet file: {_first_line(exc)}")
        return
    if pf.metadata.num_rows == 0:
        yield IngestError(path, None, None, "the file is empty")
        return
    row_no = 0
    for group in range(pf.metadata.num_row_groups):
        n_rows = pf.metadata.row_group(group).num_rows
        try:
            items = pf.read_row_group(group).to_pylist()
        except Exception as exc:  # OSError, ArrowInvalid, ...: the data does not decode
            yield _corrupt_row_group(pf, path, group, row_no, n_rows, exc)
            return
        for item in items:
            row_no += 1
            yield Row(item, str(path), row_no, "row")


def _corrupt_row_group(pf, path: Path, group: int, before: int, n_rows: int, exc: Exception) -> IngestError:
    """The error for a row group that does not decode, naming the first column that fails."""
    column = None
    for name in pf.schema_arrow.names:
        try:
            pf.read_row_group(group, columns=[name])
        except Exception as column_exc:
            column, exc = name, column_exc
            break
    return IngestError(
        path, group, column,
        f"the data of rows {before + 1:,}-{before + n_rows:,} is corrupt and cannot be read "
        f"({_first_line(exc)}); the file's footer is intact, so it was cut or overwritten inside",
        unit="row group", skippable=False,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def iter_csv(path: Path, max_cell_mb: float = DEFAULT_MAX_LINE_MB) -> Iterator[Row | IngestError]:
    """Rows of a CSV (or, for .tsv, tab-separated) file with a header line. A cell may be as
    long as a JSONL line may (a long CoT is one cell); a row with fewer or more cells than
    the header is a bad row, located by the line it starts on."""
    # Check the encoding line by line first: a text-mode reader decodes in blocks and would
    # report a bad byte at the wrong line.
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield IngestError(path, line_no, None, f"not valid UTF-8 (byte {exc.start} of the line: {raw[exc.start:exc.start + 4]!r})")
                return
    limit = int(max_cell_mb * 1024 * 1024)
    # The csv module's own cap (131,072 characters by default, process-wide) would stop a long
    # CoT with a traceback; lift it, and check each cell against the file's limit here, as a
    # located, skippable bad row.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    # utf-8-sig: a spreadsheet's byte-order mark would otherwise join the first column's name
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        try:
            header = next(reader, None)
        except csv.Error as exc:
            yield IngestError(path, 1, None, f"the header line cannot be read: {exc}", skippable=False)
            return
        if not header:
            yield IngestError(path, None, None, "the file is empty")
            return
        seen: set[str] = set()
        for i, name in enumerate(header, start=1):
            if name in seen:
                yield IngestError(path, 1, name, f"column {i} repeats the header name '{name}'; each column needs its own name", skippable=False)
                return
            seen.add(name)
        got_any = False
        while True:
            start = reader.line_num + 1  # the line this row starts on (a quoted cell may span lines)
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:  # the reader cannot go on from here: not a row to skip
                yield IngestError(path, start, None, f"the row cannot be read as CSV: {exc}", skippable=False)
                return
            if not cells:  # a blank line
                continue
            got_any = True
            if len(cells) != len(header):
                if len(cells) < len(header):
                    field, what = header[len(cells)], f"the row has {len(cells)} cells, the header {len(header)}: '{header[len(cells)]}' and after are missing"
                else:
                    field, what = f"cell {len(header) + 1}", f"the row has {len(cells)} cells, the header {len(header)}: {len(cells) - len(header)} more than there are columns"
                yield IngestError(path, start, field, what)
                continue
            long_cell = next((j for j, cell in enumerate(cells) if len(cell) > limit), None)
            if long_cell is not None:
                yield IngestError(
                    path, start, header[long_cell],
                    f"the cell is {len(cells[long_cell]) / 1e6:.1f} M characters, over the {max_cell_mb:g} MB limit; "
                    "raise it with --max-line-mb if it is meant to be this long",
                )
                continue
            yield Row(dict(zip(header, cells)), str(path), start, "line")
        if not got_any:
            yield IngestError(path, None, None, "the file is empty")


def iter_datasets(source: str, split: str | None, *, from_disk: bool) -> Iterator[Row | IngestError]:
    """A `datasets` save_to_disk folder, or (online) a Hugging Face hub id, row by row."""
    import datasets

    what = ("not a readable datasets folder" if from_disk else
            "not a file or folder on this machine, so it was tried as a Hugging Face hub id, and that failed")
    try:
        if from_disk:
            ds = datasets.load_from_disk(source)
        else:  # hub id: streamed so a large dataset never sits whole in memory
            ds = datasets.load_dataset(source, split=split or "train", streaming=True)
    except Exception as exc:  # missing, offline, corrupt arrow files, ...: one line, not a traceback
        yield IngestError(source, None, None, f"{what}: {_first_line(exc)}")
        return
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        names = list(ds.keys())
        chosen = split or ("train" if "train" in names else names[0])
        if chosen not in ds:
            yield IngestError(source, None, None, f"no split '{chosen}'; the splits are {names}")
            return
        ds = ds[chosen]
    rows = iter(ds)
    i = 0
    while True:
        try:
            item = next(rows)
        except StopIteration:
            return
        except Exception as exc:
            yield IngestError(source, None, None, f"{what} after {i:,} rows: {_first_line(exc)}")
            return
        i += 1
        yield Row(dict(item), source, i, "row")


def iter_rows(path: Path, opts: ReadOptions) -> Iterator[Row | IngestError]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return iter_jsonl(path, opts.max_line_mb)
    if suffix == ".json":
        return iter_json(path)
    if suffix == ".parquet":
        return iter_parquet(path)
    if suffix in (".csv", ".tsv"):
        return iter_csv(path, opts.max_line_mb)
    raise IngestError(path, None, None, f"unknown file type '{suffix}' (use .jsonl, .json, .parquet or .csv)")


# --------------------------------------------------------------------------- field helpers


def _require(row: Row, key: str, kinds: type | tuple[type, ...], *, allow_empty: bool = False) -> Any:
    if key not in row.data or row.data[key] is None:
        raise IngestError(row.file, row.line, key, "required field is missing", unit=row.unit)
    value = row.data[key]
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in _as_tuple(kinds):
        names = " or ".join(k.__name__ for k in _as_tuple(kinds))
        raise IngestError(
            row.file, row.line, key, f"expected {names}, got {type(value).__name__}", unit=row.unit
        )
    if not allow_empty and isinstance(value, (str, list)) and len(value) == 0:
        raise IngestError(row.file, row.line, key, "is empty", unit=row.unit)
    return value


def _as_tuple(kinds):
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _opt_str(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)


SAMPLE_MAX = 2**31 - 1  # cots.sample_idx is a DuckDB INTEGER


def _sample_index(row: Row, where: str, value: Any) -> int:
    """A sample index as given: an integer, or text or a float holding a whole number,
    within the store's INTEGER column (0 to 2,147,483,647)."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, (float, str)):
        try:
            number = int(value.strip()) if isinstance(value, str) else None
        except ValueError:
            pass
        if number is None:
            try:
                as_float = float(value)
            except (ValueError, OverflowError):
                as_float = None
            if as_float is not None and as_float.is_integer():
                number = int(as_float)
            elif as_float is not None and math.isfinite(as_float):
                raise IngestError(row.file, row.line, where, f"expected a whole number, got {_short(value)}", unit=row.unit)
    if number is None:
        raise IngestError(row.file, row.line, where, f"expected an integer, got {_short(value)}", unit=row.unit)
    if not 0 <= number <= SAMPLE_MAX:
        raise IngestError(
            row.file, row.line, where,
            f"{_short(value)} is outside the range of a sample index (0 to {SAMPLE_MAX:,})", unit=row.unit,
        )
    return number


def _finite_number(row: Row, where: str, value: Any) -> float:
    """A score as a finite float (a DOUBLE in the store); text holding a number is read."""
    try:
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond any float
        number = None
    if number is None:
        raise IngestError(row.file, row.line, where, f"expected a number, got {_short(value)}", unit=row.unit)
    if not math.isfinite(number):
        raise IngestError(row.file, row.line, where, f"expected a finite number, got {_short(value)}", unit=row.unit)
    return number


def _level(row: Row, where: str, value: Any) -> float | None:
    """A 0-9 judge level as given ({level, judge} or a bare number)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise IngestError(row.file, row.line, where, f"expected a level 0-9, got {type(value).__name__}", unit=row.unit)
    try:
        number = float(value)
    except (ValueError, OverflowError):  # OverflowError: an integer beyond any float
        raise IngestError(row.file, row.line, where, f"expected a level 0-9, got {_short(value)}", unit=row.unit) from None
    if not 0 <= number <= 9:
        raise IngestError(row.file, row.line, where, f"level {value!r} is outside 0-9", unit=row.unit)
    return number


def _bool_value(row: Row, where: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return float(value.strip().lower() in ("true", "1", "yes"))
    raise IngestError(row.file, row.line, where, f"expected true/false, got {value!r}", unit=row.unit)


def _problem_key(row: Row, id_fields=("id", "idx", "uuid", "problem_id", "unique_id", "uid")) -> str:
    for name in id_fields:
        if row.data.get(name) is not None:
            return str(row.data[name])
    return f"{Path(row.file).name}:{row.line}"


# --------------------------------------------------------------------------- formats

_OMNI_COT_KEYS = {
    "thought", "solution", "full_response", "teacher", "thought_correctness_verify",
    "Reasoning_Verbosity", "Cognitive_Difficulty",
}


_RAW_CACHE: dict[tuple, str] = {}


def _raw_judge_object(value: dict) -> str | None:
    """_opt_str of a {level, judge} object. A corpus holds a few distinct ones, so each is
    serialised once (json.dumps was ~8% of the read pass, twice per OmniThought CoT)."""
    types = tuple(map(type, value.values()))
    if float in types:  # 0.0 == -0.0 but they print apart: not worth a cache entry
        return _opt_str(value)
    try:
        key = (tuple(value.items()), types)  # the types keep {"level": 1} and {"level": true} apart
        raw = _RAW_CACHE.get(key)
    except TypeError:  # a list or object inside: unhashable
        return _opt_str(value)
    if raw is None:
        raw = _opt_str(value)
        if len(_RAW_CACHE) < 4096:
            _RAW_CACHE[key] = raw
    return raw


def _judge_level(row: Row, where: str, value: Any) -> tuple[float | None, str | None]:
    if isinstance(value, dict):
        return _level(row, f"{where}.level", value.get("level")), _opt_str(value.get("judge"))
    return _level(row, where, value), None


def normalize_omnithought(row: Row, opts: ReadOptions) -> ProblemRecord:
    question = _require(row, "question", str)
    reasoning = _require(row, "reasoning", list)
    ref = row.data.get("reference_answer", row.data.get("answer"))
    problem = ProblemRecord(
        key=_problem_key(row), question=question, file=row.file, line=row.line,
        reference_answer=_opt_str(ref),
        extra={k: v for k, v in row.data.items() if k not in ("question", "reasoning", "reference_answer", "answer")},
    )
    for i, cot in enumerate(reasoning):
        # The usual row takes the checks inline; anything unusual goes through the general
        # helpers, which name the field (the location strings are built only then).
        if not isinstance(cot, dict):
            raise IngestError(row.file, row.line, f"reasoning[{i}]", f"expected an object, got {type(cot).__name__}", unit=row.unit)
        get = cot.get
        thought, solution, full = get("thought"), get("solution"), get("full_response")
        for name, value in (("thought", thought), ("solution", solution), ("full_response", full)):
            if value is not None and not isinstance(value, str):
                raise IngestError(row.file, row.line, f"reasoning[{i}].{name}", f"expected str, got {type(value).__name__}", unit=row.unit)
        if not full:
            if not thought and not solution:
                raise IngestError(row.file, row.line, f"reasoning[{i}].full_response", "no text: full_response, thought and solution are all missing", unit=row.unit)
            full = f"<think>\n{thought or ''}\n</think>\n\n{solution or ''}"
        teacher = _opt_str(get("teacher")) or opts.model
        labels: list[Label] = []
        given = get("thought_correctness_verify")
        if given is not None:
            verify = float(given) if type(given) is bool else _bool_value(row, f"reasoning[{i}].thought_correctness_verify", given)
            labels.append(Label("omnithought", "correct", verify, _opt_str(given)))
        for key, metric in (("Reasoning_Verbosity", "rv"), ("Cognitive_Difficulty", "cd")):
            value = get(key)
            if value is None:
                continue
            level = value.get("level") if type(value) is dict else None
            judge = value.get("judge") if type(value) is dict else None
            if type(level) is int and 0 <= level <= 9 and (judge is None or type(judge) is str):
                level = float(level)
            else:
                level, judge = _judge_level(row, f"reasoning[{i}].{key}", value)
            source = f"omnithought ({judge})" if judge else "omnithought"
            labels.append(Label(source, metric, level, _raw_judge_object(value) if isinstance(value, dict) else _opt_str(value)))
        problem.cots.append(CotRecord(
            full_text=full, sample_idx=i, model=teacher,
            thinking=thought, solution=solution, labels=labels,
            extra={} if cot.keys() <= _OMNI_COT_KEYS else {k: v for k, v in cot.items() if k not in _OMNI_COT_KEYS},
        ))
    return problem


def normalize_openr1(row: Row, opts: ReadOptions) -> ProblemRecord:
    question = _require(row, "problem", str)
    generations = _require(row, "generations", list)
    n = len(generations)
    lists = {}
    for key in ("correctness_math_verify", "correctness_llama", "finish_reasons", "is_reasoning_complete"):
        value = row.data.get(key)
        if value is None:
            continue
        if not isinstance(value, list) or len(value) != n:
            raise IngestError(row.file, row.line, key, f"expected a list of {n} entries (one per generation)", unit=row.unit)
        lists[key] = value
    known = {"problem", "answer", "solution", "generations", *lists}
    problem = ProblemRecord(
        key=_problem_key(row), question=question, file=row.file, line=row.line,
        reference_answer=_opt_str(row.data.get("answer")), reference_solution=_opt_str(row.data.get("solution")),
        extra={k: v for k, v in row.data.items() if k not in known},
    )
    for i, text in enumerate(generations):
        if not isinstance(text, str):
            raise IngestError(row.file, row.line, f"generations[{i}]", f"expected str, got {type(text).__name__}", unit=row.unit)
        labels = []
        for key, source in (("correctness_math_verify", "openr1 math_verify"), ("correctness_llama", "openr1 llama judge")):
            if key in lists:
                value = _bool_value(row, f"{key}[{i}]", lists[key][i])
                labels.append(Label(source, "correct", value, _opt_str(lists[key][i])))
        finish = _opt_str(lists["finish_reasons"][i]) if "finish_reasons" in lists else None
        extra = {"is_reasoning_complete": lists["is_reasoning_complete"][i]} if "is_reasoning_complete" in lists else {}
        problem.cots.append(CotRecord(
            full_text=text, sample_idx=i, model=_opt_str(row.data.get("model")) or opts.model,
            finish_reason=finish, labels=labels, extra=extra,
        ))
    return problem


def normalize_benchmark(row: Row, opts: ReadOptions) -> ProblemRecord:
    qkey = next((k for k in ("problem", "question", "prompt") if k in row.data), "problem")
    question = _require(row, qkey, str)
    answer = row.data.get("answer")
    if answer is None:
        raise IngestError(row.file, row.line, "answer", "required field is missing", unit=row.unit)
    answer = _opt_str(answer)
    solution = _opt_str(row.data.get("solution"))
    if "####" in answer:  # GSM8K: the worked solution ends with '#### <answer>'
        solution, answer = answer, reference_from_gsm8k(answer)
    benchmark = Path(row.file).stem.replace("_test", "")
    return ProblemRecord(
        key=_problem_key(row), question=question, file=row.file, line=row.line,
        reference_answer=answer, reference_solution=solution, benchmark=benchmark,
        extra={k: v for k, v in row.data.items() if k not in (qkey, "answer", "solution")},
    )


def normalize_generic(row: Row, opts: ReadOptions) -> ProblemRecord:
    """One row per CoT; rows with the same id (or the same question) form one problem.

    Mapping roles: question, response (required), answer, model, sample, correct, id, thinking,
    solution, benchmark, finish_reason, and score:METRIC for any score column."""
    mapping = opts.mapping
    if "question" not in mapping or "response" not in mapping:
        raise IngestError(row.file, None, None, "the generic format needs --map question=COL,response=COL (plus optional answer, model, sample, correct, id, score:METRIC)")
    question = _require(row, mapping["question"], str)
    response = _require(row, mapping["response"], str)
    labels = []
    if "correct" in mapping and row.data.get(mapping["correct"]) is not None:
        labels.append(Label(opts.dataset_name, "correct", _bool_value(row, mapping["correct"], row.data[mapping["correct"]]), _opt_str(row.data[mapping["correct"]])))
    for role, column in mapping.items():
        if role.startswith("score:") and row.data.get(column) is not None:
            value = row.data[column]
            number = _finite_number(row, column, value)
            labels.append(Label(opts.dataset_name, role.split(":", 1)[1], number, _opt_str(value)))
    sample = row.data.get(mapping.get("sample", ""), None)
    sample_idx = _sample_index(row, mapping["sample"], sample) if sample not in (None, "") else -1
    if "id" in mapping:
        key = str(_require(row, mapping["id"], (str, int)))
    else:  # no id column: the question text identifies the problem
        key = hashlib.sha1(question.encode()).hexdigest()[:16]
    used = set(mapping.values())
    model = _opt_str(row.data.get(mapping.get("model", ""))) or opts.model
    return ProblemRecord(
        key=key, question=question, file=row.file, line=row.line,
        reference_answer=_opt_str(row.data.get(mapping.get("answer", ""))),
        benchmark=_opt_str(row.data.get(mapping.get("benchmark", ""))),
        cots=[CotRecord(
            full_text=response, sample_idx=sample_idx, model=model,
            finish_reason=_opt_str(row.data.get(mapping.get("finish_reason", ""))),
            thinking=_opt_str(row.data.get(mapping.get("thinking", ""))),
            solution=_opt_str(row.data.get(mapping.get("solution", ""))),
            labels=labels, extra={k: v for k, v in row.data.items() if k not in used},
        )],
    )


# ---------------------------------------------------------------- Qwen2.5-Math eval outputs

_EVAL_DIR = re.compile(r"^(?P<bench>.+)_eval$")
_CKPT = re.compile(r"^(checkpoint-\d+|global_step_?\d+|step_?\d+)$")


def qwen_eval_files(root: Path) -> list[Path]:
    return [p for p in sorted(root.rglob("*.jsonl")) if not _is_hidden(p, root) and any(_EVAL_DIR.match(x) for x in p.parts)]


def qwen_run_identity(root: Path, file: Path) -> tuple[str, str]:
    """(model, benchmark) from outputs/<model path>/<bench>_eval/<bench>/<file>.jsonl.

    One rule names the model: the last two folders of its path (what follows the tree's last
    ``outputs`` folder, up to ``<bench>_eval``), or its one folder when it has one. So a hub
    id keeps its organisation (``Qwen/Qwen2.5-Math-7B``), a checkpoint its run
    (``Sky-T1-...-ckpts/checkpoint-105``), and a local path its last folder but one
    (``home/ubuntu/skyov1-dl/Sky-T1-...`` gives ``skyov1-dl/Sky-T1-...``, as
    ``icml_models/Sky-T1-...`` stays itself). When the folder ingested is the model's own
    (``outputs/Qwen/Qwen2.5-Math-7B``), its path gives the name the same way."""
    rel = file.relative_to(root) if file.is_relative_to(root) and root != file.parent else file.resolve()
    parts = list(rel.parts[:-1])
    eval_idx = [i for i, p in enumerate(parts) if _EVAL_DIR.match(p)]
    if not eval_idx:
        return file.parent.name, file.parent.name
    idx = eval_idx[-1]
    bench = _EVAL_DIR.match(parts[idx]).group("bench")
    model_parts = [p for p in parts[:idx] if p not in ("/", "")]
    if not model_parts:  # the folder ingested is the model's own: its path names it
        model_parts = [p for p in root.resolve().parts if p not in ("/", "")]
    if "outputs" in model_parts:  # the harness's own root: what follows it is the model path
        model_parts = model_parts[len(model_parts) - model_parts[::-1].index("outputs"):]
    if not model_parts:
        return "unknown", bench
    return "/".join(model_parts[-2:]), bench


def _prompt_type(file: Path) -> str | None:
    match = re.match(r"test_(?P<prompt>.+?)_-?\d+_seed", file.name)
    return match.group("prompt") if match else None


def normalize_qwen_eval(row: Row, model: str, bench: str, prompt_type: str | None) -> ProblemRecord:
    idx = _require(row, "idx", (int, str))
    question = _require(row, "question", str)
    code = _require(row, "code", list)
    n = len(code)
    per_sample = {}
    for key in ("pred", "score", "report"):
        value = row.data.get(key)
        if value is None:
            continue
        if not isinstance(value, list) or len(value) != n:
            raise IngestError(row.file, row.line, key, f"expected a list of {n} entries (one per sample in 'code')", unit=row.unit)
        per_sample[key] = value
    known = {"idx", "question", "gt", "solution", "code", "pred", "score", "report"}
    problem = ProblemRecord(
        key=f"{bench}/{idx}", question=question, file=row.file, line=row.line,
        reference_answer=_opt_str(row.data.get("gt")), reference_solution=_opt_str(row.data.get("solution")),
        benchmark=bench, extra={k: v for k, v in row.data.items() if k not in known},
    )
    for i, text in enumerate(code):
        if not isinstance(text, str):
            raise IngestError(row.file, row.line, f"code[{i}]", f"expected str, got {type(text).__name__}", unit=row.unit)
        labels = []
        if "score" in per_sample:
            labels.append(Label("harness", "correct", _bool_value(row, f"score[{i}]", per_sample["score"][i]), _opt_str(per_sample["score"][i])))
        extra = {"prompt_type": prompt_type, "run_file": row.file}
        if "pred" in per_sample:
            extra["harness_pred"] = per_sample["pred"][i]
        if "report" in per_sample:
            extra["report"] = per_sample["report"][i]
        problem.cots.append(CotRecord(full_text=text, sample_idx=i, model=model, labels=labels, extra=extra))
    return problem


def qwen_run_metrics(file: Path) -> dict[str, float]:
    """The harness's own figures from the *_metrics.json beside a run file."""
    candidates = sorted(p for p in file.parent.glob(f"{file.stem}*metrics.json") if not _is_hidden(p))
    if not candidates:
        return {}
    try:
        data = json.loads(candidates[0].read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# --------------------------------------------------------------------------- detection

_NORMALIZERS: dict[str, Callable[[Row, ReadOptions], ProblemRecord]] = {
    "omnithought": normalize_omnithought,
    "openr1": normalize_openr1,
    "benchmark": normalize_benchmark,
    "generic": normalize_generic,
}

# Formats whose rows join problems read before: the same benchmark problem in many eval runs,
# or one CoT per row. In the others a repeated problem id is an input error.
MERGING_FORMATS = {"qwen_eval", "generic"}


def format_of_row(data: dict[str, Any]) -> str | None:
    keys = set(data)
    if "reasoning" in keys and "question" in keys:
        return "omnithought"
    if "generations" in keys and "problem" in keys:
        return "openr1"
    if {"idx", "question", "code"} <= keys:
        return "qwen_eval"
    if keys & {"problem", "question", "prompt"} and "answer" in keys:
        return "benchmark"
    return None


# A bare Hugging Face hub id: owner/name, no more path than that, no file extension.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_FILE_EXTENSION = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,7}$")


def source_kind(source: str, fmt: str | None = None) -> str:
    """'path' for a file or folder on disk, 'hub' for a bare ``owner/name`` that is not, and
    an IngestError for anything else: a missing path, or a symlink that leads nowhere (a
    loop, or a missing target), is "no such file", never a hub lookup."""
    del fmt  # a hub id stays one with --format given (e.g. --format openr1 open-r1/OpenR1-Math-220k)
    path = Path(source).expanduser()
    if path.exists():
        return "path"
    if os.path.lexists(path):
        raise IngestError(source, None, None, "no such file: it is a symbolic link that leads nowhere (its target is missing, or the links loop)")
    if _HUB_ID.match(source) and not _FILE_EXTENSION.search(source):
        return "hub"
    hint = "" if "/" in source else " (a Hugging Face hub id is written owner/name)"
    raise IngestError(source, None, None, f"no such file or folder{hint}")


def is_datasets_folder(path: Path) -> bool:
    return path.is_dir() and any((path / n).exists() for n in ("dataset_info.json", "dataset_dict.json", "state.json"))


def detect_format(source: str, opts: ReadOptions) -> str:
    path = Path(source)
    if path.is_dir() and not is_datasets_folder(path):
        if qwen_eval_files(path):
            return "qwen_eval"
        raise IngestError(path, None, None, "a folder must be a datasets save_to_disk folder or a Qwen2.5-Math outputs/ tree (<model>/<bench>_eval/...jsonl)")
    for item in _rows_of(source, "", opts):
        if isinstance(item, IngestError):
            raise item
        found = format_of_row(item.data)
        if found:
            return found
        if opts.mapping:
            return "generic"
        raise IngestError(
            item.file, item.line, None,
            f"cannot tell the format from the fields {sorted(item.data)[:12]}; pass --format, "
            "or --format generic with --map question=COL,response=COL,...",
            unit=item.unit,
        )
    raise IngestError(source, None, None, "the input has no rows")


def input_files(source: str, fmt: str) -> list[Path]:
    """The files an ingest reads (for hashing and progress); empty for a hub id."""
    path = Path(source)
    if not path.exists():
        return []
    if path.is_file():
        return [path]
    if fmt == "qwen_eval":
        return qwen_eval_files(path)
    return sorted(p for p in path.rglob("*") if p.is_file() and not _is_hidden(p, path))


def _rows_of(source: str, fmt: str, opts: ReadOptions) -> Iterator[Row | IngestError]:
    """The raw rows of a datasets folder, a folder of files, a file, or a hub id."""
    path = Path(source)
    if path.is_dir() and is_datasets_folder(path):
        return iter_datasets(source, opts.split, from_disk=True)
    if path.is_dir():
        return (r for f in input_files(source, fmt) for r in iter_rows(f, opts))
    if source_kind(source) == "path":
        return iter_rows(path, opts)
    return iter_datasets(source, opts.split, from_disk=False)


def read_records(source: str, fmt: str, opts: ReadOptions) -> Iterator[ReadItem]:
    """Every ProblemRecord of the input, or an IngestError where a row is bad."""
    path = Path(source)
    if fmt == "qwen_eval":
        root = path if path.is_dir() else path.parent
        for file in qwen_eval_files(path) if path.is_dir() else [path]:
            model, bench = qwen_run_identity(root, file)
            model = opts.model or model
            prompt_type = _prompt_type(file)
            for item in iter_jsonl(file, opts.max_line_mb):
                if isinstance(item, IngestError):
                    yield item
                    continue
                try:
                    yield normalize_qwen_eval(item, model, bench, prompt_type)
                except IngestError as exc:
                    yield exc
        return
    normalize = _NORMALIZERS[fmt]
    for item in _rows_of(source, fmt, opts):
        if isinstance(item, IngestError):
            yield item
            continue
        try:
            yield normalize(item, opts)
        except IngestError as exc:
            yield exc


def run_metrics_of(source: str, fmt: str, opts: ReadOptions) -> list[tuple[str, str, str, float]]:
    """(model, benchmark, metric, value) rows the input carries about itself."""
    if fmt != "qwen_eval":
        return []
    path = Path(source)
    root = path if path.is_dir() else path.parent
    out = []
    for file in qwen_eval_files(path) if path.is_dir() else [path]:
        model, bench = qwen_run_identity(root, file)
        for metric, value in qwen_run_metrics(file).items():
            out.append((opts.model or model, bench, metric, value))
    return out
