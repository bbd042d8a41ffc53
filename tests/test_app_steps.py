"""Steps in the app (Reader, Distributions, Agreement) through AppTest, on a store holding the
real Thought Anchors CoTs, their labelled steps and the rule set's steps. What the pages show
is checked against SQL and plain Python written here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import render, store
from core.cli import main
from core.step_stage import StepOptions, run_steps
from tests.helpers import REALDATA, as_read, open_tab

ROOT = Path(__file__).resolve().parents[1]
TA = REALDATA / "thought_anchors"


@pytest.fixture(scope="module")
def ta_template(tmp_path_factory):
    if not TA.exists():
        pytest.skip(f"real data not found at {TA}")
    db = tmp_path_factory.mktemp("ta-app") / "ta.duckdb"
    assert main(["--db", str(db), "ingest", str(TA / "thought_anchors_math_base_solutions.jsonl"), "--name", "ta",
                 "--no-verify", "--no-tokens", "--no-index"]) == 0
    assert main(["--db", str(db), "ingest", str(TA / "thought_anchors_math_chunks_labeled.jsonl"), "--steps-for", "ta"]) == 0
    run_steps(db, StepOptions(from_source="thought anchors"))
    run_steps(db, StepOptions())
    return db


@pytest.fixture
def ta_app(ta_template, tmp_path, app_store):
    db = tmp_path / "store.duckdb"
    shutil.copy(ta_template, db)
    app_store(db)
    return db


def open_page(page: str, **state) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    for key, value in state.items():
        at.session_state[key] = value
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def rerun(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> dict[str, dict]:
    out = {}
    for chart in at.get("plotly_chart"):
        spec = json.loads(chart.proto.spec)
        title = spec["layout"].get("title", {}).get("text", "")
        out[title.split("<br>")[0]] = spec
    return out


def test_reader_step_view_lists_a_sources_steps_with_roles_and_importance(ta_app):
    cot_id, problem_id = store.read_rows("SELECT cot_id, problem_id FROM cots ORDER BY cot_id LIMIT 1", db=ta_app)[0]
    at = open_page("pages/reader.py", reader_problem_id=problem_id, **{f"reader_steps_{cot_id}": True})
    expected = dict(store.read_rows(
        "SELECT ss.name, count(*) FROM steps s JOIN score_sources ss USING (source_id) WHERE s.cot_id = ? GROUP BY 1",
        [cot_id], db=ta_app))
    steps_box = [e for e in at.expander if e.label.startswith("Steps (")]
    assert len(steps_box) == 2  # both CoTs of the problem were split
    assert all(f"{n:,} from {name}" in as_read(steps_box[0].label) for name, n in expected.items())
    at.selectbox(key=f"reader_steps_source_{cot_id}").select("thought anchors")
    rerun(at)
    rows = store.read_rows(
        "SELECT s.step_idx, s.role, substr(c.thinking, s.char_start + 1, s.char_end - s.char_start) FROM steps s "
        "JOIN score_sources ss USING (source_id) JOIN cots c USING (cot_id) WHERE ss.name = 'thought anchors' "
        "AND s.cot_id = ? ORDER BY s.step_idx LIMIT 40", [cot_id], db=ta_app)
    bodies = [m.value for m in at.markdown]
    for idx, role, text in rows:  # the first page: every step's header and its text, made safe
        assert any(b.startswith(f"**{idx}** ") and role.replace("_", " ") in b for b in bodies)
        assert render.safe_markdown(text).strip() in bodies
    # importance bars: Thought Anchors' counterfactual importance, scaled to the CoT's largest
    values = [v for (v,) in store.read_rows(
        "SELECT st.value FROM step_scores st JOIN score_sources ss USING (source_id) WHERE ss.name = 'thought anchors' "
        "AND st.cot_id = ? AND st.metric = 'counterfactual_importance_accuracy' ORDER BY st.step_idx", [cot_id], db=ta_app)]
    bars = at.get("progress")
    assert len(bars) == 40
    biggest = max(abs(v) for v in values)
    assert [b.proto.value for b in bars] == [int(abs(v) / biggest * 100) for v in values[:40]]  # st.progress truncates
    # the rule set's role of the same characters sits beside each step
    assert any("step rules on thought anchors: " in b for b in bodies)


def test_reader_role_filter_keeps_only_that_role(ta_app):
    cot_id, problem_id = store.read_rows("SELECT cot_id, problem_id FROM cots ORDER BY cot_id LIMIT 1", db=ta_app)[0]
    at = open_page("pages/reader.py", reader_problem_id=problem_id, **{f"reader_steps_{cot_id}": True,
                                                                       f"reader_steps_source_{cot_id}": "thought anchors"})
    at.multiselect(key=f"reader_steps_roles_{cot_id}").set_value(["uncertainty_management"])
    rerun(at)
    n = store.read_rows("SELECT count(*) FROM steps s JOIN score_sources ss USING (source_id) WHERE ss.name = 'thought anchors' "
                        "AND s.cot_id = ? AND s.role = 'uncertainty_management'", [cot_id], db=ta_app)[0][0]
    headers = [m.value for m in at.markdown if m.value.startswith("**") and "-badge[" in m.value]
    shown = [h for h in headers if h.split("**")[1].isdigit()]
    assert len(shown) == min(n, 40) > 0
    assert all(":orange-badge[uncertainty management]" in h for h in shown)


def test_reader_jumps_to_the_first_wrong_step(tmp_path, app_store):
    from core.step_labels import StepLabelOptions, run_step_labels
    from tests.helpers import PB, write_jsonl

    db = tmp_path / "pb.duckdb"
    items = [dict(PB[2], steps=[f"Step number {i}." for i in range(60)], label=47)]
    run_step_labels(db, StepLabelOptions(path=str(write_jsonl(tmp_path / "pb.jsonl", items))))
    app_store(db)
    cot_id, problem_id = store.read_rows("SELECT cot_id, problem_id FROM cots", db=db)[0]
    at = open_page("pages/reader.py", reader_problem_id=problem_id, **{f"reader_steps_{cot_id}": True})
    assert at.number_input(key=f"reader_steps_page_{cot_id}").value == 1
    at.button(key=f"reader_steps_jump_{cot_id}").click()
    rerun(at)
    assert at.number_input(key=f"reader_steps_page_{cot_id}").value == 2  # step 47 is on the second page of 40
    header = next(m.value for m in at.markdown if m.value.startswith("**47** "))
    assert "first wrong step" in header
    assert any(m.value.startswith("**46** ") and ":green-badge[ok]" in m.value for m in at.markdown)


def test_distributions_step_section_matches_sql(ta_app):
    at = open_tab(open_page("pages/distributions.py"), "Steps")
    at.sidebar.selectbox(key="f_correct_source").select("ta")
    rerun(at)
    at.selectbox(key="dist_steps_source").select("thought anchors")
    rerun(at)
    figs = charts(at)
    composition = figs["Share of step tokens per role, by correctness · step source: thought anchors"]
    expected = {(grp, role): share for grp, role, share in store.read_rows(
        "SELECT grp, role, tokens / sum(tokens) OVER (PARTITION BY grp) FROM ("
        " SELECT CASE WHEN sc.value = 1 THEN 'correct' ELSE 'incorrect' END AS grp, s.role, sum(s.n_tokens) AS tokens "
        " FROM steps s JOIN score_sources ss USING (source_id) JOIN scores sc ON sc.cot_id = s.cot_id "
        " JOIN score_sources cs ON cs.source_id = sc.source_id AND cs.name = 'ta' AND sc.metric = 'correct' "
        " WHERE ss.name = 'thought anchors' GROUP BY ALL)", db=ta_app)}
    for trace in composition["data"]:
        role = trace["name"].replace(" ", "_")
        for grp, share in zip(trace["y"], trace["x"]):
            assert share == pytest.approx(expected[(grp, role)])
    steps_box = figs["Steps per CoT · step source: thought anchors"]
    per_cot = dict(store.read_rows(
        "SELECT CASE WHEN sc.value = 1 THEN 'correct' ELSE 'incorrect' END, list(n ORDER BY n) FROM (SELECT s.cot_id, count(*) AS n "
        "FROM steps s JOIN score_sources ss USING (source_id) WHERE ss.name = 'thought anchors' GROUP BY 1) t "
        "JOIN scores sc USING (cot_id) JOIN score_sources cs ON cs.source_id = sc.source_id AND cs.name = 'ta' GROUP BY 1", db=ta_app))
    for trace in steps_box["data"]:
        assert sorted(trace["y"]) == per_cot[trace["name"]]
    assert "This source gives no step verdicts" in json.dumps(figs["Where the first wrong step starts · step source: thought anchors"])


def test_distributions_bars_carry_what_a_click_narrows_to(ta_app):
    from core.step_charts import click_narrowing

    at = open_tab(open_page("pages/distributions.py"), "Steps")
    at.sidebar.selectbox(key="f_correct_source").select("ta")
    rerun(at)
    figs = charts(at)
    by_correctness = next(v for k, v in figs.items() if k.startswith("Share of step tokens per role, by correctness"))
    by_model = next(v for k, v in figs.items() if k.startswith("Share of step tokens per role, by model"))
    assert {tuple(t["customdata"]) for t in by_correctness["data"]} == {("correct", "incorrect")}
    assert {tuple(t["customdata"]) for t in by_model["data"]} == {("deepseek-r1-distill-llama-8b",)}
    # a click's point as Streamlit hands it to the callback
    assert click_narrowing("correctness", {"customdata": "incorrect", "y": "incorrect"}) == {"correct": "incorrect"}
    assert click_narrowing("correctness", {"customdata": ["correct"]}) == {"correct": "correct"}
    assert click_narrowing("correctness", {"customdata": "unknown"}) is None
    assert click_narrowing("model", {"customdata": "deepseek-r1-distill-llama-8b"}) == {"models": ["deepseek-r1-distill-llama-8b"]}
    assert click_narrowing("model", {"customdata": "(no model)"}) is None and click_narrowing("model", None) is None


def test_agreement_page_compares_step_labels(ta_app):
    at = open_page("pages/agreement.py")
    at.segmented_control(key="agr_mode").set_value("step labels")
    rerun(at)
    at.selectbox(key="agr_steps_a").select("step rules on thought anchors")
    at.selectbox(key="agr_steps_b").select("thought anchors")
    rerun(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Steps compared"] == "2,929"
    from core import step_stats

    result = step_stats.role_agreement("step rules on thought anchors", "thought anchors", db=ta_app)
    assert metrics["Cohen's kappa"] == f"{result['kappa']:.3f}"
    assert metrics["Role agreement"] == f"{result['accuracy']:.1%}"
    per_role = next(d.value for d in at.dataframe if "recall" in d.value.columns)
    assert list(per_role["both"]) == [r["both"] for r in result["per_role"]]
