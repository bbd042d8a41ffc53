"""The Distributions and Overview pages on real stores, through Streamlit's AppTest.

The numbers on screen are checked against values computed here independently, with SQL on the
store (``store.read_rows``) and ``core.summary.summary``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import polars as pl
import pytest
from streamlit.testing.v1 import AppTest

from core import store, summary
from tests.helpers import as_read, open_tab

ROOT = Path(__file__).resolve().parents[1]


def _open(page: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _charts(at: AppTest) -> dict[str, dict]:
    """Plotly figures on the page by the first line of their title."""
    out = {}
    for chart in at.get("plotly_chart"):
        spec = json.loads(chart.proto.spec)
        out[spec["layout"]["title"]["text"].split("<br>")[0]] = spec
    return out


def _table(at: AppTest, column: str):
    """The dataframe on the page that has ``column`` (pandas)."""
    found = [d.value for d in at.dataframe if column in d.value.columns]
    assert len(found) == 1, f"expected one table with column {column!r}, found {len(found)}"
    return found[0]


# ------------------------------------------------------------------ Distributions, real Qwen runs


@pytest.fixture
def qwen_distributions(qwen_store, app_store):
    app_store(qwen_store)
    return qwen_store, _open("pages/distributions.py")


def test_qwen_length_by_correctness_and_budget_curves_per_model(qwen_distributions):
    db, at = qwen_distributions
    figs = _charts(at)
    n_cots = store.read_rows("SELECT count(*) FROM cots", db=db)[0][0]

    lengths = figs["Length by correctness"]
    assert {t["name"] for t in lengths["data"]} == {"correct", "incorrect"}
    assert f"computed on {n_cots:,} CoTs (all matching rows)" in lengths["layout"]["title"]["text"]

    groups = store.read_rows(
        "SELECT DISTINCT c.model, p.benchmark FROM cots c JOIN problems p USING (problem_id)", db=db)
    # a closed tab computes and draws nothing
    assert not any(t.startswith("Accuracy across token budgets") for t in figs)
    budget = _charts(open_tab(at, "Accuracy and Pass@k"))["Accuracy across token budgets"]
    # one accuracy and one truncation-rate curve per model and benchmark
    assert len(budget["data"]) == 2 * len(groups)
    names = {t["name"] for t in budget["data"]}
    assert names == {f"{m} · {b}" for m, b in groups}

    # the 32k accuracy of each curve: correct (harness) and at most 32768 tokens, over all CoTs
    expected = dict(((m, b), v) for m, b, v in store.read_rows(
        "SELECT c.model, p.benchmark, avg(CASE WHEN s.value = 1 AND c.n_tokens <= 32768 THEN 1.0 ELSE 0.0 END) "
        "FROM cots c JOIN problems p USING (problem_id) JOIN scores s USING (cot_id) "
        "JOIN score_sources ss USING (source_id) WHERE ss.name = 'harness' AND s.metric = 'correct' GROUP BY ALL",
        db=db))
    for trace in budget["data"]:
        if trace["showlegend"]:  # the accuracy panel
            model, bench = trace["name"].split(" · ")
            assert trace["x"][-1] == 32768
            assert trace["y"][-1] == pytest.approx(expected[(model, bench)], abs=1e-9)

    # the RV / CD section explains instead of showing empty charts
    figs = _charts(open_tab(at, "RV and CD"))
    assert not any(t.startswith(("Reasoning Verbosity", "RV ×")) for t in figs)
    assert any("no RV or CD scores" in i.value and "harness" in i.value for i in at.info)


def test_length_bars_sit_side_by_side_and_each_names_exactly_its_cots(qwen_distributions):
    """Issue 11: overlaid correct/incorrect histograms turned brown where they met, and a click
    on a bar did not narrow the filter as the caption promised. Each bar now has its own slot of
    its bin, and its customdata is the token range, label and panel a click narrows to: the
    CoTs of that range and label, counted here with SQL, are exactly the bar's height."""
    db, at = qwen_distributions
    at.selectbox(key="dist_facet").set_value("model").run()
    spec = _charts(at)["Length by correctness, by model"]
    verdicts = dict(store.read_rows(
        "SELECT s.cot_id, s.value FROM scores s JOIN score_sources ss USING (source_id) "
        "WHERE ss.name = 'harness' AND s.metric = 'correct'", db=db))
    tokens = store.read_rows("SELECT cot_id, model, n_tokens FROM cots", db=db)
    bars = [t for t in spec["data"] if t["type"] == "bar"]
    assert bars and {t["name"] for t in bars} == {"correct", "incorrect"}
    checked = 0
    for trace in bars:
        for y, (lo, hi, label, facet) in zip(trace["y"], trace["customdata"]):
            assert label == trace["name"] and facet == trace["meta"]
            if y == 0 or checked > 60:
                continue
            expected = sum(1 for cot_id, model, n in tokens if model == facet and lo <= n <= hi
                           and verdicts.get(cot_id) == (1.0 if label == "correct" else 0.0))
            assert y == expected, (facet, label, lo, hi)
            checked += 1
    assert checked > 20
    # the two labels' bars of one bin and panel never overlap
    by_panel = {}
    for trace in bars:
        for x, width, (lo, _, _, facet) in zip(trace["x"], trace["width"], trace["customdata"]):
            by_panel.setdefault((facet, lo), []).append((x - width / 2, x + width / 2))
    for spans in by_panel.values():
        spans.sort()
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    assert any("Click a bar to narrow the filter" in c.value for c in at.caption)


