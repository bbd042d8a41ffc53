"""The difficulty and student stages (core/difficulty.py) against hand-computed examples and an
independent plain-Python computation on the real Qwen2.5-Math eval runs; resume after a cancel
and after SIGKILL; the figures in Select, `python -m core problems` and the export manifest."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from contextlib import redirect_stdout
from pathlib import Path
from statistics import median

import pytest

from core import difficulty, export, store
from core.difficulty import DifficultyOptions, StudentOptions, run_difficulty, run_student
from core.figures import Condition, Figure
from core.metrics import pass_at_k
from core.queries import OWN_CORRECTNESS, CotFilter
from core.selection import PerProblem, Selection, Thresholds, decide, default_score_sources, kept_ids
from helpers import REPO, ingest_generic, student_store, whitespace_tokenizer, words

# The module docstring's example (p1), a problem nobody solves (p2), one everybody solves (p3)
# and one without any verdict (p4). Tokens are words (whitespace tokenizer).
HAND = [
    *({"id": "p1", "question": "What is one plus one?", "response": words(n), "answer": "2", "model": m, "correct": ok}
      for m, n, ok in (("A", 400, True), ("A", 1000, True), ("A", 250, False), ("B", 700, False))),
    *({"id": "p2", "question": "A hard one?", "response": words(n), "answer": "7", "model": m, "correct": False}
      for m, n in (("A", 10), ("B", 20))),
    *({"id": "p3", "question": "An easy one?", "response": words(n), "answer": "1", "model": m, "correct": True}
      for m, n in (("A", 30), ("B", 40))),
    {"id": "p4", "question": "Never judged?", "response": words(50), "answer": "3", "model": "A"},
]


@pytest.fixture
def hand_store(tmp_path) -> Path:
    db = tmp_path / "hand.duckdb"
    ingest_generic(db, HAND, "teacher", tokenizer=whitespace_tokenizer(tmp_path))
    return db


def problem_figures(db, source: str = "difficulty") -> dict[str, dict[str, float]]:
    """{problem_key: {metric: value}} of a source's problem_scores."""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for key, metric, value in store.read_rows(
            "SELECT p.problem_key, ps.metric, ps.value FROM problem_scores ps JOIN score_sources ss USING (source_id) "
            "JOIN problems p USING (problem_id) WHERE ss.name = ?", [source], db=db):
        out[key][metric] = value
    return dict(out)


def cot_figures(db, source: str = "difficulty") -> dict[tuple, dict[str, float]]:
    """{(problem_key, model, tokens): {metric: value}} of a source's per-CoT scores."""
    out: dict[tuple, dict[str, float]] = defaultdict(dict)
    for key, model, tokens, metric, value in store.read_rows(
            "SELECT p.problem_key, c.model, c.n_tokens, s.metric, s.value FROM scores s JOIN score_sources ss USING (source_id) "
            "JOIN cots c USING (cot_id) JOIN problems p ON p.problem_id = c.problem_id WHERE ss.name = ?", [source], db=db):
        out[(key, model, tokens)][metric] = value
    return dict(out)


