"""The step stage on a real store: steps rebuild each CoT's thinking, token counts add up, roles
and per-CoT figures match a plain-Python recomputation, and a stopped run resumes without
redoing or duplicating a CoT."""

from __future__ import annotations

import json
import time

import pytest

from core import step_stage, store
from core import steps as steps_mod
from core.formats import ReadOptions
from core.ingest import ingest
from core.step_stage import StepOptions, run_steps
from tests.helpers import write_jsonl

THOUGHTS = [
    ("Okay, so we need the sum of 2 and 3. Let me compute: 2 + 3 = 5.\n\nWait, is that right? Let me double-check. "
     "Yes, 2 + 3 = 5 ✔️. So the answer is 5."),
    ("Hmm. The problem says x^2 = 9. I remember that a square has two roots.\nSo x = 3 or x = -3. "
     "Alternatively, factor: (x-3)(x+3) = 0. Therefore both roots work."),
    "",  # an empty thinking: no steps, n_steps = 0
    "Let me try a different approach. I made a mistake earlier; that's wrong. Compute 7 * 8 = 56. Done.",
]


def make_store(tmp_path, thoughts=THOUGHTS, name="toy"):
    rows = [{"q": f"Question {i}", "r": f"<think>\n{t}\n</think>\n\nThe answer is 5.", "id": i, "ok": i % 2 == 0}
            for i, t in enumerate(thoughts)]
    src = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    db = tmp_path / "store.duckdb"
    ingest(str(src), fmt="generic", name=name, db=db,
           opts=ReadOptions(mapping={"question": "q", "response": "r", "id": "id", "correct": "ok"}))
    return db


def rows(sql, params=(), db=None):
    return store.read_rows(sql, list(params), db=db)


def test_steps_rebuild_the_thinking_and_count_its_tokens(tmp_path):
    from core.tokens import load_tokenizer

    db = make_store(tmp_path)
    result = run_steps(db, StepOptions())
    assert result["source"] == "step rules (sentence)" and result["cots"] == 4 and result["remaining"] == 0
    tok = load_tokenizer()
    thinking = dict(rows("SELECT cot_id, thinking FROM cots", db=db))
    for cot_id, text in thinking.items():
        got = rows("SELECT char_start, char_end, n_tokens, role, micro_actions FROM steps WHERE cot_id = ? ORDER BY step_idx",
                   [cot_id], db=db)
        spans = [(a, b) for a, b, *_ in got]
        assert spans == steps_mod.split_spans(text)  # the stage stores the splitter's spans
        assert "".join(text[a:b] for a, b in spans) == text
        # the step token counts add up to the tokenizer's count of the whole thinking
        assert sum(n for _, _, n, *_ in got) == len(tok.encode(text, add_special_tokens=False).ids)
        rules = steps_mod.RoleRules.load()
        assert [r for *_, r, _ in got] == [rules.role(text[a:b], a / len(text)) for a, b in spans]
        assert [list(m or []) for *_, m in got] == [rules.actions(text[a:b]) for a, b in spans]
    assert result["steps"] == rows("SELECT count(*) FROM steps", db=db)[0][0]
    # the same text through SQL: slices of the stored thinking rebuild it
    rebuilt = rows("SELECT c.cot_id, string_agg(substr(c.thinking, s.char_start + 1, s.char_end - s.char_start), '' "
                   "ORDER BY s.step_idx) FROM steps s JOIN cots c USING (cot_id) GROUP BY c.cot_id", db=db)
    assert all(thinking[cot_id] == text for cot_id, text in rebuilt)


def test_per_cot_figures_match_a_plain_recomputation(tmp_path):
    db = make_store(tmp_path)
    run_steps(db, StepOptions())
    source_id = rows("SELECT source_id FROM score_sources WHERE name = 'step rules (sentence)'", db=db)[0][0]
    figures = {}
    for cot_id, metric, value in rows("SELECT cot_id, metric, value FROM scores WHERE source_id = ?", [source_id], db=db):
        figures.setdefault(cot_id, {})[metric] = value
    assert len(figures) == 4
    for cot_id, fig in figures.items():
        got = rows("SELECT n_tokens, char_end - char_start, role, micro_actions FROM steps WHERE cot_id = ? ORDER BY step_idx",
                   [cot_id], db=db)
        assert fig["n_steps"] == len(got)
        if not got:  # the empty thinking: a count of 0 and nothing else
            assert fig == {"n_steps": 0.0, **{f"n_action_{a}": 0.0 for a in ("pause", "backtrack", "switch", "verify")}}
            continue
        total = sum(n for n, *_ in got)
        for role in steps_mod.ROLES:
            assert fig[f"share_{role}"] == pytest.approx(sum(n for n, _, r, _ in got if r == role) / total)
        assert fig["mean_step_tokens"] == pytest.approx(total / len(got))
        assert fig["mean_step_chars"] == pytest.approx(sum(c for _, c, _, _ in got) / len(got))
        assert fig["n_self_checks"] == sum(1 for *_, r, _ in got if r == "self_checking")
        for action in ("pause", "backtrack", "switch", "verify"):
            assert fig[f"n_action_{action}"] == sum(1 for *_, m in got if m and action in m)
        assert "has_error" not in fig  # the rules say nothing about correctness
    # the first CoT checks itself once ("Let me double-check.") and says "Yes, ... ✔️"
    first = min(figures)
    assert figures[first]["n_self_checks"] >= 2 and figures[first]["share_final_answer_emission"] > 0