def test_qwen_mean_at_1_and_budget_table_agree_with_summary(qwen_distributions):
    db, at = qwen_distributions
    # correctness defaults to each dataset's own source, which for the harness runs is the
    # harness's own verdict on every CoT; the sidebar says so
    assert at.sidebar.selectbox(key="f_correct_source").value == "@own"
    n_cots = store.read_rows("SELECT count(*) FROM cots", db=db)[0][0]
    assert any(f"qwen25-math-eval: harness ({n_cots:,})" in as_read(c.value) for c in at.sidebar.caption)

    # independently: the share of correct CoTs per model on aime24, straight from the scores table
    by_sql = dict(store.read_rows(
        "SELECT c.model, avg(s.value) FROM cots c JOIN problems p USING (problem_id) JOIN scores s USING (cot_id) "
        "JOIN score_sources ss USING (source_id) WHERE ss.name = 'harness' AND s.metric = 'correct' "
        "AND p.benchmark = 'aime24' GROUP BY c.model", db=db))
    rows = summary.summary(db=db).filter(pl.col("benchmark") == "aime24")
    by_summary = dict(zip(rows["model"].to_list(), rows["acc[harness]"].to_list()))
    assert set(by_sql) == set(by_summary) and len(by_sql) >= 20

    mean_table = _table(open_tab(at, "Accuracy and Pass@k"), "mean_at_k")
    aime = mean_table[mean_table["benchmark"] == "aime24"]
    assert set(aime["k"]) == {1}
    shown = dict(zip(aime["model"], aime["mean_at_k"]))
    assert set(shown) == set(by_sql)
    for model, value in shown.items():
        assert value == pytest.approx(by_sql[model], abs=1e-9)
        assert value == pytest.approx(by_summary[model] / 100, abs=1e-4)  # summary rounds to 0.01 %
    # one sample per problem: Pass@1 is Mean@1
    assert list(aime["pass_at_k"]) == pytest.approx(list(aime["mean_at_k"]))

    budget_table = _table(at, "full_accuracy")
    aime_budget = budget_table[budget_table["benchmark"] == "aime24"]
    for model, full in zip(aime_budget["model"], aime_budget["full_accuracy"]):
        assert full == pytest.approx(by_summary[model] / 100, abs=1e-4)
    assert {"acc@2k", "acc@32k", "trunc@2k", "trunc@32k"} <= set(budget_table.columns)


def test_qwen_k_is_bounded_by_samples_per_problem(qwen_distributions):
    _, at = qwen_distributions
    k = open_tab(at, "Accuracy and Pass@k").number_input(key="dist_k")
    assert k.value == 1 and k.max == 1  # greedy runs: one sample per problem


