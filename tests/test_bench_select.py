"""The Select benchmark runs end to end at a tiny size and reports what it promises.

Timings are not asserted (the machine is shared); the structure, the counts and the agreement
of the three methods on what each slider move keeps are.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import bench_select

pytestmark = pytest.mark.spawns_processes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory) -> tuple[dict, str, Path]:
    workdir = tmp_path_factory.mktemp("bench-select")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_select.py"), "--tiny", "--moves", "4", "--pandas-moves", "2",
         "--json", "--workdir", str(workdir)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1]), "\n".join(lines[:-1]), workdir


def test_json_line_has_every_figure_and_the_methods_agree(bench_run):
    result, _, _ = bench_run
    assert result["bench"] == "select" and result["moves"] == 4 and len(result["sizes"]) == 1
    size = result["sizes"][0]
    assert size["cots"] > 100 and size["ours"]["pool_cots"] == size["cots"]
    for method in ("ours", "duckdb", "pandas"):
        assert size[method]["peak_rss_bytes"] > 0 and size[method]["move"]["p50_ms"] > 0
    assert size["ours"]["move"]["moves"] == 4 and size["pandas"]["move"]["moves"] == 2
    assert size["ours"]["general"]["moves"] == bench_select.GENERAL_PATH_MOVES
    assert size["pandas"]["rows"] == size["cots"]
    # every move keeps the same CoTs, problems and per-model counts whichever way it is computed
    assert size["kept_match_duckdb"] is True and size["kept_match_pandas"] is True
    assert size["ratio_vs_duckdb"] > 0 and size["pandas_speedup"] > 0


def test_markdown_table_has_a_row_per_size(bench_run):
    result, text, _ = bench_run
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert table[0].startswith("| CoTs |") and len(table) == 2 + len(result["sizes"])
    assert f"| {result['sizes'][0]['cots']:,} |" in table[2]
    assert "Kept counts agree with bare DuckDB at every size: yes" in text


def test_slider_moves_are_reproducible_and_in_range():
    moves = bench_select.slider_moves(50, 1000, seed=3)
    assert moves == bench_select.slider_moves(50, 1000, seed=3) and moves != bench_select.slider_moves(50, 1000, seed=4)
    for move in moves:
        for key, top in (("rv_range", 9), ("cd_range", 9), ("tokens_range", 1000)):
            if move[key] is not None:
                assert 0 <= move[key][0] <= move[key][1] <= top
    assert any(m["rv_range"] is None for m in moves) and any(m["tokens_range"] for m in moves)


def test_subset_store_keeps_whole_problems(demo_store, tmp_path):
    import duckdb

    target = bench_select.subset_store(demo_store, tmp_path / "subset.duckdb", 500)
    assert 0 < bench_select.count_cots(target) <= 500
    with duckdb.connect(str(target), read_only=True) as con:
        con.execute(f"ATTACH '{demo_store}' AS src (READ_ONLY)")
        copied = "(SELECT problem_id FROM problems)"
        # every copied problem comes with all its CoTs, and every copied CoT with all its scores
        for table, where in (("cots", f"problem_id IN {copied}"),
                             ("scores", f"cot_id IN (SELECT cot_id FROM src.cots WHERE problem_id IN {copied})")):
            mine = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            theirs = con.execute(f"SELECT count(*) FROM src.{table} WHERE {where}").fetchone()[0]
            assert mine == theirs > 0, table
        # and they are the first problems of the source
        first = con.execute("SELECT max(problem_id) FROM problems").fetchone()[0]
        assert con.execute(f"SELECT count(DISTINCT problem_id) FROM src.problems WHERE problem_id <= {first}").fetchone()[0] \
            == con.execute("SELECT count(*) FROM problems").fetchone()[0]
