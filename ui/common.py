"""Widgets and guards every page uses: the shared CoT filter (kept in the URL) and the
turning of errors into sentences."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

import streamlit as st

from core import queries, store
from core.queries import CotFilter
from core.records import IngestError


def db_file() -> Path:
    return store.db_path(os.environ.get("THOUGHTSCOPE_DB"))


def store_stamp() -> tuple[float, float]:
    """Changes whenever the store is written (the file or its WAL): the cache key that
    keeps cached figures fresh without re-querying on every rerun."""
    path = db_file()
    wal = path.with_name(path.name + ".wal")
    return (path.stat().st_mtime if path.exists() else 0.0, wal.stat().st_mtime if wal.exists() else 0.0)


@st.cache_data(ttl=600, show_spinner=False)
def catalogue(stamp: tuple[float, float]) -> dict:
    """Datasets, models, benchmarks and score sources for the filter widgets."""
    del stamp  # only the cache key
    sets = queries.datasets()
    return {
        "datasets": sets["name"].to_list(),
        "generated": sets.filter(sets["generated"])["name"].to_list(),  # synthetic data, labelled as such
        "models": queries.distinct_values("model"),
        "benchmarks": queries.distinct_values("benchmark"),
        "rv": queries.sources("rv"),
        "cd": queries.sources("cd"),
        "correct": queries.sources("correct"),
        "max_tokens": int(store.read_rows("SELECT coalesce(max(n_tokens), 0) FROM cots")[0][0]),
        "max_reflections": int(store.read_rows("SELECT coalesce(max(n_reflections), 0) FROM cots")[0][0]),
    }


@st.cache_data(ttl=600, show_spinner=False, max_entries=32)
def _per_stamp(name: str, db: str, stamp: tuple[float, float], _query):
    del name, db, stamp  # the cache key only
    return _query()


def per_stamp(name: str, query):
    """``query()`` (a store read that depends on nothing but the store), cached until the store
    is written: a rerun then does not open the store at all."""
    return _per_stamp(name, str(db_file()), store_stamp(), query)


@contextlib.contextmanager
def guard():
    """Show errors from core/ as sentences that say what to do, never as tracebacks."""
    try:
        yield
    except store.StoreBusy:
        st.warning("The store is busy with an ingest or a job that is committing; this page will retry on the next interaction.")
    except IngestError as exc:
        st.error(f"That input cannot be ingested: {exc}. Fix the file (or tick 'skip bad rows') and try again.")
    except (ValueError, KeyError) as exc:
        st.error(f"{exc}")


_NONE = "(none)"
_TRUNC = {None: "any", True: "only truncated", False: "only complete"}


def _initial_state(start: CotFilter, cat: dict) -> dict:
    """Widget values for a filter (the URL's, on a session's first run)."""
    # queries.default_sources() (the first source per metric), from the cached catalogue
    src = {metric: (cat[metric] or [None])[0] for metric in ("rv", "cd", "correct")}

    def source(current, metric):
        return current if current in cat[metric] else (src[metric] or _NONE)

    return {
        "f_datasets": [d for d in start.datasets if d in cat["datasets"]],
        "f_models": [m for m in start.models if m in cat["models"]],
        "f_benchmarks": [b for b in start.benchmarks if b in cat["benchmarks"]],
        "f_rv_source": source(start.rv_source, "rv"),
        "f_rv": tuple(int(v) for v in (start.rv_range or (0, 9))),
        "f_cd_source": source(start.cd_source, "cd"),
        "f_cd": tuple(int(v) for v in (start.cd_range or (0, 9))),
        "f_correct_source": source(start.correct_source, "correct"),
        "f_correct": start.correct,
        "f_tokens": tuple(start.tokens_range) if start.tokens_range else (0, max(cat["max_tokens"], 1)),
        "f_reflections": tuple(start.reflections_range) if start.reflections_range else (0, max(cat["max_reflections"], 1)),
        "f_truncated": _TRUNC[start.truncated],
        "f_text": start.text,
    }


def sidebar_filter() -> CotFilter:
    """The filter widgets in the sidebar; returns the filter and mirrors it in the URL.

    Widget values live in session state under fixed keys, set from the URL on a session's
    first run; re-assigning them each run keeps them when the user switches pages.
    """
    cat = catalogue(store_stamp())
    if "filter_initialised" not in st.session_state:
        st.session_state.filter_initialised = True
        st.session_state.filter_problem_ids = CotFilter.from_params(st.query_params.to_dict()).problem_ids
        st.session_state.filter_problem_set = CotFilter.from_params(st.query_params.to_dict()).problem_set
        for key, value in _initial_state(CotFilter.from_params(st.query_params.to_dict()), cat).items():
            st.session_state[key] = value
    for key in list(st.session_state.keys()):
        if isinstance(key, str) and key.startswith("f_"):
            st.session_state[key] = st.session_state[key]
    sb = st.sidebar
    sb.subheader("Filter")
    ds = sb.multiselect("Datasets", cat["datasets"], key="f_datasets")
    models = sb.multiselect("Models / teachers", cat["models"], key="f_models")
    benchmarks = sb.multiselect("Benchmarks", cat["benchmarks"], key="f_benchmarks")
    with sb.expander("RV / CD"):
        rv_source = st.selectbox("RV source", [_NONE, *cat["rv"]], key="f_rv_source")
        rv = st.slider("Reasoning Verbosity", 0, 9, key="f_rv", disabled=rv_source == _NONE)
        cd_source = st.selectbox("CD source", [_NONE, *cat["cd"]], key="f_cd_source")
        cd = st.slider("Cognitive Difficulty", 0, 9, key="f_cd", disabled=cd_source == _NONE)
    correct_source = sb.selectbox("Correctness source", [_NONE, *cat["correct"]], key="f_correct_source")
    correct = sb.radio("Correctness", ["any", "correct", "incorrect", "unknown"], horizontal=True, key="f_correct", disabled=correct_source == _NONE)
    max_tokens = max(cat["max_tokens"], 1)
    tokens = sb.slider("Tokens", 0, max_tokens, key="f_tokens")
    max_refl = max(cat["max_reflections"], 1)
    refl = sb.slider("Reflection markers", 0, max_refl, key="f_reflections")
    trunc_choice = sb.selectbox("Truncated", list(_TRUNC.values()), key="f_truncated")
    text = sb.text_input("Search question and CoT text", key="f_text")
    has = {name: value != _NONE for name, value in (("rv", rv_source), ("cd", cd_source), ("correct", correct_source))}
    current = CotFilter(
        datasets=tuple(ds), models=tuple(models), benchmarks=tuple(benchmarks),
        rv_source=rv_source if has["rv"] else None,
        rv_range=(float(rv[0]), float(rv[1])) if has["rv"] and tuple(rv) != (0, 9) else None,
        cd_source=cd_source if has["cd"] else None,
        cd_range=(float(cd[0]), float(cd[1])) if has["cd"] and tuple(cd) != (0, 9) else None,
        correct_source=correct_source if has["correct"] else None,
        correct=correct if has["correct"] else "any",
        tokens_range=tuple(tokens) if tuple(tokens) != (0, max_tokens) else None,
        reflections_range=tuple(refl) if tuple(refl) != (0, max_refl) else None,
        truncated={v: k for k, v in _TRUNC.items()}[trunc_choice],
        text=text.strip(), problem_ids=st.session_state.get("filter_problem_ids", ()),
        problem_set=st.session_state.get("filter_problem_set", ""),
    )
    if current.problem_set:
        _problem_set_line(sb, current.problem_set)
    if current.problem_ids and sb.button("Clear the problem selection", key="f_clear_problems"):
        st.session_state.filter_problem_ids = ()
        st.rerun()
    # Mirror the filter in the URL, leaving other pages' own parameters (the Reader's
    # ?problem=) alone.
    params = current.to_params()
    keys = {fl.name for fl in dataclasses.fields(CotFilter)}
    if params != {k: v for k, v in st.query_params.to_dict().items() if k in keys}:
        for k in keys - params.keys():
            if k in st.query_params:
                del st.query_params[k]
        st.query_params.update(params)
    st.session_state.current_filter = current
    return current


def _clear_problem_set() -> None:
    st.session_state.filter_problem_set = ""


def _problem_set_line(sb, key: str) -> None:
    """'Problems from the map: N (clear)': a saved set (a lasso on the Map page) in the filter."""
    from core import problem_sets

    left, right = sb.columns([3, 1], vertical_alignment="center")
    try:
        left.caption(f"Problems from the map: {problem_sets.info(key)['n']:,}")
    except problem_sets.ProblemSetError as exc:
        left.caption(f"Problems from the map: {exc}")
    # not an "f_" key: sidebar_filter re-assigns those each run, which a button refuses
    right.button("clear", key="filter_clear_problem_set", on_click=_clear_problem_set,
                 help="Drop the map selection from the filter")


def set_filter(f: CotFilter) -> None:
    """Load a filter (a recipe's base filter) into the sidebar widgets and the URL; the
    caller reruns."""
    st.query_params.from_dict(f.to_params())
    st.session_state.pop("filter_initialised", None)
    for key in [k for k in st.session_state.keys() if isinstance(k, str) and k.startswith("f_")]:
        del st.session_state[key]


def narrow_filter(**changes) -> None:
    """Narrow the shared filter (a click on a chart bar or cell) and rerun.

    Call it from a widget callback (``on_select=``/``on_click=``): in the page body the
    sidebar widgets already exist for this run and their state can no longer be set."""
    mapping = {"rv_range": "f_rv", "cd_range": "f_cd", "tokens_range": "f_tokens", "models": "f_models",
               "datasets": "f_datasets", "correct": "f_correct"}
    for name, value in changes.items():
        if name == "problem_ids":
            st.session_state.filter_problem_ids = tuple(value)
        elif name == "problem_set":
            st.session_state.filter_problem_set = str(value)
        elif name in mapping:
            st.session_state[mapping[name]] = list(value) if name in ("models", "datasets") else value
    st.rerun()
