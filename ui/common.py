"""Widgets and guards every page uses: the shared CoT filter (kept in the URL) and the
turning of errors into sentences.

The sidebar filter: datasets, models, benchmarks, correctness (each dataset's own source by
default, with the source each dataset's verdicts come from shown under it), tokens and
reflection markers, RV / CD (only where the store has them), truncation, text search, and
"Filters on figures": a condition on any figure of the store (core.figures.catalogue: CoT
columns, every (source, metric) of scores and problem_scores), a range or "has a value" / "has
no value". Every numeric filter is a slider with typed bounds under it (range_input). A stage
that writes its figures under a score source appears in the picker with no change here.
"Benchmark contamination" (ui.problems.contamination_widgets, also on Select) reads better than
those conditions and makes the same ones (core.contamination.ContaminationFilter).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

import polars as pl
import streamlit as st

from core import figures, labels, queries, render, store
from core.errors import UserError
from core.figures import Condition, Figure
from core.queries import CotFilter
from core.records import IngestError
from core.tokens import token_unit, tokenizer_counts


def db_file() -> Path:
    return store.db_path(os.environ.get("THOUGHTSCOPE_DB"))


def store_stamp() -> tuple:
    """Changes whenever the store is written (the file or its WAL): the cache key that
    keeps cached figures fresh without re-querying on every rerun. While this run reads human
    labels (the filter has a condition on them, or the page called :func:`labels_in_view`), it
    also changes with every new label; otherwise a label, kept beside the store, leaves every
    cached page as it is."""
    path = db_file()
    wal = path.with_name(path.name + ".wal")
    base = (path.stat().st_mtime if path.exists() else 0.0, wal.stat().st_mtime if wal.exists() else 0.0)
    return (*base, labels_version()) if st.session_state.get("_labels_in_view") else base


def labels_version() -> int:
    """Changes whenever a label is added to this store's labels (core/label_store.py)."""
    return labels.version(db=db_file())


def labels_in_view() -> None:
    """This run shows human labels whatever the filter (the Reader, a comparison with a human
    source): its cached reads must refresh after each new label. The sidebar filter resets it
    at the start of every run."""
    st.session_state["_labels_in_view"] = True


@st.cache_data(ttl=600, show_spinner=False)
def _store_catalogue(stamp: tuple[float, float]) -> dict:
    del stamp  # only the cache key
    with store.labels_off():  # the labels' sources are added fresh by catalogue()
        sets = queries.datasets()
        return {
            "datasets": sets["name"].to_list(),
            "generated": sets.filter(sets["generated"])["name"].to_list(),  # synthetic data, labelled as such
            "models": queries.distinct_values("model"),
            "benchmarks": queries.distinct_values("benchmark"),
            "rv": queries.sources("rv"),
            "cd": queries.sources("cd"),
            "correct": queries.sources("correct"),
            "tokenizers": tokenizer_counts(),  # which tokenizers the store's counts come from
            **queries.slider_maxima(),
        }


@st.cache_data(ttl=600, show_spinner=False, max_entries=8)
def _human_figures(db: str, version: int) -> pl.DataFrame:
    del db, version  # only the cache key
    return labels.human_figures()


def human_figures() -> pl.DataFrame:
    """The figures human labels give (core.labels.human_figures), fresh after every label."""
    return _human_figures(str(db_file()), labels_version())


def catalogue(stamp: tuple) -> dict:
    """Datasets, models, benchmarks and score sources for the filter widgets (the store's,
    cached until it is written, and the human labels' sources, fresh)."""
    cat = _store_catalogue(tuple(stamp[:2]))
    human = human_figures()
    if human.height == 0:
        return cat
    extra = {m: human.filter(pl.col("metric") == m)["source"].to_list() for m in ("rv", "cd", "correct")}
    return {**cat, **{m: [*cat[m], *(s for s in extra[m] if s not in cat[m])] for m in extra}}


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
    """Show a :class:`core.errors.UserError` from core/ as the sentence it carries (what to
    change), a busy store as a warning. Anything else is a bug and is not caught here:
    Streamlit shows its traceback as ``client.showErrorDetails`` says (in full by default, in
    development; a deployment can set it to "none")."""
    try:
        yield
    except store.StoreBusy:
        st.warning("The store is busy with an ingest or a job that is committing; this page will retry on the next interaction.")
    except IngestError as exc:
        st.error(f"That input cannot be ingested: {render.escape_inline(str(exc))}. Fix the file (or tick 'skip bad rows') and try again.")
    except UserError as exc:
        st.error(render.safe_markdown(str(exc)))  # names in it come from the data: no image, no HTML


