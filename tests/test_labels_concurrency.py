"""Many sessions labelling at once while pages read: no label lost, no read failed or saw the
labels go backwards, the latest label per key the same as plain Python over the raw log, and
the store never written.

Writers, each a process of its own: two Reader sessions (AppTest, as the app runs a page for a
browser) clicking RV labels as two people, and three scripted writers recording 60 labels each,
partly on the same CoT and field under one shared name (so the latest-wins rule is exercised
across processes). A fourth process holds a read-only connection to the store the whole time,
as a long console query or another server would: a DuckDB writer could not open the store
then, so the labels going through shows they never need to. Meanwhile threads of this process
read what the pages read (a count under a filter on a person's labels, the figure catalogue,
the labels of a few CoTs, the event count) in a loop.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core import figures, label_store, labels, queries, store
from core.figures import Condition, Figure
from core.queries import CotFilter

ROOT = Path(__file__).resolve().parents[1]
N_SCRIPTED, PER_WRITER, UI_CLICKS = 3, 60, 5

HOLDER = """
import sys, time, duckdb
from pathlib import Path
db, ready, stop = sys.argv[1:4]
con = duckdb.connect(db, read_only=True)
con.execute("SELECT count(*) FROM cots").fetchall()
Path(ready).write_text("holding")
while not Path(stop).exists():
    time.sleep(0.05)
con.execute("SELECT count(*) FROM scores").fetchall()  # still open, still reading
con.close()
"""

WRITER = """
import json, random, sys, time
from core import labels
db, who, seed, n, ids = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5])
rng = random.Random(seed)
done = []
for i in range(n):
    cot = rng.choice(ids)
    if i % 3 == 0:  # the shared name: the same few keys from every writer
        name, cot, value = "shared", ids[i % 4], rng.randrange(10)
        labels.record(cot, {"rv": value}, annotator=name, db=db)
    else:
        name, value = who, rng.randrange(10)
        labels.record(cot, {"rv": value, "tag:w": True}, annotator=name, db=db)
    done.append([name, cot, value])
    time.sleep(rng.random() * 0.05)
print(json.dumps(done))
"""

UI_SESSION = """
import json, os, sys
from pathlib import Path
from streamlit.testing.v1 import AppTest
from core import store
problem, clicks = int(sys.argv[1]), int(sys.argv[2])

def first_cot(problem_id):  # the Reader's first CoT of a problem (its focus when none is set)
    with store.labels_off():
        return store.read_rows("SELECT cot_id FROM cots WHERE problem_id = ? ORDER BY model, sample_idx, cot_id "
                               "LIMIT 1", [problem_id])[0][0]

at = AppTest.from_file(str(Path("app.py").resolve()), default_timeout=300).run()
at.session_state["reader_problem_id"] = problem
at.switch_page("pages/reader.py").run()
done = []
for i in range(clicks):
    assert not at.exception, [e.value for e in at.exception]
    focus = at.session_state["reader_cot_id"] if "reader_cot_id" in at.session_state else None
    focus = focus or first_cot(at.session_state["reader_problem_id"])
    key = f"label_v{(i + 3) % 10}"
    at.button(key=key).click().run()
    done.append([focus, (i + 3) % 10])
