"""Selection modes and recipes on stores built by the real ingest from OmniThought-shaped
JSONL whose RV, CD, correctness and lengths are known, checked against expectations worked
out here in plain Python (or by hand)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
import pytest

from core import recipes, selection, store
from core.ingest import ingest
from core.queries import CotFilter
from core.selection import (
    CapacityMatched, PerProblem, Score, ScoreSources, Selection, TargetSize, Thresholds,
)
from tests.helpers import BOTH, TINY, build_store, omnithought_rows, records
from tests.helpers import cot_ids_by_position as cot_ids


@pytest.fixture(scope="module")
def tiny_template(tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("tiny"), TINY)


@pytest.fixture
def tiny(tiny_template, tmp_path) -> tuple[Path, list[dict]]:
    db = tmp_path / "tiny.duckdb"
    db.write_bytes(tiny_template.read_bytes())
    return db, records(db, TINY)


def ids_of(recs, predicate) -> set[int]:
    return {r["cot_id"] for r in recs if predicate(r)}


# ---------------------------------------------------------------------------- thresholds


def test_thoughtx_thresholds_keep_the_hand_counted_cots(tiny):
    db, recs = tiny
    sel = Selection(CotFilter(), Thresholds(rv_range=(3, 5), cd_range=(4, 4), require_correct=True), BOTH)
    kept = set(selection.kept_ids(sel, db=db).to_list())
    # by hand: p0's first CoT (correct, RV 4, CD 4) and p2's first two (RV 3 and 5, CD 4)
    by_hand = {cot_ids(db)[k] for k in (("p0", 0), ("p2", 0), ("p2", 1))}
    assert kept == by_hand
    report = selection.evaluate(sel, db=db)
    assert (report.pool_cots, report.kept_cots, report.pool_problems, report.kept_problems) == (13, 3, 4, 2)
    by_model = dict(zip(report.by_model["group"], report.by_model["kept"]))
    assert by_model == {"DeepSeek-R1": 3, "DeepSeek-R1-0528": 0, "QwQ-32B": 0}


def test_thresholds_match_a_python_oracle_for_each_range(tiny):
    db, recs = tiny
    cases = [
        (Thresholds(rv_range=(2, 4)), lambda r: r["rv"] is not None and 2 <= r["rv"] <= 4),
        (Thresholds(cd_range=(6, 9)), lambda r: r["cd"] >= 6),
        (Thresholds(require_correct=True), lambda r: r["correct"]),
        (Thresholds(tokens_range=(12, 40)), lambda r: 12 <= r["tokens"] <= 40),
        (Thresholds(), lambda r: True),
    ]
    for rule, predicate in cases:
        kept = set(selection.kept_ids(Selection(CotFilter(), rule, BOTH), db=db).to_list())
        assert kept == ids_of(recs, predicate), rule


def test_a_range_drops_cots_its_source_did_not_score_and_says_why(tiny):
    db, recs = tiny
    only_first_judge = ScoreSources(rv=("omnithought (DeepSeek-R1)",), cd=BOTH.cd, correct=BOTH.correct)
    sel = Selection(CotFilter(), Thresholds(rv_range=(0, 9)), only_first_judge)
    kept = set(selection.kept_ids(sel, db=db).to_list())
    # the first judge scored the CoTs at even positions of TINY, except the one without an RV label
    assert kept == {r["cot_id"] for i, r in enumerate(recs) if i % 2 == 0 and r["rv"] is not None}
    reasons = selection.evaluate(sel, db=db).reasons
    assert dict(zip(reasons["reason"], reasons["cots"])) == {"no RV score": 13 - len(kept)}


def test_the_base_filter_is_the_pool(tiny):
    db, recs = tiny
    sel = Selection(CotFilter(models=("QwQ-32B",)), Thresholds(require_correct=True), BOTH)
    report = selection.evaluate(sel, db=db)
    assert report.pool_cots == sum(r["model"] == "QwQ-32B" for r in recs)
    assert set(selection.kept_ids(sel, db=db).to_list()) == ids_of(recs, lambda r: r["model"] == "QwQ-32B" and r["correct"])


# ---------------------------------------------------------------------------- capacity


def weight(rec, capacity=5.0, lam=1.0, beta=0.5) -> float:
    return math.exp(-lam * max(0, rec["cd"] - capacity) - beta * abs(rec["cd"] - rec["rv"]))


def test_capacity_weights_are_exactly_the_formula(tiny):
    db, recs = tiny
    for rule in (CapacityMatched(), CapacityMatched(capacity=7, lam=2.5, beta=0.25, k=2)):
        decision = pl.from_arrow(selection.decide(Selection(CotFilter(), rule, BOTH), db=db))
        got = dict(zip(decision["cot_id"], decision["weight"]))
        for r in recs:
            if r["rv"] is None:
                assert got[r["cot_id"]] is None  # no RV: not a candidate
            else:
                assert got[r["cot_id"]] == pytest.approx(weight(r, rule.capacity, rule.lam, rule.beta), rel=1e-12)
    # two by hand: CD 6 RV 2 at C = 5 is exp(-1 - 2); CD 8 RV 8 is exp(-3)
    assert weight(recs[1]) == pytest.approx(math.exp(-3)) and weight(recs[3]) == pytest.approx(math.exp(-3))
    assert selection.capacity_weight(6, 2, capacity=5) == pytest.approx(math.exp(-3))


def test_capacity_draws_the_largest_efraimidis_spirakis_keys(tiny):
    db, recs = tiny
    for seed, k in ((0, 1), (7, 2), (123456, 1)):
        rule = CapacityMatched(k=k)
        for draw, key in (("content", "key"), ("cot_id", "cot_id")):  # "cot_id": recipes saved before content keys
            kept = set(selection.kept_ids(Selection(CotFilter(), rule, BOTH, seed=seed, draw=draw), db=db).to_list())
            expected = set()
            for problem in {r["problem"] for r in recs}:
                candidates = [r for r in recs if r["problem"] == problem and r["rv"] is not None]
                keys = sorted(candidates, key=lambda r: selection.uniform(seed, r[key]) ** (1 / weight(r)), reverse=True)
                expected |= {r["cot_id"] for r in keys[:k]}
            assert kept == expected, (seed, draw)
    # the SQL's key is the documented one
    assert [selection.draw_key(*row) for row in store.read_rows(
        "SELECT d.content_hash, p.problem_key, c.model, c.sample_idx FROM cots c JOIN problems p USING (problem_id) "
        "JOIN datasets d ON d.dataset_id = c.dataset_id ORDER BY c.cot_id", db=db)] == [
        r["key"] for r in sorted(recs, key=lambda r: r["cot_id"])]


def test_capacity_is_deterministic_and_the_seed_changes_the_subset(demo_store):
    sources = selection.default_score_sources(db=demo_store)
    sel = Selection(CotFilter(), CapacityMatched.preset("7B"), sources, seed=11)
    first = selection.kept_ids(sel, db=demo_store).to_list()
    assert first == selection.kept_ids(sel, db=demo_store).to_list()
    pool = selection.load_pool(sel, db=demo_store)
    assert selection.kept_ids(sel, pool=pool).to_list() == first  # in memory, same subset
    other = selection.kept_ids(Selection(CotFilter(), CapacityMatched.preset("7B"), sources, seed=12), db=demo_store)
    assert set(other.to_list()) != set(first)
    problems = store.read_rows("SELECT count(DISTINCT problem_id) FROM cots", db=demo_store)[0][0]
    assert len(first) == len(other) == problems  # k = 1: one per problem (every demo CoT has RV and CD)


def test_capacity_draw_frequencies_follow_the_weights(tmp_path):
    # 500 identical problems of three CoTs weighing 1 (CD <= C, RV = CD), e^-1 (CD one above C) and
    # e^-1 (|CD - RV| = 2): each problem is one independent draw of k = 1.
    cots = [(f"q{i}", "DeepSeek-R1", True, rv, cd, 5) for i in range(500) for rv, cd in ((3, 3), (6, 6), (2, 4))]
    db = build_store(tmp_path, cots, tokens=False)
    recs = records(db, cots)
    kept = set(selection.kept_ids(Selection(CotFilter(), CapacityMatched(capacity=5), BOTH, seed=3), db=db).to_list())
    assert len(kept) == 500
    w = [1.0, math.exp(-1), math.exp(-1)]
    for j in range(3):
        share = sum(recs[3 * i + j]["cot_id"] in kept for i in range(500)) / 500
        expected = w[j] / sum(w)
        assert abs(share - expected) < 4 * math.sqrt(expected * (1 - expected) / 500), (j, share, expected)


def test_uniform_is_spread_over_the_unit_interval():
    values = [selection.uniform(5, 1 << 40 | i) for i in range(20000)]
    assert 0 < min(values) and max(values) < 1
    assert sum(values) / len(values) == pytest.approx(0.5, abs=0.01)
    deciles = [sum(int(v * 10) == d for v in values) for d in range(10)]
    assert max(abs(n - 2000) for n in deciles) < 200


def test_capacity_presets():
    assert CapacityMatched.preset("7B") == CapacityMatched(capacity=5, beta=0.5)
    assert CapacityMatched.preset("32B").capacity == 7
    with pytest.raises(ValueError):
        CapacityMatched.preset("3B")
    assert r"\beta" in selection.CAPACITY_FORMULA and r"\lambda" in selection.CAPACITY_FORMULA


def test_absolute_weights_accept_each_cot_on_its_own(tiny):
    """weights="absolute": a CoT is accepted when u < w, and of a problem's accepted CoTs the k
    with the smallest second-stream uniform are kept (checked against plain Python)."""
    db, recs = tiny
    for seed, k in ((0, 1), (5, 2), (99, 1)):
        rule = CapacityMatched(k=k, weights="absolute")
        kept = set(selection.kept_ids(Selection(CotFilter(), rule, BOTH, seed=seed), db=db).to_list())
        expected = set()
        for problem in {r["problem"] for r in recs}:
            accepted = [r for r in recs if r["problem"] == problem and r["rv"] is not None
                        and selection.uniform(seed, r["key"]) < weight(r)]
            accepted.sort(key=lambda r: selection.uniform(seed, r["key"], stream=1))
            expected |= {r["cot_id"] for r in accepted[:k]}
        assert kept == expected, seed
    # every CoT far above capacity: the relative reading still gives one per problem, the
    # absolute one gives none (w <= exp(-10 * 3) for CD >= 3 at C = 0)
    far = dict(capacity=0, lam=10)
    relative = selection.evaluate(Selection(CotFilter(), CapacityMatched(**far), BOTH), db=db)
    absolute = selection.evaluate(Selection(CotFilter(), CapacityMatched(**far, weights="absolute"), BOTH), db=db)
    assert relative.kept_problems == 4 and absolute.kept_cots == 0
    assert dict(zip(absolute.reasons["reason"], absolute.reasons["cots"])) == {
        "no RV/CD score": 1, "not accepted (its draw u was not below its weight w)": 12}
    with pytest.raises(ValueError, match="relative"):
        CapacityMatched(weights="per problem")


def test_content_keyed_draws_select_the_same_cots_in_any_store(tmp_path):
    """Two stores ingest the same two files in opposite orders, so every CoT has another cot_id
    in each; a capacity draw and the RV/CD mixer's ties keep the same CoTs in both (by content:
    dataset, problem key, model, sample index). Keyed on cot_id, as old recipes are, they need not."""
    other = [(f"q{i}", "QwQ-32B", True, 4, 4 + i % 3, 5) for i in range(6)]
    files = {}
    for name, cots in (("tiny", TINY), ("other", other)):
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(row) + "\n" for row in omnithought_rows(cots)))
    stores = []
    for order in (("tiny", "other"), ("other", "tiny")):
        db = tmp_path / f"{'-'.join(order)}.duckdb"
        for name in order:
            ingest(str(files[name]), name=name, db=db)
        stores.append(db)

    def kept_content(sel, db):
        ids = selection.kept_ids(sel, db=db).to_list()
        return set(store.read_rows(
            "SELECT d.name, p.problem_key, c.model, c.sample_idx FROM cots c JOIN problems p USING (problem_id) "
            "JOIN datasets d ON d.dataset_id = c.dataset_id WHERE list_contains(?, c.cot_id)", [ids], db=db))

    assert {r[0] for r in store.read_rows("SELECT cot_id FROM cots", db=stores[0])} != \
        {r[0] for r in store.read_rows("SELECT cot_id FROM cots", db=stores[1])}
    differs = 0
    for seed in range(4):
        for rule in (CapacityMatched(k=1), CapacityMatched(k=2, weights="absolute"),
                     selection.RvCdMix(rv_target=4.5, samples_per_bin=2)):
            content = [kept_content(Selection(CotFilter(), rule, BOTH, seed=seed), db) for db in stores]
            assert content[0] == content[1] and content[0], (seed, rule)
            by_id = [kept_content(Selection(CotFilter(), rule, BOTH, seed=seed, draw="cot_id"), db) for db in stores]
            differs += by_id[0] != by_id[1]
    assert differs  # keyed on cot_id the order of ingestion shows


# ---------------------------------------------------------------------------- RV/CD mixer


def test_rvcd_mix_by_hand(tiny):
    """EasyDistill's mixer on TINY, with the correctness sources as its logical correctness.
    The correct CoTs with their CD bin ([0, 3), [3, 6), [6, 10]; matched targets 2, 6, 10):
    bin 1 (target 6): #0 RV 4, #6 RV 3, #7 RV 5, #8 RV 6, #9 no RV; bin 2 (target 10): #1 RV 2,
    #3 RV 8, #10 RV 4, #12 RV 9; bin 0: none."""
    db, recs = tiny

    def kept(rule, seed=0):
        ids = set(selection.kept_ids(Selection(CotFilter(), rule, BOTH, seed=seed), db=db).to_list())
        return {i for i, r in enumerate(recs) if r["cot_id"] in ids}

    RvCdMix = selection.RvCdMix
    assert [RvCdMix().target(b) for b in range(3)] == [2, 6, 10]
    assert RvCdMix(cd_bins=(0, 5, 10)).target(1) == 10 and RvCdMix(cd_bins=(0, 10)).target(0) == 5
    assert RvCdMix(cd_bins=(0, 2, 4, 6, 10)).target(1) == pytest.approx(4.67)
    # bin 1 by distance to 6: #8 (0), #7 (1), #0 (2), ...; bin 2 by distance to 10: #12 (1), #3 (2), ...
    assert kept(RvCdMix(samples_per_bin=2)) == {8, 7, 12, 3}
    assert kept(RvCdMix()) == {0, 1, 3, 6, 7, 8, 9, 10, 12}  # every correct CoT with a CD in [0, 10]
    assert kept(RvCdMix(rv_target="low", samples_per_bin=1)) == {6, 1}  # RV 3 of bin 1, RV 2 of bin 2
    assert kept(RvCdMix(rv_target=5, samples_per_bin=1)) == {7, 10}
    # bins [0, 4) (no correct CoT) and [4, 7], target 10 (#10's CD 7 is the top edge: in); #3 and #12 lie outside
    assert kept(RvCdMix(cd_bins=(0, 4, 7), samples_per_bin=1)) == {8}
    # a tie (#0 RV 4 and #7 RV 5 are both 0.5 from 4.5) goes to the smaller seeded draw
    for seed in range(6):
        first = min((0, 7), key=lambda i: selection.uniform(seed, recs[i]["key"]))
        assert kept(RvCdMix(rv_target=4.5, samples_per_bin=1), seed) == {first, 10}
    report = selection.evaluate(Selection(CotFilter(), RvCdMix(samples_per_bin=2), BOTH), db=db)
    assert dict(zip(report.reasons["reason"], report.reasons["cots"])) == {
        "incorrect": 4,
        "beyond the 2 closest to RV 6 in CD bin [3, 6)": 3,
        "beyond the 2 closest to RV 10 in CD bin [6, 10]": 2,
    }
    with pytest.raises(ValueError, match="increasing"):
        RvCdMix(cd_bins=(0, 6, 3))
    with pytest.raises(ValueError, match="rv_target"):
        RvCdMix(rv_target="lots")


