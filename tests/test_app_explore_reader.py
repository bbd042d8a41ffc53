"""The Explore and Reader pages through AppTest, on real stores built by the real ingest.

Every number the pages show is checked against SQL written here, independently of
core.queries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import queries, render, store

ROOT = Path(__file__).resolve().parents[1]


def open_page(page: str, **state) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    for key, value in state.items():
        at.session_state[key] = value
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metric(at: AppTest, label: str) -> int:
    return int(next(m for m in at.metric if m.label == label).value.replace(",", ""))


def table(at: AppTest):
    """The Explore table (the only dataframe on the page)."""
    assert len(at.dataframe) == 1
    return at.dataframe[0].value


def rerun(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


# ---------------------------------------------------------------------------- Explore


def test_explore_counts_every_cot_without_a_filter(qwen_store, app_store):
    app_store(qwen_store)
    at = open_page("pages/explore.py")
    total, problems = store.read_rows("SELECT count(*), count(DISTINCT problem_id) FROM cots", db=qwen_store)[0]
    assert total == 3250
    assert metric(at, "Matching CoTs") == total
    assert metric(at, "Problems") == problems
    shown_filter = at.session_state["current_filter"]
    assert queries.count(shown_filter, db=qwen_store) == {"cots": total, "problems": problems}
    assert len(table(at)) == 50
    assert "Page 1 of 65" in at.caption[0].value


def test_text_search_and_correctness_filter_change_the_count(qwen_store, app_store):
    app_store(qwen_store)
    at = open_page("pages/explore.py")
    at.sidebar.text_input(key="f_text").input("Wait").run()
    expected = store.read_rows(
        "SELECT count(*) FROM cots c JOIN problems p USING (problem_id) "
        "WHERE strpos(lower(p.question), 'wait') > 0 OR strpos(lower(c.full_text), 'wait') > 0", db=qwen_store,
    )[0][0]
    assert 0 < expected < 3250
    assert metric(at, "Matching CoTs") == expected
    assert queries.count(at.session_state["current_filter"], db=qwen_store)["cots"] == expected

    at.sidebar.text_input(key="f_text").input("").run()
    at.sidebar.selectbox(key="f_correct_source").select("math-verify").run()
    at.sidebar.radio(key="f_correct").set_value("incorrect").run()
    wrong = store.read_rows(
        "SELECT count(*) FROM scores s JOIN score_sources ss USING (source_id) "
        "WHERE ss.name = 'math-verify' AND s.metric = 'correct' AND s.value = 0", db=qwen_store,
    )[0][0]
    assert 0 < wrong < 3250
    assert metric(at, "Matching CoTs") == wrong
    assert set(table(at)["correct"]) == {"incorrect"}


def test_sorting_by_tokens_descending_puts_the_longest_first(qwen_store, app_store):
    app_store(qwen_store)
    at = open_page("pages/explore.py")
    at.selectbox(key="explore_sort").select("n_tokens")
    at.radio(key="explore_order").set_value("descending")
    rerun(at)
    longest = store.read_rows("SELECT max(n_tokens) FROM cots", db=qwen_store)[0][0]
    tokens = table(at)["n_tokens"].tolist()
    assert tokens[0] == longest
    assert tokens == sorted(tokens, reverse=True)


def test_page_two_shows_the_next_rows(qwen_store, app_store):
    app_store(qwen_store)
    at = open_page("pages/explore.py")
    page_one = table(at)["cot_id"].tolist()
    at.number_input(key="explore_page").set_value(2).run()
    page_two = table(at)["cot_id"].tolist()
    in_order = [r[0] for r in store.read_rows("SELECT cot_id FROM cots ORDER BY cot_id LIMIT 100", db=qwen_store)]
    assert page_one == in_order[:50]
    assert page_two == in_order[50:]
    assert "Page 2 of 65" in at.caption[0].value

    # the last page holds the remainder: the table is never capped at a prefix
    at.number_input(key="explore_page").set_value(65).run()
    assert len(table(at)) == 3250 - 64 * 50
    last = store.read_rows("SELECT max(cot_id) FROM cots", db=qwen_store)[0][0]
    assert table(at)["cot_id"].tolist()[-1] == last


def test_a_new_filter_starts_again_at_page_one(demo_store, app_store):
    app_store(demo_store)
    at = open_page("pages/explore.py")
    at.number_input(key="explore_page").set_value(3).run()
    at.sidebar.text_input(key="f_text").input("alternatively").run()
    assert at.number_input(key="explore_page").value == 1


def test_generated_data_is_labelled(demo_store, app_store):
    app_store(demo_store)
    at = open_page("pages/explore.py")
    assert table(at)["generated"].all()
    assert any("Generated (synthetic) data: demo (generated)" in c.value for c in at.caption)


def test_picking_a_row_opens_it_in_the_reader(qwen_store, app_store):
    app_store(qwen_store)
    at = open_page("pages/explore.py")
    row = table(at).iloc[3]
    # what a click on the fourth row sends to the server
    at.session_state["explore_table_0"] = {"selection": {"rows": [3], "columns": [], "cells": []}}
    rerun(at)
    assert at.session_state["reader_problem_id"] == row["problem_id"]
    assert at.session_state["reader_cot_id"] == row["cot_id"]
    assert at.title[0].value == "Reader"
    assert at.query_params["problem"] == str(row["problem_id"])


def test_open_in_reader_by_cot_id(qwen_store, app_store):
    app_store(qwen_store)
    at = open_page("pages/explore.py")
    cot_id, problem_id = store.read_rows(
        "SELECT cot_id, problem_id FROM cots ORDER BY n_chars DESC LIMIT 1", db=qwen_store
    )[0]
    at.number_input(key="explore_open_cot").set_value(cot_id)
    at.button(key="explore_open").click().run()
    assert at.title[0].value == "Reader"
    assert at.session_state["reader_problem_id"] == problem_id
    # the CoT asked for opens with its thinking shown
    assert at.session_state[f"reader_think_{cot_id}"] is True

    at = open_page("pages/explore.py")
    at.number_input(key="explore_open_cot").set_value(12345)
    at.button(key="explore_open").click().run()
    assert at.title[0].value == "Explore"
    assert "Type the id of a CoT" in at.warning[0].value


# ---------------------------------------------------------------------------- Reader


def test_reader_shows_the_problem_its_cots_and_their_scores(qwen_store, app_store):
    app_store(qwen_store)
    # an AIME problem: every run of the 25 models answered it
    problem_id, question, reference = store.read_rows(
        "SELECT p.problem_id, p.question, p.reference_answer FROM problems p JOIN cots c USING (problem_id) "
        "WHERE p.benchmark = 'aime24' GROUP BY ALL ORDER BY count(*) DESC, p.problem_id LIMIT 1", db=qwen_store,
    )[0]
    n_cots = store.read_rows("SELECT count(*) FROM cots WHERE problem_id = ?", [problem_id], db=qwen_store)[0][0]
    assert n_cots > 1
    at = open_page("pages/reader.py", reader_problem_id=problem_id)
    bodies = [m.value for m in at.markdown]
    assert render.safe_markdown(question) in bodies
    assert "**Reference answer:** " + render.safe_markdown(f"${reference}$") in bodies
    thinking = [e for e in at.expander if e.label.startswith("Thinking")]
    assert len(thinking) == n_cots
    assert len(at.dataframe) == n_cots  # one score table per CoT
    for frame in at.dataframe:
        assert set(frame.value["source"]) == {"harness", "math-verify"}
        assert set(frame.value.columns) >= {"metric", "source", "value", "raw"}
    verdicts = [b for b in bodies if b.startswith("**Extracted answer:**")]
    assert len(verdicts) == n_cots
    assert all("harness:" in v and "math\\-verify:" in v for v in verdicts)
    assert at.query_params["problem"] == str(problem_id)


def test_reader_previous_and_next_stay_within_the_filter(qwen_store, app_store):
    app_store(qwen_store)
    at = open_page("pages/explore.py")
    at.sidebar.multiselect(key="f_benchmarks").set_value(["math500"]).run()
    at.switch_page("pages/reader.py")
    rerun(at)
    math500 = [r[0] for r in store.read_rows(
        "SELECT DISTINCT problem_id FROM problems WHERE benchmark = 'math500' ORDER BY 1", db=qwen_store)]
    # without a chosen problem the Reader opens the filter's first one
    assert at.session_state["reader_problem_id"] == math500[0]
    assert at.button(key="reader_prev").disabled
    at.button(key="reader_next").click()
    rerun(at)
    assert at.session_state["reader_problem_id"] == math500[1]
    at.button(key="reader_prev").click()
    rerun(at)
    assert at.session_state["reader_problem_id"] == math500[0]


def test_reader_opens_the_problem_in_the_address(demo_store, app_store):
    app_store(demo_store)
    problem_id, question = store.read_rows(
        "SELECT problem_id, question FROM problems ORDER BY problem_id DESC LIMIT 1", db=demo_store)[0]
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.query_params["problem"] = str(problem_id)
    at.switch_page("pages/reader.py")
    rerun(at)
    assert at.session_state["reader_problem_id"] == problem_id
    assert any(":orange-badge[generated]" in m.value for m in at.markdown)


def test_reader_explains_a_bad_address(demo_store, app_store):
    app_store(demo_store)
    first = store.read_rows("SELECT min(problem_id) FROM problems", db=demo_store)[0][0]
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.query_params["problem"] = "<b>abc</b>"
    at.switch_page("pages/reader.py")
    rerun(at)
    assert "\\<b\\>abc\\<\\/b\\>' in the address is not a problem id" in at.warning[0].value
    assert at.session_state["reader_problem_id"] == first

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.query_params["problem"] = "77"
    at.switch_page("pages/reader.py")
    rerun(at)
    assert "Problem 77 is not in the store" in at.warning[0].value
    at.button(key="reader_reset").click()
    rerun(at)
    assert at.session_state["reader_problem_id"] == first


def test_reader_side_by_side_diff(demo_store, app_store):
    app_store(demo_store)
    problem_id = store.read_rows(
        "SELECT problem_id FROM cots GROUP BY 1 HAVING count(*) >= 2 ORDER BY 1 LIMIT 1", db=demo_store)[0][0]
    first, second = store.read_rows(
        "SELECT cot_id, full_text FROM cots WHERE problem_id = ? ORDER BY model, sample_idx, cot_id LIMIT 2",
        [problem_id], db=demo_store,
    )
    at = open_page("pages/reader.py", reader_problem_id=problem_id, **{f"reader_compare_{problem_id}": True})
    assert at.selectbox(key=f"reader_left_{problem_id}").value == first[0]
    assert at.selectbox(key=f"reader_right_{problem_id}").value == second[0]
    diff = at.code[0].value.split("\n")
    assert diff[0].startswith("--- ") and str(first[0]) in diff[0]
    assert diff[1].startswith("+++ ") and str(second[0]) in diff[1]
    removed = {line[1:] for line in diff if line.startswith("-") and not line.startswith("---")}
    assert removed and all(line in first[1] for line in removed)

    at.selectbox(key=f"reader_right_{problem_id}").set_value(first[0])
    rerun(at)
    assert not at.code
    assert "have the same full text" in at.info[0].value


def write_omnithought_jsonl(path: Path) -> None:
    row = {
        "id": "xss-1",
        "question": "Is <script>alert('q')</script> shown? Compute $1+1$ where <b>bold</b> & more.",
        "answer": "2",
        "reasoning": [
            {
                "thought": "Hmm, <script>alert(1)</script> must stay text. Wait, $1 < 2$ and $1+1=2$.",
                "solution": "<think>not html</think> The answer is $\\boxed{2}$.",
                "teacher": "QwQ-32B",
                "thought_correctness_verify": True,
                "Reasoning_Verbosity": {"level": 3, "judge": "QwQ-32B"},
                "Cognitive_Difficulty": {"level": 2, "judge": "QwQ-32B"},
            },
            {
                "thought": "Plain thought. Alternatively, 1+1 is 2.",
                "solution": "So it is $\\boxed{2}$.",
                "teacher": "DeepSeek-R1",
                "thought_correctness_verify": True,
                "Reasoning_Verbosity": {"level": 2, "judge": "DeepSeek-R1"},
                "Cognitive_Difficulty": {"level": 1, "judge": "DeepSeek-R1"},
            },
        ],
    }
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")


def test_script_in_a_cot_renders_as_escaped_text(tmp_path, app_store):
    from core.ingest import ingest

    source = tmp_path / "xss.jsonl"
    write_omnithought_jsonl(source)
    db = tmp_path / "xss.duckdb"
    result = ingest(str(source), name="xss", db=db)
    assert (result.problems, result.cots) == (1, 2)
    app_store(db)
    problem_id = store.read_rows("SELECT problem_id FROM problems", db=db)[0][0]
    cot_id = store.read_rows("SELECT cot_id FROM cots WHERE model = 'QwQ-32B'", db=db)[0][0]
    at = open_page("pages/reader.py", reader_problem_id=problem_id, **{f"reader_think_{cot_id}": True})
    bodies = [m.value for m in at.markdown]
    assert not any("<script" in b or "<think" in b or "<b>" in b for b in bodies)
    assert any("&lt;script&gt;alert('q')&lt;/script&gt; shown? Compute $1+1$ where &lt;b&gt;bold&lt;/b&gt; &amp; more" in b
               for b in bodies)
    thought = next(b for b in bodies if "alert(1)" in b)
    assert thought == (
        ":orange-background[Hmm], &lt;script&gt;alert(1)&lt;/script&gt; must stay text. "
        ":orange-background[Wait], $1 \\lt  2$ and $1+1=2$."
    )
    assert any(b.startswith("&lt;think&gt;not html&lt;/think&gt; The answer is $\\boxed{2}$.") for b in bodies)
    # the dataset's own labels are listed as scores, CoTs in model order
    deepseek, qwq = (set(frame.value["source"]) for frame in at.dataframe)
    assert deepseek == {"omnithought", "omnithought (DeepSeek-R1)"}
    assert qwq == {"omnithought", "omnithought (QwQ-32B)"}


@pytest.mark.parametrize("page", ["pages/explore.py", "pages/reader.py"])
def test_pages_explain_an_empty_filter(demo_store, app_store, page):
    app_store(demo_store)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.sidebar.text_input(key="f_text").input("no CoT contains this phrase 12345").run()
    at.switch_page(page)
    rerun(at)
    assert "No CoT matches the filter" in at.info[0].value