_NONE = "(none)"
_TRUNC = {None: "any", True: "only truncated", False: "only complete"}
_OWN = queries.OWN_CORRECTNESS
_CONDITION_MODES = ("in a range", "has a value", "has no value")


@st.cache_data(ttl=600, show_spinner=False)
def _store_figures(stamp: tuple[float, float]) -> pl.DataFrame:
    del stamp  # only the cache key
    with store.labels_off():  # a new label must not recompute the store's figures (seconds at 2M CoTs)
        return figures.catalogue()


def figure_catalogue(stamp: tuple) -> pl.DataFrame:
    """Every figure of the store with its range (core.figures.catalogue), and the human labels'
    (fresh after every label), for the widgets."""
    human = human_figures()
    store_part = _store_figures(tuple(stamp[:2]))
    return pl.concat([store_part, human]) if human.height else store_part


# cache_resource: one shared dict, not a copy unpickled on every rerun of every page (the
# sidebar reads it on each); nothing mutates it
@st.cache_resource(ttl=600, show_spinner=False, max_entries=4)
def _catalogue_rows(db: str, stamp: tuple[float, float], version: int) -> dict[Figure, dict]:
    return {figures.figure_of(r): r for r in figure_catalogue(stamp).iter_rows(named=True)}


@st.cache_data(ttl=600, show_spinner=False, max_entries=16)
def _correctness_text(stamp: tuple[float, float], source: str, datasets: tuple[str, ...]) -> str:
    """Which source each dataset's CoTs take their verdict from, as the sidebar's caption."""
    del stamp
    used = queries.correctness_in_use(source, datasets=datasets)
    lines = []  # names come from the data: escaped, so no name renders as Markdown (an image, a link)
    for (dataset,), rows in used.group_by("dataset", maintain_order=True):
        dataset = render.escape_inline(dataset)
        n = rows["n_cots"][0]
        judged = [{**r, "source": render.escape_inline(r["source"])}
                  for r in rows.filter(pl.col("source").is_not_null()).to_dicts()]
        if not judged:
            lines.append(f"{dataset}: no verdict ({n:,} CoTs)")
        elif judged[0]["cots"] >= n:  # the first source read judged every CoT
            lines.append(f"{dataset}: {judged[0]['source']} ({n:,})")
        else:
            rest = ", ".join(f"{r['source']} ({r['cots']:,})" for r in judged[1:])
            lines.append(f"{dataset}: {judged[0]['source']} ({judged[0]['cots']:,} of {n:,})" + (f", else {rest}" if rest else ""))
    more = f" … and {len(lines) - 6} more datasets" if len(lines) > 6 else ""
    return "Verdicts from · " + " · ".join(lines[:6]) + more


@st.cache_data(ttl=600, show_spinner="Finding which condition emptied the view…", max_entries=16)
def _empty_diagnosis(stamp: tuple[float, float], f: CotFilter) -> pl.DataFrame:
    del stamp
    return queries.empty_diagnosis(f)


def explain_empty(f: CotFilter, what: str = "No CoT matches the filter") -> None:
    """Say that the filter matches nothing and which of its constraints emptied it: the CoTs it
    would match without each one (the others kept)."""
    diagnosis = _empty_diagnosis(store_stamp(), f)
    if diagnosis.is_empty():
        st.info(f"{what}: the store has no CoT yet.")
        return
    lines = [f"- without **{render.escape_inline(r['condition'])}**: {r['cots_without_it']:,} CoTs"
             for r in diagnosis.iter_rows(named=True)]
    if diagnosis["cots_without_it"].max() == 0:
        lines.append("\nNo single condition empties it on its own: several together do; widen more than one.")
    st.info(f"{what}. What each of its conditions lets back in when dropped alone:\n\n" + "\n".join(lines))


def range_state(key: str, value: tuple) -> dict:
    """Session values of a range widget: the slider and its typed bounds."""
    return {key: tuple(value), f"{key}_lo": value[0], f"{key}_hi": value[1]}


