"""Problem identity: the normalised question key, its stage, and evaluation runs attaching to
their benchmark's problems (issue 11), on real question pairs from ../shared/realdata."""

from __future__ import annotations

import json
import re

import pytest

from core import identity, queries, store
from core.identity import question_key
from core.ingest import ingest
from tests.helpers import REALDATA, omni_rows, require_realdata, write_jsonl

BENCHMARK_FILES = {"aime24": "problem", "math500": "problem", "aime25": "prompt", "gsm8k": "question"}


def _benchmark_questions(name: str) -> list[str]:
    field = BENCHMARK_FILES[name]
    with open(REALDATA / "benchmarks" / f"{name}_test.jsonl") as fh:
        return [json.loads(line)[field] for line in fh]


# ---------------------------------------------------------------------------- the key, by hand


@pytest.mark.parametrize("a, b", [
    # whitespace, case and LaTeX spacing
    ("Find  $x+y$ if\n$x = 2$.", "find $x + y$ if $x=2$"),
    ("What is $\\frac {1} {2} + \\frac{1}{3}$?", "What is $\\frac{1}{2}+\\frac{1}{3}$?"),
    ("Compute $\\dfrac{3}{4}$.", "Compute $\\tfrac{3}{4}$"),
    ("Solve $\\left( x+1 \\right)^2=4$.", "Solve $(x+1)^2=4$."),
    ("Evaluate \\(2^{10}\\).", "Evaluate $2^{10}$."),
    ("Let $a\\,b = 6$ and $a\\;=\\!2$.", "Let $a b=6$ and $a=2$."),
    # answer-format instructions at either end (OpenThoughts / Qwen / DeepScaleR / a Problem: template)
    ("Return your final response within \\boxed{}. Find the sum of 2 and 3.", "Find the sum of 2 and 3."),
    ("Find the sum of 2 and 3. Please reason step by step, and put your final answer within \\boxed{}.",
     "Find the sum of 2 and 3."),
    ("Find the sum of 2 and 3. Let's think step by step and output the final answer within \\boxed{}.",
     "Find the sum of 2 and 3"),
    ("Solve this math problem step by step. You MUST put your final answer in \\boxed{}. Problem: Find the sum "
     "of 2 and 3. Solution: \n<think>\n", "Find the sum of 2 and 3."),
])
def test_equal_keys_for_the_same_problem(a, b):
    assert question_key(a) == question_key(b)


def test_hand_computed_key():
    # NFKC + casefold; instruction removed; $ dropped; \dfrac -> \frac; spaces next to symbols go
    assert question_key("Return your final response within \\boxed{}. Find $x + 1$ if $x=\\dfrac {1} {2}$.") == \
        "find x+1 if x=\\frac{1}{2}"
    assert identity.key_words("find x+1 if x=\\frac{1}{2}") == ["find", "x", "1", "if", "x", "frac", "1", "2"]


@pytest.mark.parametrize("a, b", [
    ("Find the sum of 2 and 3.", "Find the sum of 2 and 4."),
    ("Find $x$ if $x^2 = 4$.", "Find $x$ if $x^3 = 4$."),
    ("What is 12 + 3?", "What is 1 + 23?"),  # spacing never merges numbers that differ
    # an instruction in the middle of a question is content, not a wrapper
    ("Put 3 balls in a box. How many ways are there?", "How many ways are there?"),
])
def test_different_problems_keep_different_keys(a, b):
    assert question_key(a) != question_key(b)


# ---------------------------------------------------------------------------- real pairs


def test_harness_questions_meet_their_benchmark_problems():
    """Every question of every Qwen2.5-Math harness run in the real data has the key of the
    benchmark file's problem with the same text, and of no other."""
    require_realdata()
    for bench in ("aime24", "math500"):
        by_key = {}
        for i, q in enumerate(_benchmark_questions(bench)):
            by_key.setdefault(question_key(q), []).append(i)
        by_text = {q: i for i, q in enumerate(_benchmark_questions(bench))}
        files = sorted((REALDATA / "qwen25_math_eval" / "outputs").rglob(f"{bench}_eval/**/*.jsonl"))
        assert files
        lines = 0
        for file in files:
            for line in open(file):
                question = json.loads(line)["question"]
                assert by_key[question_key(question)] == [by_text[question]]
                lines += 1
        assert lines == len(files) * {"aime24": 30, "math500": 500}[bench]


def test_instruction_template_prompts_meet_their_questions():
    """Thought Anchors stores each problem twice: the question, and the prompt the model got
    ('Solve this math problem step by step. You MUST put your final answer in \\boxed{}.
    Problem: ... Solution: <think>'). Both give one key."""
    require_realdata()
    rows = [json.loads(line) for line in open(REALDATA / "thought_anchors" / "thought_anchors_math_base_solutions.jsonl")]
    assert len(rows) == 20
    assert all(question_key(r["prompt"]) == question_key(r["question"]) for r in rows)
    assert all(question_key(r["prompt"]) != question_key(o["question"]) for r in rows for o in rows
               if o["problem_id"] != r["problem_id"])


