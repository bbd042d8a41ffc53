"""The Explore and Reader pages through AppTest, on real stores built by the real ingest.

Every number the pages show is checked against SQL written here, independently of
core.queries."""

from __future__ import annotations

import json
import re
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


def readable_id(db, cot_id: int) -> str:
    """A CoT's readable id computed here, independently of core.ids: the dataset's name made a
    slug, the problem's key, and the CoT's place among its problem's CoTs by id."""
    name, key, n = store.read_rows(
        "SELECT d.name, p.problem_key, (SELECT count(*) FROM cots o WHERE o.problem_id = c.problem_id AND o.cot_id < c.cot_id) "
        "FROM cots c JOIN problems p USING (problem_id) JOIN datasets d ON d.dataset_id = c.dataset_id WHERE c.cot_id = ?",
        [int(cot_id)], db=db)[0]
    return f"{'-'.join(''.join(ch if ch.isalnum() else ' ' for ch in name.lower()).split())}:{key}:{n}"


def thinking_expanders(at: AppTest) -> list:
    return [e for e in at.expander if e.label.startswith("Thinking")]


def test_search_shows_where_each_row_matched_with_the_words_highlighted(qwen_store, app_store):
    """Issue 11: Explore shows a snippet around each hit with the terms highlighted."""
    app_store(qwen_store)
    at = open_page("pages/explore.py")
    at.sidebar.text_input(key="f_text").input("let me check").run()
    rows = table(at)
    assert len(rows) == 50
    # the phrase as the search index reads it, written here: the words in order, anything but
    # letters and digits between them, whole words, any case
    phrase = re.compile(r"(?<![A-Za-z0-9])let[^A-Za-z0-9]+me[^A-Za-z0-9]+check(?![A-Za-z0-9])", re.IGNORECASE)
    texts = dict(store.read_rows("SELECT cot_id, full_text FROM cots WHERE cot_id IN (SELECT unnest(?::BIGINT[]))",
                                 [[int(i) for i in rows["cot_id"]]], db=qwen_store))
    for cot_id, match in zip(rows["cot_id"], rows["match"]):
        first = phrase.search(texts[cot_id])
        if first is None:  # matched through the question
            assert match.startswith("question: «") or "question: " in match
            continue
        hit = re.search("«(.*)»", match).group(1)
        assert hit == " ".join(first.group().split("\n"))
        before = match.split("«")[0].lstrip("…")
        assert " ".join(texts[cot_id][:first.start()].split("\n")).endswith(before)
    listed = [m.value for m in at.markdown if ":blue-background[" in m.value]
    assert len(listed) == rows["match"].notna().sum()
    for line, readable in zip(listed, rows["readable_id"]):
        assert line.startswith(f"`{readable}`")
        assert re.search(r":blue-background\[\*\*:blue\[let me check\]\*\*\]", line, re.IGNORECASE)


def test_picking_a_row_opens_that_cot_in_the_reader(qwen_store, app_store):
    """Issue 11: a click on an Explore row opened the whole problem (25 CoTs) at its first CoT."""
    app_store(qwen_store)
    at = open_page("pages/explore.py")
    row = table(at).iloc[3]
    assert row["readable_id"] == readable_id(qwen_store, row["cot_id"])
    # what a click on the fourth row sends to the server
    at.session_state["explore_table_0"] = {"selection": {"rows": [3], "columns": [], "cells": []}}
    rerun(at)
    assert at.title[0].value == "Reader"
    assert at.session_state["reader_view_cot"] == row["cot_id"]
    assert at.session_state["reader_problem_id"] == row["problem_id"]
    assert at.query_params["cot"] == row["readable_id"]
    # that CoT alone, its thinking open, its readable id in its header
    assert len(thinking_expanders(at)) == 1
    assert at.session_state[f"reader_think_{row['cot_id']}"] is True
    assert any(f"`{row['readable_id']}`" in m.value for m in at.markdown)


@pytest.mark.parametrize("typed", ["internal", "readable"])
def test_open_in_reader_by_cot_id(qwen_store, app_store, typed):
    app_store(qwen_store)
    at = open_page("pages/explore.py")
    cot_id, problem_id = store.read_rows(
        "SELECT cot_id, problem_id FROM cots ORDER BY n_chars DESC LIMIT 1", db=qwen_store
    )[0]
    readable = readable_id(qwen_store, cot_id)
    at.text_input(key="explore_open_cot").input(str(cot_id) if typed == "internal" else readable)
    at.button(key="explore_open").click().run()
    assert at.title[0].value == "Reader"
    assert at.session_state["reader_problem_id"] == problem_id
    assert at.session_state["reader_view_cot"] == cot_id
    assert at.query_params["cot"] == readable  # the address is the permalink, in readable form
    # the CoT asked for opens with its thinking shown
    assert at.session_state[f"reader_think_{cot_id}"] is True

    at = open_page("pages/explore.py")
    at.text_input(key="explore_open_cot").input("12345")
    at.button(key="explore_open").click().run()
    assert at.title[0].value == "Explore"
    assert "is not the id of a CoT in the store" in at.warning[0].value


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
    key = store.read_rows("SELECT problem_key FROM problems WHERE problem_id = ?", [problem_id], db=qwen_store)[0][0]
    assert at.query_params["problem"] == f"qwen25-math-eval:{key}"


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


