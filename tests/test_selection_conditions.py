"""Selections with conditions on any figure (a judge's logic, a stage's problem figures, CoT
columns), and rules ranking by any figure, on the figures store of tests/helpers.py (TINY plus a
generic dataset, a judge's logic, a stage's pass rate and contamination flags). Kept CoTs and
drop reasons are checked against plain Python over values read with plain SQL."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from core import recipes, selection, store
from core.figures import Condition, Figure
from core.queries import OWN_CORRECTNESS, CotFilter
from core.selection import CapacityMatched, PerProblem, Score, Selection, TargetSize, Thresholds
from tests.helpers import JUDGE, STAGE, assert_same_report, build_figures_store

LOGIC = Figure("logic", JUDGE)
PASS_RATE = Figure("pass_rate", STAGE, level="problem")
CONTAMINATED = Figure("contaminated", STAGE, level="problem")


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    return build_figures_store(tmp_path_factory.mktemp("sel-conditions"))


@pytest.fixture(scope="module")
def cots(db) -> dict[int, dict]:
    """Every CoT's numbers, read with plain SQL: correct is the dataset's own verdict."""
    def value(table: str, key: str, source: str, metric: str) -> str:
        return (f"(SELECT v.value FROM {table} v JOIN score_sources ss USING (source_id) WHERE v.{key} = c.{key} "
                f"AND ss.name = '{source}' AND v.metric = '{metric}')")

    rows = store.read_df(
        "SELECT c.cot_id, c.problem_id, c.model, d.name AS dataset, c.n_tokens, c.n_chars, "
        f"{value('scores', 'cot_id', JUDGE, 'logic')} AS logic, "
        f"{value('problem_scores', 'problem_id', STAGE, 'pass_rate')} AS pass_rate, "
        f"{value('problem_scores', 'problem_id', STAGE, 'contaminated')} AS contaminated, "
        f"coalesce({value('scores', 'cot_id', 'omnithought', 'correct')}, "
        f"{value('scores', 'cot_id', 'math-verify', 'correct')}) AS correct "
        "FROM cots c JOIN datasets d USING (dataset_id)", db=db)
    return {r["cot_id"]: r for r in rows.iter_rows(named=True)}


def sources(db):
    return selection.default_score_sources(db=db)


def kept(sel, db) -> set[int]:
    return set(selection.kept_ids(sel, db=db).to_list())


def reasons(report) -> dict[str, int]:
    return dict(zip(report.reasons["reason"], report.reasons["cots"]))


def test_default_correctness_is_each_datasets_own(db):
    assert sources(db).correct[:2] == ("omnithought", "math-verify")


def test_thoughtx_with_the_judges_logic(db, cots):
    """EasyDistill's ThoughtX filter is on the judge's logical correctness: a condition on logic
    plus the thresholds; a CoT the condition drops says so, the rest get the rule's reasons."""
    sel = Selection(CotFilter(), Thresholds(require_correct=True), sources(db), conditions=(Condition(LOGIC, lo=1),))
    expected = {i for i, c in cots.items() if c["logic"] == 1 and c["correct"] == 1}
    assert kept(sel, db) == expected and expected
    report = selection.evaluate(sel, db=db)
    assert reasons(report) == {
        "no logic · judge smollm": sum(c["logic"] is None for c in cots.values()),
        "logic · judge smollm below 1": sum(c["logic"] == 0 for c in cots.values()),
        "incorrect": sum(c["logic"] == 1 and c["correct"] == 0 for c in cots.values()),
    }
    assert report.pool_cots == len(cots) and report.kept_cots == len(expected)
    pool = selection.load_pool(sel, db=db)
    assert_same_report(selection.evaluate(sel, pool=pool), report)


def test_shortest_correct_among_clean_problems(db, cots):
    sel = Selection(CotFilter(), PerProblem("shortest_correct"), sources(db),
                    conditions=(Condition(CONTAMINATED, missing=True),))
    expected = set()
    for problem in {c["problem_id"] for c in cots.values() if c["contaminated"] is None}:
        correct = [c for c in cots.values() if c["problem_id"] == problem and c["correct"] == 1]
        if correct:
            expected.add(min(correct, key=lambda c: (c["n_tokens"], c["n_chars"], c["cot_id"]))["cot_id"])
    assert kept(sel, db) == expected
    flagged = sum(c["contaminated"] is not None for c in cots.values())
    assert reasons(selection.evaluate(sel, db=db))["contaminated · difficulty (per problem) has a value"] == flagged > 0