def _sync_from_slider(key: str) -> None:
    lo, hi = st.session_state[key]
    st.session_state[f"{key}_lo"], st.session_state[f"{key}_hi"] = lo, hi


def _sync_from_typed(key: str, changed: str) -> None:
    """A typed bound moves the slider; a lower bound typed above the upper one moves both."""
    lo, hi = st.session_state[f"{key}_lo"], st.session_state[f"{key}_hi"]
    if lo is None or hi is None:  # an emptied box keeps the slider's bound
        lo = st.session_state[key][0] if lo is None else lo
        hi = st.session_state[key][1] if hi is None else hi
    if lo > hi:
        lo, hi = (lo, lo) if changed == "lo" else (hi, hi)
    st.session_state.update(range_state(key, (lo, hi)))


def range_input(where, label: str, key: str, lo, hi, *, disabled: bool = False, help: str | None = None):
    """A range slider with typed bounds under it (a slider over 0-44,782 tokens moves ~200 a
    pixel): either one moves the other. Integer when ``lo`` and ``hi`` are ints. The caller puts
    the initial value in session state (``range_state``)."""
    integer = isinstance(lo, int) and isinstance(hi, int)
    step = 1 if integer else max((hi - lo) / 100, 1e-9)
    a, b = st.session_state.get(key, (lo, hi))
    clamped = (min(max(a, lo), hi), min(max(b, lo), hi))
    if clamped != (a, b) or st.session_state.get(f"{key}_lo") is None or st.session_state.get(f"{key}_hi") is None:
        st.session_state.update(range_state(key, clamped))  # the store changed (fewer tokens), or a box emptied
    value = where.slider(label, lo, hi, key=key, disabled=disabled, help=help, step=step,
                         on_change=_sync_from_slider, args=(key,))
    left, right = where.columns(2)
    number = {"min_value": lo, "max_value": hi, "step": step, "disabled": disabled,
              **({"format": "%d"} if integer else {"format": "%g"})}
    # labels hidden (the slider's label is above them) but kept for screen readers
    left.number_input(f"{label}: from", key=f"{key}_lo", on_change=_sync_from_typed, args=(key, "lo"),
                      label_visibility="collapsed", **number)
    right.number_input(f"{label}: to", key=f"{key}_hi", on_change=_sync_from_typed, args=(key, "hi"),
                       label_visibility="collapsed", **number)
    return value


def _figure_bounds(row: dict) -> tuple:
    """A catalogue row's range as slider bounds (ints for integer figures; never empty)."""
    lo, hi = row["min"], row["max"]
    if row["integer"]:
        lo, hi = int(lo), int(hi)
        return lo, max(hi, lo + 1)
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def _condition_state(prefix: str, ident: int, cond: Condition, rows: dict) -> dict:
    """Widget values that show ``cond`` (a condition from the URL or a recipe)."""
    key = f"{prefix}c{ident}"
    state = {f"{key}_mode": _CONDITION_MODES[2] if cond.missing else
             _CONDITION_MODES[1] if cond.lo is None and cond.hi is None else _CONDITION_MODES[0]}
    row = rows.get(cond.figure)
    if row is not None:
        lo, hi = _figure_bounds(row)
        cast = int if isinstance(lo, int) else float
        value = (lo if cond.lo is None else min(max(cast(cond.lo), lo), hi),
                 hi if cond.hi is None else min(max(cast(cond.hi), lo), hi))
        state.update(range_state(key, (min(value), max(value))))
    state[f"{key}_kept"] = cond.as_dict()  # what it was, for a figure the store lacks
    return state


def conditions_state(prefix: str, conditions: tuple[Condition, ...], rows: dict[Figure, dict]) -> dict:
    """Session values that show ``conditions`` in condition_widgets(prefix=...)."""
    state = {f"{prefix}conds": [{"id": i, **c.figure.as_dict()} for i, c in enumerate(conditions)],
             f"{prefix}cond_next": len(conditions)}
    for i, cond in enumerate(conditions):
        state.update(_condition_state(prefix, i, cond, rows))
    return state


