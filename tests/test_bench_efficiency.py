"""The efficiency benchmark runs end to end at a tiny N and prints its table and a JSON line
(timings are not checked: this only keeps the script from rotting)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.spawns_processes
def test_bench_efficiency_runs_at_tiny_n(qwen_store, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_efficiency.py"), "--cots", "12", "--workers", "1",
         "--store", str(qwen_store), "--workdir", str(tmp_path), "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "ours in memory (analyse)" in proc.stdout and "OmniThought (2,000,000 CoTs)" in proc.stdout
    sample, memory = result["sample"], result["memory"]
    assert sample["cots"] == 12 and sample["agree"] == 12  # ours finds math-verify's own first match on every CoT
    # math-verify asked about every span is asked exactly the spans there are; stopping at the
    # first match asks no more; ours asks math-verify itself at most that often
    assert memory["math_verify_every_span"]["spans"] == sample["spans"] >= memory["math_verify_to_first"]["spans"]
    assert memory["ours"]["math_verify_calls"] <= memory["math_verify_to_first"]["spans"]
    # the end-to-end run on the sample's store computed each sampled CoT once, finding the same answers
    assert result["stage"]["cots"] == 12 and result["stage"]["found"] == sample["found"]