def reader_order(db, where: str, params: list) -> list[tuple[int, int]]:
    """(problem_id, cot_id) of the CoTs ``where`` selects, in the order j/k step through them:
    problem by problem, then model, sample and id (written here, not taken from core)."""
    return store.read_rows(
        "SELECT c.problem_id, c.cot_id FROM cots c JOIN problems p USING (problem_id) "
        f"WHERE {where} ORDER BY c.problem_id, c.model NULLS LAST, c.sample_idx, c.cot_id", params, db=db)


def test_reader_keys_step_cot_by_cot_and_problem_by_problem_within_the_filter(qwen_store, app_store):
    """Issue 11: j/k the next/previous CoT within the filter, n/p problems, in the Reader."""
    app_store(qwen_store)
    at = open_page("pages/explore.py")
    at.sidebar.multiselect(key="f_benchmarks").set_value(["math500"]).run()
    at.sidebar.selectbox(key="f_correct_source").select("math-verify").run()
    at.sidebar.radio(key="f_correct").set_value("incorrect").run()
    expected = reader_order(qwen_store, "p.benchmark = 'math500' AND c.cot_id IN (SELECT s.cot_id FROM scores s "
                            "JOIN score_sources ss USING (source_id) WHERE ss.name = 'math-verify' AND s.value = 0)", [])
    problems = list(dict.fromkeys(p for p, _ in expected))
    assert len(expected) > 10 and len(problems) < len(expected)  # some problems have several wrong CoTs
    first_problem, first_cot = expected[0]
    at.session_state["reader_view_cot"] = first_cot
    at.session_state["reader_problem_id"] = first_problem
    at.switch_page("pages/reader.py")
    rerun(at)
    shortcuts = {key: at.button(key=key).proto.shortcut.lower() for key in
                 ("reader_next_cot", "reader_prev_cot", "reader_next", "reader_prev")}
    assert shortcuts == {"reader_next_cot": "j", "reader_prev_cot": "k", "reader_next": "n", "reader_prev": "p"}
    assert at.button(key="reader_prev_cot").disabled  # the filter's first CoT
    seen = [(at.session_state["reader_problem_id"], at.session_state["reader_view_cot"])]
    for _ in range(8):
        at.button(key="reader_next_cot").click()
        rerun(at)
        seen.append((at.session_state["reader_problem_id"], at.session_state["reader_view_cot"]))
        assert len(thinking_expanders(at)) == 1  # still one CoT alone
    assert seen == expected[:9]
    at.button(key="reader_prev_cot").click()
    rerun(at)
    assert at.session_state["reader_view_cot"] == expected[7][1]
    # n: the next problem's first matching CoT, still alone; p: back
    at.button(key="reader_next").click()
    rerun(at)
    now = problems.index(expected[7][0]) + 1
    assert (at.session_state["reader_problem_id"], at.session_state["reader_view_cot"]) == next(
        e for e in expected if e[0] == problems[now])
    at.button(key="reader_prev").click()
    rerun(at)
    assert at.session_state["reader_view_cot"] == next(e for e in expected if e[0] == problems[now - 1])[1]

    # the whole problem is one click away, with this CoT in focus; j there moves the focus
    problem_id, cot_id = at.session_state["reader_problem_id"], at.session_state["reader_view_cot"]
    at.button(key="reader_whole").click()
    rerun(at)
    n_cots = store.read_rows("SELECT count(*) FROM cots WHERE problem_id = ?", [problem_id], db=qwen_store)[0][0]
    assert len(thinking_expanders(at)) == n_cots and at.session_state["reader_view_cot"] is None
    assert at.session_state["reader_cot_id"] == cot_id and at.session_state[f"reader_think_{cot_id}"] is True
    assert "problem" in at.query_params and "cot" not in at.query_params
    at.button(key="reader_next_cot").click()
    rerun(at)
    after = expected[expected.index((problem_id, cot_id)) + 1]
    assert (at.session_state["reader_problem_id"], at.session_state["reader_cot_id"]) == after
    assert at.session_state["reader_view_cot"] is None  # j keeps the problem view
    # and from the problem view, one CoT alone again
    at.button(key=f"reader_alone_{after[1]}").click()
    rerun(at)
    assert at.session_state["reader_view_cot"] == after[1]
    assert at.query_params["cot"] == readable_id(qwen_store, after[1])


