"""Labelling in the app through AppTest (Reader, Explore, Labels, Agreement) on the demo store
built by the real ingest: each click's label is read back from the labels themselves, and
where the focus goes is checked against the store's own order of CoTs and problems."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import agreement, labels, queries, store
from core.queries import CotFilter

ROOT = Path(__file__).resolve().parents[1]


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


def click(at: AppTest, key: str) -> AppTest:
    at.button(key=key).click()
    return rerun(at)


def problem_cots(db, problem_id: int) -> list[int]:
    """The problem's CoTs in the Reader's order (model, sample, id)."""
    with store.labels_off():
        return [r[0] for r in store.read_rows(
            "SELECT cot_id FROM cots WHERE problem_id = ? ORDER BY model, sample_idx, cot_id", [problem_id], db=db)]


def first_problems(db, n: int = 2) -> list[int]:
    with store.labels_off():
        return [r[0] for r in store.read_rows("SELECT DISTINCT problem_id FROM cots ORDER BY 1 LIMIT ?", [n], db=db)]


def mine(db, cot_id: int, who: str) -> dict:
    return labels.mine(labels.labels_of([cot_id], db=db), cot_id, who)


@pytest.fixture
def labelled_app(demo_store, app_store, monkeypatch):
    monkeypatch.setenv("THOUGHTSCOPE_USER", "alice")
    monkeypatch.delenv("THOUGHTSCOPE_READ_ONLY", raising=False)
    return app_store(demo_store)


def test_a_labelling_pass_in_the_reader_records_each_label_and_moves_on(labelled_app):
    db = labelled_app
    first, second = first_problems(db)
    cots = problem_cots(db, first)
    assert len(cots) >= 5
    at = open_page("pages/reader.py", reader_problem_id=first)
    assert "label_v9" in [b.key for b in at.button]  # the panel is on the first CoT
    click(at, "label_v7")
    assert mine(db, cots[0], "alice")["rv"] == 7
    assert at.session_state["reader_cot_id"] == cots[1]
    click(at, "label_next_scale")  # M: the digits now label CD
    click(at, "label_v3")
    assert mine(db, cots[1], "alice") == {"cd": 3, "tags": [], "steps": {}}
    assert at.session_state["reader_cot_id"] == cots[2]
    click(at, "label_flag_exclude")
    assert mine(db, cots[2], "alice")["flag"] == "exclude" and at.session_state["reader_cot_id"] == cots[3]
    at.multiselect(key="label_tags").set_value(["Loops  Forever"])
    rerun(at)
    at.text_area(key=f"label_note_{cots[3]}").input("restarts the proof three times")
    at.button[[b.label for b in at.button].index("Save the note")].click()
    rerun(at)
    assert mine(db, cots[3], "alice") == {"tags": ["loops forever"], "note": "restarts the proof three times",
                                          "steps": {}}
    assert at.session_state["reader_cot_id"] == cots[3]  # tags and notes do not move on
    click(at, "label_skip")
    assert at.session_state["reader_cot_id"] == cots[4] and mine(db, cots[3], "alice")["tags"]
    # the labelled CoTs show their labels, and the CoT's scores table has the person as a source
    badges = [m.value for m in at.markdown if "violet-badge" in m.value]
    assert any(b == ":violet-badge[alice: RV 7]" for b in badges)
    human_rows = [r for d in at.dataframe if "source" in d.value.columns
                  for r in d.value[d.value["source"] == "human: alice"].to_dict("records")]
    assert {(r["metric"], r["value"]) for r in human_rows} == {("rv", 7.0), ("cd", 3.0), ("flag:exclude", 1.0),
                                                               ("tag:loops forever", 1.0), ("note", 1.0)}
    # the last CoT of the problem: a label moves on to the next problem in the filter
    click(at, f"label_focus_{cots[-1]}")
    assert at.session_state["reader_cot_id"] == cots[-1]
    click(at, "label_v5")
    assert mine(db, cots[-1], "alice")["cd"] == 5
    assert at.session_state["reader_problem_id"] == second and at.session_state["reader_cot_id"] is None
    assert "label_v0" in [b.key for b in at.button]  # the panel is on the next problem's first CoT


def test_a_read_only_server_takes_labels_from_known_users_only(demo_store, app_store, monkeypatch):
    db = app_store(demo_store)
    monkeypatch.setenv("THOUGHTSCOPE_READ_ONLY", "1")
    monkeypatch.delenv("THOUGHTSCOPE_USER", raising=False)
    problem = first_problems(db, 1)[0]
    at = open_page("pages/reader.py", reader_problem_id=problem)
    assert not [t for t in at.text_input if t.key == "annotator_name"]
    assert not [b for b in at.button if b.key and b.key.startswith("label_v")]
    assert any("read-only" in i.value for i in at.info)
    monkeypatch.setenv("THOUGHTSCOPE_USER", "dana@lab.org")
    rerun(at)
    click(at, "label_v1")
    assert mine(db, problem_cots(db, problem)[0], "dana@lab.org")["rv"] == 1


def test_without_a_known_user_a_typed_name_labels(demo_store, app_store, monkeypatch):
    db = app_store(demo_store)
    monkeypatch.delenv("THOUGHTSCOPE_USER", raising=False)
    monkeypatch.delenv("THOUGHTSCOPE_READ_ONLY", raising=False)
    problem = first_problems(db, 1)[0]
    at = open_page("pages/reader.py", reader_problem_id=problem)
    assert not [b for b in at.button if b.key == "label_v0"]
    at.text_input(key="annotator_name").input("carol")
    rerun(at)
    click(at, "label_v2")
    assert mine(db, problem_cots(db, problem)[0], "carol")["rv"] == 2


def test_a_queue_from_the_labels_page_is_worked_through_in_the_reader(labelled_app):
    db = labelled_app
    at = open_page("pages/labels.py")
    at.text_input(key="lab_q_name").input("first pass")
    at.number_input(key="lab_q_n").set_value(4)
    at.number_input(key="lab_q_seed").set_value(3)
    rerun(at)
    click(at, "lab_q_create")
    made = labels.queues(db=db).to_dicts()
    assert [q["name"] for q in made] == ["first pass"] and made[0]["size"] == 4
    items = labels.queue(made[0]["queue_id"], db=db)["items"]
    expected = sorted(queries.page(CotFilter(), limit=10_000, db=db)["cot_id"].to_list(),
                      key=lambda c: labels_uniform(3, c))[:4]
    assert items["cot_id"].to_list() == expected
    click(at, "lab_q_open")  # to the Reader, on the queue's first CoT
    at.switch_page("pages/reader.py")  # (AppTest's next run would run the page it last switched to)
    rerun(at)
    assert at.session_state["reader_cot_id"] == expected[0]
    assert [p.proto.text for p in at.get("progress")] == ["0 of 4 labelled by you"], [p.proto for p in at.get("progress")]
    click(at, "label_v4")
    assert mine(db, expected[0], "alice")["rv"] == 4
    assert at.session_state["reader_cot_id"] == expected[1]
    assert at.session_state["reader_problem_id"] == queries.problem_of_cot(expected[1], db=db)
    assert [p.proto.text for p in at.get("progress")] == ["1 of 4 labelled by you"]


def labels_uniform(seed: int, cot_id: int) -> float:
    from core.selection import uniform

    return uniform(seed, cot_id)


def test_flag_and_tag_filters_from_the_labels_page_narrow_every_page_and_follow_new_labels(labelled_app):
    db = labelled_app
    ids = [r[0] for r in store.read_rows("SELECT cot_id FROM cots ORDER BY cot_id", db=db)]
    for cot in ids[:7]:
        labels.record(cot, {"flag": "exclude"}, annotator="bob", db=db)
    at = open_page("pages/labels.py")
    click(at, "lab_f_drop_exclude")
    at.switch_page("pages/explore.py")
    rerun(at)
    assert at.session_state["current_filter"].conditions == (labels.drop_flag("exclude"),)
    count = int(next(m for m in at.metric if m.label == "Matching CoTs").value.replace(",", ""))
    assert count == len(ids) - 7
    labels.record(ids[10], {"flag": "exclude"}, annotator="erin", db=db)  # another session labels
    rerun(at)
    assert int(next(m for m in at.metric if m.label == "Matching CoTs").value.replace(",", "")) == len(ids) - 8
    assert "drop_flag" not in at.session_state["current_filter"].to_params()["conditions"]
    assert "flag:exclude" in at.session_state["current_filter"].to_params()["conditions"]


def test_the_agreement_page_compares_a_person_with_the_datasets_labels(labelled_app):
    db = labelled_app
    rv = queries.sources("rv", db=db)[0]
    with store.labels_off():
        judged = store.read_rows(
            "SELECT s.cot_id, s.value FROM scores s JOIN score_sources ss USING (source_id) WHERE ss.name = ? "
            "AND s.metric = 'rv' ORDER BY s.cot_id LIMIT 24", [rv], db=db)
    for i, (cot, value) in enumerate(judged):
        labels.record(cot, {"rv": int(value) if i % 3 else (int(value) + 1) % 10}, annotator="alice", db=db)
    at = open_page("pages/agreement.py")
    assert at.multiselect(key="agr_b_sources").value == ["human: alice"]  # the person is the first comparison
    expected = agreement.statistics(agreement.pairs(agreement.Side((rv,), "rv"), agreement.Side(("human: alice",), "rv"),
                                                    db=db))
    shown = {m.label: m.value for m in at.metric}
    assert shown["CoTs scored by both"] == "24" and expected["n"] == 24
    assert shown["Cohen's kappa"] == f"{expected['kappa']:.3f}"
    # a new label shows at once
    labels.record(judged[0][0], {"rv": int(judged[0][1])}, annotator="alice", db=db)
    rerun(at)
    after = agreement.statistics(agreement.pairs(agreement.Side((rv,), "rv"), agreement.Side(("human: alice",), "rv"),
                                                 db=db))
    assert after["exact"] > expected["exact"]
    assert {m.label: m.value for m in at.metric}["Exact agreement"] == f"{after['exact']:.1%}"


def test_the_rows_of_explore_are_labelled_one_after_another(labelled_app):
    db = labelled_app
    at = open_page("pages/explore.py", explore_label_box=True)
    rows = at.dataframe[0].value["cot_id"].tolist()
    assert at.session_state["explore_label_cot"] == rows[0]
    click(at, "explore_label_v6")
    assert mine(db, rows[0], "alice")["rv"] == 6
    assert at.session_state["explore_label_cot"] == rows[1]
    click(at, "explore_label_flag_review")
    assert mine(db, rows[1], "alice")["flag"] == "review"