# ---------------------------------------------------------------------------- per problem


def test_shortest_correct_picks_the_right_ids(tiny):
    db, recs = tiny
    kept = set(selection.kept_ids(Selection(CotFilter(), PerProblem("shortest_correct"), BOTH), db=db).to_list())
    ids = cot_ids(db)
    # p0: the 10-word correct one (the 5-word one is wrong); p1: no correct CoT; p2: the 12-word one
    # (it has no RV label, which this rule does not need); p3: the 50-word one
    assert kept == {ids[("p0", 1)], ids[("p2", 3)], ids[("p3", 0)]}
    two = set(selection.kept_ids(Selection(CotFilter(), PerProblem("shortest_correct", k=2), BOTH), db=db).to_list())
    assert two == {ids[k] for k in (("p0", 1), ("p0", 0), ("p2", 3), ("p2", 2), ("p3", 0), ("p3", 2))}


def test_top_k_by_a_score_and_all_correct(tiny):
    db, recs = tiny
    ids = cot_ids(db)
    by_rv = PerProblem("top_k", k=1, score=Score("rv", "omnithought (DeepSeek-R1)"))
    kept = set(selection.kept_ids(Selection(CotFilter(), by_rv, BOTH), db=db).to_list())
    # the first judge scored the even positions of TINY; per problem the highest of its RVs wins,
    # ties to the lower cot_id: p0 -> RV 4 (first of two), p1 -> RV 3, p2 -> RV 6, p3 -> RV 9
    expected = set()
    for problem in ("p0", "p1", "p2", "p3"):
        scored = [r for i, r in enumerate(recs) if r["problem"] == problem and i % 2 == 0 and r["rv"] is not None]
        expected.add(max(scored, key=lambda r: (r["rv"], -r["cot_id"]))["cot_id"])
    assert kept == expected
    assert ids[("p3", 2)] in kept
    fewest = PerProblem("top_k", k=1, score=Score("n_tokens", higher_is_better=False), require_correct=True)
    assert set(selection.kept_ids(Selection(CotFilter(), fewest, BOTH), db=db).to_list()) == \
        set(selection.kept_ids(Selection(CotFilter(), PerProblem("shortest_correct"), BOTH), db=db).to_list())
    every = set(selection.kept_ids(Selection(CotFilter(), PerProblem("all_correct"), BOTH), db=db).to_list())
    assert every == ids_of(recs, lambda r: r["correct"])


