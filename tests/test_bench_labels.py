"""The labels benchmark runs end to end at a tiny N and prints its tables and a JSON line
(timings are not checked: this only keeps the script from rotting). What it does check: no
page read failed in any phase, every label it wrote beside the store is an event, and the
labels went beside the copy, not beside the store it was given."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.spawns_processes
def test_bench_labels_runs_at_tiny_n(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_labels.py"), "--generate", "300", "--workdir", str(tmp_path),
         "--labels", "5", "--rounds", "2", "--gap-s", "0.01", "--hold-s", "0.5", "--repeats", "3", "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "labels beside the store (ours, SQLite log)" in proc.stdout and "FAILED READS" not in proc.stdout
    assert result["cots"] > 0
    for phase in ("alone", "into_store", "beside_store"):
        assert result[phase]["failures"] == [] and result[phase]["reads"]["n"] >= 1
    assert result["into_store"]["writes"]["n"] == result["beside_store"]["writes"]["n"] == 2 * 5  # two rounds
    assert result["label_events"] == 2 * 5 + 1  # both rounds' labels and the one written while the store was held
    assert result["read_merged"]["n"] == result["read_store_only"]["n"] == result["open_merged"]["n"] == 3
    # the labels went beside the copy, not beside the store it was given
    source = Path(result["store"])
    assert not (source.parent / (source.name + ".labels.sqlite")).exists()
    assert (tmp_path / "bench-labels-copy.duckdb.labels.sqlite").exists()
