"""The step-judge benchmark runs end to end at a tiny N on the tiny random model and prints its
table and a JSON line (timings are not checked: this only keeps the script from rotting)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(600)  # a child process that loads torch and a model: a minute alone, several under load
def test_bench_step_judge_runs_at_tiny_n(tmp_path, tiny_llama):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_step_judge.py"), "--model", str(tiny_llama), "--cots", "3",
         "--text-scale", "0.01", "--max-new-tokens", "4", "--batch-size", "2", "--workdir", str(tmp_path), "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "ours: judge_steps end to end" in proc.stdout
    assert result["cots"] == 3 and result["steps"] > 0
    # one first-error prompt per CoT plus at least one roles window per CoT
    assert result["prompts"] >= 2 * result["cots"]
    # both paths asked the same model the same prompts at temperature 0: the same tokens
    assert result["plain"]["generated_tokens"] == result["ours"]["generated_tokens"] > 0
    assert result["plain"]["cpu_seconds"] > 0 and result["ours"]["cpu_seconds"] > 0
