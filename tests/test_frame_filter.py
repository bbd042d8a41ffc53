"""A filter cut from the in-memory base (core/frame_filter.py) gives exactly the rows and values
of the filter's own SQL (queries.metric_frame), for every kind of constraint the sidebar and the
URL can set, alone and combined: the masks must mean what matching_sql means."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import polars as pl
import pytest

from core import frame_filter, problem_sets, queries, store
from core.figures import Condition, Figure
from core.queries import CotFilter
from tests.helpers import open_tab


def _same(db, f: CotFilter, base: pl.DataFrame) -> int:
    expected = queries.metric_frame(f, db=db).sort("cot_id")
    got = frame_filter.cut(base, f, db=db).sort("cot_id")
    assert got.columns == expected.columns, f
    assert got.equals(expected), (f, got.height, expected.height)
    return got.height


@pytest.fixture
def scored_store(demo_store):
    """The demo store with the edges a mask could get wrong: CoTs without RV, without any
    verdict, with a model of NULL, with a second dataset of the same name's neighbour."""
    with store.connect(demo_store, read_only=False) as con:
        con.execute("UPDATE scores SET value = NULL WHERE metric = 'rv' AND cot_id % 7 = 0")
        con.execute("DELETE FROM scores WHERE metric = 'correct' AND cot_id % 11 = 0")
        con.execute("UPDATE cots SET model = NULL WHERE cot_id % 13 = 0")
    return demo_store


def test_every_plain_constraint_matches_sql(scored_store):
    db = scored_store
    rv, cd = queries.sources("rv", db=db)[0], queries.sources("cd", db=db)[0]
    sources = dict(rv_source=rv, cd_source=cd, correct_source=queries.OWN_CORRECTNESS)
    models = [m for m in queries.distinct_values("model", db=db) if m]
    with store.connect(db, read_only=False) as con:  # two benchmarks, one of them NULL
        con.execute("UPDATE problems SET benchmark = CASE WHEN problem_id % 3 = 0 THEN NULL "
                    "WHEN problem_id % 3 = 1 THEN 'math' ELSE 'code' END")
    benchmarks = ["math", "code"]
    datasets = queries.datasets(db=db)["name"].to_list()
    base = frame_filter.base_frame(CotFilter(**sources), db=db)
    assert base.height == queries.metric_frame(CotFilter(**sources), db=db).height
    constraints = [
        dict(datasets=(datasets[0],)), dict(datasets=("no such dataset",)),
        dict(models=(models[0],)), dict(models=tuple(models[:2])),
        dict(benchmarks=(benchmarks[0],)),
        dict(rv_range=(2.0, 5.0)), dict(cd_range=(0.0, 3.0)),
        dict(correct="correct"), dict(correct="incorrect"), dict(correct="unknown"),
        dict(tokens_range=(50, 400)), dict(reflections_range=(1, 3)),
        dict(truncated=True), dict(truncated=False),
    ]
    sizes = []
    for c in constraints:  # each alone
        sizes.append(_same(db, CotFilter(**sources, **c), base))
    assert any(0 < s < base.height for s in sizes)  # the constraints cut something and keep something
    rng = random.Random(5)
    for a, b in rng.sample(list(itertools.combinations(constraints, 2)), 25):  # pairs
        _same(db, CotFilter(**sources, **a, **b), base)


def test_ranges_without_their_source_cut_nothing(scored_store):
    """A range on RV with no RV source chosen is ignored by SQL: the mask must ignore it too."""
    db = scored_store
    f = CotFilter(correct_source=queries.OWN_CORRECTNESS, rv_range=(8.0, 9.0), cd_range=(8.0, 9.0))
    base = frame_filter.base_frame(f, db=db)
    assert _same(db, f, base) == base.height