def test_the_docstring_example_by_hand(hand_store):
    result = run_difficulty(hand_store, DifficultyOptions(ks=(2, 4)))
    assert result["source"] == "difficulty" and result["reads"] == ["teacher"]
    p = problem_figures(hand_store)
    # p1: n = 4, c = 2, pass@2 = 1 - C(2,2)/C(4,2) = 5/6, pass@4 = 1 (n - c < 4)
    assert p["p1"] == pytest.approx({
        "n": 4, "c": 2, "pass_rate": 0.5, "pass@2": 5 / 6, "pass@4": 1.0, "shortest_correct_tokens": 400,
        "median_tokens_correct": 700, "median_tokens_incorrect": 475, "models": 2, "models_solved": 1,
        "solved_by_all": 0, "unsolved_by_all": 0})
    assert p["p2"] == pytest.approx({"n": 2, "c": 0, "pass_rate": 0, "pass@2": 0, "median_tokens_incorrect": 15, "models": 2,
                                     "models_solved": 0, "solved_by_all": 0, "unsolved_by_all": 1})
    assert p["p3"] == pytest.approx({"n": 2, "c": 2, "pass_rate": 1, "pass@2": 1, "shortest_correct_tokens": 30,
                                     "median_tokens_correct": 35, "models": 2, "models_solved": 2, "solved_by_all": 1,
                                     "unsolved_by_all": 0})
    assert p["p4"] == {"n": 0, "c": 0}  # no verdict: not a sample, so no pass rate
    c = cot_figures(hand_store)
    assert c[("p1", "A", 400)] == pytest.approx({"model_n": 3, "model_c": 2, "model_pass_rate": 2 / 3, "relative_length": 1.0})
    assert c[("p1", "A", 1000)]["relative_length"] == 2.5 and c[("p1", "A", 250)]["relative_length"] == 0.625
    assert c[("p1", "B", 700)] == pytest.approx({"model_n": 1, "model_c": 0, "model_pass_rate": 0, "relative_length": 1.75})
    assert c[("p3", "B", 40)]["relative_length"] == pytest.approx(4 / 3)
    assert "relative_length" not in c[("p2", "A", 10)]  # no correct CoT to compare with
    detail = {(r[0], r[1]): r[2:] for r in store.read_rows(
        "SELECT p.problem_key, f.model, f.n, f.c, f.shortest_correct_tokens, f.median_tokens_correct, f.median_tokens_incorrect "
        "FROM problem_model_figures f JOIN problems p USING (problem_id)", db=hand_store)}
    assert detail[("p1", "A")] == (3, 2, 400, 700.0, 250.0) and detail[("p1", "B")] == (1, 0, None, None, 700.0)
    # nothing changed: a rerun reads the fingerprints and writes nothing
    again = run_difficulty(hand_store, DifficultyOptions(ks=(2, 4)))
    assert again["datasets"]["teacher"] == {"problems": 4, "computed": 0, "current": True}
    assert problem_figures(hand_store) == p


def test_bands_select_the_problems_they_name(hand_store):
    run_difficulty(hand_store, DifficultyOptions(ks=(2,)))
    sources = default_score_sources(db=hand_store)
    keys = {r[0]: r[1] for r in store.read_rows(
        "SELECT c.cot_id, p.problem_key FROM cots c JOIN problems p USING (problem_id)", db=hand_store)}
    for band, expected in (("unsolved", {"p2"}), ("solved_by_all", {"p3"}), ("hard", {"p2"}), ("medium", {"p1"}),
                           ("easy", {"p3"})):
        sel = Selection(CotFilter(), Thresholds(), sources, conditions=difficulty.band_conditions(band))
        assert {keys[i] for i in kept_ids(sel, db=hand_store).to_list()} == expected, band
    # the drop reasons read as the conditions do
    sel = Selection(CotFilter(), Thresholds(), sources, conditions=difficulty.band_conditions("hard"))
    reasons = {r for r in decide(sel, db=hand_store).column("reason").to_pylist() if r}
    assert reasons == {"pass_rate · difficulty (per problem) above 0.25", "no pass_rate · difficulty (per problem)"}
    # "shortest correct k per problem" among the problems of a band: p1's two correct, shortest first
    sel = Selection(CotFilter(), PerProblem("shortest_correct", k=1), sources,
                    conditions=(Condition(Figure("pass_rate", "difficulty", level="problem"), lo=0.25, hi=0.75),))
    kept = kept_ids(sel, db=hand_store).to_list()
    assert [store.read_rows("SELECT n_tokens FROM cots WHERE cot_id = ?", [i], db=hand_store)[0][0] for i in kept] == [400]