assert not at.exception, [e.value for e in at.exception]
print(json.dumps(done))
"""


def _env(db: Path, tmp: Path, **extra) -> dict:
    env = {**os.environ, "THOUGHTSCOPE_DB": str(db), "THOUGHTSCOPE_DATA": str(tmp / "data"), **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _raw_latest(path: Path) -> dict[tuple, tuple]:
    """The latest value per (annotator, cot_key, field), from the SQLite file by hand."""
    con = sqlite3.connect(str(path))
    rows = con.execute("SELECT annotator, cot_key, field, at, event_id, value FROM events").fetchall()
    con.close()
    latest: dict[tuple, tuple] = {}
    for annotator, key, field, at, event_id, value in rows:
        if (annotator, key, field) not in latest or (at, event_id) > latest[(annotator, key, field)][:2]:
            latest[(annotator, key, field)] = (at, event_id, value)
    return {k: v[2] for k, v in latest.items()}


@pytest.mark.spawns_processes
def test_sessions_labelling_at_once_lose_nothing_and_block_no_reader(demo_store, tmp_path):
    db = demo_store
    with store.labels_off():
        ids = [r[0] for r in store.read_rows("SELECT cot_id FROM cots ORDER BY cot_id LIMIT 40", db=db)]
        problems = [r[0] for r in store.read_rows("SELECT DISTINCT problem_id FROM cots ORDER BY 1 LIMIT 2", db=db)]
    before = (db.stat().st_mtime_ns, hashlib.sha256(db.read_bytes()).hexdigest())
    labels.record(ids[0], {"rv": 0}, annotator="shared", db=db)  # the log exists before the readers start

    ready, stop = tmp_path / "holding", tmp_path / "stop"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db), str(ready), str(stop)], cwd=ROOT)
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert holder.poll() is None and time.monotonic() < deadline, "the holder did not open the store"
        time.sleep(0.05)

    failures: list[str] = []
    seen_counts: list[list[int]] = [[] for _ in range(3)]
    running = threading.Event()
    running.set()
    person = CotFilter(conditions=(Condition(Figure("rv", "human: shared")),))

    def read_loop(i: int) -> None:
        while running.is_set():
            try:
                n = store.read_rows("SELECT count(*) FROM label_events", db=db)[0][0]
                seen_counts[i].append(n)
                if i == 0:
                    queries.count(person, db=db)
                elif i == 1:
                    figures.catalogue(db=db)
                else:
                    labels.labels_of(ids, db=db)
            except Exception as exc:  # any failed read fails the test
                failures.append(f"reader {i}: {type(exc).__name__}: {exc}")
                return

    readers = [threading.Thread(target=read_loop, args=(i,)) for i in range(3)]
    for t in readers:
        t.start()
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(db), f"w{i}", str(i), str(PER_WRITER), json.dumps(ids)],
                                cwd=ROOT, env=_env(db, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(N_SCRIPTED)]
    sessions = [subprocess.Popen([sys.executable, "-c", UI_SESSION, str(problems[i]), str(UI_CLICKS)], cwd=ROOT,
                                 env=_env(db, tmp_path, THOUGHTSCOPE_USER=f"ui{i}"), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
                for i in range(2)]
    outputs = []
    try:
        for proc in writers + sessions:
            out, err = proc.communicate(timeout=500)
            assert proc.returncode == 0, err[-3000:]
            outputs.append(json.loads(out.strip().splitlines()[-1]))
        assert holder.poll() is None  # the store was held read-only the whole time
    finally:
        running.clear()
        for t in readers:
            t.join(timeout=120)
        stop.write_text("stop")
        holder.wait(timeout=60)
    assert not failures, failures

    # no label lost: every intended label is an event, and the counts add up
    path = label_store.path_for(store.db_path(db))
    raw = sqlite3.connect(str(path))
    per_annotator = dict(raw.execute("SELECT annotator, count(*) FROM events GROUP BY 1").fetchall())
    raw.close()
    scripted, clicked = outputs[:N_SCRIPTED], outputs[N_SCRIPTED:]
    expected = {"shared": 1}
    for done in scripted:
        for name, _, _ in done:
            expected[name] = expected.get(name, 0) + (1 if name == "shared" else 2)  # rv and the tag
    for i, done in enumerate(clicked):
        expected[f"ui{i}"] = len(done)
    assert per_annotator == expected
    total = sum(expected.values())
    assert store.read_rows("SELECT count(*) FROM label_events", db=db)[0][0] == total
    # every reader saw the log grow and never shrink
    for counts in seen_counts:
        assert counts and counts == sorted(counts) and counts[-1] <= total
    # each Reader session's clicks are its labels: one per CoT it was on
    for i, done in enumerate(clicked):
        cots = [c for c, _ in done]
        got = {(r["cot_id"], int(r["value"])) for r in labels.labels_of(cots, db=db).iter_rows(named=True)
               if r["annotator"] == f"ui{i}"}
        assert got == {(c, v) for c, v in done} and len(set(cots)) == UI_CLICKS
    # the current labels are the latest per key, as plain Python finds it in the raw log
    latest = _raw_latest(path)
    keys = {k: c for c, k in ((c, v["cot_key"]) for c, v in labels.identities(ids, db=db).items())}
    current = {(r["annotator"], r["field"], r["cot_id"]): r for r in labels.labels_of(ids, db=db).iter_rows(named=True)}
    for (annotator, key, field), value in latest.items():
        if key not in keys:
            continue
        shown = current.get((annotator, field, keys[key]))
        decoded = json.loads(value)
        if decoded is None or decoded is False:  # cleared (a label of 0 is a label: 0 == False in Python)
            assert shown is None
        else:
            assert shown is not None and (shown["value"] == decoded if field == "rv" else shown["text"] == field[4:])
    assert queries.count(person, db=db)["cots"] == sum(
        1 for (a, k, f), v in latest.items() if a == "shared" and f == "rv" and json.loads(v) is not None)
    # and the store itself was never written
    assert (db.stat().st_mtime_ns, hashlib.sha256(db.read_bytes()).hexdigest()) == before