# ---------------------------------------------------------------------------- target size


def test_proportional_quotas_by_hand():
    assert selection.proportional_quotas({"a": 60, "b": 40}, {"a": 60, "b": 40}, 10) == {"a": 6, "b": 4}
    # b can give only 2: its missing share goes to a
    assert selection.proportional_quotas({"a": 60, "b": 40}, {"a": 60, "b": 2}, 10) == {"a": 8, "b": 2}
    # thirds: the leftover unit goes to the first name
    assert selection.proportional_quotas({"a": 1, "b": 1, "c": 1}, {"a": 9, "b": 9, "c": 9}, 10) == {"a": 4, "b": 3, "c": 3}
    assert selection.proportional_quotas({"a": 5, "b": 5}, {"a": 1, "b": 2}, 100) == {"a": 1, "b": 2}
    assert selection.proportional_quotas({"a": 5}, {"a": 5}, 0) == {"a": 0}


def test_target_size_hits_n_and_keeps_the_model_mix(demo_store):
    sources = selection.default_score_sources(db=demo_store)
    for n in (100, 257):
        sel = Selection(CotFilter(), TargetSize(n=n, balance="model", within="shortest_correct"), sources)
        report = selection.evaluate(sel, db=demo_store)
        assert report.kept_cots == n
        for row in report.by_model.iter_rows(named=True):
            # each model's share of the kept set is its share of the pool, to within rounding
            assert abs(row["kept"] - n * row["pool_share"]) <= 1, row
        # within each model the kept CoTs are its shortest correct ones: the threshold is the cut
        decision = pl.from_arrow(selection.decide(sel, db=demo_store)).with_columns(pl.col("model").cast(pl.String))
        for model, group in decision.group_by("model"):
            kept = group.filter("kept")
            passed = group.filter(~pl.col("kept") & pl.col("correct").fill_null(False))
            if kept.height and passed.height:
                assert kept["n_tokens"].max() <= passed["n_tokens"].min(), model
        quotas = report.quotas
        assert quotas["quota"].sum() == n and (quotas["kept"] == quotas["quota"]).all()


