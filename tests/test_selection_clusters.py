"""Selection across clusters of problems (PerCluster): one problem per near-duplicate cluster,
at most m per cluster, a target size spread over clusters in proportion or uniformly, on the
real Qwen2.5-Math runs (AIME 2024, MATH500) with the real near-duplicate stage and, as a map
would write them, a stage's 'cluster' and 'pass_rate' problem figures. Every kept set is
checked against plain Python over values read with plain SQL."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

from core import recipes, selection, store
from core.errors import UserError
from core.figures import Condition, Figure
from core.ingest import ingest
from core.formats import ReadOptions
from core.neardup import run_near_duplicates
from core.queries import CotFilter
from core.selection import PerCluster, Score, Selection
from tests.helpers import REALDATA, require_realdata, write_jsonl

MAP = "map (test)"
DIFFICULTY = "difficulty (test)"


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """The runs plus the MATH500 benchmark file (near-duplicates across datasets), the real
    near-duplicate stage, and a stage's per-problem 'cluster' (problem_id mod 7, for the runs'
    problems only) and 'pass_rate' (a fixed function of the id)."""
    require_realdata()
    db = tmp_path_factory.mktemp("sel_clusters") / "template.duckdb"
    ingest(str(REALDATA / "qwen25_math_eval" / "outputs"), name="runs", db=db)
    ingest(str(REALDATA / "benchmarks" / "math500_test.jsonl"), fmt="benchmark", db=db)
    # a teacher that answered 20 of MATH500's questions, lightly reworded: 7 CoTs for the even
    # ones (more than the runs' 5), 1 for the odd ones
    questions = [json.loads(line)["problem"] for line in open(REALDATA / "benchmarks" / "math500_test.jsonl")][:20]
    rows = [{"q": q + " Answer briefly.", "r": f"<think>try {k}</think> 1"}
            for i, q in enumerate(questions) for k in range(7 if i % 2 == 0 else 1)]
    ingest(str(write_jsonl(db.parent / "teacher.jsonl", rows)), fmt="generic", name="teacher", db=db,
           opts=ReadOptions(mapping={"question": "q", "response": "r"}))
    run_near_duplicates(db)
    with store.connect(db, read_only=False) as con:
        map_source = store.ensure_source(con, MAP, "stage", params=json.dumps({"k": 7}))
        difficulty = store.ensure_source(con, DIFFICULTY, "stage")
        con.execute("INSERT INTO problem_scores (problem_id, source_id, metric, value) "
                    "SELECT DISTINCT problem_id, ?, 'cluster', problem_id % 7 FROM cots", [map_source])
        con.execute("INSERT INTO problem_scores (problem_id, source_id, metric, value) "
                    "SELECT problem_id, ?, 'pass_rate', (problem_id * 37 % 11) / 10.0 FROM problems", [difficulty])
    return db


@pytest.fixture
def db(template, tmp_path) -> Path:
    target = tmp_path / "store.duckdb"
    shutil.copy(template, target)
    return target


def _problem_figure(metric: str, source: str) -> str:
    return (f"(SELECT v.value FROM problem_scores v JOIN score_sources ss USING (source_id) "
            f"WHERE v.problem_id = c.problem_id AND ss.name = '{source}' AND v.metric = '{metric}')")


def _cots(db) -> list[dict]:
    return store.read_df(
        "SELECT c.cot_id, c.problem_id, c.n_tokens, "
        f"{_problem_figure('cluster_id', 'near-duplicates')} AS near_dup, {_problem_figure('cluster', MAP)} AS map, "
        f"{_problem_figure('pass_rate', DIFFICULTY)} AS pass_rate FROM cots c", db=db).to_dicts()


def _kept(sel, db) -> set[int]:
    return set(selection.kept_ids(sel, db=db).to_list())


def _by_cluster(units: list, cluster_of) -> dict:
    out = defaultdict(list)
    for u in units:
        value = cluster_of(u)
        out[("problem", u["problem_id"]) if value is None else value].append(u)
    return out


def test_one_problem_per_near_duplicate_cluster_with_the_most_cots(db):
    cots = _cots(db)
    n_cots = defaultdict(int)
    for c in cots:
        n_cots[c["problem_id"]] += 1
    problems = [{"problem_id": p, "near_dup": next(c["near_dup"] for c in cots if c["problem_id"] == p)} for p in n_cots]
    keep = {min(group, key=lambda u: (-n_cots[u["problem_id"]], u["problem_id"]))["problem_id"]
            for group in _by_cluster(problems, lambda u: u["near_dup"]).values()}
    expected = {c["cot_id"] for c in cots if c["problem_id"] in keep}
    sel = Selection(CotFilter(), PerCluster())  # cluster_id of near-duplicates, problems, m = 1, most CoTs
    assert _kept(sel, db) == expected
    # the teacher's 20 problems join the runs' copies: 10 clusters keep the teacher's, 10 the runs'
    teacher = {p for p, n in n_cots.items() if p >> 32 == 3}
    assert len(teacher) == 20 and len(keep) == len(n_cots) - 20 and len(keep & teacher) == 10
    report = selection.evaluate(sel, db=db)
    assert report.kept_problems == len(keep) and report.kept_cots == len(expected)
    assert dict(zip(report.reasons["reason"], report.reasons["cots"])) == {
        "beyond 1 problem of its cluster": len(cots) - len(expected)}
    # the same from a loaded pool (the page's path), and through a recipe
    pool = selection.load_pool(sel, db=db)
    assert set(selection.kept_ids(sel, pool=pool).to_list()) == expected
    again = recipes.Recipe.from_dict(json.loads(json.dumps(recipes.Recipe("one per cluster", sel).as_dict())))
    assert again.selection.rule == sel.rule


def test_best_by_any_problem_figure_and_random_with_a_seed(db):
    cots = _cots(db)
    problems = {c["problem_id"]: c for c in cots}
    groups = _by_cluster(list(problems.values()), lambda u: u["map"])
    by_rate = Score("pass_rate", DIFFICULTY, level="problem")
    sel = Selection(CotFilter(), PerCluster("cluster", MAP, m=2, pick="score", score=by_rate))
    keep = {u["problem_id"] for g in groups.values()
            for u in sorted(g, key=lambda u: (-u["pass_rate"], u["problem_id"]))[:2]}
    assert _kept(sel, db) == {c["cot_id"] for c in cots if c["problem_id"] in keep} and len(keep) == 14
    # random: the seed's uniform number of each problem id decides; another seed, another draw
    draws = []
    for seed in (0, 1):
        sel = Selection(CotFilter(), PerCluster("cluster", MAP, m=3, pick="random"), seed=seed)
        keep = {u["problem_id"] for g in groups.values()
                for u in sorted(g, key=lambda u: (selection.uniform(seed, u["problem_id"]), u["problem_id"]))[:3]}
        draws.append(keep)
        assert _kept(sel, db) == {c["cot_id"] for c in cots if c["problem_id"] in keep}
    assert draws[0] != draws[1]


def test_at_most_m_cots_per_cluster_after_the_conditions(db):
    """CoT units, the shortest first (a per-CoT column as the score), among the CoTs a condition
    keeps (pass rate at least 0.5): the rule never sees the others."""
    cots = _cots(db)
    easy = [c for c in cots if c["pass_rate"] >= 0.5]
    sel = Selection(CotFilter(), PerCluster("cluster", MAP, unit="cots", m=5, pick="score",
                                            score=Score("n_tokens", higher_is_better=False)),
                    conditions=(Condition(Figure("pass_rate", DIFFICULTY, level="problem"), lo=0.5),))
    expected = {u["cot_id"] for g in _by_cluster(easy, lambda u: u["map"]).values()
                for u in sorted(g, key=lambda u: (u["n_tokens"], u["problem_id"], u["cot_id"]))[:5]}
    assert _kept(sel, db) == expected and len(expected) == 35


@pytest.mark.parametrize("spread", ["proportional", "uniform"])
def test_a_target_size_spread_over_clusters(db, spread):
    """About n CoTs over the map's clusters (plus the benchmark-only problems, each a cluster of
    its own, which have no CoT and so are not in the pool): quotas in proportion to the
    clusters' CoTs, or level (water-filling); inside a cluster, a random draw by seed."""
    cots = _cots(db)
    groups = _by_cluster(cots, lambda u: u["map"])
    n = 1000
    sel = Selection(CotFilter(), PerCluster("cluster", MAP, unit="cots", spread=spread, n=n, pick="random"), seed=3)
    kept = _kept(sel, db)
    assert len(kept) == min(n, len(cots))
    total = len(cots)
    quotas = {}
    for key, group in groups.items():
        ranked = sorted(group, key=lambda u: (selection.uniform(3, u["cot_id"]), u["problem_id"], u["cot_id"]))
        quotas[key] = sum(u["cot_id"] in kept for u in group)
        # a cluster keeps the first of its draw
        assert {u["cot_id"] for u in ranked[:quotas[key]]} == {u["cot_id"] for u in group if u["cot_id"] in kept}
        if spread == "proportional":
            assert abs(quotas[key] - n * len(group) / total) < 1
    if spread == "uniform":  # a cluster not taken whole gets within 1 of the largest quota
        short = [q for k, q in quotas.items() if q < len(groups[k])]
        assert short and max(quotas.values()) - min(short) <= 1


