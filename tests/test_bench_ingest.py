"""The ingest benchmark runs end to end at a tiny size and reports what it promises.

Timings are not asserted (the machine is shared); the structure, the row counts and the
token counts are.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import ChildFailed, format_table, run_child

pytestmark = pytest.mark.spawns_processes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory) -> tuple[dict, str, Path]:
    workdir = tmp_path_factory.mktemp("bench-ingest")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_ingest.py"), "--cots", "300", "--text-scale", "0.02",
         "--json", "--workdir", str(workdir)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1]), "\n".join(lines[:-1]), workdir


def test_json_line_has_every_figure(bench_run):
    result, _, _ = bench_run
    assert {"corpus", "ingest", "tokens", "load_before", "load_after"} <= result.keys()
    assert result["cots_requested"] == 300 and result["text_scale"] == 0.02 and result["format"] == "jsonl"
    for key in ("ours", "duckdb_table", "duckdb_per_cot"):
        step = result["ingest"][key]
        for figure in ("seconds", "cots_per_s", "mb_per_s", "peak_rss_bytes"):
            assert step[figure] > 0, (key, figure)
    assert set(result["ingest"]["ours"]["stages"]) == {"hash", "read", "load"}
    assert result["ingest"]["ratio_vs_table"] > 0 and result["ingest"]["ratio_vs_per_cot"] > 0
    for key in ("ours", "bare"):
        step = result["tokens"][key]
        for figure in ("seconds", "tokens_per_s", "peak_rss_bytes"):
            assert step[figure] > 0, (key, figure)
    assert result["tokens"]["ratio"] > 0
    assert result["load_before"]["cpus"] >= 1


def test_ours_and_bare_read_the_same_rows(bench_run):
    result, _, _ = bench_run
    corpus, ingest = result["corpus"], result["ingest"]
    # The generator rounds the problem count, so "about 300" CoTs.
    assert 200 <= corpus["cots"] <= 400
    assert ingest["ours"]["cots"] == ingest["duckdb_per_cot"]["rows"] == corpus["cots"]
    assert ingest["ours"]["problems"] == ingest["duckdb_table"]["rows"] == corpus["problems"]
    assert ingest["ours"]["detected_format"] == "omnithought"
    assert 0 < corpus["full_text_bytes"] < corpus["stored_text_bytes"]
    # Our stage and the bare library counted the same texts to the same total.
    assert result["tokens"]["counts_match"] is True
    assert result["tokens"]["ours"]["cots"] == corpus["cots"]


def test_table_is_printed_and_workdir_keeps_the_corpus(bench_run):
    result, table, workdir = bench_run
    assert "bare DuckDB: unnest per CoT" in table and "ours: tokens stage" in table
    assert "load average" in table
    assert Path(result["corpus"]["path"]).parent == workdir and Path(result["corpus"]["path"]).exists()
    assert not (workdir / "ours.duckdb").exists()  # stores are removed, the corpus is kept


def test_several_sizes_make_one_curve_table(tmp_path):
    """Several --cots run one after another and end with one Markdown row per size."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_ingest.py"), "--cots", "150", "300", "--text-scale", "0.02",
         "--no-tokens", "--json", "--workdir", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["bench"] == "ingest-curve"
    assert [r["cots_requested"] for r in result["runs"]] == [150, 300]
    for run in result["runs"]:
        assert "tokens" not in run and run["ingest"]["cpu_ratio_vs_table"] > 0
        assert run["ingest"]["ours"]["cots"] == run["corpus"]["cots"]
    curve = [line for line in lines[:-1] if line.startswith("| ")]
    assert curve[0].startswith("| CoTs |") and len(curve) == 3  # header + one row per size
    assert [row.split("|")[1].strip() for row in curve[1:]] == [f"{r['corpus']['cots']:,}" for r in result["runs"]]


def _touch(size: int) -> bytearray:
    block = bytearray(size)
    block[::4096] = b"x" * len(block[::4096])  # make the pages resident
    return block


def test_run_child_reports_the_childs_own_peak_rss(tmp_path):
    allocate = "b = bytearray(300 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); print('{}')"
    big = run_child([sys.executable, "-c", allocate], logdir=tmp_path, name="big")
    assert big.max_rss_bytes > 300 * 1024 * 1024
    assert big.last_json() == {}
    assert big.cpu_seconds > 0
    # A large parent must not show up in a small child's peak (Linux keeps the high-water
    # mark across exec, so a plain subprocess would report the parent's 400 MB here).
    ballast = _touch(400 * 1024 * 1024)
    small = run_child([sys.executable, "-c", "print('{}')"], logdir=tmp_path, name="small")
    del ballast
    assert small.max_rss_bytes < 100 * 1024 * 1024
    with pytest.raises(ChildFailed, match="exited with 3"):
        run_child([sys.executable, "-c", "raise SystemExit(3)"], logdir=tmp_path, name="fails")


def test_format_table_aligns_numbers_right():
    text = format_table(["step", "seconds"], [["a", 1.5], ["longer step", 1234.0], ["none", None]])
    lines = text.splitlines()
    assert lines[0].startswith("step") and set(lines[1]) <= {"-", " "}
    assert lines[2].endswith(" 1.50") and lines[3].endswith("1,234") and lines[4].endswith("-")
    assert len({len(line) for line in lines[:4]}) == 1
