"""The difficulty pieces of the pages, through Streamlit's AppTest: Distributions' efficiency by
model against the hand-computed example of tests/test_efficiency.py, and Select's picker adding a
student's failures, with the kept CoTs and the student's counts checked against the store."""

from __future__ import annotations

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

from core.difficulty import StudentOptions, run_student
from helpers import ingest_generic, open_tab, student_store, whitespace_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def open_page(page: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def test_distributions_show_each_models_efficiency(tmp_path, app_store):
    db = tmp_path / "models.duckdb"
    rows = [{"id": f"q{i}", "question": f"Question {i}?", "answer": "1", "model": m, "correct": ok,
             "response": " ".join(["w"] * n)}
            for i, (m, n, ok) in enumerate((("M", 1000, True), ("M", 3000, False), ("M", 2000, True), ("N", 500, False)))]
    ingest_generic(db, rows, "models", tokenizer=whitespace_tokenizer(tmp_path))
    app_store(db)
    at = open_tab(open_page("pages/distributions.py"), "Efficiency by model")
    charts = {}
    for chart in at.get("plotly_chart"):
        spec = json.loads(chart.proto.spec)
        charts[spec["layout"]["title"]["text"].split("<br>")[0]] = spec
    # M: 2 correct of 6,000 tokens; N: 0 of 500 (no tokens per correct answer)
    acc = charts["Accuracy per 1,000 tokens (4 CoTs)"]["data"][0]
    assert dict(zip(acc["x"], acc["y"])) == {"M": 1 / 3, "N": 0.0}
    per_correct = charts["Tokens per correct answer (4 CoTs)"]["data"][0]
    assert dict(zip(per_correct["x"], per_correct["y"])) == {"M": 3000}
    assert "No matching CoT has an overthinking tail yet" in " ".join(c.value for c in at.caption)


def test_select_picker_keeps_the_teacher_cots_of_the_problems_the_student_fails(tmp_path, app_store):
    db = student_store(tmp_path)  # teacher: 3 problems x 2 CoTs; the student fails t1 (0 of 4), solves t0 (3 of 4)
    name = run_student(db, StudentOptions(evaluation="student eval", ks=(2,)))["source"]
    app_store(db)
    at = open_page("pages/select.py")
    at.selectbox(key="sel_difficulty_preset").select(f"the student fails (no correct sample) · {name}").run()
    assert not at.exception, [e.value for e in at.exception]
    kept = int(next(m for m in at.metric if m.label == "Kept CoTs").value.replace(",", ""))
    assert kept == 2  # t1's two teacher CoTs; the evaluation's own CoTs have no student figure
    report = next(d.value for d in at.dataframe if "cots_of_failed" in d.value.columns)
    teacher = report[report["dataset"] == "teacher"].iloc[0]
    assert (teacher["matched"], teacher["failed"], teacher["cots_of_failed"]) == (2, 1, 2)