def catalogue_rows(stamp) -> dict[Figure, dict]:
    """The figure catalogue as {Figure: its row (count, min, max, integer, binary, label)};
    shared, do not change it."""
    return _catalogue_rows(str(db_file()), tuple(stamp[:2]), labels_version())


def _add_condition(prefix: str, rows: dict[Figure, dict], labels: dict[str, Figure]) -> None:
    """on_change of the figure picker: a new condition on the chosen figure, its range at the
    figure's extent; the picker goes back to empty."""
    figure = labels.get(st.session_state.get(f"{prefix}add_figure"))
    if figure is None:
        return
    ident = st.session_state.get(f"{prefix}cond_next", 0)
    st.session_state[f"{prefix}cond_next"] = ident + 1
    st.session_state[f"{prefix}conds"] = [*st.session_state.get(f"{prefix}conds", []), {"id": ident, **figure.as_dict()}]
    st.session_state.update(_condition_state(prefix, ident, figures.Condition(figure), rows))
    st.session_state[f"{prefix}c{ident}_mode"] = _CONDITION_MODES[0]
    st.session_state[f"{prefix}add_figure"] = None


def _remove_condition(prefix: str, ident: int) -> None:
    st.session_state[f"{prefix}conds"] = [c for c in st.session_state.get(f"{prefix}conds", []) if c["id"] != ident]


def condition_widgets(where, rows: dict[Figure, dict], prefix: str, *, unit: str = "CoTs") -> tuple[Condition, ...]:
    """One block per condition (its figure, range or presence, typed bounds, remove), then the
    "add a condition on a figure" picker (picking a figure adds it); returns the conditions.
    State lives under keys that start with ``prefix`` (the sidebar's "f_", the Select page's
    "sel_"); the remove buttons under ``prefix`` without its underscore plus "b_" (the sidebar
    re-assigns every "f_" key each run, which a button's key must not be)."""
    buttons = prefix.rstrip("_") + "b_"
    out = []
    for entry in st.session_state.get(f"{prefix}conds", []):
        ident = entry["id"]
        key = f"{prefix}c{ident}"
        figure = figures.Figure.from_dict(entry)
        head, remove = where.columns([5, 1], vertical_alignment="center")
        label = render.escape_inline(figure.label())  # a source's name comes from the data: never markup
        head.markdown(f"**{label}**")
        remove.button(":material/close:", key=f"{buttons}remove_{ident}", on_click=_remove_condition, args=(prefix, ident),
                      type="tertiary", help="Remove this condition")
        row = rows.get(figure)
        if row is None:  # the store has no value of it (a stage not run here yet): kept as it was
            kept = Condition.from_dict(st.session_state[f"{key}_kept"])
            where.warning(f"This store has no {label}: '{render.escape_inline(kept.describe())}' keeps "
                          f"{'every CoT' if kept.missing else 'no CoT'}.")
            out.append(kept)
            continue
        mode = where.radio(f"{label}: keep {unit} whose value is", _CONDITION_MODES, key=f"{key}_mode",
                           horizontal=True, label_visibility="collapsed")
        if mode == _CONDITION_MODES[2]:
            out.append(Condition(figure, missing=True))
            continue
        if mode == _CONDITION_MODES[1]:
            out.append(Condition(figure))
            continue
        lo, hi = _figure_bounds(row)
        a, b = range_input(where, f"{label} range", key, lo, hi,
                           help=f"{row['count']:,} {'problems' if figure.level == 'problem' else 'CoTs'} have a value, "
                                f"{figures.fmt(row['min'])}–{figures.fmt(row['max'])}; a bound at the end of the range "
                                "is open (a value beyond it later still passes).")
        out.append(Condition(figure, lo=None if a <= lo else a, hi=None if b >= hi else b))
    labels = {r["label"]: f for f, r in rows.items()}
    if labels:
        where.selectbox("Add a condition on a figure", list(labels), index=None, key=f"{prefix}add_figure",
                        placeholder="a judge's score, a stage's figure, …", on_change=_add_condition,
                        args=(prefix, rows, labels),
                        help="Any number the store has per CoT or per problem: dataset labels, judge runs, "
                             "verifiers, and the figures stages compute. Picking one adds a condition on it.")
    return tuple(out)


