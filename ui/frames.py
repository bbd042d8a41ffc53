"""The matching CoTs' numbers, and what the pages compute from them, cached for the pages that
chart them (Distributions, Overview, Select's pools).

A filter's frame is cut in memory from the *base* of its score sources (every ready CoT's
numbers, core/frame_filter.py), which the server reads once and keeps under a fingerprint of what
it reads (``versioned``): every session and filter share it, and a store write that does not
touch it leaves it in place. The bases (and Select's whole-store pools) live in ``shared_cache``,
the per-filter frames and pools in ``frame_cache``: one ``core.memcache.ByteLRU`` each per server
process, each bounded by bytes (``$THOUGHTSCOPE_FRAME_CACHE_MB``, default 512 MiB; polars'
``estimated_size`` per frame), least recently used evicted first. Computing one filter's frame
holds only that filter's lock, so no session waits for another's different filter, and at most
``compute_slots`` such computations run at once. The derived figures stay in
``st.cache_resource`` (small: binned figures and tables).

Both caches hold one object shared by every rerun and session, never copied. ``st.cache_data`` would pickle a 2M-row frame into the cache and unpickle a fresh copy
on every rerun (about a second and a copy of the frame per session at 2M CoTs). Sharing is safe
because nothing mutates what is cached: polars frames are immutable, and a cached figure is
only handed to ``st.plotly_chart``, which serialises it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

import polars as pl
import streamlit as st

from core import charts, frame_filter, memcache, queries
from core.queries import CotFilter
from ui import common

T = TypeVar("T")
GROUP_KEYS = ("dataset", "model", "benchmark")


@st.cache_resource(show_spinner=False)
def frame_cache() -> memcache.ByteLRU:
    """The process's frame cache (a ``st.cache_resource`` so that clearing Streamlit's caches,
    as the tests do, clears it too)."""
    return memcache.ByteLRU(memcache.frame_cache_budget())


@st.cache_resource(show_spinner=False)
def compute_slots() -> memcache.ComputeSlots:
    """How many cache misses this server computes at once (memcache.compute_slots_wanted)."""
    return memcache.ComputeSlots(memcache.compute_slots_wanted())


@st.cache_resource(show_spinner=False)
def shared_cache() -> memcache.ByteLRU:
    """What every filter is cut from (the base frames, Select's whole-store pools, whole-store
    reads): few and shared by every session, so kept apart from the per-filter entries, which
    would otherwise push them out and make every new filter read the store again. Its own
    budget, as large as the frame cache's."""
    return memcache.ByteLRU(memcache.frame_cache_budget())


def prepared(frame: pl.DataFrame, generated: list[str]) -> pl.DataFrame:
    """A frame as the cache keeps it: generated datasets labelled, and the group keys
    dictionary-coded (Categorical): a third less memory per frame, and the figures' group-bys on
    (dataset, model, benchmark) cost ~30% less CPU at 300k CoTs (bench/README.md, 2026-12-07)."""
    frame = charts.label_generated(frame, generated)
    return frame.with_columns(pl.col(c).cast(pl.Categorical) for c in GROUP_KEYS if c in frame.columns)


def cached(kind: str, ident: str, db: str, stamp: tuple[float, float], compute: Callable[[], T], *,
           spinner: str | None = None, shared: bool = False) -> T:
    """``compute()``, kept in the process's byte-bounded cache (frame_cache; shared_cache when
    ``shared``) under (kind, ident, store, write stamp): an object too large for a count bound
    (a frame, a Select pool; its ``estimated_size()`` or ``nbytes`` is what it costs). A write
    to the store frees that store's entries of older stamps when the next one is computed."""
    return _get_or_compute(shared_cache() if shared else frame_cache(), (kind, ident, db, stamp),
                           lambda k: k[2] == db and k[3] != stamp, compute, spinner)


