"""The load benchmark runs end to end at a tiny size (two browser sessions, three new filters
each, a writer committing scores meanwhile) and reports what it promises. Timings are not
asserted (the machine is shared)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.spawns_processes]

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.timeout(900)
def test_two_sessions_with_a_writer(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"the load test drives {CHROMIUM}")
    cmd = [sys.executable, str(ROOT / "bench" / "bench_load.py"), "--cots", "300", "--sessions", "2", "--steps", "3",
           "--writer", "--write-every", "2", "--write-batch", "50", "--json", "--workdir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=840)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    text = "\n".join(lines[:-1])
    assert result["bench"] == "load" and result["sessions"] == 2 and result["steps"] == 3
    assert 200 <= result["cots"] <= 400
    # every step ran: two sessions x three steps, each page once per session, no error
    assert result["errors"] == [] and result["server_tracebacks"] == 0, result["errors"]
    steps = result["steps_detail"]
    assert len(steps) == 6 and all(s["seconds"] > 0 for s in steps)
    assert {s["page"] for s in steps if s["session"] == 0} == {"explore", "distributions", "select"}
    assert len({json.dumps(s["params"], sort_keys=True) for s in steps}) == 6  # every filter new
    for page, figures in result["pages"].items():
        assert figures["n"] == 2 and figures["p95"] >= figures["p50"] > 0, page
    assert result["server_peak_rss_bytes"] >= result["server_idle_rss_bytes"] > 0
    assert result["rss_trace"] and max(rss for _, rss in result["rss_trace"]) <= result["server_peak_rss_bytes"]
    # where the CPU went: the server and chromium both worked; "CPU seconds" in the text
    assert result["cpu_s"]["server"] > 0 and result["cpu_s"]["chromium"] > 0 and "CPU seconds over the run" in text
    # the writer committed to the bench's own store, which now holds its scores
    assert result["writer_commits"] >= 1
    con = duckdb.connect(result["store"]["path"], read_only=True)
    try:
        written = con.execute("SELECT count(*) FROM scores JOIN score_sources USING (source_id) "
                              "WHERE name = 'bench-load' AND metric = 'load_probe'").fetchone()[0]
    finally:
        con.close()
    assert written >= 50
    assert "Server peak RSS" in text
    readme = text.split("README table:")[1].strip().splitlines()
    assert readme[0].startswith("| CoTs | sessions") and sum(line.startswith("| ") for line in readme[2:]) == 3