def _initial_state(start: CotFilter, cat: dict, rows: dict[Figure, dict]) -> dict:
    """Widget values for a filter (the URL's, on a session's first run)."""
    src = {metric: (cat[metric] or [None])[0] for metric in ("rv", "cd")}

    def source(current, metric):
        return current if current in cat[metric] else (src[metric] or _NONE)

    correct = start.correct_source if start.correct_source in (_OWN, *cat["correct"]) else (
        _OWN if cat["correct"] else _NONE)
    from core import contamination
    from ui import problems

    control, others = contamination.split_conditions(start.conditions)  # the contamination control's own
    state = {
        "f_datasets": [d for d in start.datasets if d in cat["datasets"]],
        "f_models": [m for m in start.models if m in cat["models"]],
        "f_benchmarks": [b for b in start.benchmarks if b in cat["benchmarks"]],
        "f_rv_source": source(start.rv_source, "rv"),
        "f_cd_source": source(start.cd_source, "cd"),
        "f_correct_source": correct,
        "f_correct": start.correct,
        "f_truncated": _TRUNC[start.truncated],
        "f_text": start.text,
        **problems.contamination_state("f_", control),
        **conditions_state("f_", others, rows),
    }
    state.update(range_state("f_rv", tuple(int(v) for v in (start.rv_range or (0, 9)))))
    state.update(range_state("f_cd", tuple(int(v) for v in (start.cd_range or (0, 9)))))
    state.update(range_state("f_tokens", tuple(start.tokens_range) if start.tokens_range else (0, max(cat["max_tokens"], 1))))
    state.update(range_state("f_reflections", tuple(start.reflections_range) if start.reflections_range
                              else (0, max(cat["max_reflections"], 1))))
    return state


def _correctness_caption(where, source: str, datasets: tuple[str, ...]) -> None:
    """Which source each dataset's CoTs take their verdict from (issue 11: a dataset scored by
    another source must not silently show 0 incorrect)."""
    where.caption(_correctness_text(store_stamp(), source, datasets))


def keep_filter_state() -> None:
    """Keep the sidebar filter's widget state through a page that does not draw the filter
    (Jobs, SQL, Compare): Streamlit drops the state of widgets a run does not draw, and the
    next filter page would find the filter half gone. Re-assigning a key keeps it (Streamlit's
    documented way); app.py calls this before every page."""
    for key in list(st.session_state.keys()):
        if isinstance(key, str) and key.startswith("f_"):
            st.session_state[key] = st.session_state[key]