def test_a_named_correctness_source_gets_its_own_figures(hand_store):
    from core.verify import verify_stage

    verify_stage(db=hand_store)  # math-verify: every response is "w w w ...", so every CoT is wrong by it
    run_difficulty(hand_store, DifficultyOptions(correct_source="math-verify", ks=(2,)))
    by_verifier = problem_figures(hand_store, "difficulty (math-verify)")
    assert {k: v["c"] for k, v in by_verifier.items()} == {"p1": 0, "p2": 0, "p3": 0, "p4": 0}
    assert by_verifier["p4"]["n"] == 1  # math-verify judged the CoT its label did not
    with pytest.raises(difficulty.DifficultyError, match="gave no verdict"):
        run_difficulty(hand_store, DifficultyOptions(correct_source="no such source"))


def test_new_verdicts_make_the_dataset_computed_again(hand_store):
    run_difficulty(hand_store, DifficultyOptions(ks=(2,)))
    from core.verify import verify_stage

    verify_stage(db=hand_store)  # each dataset's own now reads math-verify after the labels: p4 gets a verdict
    result = run_difficulty(hand_store, DifficultyOptions(ks=(2,)))
    assert result["datasets"]["teacher"]["computed"] == 4
    p = problem_figures(hand_store)
    assert p["p4"]["n"] == 1 and p["p4"]["c"] == 0 and p["p1"]["n"] == 4
    rows = store.read_rows("SELECT count(*), count(DISTINCT (problem_id, metric)) FROM problem_scores", db=hand_store)[0]
    assert rows[0] == rows[1]  # the old figures were replaced, not added to


def independent_difficulty(db, ks):
    """Every figure of the stage from the raw rows in plain Python: each CoT's verdict from the
    first of each dataset's own sources that judged it, then counts, medians and pass@k."""
    order = [r[0] for r in store.read_rows(
        "SELECT name FROM score_sources ss WHERE kind IN ('label', 'verifier') AND EXISTS (SELECT 1 FROM scores s "
        "WHERE s.source_id = ss.source_id AND s.metric = 'correct') ORDER BY kind <> 'label', source_id", db=db)]
    verdict: dict[int, bool] = {}
    found = defaultdict(dict)
    for cot, name, value in store.read_rows(
            "SELECT s.cot_id, ss.name, s.value FROM scores s JOIN score_sources ss USING (source_id) "
            "WHERE s.metric = 'correct' AND s.value IS NOT NULL", db=db):
        found[cot][name] = value
    for cot, values in found.items():
        first = next(n for n in order if n in values)
        verdict[cot] = values[first] >= 0.5
    cots = store.read_rows("SELECT cot_id, problem_id, coalesce(model, '(no model)'), n_tokens FROM cots", db=db)
    by_problem = defaultdict(list)
    for cot, pid, model, tokens in cots:
        by_problem[pid].append((cot, model, tokens, verdict.get(cot)))
    problems, per_cot = {}, {}
    for pid, rows in by_problem.items():
        judged = [r for r in rows if r[3] is not None]
        ok = [r[2] for r in judged if r[3]]
        bad = [r[2] for r in judged if not r[3]]
        n, c = len(judged), len(ok)
        fig = {"n": n, "c": c}
        if n:
            fig["pass_rate"] = c / n
            fig.update({f"pass@{k}": pass_at_k(n, c, k) for k in ks if n >= k})
            fig["unsolved_by_all"] = float(c == 0)
        if ok:
            fig["shortest_correct_tokens"], fig["median_tokens_correct"] = min(ok), median(ok)
        if bad:
            fig["median_tokens_incorrect"] = median(bad)
        models = defaultdict(lambda: [0, 0])
        for _, model, _, v in judged:
            models[model][0] += 1
            models[model][1] += bool(v)
        if models:
            fig["models"] = len(models)
            fig["models_solved"] = sum(1 for m in models.values() if m[1])
            fig["solved_by_all"] = float(fig["models_solved"] == fig["models"])
        problems[pid] = fig
        for cot, model, tokens, _ in rows:
            entry = {}
            if model in models:
                mn, mc = models[model]
                entry = {"model_n": mn, "model_c": mc, "model_pass_rate": mc / mn}
            else:
                entry = {"model_n": 0, "model_c": 0}
            if ok and tokens is not None and min(ok) > 0:
                entry["relative_length"] = tokens / min(ok)
            per_cot[cot] = entry
    return problems, per_cot