def test_target_size_by_score_and_by_dataset(tiny):
    db, recs = tiny
    rule = TargetSize(n=4, balance="dataset", within="score", score=Score("n_reflections"), require_correct=True)
    assert selection.evaluate(Selection(CotFilter(), rule, BOTH), db=db).kept_cots == 4
    # more than there is: every correct CoT
    big = TargetSize(n=1000, balance="model")
    assert set(selection.kept_ids(Selection(CotFilter(), big, BOTH), db=db).to_list()) == ids_of(recs, lambda r: r["correct"])


# ---------------------------------------------------------------------------- summaries


def test_summaries_histograms_and_dropped_pages_cover_every_cot(tiny):
    db, recs = tiny
    sel = Selection(CotFilter(), Thresholds(rv_range=(3, 5), require_correct=True), BOTH)
    decision = selection.decide(sel, db=db)
    report = selection.summarize(decision, sel)
    kept = ids_of(recs, lambda r: r["correct"] and r["rv"] is not None and 3 <= r["rv"] <= 5)
    assert report.kept_cots == len(kept) and report.dropped_cots == 13 - len(kept)
    by_cd = dict(zip(report.by_cd["group"], report.by_cd["pool"]))
    assert by_cd == {str(cd): sum(r["cd"] == cd for r in recs) for cd in {r["cd"] for r in recs}}
    assert report.by_model["kept_mix"].sum() == pytest.approx(1.0)
    rv = report.histograms["rv"]
    assert rv.height == 10 and rv["pool"].sum() == 12 and report.missing["rv"] == 1
    assert rv.filter(pl.col("lo") == 4)["pool"].item() == sum(r["rv"] == 4 for r in recs)
    assert report.histograms["n_tokens"]["kept"].sum() == len(kept)
    pages = [selection.dropped_page(decision, offset=o, limit=4, sort_by="n_tokens", db=db) for o in range(0, 12, 4)]
    dropped = pl.concat(pages)
    assert set(dropped["cot_id"]) == ids_of(recs, lambda r: r["cot_id"] not in kept)
    assert dropped["n_tokens"].is_sorted()
    assert dropped["question"].str.starts_with("Question p").all() and dropped["reason"].is_not_null().all()


