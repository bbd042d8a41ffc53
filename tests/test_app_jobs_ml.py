"""The Jobs page's model forms through Streamlit's AppTest, with real workers: re-score two
CoTs of the current filter with a judge, fine-tune on an export file (the loss curve and the
model card appear), then evaluate the tuned model on a benchmark (its accuracy appears)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import export, jobs, render, store
from core.ingest import ingest
from core.queries import CotFilter
from helpers import build_tiny_llama

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 600


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-app-model"))


@pytest.fixture
def kill_workers_after():
    yield
    for job_id in jobs.list_jobs(limit=None)["id"].to_list():
        job = jobs.get(job_id)
        if job["state"] in ("queued", "running") and job["pid"] and jobs.worker_alive(job["pid"]):
            os.kill(job["pid"], signal.SIGKILL)


def _wait_done(job_id: int) -> dict:
    deadline = time.monotonic() + WAIT_S
    while (job := jobs.get(job_id))["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    assert job["state"] == "done", f"{job['error']}\n{job['log_tail']}"
    return job


def _submit(at: AppTest, label: str) -> tuple[AppTest, int]:
    at = next(b for b in at.button if b.label == label).click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    started = [s.value for s in at.success if s.value.startswith("Started job")]
    assert started, f"no job started by '{label}'"
    return at, int(started[0].split()[2].rstrip(":"))


@pytest.mark.spawns_processes
def test_score_finetune_and_evaluate_from_the_jobs_page(app_store, demo_store, tiny_model, tmp_path, kill_workers_after, capsys):
    app_store(demo_store)
    bench = tmp_path / "mini_gsm8k_test.jsonl"
    bench.write_text("".join(json.dumps({"question": f"What is {i} plus {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"}) + "\n"
                             for i in range(1, 4)))
    ingest(str(bench), fmt="benchmark", db=demo_store)
    # a TRL export of four CoTs: the fine-tune form lists it
    four = [r[0] for r in store.read_rows("SELECT problem_id FROM problems ORDER BY problem_id LIMIT 2", db=demo_store)]
    exported = export.export(CotFilter(problem_ids=tuple(four), datasets=("demo (generated)",)), "trl", db=demo_store)

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at = at.switch_page("pages/jobs.py").run()
    assert not at.exception, at.exception
    at.session_state["current_filter"] = CotFilter(datasets=("demo (generated)",))
    at = at.run()
    n_demo = store.read_rows("SELECT n_cots FROM datasets WHERE name = 'demo (generated)'", db=demo_store)[0][0]
    assert any(f"{n_demo:,} CoTs match" in c.value for c in at.caption)

    # 1. re-score the first two CoTs of the current filter with the tiny judge
    at.radio(key="jobs_score_which").set_value("current filter")
    at.number_input(key="jobs_score_max").set_value(2)
    at.multiselect(key="jobs_score_metrics").set_value(["rv", "logic"])
    at.text_input(key="jobs_score_model").input(str(tiny_model))
    at.number_input(key="jobs_score_tokens").set_value(4)
    at.number_input(key="jobs_score_clip").set_value(100)
    at, score_id = _submit(at, "Start re-scoring")
    assert jobs.get(score_id)["params"]["filter"]["datasets"] == ["demo (generated)"]
    assert jobs.get(score_id)["params"]["max_chars"] == 100

    # 2. fine-tune on the export file (runs beside the scoring)
    at.radio(key="jobs_ft_which").set_value("an export file")
    at.selectbox(key="jobs_ft_data").set_value(str(exported.path))
    at.text_input(key="jobs_ft_name").input("ui-tune")
    at.text_input(key="jobs_ft_base").input(str(tiny_model))
    at.number_input(key="jobs_ft_steps").set_value(2)
    at.selectbox(key="jobs_ft_overlong").set_value("truncate_thinking")
    at, tune_id = _submit(at, "Start fine-tune")
    assert jobs.get(tune_id)["params"]["overlong"] == "truncate_thinking" and "max_length" not in jobs.get(tune_id)["params"]

    score = _wait_done(score_id)
    source = f"judge:{tiny_model.name}:job{score_id}"
    assert score["result"]["source"] == source
    assert store.read_rows("SELECT count(*) FROM scores s JOIN score_sources ss USING (source_id) WHERE ss.name = ?",
                           [source], db=demo_store)[0][0] == 4  # 2 CoTs x (rv, logic)
    # the command line runs the same job: under the job's source name, with the same settings,
    # it finds every pair already scored and judges nothing again
    from core.cli import build_parser

    parser = build_parser()
    ids = [r[0] for r in store.read_rows("SELECT DISTINCT cot_id FROM scores JOIN score_sources USING (source_id) "
                                         "WHERE name = ? ORDER BY 1", [source], db=demo_store)]
    clipped = store.read_rows("SELECT count(*) FROM cots WHERE list_contains(?, cot_id) AND length(full_text) > 100",
                              [ids], db=demo_store)[0][0]
    assert score["result"]["clipped_cots"] == clipped
    args = parser.parse_args(["--db", str(demo_store), "score", "--cot-ids", ",".join(map(str, ids)), "--metrics", "rv,logic",
                              "--model", str(tiny_model), "--max-new-tokens", "4", "--source-name", source,
                              "--max-chars", "100"])
    assert args.func(args) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (again["already_done"], again["scored"], again["total"]) == (4, 0, 4)
    assert again["clipped_cots"] == clipped

    card = _wait_done(tune_id)["result"]
    assert card["steps"] == 2 and card["data"] == str(exported.path)
    assert card["lengths"]["overlong"] == "truncate_thinking" and card["loss"]["on"] == "assistant"

    at = at.run()
    assert not at.exception, at.exception
    heads = [m.value for m in at.markdown]
    assert any(f"Job {score_id} · score** — done" in h for h in heads)
    assert any(f"Job {tune_id} · finetune** — done" in h for h in heads)
    assert any(f"Score source '{render.escape_inline(source)}'" in c.value for c in at.caption)  # a name from the data
    assert {m.label: m.value for m in at.metric}["CoTs clipped"] == f"{clipped} of 2"
    charts = [c for c in at.get("plotly_chart") if c.proto.id and f"jobs_loss_{tune_id}" in c.proto.id]
    assert len(charts) == 1
    curve = json.loads(charts[0].proto.spec)["data"][0]
    assert curve["x"] == [1, 2] and len(curve["y"]) == 2
    assert {m.label: m.value for m in at.metric}["Steps"] == "2"
    assert any(f"Max length {card['lengths']['max_length']:,} tokens" in c.value and "Loss on the assistant turn only"
               in c.value for c in at.caption)

    # 3. evaluate the tuned model on the benchmark: the adapter is offered by its model name
    at.selectbox(key="jobs_eval_benchmark").set_value("mini_gsm8k_test")
    at.text_input(key="jobs_eval_model").input(str(tiny_model))
    at.selectbox(key="jobs_eval_adapter").set_value("ui-tune")
    at.number_input(key="jobs_eval_problems").set_value(2)
    at.number_input(key="jobs_eval_tokens").set_value(4)
    at, eval_id = _submit(at, "Start evaluation")
    result = _wait_done(eval_id)["result"]
    assert result["model"] == f"{tiny_model.name}+ui-tune" and result["problems"] == 2
    at = at.run()
    assert not at.exception, at.exception
    table = next(d.value for d in at.dataframe if "accuracy %" in d.value.columns)
    assert table[["job", "model", "problems"]].values.tolist() == [[eval_id, f"{tiny_model.name}+ui-tune", 2]]
    assert table["accuracy %"].tolist() == [result["accuracy"]]
    assert "Accuracy (math-verify)" in {m.label for m in at.metric}


def test_forms_explain_what_is_missing(app_store, demo_store):
    app_store(demo_store)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at = at.switch_page("pages/jobs.py").run()
    for label, says in (("Start fine-tune", "Give the model a name"), ("Start evaluation", "Choose a benchmark dataset")):
        at = next(b for b in at.button if b.label == label).click().run()
        assert not at.exception
        assert any(says in e.value for e in at.error), [e.value for e in at.error]
    at.radio(key="jobs_score_which").set_value("a saved recipe")
    at = next(b for b in at.button if b.label == "Start re-scoring").click().run()
    assert any("Choose a saved recipe" in e.value for e in at.error)
    assert jobs.list_jobs().height == 0


def test_forms_start_from_the_options_defaults(app_store, demo_store):
    """The forms read their defaults from the options dataclasses the CLI and the jobs use."""
    from core.evaluate import EvalOptions
    from core.finetune import FinetuneOptions
    from core.judge import JudgeOptions

    app_store(demo_store)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at = at.switch_page("pages/jobs.py").run()
    judge, tune, evaluation = JudgeOptions(), FinetuneOptions(name="x", data="x"), EvalOptions(benchmark="b")
    assert at.number_input(key="jobs_score_tokens").value == judge.max_new_tokens
    assert at.text_input(key="jobs_score_model").value == judge.model
    assert at.multiselect(key="jobs_score_metrics").value == list(judge.metrics)
    assert at.selectbox(key="jobs_score_backend").value == judge.backend
    assert at.number_input(key="jobs_score_clip").value == judge.max_chars == 12_000
    assert any("the first 6,000 and the last 6,000 are kept" in c.value for c in at.caption)
    assert at.number_input(key="jobs_ft_save").value == tune.save_steps
    # the learning rate and the max length are left empty: they are resolved from the method and the data
    assert at.number_input(key="jobs_ft_lr").value is None and tune.learning_rate == 2e-4
    assert at.number_input(key="jobs_ft_maxlen").value is None and tune.max_length is None
    assert at.selectbox(key="jobs_ft_method").value == tune.method == "lora"
    assert at.selectbox(key="jobs_ft_overlong").value == tune.overlong == "drop"
    assert at.selectbox(key="jobs_ft_loss").value == tune.loss_on == "assistant"
    assert at.selectbox(key="jobs_ft_rank").value == tune.lora_rank
    assert at.number_input(key="jobs_eval_problems").value == evaluation.problems
    assert at.number_input(key="jobs_eval_tokens").value == evaluation.max_new_tokens is None  # from the model's context
    assert at.text_input(key="jobs_tokens_tokenizer").value == "SmolLM2-135M-Instruct"  # the generated tokens form


def test_the_clip_is_set_on_the_score_form_and_counted_in_the_estimate(app_store, judge_store):
    from core import judge

    app_store(judge_store)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at = at.switch_page("pages/jobs.py").run()
    at.session_state["current_filter"] = CotFilter()
    at = at.run()
    at.number_input(key="jobs_score_clip").set_value(150)
    at = next(b for b in at.button if b.label == "Estimate the cost").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any(judge.clip_description(150) in c.value for c in at.caption)  # a form's values apply when it is sent
    cost = next(i.value for i in at.info if i.value.startswith("What this job will cost"))
    n_cots, longer = store.read_rows(
        "SELECT count(*), count(*) FILTER (WHERE length(full_text) > 150) FROM cots", db=judge_store)[0]
    assert 0 < longer < n_cots  # the judge store has CoTs on both sides of 150 characters
    assert f"responses clipped to 150 characters ({longer} of {n_cots} are longer)" in cost
    assert jobs.list_jobs().height == 0


@pytest.mark.spawns_processes
def test_the_score_form_says_what_a_job_will_cost_before_it_starts(app_store, judge_store, tiny_model):
    """Estimate: CoTs x metrics and the clip, counted here against plain SQL; Measure: one batch
    of the model timed in a separate process, after which the estimate gives a time."""
    from core import generation, judge
    from core.judge import JudgeOptions, ScoreTarget

    app_store(judge_store)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at = at.switch_page("pages/jobs.py").run()
    at.session_state["current_filter"] = CotFilter()
    at = at.run()
    at.multiselect(key="jobs_score_metrics").set_value(["rv", "logic"])
    at.text_input(key="jobs_score_model").input(str(tiny_model))
    at.number_input(key="jobs_score_tokens").set_value(16)
    at.number_input(key="jobs_score_batch").set_value(4)
    at = next(b for b in at.button if b.label == "Estimate the cost").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    cost = next(i.value for i in at.info if i.value.startswith("What this job will cost"))
    n_cots, longer = store.read_rows(
        "SELECT count(*), count(*) FILTER (WHERE length(full_text) > ?) FROM cots", [judge.DEFAULT_MAX_CHARS], db=judge_store)[0]
    assert f"{n_cots} CoTs x 2 metrics = {2 * n_cots} judge calls, in 3 batches of 4" in cost
    assert f"({longer} of {n_cots} are longer)" in cost and "not measured yet" in cost
    assert jobs.list_jobs().height == 0  # estimating starts nothing

    at = next(b for b in at.button if b.label == "Measure the speed here").click().run(timeout=300)
    assert not at.exception and not at.error, [e.value for e in at.error]
    cost = next(i.value for i in at.info if i.value.startswith("What this job will cost"))
    options = JudgeOptions(metrics=("rv", "logic"), model=str(tiny_model), max_new_tokens=16, batch_size=4)
    estimate = judge.estimate_cost(judge_store, ScoreTarget(max_cots=100), options)
    assert estimate.speed is not None and estimate.speed["batch_size"] == 4  # remembered on disk by the child
    assert estimate.seconds_at_most == pytest.approx(3 * (estimate.speed["prefill_s"] + 16 * estimate.speed["step_s"]))
    assert "at most about" in cost and "at the speed measured here" in cost
    # at the same speed, a job of twice an hour's batches needs "Start even if it is long"
    batches = int(2 * generation.LONG_RUN_S / generation.batch_seconds(estimate.speed, 16)) + 1
    long_job = generation.RunCost(what="many", answers=4 * batches, batches=batches, batch_size=4, max_new_tokens=16,
                                  prompt_chars=estimate.prompt_chars, speed=estimate.speed)
    with pytest.raises(generation.GenerationError, match="could run about .*Start even if it is long"):
        generation.check_cost(long_job)
    generation.check_cost(long_job, confirmed=True)
    generation.check_cost(estimate)  # 3 short batches: no second look needed
