"""Background jobs: real worker processes on a real store, cancelled, killed and resumed."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core import jobs, store, worker
from core.demo import write_omnithought
from core.ingest import ingest
from helpers import finished, wait_for

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def db(tmp_path, monkeypatch) -> Path:
    """A fresh store for the test, seen by the workers through THOUGHTSCOPE_DB."""
    path = tmp_path / "store.duckdb"
    monkeypatch.setenv("THOUGHTSCOPE_DB", str(path))
    store.init_store(path)
    yield path
    # A failed assertion must not leave this test's workers running.
    for job_id in jobs.list_jobs(limit=None)["id"].to_list():
        job = jobs.get(job_id)
        if job["state"] in ("queued", "running") and job["pid"] and jobs.worker_alive(job["pid"]):
            os.kill(job["pid"], signal.SIGKILL)


@pytest.fixture(scope="module")
def big_file(tmp_path_factory) -> tuple[Path, dict]:
    """An OmniThought file whose ingest takes seconds: long enough to cancel or kill."""
    path = tmp_path_factory.mktemp("jobs-big") / "big.jsonl"
    info = write_omnithought(path, 6000, seed=3, text_scale=0.02)  # 2,000 finished before a cancel on an idle CI runner
    return path, info


def datasets(db: Path) -> list[tuple]:
    return store.read_rows("SELECT name, status, n_problems, n_cots FROM datasets ORDER BY dataset_id", db=db)


@pytest.mark.spawns_processes
def test_ingest_job_runs_in_a_worker_process(db, tmp_path):
    source = tmp_path / "omni.jsonl"
    info = write_omnithought(source, 60, text_scale=0.1)
    job_id = jobs.submit("ingest", {"source": str(source), "name": "omni"})
    job = finished(job_id)

    assert job["state"] == "done", job["log_tail"]
    assert job["pid"] != os.getpid()
    assert job["error"] is None and job["finished_at"] >= job["started_at"] >= job["created_at"]
    assert datasets(db) == [("omni", "ready", 60, info["cots"])]
    assert job["result"]["ingest"]["cots"] == info["cots"]
    # verify and tokens ran in the same job
    assert job["result"]["verify"]["cots"] == info["cots"]
    assert store.read_rows("SELECT count(*) FROM cots WHERE n_tokens IS NULL", db=db)[0][0] == 0
    assert "done in" in job["log_tail"]
    assert (store.data_dir() / "jobs" / f"{job_id}.log").exists()

    listed = jobs.list_jobs()
    assert listed.select("id", "kind", "state", "progress").row(0) == (job_id, "ingest", "done", 1.0)
    with pytest.raises(ValueError, match="already finished"):
        jobs.cancel(job_id)
    with pytest.raises(ValueError, match="only a failed, cancelled or interrupted job"):
        jobs.resume(job_id)
    with pytest.raises(ValueError, match="no job kind 'nope'"):
        jobs.submit("nope", {})


@pytest.mark.spawns_processes
def test_bad_input_fails_with_the_file_and_line(db, tmp_path):
    good = tmp_path / "good.jsonl"
    write_omnithought(good, 5, text_scale=0.01)
    lines = good.read_text().splitlines()
    lines[2] = lines[2][:40]  # a line cut off mid-JSON
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")

    job = finished(jobs.submit("ingest", {"source": str(bad)}))
    assert job["state"] == "failed"
    assert f"{bad}, line 3" in job["error"] and "broken JSON" in job["error"]
    assert job["error"].endswith("The store was not changed.")
    assert datasets(db) == []
    assert "Traceback" in job["log_tail"]  # the details stay in the log


@pytest.mark.spawns_processes
def test_cancel_stops_an_ingest_and_leaves_nothing_behind(db, big_file):
    source, _ = big_file
    job_id = jobs.submit("ingest", {"source": str(source), "verify": False, "tokens": False})
    wait_for(job_id, lambda j: j["state"] == "running" and j["stage"] == "read", "the read stage")
    jobs.cancel(job_id)
    job = finished(job_id)

    assert job["state"] == "cancelled", job["log_tail"]
    assert job["cancel_requested"]
    # not even an invisible 'loading' row or a stray CoT is left
    assert datasets(db) == []
    assert store.read_rows("SELECT (SELECT count(*) FROM problems) + (SELECT count(*) FROM cots)", db=db)[0][0] == 0


@pytest.mark.spawns_processes
def test_killed_ingest_is_interrupted_and_resumes_once(db, big_file):
    source, info = big_file
    job_id = jobs.submit("ingest", {"source": str(source), "name": "big", "verify": False, "tokens": False})
    running = wait_for(job_id, lambda j: j["stage"] == "read" and (j["done"] or 0) >= 400, "the middle of the read stage")
    os.kill(running["pid"], signal.SIGKILL)
    interrupted = wait_for(job_id, lambda j: j["state"] == "interrupted", "interrupted")
    assert interrupted["finished_at"] is None
    # the half-done ingest is invisible: no ready dataset
    assert [row for row in datasets(db) if row[1] == "ready"] == []

    jobs.resume(job_id)
    job = finished(job_id)
    assert job["state"] == "done", job["log_tail"]
    assert job["attempts"] == 2
    # the abandoned 'loading' dataset was removed, and the data is there exactly once
    assert datasets(db) == [("big", "ready", info["problems"], info["cots"])]
    assert store.read_rows("SELECT count(*), count(DISTINCT cot_id) FROM cots", db=db)[0] == (info["cots"], info["cots"])
    assert store.read_rows("SELECT count(*) FROM problems", db=db)[0][0] == info["problems"]


@pytest.mark.spawns_processes
def test_killed_token_count_resumes_without_counting_twice(db, tmp_path):
    source = tmp_path / "mid.jsonl"
    info = write_omnithought(source, 300, seed=5, text_scale=0.01)
    ingest(str(source), name="mid", db=db)  # no token stage: that is the job's work
    job_id = jobs.submit("tokens", {"batch_cots": 128})
    running = wait_for(
        job_id, lambda j: j["stage"] == "tokens" and 128 <= (j["done"] or 0) < j["total"] - 640, "a third of the count"
    )
    os.kill(running["pid"], signal.SIGKILL)
    wait_for(job_id, lambda j: j["state"] == "interrupted", "interrupted")
    counted_before = dict(store.read_rows("SELECT cot_id, n_tokens FROM cots WHERE n_tokens IS NOT NULL", db=db))
    assert 128 <= len(counted_before) < info["cots"]

    job = jobs.resume(job_id)
    job = finished(job_id)
    assert job["state"] == "done", job["log_tail"]
    # the resumed run counted only what was left, and kept what was counted
    assert job["result"]["cots"] == info["cots"] - len(counted_before)
    after = dict(store.read_rows("SELECT cot_id, n_tokens FROM cots", db=db))
    assert None not in after.values()
    assert {cot_id: after[cot_id] for cot_id in counted_before} == counted_before
    # and the counts are right: the tokenizer itself agrees on a sample
    from core.tokens import DEFAULT_TOKENIZER, load_tokenizer

    tok = load_tokenizer(DEFAULT_TOKENIZER)
    sample = store.read_rows("SELECT full_text, n_tokens FROM cots ORDER BY cot_id DESC LIMIT 5", db=db)
    assert [len(tok.encode(text, add_special_tokens=False).ids) for text, _ in sample] == [n for _, n in sample]


@pytest.mark.spawns_processes
def test_cancel_of_a_dead_job_marks_it_cancelled(db, big_file):
    source, _ = big_file
    job_id = jobs.submit("ingest", {"source": str(source), "verify": False, "tokens": False})
    running = wait_for(job_id, lambda j: j["stage"] == "read", "the read stage")
    os.kill(running["pid"], signal.SIGKILL)
    wait_for(job_id, lambda j: j["state"] == "interrupted", "interrupted")
    job = jobs.cancel(job_id)
    assert job["state"] == "cancelled"
    assert datasets(db) == []  # the dead worker's 'loading' dataset went with it


# --------------------------------------------------------------------------- in-process


def _queue(kind: str, params: dict | None = None) -> int:
    """A queued job with no worker, for run_job to run in this process."""
    with jobs.connect(write=True) as con:
        return con.execute(
            "INSERT INTO jobs (kind, params, store, state, created_at) VALUES (?, ?, ?, 'queued', ?)",
            [kind, json.dumps(params or {}), str(store.db_path()), time.time()],
        ).lastrowid


def test_progress_throughput_eta_and_result(db, monkeypatch, capsys):
    seen = []

    def counting(params, ctx):
        for done in range(0, params["n"] + 1, 10):
            ctx.progress("count", done, params["n"])
            time.sleep(0.01)
            seen.append(ctx.cancelled())
        ctx.log("counted")
        return {"n": params["n"], "db": str(ctx.db)}

    monkeypatch.setitem(worker.JOB_KINDS, "count", counting)
    job_id = _queue("count", {"n": 200})
    assert worker.run_job(job_id) == "done"
    job = jobs.get(job_id)
    assert job["state"] == "done" and job["result"] == {"n": 200, "db": str(db)}
    assert (job["stage"], job["done"], job["total"]) == ("count", 200, 200)
    assert 100 < job["throughput"] < 2000  # ~10 units per 10 ms
    assert not any(seen)
    assert "counted" in capsys.readouterr().out  # ctx.log writes the job's log (stdout)
    assert job["message"].startswith("done in")
    assert jobs.progress_text(job).startswith("count: 200 / 200")
    assert worker.run_job(job_id) == "done"  # a second worker finds nothing to do


def test_progress_raises_once_cancelled_even_past_except_exception(db, monkeypatch):
    def stubborn(params, ctx):
        with jobs.connect(write=True) as con:
            con.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", [params["id"]])
        for done in range(10_000):
            try:
                ctx.progress("spin", done, 10_000)
            except Exception:  # a job's own handler must not swallow the cancel
                pass
            time.sleep(0.005)
        return {}

    monkeypatch.setitem(worker.JOB_KINDS, "spin", stubborn)
    job_id = _queue("spin")
    with jobs.connect(write=True) as con:
        con.execute("UPDATE jobs SET params = ? WHERE id = ?", [json.dumps({"id": job_id}), job_id])
    started = time.monotonic()
    assert worker.run_job(job_id) == "cancelled"
    assert time.monotonic() - started < 10
    job = jobs.get(job_id)
    assert job["state"] == "cancelled" and job["done"] < 9_999


def test_a_worker_given_up_for_dead_stops_and_writes_nothing(db, monkeypatch):
    """If a slow worker was taken for dead and the job resumed, the old one must neither go
    on working nor overwrite the new run's state."""
    def overtaken(params, ctx):
        with jobs.connect(write=True) as con:  # what resume() + a new worker's claim leave behind
            con.execute("UPDATE jobs SET pid = ?, message = 'new worker' WHERE id = ?", [ctx.pid + 1_000_000, ctx.job_id])
        for done in range(10_000):
            ctx.progress("spin", done, 10_000)
            time.sleep(0.005)
        return {}

    monkeypatch.setitem(worker.JOB_KINDS, "overtaken", overtaken)
    job_id = _queue("overtaken")
    assert worker.run_job(job_id) == "superseded"
    with jobs.connect() as con:
        stored = con.execute("SELECT state, message, result, finished_at FROM jobs WHERE id = ?", [job_id]).fetchone()
    assert tuple(stored) == ("running", "new worker", None, None)