def test_a_pool_loaded_for_another_filter_is_refused(tiny):
    db, _ = tiny
    pool = selection.load_pool(Selection(CotFilter(models=("QwQ-32B",)), Thresholds(), BOTH), db=db)
    with pytest.raises(ValueError, match="another filter"):
        selection.decide(Selection(CotFilter(), Thresholds(), BOTH), pool=pool)


def test_histogram_figure_marks_the_cut():
    hist = pl.DataFrame({"lo": [float(i) for i in range(10)], "hi": [float(i + 1) for i in range(10)],
                         "pool": [5] * 10, "kept": [0, 0, 0, 5, 5, 5, 0, 0, 0, 0]})
    fig = selection.histogram_figure(hist, (3, 5), title="RV", discrete=True).to_dict()
    assert [trace["name"] for trace in fig["data"]] == ["kept", "dropped"]
    shapes = fig["layout"]["shapes"]
    assert {"x0": 2.5, "x1": 5.5} == {k: shapes[0][k] for k in ("x0", "x1")}
    assert sorted(s["x0"] for s in shapes[1:]) == [2.5, 5.5]


# ---------------------------------------------------------------------------- recipes


ALL_RULES = [
    Thresholds(rv_range=(3, 5), cd_range=(4, 4), tokens_range=(0, 500), require_correct=True),
    CapacityMatched(capacity=7, lam=1.5, beta=0.5, k=2, require_correct=True),
    PerProblem("top_k", k=2, score=Score("cd", "omnithought (QwQ-32B)", higher_is_better=False), require_correct=True),
    PerProblem("shortest_correct"),
    TargetSize(n=5, balance="model_dataset", within="score", score=Score("n_chars"), require_correct=False),
    CapacityMatched(capacity=5, k=1, weights="absolute"),
    selection.RvCdMix(cd_bins=(0, 4, 10), rv_target=4.5, samples_per_bin=3,
                      score=Score("rv", "omnithought (QwQ-32B)"), min_correctness=2),
]