def stage_rows(db, source="difficulty"):
    problems, per_cot = defaultdict(dict), defaultdict(dict)
    for pid, metric, value in store.read_rows(
            "SELECT problem_id, metric, value FROM problem_scores JOIN score_sources USING (source_id) WHERE name = ?",
            [source], db=db):
        problems[pid][metric] = value
    for cot, metric, value in store.read_rows(
            "SELECT cot_id, metric, value FROM scores JOIN score_sources USING (source_id) WHERE name = ?", [source], db=db):
        per_cot[cot][metric] = value
    return dict(problems), dict(per_cot)


def test_real_eval_runs_match_a_plain_python_computation(qwen_store):
    """26 models' AIME 2024 and MATH500 runs (one sample each, the harness's verdicts first)."""
    run_difficulty(qwen_store, DifficultyOptions(ks=(2, 4, 8, 16)))
    expected_p, expected_c = independent_difficulty(qwen_store, (2, 4, 8, 16))
    got_p, got_c = stage_rows(qwen_store)
    assert set(got_p) == set(expected_p) and len(got_p) == 530
    for pid, fig in expected_p.items():
        assert got_p[pid] == pytest.approx(fig), pid
    assert set(got_c) == set(expected_c)
    for cot, fig in expected_c.items():
        assert got_c[cot] == pytest.approx(fig), cot
    # the AIME problems have 25 samples each: pass@16 is there, and some problem no model solved
    aime = [f for f in expected_p.values() if f["n"] == 25]
    assert len(aime) == 30 and all("pass@16" in f for f in aime) and any(f["unsolved_by_all"] for f in aime)


def test_a_cancelled_run_resumes_where_it_stopped(qwen_store, tmp_path):
    clean = tmp_path / "clean.duckdb"
    clean.write_bytes(qwen_store.read_bytes())
    run_difficulty(clean, DifficultyOptions(chunk_problems=100))
    calls = []
    result = run_difficulty(qwen_store, DifficultyOptions(chunk_problems=100), progress=lambda *a: calls.append(a),
                            cancelled=lambda: len(calls) >= 3)  # the start and two committed chunks
    assert result["cancelled"] and result["datasets"]["qwen25-math-eval"]["computed"] == 200
    resumed = run_difficulty(qwen_store, DifficultyOptions(chunk_problems=100))
    assert resumed["datasets"]["qwen25-math-eval"]["computed"] == 330  # only what was left
    assert stage_rows(qwen_store) == stage_rows(clean)
    for table, key in (("problem_scores", "problem_id, metric"), ("scores", "cot_id, metric"),
                       ("problem_model_figures", "problem_id, model")):
        total, distinct = store.read_rows(f"SELECT count(*), count(DISTINCT ({key})) FROM {table} "
                                          f"WHERE source_id = (SELECT source_id FROM score_sources WHERE name = 'difficulty')",
                                          db=qwen_store)[0]
        assert total == distinct, table


KILLER = """
import os, signal, sys
from core.difficulty import DifficultyOptions, run_difficulty
seen = []
def progress(stage, done, total):
    seen.append(done)
    if len(seen) == 3:  # the start and two committed chunks: die without any clean-up
        os.kill(os.getpid(), signal.SIGKILL)
run_difficulty(sys.argv[1], DifficultyOptions(chunk_problems=100), progress=progress)
"""