def test_a_failing_job_stores_a_sentence(db, monkeypatch):
    def broken(params, ctx):
        raise RuntimeError("the tokenizer 'x' could not be loaded")

    monkeypatch.setitem(worker.JOB_KINDS, "broken", broken)
    job_id = _queue("broken")
    assert worker.run_job(job_id) == "failed"
    assert jobs.get(job_id)["error"] == "the tokenizer 'x' could not be loaded."


def test_worker_main_and_the_jobs_command(db, monkeypatch):
    from core.cli import main

    monkeypatch.setitem(worker.JOB_KINDS, "noop", lambda params, ctx: {"ok": True})
    job_id = _queue("noop")
    assert worker.main(["--job", str(job_id)]) == 0
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["jobs", "--json"]) == 0
    listed = json.loads(out.getvalue())
    assert [(j["id"], j["kind"], j["state"], j["result"]) for j in listed] == [(job_id, "noop", "done", {"ok": True})]


@pytest.mark.spawns_processes
def test_the_app_side_imports_nothing_heavy():
    """The Streamlit server imports core.jobs and core.sqlconsole; neither may pull in a
    model library (the job functions import theirs only inside the worker)."""
    code = (
        "import sys, core.jobs, core.worker, core.sqlconsole, core.tokens\n"
        "heavy = [m for m in ('torch', 'vllm', 'trl', 'transformers') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- a real judge job

LONG_ANSWER_TEMPLATE = """metric: essay
min: 0
max: 9
prompt: |
  Write a long and detailed essay, at least 800 words, about the problem and the answer below.
  Go through every step again in your own words. Do not stop early.
  Problem: {question}
  Answer: {response}
"""


@pytest.mark.slow
@pytest.mark.spawns_processes
def test_a_smollm2_score_job_cancelled_mid_batch_stops_there_and_keeps_committed_scores(judge_store, tmp_path, monkeypatch):
    """Issue 9 and 11 on the real offline judge in a real worker: the count the job shows is
    always in the store already; a cancel while a batch generates stops that generation at
    its next token, keeps the batches committed before it, and a resume finishes the rest."""
    from core.models import DEFAULT_MODEL, resolve_model
    from helpers import cot_ids, source_scores

    resolve_model(DEFAULT_MODEL)  # the plain folder, made once here, not by the worker
    monkeypatch.setenv("THOUGHTSCOPE_DB", str(judge_store))
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "essay.yaml").write_text(LONG_ANSWER_TEMPLATE)
    # long enough that the second batch is still generating when the cancel lands, on a fast
    # idle machine too (at 128 a CI runner finished the batch between the poll and the cancel)
    max_new = 192
    job_id = jobs.submit("score", {"cot_ids": cot_ids(judge_store)[:3], "metrics": ["essay"], "template_dir": str(templates),
                                   "batch_size": 1, "max_new_tokens": max_new})
    source = f"judge:{DEFAULT_MODEL}:job{job_id}"
    shown = []

    def second_batch_generating(job) -> bool:
        if job["done"] is not None:
            # what the job shows is committed: the store never holds fewer pairs than it says
            committed = len(source_scores(judge_store, source)) if job["done"] else 0
            shown.append((job["done"], committed))
            assert committed >= job["done"], (job, committed)
        generated = re.match(r"batch 2 of 3: ([\d,]+) tokens generated", job["activity"] or "")
        return (job["done"] or 0) >= 1 and bool(generated) and int(generated.group(1).replace(",", "")) < max_new // 2

    job = wait_for(job_id, second_batch_generating, "its second batch generating", timeout=600)
    assert "tokens generated" in job["activity"] and " left" in jobs.progress_text(job)
    asked = time.monotonic()
    jobs.cancel(job_id)
    job = wait_for(job_id, lambda j: j["state"] == "cancelled", "the cancel", timeout=300)
    print(f"\ncancel asked -> job cancelled in {time.monotonic() - asked:.1f} s; counts shown {sorted(set(shown))}")
    stopped = re.search(r"generation stopped at decoding step (\d+) of at most (\d+)", jobs.log_path(job_id).read_text())
    assert stopped and int(stopped.group(1)) < max_new, "the batch in flight ran to its end instead of stopping"
    rows = source_scores(judge_store, source)
    # the batches committed before the cancel (the first; the second too when the model ended it
    # by itself before the cancel landed), nothing of the batch that was stopped
    assert len(rows) == job["done"] and 1 <= job["done"] < 3

    rows_before = rows
    jobs.resume(job_id)
    job = wait_for(job_id, lambda j: j["state"] == "done", "the resumed job's end", timeout=900)
    rows = source_scores(judge_store, source)
    assert len(rows) == 3 and len({r[:2] for r in rows}) == 3 and set(rows_before) <= set(rows)
    assert (job["result"]["already_done"], job["result"]["scored"]) == (len(rows_before), 3 - len(rows_before))


