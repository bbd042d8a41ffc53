"""Readers and an ingest in separate processes share one store file.

DuckDB lets one process hold a file read-write and locks every other process out, readers
included, so the store only works if the ingest writes in short transactions and readers
retry (core/store.py). This test runs a real ingest (load + token stage) in one process and
a reader loop in another, against the same file, and checks that no read fails and that a
reader never sees part of a dataset.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from core import store
from core.demo import write_omnithought

from helpers import REPO

pytestmark = pytest.mark.spawns_processes

N_PROBLEMS = 8700  # ~59k CoTs: one load transaction (a row group holds 122,880), ~8 token batches
TEXT_SCALE = float(os.environ.get("THOUGHTSCOPE_TEST_TEXT_SCALE", "0.02"))
MIN_READS_DURING_INGEST = 20
INGEST_TIMEOUT_S = int(os.environ.get("THOUGHTSCOPE_TEST_INGEST_TIMEOUT", "540"))

READER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from core import store

    db, stop, out, ready = sys.argv[1:5]
    sql = ("SELECT count(*) FROM cots c JOIN datasets d USING (dataset_id) "
           "WHERE d.status = 'ready'")
    log = []
    while not Path(stop).exists():
        t0 = time.time()
        try:
            n = store.read_rows(sql, db=db)[0][0]
            log.append([t0, time.time(), n, None])
        except Exception as exc:  # every failure is recorded, none stops the loop
            log.append([t0, time.time(), None, f"{type(exc).__name__}: {exc}"])
        if len(log) == 1:
            Path(ready).touch()
    Path(out).write_text(json.dumps(log))
""")


def test_reader_during_ingest(tmp_path):
    src = tmp_path / "omni_concurrency.parquet"
    info = write_omnithought(src, N_PROBLEMS, seed=11, text_scale=TEXT_SCALE)
    total = info["cots"]
    assert 50_000 < total < 70_000

    db = tmp_path / "store.duckdb"
    store.init_store(db)  # the reader must find a store, not create one
    stop, out, ready = tmp_path / "stop", tmp_path / "reads.json", tmp_path / "ready"

    reader = subprocess.Popen([sys.executable, "-c", READER, str(db), str(stop), str(out), str(ready)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not ready.exists():
            assert reader.poll() is None, reader.communicate()
            assert time.time() < deadline, "the reader never completed a first read"
            time.sleep(0.05)

        started = time.time()
        ingest = subprocess.Popen(
            [sys.executable, "-m", "core", "--db", str(db), "ingest", str(src), "--no-verify"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            i_out, i_err = ingest.communicate(timeout=INGEST_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            ingest.kill()
            i_out, i_err = ingest.communicate()
            progress = i_err.replace("\r", "\n").strip().splitlines()[-3:]
            raise AssertionError(f"the ingest did not finish in {INGEST_TIMEOUT_S} s; last progress: {progress}") from None
        ended = time.time()
    finally:
        stop.touch()
        r_out, r_err = reader.communicate(timeout=120)
    assert reader.returncode == 0, r_err
    assert ingest.returncode == 0, f"ingest failed (rc {ingest.returncode}):\n{i_err[-3000:]}"
    assert f"{N_PROBLEMS} problems, {total} CoTs." in i_out

    log = json.loads(out.read_text())
    failed = [entry for entry in log if entry[3] is not None]
    assert failed == [], f"{len(failed)} of {len(log)} reads failed, first: {failed[:3]}"

    during = [entry for entry in log if entry[0] >= started and entry[1] <= ended]
    seen = sorted({entry[2] for entry in log})
    seen_during = sorted({entry[2] for entry in during})
    slowest = max(entry[1] - entry[0] for entry in log)
    report = (f"{len(log)} reads, {len(during)} while the ingest ran ({ended - started:.1f} s); "
              f"counts seen {seen}; slowest read {slowest:.2f} s")
    print(report)
    assert len(during) > MIN_READS_DURING_INGEST, report
    assert set(seen) <= {0, total}, f"a reader saw part of a dataset: {report}"
    # reads interleaved with both the invisible load and the token stage after the flip
    assert seen_during == [0, total], report

    # the store is complete once the ingest returns
    assert store.read_rows(
        "SELECT count(*), count(c.n_tokens) FROM cots c JOIN datasets d USING (dataset_id) WHERE d.status = 'ready'",
        db=db) == [(total, total)]
    assert store.read_rows("SELECT n_problems, n_cots, status FROM datasets", db=db) == [(N_PROBLEMS, total, "ready")]
