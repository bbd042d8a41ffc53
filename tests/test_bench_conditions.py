"""The conditions benchmark runs end to end at a tiny size and reports every figure it promises.

No timing is asserted (the machine is shared); the structure and the figures' presence are.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from core import store

ROOT = Path(__file__).resolve().parents[1]


def test_the_bench_reports_each_query_with_and_without_a_condition(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_conditions.py"), "--tiny", "--repeats", "1", "--moves", "2",
         "--json", "--workdir", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    names = result["condition_names"]
    assert len(names) == 3 and result["cots"] > 100
    for kind in ("explore_new_filter", "distributions_frame", "select_pool_load_filter", "select_pool_load_condition"):
        assert set(result[kind]) == {"none", *names}
        assert result[kind]["none"]["ratio"] == 1.0 and all(v["p50_ms"] > 0 for v in result[kind].values())
    assert set(result["select_move"]) == {"none", "with a condition", "condition bounds changed (first report)"}
    assert result["own_correctness_reads"][-1] == "bench verifier (generated)"
    assert "| explore_new_filter |" in "\n".join(lines[:-1])
    # the figures were added to a copy, as a stage would: 80% of CoTs have a tail, every problem a pass rate
    db = Path(result["store"])
    tail, cots = store.read_rows(
        "SELECT (SELECT count(*) FROM scores JOIN score_sources USING (source_id) WHERE name = 'bench stage (generated)' "
        "AND metric = 'tail'), (SELECT count(*) FROM cots)", db=db)[0]
    assert 0.6 * cots < tail < 0.95 * cots
