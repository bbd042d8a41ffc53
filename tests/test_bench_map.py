"""The map benchmark runs end to end at a tiny size (embedding against sentence-transformers,
projection against umap-learn, and, where chromium is installed, first paint and a lasso in the
browser against a bare Streamlit + Plotly page) and reports what it promises. Timings are not
asserted (the machine is shared)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")

pytestmark = pytest.mark.slow


def test_bench_map_runs_at_tiny_n(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "bench_map.py"), "--generate", "80", "--embed-sample", "40",
           "--workdir", str(tmp_path), "--json"]
    if CHROMIUM.exists():
        cmd.append("--browser")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    embed, project = result["embed"], result["project"]
    assert embed["problems"] == 40 and embed["ours_per_s"] > 0 and embed["direct_per_s"] > 0
    assert embed["ratio"] == pytest.approx(embed["ours_per_s"] / embed["direct_per_s"])
    assert project["problems"] == result["store_problems"] == 80
    assert project["baseline_problems"] == 80 and project["direct_project_s"] > 0 and project["ratio_pca_umap"] > 0
    assert "ours: python -m core map" in proc.stdout and "PCA + umap-learn directly" in proc.stdout
    if CHROMIUM.exists():
        browser = result["browser"]
        assert browser["points"] == 80
        for name in ("bare", "ours"):
            assert browser[name]["first_paint_warm_s"] > 0 and browser[name]["lasso_round_trip_s"] > 0
            assert 0 < browser[name]["selected"] <= 80
