"""Generic figures: the catalogue, conditions in the shared filter, each dataset's own
correctness, and the empty-filter diagnosis, on a store built by the real ingest (two
datasets) plus a judge's and a stage's rows written as those jobs write them. Every figure is
checked against plain SQL or plain Python written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core import figures, queries, recipes, store
from core.figures import Condition, Figure, FigureError
from core.queries import OWN_CORRECTNESS, CotFilter
from tests.helpers import JUDGE, STAGE, TINY, build_figures_store, records
from tests.helpers import figures_generic_rows as _generic_rows


@pytest.fixture(scope="module")
def store_template(tmp_path_factory) -> Path:
    return build_figures_store(tmp_path_factory.mktemp("figures"))


@pytest.fixture
def db(store_template, tmp_path) -> Path:
    target = tmp_path / "figures.duckdb"
    target.write_bytes(store_template.read_bytes())
    return target


def sql_count(db: Path, where: str, params: list | None = None) -> int:
    return store.read_rows(f"SELECT count(*) FROM cots c WHERE {where}", params or [], db=db)[0][0]


# ---------------------------------------------------------------------------- catalogue


def test_the_catalogue_lists_every_figure_with_its_range(db):
    cat = figures.catalogue(db=db)
    rows = {(r["level"], r["source"], r["metric"]): r for r in cat.iter_rows(named=True)}
    # every (source, metric) with a value, counted independently
    expected = store.read_rows(
        "SELECT 'cot', ss.name, s.metric, count(s.value), min(s.value), max(s.value) FROM scores s "
        "JOIN score_sources ss USING (source_id) GROUP BY ALL HAVING count(s.value) > 0 UNION ALL "
        "SELECT 'problem', ss.name, s.metric, count(s.value), min(s.value), max(s.value) FROM problem_scores s "
        "JOIN score_sources ss USING (source_id) GROUP BY ALL", db=db)
    for level, source, metric, n, lo, hi in expected:
        row = rows[(level, source, metric)]
        assert (row["count"], row["min"], row["max"]) == (n, lo, hi)
    n_tokens = rows[("cot", None, "n_tokens")]
    assert (n_tokens["count"], n_tokens["max"]) == store.read_rows("SELECT count(n_tokens), max(n_tokens) FROM cots", db=db)[0]
    assert len(rows) == len(expected) + sum(1 for k in rows if k[1] is None)
    logic = rows[("cot", JUDGE, "logic")]
    assert logic["count"] == 7 and logic["binary"] and logic["integer"] and logic["kind"] == "judge"
    assert rows[("problem", STAGE, "pass_rate")]["label"] == "pass_rate · difficulty (per problem)"
    assert not rows[("problem", STAGE, "pass_rate")]["integer"]
    assert rows[("cot", "omnithought (DeepSeek-R1)", "rv")]["integer"] and not rows[("cot", "omnithought (DeepSeek-R1)", "rv")]["binary"]


# ---------------------------------------------------------------------------- conditions in the filter

LOGIC = Figure("logic", JUDGE)
PASS_RATE = Figure("pass_rate", STAGE, level="problem")
CONTAMINATED = Figure("contaminated", STAGE, level="problem")

JUDGE_ROWS = f"SELECT cot_id FROM scores JOIN score_sources USING (source_id) WHERE name = '{JUDGE}' AND metric = 'logic'"
STAGE_ROWS = f"SELECT problem_id FROM problem_scores JOIN score_sources USING (source_id) WHERE name = '{STAGE}'"

CASES = [
    (Condition(LOGIC, lo=1), f"cot_id IN ({JUDGE_ROWS} AND value >= 1)"),
    (Condition(LOGIC, lo=0, hi=0), f"cot_id IN ({JUDGE_ROWS} AND value = 0)"),
    (Condition(LOGIC), f"cot_id IN ({JUDGE_ROWS} AND value IS NOT NULL)"),
    (Condition(LOGIC, missing=True), f"cot_id NOT IN ({JUDGE_ROWS} AND value IS NOT NULL)"),
    (Condition(PASS_RATE, lo=0.5), f"problem_id IN ({STAGE_ROWS} AND metric = 'pass_rate' AND value >= 0.5)"),
    (Condition(PASS_RATE, hi=0.25), f"problem_id IN ({STAGE_ROWS} AND metric = 'pass_rate' AND value <= 0.25)"),
    (Condition(CONTAMINATED, missing=True), f"problem_id NOT IN ({STAGE_ROWS} AND metric = 'contaminated')"),
    (Condition(Figure("n_tokens"), lo=30, hi=60), "n_tokens BETWEEN 30 AND 60"),
    (Condition(Figure("n_chars"), hi=200), "n_chars <= 200"),
]


@pytest.mark.parametrize("cond, where", CASES, ids=[c.describe() for c, _ in CASES])
def test_a_condition_keeps_what_sql_counts(db, cond, where):
    expected = sql_count(db, where)
    assert queries.count(CotFilter(conditions=(cond,)), db=db)["cots"] == expected
    # and with the other filters, which join the scores for their columns
    rows = queries.page(CotFilter(conditions=(cond,), correct_source=OWN_CORRECTNESS), limit=1000, db=db)
    assert rows.height == expected
    assert set(rows["cot_id"]) == {r[0] for r in store.read_rows(f"SELECT cot_id FROM cots c WHERE {where}", db=db)}


def test_conditions_combine_with_each_other_and_the_fixed_fields(db):
    f = CotFilter(models=("DeepSeek-R1",), conditions=(Condition(LOGIC, lo=0), Condition(PASS_RATE, lo=0.5)))
    expected = sql_count(db, f"model = 'DeepSeek-R1' AND cot_id IN ({JUDGE_ROWS} AND value >= 0) AND problem_id IN "
                             f"({STAGE_ROWS} AND metric = 'pass_rate' AND value >= 0.5)")
    assert 0 < expected and queries.count(f, db=db)["cots"] == expected


def test_figure_values_for_a_page(db):
    recs = records(db, TINY)
    ids = [r["cot_id"] for r in recs[:9]]
    values = queries.figure_values(ids, [LOGIC, PASS_RATE, Figure("n_tokens")], db=db)
    assert values["cot_id"].to_list() == ids
    assert values[LOGIC.label()].to_list() == [float(i % 2) for i in range(7)] + [None, None]
    assert values["tokens"].to_list() == [r["tokens"] for r in recs[:9]]
    assert values[PASS_RATE.label()].to_list() == [int(r["problem"][1:]) / 4 for r in recs[:9]]


def test_conditions_round_trip_through_the_url_and_recipes(db):
    f = CotFilter(models=("QwQ-32B",), correct_source=OWN_CORRECTNESS, correct="correct",
                  conditions=(Condition(LOGIC, lo=1), Condition(CONTAMINATED, missing=True), Condition(PASS_RATE, 0.25, 0.75)))
    params = f.to_params()
    assert json.loads(params["conditions"])[1] == {"level": "problem", "source": STAGE, "metric": "contaminated",
                                                   "lo": None, "hi": None, "missing": True}
    assert CotFilter.from_params(params) == f
    assert CotFilter.from_params({k: [v] for k, v in params.items()}) == f  # st.query_params lists
    assert recipes.filter_from_dict(json.loads(json.dumps(f.as_dict()))) == f
    # an old URL (no conditions) and a broken one still open
    old = {"models": "QwQ-32B", "correct_source": "omnithought", "correct": "correct", "tokens_range": "0,50"}
    assert CotFilter.from_params(old) == CotFilter(models=("QwQ-32B",), correct_source="omnithought", correct="correct",
                                                   tokens_range=(0, 50))
    assert CotFilter.from_params({**old, "conditions": "[{\"metric\": 3"}).conditions == ()
    assert CotFilter.from_params({"conditions": json.dumps([{"metric": "x", "source": "s", "lo": 2, "hi": 1}])}).conditions == ()


def test_bad_conditions_are_sentences():
    with pytest.raises(FigureError, match="needs a score source"):
        Figure("logic")
    with pytest.raises(FigureError, match="level"):
        Figure("pass_rate", STAGE, level="dataset")
    with pytest.raises(FigureError, match="above the upper"):
        Condition(LOGIC, lo=2, hi=1)
    with pytest.raises(FigureError, match="cannot also have bounds"):
        Condition(LOGIC, lo=1, missing=True)
    with pytest.raises(recipes.RecipeError, match="bad condition"):
        recipes.filter_from_dict({"conditions": [{"metric": "logic", "source": JUDGE, "colour": "red"}]})


def test_condition_descriptions():
    assert Condition(LOGIC, lo=1).describe() == "logic · judge smollm ≥ 1"
    assert Condition(Figure("n_tokens"), 0, 44782).describe() == "tokens in 0–44,782"
    assert Condition(CONTAMINATED, missing=True).describe() == "contaminated · difficulty (per problem): has no value"
    assert Condition(LOGIC, hi=0.5).reasons() == ("no logic · judge smollm", "logic · judge smollm above 0.5")


# ---------------------------------------------------------------------------- each dataset's own correctness


def test_own_correctness_takes_the_dataset_label_else_math_verify(db):
    assert queries.own_correctness_sources(db=db) == ("omnithought", "math-verify")
    own = "(SELECT s.value FROM scores s JOIN score_sources ss USING (source_id) WHERE s.cot_id = c.cot_id AND s.metric = " \
          "'correct' AND ss.name = {}) "
    label, verifier = own.format("'omnithought'"), own.format("'math-verify'")
    for verdict, value in (("correct", 1), ("incorrect", 0)):
        expected = sql_count(db, f"coalesce({label}, {verifier}) = {value}")
        f = CotFilter(correct_source=OWN_CORRECTNESS, correct=verdict)
        assert queries.count(f, db=db)["cots"] == expected
        # a single global source gives another count: the flipped label, and the generic data
        assert queries.count(f.with_(correct_source="omnithought"), db=db)["cots"] == sql_count(db, f"{label} = {value}")
    unknown = sql_count(db, f"coalesce({label}, {verifier}) IS NULL")
    assert queries.count(CotFilter(correct_source=OWN_CORRECTNESS, correct="unknown"), db=db)["cots"] == unknown
    # Explore's page (scores looked up for the page's ids) shows the same verdicts
    page = queries.page(CotFilter(correct_source=OWN_CORRECTNESS), limit=100, db=db)
    truth = dict(store.read_rows(f"SELECT cot_id, coalesce({label}, {verifier}) FROM cots c", db=db))
    assert {r["cot_id"]: r["correct_value"] for r in page.iter_rows(named=True)} == truth


def test_which_source_each_dataset_uses(db):
    def got(source):
        used = queries.correctness_in_use(source, db=db)
        return {(r["dataset"], r["source"]): (r["cots"], r["n_cots"]) for r in used.iter_rows(named=True)}

    # counted independently: per dataset and source, the CoTs with a verdict
    judged = {(d, s): n for d, s, n in store.read_rows(
        "SELECT d.name, ss.name, count(*) FROM scores v JOIN score_sources ss USING (source_id) JOIN cots c USING (cot_id) "
        "JOIN datasets d ON d.dataset_id = c.dataset_id WHERE v.metric = 'correct' AND v.value IS NOT NULL GROUP BY ALL",
        db=db)}
    sizes = {"tiny": len(TINY), "generic": len(_generic_rows())}
    assert got(OWN_CORRECTNESS) == {(d, s): (n, sizes[d]) for (d, s), n in judged.items()}
    assert ("tiny", "math-verify") in got(OWN_CORRECTNESS)  # math-verify judged TINY too: the label is read first
    assert got("omnithought") == {("tiny", "omnithought"): (len(TINY), len(TINY)), ("generic", None): (0, sizes["generic"])}


# ---------------------------------------------------------------------------- an empty view says why


def test_an_empty_filter_says_which_condition_emptied_it(db):
    f = CotFilter(models=("DeepSeek-R1",), correct_source=OWN_CORRECTNESS, correct="incorrect",
                  conditions=(Condition(LOGIC, lo=0, hi=0), Condition(PASS_RATE, lo=0.5)))
    assert queries.count(f, db=db)["cots"] == 0
    diagnosis = {r["condition"]: r["cots_without_it"] for r in queries.empty_diagnosis(f, db=db).iter_rows(named=True)}
    assert set(diagnosis) == {"models: DeepSeek-R1", "correctness: incorrect (each dataset's own (its label, else math-verify))",
                              Condition(LOGIC, lo=0, hi=0).describe(), Condition(PASS_RATE, lo=0.5).describe()}
    for label, relaxed in f.relaxations():
        assert diagnosis[label] == queries.count(relaxed, db=db)["cots"]
    # independently: without the pass-rate condition, DeepSeek-R1's incorrect CoTs with logic 0
    # (the flipped label counts as correct)
    recs = records(db, TINY)
    logic_zero = {r["cot_id"] for i, r in enumerate(recs[:7]) if i % 2 == 0}
    flipped = recs[2]["cot_id"]
    expected = sum(1 for r in recs if r["model"] == "DeepSeek-R1" and r["cot_id"] in logic_zero
                   and (not r["correct"]) != (r["cot_id"] == flipped))
    assert diagnosis[Condition(PASS_RATE, lo=0.5).describe()] == expected > 0
