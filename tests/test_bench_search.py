"""The search benchmark runs end to end at a tiny N and prints a table and a JSON line
(timings are not checked: this only keeps the script from rotting)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.spawns_processes

ROOT = Path(__file__).resolve().parents[1]


def test_bench_search_runs_at_tiny_n(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_search.py"), "--generate", "300", "--repeats", "1",
         "--workdir", str(tmp_path), "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert "| CoTs | query | index p50 | index p95 | index CPU p50 |" in proc.stdout
    [size] = result["sizes"]
    assert size["cots"] > 0 and size["build"]["text_bytes"] > 0 and size["build"]["index_bytes"] > 0
    assert set(size["queries"]) == {"index_search", "substring_search", "index_explore", "substring_explore"}
    assert all(set(q) == {"p50_s", "p95_s", "cpu_p50_s"} for q in size["queries"].values())
    by_label = {p["label"]: p for p in size["phrases"]}
    for p in size["phrases"]:
        # the Explore count through each path agrees with that path's own search
        assert p["hits"]["index_explore"] == p["hits"]["index"]
        assert p["hits"]["substring_explore"] == p["hits"]["substring"]
    assert by_label["no hit"]["hits"] == {"index": 0, "index_explore": 0, "substring": 0, "substring_explore": 0}
    assert by_label["common word"]["hits"]["index"] > 0
