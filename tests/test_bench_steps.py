"""The steps benchmark runs end to end at a tiny N and prints its tables and a JSON line
(timings are not checked: this only keeps the script from rotting)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import require_realdata

ROOT = Path(__file__).resolve().parents[1]


def test_bench_steps_runs_at_tiny_n(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_steps.py"), "--cots", "40", "--text-scale", "0.1",
         "--scales", "300", "--repeats", "1", "--workdir", str(tmp_path), "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "| ours: `split-steps` end to end |" in proc.stdout
    sample, stage = result["sample"], result["stage"]
    # the stage wrote as many steps as the in-memory pipeline counted, and the steps' token
    # counts add up to tokenizers' own count of the same texts
    assert stage["ours_stage"]["result"]["steps"] == sample["steps"] > sample["cots"] > 0
    assert sample["step_tokens"] == sample["tokens"] > 0
    [scale] = result["scales"]
    assert scale["cots"] >= 300 and scale["steps"] == scale["copies"] * sample["steps"]
    assert scale["steps_bytes"] > 0 and result["disk"]["bytes_per_step"] > 0
    assert set(scale["queries"]) == {"by_correctness", "by_model", "figures", "bare_scan"}
    assert scale["queries"]["figures"]["value"] == scale["cots"]  # one figure row per CoT


def test_eval_step_roles_reports_dev_and_held_out(tmp_path):
    require_realdata()
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "eval_step_roles.py"), "--json"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600, check=False,
                          env={**os.environ, "THOUGHTSCOPE_DATA": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    c = result["classification"]
    assert c["all"]["steps"] == c["dev"]["steps"] + c["held_out"]["steps"] == 2929
    assert c["dev"]["cots"] == c["held_out"]["cots"] == 10
    # accuracy over all steps is the step-weighted mean of the two halves
    weighted = (c["dev"]["accuracy"] * c["dev"]["steps"] + c["held_out"]["accuracy"] * c["held_out"]["steps"]) / 2929
    assert abs(c["all"]["accuracy"] - weighted) < 1e-9
    assert "| … the 5 held-out problems |" in proc.stdout