# ------------------------------------------------------------------ Distributions, demo store


def _score_counts(db, source: str, metric: str) -> list[int]:
    counts = [0] * 10
    for value, n in store.read_rows(
        "SELECT s.value, count(*) FROM scores s JOIN score_sources ss USING (source_id) "
        "WHERE ss.name = ? AND s.metric = ? AND s.value IS NOT NULL GROUP BY s.value", [source, metric], db=db,
    ):
        counts[int(value)] += n
    return counts


def _both_scored(db, rv_source: str, cd_source: str) -> int:
    return store.read_rows(
        "SELECT count(*) FROM (SELECT s.cot_id FROM scores s JOIN score_sources ss USING (source_id) "
        "WHERE ss.name = ? AND s.metric = 'rv' AND s.value IS NOT NULL) r JOIN "
        "(SELECT s.cot_id FROM scores s JOIN score_sources ss USING (source_id) "
        "WHERE ss.name = ? AND s.metric = 'cd' AND s.value IS NOT NULL) c USING (cot_id)",
        [rv_source, cd_source], db=db,
    )[0][0]


def _check_rv_cd(at: AppTest, db, rv_source: str, cd_source: str) -> None:
    figs = _charts(at)
    rv = figs[f"Reasoning Verbosity (RV) · source: {rv_source}"]["data"][0]
    cd = figs[f"Cognitive Difficulty (CD) · source: {cd_source}"]["data"][0]
    assert rv["x"] == list(range(10)) and cd["x"] == list(range(10))
    assert rv["y"] == _score_counts(db, rv_source, "rv")
    assert cd["y"] == _score_counts(db, cd_source, "cd")
    heat = figs[f"RV × CD · RV: {rv_source}, CD: {cd_source}"]
    total = sum(map(sum, heat["data"][0]["z"]))
    assert total == _both_scored(db, rv_source, cd_source) > 0
    assert f"{total:,} have both RV and CD" in heat["layout"]["title"]["text"]


def test_demo_rv_cd_histograms_and_heatmap_match_the_scores_table(demo_store, app_store):
    app_store(demo_store)
    at = _open("pages/distributions.py")
    rv_source = at.selectbox(key="f_rv_source").value
    cd_source = at.selectbox(key="f_cd_source").value
    assert rv_source.startswith("omnithought") and cd_source.startswith("omnithought")
    open_tab(at, "RV and CD")  # stays open over the sidebar changes below
    _check_rv_cd(at, demo_store, rv_source, cd_source)

    # another judge's labels, where the demo has them: the charts follow the sidebar's sources
    others = [s for s in at.selectbox(key="f_rv_source").options if s not in ("(none)", rv_source)]
    for other in others:
        at.selectbox(key="f_rv_source").set_value(other)
        at.selectbox(key="f_cd_source").set_value(other)
        at.run()
        assert not at.exception
        _check_rv_cd(at, demo_store, other, other)

    # no RV source chosen: a sentence naming the sources instead of an empty chart
    at.selectbox(key="f_rv_source").set_value("(none)").run()
    titles = _charts(at)
    assert not any(t.startswith(("Reasoning Verbosity", "RV ×")) for t in titles)
    assert any(t.startswith("Cognitive Difficulty") for t in titles)
    assert any("No RV source is chosen" in i.value and rv_source in as_read(i.value) for i in at.info)


