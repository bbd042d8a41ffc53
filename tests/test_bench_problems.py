"""The problem-stage benchmark runs end to end at a tiny N and prints its table and a JSON line
(timings are not checked: this keeps the script from rotting; the recall and baseline-agreement
figures it reports are)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import require_realdata

ROOT = Path(__file__).resolve().parents[1]


def test_bench_problems_runs_at_tiny_n(tmp_path):
    require_realdata()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_problems.py"), "--problems", "1500", "--planted", "40",
         "--groups", "20", "--baseline-sample", "60", "--pairs-sample", "200", "--workdir", str(tmp_path), "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "| " not in proc.stdout and "contamination stage" in proc.stdout and "all-pairs Jaccard" in proc.stdout
    assert result["ingest"]["problems"] == 1500
    assert result["contamination"]["checked_problems"] == 1500 and result["baseline"]["flags_equal_stage"]
    recall = result["recall"]
    # a copy behind a prompt wrapper is the benchmark problem itself: always found
    assert recall["contamination"]["wrapper"]["recall"] == 1.0
    assert sum(v["planted"] for v in recall["contamination"].values()) == 40
    assert recall["false_flags_generated"] == 0
    assert result["near-duplicates"]["sketched"] == 1500 + 1879
    assert recall["group_pairs_over_threshold"] > 0 and recall["group_recall"] >= 0.8
    assert result["brute-force"]["pairs"] == 200 * 199 // 2
