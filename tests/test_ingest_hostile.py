"""Hostile or broken input (issue 9): each case stops with one clear line naming the file,
line (or row group) and field, exits non-zero from the CLI, and leaves the store as it was;
where a row is at fault, --skip-bad ingests the others and reports it. Legitimate long CSV
cells load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core import store
from core.formats import ReadOptions, source_kind
from core.ingest import ingest
from core.records import IngestError
from tests.helpers import omni_row, seeded_store, snapshot, staging_leftovers, write_csv, write_jsonl

REPO = Path(__file__).resolve().parents[1]
GENERIC = {"question": "prompt", "response": "output", "sample": "sample", "score:rv": "rv"}
GENERIC_MAP = "question=prompt,response=output,sample=sample,score:rv=rv"


def generic_rows(n: int = 3, **overrides) -> list[dict]:
    rows = [{"prompt": f"Q{i}?", "output": f"<think>t{i}</think> A{i}", "sample": i, "rv": 3} for i in range(n)]
    for i, changes in overrides.items():
        rows[int(i)].update(changes)
    return rows


def rejected(db: Path, path: Path, **kwargs) -> IngestError:
    """Ingest must refuse ``path``: returns the error, after checking the store is unchanged."""
    before = snapshot(db)
    with pytest.raises(IngestError) as err:
        ingest(str(path), db=db, **kwargs)
    assert snapshot(db) == before
    assert staging_leftovers(db.parent) == []
    return err.value


def cli(db: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "core", "--db", str(db), *args, "--no-verify", "--no-tokens", "--no-index"],
        cwd=REPO, capture_output=True, text=True, timeout=180, env={**os.environ, **(env or {})},
    )


def assert_one_clear_line(out: subprocess.CompletedProcess, starts: str) -> None:
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    # the progress bars aside (they go to stderr too), one error line and the store's state
    errors = [line for line in out.stderr.split("\n") if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {starts}"), out.stderr
    assert out.stderr.rstrip().endswith(errors[0] + "\nThe store was not changed."), out.stderr


# =========================================================================== integers out of range


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (3_000_000_000, "outside the range of a sample index"),
        (1e20, "outside the range of a sample index"),
        (-1, "outside the range of a sample index"),
        (2**64, "outside the range of a sample index"),
        (1.5, "expected a whole number"),
        ("3000000000", "outside the range of a sample index"),
        ("1e20", "outside the range of a sample index"),
        ("many", "expected an integer"),
        (True, "expected an integer"),
    ],
)
def test_sample_beyond_its_column_is_located(tmp_path, value, says):
    db = seeded_store(tmp_path)
    path = write_jsonl(tmp_path / "gen.jsonl", generic_rows(3, **{"1": {"sample": value}}))
    exc = rejected(db, path, fmt="generic", opts=ReadOptions(mapping=GENERIC))
    assert (exc.file, exc.line, exc.field) == (str(path), 2, "sample")
    assert says in exc.message


def test_largest_sample_index_loads(tmp_path):
    db = tmp_path / "s.duckdb"
    path = write_jsonl(tmp_path / "gen.jsonl", generic_rows(2, **{"1": {"sample": 2**31 - 1}}))
    ingest(str(path), db=db, fmt="generic", opts=ReadOptions(mapping=GENERIC))
    assert store.read_rows("SELECT max(sample_idx) FROM cots", db=db) == [(2**31 - 1,)]


def test_other_numeric_fields_out_of_range(tmp_path):
    db = seeded_store(tmp_path)
    # a score that is no finite number (a DOUBLE column would take inf, but it means nothing)
    path = write_csv(tmp_path / "scores.csv", generic_rows(3, **{"2": {"rv": "1e999"}}))
    exc = rejected(db, path, fmt="generic", opts=ReadOptions(mapping=GENERIC))
    assert (exc.line, exc.field) == (4, "rv") and "finite number" in exc.message
    # a score far beyond any float, from a Parquet file
    huge = tmp_path / "huge.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "output": ["x", "y"], "rv": [1.0, float("inf")]}), huge)
    exc = rejected(db, huge, fmt="generic", opts=ReadOptions(mapping={"question": "prompt", "response": "output", "score:rv": "rv"}))
    assert (exc.line, exc.unit, exc.field) == (2, "row", "rv")
    # a judge level far beyond its 0-9 scale
    row = omni_row(1)
    row["reasoning"][0]["Reasoning_Verbosity"]["level"] = 10**30
    path = write_jsonl(tmp_path / "levels.jsonl", [omni_row(0), row])
    exc = rejected(db, path)
    assert (exc.line, exc.field) == (2, "reasoning[0].Reasoning_Verbosity.level")


def test_cli_out_of_range_one_line_and_skip_bad(tmp_path):
    db = seeded_store(tmp_path)
    before = snapshot(db)
    path = write_jsonl(tmp_path / "gen.jsonl", generic_rows(4, **{"2": {"sample": 3_000_000_000}}))
    out = cli(db, "ingest", str(path), "--format", "generic", "--map", GENERIC_MAP)
    assert_one_clear_line(out, f"{path}, line 3, field 'sample': 3000000000 is outside the range")
    assert snapshot(db) == before

    report = tmp_path / "bad.jsonl"
    out = cli(db, "ingest", str(path), "--format", "generic", "--map", GENERIC_MAP, "--skip-bad", "--report", str(report))
    assert out.returncode == 0, out.stderr
    assert "3 CoTs" in out.stdout and "Skipped 1 bad rows" in out.stdout
    assert [(r["line"], r["field"]) for r in map(json.loads, report.read_text().splitlines())] == [(3, "sample")]


# =========================================================================== CSV


def test_csv_cell_longer_than_the_csv_modules_default_loads(tmp_path):
    db = tmp_path / "s.duckdb"
    long_cot = "<think>" + "step. " * 60_000 + "</think> The answer is 7."  # ~360k characters
    assert len(long_cot) > 131_072
    path = write_csv(tmp_path / "long.csv", [{"prompt": "Q?", "output": long_cot}, {"prompt": "R?", "output": "short"}])
    result = ingest(str(path), db=db, fmt="generic", opts=ReadOptions(mapping={"question": "prompt", "response": "output"}))
    assert result.cots == 2
    assert store.read_rows("SELECT max(n_chars) FROM cots", db=db) == [(len(long_cot),)]


def test_csv_cell_over_the_line_limit_is_located(tmp_path):
    db = seeded_store(tmp_path)
    path = write_csv(tmp_path / "long.csv", [{"prompt": "Q?", "output": "ok"}, {"prompt": "R?", "output": "x" * 2_200_000}])
    exc = rejected(db, path, fmt="generic", opts=ReadOptions(mapping={"question": "prompt", "response": "output"}, max_line_mb=2))
    assert (exc.line, exc.field) == (3, "output") and "over the 2 MB limit" in exc.message


def _ragged(path: Path) -> Path:
    path.write_text("prompt,output,sample\nQ0?,a0,0\nQ1?,a1\nQ2?,a2,2,surplus,more\n\"Q3?\nover two lines\",a3\nQ4?,a4,4\n")
    return path


def test_csv_rows_with_too_few_or_too_many_cells_are_located(tmp_path):
    db = seeded_store(tmp_path)
    path = _ragged(tmp_path / "ragged.csv")
    opts = ReadOptions(mapping={"question": "prompt", "response": "output", "sample": "sample"})
    exc = rejected(db, path, fmt="generic", opts=opts)
    assert (exc.line, exc.field) == (3, "sample") and "has 2 cells, the header 3" in exc.message

    report = tmp_path / "report.jsonl"
    result = ingest(str(path), db=db, fmt="generic", opts=opts, skip_bad=True, report_path=report)
    assert (result.cots, result.skipped_rows) == (2, 3)
    bad = [json.loads(line) for line in report.read_text().splitlines()]
    # a row that starts on line 5 and runs over two lines is named by its first line
    assert [(b["line"], b["field"]) for b in bad] == [(3, "sample"), (4, "cell 4"), (5, "sample")]
    # nothing of the surplus cells landed anywhere (they used to go to extra under "null")
    assert store.read_rows("SELECT count(*) FROM cots WHERE dataset_id = ? AND extra IS NOT NULL", [result.dataset_id], db=db) == [(0,)]


def test_csv_repeated_header_name(tmp_path):
    # csv.DictReader kept the last of two same-named columns and dropped the other silently
    db = seeded_store(tmp_path)
    path = tmp_path / "dup.csv"
    path.write_text("prompt,output,output\nQ?,a,b\n")
    exc = rejected(db, path, fmt="generic", opts=ReadOptions(mapping={"question": "prompt", "response": "output"}), skip_bad=True)
    assert (exc.line, exc.field) == (1, "output") and "repeats" in exc.message


def test_tsv_is_split_on_tabs(tmp_path):
    db = tmp_path / "s.duckdb"
    path = tmp_path / "x.tsv"
    path.write_text("prompt\toutput\nWhat, exactly?\tIt is 4, surely.\n")
    ingest(str(path), db=db, fmt="generic", opts=ReadOptions(mapping={"question": "prompt", "response": "output"}))
    assert store.read_rows("SELECT question, full_text FROM problems JOIN cots USING (problem_id)", db=db) == [
        ("What, exactly?", "It is 4, surely.")]


def test_cli_ragged_csv_one_line(tmp_path):
    db = seeded_store(tmp_path)
    path = _ragged(tmp_path / "ragged.csv")
    out = cli(db, "ingest", str(path), "--format", "generic", "--map", "question=prompt,response=output")
    assert_one_clear_line(out, f"{path}, line 3, field 'sample': the row has 2 cells")


# =========================================================================== corrupt containers


def _corrupt_parquet(path: Path, *, compression: str, checksums: bool, where: str) -> tuple[Path, int, str]:
    """Two row groups of generic rows; 64 bytes of row group 1's 'output' column chunk
    overwritten (its data page's header, or inside its dictionary page), the footer left
    intact. Returns (path, row group, column)."""
    rows = generic_rows(400)
    for row in rows:
        row["output"] = f"<think>{row['output']} " + "reasoning " * 40 + "</think>"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=200, compression=compression,
                   write_page_checksum=checksums)
    column = pq.ParquetFile(path).metadata.row_group(1).column(1)
    assert column.path_in_schema == "output" and column.has_dictionary_page
    start = column.data_page_offset if where == "page header" else column.dictionary_page_offset + 40
    data = bytearray(path.read_bytes())
    data[start:start + 64] = bytes(range(64))
    path.write_bytes(bytes(data))
    return path, 1, "output"


# Without page checksums a flipped byte inside an uncompressed page can decode to other data
# unnoticed; these are the corruptions a reader can see.
CORRUPTIONS = {
    "zstd, data page header": ("zstd", False, "page header"),
    "snappy, compressed page": ("snappy", False, "dictionary page"),
    "uncompressed page with checksum": ("none", True, "dictionary page"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_parquet_corrupt_data_page_names_the_row_group(tmp_path, case):
    db = seeded_store(tmp_path)
    compression, checksums, where = CORRUPTIONS[case]
    path, group, column = _corrupt_parquet(tmp_path / "corrupt.parquet", compression=compression, checksums=checksums, where=where)
    opts = ReadOptions(mapping={"question": "prompt", "response": "output"})
    exc = rejected(db, path, fmt="generic", opts=opts)
    assert (exc.unit, exc.line, exc.field) == ("row group", group, column), str(exc)
    assert "rows 201-400" in exc.message and "corrupt" in exc.message
    assert str(exc).startswith(f"{path}, row group 1, field 'output': ")
    # not a row --skip-bad can pass over: the whole file is refused
    exc = rejected(db, path, fmt="generic", opts=opts, skip_bad=True)
    assert exc.unit == "row group"
    # and without --format, detection reads the file the same way
    out = cli(db, "ingest", str(path), "--map", "question=prompt,response=output")
    assert_one_clear_line(out, f"{path}, row group 1, field 'output': the data of rows 201-400 is corrupt")


def test_datasets_folder_with_a_corrupt_arrow_file(tmp_path):
    import datasets

    db = seeded_store(tmp_path)
    folder = tmp_path / "saved"
    datasets.Dataset.from_list([omni_row(i) for i in range(3)]).save_to_disk(str(folder))
    arrow = next(folder.glob("*.arrow"))
    arrow.write_bytes(b"not arrow at all" + arrow.read_bytes()[16:])
    exc = rejected(db, folder)
    assert exc.file == str(folder) and "not a readable datasets folder" in exc.message


@pytest.mark.parametrize(("body", "got"), [("42", "int 42"), ("null", "null"), ('"text"', "str 'text'"), ("true", "bool True"), ("3.5", "float 3.5")])
def test_json_file_whose_top_level_is_not_an_array(tmp_path, body, got):
    db = seeded_store(tmp_path)
    path = tmp_path / "scalar.json"
    path.write_text(body)
    exc = rejected(db, path, fmt="omnithought")
    assert (exc.file, exc.line, exc.field) == (str(path), None, None)
    assert f"expected an array of objects (or an object holding one) at the top level, got {got}" == exc.message
    out = cli(db, "ingest", str(path))
    assert_one_clear_line(out, f"{path}: expected an array of objects")


# =========================================================================== paths and hub ids


def test_missing_paths_are_no_such_file_and_never_hub_lookups(tmp_path):
    db = seeded_store(tmp_path)
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(loop)
    dangling = tmp_path / "dangling.jsonl"
    dangling.symlink_to(tmp_path / "gone.jsonl")
    a, b = tmp_path / "a", tmp_path / "b"
    a.symlink_to(b)
    b.symlink_to(a)
    for path, says in (
        (tmp_path / "missing.jsonl", "no such file or folder"),
        ("./nothing-here.parquet", "no such file or folder"),
        ("some/deeper/path", "no such file or folder"),
        ("owner/data.jsonl", "no such file or folder"),
        ("justaname", "no such file or folder (a Hugging Face hub id is written owner/name)"),
        (loop, "symbolic link that leads nowhere"),
        (dangling, "symbolic link that leads nowhere"),
        (a, "symbolic link that leads nowhere"),
    ):
        exc = rejected(db, path)
        assert (exc.file, exc.line) == (str(path), None)
        assert says in exc.message, exc.message
        assert "hub id" not in exc.message or "written owner/name" in exc.message
        exc = rejected(db, path, fmt="omnithought")  # --format given: the same
        assert says in exc.message


def test_bare_owner_name_is_tried_as_a_hub_id_and_says_so(tmp_path):
    assert source_kind("open-r1/OpenR1-Math-220k") == source_kind("Qwen/Qwen2.5-7B") == "hub"
    db = seeded_store(tmp_path)
    out = cli(db, "ingest", "nobody-here/no-such-dataset", env={"HF_HUB_OFFLINE": "1"})
    assert_one_clear_line(
        out, "nobody-here/no-such-dataset: not a file or folder on this machine, so it was tried as a Hugging Face hub id, and that failed: ")
    out = cli(db, "ingest", str(tmp_path / "loop"), env={"HF_HUB_OFFLINE": "1"})
    assert_one_clear_line(out, f"{tmp_path / 'loop'}: no such file or folder")


def test_cli_missing_file_and_symlink_loop_exit_2(tmp_path):
    db = seeded_store(tmp_path)
    loop = tmp_path / "loop.parquet"
    loop.symlink_to(loop)
    out = cli(db, "ingest", str(loop))
    assert_one_clear_line(out, f"{loop}: no such file: it is a symbolic link that leads nowhere")
    out = cli(db, "ingest", str(tmp_path / "nope.jsonl"), "--format", "omnithought")
    assert_one_clear_line(out, f"{tmp_path / 'nope.jsonl'}: no such file or folder")



def test_csv_with_a_byte_order_mark(tmp_path):
    db = tmp_path / "s.duckdb"
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffprompt,output\nQ?,A\n".encode("utf-8"))
    result = ingest(str(path), db=db, fmt="generic", opts=ReadOptions(mapping={"question": "prompt", "response": "output"}))
    assert result.cots == 1
