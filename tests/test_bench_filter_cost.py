"""The new-filter cost benchmark runs at a tiny size and reports what it promises (its before
and after reads agree; timings are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.spawns_processes

ROOT = Path(__file__).resolve().parents[1]


def test_runs_and_output_parses(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_filter_cost.py"), "--cots", "300", "--repeats", "2",
                           "--json", "--workdir", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["bench"] == "filter_cost" and 200 <= result["cots"] <= 400 and result["rows"] == result["cots"]
    assert len(result["steps"]) == 10
    for name, step in result["steps"].items():
        once = name.startswith("base:")  # read once, then every new filter is cut from it
        assert step["n"] == (1 if once else 2) and step["wall_p50"] > 0 and step["cpu_p50"] >= 0, name
    assert set(result["ratios_cpu"]) == {"new filter after / before", "read after / before",
                                          "Select pool read after / before", "figures after / before"}
    fb = result["frame_bytes"]
    assert 0 < fb["dictionary-coded keys"] < fb["string keys"]
    assert "CPU ratios" in "\n".join(lines[:-1])
