"""The sidebar's generic filters and the Select page's conditions through AppTest, on the store
of tests/helpers.py, build_figures_store (TINY with OmniThought labels, a generic dataset verified by
math-verify, a judge's logic, a stage's pass rate and contamination flags) and on the real
Qwen2.5-Math runs (no RV/CD at all). Counts on screen are checked against SQL written here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import queries, store
from core.figures import Condition, Figure
from tests.helpers import JUDGE, STAGE, as_read, build_figures_store, metric, open_tab, rerun

ROOT = Path(__file__).resolve().parents[1]
LOGIC = "logic · judge smollm"
CONTAMINATED = "contaminated · difficulty (per problem)"
PASS_RATE = "pass_rate · difficulty (per problem)"
JUDGE_ROWS = f"SELECT cot_id FROM scores JOIN score_sources USING (source_id) WHERE name = '{JUDGE}' AND metric = 'logic'"
STAGE_ROWS = f"SELECT problem_id FROM problem_scores JOIN score_sources USING (source_id) WHERE name = '{STAGE}'"
OWN_VERDICT = ("coalesce((SELECT s.value FROM scores s JOIN score_sources ss USING (source_id) WHERE s.cot_id = c.cot_id "
               "AND s.metric = 'correct' AND ss.name = 'omnithought'), (SELECT s.value FROM scores s JOIN score_sources ss "
               "USING (source_id) WHERE s.cot_id = c.cot_id AND s.metric = 'correct' AND ss.name = 'math-verify'))")


@pytest.fixture(scope="module")
def figures_template(tmp_path_factory) -> Path:
    return build_figures_store(tmp_path_factory.mktemp("app-figures"))


@pytest.fixture
def figures_store(figures_template, tmp_path, app_store) -> Path:
    db = tmp_path / "figures.duckdb"
    shutil.copy(figures_template, db)
    return app_store(db)


def open_page(page: str, **params) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    for key, value in params.items():
        at.query_params[key] = value
    at.run()
    at.switch_page(page)
    return rerun(at)


def count(db: Path, where: str) -> int:
    return store.read_rows(f"SELECT count(*) FROM cots c WHERE {where}", db=db)[0][0]


def add_condition(at: AppTest, label: str, prefix: str = "f_") -> AppTest:
    """Pick a figure in "Add a condition on a figure": that adds it, and the picker empties."""
    at.selectbox(key=f"{prefix}add_figure").select(label)
    rerun(at)
    assert at.selectbox(key=f"{prefix}add_figure").value is None
    return at


# ---------------------------------------------------------------------------- sidebar


def test_typed_bounds_and_the_slider_move_each_other(figures_store):
    at = open_page("pages/explore.py")
    top = store.read_rows("SELECT max(n_tokens) FROM cots", db=figures_store)[0][0]
    assert at.slider(key="f_tokens").value == (0, top)
    at.number_input(key="f_tokens_hi").set_value(50)
    rerun(at)
    assert at.slider(key="f_tokens").value == (0, 50)
    assert metric(at, "Matching CoTs") == count(figures_store, "n_tokens <= 50")
    at.slider(key="f_tokens").set_value((40, 60))
    rerun(at)
    assert (at.number_input(key="f_tokens_lo").value, at.number_input(key="f_tokens_hi").value) == (40, 60)
    assert metric(at, "Matching CoTs") == count(figures_store, "n_tokens BETWEEN 40 AND 60")
    # a lower bound typed above the upper one moves both
    at.number_input(key="f_tokens_lo").set_value(70)
    rerun(at)
    assert at.slider(key="f_tokens").value == (70, 70)
    assert at.session_state["current_filter"].tokens_range == (70, 70)


def test_a_filter_on_any_figure_counts_what_sql_counts_and_lives_in_the_url(figures_store):
    at = open_page("pages/explore.py")
    labels = at.selectbox(key="f_add_figure").options
    assert {LOGIC, PASS_RATE, CONTAMINATED, "tokens", "rv · omnithought (DeepSeek-R1)", "correct · math-verify"} <= set(labels)
    add_condition(at, LOGIC)
    assert at.radio(key="f_c0_mode").value == "in a range" and at.slider(key="f_c0").value == (0, 1)
    # at its full range the condition keeps the CoTs the judge gave a value
    assert metric(at, "Matching CoTs") == count(figures_store, f"cot_id IN ({JUDGE_ROWS} AND value IS NOT NULL)") == 7
    at.slider(key="f_c0").set_value((1, 1))
    rerun(at)
    assert metric(at, "Matching CoTs") == count(figures_store, f"cot_id IN ({JUDGE_ROWS} AND value = 1)")
    # the logic column is shown beside the fixed ones
    table = at.dataframe[0].value
    assert set(table[LOGIC]) == {1.0}
    add_condition(at, CONTAMINATED)
    at.radio(key="f_c1_mode").set_value("has no value")
    rerun(at)
    expected = count(figures_store, f"cot_id IN ({JUDGE_ROWS} AND value = 1) AND problem_id NOT IN "
                                    f"({STAGE_ROWS} AND metric = 'contaminated')")
    assert 0 < metric(at, "Matching CoTs") == expected
    f = at.session_state["current_filter"]
    assert f.conditions == (Condition(Figure("logic", JUDGE), lo=1), Condition(Figure("contaminated", STAGE, "problem"), missing=True))
    assert json.loads(at.query_params["conditions"][0] if isinstance(at.query_params["conditions"], list)
                      else at.query_params["conditions"]) == [c.as_dict() for c in f.conditions]

    # the URL opens the same view in a new session, the widgets showing it
    again = open_page("pages/explore.py", conditions=f.to_params()["conditions"])
    assert again.session_state["current_filter"] == f
    assert metric(again, "Matching CoTs") == expected
    assert again.slider(key="f_c0").value == (1, 1) and again.radio(key="f_c1_mode").value == "has no value"

    # removing a condition widens the view again
    at.button(key="fb_remove_1").click()
    rerun(at)
    assert metric(at, "Matching CoTs") == count(figures_store, f"cot_id IN ({JUDGE_ROWS} AND value = 1)")


def test_a_problem_figure_range(figures_store):
    at = open_page("pages/explore.py")
    add_condition(at, PASS_RATE)
    at.number_input(key="f_c0_lo").set_value(0.5)
    rerun(at)
    assert at.session_state["current_filter"].conditions[0].lo == 0.5
    assert metric(at, "Matching CoTs") == count(
        figures_store, f"problem_id IN ({STAGE_ROWS} AND metric = 'pass_rate' AND value >= 0.5)") > 0


def test_correctness_is_each_datasets_own_and_says_which_source(figures_store):
    at = open_page("pages/explore.py")
    assert at.selectbox(key="f_correct_source").value == queries.OWN_CORRECTNESS
    caption = as_read(" ".join(c.value for c in at.sidebar.caption))
    assert "tiny: omnithought (13)" in caption and "generic: math-verify (6)" in caption
    at.radio(key="f_correct").set_value("incorrect")
    rerun(at)
    assert metric(at, "Matching CoTs") == count(figures_store, f"{OWN_VERDICT} = 0") > 0
    # one global source instead: the generic dataset's CoTs have no verdict from it
    at.selectbox(key="f_correct_source").select("omnithought")
    rerun(at)
    assert "generic: no verdict (6 CoTs)" in as_read(" ".join(c.value for c in at.sidebar.caption))


def test_an_empty_view_says_which_condition_emptied_it(figures_store):
    at = open_page("pages/explore.py")
    at.multiselect(key="f_datasets").set_value(["generic"])
    add_condition(at, LOGIC)
    info = as_read(at.info[0].value)
    assert info.startswith("No CoT matches the filter")
    assert "without **datasets: generic**: 7 CoTs" in info  # the judge scored only TINY CoTs
    assert f"without **{LOGIC}: has a value**: 6 CoTs" in info  # the generic dataset's CoTs


def test_a_store_without_rv_or_cd_shows_no_rv_cd_controls(qwen_store, app_store):
    app_store(qwen_store)
    at = open_page("pages/explore.py")
    assert not [s for s in at.selectbox if s.key == "f_rv_source"]
    assert "tokens" in at.selectbox(key="f_add_figure").options


# ---------------------------------------------------------------------------- Select


def test_select_conditions_drop_with_their_own_reason(figures_store):
    at = open_page("pages/select.py")
    add_condition(at, LOGIC, "sel_")
    at.slider(key="sel_c0").set_value((1, 1))
    at.checkbox(key="sel_thr_correct").check()
    rerun(at)
    kept = count(figures_store, f"cot_id IN ({JUDGE_ROWS} AND value = 1) AND {OWN_VERDICT} = 1")
    assert metric(at, "Kept CoTs") == kept > 0
    reasons = next(d.value for d in at.dataframe if list(d.value.columns) == ["reason", "cots"])
    shown = dict(zip(reasons["reason"], reasons["cots"]))
    assert shown[f"no {LOGIC}"] == count(figures_store, f"cot_id NOT IN ({JUDGE_ROWS} AND value IS NOT NULL)")
    assert shown[f"{LOGIC} below 1"] == count(figures_store, f"cot_id IN ({JUDGE_ROWS} AND value = 0)")
    sel = at.session_state["current_selection"]
    assert sel.conditions == (Condition(Figure("logic", JUDGE), lo=1),)
    # the dropped table shows the logic value
    assert any(LOGIC in d.value.columns and "cot_id" in d.value.columns for d in at.dataframe)


def test_select_ranks_by_a_problem_figure_and_a_saved_recipe_brings_conditions_back(figures_store):
    at = open_page("pages/select.py")
    at.radio(key="sel_mode").set_value("target")
    rerun(at)
    at.radio(key="sel_tg_within").set_value("score")
    rerun(at)
    assert PASS_RATE in at.selectbox(key="sel_score").options
    at.selectbox(key="sel_score").select(PASS_RATE)
    at.number_input(key="sel_tg_n").set_value(3)
    add_condition(at, CONTAMINATED, "sel_")
    at.radio(key="sel_c0_mode").set_value("has no value")
    rerun(at)
    # p0 and p2 are clean; p2 (pass rate 0.5) ranks first, then p0 (0)
    expected = store.read_rows(
        f"SELECT c.cot_id FROM cots c JOIN ({STAGE_ROWS} AND metric = 'pass_rate') ps USING (problem_id) "
        f"JOIN problem_scores v ON v.problem_id = c.problem_id AND v.metric = 'pass_rate' "
        f"WHERE c.problem_id NOT IN ({STAGE_ROWS} AND metric = 'contaminated') AND {OWN_VERDICT} = 1 "
        "ORDER BY v.value DESC, c.cot_id LIMIT 3", db=figures_store)
    assert metric(at, "Kept CoTs") == 3
    shown = at.session_state["current_selection"]
    from core import selection

    assert selection.kept_ids(shown, db=figures_store).to_list() == sorted(r[0] for r in expected)
    at.text_input(key="sel_recipe_name").input("clean by pass rate")
    at.button(key="sel_save").click()
    rerun(at)
    # change everything, then load the recipe back
    at.button(key="selb_remove_0").click()
    rerun(at)
    at.radio(key="sel_mode").set_value("thresholds")
    rerun(at)
    at.selectbox(key="sel_load_name").select("clean by pass rate")
    at.button(key="sel_load").click()
    rerun(at)
    assert at.session_state["current_selection"] == shown
    assert at.radio(key="sel_c0_mode").value == "has no value" and at.selectbox(key="sel_score").value == PASS_RATE


def test_select_on_data_without_rv_cd_hides_their_controls_and_says_why_capacity_keeps_nothing(qwen_store, app_store):
    app_store(qwen_store)
    at = open_page("pages/select.py")
    keys = {s.key for s in at.slider}
    assert "sel_tokens_range" in keys and not {"sel_rv_range", "sel_cd_range"} & keys
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert titles and all(t.startswith("tokens") for t in titles)
    at.radio(key="sel_mode").set_value("capacity")
    rerun(at)
    total = store.read_rows("SELECT count(*) FROM cots", db=qwen_store)[0][0]
    assert metric(at, "Kept CoTs") == 0
    warnings = as_read(" ".join(w.value for w in at.warning))
    assert "no CoT of this pool has RV and CD" in warnings
    assert f"keeps none of the pool's {total:,} CoTs" in warnings and f"no RV/CD score: {total:,} CoTs" in warnings


def test_distributions_draws_no_chart_for_a_metric_the_matching_cots_lack(figures_store):
    at = open_tab(open_page("pages/distributions.py"), "RV and CD")
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert any(t.startswith("Reasoning Verbosity") for t in titles)
    at.multiselect(key="f_datasets").set_value(["generic"])  # math-verify's verdicts, no RV/CD labels
    rerun(at)
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert not any(t.startswith(("Reasoning Verbosity", "Cognitive Difficulty", "RV ×")) for t in titles)
    rv_source = at.selectbox(key="f_rv_source").value
    assert any(f"None of the 6 matching CoTs has a RV score from {rv_source}" in as_read(i.value) for i in at.info)
    open_tab(at, "Accuracy and Pass@k")
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert any(t.startswith("Accuracy across token budgets") for t in titles)
    facets = open_tab(at, "Length by correctness").selectbox(key="dist_facet").options
    assert "CD level" not in facets