def test_bad_parameters_say_what_to_change():
    with pytest.raises(UserError, match="needs that figure"):
        PerCluster(pick="score")
    with pytest.raises(UserError, match="at least 1 problem"):
        PerCluster(m=0)
    with pytest.raises(UserError, match="spread over clusters"):
        PerCluster(spread="even")


def test_the_select_page_keeps_one_problem_per_near_duplicate_cluster(db, app_store):
    """AppTest: 'Across clusters' starts on the near-duplicate clusters, one problem each; a map's
    clusters with n spread evenly; the kept count matches the rule run directly and plain Python."""
    from streamlit.testing.v1 import AppTest

    app_store(db)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120).run()
    at.switch_page("pages/select.py").run()
    at.radio(key="sel_mode").set_value("per_cluster").run()
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    assert at.selectbox(key="sel_cl_figure").value == "cluster_id · near-duplicates (per problem)"

    def kept_cots() -> int:
        return int(next(m for m in at.metric if m.label == "Kept CoTs").value.replace(",", ""))

    sel = at.session_state["current_selection"]
    assert sel.rule == PerCluster() and kept_cots() == len(_kept(Selection(CotFilter(), PerCluster()), db))
    reasons = next(d.value for d in at.dataframe if list(d.value.columns) == ["reason", "cots"])
    assert list(reasons["reason"]) == ["beyond 1 problem of its cluster"]
    at.selectbox(key="sel_cl_figure").set_value("cluster · map (test) (per problem)").run()
    at.radio(key="sel_cl_unit").set_value("cots").run()
    at.radio(key="sel_cl_spread").set_value("uniform").run()
    at.number_input(key="sel_cl_n").set_value(70).run()
    assert not at.exception and not at.error
    assert at.session_state["current_selection"].rule == PerCluster("cluster", MAP, unit="cots", spread="uniform", n=70)
    assert kept_cots() == 70
    kept = _kept(at.session_state["current_selection"], db)
    per_cluster = defaultdict(int)
    for c in _cots(db):
        per_cluster[c["map"]] += c["cot_id"] in kept
    assert sorted(per_cluster.values()) == [10] * 7
    # Export names the mode and writes exactly the kept CoTs; the manifest says no contamination check ran
    at.switch_page("pages/export.py").run()
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    assert any("mode 'across clusters'" in c.value for c in at.caption)
    at.selectbox(key="exp_format").set_value("jsonl").run()
    at.button(key="exp_go").click().run()
    manifest = at.session_state["exp_last"]["manifest"]
    assert manifest["counts"]["rows"] == 70 and manifest["contamination"]["checked"] is False
    exported = {json.loads(line)["cot_id"] for line in open(at.session_state["exp_last"]["path"])}
    assert exported == kept
    assert any("never checked for benchmark contamination" in w.value for w in at.warning)


