"""The issue's end-to-end run, on CPU with the real SmolLM2-135M-Instruct: select 20 CoTs with a
saved recipe, export them as TRL messages, fine-tune 3 LoRA steps, evaluate the base and the
tuned model on 20 GSM8K problems, and compare the two in the store and on the Distributions page.

Each stage's wall time is printed (run with -s to see it)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import polars as pl
import pytest
from streamlit.testing.v1 import AppTest

from core import export, queries, recipes
from core.evaluate import EvalOptions, evaluate
from core.finetune import FinetuneOptions, finetune
from core.models import DEFAULT_MODEL
from core.queries import CotFilter
from core.selection import Selection, TargetSize, default_score_sources
from core.summary import summary
from core.verify import SOURCE as VERIFY_SOURCE
from helpers import GSM8K

ROOT = Path(__file__).resolve().parents[1]
PROBLEMS = 20
MAX_NEW_TOKENS = 96


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

    card = finetune(FinetuneOptions(data=str(exported.path), name="e2e-tuned", max_steps=3, max_length=512,
                                    save_steps=10, recipe="e2e-20"), log=lambda _: None)
    assert card["steps"] == 3 and len(card["losses"]) == 3 and card["recipe"] == "e2e-20"
    assert card["export_manifest"]["counts"]["rows"] == 20
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
    mean_pass = next(d.value for d in at.dataframe if "pass_at_k" in d.value.columns)
    shown = dict(zip(mean_pass["model"], mean_pass["mean_at_k"]))
    assert set(shown) == {base_model, tuned_model}
    assert shown[base_model] == pytest.approx(accuracy[base_model] / 100)
    assert shown[tuned_model] == pytest.approx(accuracy[tuned_model] / 100)
    specs = [json.dumps(json.loads(c.proto.spec)) for c in at.get("plotly_chart")]
    assert any(base_model in s and tuned_model in s for s in specs)
    lap("compare in the app")

    timings["total"] = round(time.perf_counter() - started, 1)
    print(f"\nend-to-end timings (s): {json.dumps(timings)}; accuracy %: {json.dumps(accuracy)}")
