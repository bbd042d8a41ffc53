"""Agreement between score sources: kappas checked against hand computation, the pairing SQL on
a real store, and the Agreement page (cell picking, pagination, opening the Reader)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import agreement, store
from core.agreement import Side
from core.formats import ReadOptions
from core.ingest import ingest
from core.queries import CotFilter

ROOT = Path(__file__).resolve().parents[1]

# Ten CoTs scored 0-2 by two sources. Rows A, columns B:
#        b=0 b=1 b=2 | total
#   a=0    2   1   0 |  3
#   a=1    1   2   1 |  4
#   a=2    1   0   2 |  3
#   total  4   3   3 | 10
# p_o = 6/10; p_e = (3*4 + 4*3 + 3*3)/100 = 0.33; kappa = 0.27 / 0.67.
# Quadratic weights (i-j)^2: observed 7/10, expected 1.30 (see the sum in the test): 1 - 0.7/1.3 = 6/13.
PAIRS = [(0, 0), (0, 0), (0, 1), (1, 1), (1, 1), (1, 2), (2, 2), (2, 2), (2, 0), (1, 0)]


def test_cohen_kappa_of_a_textbook_two_by_two():
    # p_o = 35/50 = 0.7, p_e = (25*30 + 25*20)/2500 = 0.5, kappa = 0.2/0.5
    assert agreement.cohen_kappa([[20, 5], [10, 15]]) == pytest.approx(0.4)


def test_kappas_by_hand_on_three_levels():
    matrix = [[2, 1, 0], [1, 2, 1], [1, 0, 2]]
    assert agreement.cohen_kappa(matrix) == pytest.approx(0.27 / 0.67)
    # expected weighted disagreement: rows (.3,.4,.3), columns (.4,.3,.3)
    expected = 1 * .3 * .3 + 4 * .3 * .3 + 1 * .4 * .4 + 1 * .4 * .3 + 4 * .3 * .4 + 1 * .3 * .3
    assert expected == pytest.approx(1.30)
    assert agreement.cohen_kappa(matrix, weights="quadratic") == pytest.approx(1 - 0.7 / 1.3)
    assert agreement.cohen_kappa(matrix, weights="quadratic") == pytest.approx(6 / 13)
    # empty levels change nothing: the same pairs inside a 0-9 matrix
    padded = [[0] * 10 for _ in range(10)]
    for i in range(3):
        for j in range(3):
            padded[i][j] = matrix[i][j]
    assert agreement.cohen_kappa(padded) == pytest.approx(0.27 / 0.67)
    assert agreement.cohen_kappa(padded, weights="quadratic", values=list(range(10))) == pytest.approx(6 / 13)


def test_kappa_is_undefined_when_chance_explains_everything():
    assert agreement.cohen_kappa([[5, 0], [0, 0]]) is None  # both sides always say 0
    assert agreement.cohen_kappa([[0, 0], [0, 0]]) is None
    assert agreement.cohen_kappa([[3, 0], [0, 3]]) == 1.0
    assert agreement.cohen_kappa([[0, 3], [3, 0]]) == -1.0


@pytest.fixture
def two_source_store(tmp_path) -> Path:
    """Ten CoTs through the real generic ingest with a label source 'labels' (rv), then a
    judge source 'judge-x' written as a judge run would (rv, and a fused rv with decimals)."""
    db = tmp_path / "agree.duckdb"
    src = tmp_path / "cots.jsonl"
    with open(src, "w") as fh:
        for i, (a, _) in enumerate(PAIRS):
            fh.write(json.dumps({"id": f"p{i // 2}", "question": f"Question {i // 2} <script>alert(1)</script>",
                                 "response": f"Answer {i}", "model": "teacher", "sample": i % 2, "rv": a}) + "\n")
    ingest(str(src), fmt="generic", name="labels", db=db,
           opts=ReadOptions(mapping={"id": "id", "question": "question", "response": "response", "model": "model",
                                     "sample": "sample", "score:rv": "rv"}))
    ids = [r[0] for r in store.read_rows("SELECT cot_id FROM cots ORDER BY cot_id", db=db)]
    with store.connect(db, read_only=False) as con:
        source_id = store.ensure_source(con, "judge-x", "judge", model="tiny")
        for cot_id, (_, b) in zip(ids, PAIRS):
            con.execute("INSERT INTO scores VALUES (?, ?, 'rv', ?, ?, NULL)", [cot_id, source_id, float(b), str(b)])
            # a fused value 0.4 above b: rounds back to b, differs by 0.4 in the mean
            con.execute("INSERT INTO scores VALUES (?, ?, 'rv_fused', ?, NULL, NULL)", [cot_id, source_id, b + 0.4])
        # one unusable judge answer: not a pair
        con.execute("INSERT INTO scores VALUES (?, ?, 'logic', NULL, 'maybe', 'no score tag')", [ids[0], source_id])
    return db


def test_pairs_and_statistics_on_a_store(two_source_store):
    a, b = Side(("labels",), "rv"), Side(("judge-x",), "rv")
    frame = agreement.pairs(a, b, db=two_source_store)
    assert frame.height == 10
    assert sorted(zip(frame["a_level"], frame["b_level"])) == sorted(PAIRS)
    assert agreement.levels(frame) == list(range(10))  # a 0-9 scale shows every level
    matrix = agreement.confusion(frame)
    assert [row[:3] for row in matrix[:3]] == [[2, 1, 0], [1, 2, 1], [1, 0, 2]]
    assert sum(map(sum, matrix)) == 10
    stats = agreement.statistics(frame)
    assert stats["n"] == 10
    assert stats["exact"] == pytest.approx(0.6)
    assert stats["within_1"] == pytest.approx(0.9)  # only (2, 0) is two apart
    assert stats["kappa"] == pytest.approx(0.27 / 0.67)
    assert stats["weighted_kappa"] == pytest.approx(6 / 13)
    assert stats["mad"] == pytest.approx(0.5)

    fused = agreement.pairs(a, Side(("judge-x",), "rv_fused"), db=two_source_store)
    fused_stats = agreement.statistics(fused)
    assert fused_stats["kappa"] == pytest.approx(stats["kappa"])  # rounded levels are the same
    # |a - (b + 0.4)|: 0.4 where a == b (6 pairs); (0,1) and (1,2) give 1.4, (2,0) 1.6, (1,0) 0.6
    assert fused_stats["mad"] == pytest.approx((6 * 0.4 + 1.4 + 1.4 + 1.6 + 0.6) / 10)

    # the filter narrows the pairs; a source without a value for the metric gives no pairs
    narrowed = agreement.pairs(a, b, CotFilter(problem_ids=(frame["problem_id"][0],)), db=two_source_store)
    assert narrowed.height == 2
    assert agreement.pairs(a, Side(("judge-x",), "logic"), db=two_source_store).height == 0


def test_cell_page_lists_and_pages_a_cell(two_source_store):
    a, b = Side(("labels",), "rv"), Side(("judge-x",), "rv")
    rows, total = agreement.cell_page(a, b, None, 1, 1, db=two_source_store)
    assert total == 2 and rows.height == 2
    assert set(rows["a"]) == {1.0} and set(rows["b"]) == {1.0}
    first, total = agreement.cell_page(a, b, None, 0, 0, limit=1, db=two_source_store)
    second, _ = agreement.cell_page(a, b, None, 0, 0, offset=1, limit=1, db=two_source_store)
    assert total == 2 and first["cot_id"][0] < second["cot_id"][0]
    assert agreement.cell_page(a, b, None, 0, 2, db=two_source_store)[1] == 0


def test_default_sides_prefer_a_judge_against_the_labels(two_source_store, demo_store):
    a, b = agreement.default_sides(agreement.metric_sources(db=two_source_store))
    assert (a, b) == (Side(("judge-x",), "rv"), Side(("labels",), "rv"))
    # the demo has no judge: the label's correctness against the verifier's
    a, b = agreement.default_sides(agreement.metric_sources(db=demo_store))
    assert (a.metric, b.metric, b.sources) == ("correct", "correct", ("math-verify",))


def _app(tmp_path: Path) -> AppTest:
    """The Agreement and Reader pages under st.navigation, as app.py serves them (the pages/
    folder is linked beside this script so `st.switch_page("pages/reader.py")` resolves)."""
    os.symlink(ROOT / "pages", tmp_path / "pages")
    script = tmp_path / "agreement_app.py"
    script.write_text(
        "import streamlit as st\n"
        "st.navigation([st.Page('pages/agreement.py', title='Agreement', url_path='agreement', default=True),\n"
        "               st.Page('pages/reader.py', title='Reader', url_path='reader')]).run()\n"
    )
    return AppTest.from_file(str(script), default_timeout=60)


def test_agreement_page_shows_the_matrix_and_opens_a_cell_in_the_reader(app_store, two_source_store, tmp_path):
    app_store(two_source_store)
    at = _app(tmp_path).run()
    assert not at.exception, at.exception
    assert at.selectbox(key="agr_a_metric").value == "rv"
    assert at.multiselect(key="agr_a_sources").value == ["judge-x"]
    assert at.multiselect(key="agr_b_sources").value == ["labels"]
    shown = {m.label: m.value for m in at.metric}
    assert shown["CoTs scored by both"] == "10"
    assert shown["Exact agreement"] == "60.0%"
    assert shown["Within ±1"] == "90.0%"
    assert shown["Cohen's kappa"] == f"{0.27 / 0.67:.3f}"
    assert shown["Quadratic-weighted kappa"] == f"{6 / 13:.3f}"
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    z = spec["data"][0]["z"]  # A (judge-x) down, B (labels) across: the transpose of PAIRS' table
    assert [row[:3] for row in z[:3]] == [[2, 1, 1], [1, 2, 0], [0, 1, 2]]
    # plotly cannot select heatmap cells: one invisible point per cell takes the click
    cells = spec["data"][1]
    assert cells["type"] == "scatter" and len(cells["x"]) == 100
    assert (cells["x"][10], cells["y"][10], cells["customdata"][10]) == ("0", "1", 1)  # B = 0, A = 1: one CoT
    assert spec["layout"]["hoverdistance"] == -1

    # pick the cell A = 1, B = 0 (what a click on it does): its one CoT is listed
    at.selectbox(key="agr_cell_a").set_value(1)
    at = at.selectbox(key="agr_cell_b").set_value(0).run()
    table = at.dataframe[0].value
    assert len(table) == 1 and (table["a"].tolist(), table["b"].tolist()) == ([1.0], [0.0])
    # the question's HTML is data: shown as table text, never as markup
    assert "<script>" in table["question"][0]
    cot_id, problem_id = int(table["cot_id"][0]), int(table["problem_id"][0])
    at = at.button(key="agr_open").click().run()
    assert not at.exception, at.exception
    assert at.session_state["reader_problem_id"] == problem_id
    assert at.session_state["reader_cot_id"] == cot_id
    assert at.title[0].value == "Reader"


def test_agreement_page_says_when_the_sources_share_no_cot(app_store, two_source_store, tmp_path):
    app_store(two_source_store)
    at = _app(tmp_path).run()
    at = at.selectbox(key="agr_b_metric").set_value("logic").run()
    assert not at.exception
    assert any("No CoT matching the filter has a value from both sides" in i.value for i in at.info)


def _table(at, column: str):
    """The dataframe on the page that has ``column`` (st.dataframe's key reaches AppTest only
    for selectable tables)."""
    found = [d.value for d in at.dataframe if column in d.value.columns]
    assert len(found) == 1, [list(d.value.columns) for d in at.dataframe]
    return found[0]


def test_cell_list_shows_both_answers_and_the_reference_and_splits_by_model(app_store, qwen_store, tmp_path):
    """Issue 11: Agreement's cell list shows, for each CoT, both sources' answers (the harness's
    pred, the extracted answer math-verify checks) and the reference, and can be split by model
    on the page. Checked against the store with SQL written here."""
    app_store(qwen_store)
    at = _app(tmp_path).run()
    at.selectbox(key="agr_a_metric").set_value("correct").run()
    at.multiselect(key="agr_a_sources").set_value(["harness"]).run()
    at.multiselect(key="agr_b_sources").set_value(["math-verify"]).run()
    assert not at.exception, at.exception
    verdicts = ("SELECT c.cot_id, c.model, h.value AS a, m.value AS b FROM cots c "
                "JOIN scores h ON h.cot_id = c.cot_id AND h.source_id = (SELECT source_id FROM score_sources WHERE name = 'harness') "
                "JOIN scores m ON m.cot_id = c.cot_id AND m.source_id = (SELECT source_id FROM score_sources WHERE name = 'math-verify') "
                "WHERE h.value IS NOT NULL AND m.value IS NOT NULL")
    per_model = dict(store.read_rows(f"SELECT model, count(*) FROM ({verdicts}) GROUP BY 1", db=qwen_store))
    exact = dict(store.read_rows(f"SELECT model, avg((a = b)::INT) FROM ({verdicts}) GROUP BY 1", db=qwen_store))
    at.toggle(key="agr_split").set_value(True).run()
    split = _table(at, "within_1")
    assert dict(zip(split["model"], split["n"])) == per_model
    for model, share in zip(split["model"], split["exact"]):
        assert share == pytest.approx(exact[model])

    # the cell where the harness says correct and math-verify says wrong
    at.selectbox(key="agr_cell_a").set_value(1)
    at = at.selectbox(key="agr_cell_b").set_value(0).run()
    disagree = store.read_rows(f"SELECT model, count(*) FROM ({verdicts}) WHERE a = 1 AND b = 0 GROUP BY 1 ORDER BY 2 DESC",
                               db=qwen_store)
    assert disagree and sum(n for _, n in disagree) > 0
    rows = _table(at, "data_answer")
    truth = {r[0]: r[1:] for r in store.read_rows(
        "SELECT c.cot_id, json_extract_string(c.extra, '$.harness_pred'), c.answer, p.reference_answer, h.raw "
        "FROM cots c JOIN problems p USING (problem_id) JOIN scores h ON h.cot_id = c.cot_id "
        "AND h.source_id = (SELECT source_id FROM score_sources WHERE name = 'harness')", db=qwen_store)}
    assert len(rows) == min(25, sum(n for _, n in disagree))
    for row in rows.to_dict("records"):
        pred, answer, reference, raw = truth[row["cot_id"]]
        shown = tuple(None if isinstance(v, float) and math.isnan(v) else v  # pandas shows None as NaN
                      for v in (row["data_answer"], row["answer"], row["reference"], row["a_raw"]))
        assert shown == (pred, answer, reference, raw)
        assert row["readable_id"].startswith("qwen25-math-eval:")
    # one model's CoTs of the cell, without leaving the page
    model, n = disagree[0]
    at = at.selectbox(key="agr_cell_model").set_value(model).run()
    rows = _table(at, "data_answer")
    assert set(rows["model"]) == {model} and len(rows) == min(25, n)
    assert f"{n:,} CoTs" in next(c.value for c in at.caption if c.value.startswith("A = 1, B = 0"))
