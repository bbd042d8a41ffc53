"""The Jobs page's step-judge form through Streamlit's AppTest: it estimates what a run costs
(prompts counted here from the stored steps), refuses what cannot run with a sentence, and
starts a real worker whose finished card names the new step source (`spawns_processes`)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import jobs, step_stats, store
from core.queries import CotFilter
from core.step_stage import StepOptions, run_steps

ROOT = Path(__file__).resolve().parents[1]


def _jobs_page(app_store, db) -> AppTest:
    app_store(db)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at = at.switch_page("pages/jobs.py").run()
    assert not at.exception, at.exception
    at.session_state["current_filter"] = CotFilter()
    return at.run()


def _press(at: AppTest, label: str, form: str = "jobs_step_judge_form") -> AppTest:
    button = next(b for b in at.button if b.label == label and b.proto.form_id == form)
    at = button.click().run()
    assert not at.exception, at.exception
    return at


def test_the_step_judge_form_estimates_and_refuses(app_store, judge_store):
    run_steps(judge_store, StepOptions(unit="sentence"))  # a step source to judge the steps of
    source = step_stats.step_sources(db=judge_store)["source"].to_list()[0]
    at = _jobs_page(app_store, judge_store)
    assert at.selectbox(key="jobs_sj_steps").options[-1] == source  # existing step sources are offered
    at.selectbox(key="jobs_sj_steps").set_value(source)
    at.number_input(key="jobs_sj_max").set_value(4)
    at = _press(at, "Estimate the cost")
    assert not at.error, [e.value for e in at.error]
    cost = next(i.value for i in at.info if i.value.startswith("What this job will cost"))
    # one first-error prompt per CoT plus one roles prompt per window of 30 steps (core.step_judge)
    per_cot = store.read_rows(
        "SELECT s.cot_id, count(*) FROM steps s JOIN score_sources ss USING (source_id) WHERE ss.name = ? "
        "GROUP BY 1 ORDER BY 1 LIMIT 4", [source], db=judge_store)
    prompts = 4 + sum(-(-n // 30) for _, n in per_cot)
    assert f"4 CoTs x first_error + roles = about {prompts} judge prompts" in cost, cost
    # a process reward model gives no roles: refused with a sentence, nothing queued
    at.selectbox(key="jobs_sj_backend").set_value("prm")
    at.text_input(key="jobs_sj_model").input("/models/Qwen2.5-Math-PRM-7B")
    at = _press(at, "Start the step judge")
    assert any("not its role" in e.value for e in at.error), [e.value for e in at.error]
    at.radio(key="jobs_sj_which").set_value("a saved recipe")
    at = _press(at, "Start the step judge")
    assert any("Choose a saved recipe" in e.value for e in at.error)
    assert jobs.list_jobs().height == 0


@pytest.mark.spawns_processes
def test_a_step_judge_started_from_the_page_writes_a_step_source(app_store, judge_store, tiny_llama):
    at = _jobs_page(app_store, judge_store)
    at.number_input(key="jobs_sj_max").set_value(2)
    at.multiselect(key="jobs_sj_tasks").set_value(["first_error"])
    at.text_input(key="jobs_sj_model").input(str(tiny_llama))
    at.number_input(key="jobs_sj_tokens").set_value(3)
    at = _press(at, "Start the step judge")
    assert not at.error, [e.value for e in at.error]
    started = next(s.value for s in at.success if s.value.startswith("Started job"))
    job_id = int(started.split()[2].rstrip(":"))
    deadline = time.monotonic() + 300
    while (job := jobs.get(job_id))["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
    assert job["state"] == "done", f"{job['error']}\n{job['log_tail']}"
    source = f"step judge:{tiny_llama.name}:job{job_id}"
    first_two = [r[0] for r in store.read_rows("SELECT cot_id FROM cots ORDER BY cot_id LIMIT 2", db=judge_store)]
    judged = store.read_rows("SELECT DISTINCT s.cot_id FROM steps s JOIN score_sources ss USING (source_id) "
                             "WHERE ss.name = ? ORDER BY 1", [source], db=judge_store)
    assert [r[0] for r in judged] == first_two and job["result"]["judged"] == 2
    at = at.run()
    assert not at.exception, at.exception
    assert any(f"Step source '{source}'" in c.value for c in at.caption)
    assert {m.label: m.value for m in at.metric}["CoTs judged"] == "2"
