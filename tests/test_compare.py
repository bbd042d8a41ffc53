"""Compare runs (core/compare.py, pages/compare.py) on evaluation runs made the way an
evaluation makes them: generations files ingested by `evaluate.ingest_generations` (the real
ingest, math-verify, the token stage), whose answers are right or wrong by construction. The
numbers are checked against scipy's and the statistics module's own computations; the slow
end-to-end run with SmolLM2 and a LoRA adapter is in tests/test_e2e_finetune_eval.py."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import polars as pl
import pytest
from scipy.stats import binomtest
from streamlit.testing.v1 import AppTest

from core import charts, compare, identity, store
from core.errors import UserError
from core.evaluate import PROMPT_SUFFIX, ingest_generations
from core.ingest import ingest

ROOT = Path(__file__).resolve().parents[1]
N = 10
A_RIGHT = {0, 1, 2, 3}
B_RIGHT = {2, 3, 4, 5, 6, 7, 8}


def question(i: int) -> str:
    return f"A shop sells {i + 3} pens a day. How many pens does it sell in {i + 2} days?"


def answer(i: int) -> int:
    return (i + 3) * (i + 2)


def generations(path: Path, model: str, right: dict[int, list[bool]], *, budget: int, wrapper: str = "",
                length: dict[int, str] | None = None) -> Path:
    """A generations file as core.evaluate writes it: one line per sample."""
    lines = []
    for i, samples in right.items():
        for j, ok in enumerate(samples):
            finish = (length or {}).get(i, "stop")
            work = " Let me add it up step by step." * (3 + 5 * i) if finish == "stop" else " And again," * 60
            response = f"<think>{work}</think> The answer is \\boxed{{{answer(i) if ok else answer(i) + 1}}}."
            lines.append({"id": f"p{i}", "benchmark": "pens", "question": question(i) + wrapper, "reference": str(answer(i)),
                          "model": model, "sample": j, "response": response, "finish_reason": finish,
                          "max_new_tokens": budget, "completion_tokens": 10})
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


@pytest.fixture(scope="module")
def runs_store(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("compare")
    db = folder / "runs.duckdb"
    bench = folder / "pens_test.jsonl"
    bench.write_text("".join(json.dumps({"question": question(i), "answer": str(answer(i))}) + "\n" for i in range(N + 1)))
    ingest(str(bench), fmt="benchmark", db=db)
    # A: the base model, k = 1, budget 64 (two answers cut there); B: the tuned one, asked with the
    # Qwen prompt suffix (the same problems by question key), k = 1, plus a problem A never saw
    ingest_generations(generations(folder / "a.jsonl", "base", {i: [i in A_RIGHT] for i in range(N)}, budget=64,
                                   length={8: "length", 9: "length"}), "eval base", db=db)
    ingest_generations(generations(folder / "b.jsonl", "base+tuned", {i: [i in B_RIGHT] for i in range(N + 1)}, budget=128,
                                   wrapper=PROMPT_SUFFIX), "eval tuned", db=db)
    # C and D: k = 2 on four problems
    ingest_generations(generations(folder / "c.jsonl", "base", {0: [True, False], 1: [False, False], 2: [True, True],
                                                                3: [False, True]}, budget=64), "eval base k2", db=db)
    ingest_generations(generations(folder / "d.jsonl", "base+tuned", {0: [True, True], 1: [True, False], 2: [True, True],
                                                                      3: [False, False]}, budget=64), "eval tuned k2", db=db)
    return db


A = compare.Run("eval base", "base", "pens")
B = compare.Run("eval tuned", "base+tuned", "pens")


def test_runs_are_listed_with_their_budget(runs_store):
    runs = compare.list_runs(db=runs_store)
    assert runs.select("dataset", "model", "benchmark", "problems", "k", "max_new_tokens").rows() == [
        ("eval base", "base", "pens", N, 1, 64), ("eval tuned", "base+tuned", "pens", N + 1, 1, 128),
        ("eval base k2", "base", "pens", 4, 2, 64), ("eval tuned k2", "base+tuned", "pens", 4, 2, 64)]


def test_one_sample_per_problem_wilson_interval_paired_difference_and_mcnemar(runs_store):
    result = compare.compare(A, B, db=runs_store)
    assert (result.shared, result.only_a, result.only_b) == (N, 0, 1)  # matched by question key despite the suffix
    # accuracy and its Wilson interval, against scipy
    for summary, right in ((result.a, A_RIGHT), (result.b, B_RIGHT - {N})):
        assert summary.accuracy == pytest.approx(len(right) / N)
        ci = binomtest(len(right), N).proportion_ci(method="wilson")
        assert summary.ci == pytest.approx((ci.low, ci.high))
        assert summary.interval.startswith("Wilson")
    # the paired difference over the problems, against the statistics module
    diffs = [(i in B_RIGHT) - (i in A_RIGHT) for i in range(N)]
    half = 1.959963984540054 * statistics.stdev(diffs) / math.sqrt(N)
    assert result.difference == pytest.approx(statistics.mean(diffs))
    assert result.difference_ci == pytest.approx((statistics.mean(diffs) - half, statistics.mean(diffs) + half))
    # the flips, and McNemar's exact test on them against scipy's binomial test
    lost, gained = sorted(A_RIGHT - B_RIGHT), sorted(B_RIGHT - A_RIGHT)
    assert [q for q in result.lost["question"]] == [question(i) for i in lost]
    assert [q for q in result.gained["question"]] == [question(i) for i in gained]
    assert result.mcnemar_p == pytest.approx(binomtest(len(lost), len(lost) + len(gained), 0.5).pvalue)
    # each flip names a CoT of each run: a correct one from the run that solves it, an incorrect one from the other
    row = result.gained.row(0, named=True)
    verdicts = dict(store.read_rows(
        "SELECT s.cot_id, s.value FROM scores s JOIN score_sources ss USING (source_id) WHERE ss.name = 'math-verify'",
        db=runs_store))
    assert verdicts[row["cot_id_b"]] == 1.0 and verdicts[row["cot_id_a"]] == 0.0
    assert store.read_rows("SELECT p.question FROM problems p WHERE p.problem_id = ?", [row["problem_id_b"]],
                           db=runs_store)[0][0] == question(gained[0]) + PROMPT_SUFFIX
    # the budgets: A's 64 with its two answers cut there
    assert (result.a.max_new_tokens, result.a.hit_budget, result.b.max_new_tokens, result.b.hit_budget) == (64, 2, 128, 0)
    assert result.as_dict()["gained"] == [identity.question_key(question(i)) for i in gained]


def test_several_samples_per_problem_use_pass_rates_and_a_normal_interval(runs_store):
    result = compare.compare(compare.Run("eval base k2", "base", "pens"), compare.Run("eval tuned k2", "base+tuned", "pens"),
                             db=runs_store)
    rates_c, rates_d = [0.5, 0.0, 1.0, 0.5], [1.0, 0.5, 1.0, 0.0]
    assert result.a.accuracy == pytest.approx(statistics.mean(rates_c))
    half = 1.959963984540054 * statistics.stdev(rates_c) / 2
    assert result.a.ci == pytest.approx((max(0, statistics.mean(rates_c) - half), min(1, statistics.mean(rates_c) + half)))
    assert result.a.interval == "normal 95% interval over the problems' pass rates"
    # solved: at least half of the answers correct; problem 1 flips to solved, problem 3 from solved
    assert [q for q in result.gained["question"]] == [question(1)]
    assert [q for q in result.lost["question"]] == [question(3)]
    assert result.mcnemar_p is None  # McNemar is for one answer per problem
    assert result.difference == pytest.approx(statistics.mean(d - c for c, d in zip(rates_c, rates_d)))


def test_the_budget_curves_and_the_lengths_are_drawn_from_the_shared_problems(runs_store):
    result = compare.compare(A, B, db=runs_store)
    acc, caps = compare.budget_curves(result)
    longest = int(result.cots["n_tokens"].max())
    budgets = sorted(set(acc["budget"].to_list()))
    assert 64 in budgets and 128 in budgets and budgets[-1] >= longest and budgets[-2] < longest
    # accuracy at a budget: correct and no longer than it, against a count by hand
    cots = result.cots.filter(pl.col("run").str.starts_with("A:"))
    at_64 = acc.filter((pl.col("run").str.starts_with("A:")) & (pl.col("budget") == 64))["accuracy"][0]
    assert at_64 == pytest.approx(cots.filter(pl.col("correct") & (pl.col("n_tokens") <= 64)).height / N)
    assert caps.rows() == [(f"A: {A.label}", 64, 2, N), (f"B: {B.label}", 128, 0, N)]
    figure = charts.budget_figure(acc, n_cots=result.cots.height, group_cols=("run",), caps=caps)
    lines = [t for t in figure.data if t.meta and "max_new_tokens" in t.meta]
    assert sorted({(t.x[0], t.meta["hit"]) for t in lines}) == [(64, 2), (128, 0)]
    assert "2 of 10 answers stopped there" in lines[0].hovertemplate
    table = compare.length_table(result)
    by_run = {(r["run"][:1], r["correct"]): r["count"] for r in table.iter_rows(named=True)}
    assert by_run == {("A", "correct"): 4, ("A", "incorrect"): 6, ("B", "correct"): 7, ("B", "incorrect"): 3}
    boxes = compare.length_figure(result).data
    assert [b.name for b in boxes] == ["correct", "incorrect"] and len(boxes[0].y) == 11


def test_the_distributions_budget_chart_marks_the_budget_of_evaluation_runs(runs_store):
    from core.queries import CotFilter

    caps = compare.budget_caps(CotFilter(datasets=("eval base", "eval tuned")), db=runs_store)
    assert caps.select("dataset", "model", "benchmark", "max_new_tokens", "hit", "n").rows() == [
        ("eval base", "base", "pens", 64, 2, N), ("eval tuned", "base+tuned", "pens", 128, 0, N + 1)]


def test_bad_requests_say_what_to_change(runs_store):
    with pytest.raises(UserError, match="two different runs"):
        compare.compare(A, A, db=runs_store)
    with pytest.raises(UserError, match="has no CoT in the store"):
        compare.compare(A, compare.Run("eval tuned", "someone else", "pens"), db=runs_store)


def test_the_compare_command(runs_store, capsys):
    from core.cli import main

    assert main(["--db", str(runs_store), "compare", "--a", "eval base", "--b", "eval tuned", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["a"]["accuracy"], out["b"]["accuracy"], out["shared_problems"], out["only_b"]) == (0.4, 0.7, N, 1)
    assert out["a"]["ci95"] == pytest.approx(list(binomtest(4, N).proportion_ci(method="wilson")))
    assert sorted(out["gained"]) == sorted(identity.question_key(question(i)) for i in B_RIGHT - A_RIGHT)
    assert sorted(out["lost"]) == sorted(identity.question_key(question(i)) for i in A_RIGHT - B_RIGHT)
    assert main(["--db", str(runs_store), "compare", "--a", "eval base", "--b", "eval tuned"]) == 0
    text = capsys.readouterr().out
    assert "A: base · eval base on pens: 40.0 %" in text and "flipped: 5 solved by B only, 2 solved by A only" in text
    assert main(["--db", str(runs_store), "compare", "--list", "--json"]) == 0
    assert {r["dataset"] for r in json.loads(capsys.readouterr().out)} == {"eval base", "eval tuned", "eval base k2", "eval tuned k2"}
    assert main(["--db", str(runs_store), "compare", "--a", "eval base", "--b", "no such run"]) == 2
    assert "No run in the dataset 'no such run'" in capsys.readouterr().err


def test_the_compare_page(app_store, runs_store):
    app_store(runs_store)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at = at.switch_page("pages/compare.py").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="compare_a").value == 0 and at.selectbox(key="compare_b").value == 1  # B: the same benchmark
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Accuracy A"] == "40.0 %" and metrics["Accuracy B"] == "70.0 %"
    assert metrics["B − A"] == "+30.0 points" and metrics["Problems that flipped"] == "+5 / −2"
    ci = binomtest(4, N).proportion_ci(method="wilson")
    assert any(f"95% CI {100 * ci.low:.1f}–{100 * ci.high:.1f} %" in c.value for c in at.caption)
    assert any("10 problems answered by both" in c.value and "1 only in B" in c.value for c in at.caption)
    specs = {c.proto.id: json.loads(c.proto.spec) for c in at.get("plotly_chart")}
    budget = next(s for k, s in specs.items() if "compare_budget" in k)
    assert {t["name"] for t in budget["data"] if t["name"].startswith("max new tokens")} == {
        f"max new tokens · A: {A.label}", f"max new tokens · B: {B.label}"}
    tables = [d.value for d in at.dataframe]
    gained = next(t for t in tables if "B pass rate" in t.columns and (t["B pass rate"] == 1).all() and len(t) == 5)
    assert list(gained["problem"]) == [question(i) for i in sorted(B_RIGHT - A_RIGHT)]
    # selecting a flipped problem shows both CoTs and opens them in the Reader
    at.session_state["compare_gained"] = {"selection": {"rows": [0], "columns": []}}
    at = at.run()
    assert not at.exception, at.exception
    opens = [b for b in at.button if b.label.startswith("Open")]
    assert [b.label for b in opens] == ["Open A's CoT in the Reader", "Open B's CoT in the Reader"]
    assert any(":green-badge[solved]" in m.value for m in at.markdown)
    at = opens[1].click().run()
    assert not at.exception, at.exception
    row = compare.compare(A, B, db=runs_store).gained.row(0, named=True)
    assert at.session_state["reader_problem_id"] == row["problem_id_b"]
    assert at.session_state["reader_cot_id"] == row["cot_id_b"]
    assert at.session_state["reader_view_cot"] == row["cot_id_b"]  # the Reader shows that CoT alone
    assert any(m.value.startswith("**CoT ") and f"Internal id {row['cot_id_b']}." in " ".join(c.value for c in at.caption)
               for m in at.markdown)


def test_the_page_says_what_it_needs_without_two_runs(app_store, judge_store):
    app_store(judge_store)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at = at.switch_page("pages/compare.py").run()
    assert not at.exception, at.exception
    assert any("Compare needs two evaluation runs" in i.value for i in at.info)


def test_a_page_without_the_filter_leaves_the_next_filter_page_working(app_store, runs_store):
    """Compare (like Jobs and SQL) draws no sidebar filter, so Streamlit drops the filter's widget
    state; the next page with the filter starts again from the URL instead of failing."""
    app_store(runs_store)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    for page in ("pages/compare.py", "pages/explore.py", "pages/jobs.py", "pages/reader.py"):
        at = at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