def test_explore_shows_a_problems_near_duplicates(db, app_store):
    """AppTest: Explore on the teacher's CoTs lists its 20 problems (each with near-duplicates)
    and, for one, the other problems of its cluster by plain SQL; a click opens one in the Reader."""
    from streamlit.testing.v1 import AppTest

    app_store(db)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120).run()
    at.switch_page("pages/explore.py").run()
    at.multiselect(key="f_datasets").set_value(["teacher"]).run()
    at.selectbox(key="explore_page_size").set_value(100).run()
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    assert any(e.label == "Near-duplicates: 20 problem(s) on this page have some" for e in at.expander)
    chosen = at.selectbox(key="explore_near_problem").value
    others = {r[0] for r in store.read_rows(
        "SELECT o.problem_id FROM problem_scores me JOIN problem_scores o ON o.value = me.value AND o.metric = me.metric "
        "AND o.source_id = me.source_id JOIN score_sources ss ON ss.source_id = me.source_id AND ss.name = 'near-duplicates' "
        "WHERE me.problem_id = ? AND me.metric = 'cluster_id' AND o.problem_id <> me.problem_id", [chosen], db=db)}
    buttons = [b for b in at.button if b.key.startswith(f"explore_near_{chosen}_")]
    assert {int(b.key.rsplit("_", 1)[1]) for b in buttons} == others and len(others) == 2  # the runs' copy, the benchmark's
    buttons[0].click().run()
    assert at.session_state["reader_problem_id"] in others