def test_demo_facets_and_ecdf(demo_store, app_store):
    app_store(demo_store)
    at = _open("pages/distributions.py")
    at.selectbox(key="dist_facet").set_value("model")
    at.radio(key="dist_kind").set_value("ECDF")
    at.run()
    assert not at.exception
    fig = _charts(at)["Length by correctness, by model (ECDF)"]
    teachers = {r[0] for r in store.read_rows("SELECT DISTINCT model FROM cots", db=demo_store)}
    assert {t["meta"] for t in fig["data"]} == teachers
    assert all(t["y"][-1] == pytest.approx(1.0) for t in fig["data"])

    at.selectbox(key="dist_facet").set_value("CD level").run()
    facets = {t["meta"] for t in _charts(at)["Length by correctness, by CD level (ECDF)"]["data"]}
    cd_source = at.selectbox(key="f_cd_source").value
    levels = store.read_rows(
        "SELECT DISTINCT s.value FROM scores s JOIN score_sources ss USING (source_id) "
        "WHERE ss.name = ? AND s.metric = 'cd' AND s.value IS NOT NULL", [cd_source], db=demo_store)
    unscored = store.read_rows(
        "SELECT count(*) FROM cots c WHERE NOT EXISTS (SELECT 1 FROM scores s JOIN score_sources ss "
        "USING (source_id) WHERE s.cot_id = c.cot_id AND ss.name = ? AND s.metric = 'cd' AND s.value IS NOT NULL)",
        [cd_source], db=demo_store)[0][0]
    expected = {f"CD {int(v)}" for (v,) in levels} | ({"CD unscored"} if unscored else set())
    assert facets == expected and len(levels) > 1


def test_empty_filter_result_says_so(demo_store, app_store):
    app_store(demo_store)
    at = _open("pages/distributions.py")
    at.sidebar.text_input(key="f_text").set_value("no CoT contains this zq9x string").run()
    assert not at.get("plotly_chart")
    assert any("No CoT matches the filter" in i.value for i in at.info)


# ------------------------------------------------------------------ Overview


def test_overview_lists_the_qwen_dataset_with_its_counts(qwen_store, app_store):
    app_store(qwen_store)
    at = _open("pages/overview.py")
    name, problems, cots = store.read_rows(
        "SELECT d.name, (SELECT count(*) FROM problems), (SELECT count(*) FROM cots) FROM datasets d", db=qwen_store)[0]
    datasets = _table(at, "n_problems")
    assert list(datasets["name"]) == [name]
    assert list(datasets["n_problems"]) == [problems] and list(datasets["n_cots"]) == [cots]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["CoTs"] == f"{cots:,}" and metrics["Problems"] == f"{problems:,}"

    models = _table(at, "acc[harness]")
    expected = summary.summary(db=qwen_store)
    assert len(models) == expected.height
    assert list(models["acc[harness]"]) == pytest.approx(expected["acc[harness]"].to_list())
    assert "acc[math-verify]" in models.columns and "harness_acc" in models.columns
    assert set(_table(at, "with_value")["name"]) == {"harness", "math-verify"}
    assert "Length by correctness" in _charts(at)


def test_overview_labels_generated_data(demo_store, app_store):
    app_store(demo_store)
    at = _open("pages/overview.py")
    assert all("(generated)" in n for n in _table(at, "n_problems")["name"])


def test_overview_of_an_empty_store_explains_how_to_ingest(tmp_path, app_store):
    app_store(tmp_path / "empty.duckdb")
    at = _open("pages/overview.py")
    assert any("The store is empty" in i.value and "python -m core ingest" in i.value for i in at.info)
    assert not at.dataframe and not at.get("plotly_chart")
    assert any(t.key == "ingest_path" for t in at.text_input)  # the ingest form


def test_overview_ingest_form_runs_a_background_ingest(tmp_path, app_store):
    from helpers import BENCHMARKS, require_realdata

    require_realdata(BENCHMARKS)
    db = app_store(tmp_path / "ingest.duckdb")
    at = _open("pages/overview.py")
    source = str(BENCHMARKS / "aime24_test.jsonl")
    at.text_input(key="ingest_path").set_value(source)
    at.text_input(key="ingest_name").set_value("aime24 via the form")
    next(b for b in at.button if b.label == "Ingest").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    for _ in range(120):  # the worker is a separate process; the page polls it
        if at.success or at.error:
            break
        time.sleep(0.5)
        at.run()
    assert not at.error, [e.value for e in at.error]
    assert any("Ingested 'aime24 via the form': 30 problems" in s.value for s in at.success)
    assert store.read_rows("SELECT name, n_problems FROM datasets", db=db) == [("aime24 via the form", 30)]
    at.run()  # the next run shows the new dataset
    assert list(_table(at, "n_problems")["name"]) == ["aime24 via the form"]