@pytest.mark.spawns_processes
def test_a_killed_run_resumes_without_doing_a_chunk_twice(qwen_store, tmp_path):
    clean = tmp_path / "clean.duckdb"
    clean.write_bytes(qwen_store.read_bytes())
    run_difficulty(clean, DifficultyOptions(chunk_problems=100))
    proc = subprocess.run([sys.executable, "-c", KILLER, str(qwen_store)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    resumed = run_difficulty(qwen_store, DifficultyOptions(chunk_problems=100))
    assert resumed["datasets"]["qwen25-math-eval"]["computed"] == 330
    assert stage_rows(qwen_store) == stage_rows(clean)


# ---------------------------------------------------------------------------- the student


def test_a_students_pass_rates_reach_the_teacher_problems_by_key(tmp_path):
    db = student_store(tmp_path)
    result = run_student(db, StudentOptions(evaluation="student eval", ks=(2,)))
    name = "student: student eval"
    assert result["source"] == name and result["model"] == "stu" and result["problems_evaluated"] == 2
    assert result["datasets"]["teacher"] == {"matched": 2, "current": False}
    p = problem_figures(db, name)
    assert p == {"t0": pytest.approx({"n": 4, "c": 3, "pass_rate": 0.75, "failed": 0, "pass@2": 1.0}),
                 "t1": pytest.approx({"n": 4, "c": 0, "pass_rate": 0.0, "failed": 1, "pass@2": 0.0})}
    report = difficulty.student_report(name, rare=0.8, db=db).to_dicts()
    assert report == [{"dataset": "teacher", "problems": 3, "matched": 2, "failed": 1, "rare": 1, "solved": 0,
                       "cots_of_failed": 2, "cots_of_rare": 2}]
    # Select keeps the teacher CoTs of the problems the student fails
    sources = default_score_sources(db=db)
    fails = Condition(Figure("failed", name, level="problem"), lo=1)
    sel = Selection(CotFilter(datasets=("teacher",)), Thresholds(), sources, conditions=(fails,))
    kept = store.read_rows("SELECT DISTINCT p.problem_key FROM cots c JOIN problems p USING (problem_id) "
                           "WHERE c.cot_id IN (SELECT unnest(?::BIGINT[]))", [kept_ids(sel, db=db).to_list()], db=db)
    assert kept == [("t1",)]
    reasons = {r for r in decide(sel, db=db).column("reason").to_pylist() if r}
    assert reasons == {f"failed · {name} (per problem) below 1", f"no failed · {name} (per problem)"}
    # a rerun does nothing; dropping the evaluation takes its figures along
    assert run_student(db, StudentOptions(evaluation="student eval", ks=(2,)))["datasets"]["teacher"]["current"]
    eval_id = store.read_rows("SELECT dataset_id FROM datasets WHERE name = 'student eval'", db=db)[0][0]
    store.drop_dataset(eval_id, db=db)
    assert problem_figures(db, name) == {}


def test_a_student_must_be_named_in_an_evaluation_of_several_models(tmp_path):
    db = tmp_path / "two.duckdb"
    ingest_generic(db, [{"id": "a", "question": "Q?", "response": "r", "answer": "1", "model": m, "correct": True}
                        for m in ("m1", "m2")], "two models", tokenizer=whitespace_tokenizer(tmp_path))
    with pytest.raises(difficulty.DifficultyError, match="choose the student with --model"):
        run_student(db, StudentOptions(evaluation="two models"))
    with pytest.raises(difficulty.DifficultyError, match="no answers of the model 'm3'"):
        run_student(db, StudentOptions(evaluation="two models", model="m3"))
    with pytest.raises(difficulty.DifficultyError, match="No ready dataset named"):
        run_student(db, StudentOptions(evaluation="nothing"))
    assert run_student(db, StudentOptions(evaluation="two models", model="m2"))["source"] == "student: two models (m2)"


# ---------------------------------------------------------------------------- problems, CLI, manifest


def test_problems_report_brings_difficulty_students_contamination_and_clusters_together(tmp_path):
    from core.contamination import run_contamination
    from core.ingest import ingest
    from core.neardup import run_near_duplicates
    from helpers import write_jsonl

    db = student_store(tmp_path)
    bench = write_jsonl(tmp_path / "mybench_test.jsonl", [{"problem": "What is $2+2$?", "answer": "4"},
                                                           {"problem": "Something else entirely, seven words long here.", "answer": "1"}])
    ingest(str(bench), fmt="benchmark", name="mybench_test", db=db)
    run_difficulty(db, DifficultyOptions(ks=(2,)))
    run_student(db, StudentOptions(evaluation="student eval", ks=(2,)))
    run_contamination(db)
    run_near_duplicates(db)
    total, report = difficulty.problems_report(CotFilter(datasets=("teacher",)), db=db)
    assert total == 3 and [r["problem_key"] for r in report] == ["t0", "t1", "t2"]
    t0 = report[0]
    assert t0["cots"] == 2 and t0["difficulty"]["n"] == 2 and t0["difficulty"]["models_detail"][0]["model"] == "teacher"
    assert t0["students"]["student: student eval"] == {"evaluation": "student eval", "model": "stu", "n": 4, "c": 3,
                                                       "pass_rate": 0.75, "failed": 0, "pass@2": 1.0}
    # contamination and clusters as their own tables hold them
    matches = store.read_rows("SELECT benchmark, overlap, exact FROM contamination_matches WHERE problem_id = ? "
                              "AND cot_id IS NULL", [t0["problem_id"]], db=db)
    assert [(m["benchmark"], m["overlap"], m["exact"]) for m in t0["contamination"]] == matches and matches
    cluster = dict(store.read_rows("SELECT metric, value FROM problem_scores JOIN score_sources USING (source_id) "
                                   "WHERE name = 'near-duplicates' AND problem_id = ?", [t0["problem_id"]], db=db))
    assert t0["near_duplicates"] == {"cluster_id": int(cluster["cluster_id"]), "cluster_size": int(cluster["cluster_size"])}
    assert report[2]["students"] == {}  # t2 was not evaluated
    # the command prints the same, under the same filter as the app's URL
    from core.cli import main

    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["--db", str(db), "problems", "--json", "--filter", "datasets=teacher", "--condition",
                     json.dumps({"level": "problem", "source": "student: student eval", "metric": "failed", "lo": 1})]) == 0
    printed = json.loads(out.getvalue())
    assert [r["problem_key"] for r in printed] == ["t1"] and printed[0] == json.loads(json.dumps(report[1], default=str))


def test_the_manifest_records_the_figures_and_the_student_evaluation(tmp_path):
    db = student_store(tmp_path)
    run_difficulty(db, DifficultyOptions(ks=(2,)))
    run_student(db, StudentOptions(evaluation="student eval", ks=(2,)))
    name = "student: student eval"
    sel = Selection(CotFilter(datasets=("teacher",), correct_source=OWN_CORRECTNESS), Thresholds(),
                    default_score_sources(db=db), conditions=(Condition(Figure("pass_rate", name, level="problem"), hi=0.8),))
    result = export.export(sel, "jsonl", db=db, out_dir=tmp_path / "out")
    section = result.manifest["problem_figures"]
    assert [s["name"] for s in section["sources"]] == [name] and section["sources"][0]["figures_used"] == ["pass_rate"]
    content_hash = store.read_rows("SELECT content_hash FROM datasets WHERE name = 'student eval'", db=db)[0][0]
    assert section["student_evaluations"] == [{"source": name, "evaluation": "student eval", "model": "stu",
                                               "content_hash": content_hash, "problems_evaluated": 2, "samples": 8,
                                               "samples_judged": 8, "correctness": "@own", "reads": ["teacher", "student eval"]}]
    lines = [json.loads(line) for line in (result.path.parent / section["file"]).read_text().splitlines()]
    assert section["problems"] == len(lines) == 2  # t0 and t1 (t2 has no student figure: dropped)
    assert {line["question_key"]: line[name]["pass_rate"] for line in lines} == {"what is 2+2": 0.75, "what is 3\\cdot 3": 0.0}


# ---------------------------------------------------------------------------- end to end with SmolLM2


STUDENT_BENCH = [
    ("What is 2 + 3?", "2 + 3 = <<2+3=5>>5\n#### 5"),
    ("Tom has 3 apples and buys 4 more. How many apples does he have?", "3 + 4 = <<3+4=7>>7\n#### 7"),
    ("What is 4817 * 9263?", "4817 * 9263 = <<4817*9263=44619871>>44619871\n#### 44619871"),
    ("How many prime numbers are there below 1000?", "There are 168.\n#### 168"),
]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # loading SmolLM2 and generating take minutes when the 2 cores are shared
def test_smollm2_as_the_student_selects_the_teacher_cots_of_the_problems_it_fails(tmp_path):
    """The loop turning back on itself: SmolLM2 is evaluated on a benchmark the test builds, its
    pass rates reach the teacher dataset's problems by question key, and a selection keeps the
    teacher CoTs of exactly the problems it never solved (checked against plain SQL over the
    evaluation's math-verify verdicts)."""
    from core.evaluate import EvalOptions, evaluate
    from core.ingest import ingest
    from core.verify import SOURCE as VERIFY_SOURCE

    db = tmp_path / "loop.duckdb"
    bench_file = tmp_path / "loop_bench.jsonl"
    bench_file.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in STUDENT_BENCH))
    bench = ingest(str(bench_file), fmt="benchmark", db=db).name
    # the teacher's CoTs of the same questions, worded with an instruction the question key drops
    teacher = [{"id": f"t{i}", "question": f"{q} Put your final answer in \\boxed{{}}.",
                "response": f"Working it out step {j}. The answer is {a.split('#### ')[1]}.",
                "answer": a.split("#### ")[1], "model": "teacher", "correct": True}
               for i, (q, a) in enumerate(STUDENT_BENCH) for j in range(2)]
    ingest_generic(db, teacher, "teacher", tokenizer=whitespace_tokenizer(tmp_path))

    result = evaluate(EvalOptions(benchmark=bench, problems=4, k=2, max_new_tokens=32, batch_size=8), db=db,
                      log=lambda _: None)
    evaluation = result["dataset"]
    student = run_student(db, StudentOptions(evaluation=evaluation, ks=(2,)))
    name = student["source"]
    assert student["problems_evaluated"] == 4 and student["datasets"]["teacher"]["matched"] == 4

    # independently: the student's correct answers per question, from its math-verify verdicts
    solved = dict(store.read_rows(
        "SELECT p.question, sum(s.value) FROM cots c JOIN problems p USING (problem_id) JOIN datasets d ON d.dataset_id = c.dataset_id "
        "JOIN scores s ON s.cot_id = c.cot_id AND s.metric = 'correct' JOIN score_sources ss ON ss.source_id = s.source_id "
        "WHERE d.name = ? AND ss.name = ? GROUP BY p.question", [evaluation, VERIFY_SOURCE], db=db))
    assert len(solved) == 4
    failed = {q for q, c in solved.items() if c == 0}
    assert "What is 4817 * 9263?" in failed  # a 135M model does not multiply four-digit numbers in 32 tokens
    teacher_figures = dict(((key, metric), value) for key, metric, value in store.read_rows(
        "SELECT p.problem_key, ps.metric, ps.value FROM problem_scores ps JOIN score_sources ss USING (source_id) "
        "JOIN problems p USING (problem_id) JOIN datasets d ON d.dataset_id = p.dataset_id WHERE ss.name = ? AND d.name = 'teacher'",
        [name], db=db))
    assert {f"t{i}": (teacher_figures[(f"t{i}", "c")], teacher_figures[(f"t{i}", "failed")]) for i in range(4)} == {
        f"t{i}": (solved[q], 1.0 if q in failed else 0.0) for i, (q, _) in enumerate(STUDENT_BENCH)}

    fails = Condition(Figure("failed", name, level="problem"), lo=1)
    sel = Selection(CotFilter(datasets=("teacher",)), Thresholds(), default_score_sources(db=db), conditions=(fails,))
    kept = store.read_rows("SELECT p.problem_key, count(*) FROM cots c JOIN problems p USING (problem_id) "
                           "WHERE c.cot_id IN (SELECT unnest(?::BIGINT[])) GROUP BY 1 ORDER BY 1", [kept_ids(sel, db=db).to_list()], db=db)
    assert kept == sorted((f"t{i}", 2) for i, (q, _) in enumerate(STUDENT_BENCH) if q in failed)
    report = next(r for r in difficulty.student_report(name, db=db).to_dicts() if r["dataset"] == "teacher")
    assert report["failed"] == len(failed) and report["cots_of_failed"] == 2 * len(failed)
