"""The console benchmark runs end to end at a tiny N and prints its table and a JSON line
(timings are not checked: this only keeps the script from rotting)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_console_runs_at_tiny_n(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_console.py"), "--generate", "200", "--workdir", str(tmp_path),
         "--slow-s", "3", "--repeats", "3", "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "| " not in proc.stdout.splitlines()[0] and "page read while a 3 s console query runs" in proc.stdout
    assert result["cots"] > 0
    assert result["read_alone"]["n"] == 3 and result["read_during_console"]["n"] >= 1
    assert "ran too long" in result["console_query"]["ended"]
    assert result["console_round_trip"]["n"] == result["bare_query"]["n"] == 3