def test_target_size_ranks_by_a_problem_figure(db, cots):
    score = Score("pass_rate", STAGE, level="problem")
    sel = Selection(CotFilter(), TargetSize(n=3, balance="dataset", within="score", score=score), sources(db))
    eligible = sorted((c for c in cots.values() if c["pass_rate"] is not None and c["correct"] == 1),
                      key=lambda c: (-c["pass_rate"], c["cot_id"]))
    assert kept(sel, db) == {c["cot_id"] for c in eligible[:3]}
    numbers = selection.kept_numbers(sel, db=db)
    assert numbers["score"].to_list() == [cots[i]["pass_rate"] for i in numbers["cot_id"]]
    top = PerProblem("top_k", k=1, score=Score("pass_rate", STAGE, level="problem", higher_is_better=False))
    by_problem = kept(Selection(CotFilter(), top, sources(db)), db)
    # a problem figure ties every CoT of a problem: the lowest cot_id of each scored problem
    scored = {c["problem_id"] for c in cots.values() if c["pass_rate"] is not None}
    assert by_problem == {min(i for i, c in cots.items() if c["problem_id"] == p) for p in scored}


RULES = [
    Thresholds(cd_range=(3, 6), tokens_range=(0, 60), require_correct=True),
    CapacityMatched(capacity=5, k=1),
    PerProblem("shortest_correct"),
    PerProblem("top_k", k=1, score=Score("rv", "omnithought (DeepSeek-R1)")),
    TargetSize(n=4, balance="model"),
]
CONDITIONS = [
    (Condition(LOGIC, lo=0, hi=0),),
    (Condition(PASS_RATE, lo=0.25), Condition(Figure("n_tokens"), hi=70)),
    (Condition(CONTAMINATED, missing=True), Condition(LOGIC, missing=True)),
]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.mode)
@pytest.mark.parametrize("conditions", CONDITIONS, ids=lambda cs: " & ".join(c.describe() for c in cs))
def test_the_rule_decides_among_the_cots_that_pass_the_conditions(db, rule, conditions):
    """A selection's conditions drop CoTs before the rule: it keeps what the same rule keeps
    on a pool that never had them (the conditions in the base filter), and every CoT they
    drop carries their reason."""
    src = sources(db)
    with_conditions = Selection(CotFilter(), rule, src, seed=5, conditions=conditions)
    narrowed = Selection(CotFilter(conditions=conditions), rule, src, seed=5)
    assert kept(with_conditions, db) == kept(narrowed, db)
    decision = pl.from_arrow(selection.decide(with_conditions, db=db)).with_columns(pl.col("reason").cast(pl.String))
    survivors = set(selection.decide(narrowed, db=db).column("cot_id").to_pylist())
    dropped_by_conditions = decision.filter(~pl.col("passed_conditions"))
    assert set(dropped_by_conditions["cot_id"]) == set(decision["cot_id"]) - survivors
    labels = [c.figure.label() for c in conditions]
    assert all(any(label in reason for label in labels) for reason in dropped_by_conditions["reason"])
    # the pool in memory gives the same report and the same dropped pages
    pool = selection.load_pool(with_conditions, db=db)
    assert_same_report(selection.evaluate(with_conditions, pool=pool), selection.evaluate(with_conditions, db=db))
    full = selection.decide(with_conditions, pool=pool)
    for sort_by in ("cot_id", "n_tokens", "reason"):
        expected = selection.dropped_page(full, sel=with_conditions, sort_by=sort_by, limit=7, offset=2, db=db)
        got = selection.dropped_page(sel=with_conditions, pool=pool, sort_by=sort_by, limit=7, offset=2, db=db)
        assert_frame_equal(got, expected)


def test_moving_a_conditions_bounds_keeps_the_pool(db, cots):
    base = Selection(CotFilter(), Thresholds(), sources(db), conditions=(Condition(LOGIC, lo=1),))
    moved = Selection(CotFilter(), Thresholds(), sources(db), conditions=(Condition(LOGIC, hi=0),))
    other = Selection(CotFilter(), Thresholds(), sources(db), conditions=(Condition(PASS_RATE, hi=0),))
    assert selection.pool_key(base) == selection.pool_key(moved) != selection.pool_key(other)
    pool = selection.load_pool(base, db=db)
    for sel, predicate in ((base, lambda c: c["logic"] == 1), (moved, lambda c: c["logic"] == 0), (base, lambda c: c["logic"] == 1)):
        report = selection.evaluate(sel, pool=pool)
        assert report.kept_cots == sum(map(predicate, cots.values()))
        assert set(selection.kept_ids(sel, pool=pool).to_list()) == {i for i, c in cots.items() if predicate(c)}
    assert list(pool._sorted) == ["fig_0"]  # the logic column, read once in the index order and reused
    dropped = selection.dropped_page(sel=moved, pool=pool, limit=100, db=db)
    assert dropped[LOGIC.label()].to_list() == [cots[i]["logic"] for i in dropped["cot_id"]]