def test_reader_cot_address_is_a_permalink(qwen_store, app_store):
    app_store(qwen_store)
    cot_id, problem_id = store.read_rows("SELECT cot_id, problem_id FROM cots ORDER BY cot_id DESC LIMIT 1", db=qwen_store)[0]
    readable = readable_id(qwen_store, cot_id)
    for asked in (str(cot_id), readable):
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
        at.query_params["cot"] = asked
        at.switch_page("pages/reader.py")
        rerun(at)
        assert at.session_state["reader_view_cot"] == cot_id
        assert at.query_params["cot"] == readable  # an internal id in the address becomes the readable one
        assert at.code[0].value == f"/reader?cot={readable}"  # AppTest has no browser URL: the relative form
        assert at.session_state[f"reader_think_{cot_id}"] is True
        assert len(thinking_expanders(at)) == 1

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.query_params["cot"] = "qwen25-math-eval:no-such-problem:0"
    at.switch_page("pages/reader.py")
    rerun(at)
    assert "is not a CoT of this store" in at.warning[0].value
    assert "problem" in at.query_params  # the filter's first problem instead


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
    diff = next(c for c in at.code if c.language == "diff").value.split("\n")
    assert diff[0].startswith("--- ") and readable_id(demo_store, first[0]) in diff[0]
    assert diff[1].startswith("+++ ") and readable_id(demo_store, second[0]) in diff[1]
    removed = {line[1:] for line in diff if line.startswith("-") and not line.startswith("---")}
    assert removed and all(line in first[1] for line in removed)

    at.selectbox(key=f"reader_right_{problem_id}").set_value(first[0])
    rerun(at)
    assert not [c for c in at.code if c.language == "diff"]
    assert any("have the same full text" in i.value for i in at.info)  # (the labelling panel has its own)


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
        ":orange-background[**:orange[Hmm]**], &lt;script&gt;alert(1)&lt;/script&gt; must stay text. "
        ":orange-background[**:orange[Wait]**], $1 \\lt  2$ and $1+1=2$."
    )
    assert any(b.startswith("&lt;think&gt;not html&lt;/think&gt; The answer is $\\boxed{2}$.") for b in bodies)
    # the dataset's own labels are listed as scores, CoTs in model order
    deepseek, qwq = (set(frame.value["source"]) for frame in at.dataframe)
    assert deepseek == {"omnithought", "omnithought (DeepSeek-R1)"}
    assert qwq == {"omnithought", "omnithought (QwQ-32B)"}


def test_reader_highlights_search_words_find_words_and_markers_with_a_legend(tmp_path, app_store):
    """Issue 11: the Reader highlights the search terms, offers find-in-this-CoT, and shows
    reflection markers visibly, with a legend (the colours are checked in a browser in
    tests/browser/test_reader_flow.py)."""
    from core.ingest import ingest

    source = tmp_path / "xss.jsonl"
    write_omnithought_jsonl(source)
    db = tmp_path / "xss.duckdb"
    ingest(str(source), name="xss", db=db)
    app_store(db)
    cot_id, problem_id = store.read_rows("SELECT cot_id, problem_id FROM cots WHERE model = 'QwQ-32B'", db=db)[0]
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.sidebar.text_input(key="f_text").input("stay text").run()
    at.query_params["cot"] = str(cot_id)
    at.switch_page("pages/reader.py")
    rerun(at)
    bodies = [m.value for m in at.markdown]
    legend = next(b for b in bodies if b.startswith("Highlighted:"))
    assert ":orange-background[**:orange[reflection markers]**]" in legend
    assert ":blue-background[**:blue[search terms]**]" in legend
    thought = next(b for b in bodies if "alert(1)" in b)
    assert thought == (
        ":orange-background[**:orange[Hmm]**], &lt;script&gt;alert(1)&lt;/script&gt; must "
        ":blue-background[**:blue[stay]**] :blue-background[**:blue[text]**]. "
        ":orange-background[**:orange[Wait]**], $1 \\lt  2$ and $1+1=2$."
    )
    # find in this CoT: its words in order, counted in each part, highlighted in their own colour
    at.text_input(key=f"reader_find_{cot_id}").input("MUST stay").run()
    assert "“MUST stay”: 1 in the thinking, 0 in the solution." in [c.value for c in at.caption]
    thought = next(m.value for m in at.markdown if "alert(1)" in m.value)
    assert ":violet-background[**:violet[must stay]**] :blue-background[**:blue[text]**]" in thought
    # a word inside an escaped "<" is not cut: "lt" finds nothing, and &lt; stays whole
    at.text_input(key=f"reader_find_{cot_id}").input("lt").run()
    assert "“lt”: 0 in the thinking, 0 in the solution." in [c.value for c in at.caption]
    thought = next(m.value for m in at.markdown if "alert(1)" in m.value)
    assert "&lt;script&gt;" in thought and ":violet" not in thought


@pytest.mark.parametrize("page", ["pages/explore.py", "pages/reader.py"])
def test_pages_explain_an_empty_filter(demo_store, app_store, page):
    app_store(demo_store)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.sidebar.text_input(key="f_text").input("no CoT contains this phrase 12345").run()
    at.switch_page(page)
    rerun(at)
    assert any("No CoT matches the filter" in i.value for i in at.info)
