"""The problem stages in the app (AppTest): the Overview's distinct problem count and its
contamination / near-duplicate tables, and the Reader's "elsewhere" section, on the real
AIME 2024 / MATH500 runs and benchmark files. Numbers are checked against SQL written here."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import store
from core.contamination import run_contamination
from core.ingest import ingest
from core.neardup import run_near_duplicates
from tests.helpers import REALDATA, require_realdata

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def staged_template(tmp_path_factory) -> Path:
    require_realdata()
    db = tmp_path_factory.mktemp("app_problems") / "template.duckdb"
    ingest(str(REALDATA / "qwen25_math_eval" / "outputs"), name="runs", db=db)
    for bench in ("aime24", "math500"):
        ingest(str(REALDATA / "benchmarks" / f"{bench}_test.jsonl"), fmt="benchmark", db=db)
    run_contamination(db)
    run_near_duplicates(db)
    return db


@pytest.fixture
def staged(staged_template, tmp_path, app_store) -> Path:
    target = tmp_path / "store.duckdb"
    shutil.copy(staged_template, target)
    return app_store(target)


def _open(page: str, **state) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    for key, value in state.items():
        at.session_state[key] = value
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def test_overview_counts_each_problem_once_and_shows_contamination(staged):
    at = _open("pages/overview.py")
    rows, distinct = store.read_rows("SELECT count(*), count(DISTINCT question) FROM problems", db=staged)[0]
    assert (rows, distinct) == (1060, 530)
    assert next(m for m in at.metric if m.label == "Problems").value == "530"

    table = next(d.value for d in at.dataframe if "flagged" in d.value.columns)
    flagged = dict(store.read_rows(
        "SELECT benchmark, count(DISTINCT problem_id) FROM contamination_matches WHERE cot_id IS NULL GROUP BY 1", db=staged))
    assert dict(zip(table["benchmark"], table["flagged"])) == flagged == {"aime24": 30, "math500": 500}
    near = next(d.value for d in at.dataframe if "in_clusters" in d.value.columns)
    assert dict(zip(near["dataset"], near["in_clusters"]))["aime24_test"] == 30
    assert at.button(key="overview_run_contamination") and at.button(key="overview_run_near_duplicates")
    # the table counts what the sidebar filter matches: with AIME 2024's problems dropped, none is flagged
    at.radio(key="f_contam_mode").set_value("drop").run()
    at.multiselect(key="f_contam_drop").set_value(["aime24"]).run()
    table = next(d.value for d in at.dataframe if "flagged" in d.value.columns)
    assert {b: (p, n) for b, p, n in zip(table["benchmark"], table["problems"], table["flagged"])} == {
        "aime24": (500, 0), "math500": (500, 500)}


def test_reader_shows_where_else_the_problem_is_and_opens_it(staged):
    bench_id, question = store.read_rows(
        "SELECT problem_id, question FROM problems WHERE dataset_id = (SELECT dataset_id FROM datasets WHERE name = 'aime24_test') "
        "ORDER BY problem_id LIMIT 1", db=staged)[0]
    run_id = store.read_rows("SELECT problem_id FROM problems WHERE question = ? AND problem_id <> ?",
                             [question, bench_id], db=staged)[0][0]
    # the run's problem: the same problem in the benchmark file, and its exact match there
    at = _open("pages/reader.py", reader_problem_id=run_id, **{f"reader_relations_{run_id}": True})
    assert any(e.label.startswith("Elsewhere: 1 same, 1 benchmark match(es), 1 near-duplicate(s)") for e in at.expander)
    open_bench = at.button(key=f"reader_same_{run_id}_{bench_id}")
    assert open_bench.label.startswith("aime24\\_test (benchmark) · key 60 · 0 CoTs")  # markdown-escaped
    assert any("exact (equal normalised question)" in m.value for m in at.markdown)
    assert at.button(key=f"reader_match_open_{run_id}_0")
    open_bench.click().run()
    assert not at.exception
    assert at.session_state["reader_problem_id"] == bench_id


def test_a_store_from_before_these_tables_still_opens(tmp_path, app_store):
    """The app reads with read-only connections, which create no table: a store made before
    problem_keys and the stage tables existed shows its row count and no stage figures."""
    require_realdata()
    db = tmp_path / "old.duckdb"
    ingest(str(REALDATA / "benchmarks" / "aime24_test.jsonl"), fmt="benchmark", db=db)
    with store.connect(db, read_only=False) as con:
        for table in ("problem_keys", "contamination_matches", "contamination_state", "problem_minhash",
                      "near_duplicate_pairs", "problem_scores"):
            con.execute(f"DROP TABLE {table}")
    app_store(db)
    at = _open("pages/overview.py")
    assert next(m for m in at.metric if m.label == "Problems").value == "30"
    problem_id = store.read_rows("SELECT min(problem_id) FROM problems", db=db)[0][0]
    at = _open("pages/reader.py", reader_problem_id=problem_id, **{f"reader_relations_{problem_id}": True})
    assert any(e.label.startswith("Elsewhere: 0 same, 0 benchmark match(es), 0 near-duplicate(s)") for e in at.expander)
    at = _open("pages/explore.py")  # no near-duplicate section, no contamination control: nothing to show
    assert not any(e.label.startswith(("Near-duplicates", "Benchmark contamination")) for e in at.expander)


FIRST_SCHEMA = ("meta", "datasets", "problems", "cots", "score_sources", "scores", "run_metrics")


@pytest.mark.parametrize("page", ["overview", "explore", "reader", "distributions", "agreement", "labels", "compare",
                                  "map", "select", "export", "jobs", "sql"])
def test_every_page_opens_on_a_store_with_only_the_first_schemas_tables(tmp_path, app_store, page):
    """A store made by the first release (only its seven tables; the app's read-only
    connections create none) opens on every page without an error."""
    require_realdata()
    from core.demo import write_omnithought

    db = tmp_path / "first.duckdb"
    ingest(str(REALDATA / "benchmarks" / "aime24_test.jsonl"), fmt="benchmark", db=db)
    write_omnithought(tmp_path / "cots.jsonl", 8, seed=1, text_scale=0.05)  # CoTs, so each page draws its figures
    ingest(str(tmp_path / "cots.jsonl"), db=db)
    with store.connect(db, read_only=False) as con:
        tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
        for table in tables:
            if table not in FIRST_SCHEMA:
                con.execute(f"DROP TABLE {table}")
    app_store(db)
    _open(f"pages/{page}.py")  # asserts no exception


# ---------------------------------------------------------------------------- contamination in every page


def _cots_without(db: Path, benchmarks: tuple[str, ...]) -> int:
    """CoTs whose problem no benchmark of ``benchmarks`` flagged, in plain SQL."""
    return store.read_rows(
        "SELECT count(*) FROM cots WHERE problem_id NOT IN (SELECT problem_id FROM problem_scores "
        "WHERE metric IN (SELECT 'contaminated:' || unnest(?::VARCHAR[])))", [list(benchmarks)], db=db)[0][0]


def _matching(at: AppTest) -> int:
    return int(next(m for m in at.metric if m.label == "Matching CoTs").value.replace(",", ""))


def test_the_sidebar_drops_contaminated_problems_as_plain_conditions(staged):
    import json

    from core.figures import conditions_from_json

    at = _open("pages/explore.py")
    total = store.read_rows("SELECT count(*) FROM cots", db=staged)[0][0]
    assert _matching(at) == total
    at.radio(key="f_contam_mode").set_value("drop").run()
    assert at.multiselect(key="f_contam_drop").value == ["aime24", "math500"]  # every checked benchmark at first
    at.multiselect(key="f_contam_drop").set_value(["aime24"]).run()
    assert not at.exception and not at.error
    expected = _cots_without(staged, ("aime24",))
    assert _matching(at) == expected and 0 < expected < total
    # the URL carries ordinary conditions: one 'has no value' per benchmark, nothing else
    conditions = conditions_from_json(at.query_params["conditions"])
    assert [c.as_dict() for c in conditions] == [{"level": "problem", "source": "contamination",
                                                  "metric": "contaminated:aime24", "lo": None, "hi": None, "missing": True}]
    assert at.session_state["f_conds"] == []  # shown by the contamination control, not as a generic condition

    # the same URL opened afresh shows the control as it was
    fresh = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    fresh.query_params["conditions"] = json.dumps([c.as_dict() for c in conditions])
    fresh.run().switch_page("pages/explore.py").run()
    assert fresh.radio(key="f_contam_mode").value == "drop"
    assert fresh.multiselect(key="f_contam_drop").value == ["aime24"]
    assert _matching(fresh) == expected

    # only the contaminated ones: a single 'has a value' condition (or contaminated >= 1 for any)
    at.radio(key="f_contam_mode").set_value("only").run()
    at.selectbox(key="f_contam_only").set_value("aime24").run()
    assert _matching(at) == total - expected
    at.selectbox(key="f_contam_only").set_value("(any benchmark)").run()
    flagged_any = store.read_rows("SELECT count(*) FROM cots WHERE problem_id IN (SELECT problem_id FROM problem_scores "
                                  "WHERE metric = 'contaminated' AND value = 1)", db=staged)[0][0]
    assert _matching(at) == flagged_any == total  # every run's problem is one of the two benchmarks'
    at.radio(key="f_contam_mode").set_value("all").run()
    assert _matching(at) == total and "conditions" not in at.query_params


def test_select_drops_the_problems_contaminated_with_the_chosen_benchmarks(staged):
    at = _open("pages/select.py")
    at.radio(key="sel_contam_mode").set_value("drop").run()
    at.multiselect(key="sel_contam_drop").set_value(["math500"]).run()
    assert not at.exception and not at.error
    reasons = next(d.value for d in at.dataframe if list(d.value.columns) == ["reason", "cots"])
    dropped = store.read_rows("SELECT count(*) FROM cots WHERE problem_id IN (SELECT problem_id FROM problem_scores "
                              "WHERE metric = 'contaminated:math500')", db=staged)[0][0]
    assert dict(zip(reasons["reason"], reasons["cots"])) == {
        "contaminated:math500 · contamination (per problem) has a value": dropped}
    kept = next(m for m in at.metric if m.label == "Kept CoTs").value
    assert int(kept.replace(",", "")) == _cots_without(staged, ("math500",))
    # the selection carries the condition, so a recipe (and the manifest) records it
    sel = at.session_state["current_selection"]
    assert [c.describe() for c in sel.conditions] == ["contaminated:math500 · contamination (per problem): has no value"]