def _get_or_compute(cache: memcache.ByteLRU, key: tuple, stale: Callable[[tuple], bool], compute: Callable[[], T],
                    spinner: str | None) -> T:
    """``cache[key]``, else ``compute()`` kept there, after dropping the entries ``stale`` names."""
    hit = cache.get(key)
    if hit is not None:  # no spinner for a cached value
        return hit

    def run() -> T:
        cache.discard(stale)
        return compute()

    # a slot before the key's lock (memcache.ComputeSlots; nested values take none): whoever
    # holds a key's lock is computing, never waiting for a slot
    with st.spinner(spinner) if spinner else contextlib.nullcontext(), compute_slots().slot():
        return cache.get_or_compute(key, run)


def _load(filter_key: str, db: str, stamp: tuple[float, float], f: CotFilter) -> pl.DataFrame:
    """The filter's frame, cut from the base of its score sources (core/frame_filter.py): the
    base is read from the store once per write and shared by every session and filter; a new
    filter then costs a mask over it, not a read of the store."""
    base_f = frame_filter.base_filter(f)
    base = _base(db, stamp, base_f)
    if f == base_f:
        return base.select(frame_filter.FRAME_COLUMNS)
    return cached("frame", filter_key, db, stamp, lambda: frame_filter.cut(base, f, matches=_matches(f)))


def versioned(kind: str, ident: str, db: str, stamp: tuple[float, float], sources: Callable[[], tuple[str, ...]],
              compute: Callable[[], T], *, spinner: str | None = None) -> T:
    """``compute()`` (a whole-store read: a base frame, a whole-store pool), kept in the shared
    cache under the fingerprint of what it reads (``frame_filter.data_version`` of the score
    sources ``sources()`` names), not under the store's write stamp: a write that touches none of
    it (a job scoring another source) leaves it in place instead of making every session read it
    again. The fingerprint itself is computed once per write stamp (~70 ms at 2M CoTs)."""
    version = cached(f"{kind}:version", ident, db, stamp, lambda: frame_filter.data_version(sources()), shared=True)
    key = (kind, ident, f"version:{db}", version)  # not freed by a new write stamp (see cached)

    def one_at_a_time() -> T:
        # one whole-store read at a time: each peaks at ~1 GB at 2M CoTs while it runs, and two
        # at once (Distributions' base, Select's pool, sessions starting together) only share
        # the same cores; no such read asks for another, so the lock cannot deadlock
        with _WHOLE_STORE_READ:
            try:
                return compute()
            finally:
                memcache.release_free_memory()  # its transient buffers, back to the system

    return _get_or_compute(shared_cache(), key, lambda k: k[:3] == key[:3] and k[3] != version, one_at_a_time, spinner)


_WHOLE_STORE_READ = threading.Lock()


def _base(db: str, stamp: tuple[float, float], base_f: CotFilter) -> pl.DataFrame:
    return versioned("base", repr(base_f), db, stamp, lambda: frame_filter.score_sources_of(base_f),
                     lambda: prepared(frame_filter.base_frame(base_f), common.catalogue(stamp)["generated"]),
                     spinner="Reading every CoT's numbers…")


def _matches(f: CotFilter) -> pl.Series:
    """Whether ``f`` matches each row of its base (core.frame_filter.mask), computed once per
    filter: the frame, Select's pool cut and the tokenizer counts share it (a search's index
    query included)."""
    filter_key, db, stamp = cache_key(f)
    base = _base(db, stamp, frame_filter.base_filter(f))
    return cached("matches", filter_key, db, stamp, lambda: frame_filter.mask(base, f))


def filter_mask(f: CotFilter) -> tuple[pl.Series, pl.Series]:
    """(cot_id, matches): the base frame's ids, in cot_id order, and whether ``f`` matches each
    (core.frame_filter.mask): what Select cuts a new filter's pool with."""
    _, db, stamp = cache_key(f)
    return _base(db, stamp, frame_filter.base_filter(f))["cot_id"], _matches(f)