@pytest.mark.parametrize("rule", ALL_RULES, ids=lambda r: r.mode)
def test_recipes_round_trip_exactly_and_keep_the_same_cots(tiny, rule):
    db, _ = tiny
    base = CotFilter(datasets=("tiny",), models=("DeepSeek-R1", "QwQ-32B", "DeepSeek-R1-0528"),
                     correct_source="omnithought", tokens_range=(0, 10_000), text="step")
    recipe = recipes.Recipe("my, recipe / v1", Selection(base, rule, BOTH, seed=42), "a test recipe")
    path = recipes.save(recipe)
    assert path.parent == store.data_dir() / "recipes" and path.exists()
    loaded = recipes.load("my, recipe / v1")
    assert loaded == recipe
    assert recipes.Recipe.from_dict(json.loads(path.read_text())) == recipe
    assert recipes.apply(loaded, db=db).to_list() == recipes.apply(recipe, db=db).to_list()
    assert recipes.list_recipes() == ["my, recipe / v1"]
    with pytest.raises(recipes.RecipeError, match="already saved"):
        recipes.save(recipe)
    recipes.save(recipe, overwrite=True)


def test_a_recipe_with_unknown_fields_is_refused(tmp_path):
    data = recipes.Recipe("x", Selection()).as_dict()
    data["base"]["future_field"] = 1
    with pytest.raises(recipes.RecipeError, match="future_field"):
        recipes.Recipe.from_dict(data)
    data = recipes.Recipe("x", Selection()).as_dict()
    data["params"]["gamma"] = 2
    with pytest.raises(ValueError, match="gamma"):
        recipes.Recipe.from_dict(data)
    with pytest.raises(recipes.RecipeError, match="no saved recipe"):
        recipes.load("never saved")


