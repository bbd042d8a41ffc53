"""The sidebar's slider ends come from core.queries (no SQL in ui/): checked against plain
Python over the same store, and an empty store gives zeros."""

from __future__ import annotations

from core import queries, store


def test_slider_maxima_are_the_largest_counts(demo_store):
    rows = store.read_rows("SELECT n_tokens, n_reflections FROM cots", db=demo_store)
    expected = {"max_tokens": max(r[0] or 0 for r in rows), "max_reflections": max(r[1] or 0 for r in rows)}
    assert queries.slider_maxima(db=demo_store) == expected
    assert expected["max_tokens"] > 0 and expected["max_reflections"] > 0


def test_an_empty_store_gives_zeros(tmp_path):
    db = tmp_path / "empty.duckdb"
    store.init_store(db)
    assert queries.slider_maxima(db=db) == {"max_tokens": 0, "max_reflections": 0}
