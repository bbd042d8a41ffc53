"""The page benchmark runs end to end at a tiny size (AppTest and the real browser) and
reports what it promises. Timings are not asserted (the machine is shared)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.spawns_processes

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory) -> tuple[dict, str]:
    workdir = tmp_path_factory.mktemp("bench-pages")
    cmd = [sys.executable, str(ROOT / "bench" / "bench_pages.py"), "--cots", "300", "--reruns", "2", "--json",
           "--workdir", str(workdir)]
    if not CHROMIUM.exists():
        cmd.append("--no-browser")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1]), "\n".join(lines[:-1])


def test_server_side_figures_for_every_page(bench_run):
    result, _ = bench_run
    assert result["bench"] == "pages" and set(result["server"]) == {"explore", "distributions", "select"}
    assert 200 <= result["cots"] <= 400
    for page, s in result["server"].items():
        assert s["first"] > 0 and s["new_session_warm"] > 0 and s["peak_rss_bytes"] > 0, page
        for kind in ("rerun", "page_widget", "new_filter", "empty_page_rerun"):
            assert s[kind]["n"] == 2 and s[kind]["p50"] > 0 and s[kind]["p95"] >= s[kind]["p50"], (page, kind)
        assert s["bare_duckdb"]["seconds"] > 0


def test_browser_figures_and_server_memory(bench_run):
    result, text = bench_run
    if not CHROMIUM.exists():
        pytest.skip(f"the browser half needs {CHROMIUM}")
    pages = result["browser"]["pages"]
    assert set(pages) == {"explore", "distributions", "select"}
    for page, figures in pages.items():
        assert figures["cold"] > 0 and figures["warm"] > 0 and figures["repeat_view"] > 0, page
    assert result["browser"]["server_peak_rss_bytes"] >= result["browser"]["server_idle_rss_bytes"] > 0
    assert "App server peak RSS" in text


def test_readme_snippet_is_printed(bench_run):
    _, text = bench_run
    readme = text.split("README table:")[1].strip().splitlines()
    assert readme[0].startswith("| CoTs | page |") and sum(line.startswith("| ") for line in readme[2:]) == 3