def test_store_only_constraints_go_through_sql(scored_store):
    """Search words, picked problems, a map's problem set and conditions on any figure are
    answered by the store and combined with the masks."""
    db = scored_store
    rv = queries.sources("rv", db=db)[0]
    sources = dict(rv_source=rv, correct_source=queries.OWN_CORRECTNESS)
    base = frame_filter.base_frame(CotFilter(**sources), db=db)
    problems = sorted(base["problem_id"].unique().to_list())
    key = problem_sets.save(problems[: len(problems) // 3], origin="test", db=db)
    median_chars = store.read_rows("SELECT median(n_chars) FROM cots", db=db)[0][0]
    word = store.read_rows("SELECT split_part(question, ' ', 1) FROM problems LIMIT 1", db=db)[0][0]
    for extra in (
        dict(problem_ids=tuple(problems[:5])),
        dict(problem_set=key),
        dict(conditions=(Condition(Figure("n_chars"), hi=median_chars),)),
        dict(conditions=(Condition(Figure("rv", rv), lo=4),)),
        dict(text=word),
        dict(text=word, rv_range=(3.0, 9.0), correct="correct"),
        dict(problem_set=key, models=(base["model"].drop_nulls()[0],), tokens_range=(0, 300)),
    ):
        n = _same(db, CotFilter(**sources, **extra), base)
        assert n < base.height, extra


def test_a_select_pool_cut_from_the_whole_store_pool_is_the_pool_read_for_the_filter(scored_store):
    """Select's pool for a new filter: the whole-store pool (same sources, figures and draws), in
    cot_id order, cut with the filter's mask over the base frame, has the rows and values of the
    pool's own SQL, and the selection decides the same on it."""
    from core import selection
    from core.selection import ScoreSources, Selection

    db = scored_store
    rv, cd = queries.sources("rv", db=db)[0], queries.sources("cd", db=db)[0]
    sources = ScoreSources(rv=(rv,), cd=(cd,), correct=(queries.OWN_CORRECTNESS,))
    conditions = (Condition(Figure("cd", cd), hi=6),)
    whole = selection.whole_store_selection(Selection(sources=sources, conditions=conditions))
    whole_pool = selection.load_pool(whole, rows=selection.pool_rows(whole, db=db, ordered=True))
    word = store.read_rows("SELECT split_part(question, ' ', 1) FROM problems LIMIT 1", db=db)[0][0]
    names = [pl.col("dataset", "model").cast(pl.String)]
    for base in (CotFilter(rv_source=rv, rv_range=(3.0, 7.0), correct_source=queries.OWN_CORRECTNESS, correct="correct"),
                 CotFilter(cd_source=cd, tokens_range=(0, 300), truncated=False),
                 CotFilter(text=word, conditions=(Condition(Figure("n_reflections"), lo=1),))):
        sel = Selection(base=base, sources=sources, conditions=conditions)
        assert selection.pool_key(selection.whole_store_selection(sel)) == selection.pool_key(whole)
        frame = frame_filter.base_frame(base, db=db)
        cut = selection.cut_pool(whole_pool, sel, frame["cot_id"], frame_filter.mask(frame, base, db=db))
        got = pl.from_arrow(cut.to_arrow()).with_columns(names).sort("cot_id")
        expected = pl.from_arrow(selection.pool_rows(sel, db=db)).with_columns(names).sort("cot_id")
        assert 0 < got.height < whole_pool.n_cots and got.equals(expected), base
        a = selection.decide(sel, pool=selection.cut_pool(whole_pool, sel, frame["cot_id"], frame_filter.mask(frame, base, db=db)))
        b = selection.decide(sel, pool=selection.load_pool(sel, db=db))
        columns = ["cot_id", "kept", "reason"]
        assert pl.from_arrow(a.select(columns)).sort("cot_id").equals(pl.from_arrow(b.select(columns)).sort("cot_id"))
    # ids that do not line up with the pool's rows (the store changed in between): no cut
    frame = frame_filter.base_frame(CotFilter(), db=db)
    sel = Selection(sources=sources, conditions=conditions)
    assert selection.cut_pool(whole_pool, sel, frame["cot_id"].slice(1), frame_filter.mask(frame, CotFilter(), db=db)) is None


def test_a_pool_index_cut_from_the_whole_store_pool_reports_what_the_filter_s_own_pool_does(scored_store):
    """Select's new filter cuts the whole-store pool's index (LoadedPool.cut) instead of building
    one: every report figure, the kept ids and what the page reads of the pool (counts, known
    values, token bins) equal those of the filter's pool read and indexed on its own, with and
    without conditions, for rules that cut on every figure."""
    from core import selection
    from polars.testing import assert_frame_equal

    from core.selection import ScoreSources, Selection, Thresholds

    from helpers import assert_same_report

    db = scored_store
    rv, cd = queries.sources("rv", db=db)[0], queries.sources("cd", db=db)[0]
    sources = ScoreSources(rv=(rv,), cd=(cd,), correct=(queries.OWN_CORRECTNESS,))
    rules = (Thresholds(), Thresholds(rv_range=(2, 7), tokens_range=(40, 400)),
             Thresholds(cd_range=(3, 9), tokens_range=(0, 250), require_correct=True))
    bases = (CotFilter(rv_source=rv, rv_range=(3.0, 7.0), correct_source=queries.OWN_CORRECTNESS, correct="correct"),
             CotFilter(cd_source=cd, tokens_range=(0, 300), truncated=False),
             CotFilter(models=("nobody",)))
    for conditions in ((), (Condition(Figure("cd", cd), hi=6),)):
        whole_sel = selection.whole_store_selection(Selection(sources=sources, conditions=conditions))
        whole = selection.load_pool(whole_sel, rows=selection.pool_rows(whole_sel, db=db, ordered=True))
        for base in bases:
            frame = frame_filter.base_frame(base, db=db)
            cut = selection.cut_pool(whole, Selection(base=base, sources=sources, conditions=conditions),
                                     frame["cot_id"], frame_filter.mask(frame, base, db=db))
            own = selection.load_pool(Selection(base=base, sources=sources, conditions=conditions), db=db)
            assert (cut.n_cots, cut.n_problems, cut.known, cut.token_width, cut.token_n_bins) == \
                (own.n_cots, own.n_problems, own.known, own.token_width, own.token_n_bins), base
            assert cut.groups.equals(own.groups)
            # the cut holds no rows of its own: its dropped pages read the whole-store rows in place
            assert cut._arrow is None and cut._rows_of is not None and cut.nbytes < whole.nbytes
            for sort_by in ("cot_id", "n_tokens"):
                sel = Selection(base=base, rule=rules[1], sources=sources, conditions=conditions)
                assert_frame_equal(selection.dropped_page(sel=sel, pool=cut, sort_by=sort_by, limit=9, db=db),
                                   selection.dropped_page(sel=sel, pool=own, sort_by=sort_by, limit=9, db=db))
            for rule in rules:
                sel = Selection(base=base, rule=rule, sources=sources, conditions=conditions)
                assert_same_report(selection.evaluate(sel, pool=cut), selection.evaluate(sel, pool=own))
                assert_same_report(selection.evaluate(sel, pool=cut), selection.evaluate(sel, db=db))
                assert sorted(selection.kept_ids(sel, pool=cut).to_list()) == sorted(selection.kept_ids(sel, db=db).to_list())
    # the whole-store pool is for cutting: a filter with other sources is refused
    with pytest.raises(ValueError, match="other score sources"):
        selection.cut_pool(whole, Selection(sources=ScoreSources(rv=(rv,))), frame["cot_id"], frame_filter.mask(frame, base, db=db))


def test_the_data_version_changes_with_what_a_base_reads_and_only_with_it(scored_store):
    db = scored_store
    rv = queries.sources("rv", db=db)[0]
    names = frame_filter.score_sources_of(CotFilter(rv_source=rv, correct_source=queries.OWN_CORRECTNESS), db=db)
    assert rv in names and set(queries.own_correctness_sources(db=db)) <= set(names)
    v0 = frame_filter.data_version(names, db=db)
    assert frame_filter.data_version(names, db=db) == v0  # a fingerprint, not a clock
    (cot,), = store.read_rows("SELECT min(cot_id) FROM cots", db=db)
    with store.connect(db, read_only=False) as con:  # a job scoring with another source
        other = store.ensure_source(con, "another judge", "judge")
        con.execute("INSERT INTO scores (cot_id, source_id, metric, value) VALUES (?, ?, 'rv', 3)", [cot, other])
    assert frame_filter.data_version(names, db=db) == v0
    changes = [
        ("UPDATE scores SET value = 9 - value WHERE cot_id = ? AND metric = 'rv' AND source_id = "
         "(SELECT source_id FROM score_sources WHERE name = ?)", [cot, rv]),  # a read source's value
        ("UPDATE cots SET n_tokens = n_tokens + 1 WHERE cot_id = ?", [cot]),  # the token stage
        ("UPDATE cots SET n_reflections = n_reflections + 1 WHERE cot_id = ?", [cot]),  # the markers stage
        ("UPDATE problems SET benchmark = 'elsewhere' WHERE problem_id = (SELECT problem_id FROM cots WHERE cot_id = ?)", [cot]),
        ("UPDATE datasets SET status = 'loading'", []),  # a dataset leaving the view
    ]
    seen = {v0}
    for sql, params in changes:
        with store.connect(db, read_only=False) as con:
            con.execute(sql, params)
        version = frame_filter.data_version(names, db=db)
        assert version not in seen, sql
        seen.add(version)


def test_distributions_keeps_its_base_over_a_write_that_does_not_touch_it(scored_store, app_store, monkeypatch):
    """The page's base frame is read again after a store write only when the write changed
    something it reads: a score of another source leaves it; a score of its RV source does not."""
    from streamlit.testing.v1 import AppTest

    from tests.helpers import rerun

    db = scored_store
    app_store(db)
    reads = []
    real = frame_filter.base_frame
    monkeypatch.setattr(frame_filter, "base_frame", lambda f, db=None: reads.append(f) or real(f, db=db))
    at = rerun(AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120).run().switch_page("pages/distributions.py"))
    assert len(reads) == 1
    rv = at.sidebar.selectbox(key="f_rv_source").value
    (cot,), = store.read_rows("SELECT min(cot_id) FROM cots", db=db)
    with store.connect(db, read_only=False) as con:
        other = store.ensure_source(con, "another judge", "judge")
        con.execute("INSERT INTO scores (cot_id, source_id, metric, value) VALUES (?, ?, 'rv', 3)", [cot, other])
    rerun(at)
    assert len(reads) == 1, "a write of another source made the page read every CoT again"
    with store.connect(db, read_only=False) as con:
        con.execute("UPDATE scores SET value = CASE WHEN value = 9 THEN 8 ELSE 9 END WHERE cot_id = ? AND metric = 'rv' AND source_id = "
                    "(SELECT source_id FROM score_sources WHERE name = ?)", [cot, rv])
    rerun(at)
    assert len(reads) == 2
    # and what the page shows is the new value: its RV chart counts the changed CoT at 9
    chart = next(json.loads(c.proto.spec) for c in open_tab(at, "RV and CD").get("plotly_chart")
                 if json.loads(c.proto.spec)["layout"]["title"]["text"].startswith("Reasoning Verbosity"))
    (nines,), = store.read_rows("SELECT count(*) FROM scores s JOIN score_sources ss USING (source_id) "
                                "WHERE ss.name = ? AND s.metric = 'rv' AND s.value = 9", [rv], db=db)
    assert chart["data"][0]["y"][9] == nines