def tokenizers(f: CotFilter) -> dict[str | None, int]:
    """CoTs with a token count per tokenizer among those ``f`` matches (charts.tokenizers_of, as
    queries.tokenizers), from the base and ``f``'s mask: two columns, no copy of the rows."""
    _, db, stamp = cache_key(f)
    base, matches = _base(db, stamp, frame_filter.base_filter(f)), _matches(f)
    return charts.tokenizers_of(base.select(pl.col("tokenizer").filter(matches), pl.col("n_tokens").filter(matches)))


def per_store(kind: str, compute: Callable[[], T]) -> T:
    """``compute()`` (a read of the whole store that no filter changes, e.g. every CoT's
    recorded budget), kept in the byte-bounded cache until the store is written."""
    _, db, stamp = cache_key(CotFilter())
    return cached(kind, "", db, stamp, compute, shared=True)


def cache_key(f: CotFilter) -> tuple[str, str, tuple[float, float]]:
    """What a cached result over the matching rows depends on: the whole filter, the store file
    and its write stamp (which changes whenever the store is written, so caching never hides a
    new ingest or score)."""
    return repr(f), str(common.db_file()), common.store_stamp()


def metric_frame(f: CotFilter) -> pl.DataFrame:
    """``queries.metric_frame`` for every CoT ``f`` matches, generated datasets labelled."""
    return _load(*cache_key(f), f)


@st.cache_resource(ttl=600, show_spinner=False, max_entries=64)
def _derived(name: str, params: tuple, filter_key: str, db: str, stamp: tuple[float, float], _f: CotFilter,
             _compute: Callable[[pl.DataFrame], T]) -> T:
    del name, params, filter_key, db, stamp  # the cache key only
    return _compute(metric_frame(_f))


def derived(name: str, f: CotFilter, compute: Callable[[pl.DataFrame], T], *params) -> T:
    """``compute(metric_frame(f))``, cached until the filter, the store or ``params`` change.

    ``name`` and ``params`` are the key: ``compute`` must depend on nothing else than the frame
    and ``params`` (a lambda over the page's widget values, with those values in ``params``).
    A rerun that changes nothing then costs a dictionary look-up instead of a pass over every
    matching CoT."""
    return _derived(name, tuple(params), *cache_key(f), f, compute)


def length_figure(f: CotFilter, *, facet_name: str = "none", kind: str = "histogram", bins: int = 40,
                  log_x: bool = False, panel_height: int | None = None, height: int | None = None):
    """The length-by-correctness figure over every CoT ``f`` matches (Distributions, Overview),
    cached per filter and display choice."""

    def build(df: pl.DataFrame):
        facet_by = charts.FACETS[facet_name]
        facet_label = facet_name if facet_name != "none" else None
        if len(charts.tokenizers_of(df)) > 1:
            # counts of different tokenizers are never pooled: a panel per tokenizer (and facet)
            tokenizer = pl.col("tokenizer").fill_null("no tokenizer")
            facet = tokenizer if facet_by is None else charts._facet_values(df, facet_by) + pl.lit(" · ") + tokenizer
            df = df.with_columns(facet.alias("_facet_tokenizer"))
            facet_by, facet_label = "_facet_tokenizer", f"{facet_label} and tokenizer" if facet_label else "tokenizer"
        frame = charts.length_distribution_frame(df, facet_by=facet_by, kind=kind, bins=bins, log=log_x)
        # CoTs the chart cannot place: no token count, or a count of 0 on a log axis
        no_length = int(df["n_tokens"].is_null().sum()) + (int((df["n_tokens"] <= 0).sum()) if log_x else 0)
        fig = charts.length_distribution_figure(
            frame, kind=kind, n_cots=df.height, facet_label=facet_label, log_x=log_x, no_length=no_length,
            length_name=charts.tokens_name(df),
            correctness_source=queries.correctness_label(f.correct_source) if f.correct_source else None,
            **({"panel_height": panel_height} if panel_height else {}),
        )
        if height:
            fig.update_layout(height=height)
        return fig

    return derived("length_figure", f, build, facet_name, kind, bins, log_x, panel_height, height)