def sidebar_filter() -> CotFilter:
    """The filter widgets in the sidebar; returns the filter and mirrors it in the URL.

    Widget values live in session state under fixed keys, set from the URL on a session's
    first run; re-assigning them each run keeps them when the user switches pages. Every
    numeric filter is a slider with typed bounds; "Add a condition on a figure" adds a condition
    on any figure of the store (core.figures.catalogue), kept in the URL as ``conditions=``.
    """
    st.session_state["_labels_in_view"] = False  # a page that shows labels says so again (labels_in_view)
    stamp = store_stamp()
    cat = catalogue(stamp)
    rows = catalogue_rows(stamp)
    if "filter_initialised" not in st.session_state:
        st.session_state.filter_initialised = True
        start = CotFilter.from_params(st.query_params.to_dict())
        st.session_state.filter_problem_ids = start.problem_ids
        st.session_state.filter_problem_set = start.problem_set
        for key, value in _initial_state(start, cat, rows).items():
            st.session_state[key] = value
    elif "f_correct_source" not in st.session_state:
        # a page without the filter dropped its widget state (keep_filter_state keeps it in the
        # app; a page run on its own, as AppTest's switch_page does, skips app.py): start again
        # from the URL rather than fail on a missing key
        start = CotFilter.from_params(st.query_params.to_dict())
        for key, value in _initial_state(start, cat, rows).items():
            if key not in st.session_state:
                st.session_state[key] = value
    for key in list(st.session_state.keys()):
        if isinstance(key, str) and key.startswith("f_"):
            st.session_state[key] = st.session_state[key]
    sb = st.sidebar
    sb.subheader("Filter")
    ds = sb.multiselect("Datasets", cat["datasets"], key="f_datasets")
    models = sb.multiselect("Models / teachers", cat["models"], key="f_models")
    benchmarks = sb.multiselect("Benchmarks", cat["benchmarks"], key="f_benchmarks")
    correct_choices = [_OWN, *cat["correct"], _NONE] if cat["correct"] else [_NONE]
    if st.session_state.f_correct_source not in correct_choices:
        st.session_state.f_correct_source = correct_choices[0]
    correct_source = sb.selectbox("Correctness source", correct_choices, key="f_correct_source",
                                  format_func=lambda s: queries.OWN_CORRECTNESS_LABEL if s == _OWN else s)
    correct = sb.radio("Correctness", ["any", "correct", "incorrect", "unknown"], horizontal=True, key="f_correct",
                       disabled=correct_source == _NONE)
    if correct_source != _NONE:
        _correctness_caption(sb, correct_source, tuple(ds))
    max_tokens = max(cat["max_tokens"], 1)
    unit = token_unit(cat["tokenizers"])
    tokens = range_input(sb, unit[0].upper() + unit[1:], "f_tokens", 0, max_tokens)
    if len(cat["tokenizers"]) > 1:
        sb.caption("The store's token counts come from several tokenizers: a token range mixes their units.")
    max_refl = max(cat["max_reflections"], 1)
    refl = range_input(sb, "Reflection markers", "f_reflections", 0, max_refl)
    rv_source = cd_source = _NONE
    rv = cd = (0, 9)
    if cat["rv"] or cat["cd"]:  # a store without RV/CD scores shows no RV/CD controls
        with sb.expander("RV / CD"):
            rv_source = st.selectbox("RV source", [_NONE, *cat["rv"]], key="f_rv_source")
            rv = range_input(st, "Reasoning Verbosity", "f_rv", 0, 9, disabled=rv_source == _NONE)
            cd_source = st.selectbox("CD source", [_NONE, *cat["cd"]], key="f_cd_source")
            cd = range_input(st, "Cognitive Difficulty", "f_cd", 0, 9, disabled=cd_source == _NONE)
    trunc_choice = sb.selectbox("Truncated", list(_TRUNC.values()), key="f_truncated")
    text = sb.text_input("Search question and CoT text", key="f_text")
    from ui import problems

    contaminated = problems.contamination_widgets(sb, "f_")
    n_conditions = len(st.session_state.get("f_conds", []))
    with sb.expander(f"Filters on figures ({n_conditions})" if n_conditions else "Filters on figures",
                     expanded=bool(n_conditions)):
        conditions = (*contaminated, *condition_widgets(st, rows, "f_"))
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
        conditions=conditions, problem_set=st.session_state.get("filter_problem_set", ""),
    )
    if current.problem_set:
        _problem_set_line(sb, current.problem_set)
    if current.problem_ids and sb.button("Clear the problem selection", key="fb_clear_problems"):
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
    if labels.uses_labels(current):  # its cached results must refresh after each new label
        labels_in_view()
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
        left.caption(f"Problems from the map: {render.escape_inline(str(exc))}")
    # not an "f_" key: sidebar_filter re-assigns those each run, which a button refuses
    right.button("clear", key="filter_clear_problem_set", on_click=_clear_problem_set,
                 help="Drop the map selection from the filter")


def add_filter_condition(cond: Condition) -> None:
    """Add ``cond`` to the sidebar's filters on figures, as its picker does (a widget callback:
    the sidebar's widgets must not exist yet in this run)."""
    rows = catalogue_rows(store_stamp())
    ident = st.session_state.get("f_cond_next", 0)
    st.session_state["f_cond_next"] = ident + 1
    st.session_state["f_conds"] = [*st.session_state.get("f_conds", []), {"id": ident, **cond.figure.as_dict()}]
    st.session_state.update(_condition_state("f_", ident, cond, rows))


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
    ranges = {"rv_range": "f_rv", "cd_range": "f_cd", "tokens_range": "f_tokens"}
    mapping = {"models": "f_models", "datasets": "f_datasets", "correct": "f_correct"}
    for name, value in changes.items():
        if name == "problem_ids":
            st.session_state.filter_problem_ids = tuple(value)
        elif name == "problem_set":
            st.session_state.filter_problem_set = str(value)
        elif name in ranges:
            st.session_state.update(range_state(ranges[name], tuple(value)))
        elif name in mapping:
            st.session_state[mapping[name]] = list(value) if name in ("models", "datasets") else value
    st.rerun()
