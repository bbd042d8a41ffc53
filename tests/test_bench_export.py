"""The export benchmark runs end to end at a tiny size and reports what it promises.

Timings are not asserted (the machine is shared); the structure and the row counts are, and
ours and bare DuckDB must have exported the same rows.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.spawns_processes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory) -> tuple[dict, str]:
    workdir = tmp_path_factory.mktemp("bench-export")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_export.py"), "--cots", "300", "--json", "--workdir", str(workdir)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1]), "\n".join(lines[:-1])


def test_every_format_has_ours_and_bare_on_the_same_rows(bench_run):
    result, _ = bench_run
    assert result["bench"] == "export" and set(result["formats"]) == {"jsonl", "parquet", "trl"}
    assert 200 <= result["cots"] <= 400  # "about 300": the generator rounds the problem count
    for fmt, step in result["formats"].items():
        assert step["ours"]["rows"] == step["bare"]["rows"] == result["cots"], fmt
        for key in ("ours", "bare"):
            for figure in ("seconds", "cots_per_s", "mb_per_s", "bytes", "peak_rss_bytes"):
                assert step[key][figure] > 0, (fmt, key, figure)
        assert step["ratio"] > 0
    # JSONL and TRL lines are the same records as DuckDB's own COPY writes, byte for byte in size
    assert result["formats"]["trl"]["ours"]["bytes"] == result["formats"]["trl"]["bare"]["bytes"]
    assert result["load_before"]["cpus"] >= 1


def test_table_and_readme_snippet_are_printed(bench_run):
    result, text = bench_run
    assert "bare DuckDB COPY" in text and "ours: core.export" in text and "load average" in text
    readme = text.split("README table:")[1].strip().splitlines()
    assert readme[0].startswith("| CoTs | format |") and len(readme) == 2 + 2 * len(result["formats"])
