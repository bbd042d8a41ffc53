"""The Select and Export pages through AppTest on the generated demo store: the counts they
show are checked against SQL written here, independently of core.selection."""

from __future__ import annotations

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

from core import recipes, store
from tests.helpers import metric, rerun

ROOT = Path(__file__).resolve().parents[1]


def open_select() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page("pages/select.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


# Each demo CoT has its RV and CD from one judge's source; correctness from the dataset's labels.
THOUGHTX_SQL = """
SELECT count(*) FROM cots c
WHERE EXISTS (SELECT 1 FROM scores s JOIN score_sources ss USING (source_id)
              WHERE s.cot_id = c.cot_id AND s.metric = 'rv' AND ss.name LIKE 'omnithought (%' AND s.value BETWEEN 3 AND 5)
  AND EXISTS (SELECT 1 FROM scores s JOIN score_sources ss USING (source_id)
              WHERE s.cot_id = c.cot_id AND s.metric = 'correct' AND ss.name = 'omnithought' AND s.value = 1)
"""


def set_thoughtx(at: AppTest) -> AppTest:
    at.slider(key="sel_rv_range").set_value((3, 5))
    at.checkbox(key="sel_thr_correct").check()
    return rerun(at)


def test_a_threshold_slider_keeps_what_sql_counts(demo_store, app_store):
    app_store(demo_store)
    at = open_select()
    total = store.read_rows("SELECT count(*) FROM cots", db=demo_store)[0][0]
    assert metric(at, "Kept CoTs") == total and metric(at, "Dropped CoTs") == 0
    set_thoughtx(at)
    expected = store.read_rows(THOUGHTX_SQL, db=demo_store)[0][0]
    assert 0 < expected < total
    assert metric(at, "Kept CoTs") == expected
    assert metric(at, "Dropped CoTs") == total - expected
    figures = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    rv = next(f for f in figures if f["layout"]["title"]["text"].startswith("RV"))
    kept_bars = dict(zip(rv["data"][0]["x"], rv["data"][0]["y"]))
    assert sum(kept_bars.values()) == expected and set(k for k, v in kept_bars.items() if v) <= {3, 4, 5}
    assert (rv["layout"]["shapes"][0]["x0"], rv["layout"]["shapes"][0]["x1"]) == (2.5, 5.5)
    # the dropped preview pages through every dropped CoT
    assert f"of {total - expected:,} dropped" in " ".join(c.value for c in at.caption)
    # each dropped row shows its readable id (issue 11), computed here from the store
    dropped = next(d.value for d in at.dataframe if "reason" in d.value.columns and "cot_id" in d.value.columns)
    truth = dict(store.read_rows(
        "SELECT c.cot_id, d.name || ':' || p.problem_key || ':' || (SELECT count(*) FROM cots o "
        "WHERE o.problem_id = c.problem_id AND o.cot_id < c.cot_id) FROM cots c JOIN problems p USING (problem_id) "
        "JOIN datasets d ON d.dataset_id = c.dataset_id", db=demo_store))
    assert len(dropped) > 0 and list(dropped.columns)[0] == "id"
    assert [truth[c].replace(" (generated)", "-generated") for c in dropped["cot_id"]] == dropped["id"].tolist()


def test_capacity_mode_shows_the_formula_and_draws_one_cot_per_problem(demo_store, app_store):
    app_store(demo_store)
    at = open_select()
    at.radio(key="sel_mode").set_value("capacity")
    rerun(at)
    assert any("\\beta" in latex.value for latex in at.latex)
    problems = store.read_rows("SELECT count(DISTINCT problem_id) FROM cots", db=demo_store)[0][0]
    assert metric(at, "Kept CoTs") == problems
    at.selectbox(key="sel_cap_preset").select("32B")
    rerun(at)
    assert at.number_input(key="sel_cap_c").value == 7.0
    assert at.session_state["current_selection"].rule.capacity == 7.0


MIX_BINS_SQL = """
SELECT CASE WHEN s.value < 3 THEN 0 WHEN s.value < 6 THEN 1 ELSE 2 END AS bin, count(*) FROM cots c
JOIN scores s ON s.cot_id = c.cot_id AND s.metric = 'cd'
JOIN score_sources ss ON ss.source_id = s.source_id AND ss.name LIKE 'omnithought (%'
WHERE s.value BETWEEN 0 AND 10
  AND EXISTS (SELECT 1 FROM scores v JOIN score_sources vs USING (source_id)
              WHERE v.cot_id = c.cot_id AND v.metric = 'correct' AND vs.name = 'omnithought' AND v.value = 1)
GROUP BY bin
"""


def test_capacity_says_it_is_a_reconstruction_and_offers_absolute_weights(demo_store, app_store):
    app_store(demo_store)
    at = open_select()
    at.radio(key="sel_mode").set_value("capacity")
    rerun(at)
    captions = " ".join(c.value for c in at.caption)
    assert "this project's reconstruction, not the paper's" in captions
    problems = store.read_rows("SELECT count(DISTINCT problem_id) FROM cots", db=demo_store)[0][0]
    at.radio(key="sel_cap_weights").set_value("absolute")
    rerun(at)
    assert at.session_state["current_selection"].rule.weights == "absolute"
    assert any("u_i < w_i" in latex.value for latex in at.latex)
    assert 0 < metric(at, "Kept CoTs") < problems  # some problems give none


def test_rvcd_mix_keeps_what_sql_counts_per_bin(demo_store, app_store):
    app_store(demo_store)
    at = open_select()
    at.radio(key="sel_mode").set_value("rvcd_mix")
    rerun(at)
    per_bin = dict(store.read_rows(MIX_BINS_SQL, db=demo_store))
    assert metric(at, "Kept CoTs") == sum(per_bin.values())  # every candidate when no per-bin limit
    at.number_input(key="sel_mix_n").set_value(40)
    rerun(at)
    assert metric(at, "Kept CoTs") == sum(min(40, n) for n in per_bin.values())
    assert "[0, 3) → 2; [3, 6) → 6; [6, 10] → 10" in " ".join(c.value for c in at.caption)
    at.text_input(key="sel_mix_bins").input("0, 3, x")
    at.run()
    assert any("CD bin edges are numbers" in e.value for e in at.error)


def test_a_saved_recipe_is_a_file_that_loads_back(demo_store, app_store):
    app_store(demo_store)
    at = set_thoughtx(open_select())
    shown = at.session_state["current_selection"]
    at.text_input(key="sel_recipe_name").input("ThoughtX RV 3-5")
    at.button(key="sel_save").click()
    rerun(at)
    path = store.data_dir() / "recipes" / "ThoughtX-RV-3-5.json"
    assert path.exists()
    assert recipes.load("ThoughtX RV 3-5").selection == shown
    # move away, then load it back
    at.radio(key="sel_mode").set_value("per_problem")
    rerun(at)
    at.selectbox(key="sel_load_name").select("ThoughtX RV 3-5")
    at.button(key="sel_load").click()
    rerun(at)
    assert at.radio(key="sel_mode").value == "thresholds"
    assert tuple(at.slider(key="sel_rv_range").value) == (3, 5)
    assert at.session_state["current_selection"] == shown
    assert metric(at, "Kept CoTs") == store.read_rows(THOUGHTX_SQL, db=demo_store)[0][0]


def test_recipe_form_saves_only_on_its_button_and_a_second_save_keeps_the_description(demo_store, app_store):
    """Issue 11: Enter in the name box saved the recipe (its description lost), and the Save
    button then refused the name as already saved."""
    app_store(demo_store)
    at = set_thoughtx(open_select())
    form = next(f for f in at.get("form") if f.proto.form.form_id == "sel_save_form")
    assert form.proto.form.enter_to_submit is False  # Enter in a box of this form does not submit it
    # what Enter used to do: a save with the name alone
    at.text_input(key="sel_recipe_name").input("ThoughtX")
    at.button(key="sel_save").click()
    rerun(at)
    # then the description, and Save again: the same selection is updated, not refused
    at.text_input(key="sel_recipe_description").input("RV 3-5, correct only")
    at.button(key="sel_save").click()
    rerun(at)
    assert any(s.value.startswith("Updated ") for s in at.success)
    assert recipes.load("ThoughtX").description == "RV 3-5, correct only"
    # another selection under that name is still refused unless 'Replace' is ticked
    at.radio(key="sel_mode").set_value("per_problem")
    rerun(at)
    at.button(key="sel_save").click()
    at.run()
    assert any("is already saved" in e.value for e in at.error)


def test_export_writes_as_many_rows_as_are_kept(demo_store, app_store):
    app_store(demo_store)
    at = set_thoughtx(open_select())
    kept = metric(at, "Kept CoTs")
    at.switch_page("pages/export.py")
    rerun(at)
    assert at.radio(key="exp_source").value == "select"
    assert metric(at, "CoTs to export") == kept
    at.selectbox(key="exp_format").select("jsonl")
    rerun(at)
    assert at.radio(key="exp_thinking").disabled  # JSONL keeps thinking and solution apart
    at.selectbox(key="exp_format").select("trl")
    rerun(at)
    at.radio(key="exp_thinking").set_value("think_tags")
    at.button(key="exp_go").click()
    rerun(at)
    (written,) = list((store.data_dir() / "exports").glob("*.jsonl"))
    rows = [json.loads(line) for line in written.read_text().splitlines()]
    assert len(rows) == kept
    assert all(r["messages"][1]["content"].startswith("<think>\n") for r in rows)
    manifest = json.loads(written.with_name(written.name + ".manifest.json").read_text())
    assert manifest["counts"]["rows"] == kept and manifest["format"] == "trl"
    assert at.get("download_button")
    assert str(written) in at.success[0].value
