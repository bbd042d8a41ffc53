"""The problem stages as background jobs: the 'keys', 'contamination' and 'near_duplicates'
kinds run in a real worker process and leave the same figures as the core functions."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from core import jobs, store
from core.formats import ReadOptions
from core.ingest import ingest
from tests.helpers import REALDATA, finished, require_realdata, write_jsonl


@pytest.fixture
def db(tmp_path, monkeypatch) -> Path:
    require_realdata()
    path = tmp_path / "store.duckdb"
    monkeypatch.setenv("THOUGHTSCOPE_DB", str(path))
    ingest(str(REALDATA / "benchmarks" / "aime24_test.jsonl"), fmt="benchmark", db=path)
    aime = [json.loads(line)["problem"] for line in open(REALDATA / "benchmarks" / "aime24_test.jsonl")]
    rows = [{"q": q + "\nPut your final answer in \\boxed{}.", "r": "1"} for q in aime[:4]] + [
        {"q": "How many subsets does a set of ten elements have?", "r": "1024"}]
    ingest(str(write_jsonl(tmp_path / "teacher.jsonl", rows)), fmt="generic", name="teacher", db=path,
           opts=ReadOptions(mapping={"question": "q", "response": "r"}))
    yield path
    for job_id in jobs.list_jobs(limit=None)["id"].to_list():
        job = jobs.get(job_id)
        if job["state"] in ("queued", "running") and job["pid"] and jobs.worker_alive(job["pid"]):
            os.kill(job["pid"], signal.SIGKILL)


def test_contamination_and_near_duplicate_jobs(db):
    with store.connect(db, read_only=False) as con:  # as an old store: keys missing
        con.execute("DELETE FROM problem_keys")
    keys = finished(jobs.submit("keys", {}))
    assert keys["state"] == "done", keys["error"]
    assert store.read_rows("SELECT count(*) FROM problem_keys", db=db)[0][0] == 35

    job = finished(jobs.submit("contamination", {"n": 8}))
    assert job["state"] == "done", job["error"]
    assert job["result"]["benchmarks"] == ["aime24"] and job["result"]["checked_problems"] == 5
    flags = store.read_rows("SELECT p.question LIKE '%subsets%', ps.value FROM problem_scores ps JOIN problems p USING (problem_id) "
                            "WHERE ps.metric = 'contaminated' ORDER BY 1", db=db)
    assert flags == [(False, 1.0)] * 4 + [(True, 0.0)]

    job = finished(jobs.submit("near_duplicates", {"threshold": 0.6}))
    assert job["state"] == "done", job["error"]
    sizes = store.read_rows("SELECT value, count(*) FROM problem_scores WHERE metric = 'cluster_size' GROUP BY 1 ORDER BY 1", db=db)
    assert sizes == [(1.0, 35 - 8), (2.0, 8)]  # each teacher copy pairs with its AIME problem