def test_wrapped_and_respaced_real_questions_keep_their_key():
    """Each real benchmark question, rewritten the ways other sources write it, keeps its key;
    and no two different benchmark questions share one."""
    require_realdata()
    wrappers = [
        lambda q: "Return your final response within \\boxed{}. " + q,
        lambda q: q + "\nPlease reason step by step, and put your final answer within \\boxed{}.",
        lambda q: "  " + q.replace(" ", "  ").replace("$", " $ ") + "  ",
        # \left( \right) around parentheses that are not math delimiters \( \)
        lambda q: re.sub(r"(?<!\\)\)", r"\\right)", re.sub(r"(?<!\\)\(", r"\\left(", q.replace("\\frac", "\\dfrac"))),
    ]
    all_keys: dict[str, str] = {}
    for bench in BENCHMARK_FILES:
        for q in _benchmark_questions(bench):
            key = question_key(q)
            assert all_keys.setdefault(key, q) == q, f"two different questions share a key: {q[:80]!r}"
            for wrap in wrappers:
                assert question_key(wrap(q)) == key, (bench, wrap(q)[:200])
    assert len(all_keys) == sum(len(set(_benchmark_questions(b))) for b in BENCHMARK_FILES)


# ---------------------------------------------------------------------------- stored keys


def test_ingest_stores_each_problems_key_and_the_stage_fills_old_stores(tmp_path):
    db = tmp_path / "store.duckdb"
    rows = omni_rows(5, 2)
    rows[3]["question"] = "Return your final response within \\boxed{}. " + rows[1]["question"]
    ingest(str(write_jsonl(tmp_path / "omni.jsonl", rows)), db=db)
    stored = dict(store.read_rows("SELECT p.question, k.question_key FROM problems p JOIN problem_keys k USING (problem_id)", db=db))
    assert stored == {r["question"]: question_key(r["question"]) for r in rows}
    assert stored[rows[3]["question"]] == stored[rows[1]["question"]]
    hashes = store.read_rows("SELECT question_key, key_hash, key_version FROM problem_keys", db=db)
    assert all(h == identity.key_hash(k) and v == identity.KEY_VERSION for k, h, v in hashes)

    # a store from before keys existed (or after a new KEY_VERSION): the stage fills them
    with store.connect(db, read_only=False) as con:
        con.execute("DELETE FROM problem_keys WHERE problem_id % 2 = 0")
        con.execute("UPDATE problem_keys SET key_version = 0 WHERE problem_id % 3 = 0")
    result = identity.run_problem_keys(db, identity.KeyOptions(batch_problems=2))
    after = store.read_rows("SELECT problem_id, question_key, key_version FROM problem_keys ORDER BY 1", db=db)
    expected = store.read_rows("SELECT problem_id, question FROM problems ORDER BY 1", db=db)
    assert [(p, question_key(q), identity.KEY_VERSION) for p, q in expected] == after
    assert result["problems"] == 5 - len([p for p, _ in expected if p % 2 and p % 3])
    assert identity.run_problem_keys(db)["problems"] == 0  # nothing left to do


def test_a_cancelled_key_stage_resumes_without_duplicates(tmp_path):
    db = tmp_path / "store.duckdb"
    ingest(str(write_jsonl(tmp_path / "omni.jsonl", omni_rows(7, 1))), db=db)
    with store.connect(db, read_only=False) as con:
        con.execute("DELETE FROM problem_keys")
    calls = []
    first = identity.run_problem_keys(db, identity.KeyOptions(batch_problems=3), cancelled=lambda: calls.append(1) or len(calls) > 1)
    assert first["cancelled"] and first["problems"] == 3
    second = identity.run_problem_keys(db, identity.KeyOptions(batch_problems=3))
    assert second["problems"] == 4
    assert store.read_rows("SELECT count(*), count(DISTINCT problem_id) FROM problem_keys", db=db)[0] == (7, 7)


# ---------------------------------------------------------------------------- issue 11: runs attach to benchmarks


def test_evaluation_runs_attach_to_their_benchmark_problems(tmp_path):
    """The harness runs of AIME 2024 and MATH500 and the two benchmark files: each run problem
    meets the file's problem with the same question, and the store counts 530 problems (what
    Explore counts), not 1,060 problem rows."""
    require_realdata()
    db = tmp_path / "store.duckdb"
    ingest(str(REALDATA / "qwen25_math_eval" / "outputs"), name="runs", db=db)
    for bench in ("aime24", "math500"):
        ingest(str(REALDATA / "benchmarks" / f"{bench}_test.jsonl"), fmt="benchmark", db=db)

    counts = identity.problem_counts(db=db)
    explore = queries.count(queries.CotFilter(), db=db)["problems"]
    assert counts == {"rows": 1060, "distinct": 530} and explore == 530

    # independently: the benchmark problem with the very same question text
    run_problems = store.read_rows(
        "SELECT p.problem_id, p.question FROM problems p JOIN datasets d USING (dataset_id) WHERE d.name = 'runs'", db=db)
    bench_ids = dict(store.read_rows(
        "SELECT p.question, p.problem_id FROM problems p JOIN datasets d USING (dataset_id) WHERE d.format = 'benchmark'", db=db))
    for problem_id, question in run_problems[::25]:
        same = identity.same_problem(problem_id, db=db)
        assert same["problem_id"].to_list() == [bench_ids[question]]
        assert same["format"].to_list() == ["benchmark"]
    # and from the benchmark's side, the run's problem with its 25 (AIME) CoTs
    aime_first = store.read_rows("SELECT problem_id, question FROM problems WHERE benchmark = 'aime24' "
                                 "AND dataset_id = (SELECT dataset_id FROM datasets WHERE format = 'benchmark' "
                                 "AND name = 'aime24_test') ORDER BY problem_id LIMIT 1", db=db)[0]
    same = identity.same_problem(aime_first[0], db=db)
    run_id = next(p for p, q in run_problems if q == aime_first[1])
    cots = store.read_rows("SELECT count(*) FROM cots WHERE problem_id = ?", [run_id], db=db)[0][0]
    assert same.select("problem_id", "cots").rows() == [(run_id, cots)] and cots == 25
