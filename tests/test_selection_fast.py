"""The in-memory pool (LoadedPool) answers a Thresholds rule's report from its index, without
deciding every CoT; these tests hold it to the general path (decide then summarize, run in
SQL on the store) figure by figure, and the dropped pages likewise."""

from __future__ import annotations

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from core import selection
from core.queries import CotFilter
from core.selection import CapacityMatched, ScoreSources, Selection, Thresholds
from tests.helpers import BOTH, TINY, assert_same_report, build_store, records

RULES = [
    Thresholds(),
    Thresholds(rv_range=(3, 5)),
    Thresholds(rv_range=(3, 5), cd_range=(4, 4), require_correct=True),
    Thresholds(cd_range=(2, 7), tokens_range=(15, 60)),
    Thresholds(tokens_range=(0, 30), require_correct=True),
    Thresholds(rv_range=(0, 9), cd_range=(0, 9), tokens_range=(1, 10_000)),
    Thresholds(rv_range=(9, 9), cd_range=(0, 0), tokens_range=(5, 5), require_correct=True),  # keeps nothing
]


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("fast-tiny"), TINY)


@pytest.fixture(scope="module")
def tiny_no_tokens(tmp_path_factory):
    """Token counts never computed: every CoT lacks one."""
    return build_store(tmp_path_factory.mktemp("fast-notok"), TINY, tokens=False)


@pytest.mark.parametrize("rule", RULES, ids=str)
def test_the_pool_index_gives_the_general_report_on_the_tiny_store(tiny_store, rule):
    for sources in (BOTH, ScoreSources(rv=("omnithought (DeepSeek-R1)",), cd=BOTH.cd, correct=()), ScoreSources()):
        sel = Selection(CotFilter(), rule, sources)
        pool = selection.load_pool(sel, db=tiny_store)
        assert_same_report(selection.evaluate(sel, pool=pool), selection.evaluate(sel, db=tiny_store))


def test_the_pool_index_handles_cots_without_a_token_count(tiny_no_tokens):
    for rule in RULES:
        sel = Selection(CotFilter(), rule, BOTH)
        pool = selection.load_pool(sel, db=tiny_no_tokens)
        report = selection.evaluate(sel, pool=pool)
        assert_same_report(report, selection.evaluate(sel, db=tiny_no_tokens))
        if rule.tokens_range:
            assert report.kept_cots == 0 and "no token count" in report.reasons["reason"].str.join("|").item()