def test_a_hand_written_recipe_loads_and_each_mistake_is_named(tiny, tmp_path):
    """A recipe written by hand as the module docstring documents it: omitted fields take their
    defaults, and a mistake gets a sentence naming the field."""
    db, recs = tiny
    hand = {"format_version": 3, "name": "thoughtx by hand",
            "base": {"datasets": ["tiny"], "correct_source": "@own"},
            "sources": {"rv": list(BOTH.rv), "cd": list(BOTH.cd), "correct": list(BOTH.correct)},
            "mode": "thresholds", "params": {"rv_range": [3, 5], "cd_range": [4, 4], "require_correct": True}}
    path = tmp_path / "hand.json"
    path.write_text(json.dumps(hand))
    recipe = recipes.load(str(path))
    assert recipe.selection.seed == 0 and recipe.selection.draw == "content"
    ids = cot_ids(db)
    assert set(recipes.apply(recipe, db=db).to_list()) == {ids[k] for k in (("p0", 0), ("p2", 0), ("p2", 1))}
    mistakes = [
        ({"params": {"rv_range": [3, "five"]}}, r"params\.rv_range\[1\]: expected a number"),
        ({"params": {"capacity": 5}}, r"params has no field 'capacity'; its fields are rv_range"),
        ({"mode": "capacity", "params": {"capacity": "five"}}, r"params\.capacity: expected a number, got \"five\""),
        ({"mode": "capacity", "params": {"weights": "both"}}, r"params: weights are 'relative'"),
        ({"mode": "threshold"}, r"mode: \"threshold\" is not a selection rule; choose one of thresholds"),
        ({"base": {"dataset": ["tiny"]}}, r"base has no field 'dataset'"),
        ({"base": {"tokens_range": [0]}}, r"base\.tokens_range: expected"),
        ({"conditions": [{"metric": "logic", "source": "judge", "lo": "one"}]}, r"conditions\[0\] is a bad condition"),
        ({"sources": {"rv": "omnithought"}}, r"sources\.rv: expected a list"),
        ({"seed": 1.5}, r"seed: expected a whole number"),
        ({"draw": "random"}, r"draw: expected"),
        ({"format_version": 7}, r"format_version: 7 is not supported"),
        ({"rule": "thresholds"}, r"the recipe has no field 'rule'"),
        ({"name": ""}, r"name: expected a non-empty string"),
    ]
    for change, message in mistakes:
        path.write_text(json.dumps({**hand, **change}))
        with pytest.raises(recipes.RecipeError, match=message):
            recipes.load(str(path))
    path.write_text("{not json")
    with pytest.raises(recipes.RecipeError, match="cannot read the recipe file hand.json"):
        recipes.load(str(path))


def test_compare_counts_both_only_a_only_b_per_model(tiny):
    db, recs = tiny
    a = recipes.Recipe("a", Selection(CotFilter(), Thresholds(require_correct=True), BOTH))
    b = recipes.Recipe("b", Selection(CotFilter(), Thresholds(cd_range=(4, 5)), BOTH))
    table = recipes.compare(a, b, db=db)
    in_a = ids_of(recs, lambda r: r["correct"])
    in_b = ids_of(recs, lambda r: 4 <= r["cd"] <= 5)
    model = {r["cot_id"]: r["model"] for r in recs}
    rows = {row["model"]: row for row in table.iter_rows(named=True)}
    for name in {r["model"] for r in recs}:
        mine = {i for i in in_a | in_b if model[i] == name}
        assert rows[name]["both"] == len(mine & in_a & in_b)
        assert rows[name]["only_a"] == len((mine & in_a) - in_b)
        assert rows[name]["only_b"] == len((mine & in_b) - in_a)
    assert (rows["all"]["both"], rows["all"]["only_a"], rows["all"]["only_b"]) == \
        (len(in_a & in_b), len(in_a - in_b), len(in_b - in_a))
