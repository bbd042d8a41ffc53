"""The issue's end-to-end run, on CPU with the real SmolLM2-135M-Instruct: select 20 CoTs with a
saved recipe, export them as TRL messages, fine-tune 3 LoRA steps (max length from the data, loss
on the assistant turn), evaluate the base and the tuned model on 20 GSM8K problems, and compare
the two in the store, on the Distributions page and on the Compare page (accuracy with its
interval, the flipped problems, both CoTs opened in the Reader).

Each stage's wall time is printed (run with -s to see it)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import polars as pl
import pytest
from streamlit.testing.v1 import AppTest

from core import compare, export, queries, recipes, store
from core.evaluate import EvalOptions, evaluate
from core.finetune import FinetuneOptions, finetune
from core.models import DEFAULT_MODEL
from core.queries import CotFilter
from core.selection import Selection, TargetSize, default_score_sources
from core.summary import summary
from core.verify import SOURCE as VERIFY_SOURCE
from helpers import GSM8K, open_tab

ROOT = Path(__file__).resolve().parents[1]
PROBLEMS = 10
MAX_NEW_TOKENS = 64


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on the shared 2-core test machine, whose load runs far above its
    core count, two OpenMP threads wait on each other whenever one is descheduled (8 prompts x
    16 tokens took 24-41 s with two threads, 5-6 s with one)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.timeout(2400)  # over the slow marker's 900 s: the base evaluation alone ran past it at a load average of 20
def test_select_finetune_evaluate_and_compare(demo_store, app_store, monkeypatch, one_torch_thread):
    if not GSM8K.exists():
        pytest.skip(f"real data not found at {GSM8K}")
    monkeypatch.setenv("THOUGHTSCOPE_DB", str(demo_store))
    timings: dict[str, float] = {}
    started = last = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal last
        now = time.perf_counter()
        timings[stage] = round(now - last, 1)
        last = now

    # select 20 CoTs: the shortest correct ones, balanced over the teachers, as a saved recipe
    recipe = recipes.Recipe("e2e-20", Selection(rule=TargetSize(n=20, within="shortest_correct"),
                                                sources=default_score_sources(db=demo_store)))
    recipes.save(recipe)
    assert recipes.apply(recipes.load("e2e-20"), db=demo_store).len() == 20
    exported = export.export(recipes.load("e2e-20"), "trl", thinking="think_tags", db=demo_store)
    assert exported.rows == 20
    lap("select + export")

    card = finetune(FinetuneOptions(data=str(exported.path), name="e2e-tuned", max_steps=3, save_steps=10,
                                    recipe="e2e-20"), log=lambda _: None)
    assert card["steps"] == 3 and len(card["losses"]) == 3 and card["recipe"] == "e2e-20"
    assert card["export_manifest"]["counts"]["rows"] == 20
    # the max length is the 95th percentile of the 20 examples' SmolLM2 token lengths; one is longer and dropped
    lengths = card["lengths"]
    assert lengths["examples"] == 20 and lengths["max_length"] == math.ceil(lengths["tokens"]["p95"])
    assert card["examples"] == 20 - lengths["dropped"] and lengths["dropped"] == lengths["over_max_length"] <= 1
    assert 0 < card["loss"]["loss_tokens"] < card["loss"]["tokens"]
    lap("fine-tune 3 steps")

    results = {}
    for label, adapter in (("base", None), ("tuned", card["adapter"])):
        results[label] = evaluate(EvalOptions(benchmark=str(GSM8K), adapter=adapter, problems=PROBLEMS, k=1,
                                              max_new_tokens=MAX_NEW_TOKENS, batch_size=10), db=demo_store, log=lambda _: None)
        lap(f"evaluate {label}")
    base_model, tuned_model = DEFAULT_MODEL, f"{DEFAULT_MODEL}+e2e-tuned"
    assert (results["base"]["model"], results["tuned"]["model"]) == (base_model, tuned_model)

    # both models side by side in the store: 20 verified CoTs each, an accuracy each
    frame = queries.metric_frame(CotFilter(benchmarks=("gsm8k",), correct_source=VERIFY_SOURCE), db=demo_store)
    per_model = {m: (n, c) for m, n, c in frame.group_by("model").agg(
        n=pl.len(), judged=pl.col("correct").is_not_null().sum()).iter_rows()}
    assert per_model == {base_model: (PROBLEMS, PROBLEMS), tuned_model: (PROBLEMS, PROBLEMS)}
    table = summary(db=demo_store).filter(pl.col("benchmark") == "gsm8k")
    accuracy = dict(zip(table["model"], table[f"acc[{VERIFY_SOURCE}]"]))
    assert set(accuracy) == {base_model, tuned_model}
    assert all(0.0 <= a <= 100.0 for a in accuracy.values())
    assert accuracy[base_model] == pytest.approx(results["base"]["accuracy"])
    assert accuracy[tuned_model] == pytest.approx(results["tuned"]["accuracy"])

    # and in the app: the Distributions page, filtered to the two evaluations, shows both models
    app_store(demo_store)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.query_params["datasets"] = ",".join(r["dataset"] for r in results.values())
    at.query_params["correct_source"] = VERIFY_SOURCE
    at = at.run()
    at = at.switch_page("pages/distributions.py").run()
    assert not at.exception, at.exception
    at = open_tab(at, "Accuracy and Pass@k")  # the tab with Mean@k and the budget chart
    mean_pass = next(d.value for d in at.dataframe if "pass_at_k" in d.value.columns)
    shown = dict(zip(mean_pass["model"], mean_pass["mean_at_k"]))
    assert set(shown) == {base_model, tuned_model}
    assert shown[base_model] == pytest.approx(accuracy[base_model] / 100)
    assert shown[tuned_model] == pytest.approx(accuracy[tuned_model] / 100)
    specs = [json.dumps(json.loads(c.proto.spec)) for c in at.get("plotly_chart")]
    assert any(base_model in s and tuned_model in s for s in specs)
    # the budget chart marks the runs' max new tokens and how many answers stopped there
    hits = store.read_rows("SELECT count(*) FILTER (WHERE finish_reason = 'length') FROM cots c JOIN datasets d "
                           "USING (dataset_id) WHERE d.name = ?", [results["base"]["dataset"]], db=demo_store)[0][0]
    budget = next(json.loads(c.proto.spec) for c in at.get("plotly_chart") if "dist_budget" in c.proto.id)
    caps = [t for t in budget["data"] if t["name"].startswith("max new tokens")]
    assert {t["x"][0] for t in caps} == {MAX_NEW_TOKENS}
    assert any(f"{hits} of {PROBLEMS} answers stopped there" in t["hovertemplate"] for t in caps)
    lap("distributions in the app")

    # Compare: the two runs matched by question key, against the verdicts in the store
    a = compare.Run(results["base"]["dataset"], base_model, "gsm8k")
    b = compare.Run(results["tuned"]["dataset"], tuned_model, "gsm8k")
    result = compare.compare(a, b, db=demo_store)
    verdicts = {}
    for label in ("base", "tuned"):
        verdicts[label] = dict(store.read_rows(
            "SELECT p.problem_key, s.value FROM scores s JOIN score_sources ss USING (source_id) JOIN cots c USING (cot_id) "
            "JOIN problems p ON p.problem_id = c.problem_id JOIN datasets d ON d.dataset_id = c.dataset_id "
            "WHERE ss.name = ? AND d.name = ?", [VERIFY_SOURCE, results[label]["dataset"]], db=demo_store))
    assert result.shared == PROBLEMS and set(verdicts["base"]) == set(verdicts["tuned"])
    right = {label: {k for k, v in verdicts[label].items() if v == 1.0} for label in verdicts}
    assert result.a.accuracy == pytest.approx(len(right["base"]) / PROBLEMS)
    assert result.b.accuracy == pytest.approx(len(right["tuned"]) / PROBLEMS)
    assert result.a.ci == pytest.approx(compare.wilson_interval(len(right["base"]), PROBLEMS))
    assert result.lost.height == len(right["base"] - right["tuned"])
    assert result.gained.height == len(right["tuned"] - right["base"])
    assert result.a.max_new_tokens == result.b.max_new_tokens == MAX_NEW_TOKENS and result.a.hit_budget == hits
    at = at.switch_page("pages/compare.py").run()
    assert not at.exception, at.exception
    shown = {m.label: m.value for m in at.metric}
    assert shown["Accuracy A"] == f"{100 * result.a.accuracy:.1f} %" and shown["Accuracy B"] == f"{100 * result.b.accuracy:.1f} %"
    assert shown["Problems that flipped"] == f"+{result.gained.height} / −{result.lost.height}"
    flips = [("compare_gained", result.gained), ("compare_lost", result.lost)]
    key, table = next(((k, t) for k, t in flips if t.height), (None, None))
    # both CoTs of a flipped problem open in the Reader; at 96 new tokens SmolLM2 may solve none (0% for both
    # runs on 2026-12-07), so there may be no flip here: tests/test_compare.py opens them on runs with flips
    if key is not None:
        at.session_state[key] = {"selection": {"rows": [0], "columns": []}}
        at = at.run()
        at = next(b for b in at.button if b.label == "Open A's CoT in the Reader").click().run()
        assert not at.exception, at.exception
        assert at.session_state["reader_problem_id"] == table["problem_id_a"][0]
        assert at.session_state["reader_cot_id"] == table["cot_id_a"][0]
    lap("compare in the app")

    timings["total"] = round(time.perf_counter() - started, 1)
    print(f"\nend-to-end timings (s): {json.dumps(timings)}; accuracy %: {json.dumps(accuracy)}")