@pytest.mark.spawns_processes
def test_a_killed_score_job_shows_only_committed_pairs_and_resumes_from_them(judge_store, tiny_llama, monkeypatch):
    """Issue 9: the judge job's count was ahead of its commits (1 of 4 shown, 4 of 4 still to do
    after a kill). Every count the job shows must already be in the store, and after a SIGKILL
    the resumed job starts from exactly what was committed."""
    from helpers import cot_ids, source_scores

    monkeypatch.setenv("THOUGHTSCOPE_DB", str(judge_store))
    ids = cot_ids(judge_store)
    job_id = jobs.submit("score", {"cot_ids": ids, "metrics": ["rv", "logic"], "model": str(tiny_llama), "batch_size": 1,
                                   "max_new_tokens": 48})
    source = f"judge:{tiny_llama.name}:job{job_id}"

    def committed() -> int:
        return len(source_scores(judge_store, source)) if store.read_rows(
            "SELECT 1 FROM score_sources WHERE name = ?", [source], db=judge_store) else 0

    def shown_is_committed_and_two_done(job) -> bool:
        if job["done"]:
            assert committed() >= job["done"], f"the job shows {job['done']} pairs, the store holds {committed()}"
        return (job["done"] or 0) >= 2

    job = wait_for(job_id, shown_is_committed_and_two_done, "two committed pairs")
    os.kill(job["pid"], signal.SIGKILL)
    job = wait_for(job_id, lambda j: j["state"] == "interrupted", "the kill to be noticed", timeout=120)
    at_kill = committed()
    assert at_kill >= job["done"] >= 2
    jobs.resume(job_id)
    job = wait_for(job_id, lambda j: j["state"] == "done", "the resumed job's end")
    assert (job["result"]["already_done"], job["result"]["scored"], job["result"]["total"]) == (at_kill, 12 - at_kill, 12)
    rows = source_scores(judge_store, source)
    assert len(rows) == 12 and len({r[:2] for r in rows}) == 12