def test_a_stopped_run_resumes_without_redoing_or_duplicating(tmp_path):
    db = make_store(tmp_path)
    calls = []

    def stop_after_first_batch():
        calls.append(1)
        return len(calls) > 1

    first = run_steps(db, StepOptions(batch_cots=1), cancelled=stop_after_first_batch)
    assert first["cancelled"] and first["cots"] == 1 and first["remaining"] == 3
    done_first = rows("SELECT DISTINCT cot_id FROM steps", db=db)
    second = run_steps(db, StepOptions(batch_cots=1))
    assert second["cots"] == 3  # only the CoTs not committed before
    third = run_steps(db, StepOptions())
    assert third["cots"] == 0
    # same rows as one uninterrupted run in another store
    other = make_store(tmp_path / "other")
    run_steps(other, StepOptions())
    table = "SELECT cot_id, step_idx, char_start, char_end, n_tokens, role, micro_actions FROM steps ORDER BY ALL"
    assert rows(table, db=db) == rows(table, db=other)
    figs = "SELECT cot_id, metric, value FROM scores JOIN score_sources USING (source_id) WHERE kind = 'stage' ORDER BY ALL"
    assert rows(figs, db=db) == rows(figs, db=other)
    assert rows("SELECT count(*) FROM (SELECT cot_id, metric FROM scores GROUP BY ALL HAVING count(*) > 1)", db=db) == [(0,)]
    assert len(done_first) == 1


def test_an_error_in_a_batch_leaves_that_batch_uncommitted(tmp_path):
    db = make_store(tmp_path)

    def fail_on_second(stage, done, total):
        if done >= 2:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        run_steps(db, StepOptions(batch_cots=2), progress=fail_on_second)
    # the first batch (2 CoTs) committed with its figures; the rest untouched
    assert rows("SELECT count(DISTINCT cot_id) FROM steps", db=db) == [(2,)]
    assert rows("SELECT count(*) FROM scores WHERE metric = 'n_steps'", db=db) == [(2,)]
    assert run_steps(db, StepOptions())["cots"] == 2


def test_other_settings_under_the_same_name_are_refused(tmp_path):
    db = make_store(tmp_path)
    run_steps(db, StepOptions(source_name="mine"))
    with pytest.raises(ValueError, match="exists with other settings"):
        run_steps(db, StepOptions(source_name="mine", unit="paragraph"))
    result = run_steps(db, StepOptions(unit="paragraph"))
    assert result["source"] == "step rules (paragraph)" and result["cots"] == 4


def test_dataset_scope_and_unknown_names(tmp_path):
    db = make_store(tmp_path)
    with pytest.raises(ValueError, match="No ready dataset named 'nope'"):
        run_steps(db, StepOptions(datasets=("nope",)))
    with pytest.raises(ValueError, match="no step source 'ghost'"):
        run_steps(db, StepOptions(from_source="ghost"))
    assert run_steps(db, StepOptions(datasets=("toy",), max_cots=2))["cots"] == 2


def test_from_source_labels_the_other_sources_steps(tmp_path):
    db = make_store(tmp_path)
    run_steps(db, StepOptions(unit="paragraph"))
    result = run_steps(db, StepOptions(from_source="step rules (paragraph)"))
    assert result["source"] == "step rules on step rules (paragraph)"
    spans = "SELECT cot_id, step_idx, char_start, char_end, n_tokens FROM steps s JOIN score_sources ss USING (source_id) " \
            "WHERE ss.name = ? ORDER BY ALL"
    assert rows(spans, ["step rules (paragraph)"], db=db) == rows(spans, ["step rules on step rules (paragraph)"], db=db)


def test_dropping_a_dataset_removes_its_steps(tmp_path):
    db = make_store(tmp_path)
    run_steps(db, StepOptions())
    first_cot = rows("SELECT min(cot_id) FROM cots", db=db)[0][0]
    with store.connect(db, read_only=False) as con:
        con.execute("INSERT INTO step_scores VALUES (?, 1, 0, 'x', 1.0, NULL, NULL)", [first_cot])
    store.drop_dataset(1, db=db)
    assert rows("SELECT (SELECT count(*) FROM steps) + (SELECT count(*) FROM step_scores)", db=db) == [(0,)]


def test_the_steps_job_runs_in_a_worker(tmp_path, monkeypatch):
    from core import jobs

    db = make_store(tmp_path)
    monkeypatch.setenv("THOUGHTSCOPE_DB", str(db))
    job_id = jobs.submit("steps", {"unit": "sentence", "datasets": ["toy"]}, db=db)
    deadline = time.time() + 120
    while jobs.get(job_id)["state"] not in jobs.FINISHED and time.time() < deadline:
        time.sleep(0.5)
    job = jobs.get(job_id)
    assert job["state"] == "done", job["error"] or job["log_tail"]
    assert job["result"]["cots"] == 4
    assert rows("SELECT count(DISTINCT cot_id) FROM steps", db=db) == [(3,)]  # the empty thinking has none
    assert json.loads(rows("SELECT params FROM score_sources WHERE name = 'step rules (sentence)'", db=db)[0][0])["unit"] == "sentence"


def test_label_batch_without_tokenizer_gives_no_counts():
    rules = steps_mod.RoleRules.load()
    [item] = step_stage.label_batch(["One. Two."], rules, "sentence", None)
    assert item["spans"] == [(0, 5), (5, 9)] and item["tokens"] == [None, None]