def test_a_filter_condition_and_own_correctness_shape_the_pool(db, cots):
    base = CotFilter(correct_source=OWN_CORRECTNESS, correct="correct", conditions=(Condition(PASS_RATE, lo=0.5),))
    report = selection.evaluate(Selection(base, Thresholds(), sources(db)), db=db)
    assert report.pool_cots == sum(c["correct"] == 1 and (c["pass_rate"] or 0) >= 0.5 for c in cots.values())


def test_recipes_keep_conditions_and_old_recipes_still_load(db, tmp_path):
    sel = Selection(CotFilter(correct_source=OWN_CORRECTNESS, conditions=(Condition(CONTAMINATED, missing=True),)),
                    TargetSize(n=3, within="score", score=Score("pass_rate", STAGE, level="problem")), sources(db),
                    seed=3, conditions=(Condition(LOGIC, lo=0), Condition(Figure("n_chars"), 50, 400)))
    recipe = recipes.Recipe("with conditions", sel)
    path = recipes.save(recipe)
    data = json.loads(path.read_text())
    assert data["format_version"] == 3 and len(data["conditions"]) == 2 and data["base"]["conditions"][0]["missing"]
    assert recipes.load("with conditions") == recipe
    assert recipes.apply(recipes.load("with conditions"), db=db).to_list() == selection.kept_ids(sel, db=db).to_list()
    # a recipe file as version 1 wrote it: no conditions, a plain Score
    old = {"format_version": 1, "name": "old", "description": "", "seed": 0, "mode": "per_problem",
           "base": {"datasets": ["tiny"], "models": [], "benchmarks": [], "rv_source": None, "rv_range": None,
                    "cd_source": None, "cd_range": None, "correct_source": "omnithought", "correct": "any",
                    "tokens_range": [0, 1000], "reflections_range": None, "truncated": None, "text": "", "problem_ids": []},
           "sources": {"rv": ["omnithought (DeepSeek-R1)"], "cd": [], "correct": ["omnithought"]},
           "params": {"rule": "top_k", "k": 1, "score": {"metric": "rv", "source": "omnithought (DeepSeek-R1)",
                                                        "higher_is_better": True}, "require_correct": False}}
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = recipes.load(tmp_path / "old.json")
    assert loaded.selection.conditions == () and loaded.selection.base.conditions == ()
    assert loaded.selection.rule.score == Score("rv", "omnithought (DeepSeek-R1)")
    assert recipes.apply(loaded, db=db).len() == 4  # one per TINY problem with a first-judge RV
    with pytest.raises(recipes.RecipeError, match="version 1 recipe has no conditions"):
        recipes.Recipe.from_dict({**old, "conditions": [Condition(LOGIC).as_dict()]})
    with pytest.raises(recipes.RecipeError, match="not supported"):
        recipes.Recipe.from_dict({**old, "format_version": 4})


def test_rvcd_mix_reads_logical_correctness_from_the_judge(db, cots):
    """EasyDistill's mixer with its own validity test: the judge's logic at least 1 (not the
    dataset's verdict); with every candidate kept, the kept CoTs are those with logic >= 1 and a
    CD inside the bins, read here with plain SQL."""
    src = sources(db)
    cd = dict(store.read_rows(
        "SELECT s.cot_id, max(s.value) FROM scores s JOIN score_sources ss USING (source_id) "
        "WHERE s.metric = 'cd' AND list_contains(?, ss.name) GROUP BY s.cot_id", [list(src.cd)], db=db))
    rule = selection.RvCdMix(score=Score("logic", JUDGE))
    expected = {i for i, c in cots.items() if (c["logic"] or 0) >= 1 and cd.get(i) is not None and 0 <= cd[i] <= 10}
    assert kept(Selection(CotFilter(), rule, src), db) == expected and expected
    report = selection.evaluate(Selection(CotFilter(), rule, src), db=db)
    assert reasons(report)["logic · judge smollm below 1"] == sum(
        c["logic"] == 0 and cd.get(i) is not None for i, c in cots.items())
