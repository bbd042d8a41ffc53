"""The matching CoTs' RV, CD and correctness read in one pivoted scan of ``scores``
(queries._scores_pivot) agree with a plain Python computation over the raw score rows: each
metric the value of its first source (in priority order) with a non-NULL value."""

from __future__ import annotations

from core import queries, store
from core.queries import CotFilter


def _raw(db) -> tuple[dict, dict]:
    """{(cot_id, source, metric): value} for non-NULL scores, and every CoT's fields."""
    scores = {}
    for cot_id, name, metric, value in store.read_rows(
            "SELECT s.cot_id, ss.name, s.metric, s.value FROM scores s JOIN score_sources ss USING (source_id) "
            "WHERE s.value IS NOT NULL", db=db):
        scores[(cot_id, name, metric)] = value
    cots = {r[0]: r for r in store.read_rows("SELECT cot_id, n_reflections FROM cots", db=db)}
    return scores, cots


def _first(scores, cot_id, sources, metric):
    for name in sources:
        if (cot_id, name, metric) in scores:
            return scores[(cot_id, name, metric)]
    return None


def test_pivot_matches_first_source_per_metric(demo_store):
    db = demo_store
    with store.connect(db, read_only=False) as con:
        # make the priority order matter: drop the dataset's own verdict for a third of the CoTs
        # (the verifier's answers for those), and null some RV values
        con.execute("DELETE FROM scores WHERE metric = 'correct' AND cot_id % 3 = 0 AND source_id IN "
                    "(SELECT source_id FROM score_sources WHERE kind = 'label')")
        con.execute("UPDATE scores SET value = NULL WHERE metric = 'rv' AND cot_id % 5 = 0")
    own = queries.own_correctness_sources(db=db)
    assert len(own) >= 2, own
    rv_src, cd_src = queries.sources("rv", db=db)[0], queries.sources("cd", db=db)[0]
    scores, cots = _raw(db)

    def expected(cot_id):
        correct = _first(scores, cot_id, own, "correct")
        return (_first(scores, cot_id, (rv_src,), "rv"), _first(scores, cot_id, (cd_src,), "cd"),
                None if correct is None else correct == 1)

    f = CotFilter(rv_source=rv_src, cd_source=cd_src, correct_source=queries.OWN_CORRECTNESS)
    sql, _ = queries.matching_sql(f, db=db)
    assert sql.count("FROM scores") == 1  # one scan for the three metrics
    frame = queries.metric_frame(f, db=db)
    assert frame.height == len(cots)
    got = {r["cot_id"]: (r["rv"], r["cd"], r["correct"]) for r in frame.iter_rows(named=True)}
    assert got == {c: expected(c) for c in cots}
    assert any(v[0] is None for v in got.values()) and any(v[2] is None for v in got.values()) is not None

    # the scores decide rows: an RV range and a correctness constraint
    f2 = f.with_(rv_range=(3.0, 6.0), correct="incorrect", reflections_range=(0, 10))
    frame2 = queries.metric_frame(f2, db=db)
    want = {c for c in cots if (e := expected(c))[0] is not None and 3 <= e[0] <= 6 and e[2] is False
            and cots[c][1] is not None and 0 <= cots[c][1] <= 10}
    assert set(frame2["cot_id"].to_list()) == want and want
    assert queries.count(f2, db=db)["cots"] == len(want)

    # one metric chosen: the single join, same values
    f3 = CotFilter(correct_source=queries.OWN_CORRECTNESS)
    frame3 = queries.metric_frame(f3, db=db)
    assert {r["cot_id"]: r["correct"] for r in frame3.iter_rows(named=True)} == {c: expected(c)[2] for c in cots}
    assert frame3["rv"].null_count() == frame3.height


def test_select_pool_reads_scores_once_and_agrees(demo_store):
    """Select's pool: the base filter's own score columns are left out of its SQL unless they
    decide rows, and the pool's RV, CD and correctness agree with the raw scores either way."""
    from core import selection
    from core.selection import ScoreSources, Selection

    db = demo_store
    own = queries.own_correctness_sources(db=db)
    rv_src, cd_src = queries.sources("rv", db=db)[0], queries.sources("cd", db=db)[0]
    scores, cots = _raw(db)
    sources = ScoreSources(rv=(rv_src,), cd=(cd_src,), correct=own)
    base = CotFilter(rv_source=rv_src, cd_source=cd_src, correct_source=queries.OWN_CORRECTNESS)
    for b, scans in ((base, 1), (base.with_(rv_range=(2.0, 7.0)), 2)):
        sel = Selection(base=b, sources=sources)
        sql, _ = selection.pool_sql(sel, db=db)
        assert sql.count("FROM scores") == scans
        pool = selection.load_pool(sel, db=db).to_arrow()
        got = {r["cot_id"]: (r["rv"], r["cd"], r["correct"]) for r in pool.to_pylist()}
        want = {}
        for c in cots:
            rv, cd, ok = (_first(scores, c, (rv_src,), "rv"), _first(scores, c, (cd_src,), "cd"),
                          _first(scores, c, own, "correct"))
            if b.rv_range and (rv is None or not 2 <= rv <= 7):
                continue
            want[c] = (rv, cd, None if ok is None else ok == 1)
        assert got == want and want
