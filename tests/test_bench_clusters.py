"""The across-clusters Select benchmark runs end to end at a tiny size: every case keeps
exactly what the plain polars baseline keeps, and the JSON line has every figure. Timings are
not asserted (the machine is shared)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import bench_clusters
from core import selection

pytestmark = pytest.mark.spawns_processes

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_run_agrees_with_polars_and_reports_every_figure():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_clusters.py"), "--tiny", "--json"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["bench"] == "clusters" and len(result["cases"]) == 4
    for case in result["cases"]:
        assert case["agree"] and case["report_kept"] == case["kept"] > 0
        assert {"ours_kept_ids_s", "ours_report_s", "polars_s", "ratio_vs_polars"} <= set(case)
    kept = {c["case"]: c["kept"] for c in result["cases"]}
    assert kept["500 CoTs in proportion (random)"] == kept["500 CoTs evenly (random)"] == 500
    assert kept["one problem per cluster (most CoTs)"] <= 100 * 5  # 100 clusters, one problem (1-5 CoTs) each


def test_the_vectorised_uniform_is_the_samplers():
    ids = np.array([1, 2, (1 << 32) + 5, (7 << 32) + 123_456], dtype=np.int64)
    assert bench_clusters.uniform_np(3, ids).tolist() == [selection.uniform(3, int(i)) for i in ids]
