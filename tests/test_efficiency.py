"""The efficiency stage (core/efficiency.py): candidate spans, the docstring's worked example with
a tokenizer whose tokens are words, agreement with plain math-verify on real CoTs, resume, Ray on
a local instance, and the models-side-by-side figures against a hand-computed example."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import pytest

from core import efficiency, store
from core.efficiency import EfficiencyOptions, EfficiencyRayOptions, candidate_spans, run_efficiency
from core.queries import OWN_CORRECTNESS, CotFilter
from helpers import ingest_generic, whitespace_tokenizer

EXAMPLE = ("Let x = 3. Then 2x = 6. Wait, check: 6 / 2 = 3. So the answer is 6. "
           "Alternatively, let me try 3 + 3 = 6.")


def figures(db, source: str = "efficiency") -> dict[str, dict[str, tuple]]:
    """{problem_key/model: {metric: (value, error)}}."""
    out: dict[str, dict[str, tuple]] = {}
    for key, model, metric, value, raw, error in store.read_rows(
            "SELECT p.problem_key, c.model, s.metric, s.value, s.raw, s.error FROM scores s JOIN score_sources ss USING (source_id) "
            "JOIN cots c USING (cot_id) JOIN problems p ON p.problem_id = c.problem_id WHERE ss.name = ?", [source], db=db):
        out.setdefault(f"{key}/{model}", {})[metric] = (value, raw, error)
    return out


@pytest.fixture
def example_store(tmp_path):
    db = tmp_path / "eff.duckdb"
    rows = [
        # the docstring's example, its thinking in <think> tags and the answer boxed after it
        {"id": "ex", "question": "Find x.", "answer": "6", "model": "A", "correct": True,
         "response": f"<think>\n{EXAMPLE}\n</think>\n\nSo $\\boxed{{6}}$."},
        # no reference answer: a correct CoT's own final answer stands in; an incorrect one gets none
        {"id": "own", "question": "No reference here.", "model": "A", "correct": True,
         "response": "<think>\nTry 5 first. Then 3 + 4 = 7. Check 7 again.\n</think>\n\nThe answer is $\\boxed{7}$."},
        {"id": "own", "question": "No reference here.", "model": "B", "correct": False,
         "response": "<think>\nSurely 2 + 2 = 4.\n</think>\n\n$\\boxed{4}$"},
        # the answer never appears in the thinking
        {"id": "never", "question": "Another.", "answer": "11", "model": "A", "correct": False,
         "response": "<think>\nI get 2 + 3 = 5. Another approach: 5.\n</think>\n\n$\\boxed{5}$"},
    ]
    ingest_generic(db, rows, "eff", tokenizer=whitespace_tokenizer(tmp_path))
    return db


def test_candidate_spans_in_text_order():
    spans = candidate_spans(EXAMPLE)
    assert [(s.kind, s.text) for s in spans] == [("equals", "3"), ("equals", "6"), ("equals", "3"), ("answer_is", "6"),
                                                 ("is", "6"), ("equals", "6")]
    assert EXAMPLE[spans[1].start:spans[1].end] == "6" and EXAMPLE[spans[1].end] == "."
    text = r"We get \(xy = 25\)" + "\nso $\\boxed{\\frac{1}{\\sqrt{2}}}$ and it is 204 minutes. Then x = y + 1. It is big."
    assert [(s.kind, s.text) for s in candidate_spans(text)] == [
        ("equals", "25"), ("boxed", "\\frac{1}{\\sqrt{2}}"), ("is", "204")]
    # a formula counts only where the reference is not a number
    formula = r"So the quotient is \( x^2 + 3x - 6 \)."
    assert candidate_spans(formula) == []
    assert [s.text for s in candidate_spans(formula, symbolic=True)] == ["x^2 + 3x - 6"]
    assert efficiency.strategy_switches("Alternatively, let me try. Let's try again!\nAnother way: no.") == 3
    assert efficiency.strategy_switches("Let me try another approach.") == 1  # one sentence, two phrases
    assert efficiency.strategy_switches("The alternatively-named thing.") == 1 and efficiency.strategy_switches("metry") == 0


def test_the_docstring_example_and_the_own_answer_fallback(example_store):
    result = run_efficiency(example_store, EfficiencyOptions(workers=1))
    assert result["cots"] == 4 and result["found"] == 2 and result["without_token_count"] == 0
    f = figures(example_store)
    ex = f["ex/A"]
    assert ex["thinking_tokens"][0] == 29 and ex["first_correct_tokens"][0] == 8 and ex["overthinking_tail"][0] == 21
    assert ex["first_correct_frac"][0] == pytest.approx(8 / 29)
    assert ex["strategy_switches"][0] == 1 and ex["switches_per_1k"][0] == pytest.approx(1000 / 29)
    assert json.loads(ex["first_correct_tokens"][1]) == {"kind": "equals", "span": "6", "char": 22,
                                                         "answer": "reference answer", "spans_checked": 2}
    own = f["own/A"]
    assert own["first_correct_tokens"][0] == 9 and own["thinking_tokens"][0] == 12  # "... 3 + 4 = 7." is word 9 of 12
    assert json.loads(own["first_correct_tokens"][1])["answer"] == "own final answer"
    assert f["own/B"]["first_correct_tokens"] == (None, None, "no reference answer, and the CoT's own answer is not verified correct")
    never = f["never/A"]
    assert never["overthinking_tail"][0] is None and "never appears in the thinking (1 candidate spans checked)" in never["overthinking_tail"][2]
    assert never["strategy_switches"][0] == 1  # "Another approach"
    # done: a rerun finds nothing to do; --recompute does it all again, with the same figures
    assert run_efficiency(example_store, EfficiencyOptions(workers=1))["cots"] == 0
    assert run_efficiency(example_store, EfficiencyOptions(workers=1, recompute=True))["cots"] == 4
    assert figures(example_store) == f


def test_models_side_by_side_by_hand(tmp_path):
    db = tmp_path / "models.duckdb"
    rows = [{"id": f"q{i}", "question": f"Question {i}?", "answer": "1", "model": "M", "correct": ok,
             "response": " ".join(["w"] * n)} for i, (n, ok) in enumerate(((512, True), (3000, False), (2001, True)))]
    ingest_generic(db, rows, "models", tokenizer=whitespace_tokenizer(tmp_path))
    f = CotFilter(correct_source=OWN_CORRECTNESS)
    row = efficiency.model_efficiency(f, db=db).to_dicts()[0]
    # 512 tokens sits on a bin edge; 5,513 / 2 is not a whole number (a sum read as a DECIMAL
    # once truncated it to 2,756)
    assert row["judged"] == 3 and row["correct"] == 2 and row["tokens"] == 5513
    assert row["accuracy"] == pytest.approx(2 / 3) and row["acc_per_1k_tokens"] == pytest.approx(2000 / 5513)
    assert row["tokens_per_correct"] == 2756.5 and row["median_overthinking_tail"] is None
    bins = efficiency.accuracy_by_length(f, db=db)
    assert bins.select("lo", "hi", "cots", "accuracy").to_dicts() == [
        {"lo": 512, "hi": 1024, "cots": 1, "accuracy": 1.0}, {"lo": 1024, "hi": 2048, "cots": 1, "accuracy": 1.0},
        {"lo": 2048, "hi": 4096, "cots": 1, "accuracy": 0.0}]
    # and in summary --json
    from core.cli import main

    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["--db", str(db), "summary", "--json"]) == 0
    printed = json.loads(out.getvalue())[0]
    assert printed["acc_per_1k_tokens"] == pytest.approx(2000 / 5513) and printed["tokens_per_correct"] == 2756.5
    assert [b["cots"] for b in printed["accuracy_by_length"]] == [1, 1, 1]


def test_a_cancelled_run_resumes_and_does_no_cot_twice(example_store, tmp_path):
    calls = []
    first = run_efficiency(example_store, EfficiencyOptions(workers=1, batch_cots=1), progress=lambda *a: calls.append(a),
                           cancelled=lambda: len(calls) >= 3)  # the start and two committed batches
    assert first["cancelled"] and first["cots"] == 2
    second = run_efficiency(example_store, EfficiencyOptions(workers=1, batch_cots=1))
    assert second["cots"] == 2 and not second["cancelled"]
    total, distinct = store.read_rows("SELECT count(*), count(DISTINCT (cot_id, metric)) FROM scores s "
                                      "JOIN score_sources ss USING (source_id) WHERE ss.name = 'efficiency'", db=example_store)[0]
    assert total == distinct == 4 * len(efficiency.METRICS)


def first_by_plain_math_verify(text: str, reference: str):
    """The first candidate span math-verify itself (core.text.verify_answer, as the verify stage
    calls it: the span boxed) accepts, checking every span: no shortcut, no cache."""
    from core.text import verify_answer

    symbolic = not efficiency.numeric(reference)
    for span in candidate_spans(text, symbolic=symbolic):
        if verify_answer("\\boxed{" + span.text + "}", reference):
            return span
    return None


@pytest.mark.slow
def test_real_cots_agree_with_plain_math_verify(qwen_store):
    """40 real CoTs (every 75th, up to 30k characters) of the Qwen2.5-Math eval runs: the stage's
    first-correct span is the first one math-verify accepts when asked about every span, and
    its token count is that of the text up to the span's end (within the boundary token)."""
    from core.steps import STEP_TEXT_SQL
    from core.tokens import load_tokenizer

    rows = store.read_rows(
        f"SELECT c.cot_id, {STEP_TEXT_SQL}, p.reference_answer, c.tokenizer FROM cots c JOIN problems p USING (problem_id) "
        f"WHERE length({STEP_TEXT_SQL}) < 30000 AND p.reference_answer IS NOT NULL ORDER BY c.cot_id", db=qwen_store)[::75][:40]
    assert len(rows) == 40
    tok = load_tokenizer(rows[0][3])
    found = 0
    for cot_id, text, reference, tokenizer in rows:
        got = dict((m, (v, raw)) for _, m, v, raw, _ in efficiency.analyse((cot_id, text, reference, None, None, tokenizer)))
        plain = first_by_plain_math_verify(text, reference)
        if plain is None:
            assert got["first_correct_tokens"][0] is None, cot_id
            continue
        found += 1
        assert json.loads(got["first_correct_tokens"][1])["char"] == plain.end, cot_id
        prefix = len(tok.encode(text[:plain.end], add_special_tokens=False))
        assert abs(got["first_correct_tokens"][0] - prefix) <= 1, cot_id
        assert got["thinking_tokens"][0] == len(tok.encode(text, add_special_tokens=False))
    assert found >= 15  # most of these runs state their answer somewhere


@pytest.mark.spawns_processes
def test_on_a_local_ray_instance_the_figures_equal_a_local_run(example_store, tmp_path):
    pytest.importorskip("ray.data")
    local = tmp_path / "local.duckdb"
    local.write_bytes(example_store.read_bytes())
    run_efficiency(local, EfficiencyOptions(workers=1))
    result = run_efficiency(example_store, EfficiencyOptions(batch_cots=2),
                            EfficiencyRayOptions(address="local", actors=2, part_rows=2))
    assert result["cots"] == 4 and result["ray"] == {"address": "local", "actors": 2, "cpus_per_actor": 1.0}
    assert figures(example_store) == figures(local)
    assert run_efficiency(example_store, EfficiencyOptions(), EfficiencyRayOptions(address="local"))["cots"] == 0