def test_the_pool_index_gives_the_general_report_on_the_demo_store(demo_store):
    sources = selection.default_score_sources(db=demo_store)
    base = CotFilter()
    top = selection.evaluate(Selection(base, Thresholds(), sources), db=demo_store).histograms["n_tokens"]["hi"].max()
    rules = [*RULES, Thresholds(rv_range=(2, 6), cd_range=(3, 8), tokens_range=(int(top // 5), int(top // 2)),
                                require_correct=True)]
    pool = selection.load_pool(Selection(base, Thresholds(), sources), db=demo_store)
    for rule in rules:
        sel = Selection(base, rule, sources)
        assert_same_report(selection.evaluate(sel, pool=pool), selection.evaluate(sel, db=demo_store))
        assert selection.kept_ids(sel, pool=pool).to_list() == selection.kept_ids(sel, db=demo_store).to_list()


def test_dropped_pages_from_the_pool_match_the_decision(demo_store):
    sources = selection.default_score_sources(db=demo_store)
    sel = Selection(CotFilter(), Thresholds(rv_range=(3, 5), tokens_range=(0, 2000), require_correct=True), sources)
    views = [(sort_by, descending, offset) for sort_by, descending in
             (("cot_id", False), ("n_tokens", True), ("reason", False), ("cd", False), ("weight", False))
             for offset in (0, 40)]
    # a pool as a new filter leaves it: its rows not yet copied into its own DuckDB, so the
    # threshold pages read the Arrow rows in place (LoadedPool.scan)
    fresh = selection.load_pool(sel, db=demo_store)
    in_place = {view: selection.dropped_page(sel=sel, pool=fresh, offset=view[2], limit=20, sort_by=view[0],
                                             descending=view[1], db=demo_store) for view in views[:4]}
    assert fresh._arrow is not None  # the "cot_id" and "n_tokens" pages did not copy the rows
    pool = selection.load_pool(sel, db=demo_store)
    decision = selection.decide(sel, pool=pool)
    for view in views:
        sort_by, descending, offset = view
        expected = selection.dropped_page(decision, offset=offset, limit=20, sort_by=sort_by, descending=descending,
                                          db=demo_store)
        got = selection.dropped_page(sel=sel, pool=pool, offset=offset, limit=20, sort_by=sort_by,
                                     descending=descending, db=demo_store)
        assert_frame_equal(got, expected)
        if view in in_place:
            assert_frame_equal(in_place[view], expected)
        assert got.height == 20 and got["reason"].is_not_null().all()


def test_other_rules_run_on_the_loaded_pool_and_a_foreign_pool_is_refused(demo_store):
    sources = selection.default_score_sources(db=demo_store)
    sel = Selection(CotFilter(), CapacityMatched.preset("7B"), sources, seed=3)
    pool = selection.load_pool(sel, db=demo_store)
    assert_same_report(selection.evaluate(sel, pool=pool), selection.evaluate(sel, db=demo_store))
    page = selection.dropped_page(sel=sel, pool=pool, limit=5, sort_by="weight", descending=True, db=demo_store)
    assert page["reason"].is_not_null().all() and page["weight"].is_sorted(descending=True, nulls_last=True)
    other = Selection(CotFilter(models=("nobody",)), Thresholds(), sources)
    with pytest.raises(ValueError, match="another filter"):
        selection.evaluate(other, pool=pool)
    assert pl.from_arrow(pool.to_arrow()).height == selection.evaluate(sel, pool=pool).pool_cots


def test_an_empty_pool_reports_zero_everywhere(tiny_store):
    sel = Selection(CotFilter(models=("nobody",)), Thresholds(rv_range=(3, 5)), BOTH)
    pool = selection.load_pool(sel, db=tiny_store)
    report = selection.evaluate(sel, pool=pool)
    assert (pool.n_cots, report.pool_cots, report.kept_cots, report.kept_problems) == (0, 0, 0, 0)
    assert selection.kept_ids(sel, pool=pool).to_list() == []
    assert selection.dropped_page(sel=sel, pool=pool, db=tiny_store).height == 0


def test_the_first_listed_source_that_scored_a_cot_gives_its_value(tiny_store, tmp_path):
    """Scores are pivoted in one pass: with two sources for RV, a CoT takes the first listed
    source's value where it has one, else the next source's; an unscored value is skipped."""
    from core import store

    db = tmp_path / "two-judges.duckdb"
    db.write_bytes(tiny_store.read_bytes())
    recs = records(db, TINY)
    rescored = [r["cot_id"] for r in recs[:6]]
    with store.connect(db, read_only=False) as con:
        judge = store.ensure_source(con, "second judge", "judge")
        for i, cot_id in enumerate(rescored):
            # the last one: a failed judgement (NULL value), which must not hide the label
            con.execute("INSERT INTO scores (cot_id, source_id, metric, value) VALUES (?, ?, 'rv', ?)",
                        [cot_id, judge, None if i == 5 else 9.0])
    for first in (True, False):
        rv = ("second judge", *BOTH.rv) if first else (*BOTH.rv, "second judge")
        sel = Selection(CotFilter(), Thresholds(rv_range=(9, 9)), ScoreSources(rv=rv, cd=BOTH.cd, correct=BOTH.correct))
        pool = selection.load_pool(sel, db=db)
        got = dict(pl.from_arrow(pool.to_arrow()).select("cot_id", "rv").iter_rows())
        for i, r in enumerate(recs):
            expected = 9.0 if first and i < 5 else r["rv"]
            assert got[r["cot_id"]] == expected, (first, i)
        assert_same_report(selection.evaluate(sel, pool=pool), selection.evaluate(sel, db=db))
