"""The matching CoTs' numbers, cached for the pages that chart them (Distributions, Overview)."""

from __future__ import annotations

import polars as pl
import streamlit as st

from core import charts, queries
from core.queries import CotFilter
from ui import common


@st.cache_data(ttl=600, show_spinner="Reading the matching CoTs…", max_entries=16)
def _load(filter_key: str, db: str, stamp: tuple[float, float], _f: CotFilter) -> pl.DataFrame:
    del filter_key, db, stamp  # the cache key only
    frame = queries.metric_frame(_f)
    generated = queries.datasets().filter(pl.col("generated"))["name"].to_list()
    return charts.label_generated(frame, generated)


def cache_key(f: CotFilter) -> tuple[str, str, tuple[float, float]]:
    """What a cached result over the matching rows depends on: the whole filter, the store file
    and its write stamp (which changes whenever the store is written, so caching never hides a
    new ingest or score)."""
    return repr(f), str(common.db_file()), common.store_stamp()


def metric_frame(f: CotFilter) -> pl.DataFrame:
    """``queries.metric_frame`` for every CoT ``f`` matches, generated datasets labelled."""
    return _load(*cache_key(f), f)
