"""Labelling in the app: a panel for the CoT being read (the Reader's focused CoT, a row of
Explore), the labelling queue bar, and who labels. Widgets and calls into core.labels only.

A label is written when a button is pressed (no save step) and never waits for the store
(core/label_store.py). Keyboard, on the focused CoT's panel: 0-9 set the current scale (and
move on to the next CoT when "next CoT after a label" is on), M switches the scale (RV, CD,
logic, correct), X / I / V flag exclude / include / needs review (again: remove the flag),
S skips to the next CoT. (J, K, N, P are the Reader's own navigation keys; C and R are
Streamlit's.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import polars as pl
import streamlit as st

from core import access, labels, render, step_stats
from core.errors import UserError
from core.steps import ROLES
from ui import common

SCALE_KEYS = tuple(labels.SCALES)  # rv, cd, logic, correct
FLAG_KEYS = {"exclude": "X", "include": "I", "review": "V"}
SHORTCUTS_HELP = ("Keys: 0-9 label the scale · M next scale · X / I / V flag exclude / include / needs review · "
                  "S skip to the next CoT")
Move = Callable[[], None]


# ---------------------------------------------------------------------------- who labels


def annotator() -> tuple[str | None, bool]:
    """(who labels in this session, whether the name was typed here rather than known)."""
    user = access.current_user()
    if user:
        return user, False
    typed = (st.session_state.get("annotator_name") or "").strip()
    return (typed or None), True


def who_line(where=st) -> str | None:
    """Who labels, or a name box where none is known and the server takes typed names; returns
    the annotator, or None (with the reason shown) when this session may not label."""
    user, typed = annotator()
    if typed and access.may_type_annotator():
        where.text_input("Label as", key="annotator_name", placeholder="your name (every label records it)",
                         help="No signed-in user and no THOUGHTSCOPE_USER: give the name your labels go under.")
        user, typed = annotator()
    refusal = access.label_refusal(user, typed=typed)
    if refusal:
        where.info(refusal)
        return None
    return user


# ---------------------------------------------------------------------------- reading


@st.cache_data(ttl=600, show_spinner=False, max_entries=64)
def _labels_of(db: str, version: int, cot_ids: tuple[int, ...]) -> pl.DataFrame:
    del db, version  # only the cache key
    return labels.labels_of(list(cot_ids))


def labels_of(cot_ids: list[int]) -> pl.DataFrame:
    """Every annotator's current labels of these CoTs (fresh after each new label)."""
    return _labels_of(str(common.db_file()), common.labels_version(), tuple(int(c) for c in cot_ids))


@st.cache_data(ttl=600, show_spinner=False, max_entries=4)
def _tags(db: str, version: int) -> list[str]:
    del db, version
    return labels.tags()


def _describe(mine: dict[str, Any]) -> list[str]:
    parts = [f"{k.upper() if k in ('rv', 'cd') else k} {mine[k]}" for k in SCALE_KEYS if k in mine]
    if mine.get("flag"):
        parts.append(f"flag {labels.FLAGS[mine['flag']]}")
    parts += [f"tag {t}" for t in mine.get("tags", [])]
    if mine.get("note"):
        parts.append("note")
    if mine.get("steps"):
        parts.append(f"{len(mine['steps'])} step roles")
    return parts


def labels_line(frame: pl.DataFrame, cot_id: int) -> str:
    """Everyone's labels of a CoT in one line of badges (escaped: names and tags are typed by people)."""
    mine = frame.filter(pl.col("cot_id") == cot_id)
    if mine.height == 0:
        return ""
    out = []
    for who in mine["annotator"].unique(maintain_order=True).to_list():
        parts = _describe(labels.mine(frame, cot_id, who))
        out.append(f":violet-badge[{render.escape_inline(who)}: {render.escape_inline(' · '.join(parts))}]")
    return " ".join(out)


# ---------------------------------------------------------------------------- writing


def _error_key(prefix: str) -> str:
    return f"{prefix}_error"


def _record(prefix: str, cot_id: int, changes: dict[str, Any], who: str, then: Move | None = None,
            context: dict | None = None) -> None:
    """A button's callback: record the labels, then move on (``then``) if asked."""
    st.session_state.pop(_error_key(prefix), None)
    try:
        labels.record(cot_id, changes, annotator=who, context=context)
    except UserError as exc:
        st.session_state[_error_key(prefix)] = str(exc)
        return
    if then is not None:
        then()


def _next_scale(prefix: str) -> None:
    current = st.session_state.get(f"{prefix}_scale") or SCALE_KEYS[0]
    st.session_state[f"{prefix}_scale"] = SCALE_KEYS[(SCALE_KEYS.index(current) + 1) % len(SCALE_KEYS)]


def _tags_changed(prefix: str, cot_id: int, who: str, before: list[str]) -> None:
    chosen = st.session_state.get(f"{prefix}_tags") or []
    st.session_state.pop(_error_key(prefix), None)
    try:
        now = {labels.normalize_tag(t) for t in chosen}
        changes = {labels.tag_field(t): True for t in now - set(before)}
        changes.update({labels.tag_field(t): False for t in set(before) - now})
        if changes:
            labels.record(cot_id, changes, annotator=who)
    except UserError as exc:
        st.session_state[_error_key(prefix)] = str(exc)


def _steps_changed(prefix: str, cot_id: int, who: str, rows: list[dict], source: str) -> None:
    edits = (st.session_state.get(f"{prefix}_steps_editor") or {}).get("edited_rows", {})
    changes, context = {}, {"segmentation": source}
    for index, edit in edits.items():
        if "your role" in edit:
            row = rows[int(index)]
            changes[labels.step_field(row["char_start"], row["char_end"])] = edit["your role"] or None
    if changes:
        _record(prefix, cot_id, changes, who, context=context)


# ---------------------------------------------------------------------------- the panel


def panel(cot: dict, frame: pl.DataFrame, who: str, *, prefix: str, then: Move | None,
          shortcuts: bool = True) -> None:
    """The labelling panel of one CoT (``cot``: cot_id, model, sample_idx): its scales, flag,
    tags, note and step roles as ``who``, the others' labels under it. ``then`` moves to the
    next CoT (after a label when "next CoT after a label" is on, and on Skip)."""
    cot_id = int(cot["cot_id"])
    mine = labels.mine(frame, cot_id, who)
    advance_key = "label_advance"
    st.session_state.setdefault(advance_key, True)
    after = then if st.session_state.get(advance_key) else None
    head, toggle = st.columns([4, 2], vertical_alignment="center")
    head.markdown(f"**Your labels** as {render.escape_inline(who)}: "
                  + (render.escape_inline(" · ".join(_describe(mine))) if _describe(mine) else "none yet"))
    toggle.toggle("Next CoT after a label", key=advance_key, disabled=then is None)
    if st.session_state.get(_error_key(prefix)):
        st.error(st.session_state[_error_key(prefix)])

    scale_key = f"{prefix}_scale"
    if st.session_state.get(scale_key) not in SCALE_KEYS:
        st.session_state[scale_key] = SCALE_KEYS[0]
    pick, switch = st.columns([5, 1], vertical_alignment="bottom")
    scale = pick.segmented_control("Scale", SCALE_KEYS, key=scale_key, format_func=lambda k: labels.SCALE_NAMES[k],
                                   required=True)
    switch.button("Next scale", key=f"{prefix}_next_scale", on_click=_next_scale, args=(prefix,),
                  shortcut="M" if shortcuts else None, help="Switch the scale the digit keys label")
    values = labels.SCALES[scale]
    cells = st.columns(len(values) + 1)
    for cell, value in zip(cells, values):
        chosen = mine.get(scale) == value
        cell.button(str(value), key=f"{prefix}_v{value}", type="primary" if chosen else "secondary",
                    on_click=_record, args=(prefix, cot_id, {scale: value}, who, after),
                    shortcut=str(value) if shortcuts else None, width="stretch",
                    help=f"{labels.SCALE_NAMES[scale]} = {value}" + (" (your label)" if chosen else ""))
    cells[-1].button("clear", key=f"{prefix}_clear", on_click=_record, args=(prefix, cot_id, {scale: None}, who),
                     disabled=scale not in mine, type="tertiary", help=f"Remove your {labels.SCALE_NAMES[scale]} label")

    flags = st.columns(len(labels.FLAGS) + 1)
    for cell, (flag, name) in zip(flags, labels.FLAGS.items()):
        on = mine.get("flag") == flag
        cell.button(f"{'✓ ' if on else ''}Flag: {name}", key=f"{prefix}_flag_{flag}", type="primary" if on else "secondary",
                    on_click=_record, args=(prefix, cot_id, {"flag": None if on else flag}, who, None if on else after),
                    shortcut=FLAG_KEYS[flag] if shortcuts else None, width="stretch",
                    help="Click again to remove the flag" if on else f"Flag this CoT '{name}'")
    flags[-1].button("Skip", key=f"{prefix}_skip", on_click=then, disabled=then is None, width="stretch",
                     shortcut="S" if shortcuts else None, help="Go to the next CoT without labelling this one")

    tags_key = f"{prefix}_tags"
    known = _tags(str(common.db_file()), common.labels_version())
    st.session_state[tags_key] = list(mine["tags"])
    st.multiselect("Tags", [*mine["tags"], *(t for t in known if t not in mine["tags"])], key=tags_key, accept_new_options=True, on_change=_tags_changed,
                   args=(prefix, cot_id, who, list(mine["tags"])), placeholder="add a tag (type a new one, or pick)",
                   help="Free text (stored lower case); the list offers every tag in use, most used first.")
    with st.form(f"{prefix}_note_form", border=False, enter_to_submit=False):
        note = st.text_area("Note", value=mine.get("note") or "", key=f"{prefix}_note_{cot_id}", height=68)
        if st.form_submit_button("Save the note"):
            _record(prefix, cot_id, {"note": note or None}, who)
            st.rerun()
    _step_roles(cot_id, mine, who, prefix)
    others = labels_line(frame.filter(pl.col("annotator") != who), cot_id)
    if others:
        st.markdown("Others: " + others)


def _step_roles(cot_id: int, mine: dict, who: str, prefix: str) -> None:
    """Step roles: the steps of a segmentation of this CoT, each with your role (editable)."""
    text, steps, _ = step_stats.cot_steps(cot_id)
    segmentations = [s for s in steps["source"].unique(maintain_order=True).to_list() if not labels.is_human_source(s)]
    if not segmentations:
        return
    box = st.expander(f"Step roles ({len(mine['steps'])} labelled by you)", key=f"{prefix}_steps_box", on_change="rerun")
    if not box.open:
        return
    with box:
        source = st.selectbox("Steps from", segmentations, key=f"{prefix}_steps_source")
        rows = steps.filter(pl.col("source") == source).sort("step_idx").to_dicts()
        table = pl.DataFrame({
            "step": [r["step_idx"] for r in rows],
            "text": [text[r["char_start"]:r["char_end"]].strip()[:160] for r in rows],
            "role": [r["role"] for r in rows],
            "your role": [mine["steps"].get((r["char_start"], r["char_end"])) for r in rows],
        }, schema={"step": pl.Int64, "text": pl.String, "role": pl.String, "your role": pl.String})
        st.data_editor(
            table, key=f"{prefix}_steps_editor", hide_index=True, disabled=["step", "text", "role"],
            column_config={"your role": st.column_config.SelectboxColumn("your role", options=list(ROLES)),
                           "text": st.column_config.TextColumn("text", width="large"),
                           "role": st.column_config.TextColumn(f"role ({source})")},
            on_change=_steps_changed, args=(prefix, cot_id, who, rows, source),
        )
        st.caption("Your roles are a step source of their own (your name): the Agreement page compares them "
                   "with the rules' or a dataset's, step by step.")


# ---------------------------------------------------------------------------- the Reader


QUEUE_KEY = "label_queue_id"


@st.cache_data(ttl=600, show_spinner=False, max_entries=16)
def _queue(db: str, version: int, stamp: tuple, queue_id: int, who: str | None) -> dict:
    del db, version, stamp
    return labels.queue(queue_id, annotator=who)


def queue_state(who: str | None) -> dict | None:
    """The queue this session works through (with its items and progress), or None."""
    queue_id = st.session_state.get(QUEUE_KEY)
    if queue_id is None:
        return None
    try:
        return _queue(str(common.db_file()), common.labels_version(), common.store_stamp()[:2], int(queue_id), who)
    except UserError:
        st.session_state.pop(QUEUE_KEY, None)
        return None


class Labeller:
    """Labelling on the Reader: the bar above the CoTs (who, the queue and its progress, the
    keys) and, inside each CoT's box, its labels and the panel for the focused one.

    ``go_to_cot(problem_id, cot_id)`` is the Reader's own move (it owns the page's state);
    ``next_problem_id`` is the next problem within the filter."""

    def __init__(self, problem_id: int, cots: pl.DataFrame, *, focus: int | None,
                 go_to_cot: Callable[[int | None, int | None], None], next_problem_id: int | None):
        self.problem_id = problem_id
        self.ids = [int(c) for c in cots["cot_id"].to_list()]
        self.focus = focus if focus in self.ids else (self.ids[0] if self.ids else None)
        self.go_to_cot = go_to_cot
        self.next_problem_id = next_problem_id
        self.frame = labels_of(self.ids)
        self.who: str | None = None
        self.queue: dict | None = None

    def _next(self) -> tuple[int | None, int | None] | None:
        """Where "next CoT" goes: the queue's next open item, else the next CoT of this problem,
        else the first of the next problem in the filter."""
        if self.queue is not None:
            item = labels.next_in_queue(self.queue["items"].with_columns(
                done=pl.col("done") | (pl.col("cot_id") == self.focus)), after_cot=self.focus)
            return None if item is None else (item["problem_id"], item["cot_id"])
        position = self.ids.index(self.focus) if self.focus in self.ids else -1
        if position + 1 < len(self.ids):
            return self.problem_id, self.ids[position + 1]
        return None if self.next_problem_id is None else (self.next_problem_id, None)

    def _move(self) -> None:
        target = self._next()
        if target is not None:
            self.go_to_cot(*target)

    def bar(self) -> None:
        """Above the CoTs: who labels, the queue, its progress, the keys."""
        with st.container(border=True, key="label_bar"):
            left, right = st.columns([2, 3])
            with left:
                self.who = who_line()
            self.queue = queue_state(self.who)
            with right:
                choices = labels.queues()
                options = [None, *choices["queue_id"].to_list()]
                names = dict(zip(choices["queue_id"].to_list(), choices["name"].to_list()))
                if st.session_state.get(QUEUE_KEY) not in options:
                    st.session_state[QUEUE_KEY] = None
                st.selectbox("Labelling queue", options, key=QUEUE_KEY,
                             format_func=lambda q: "none: the filter's CoTs in order" if q is None else names[q],
                             help="Make a queue on the Labels page: a sample of the filter's CoTs to label.")
                if self.queue is not None:
                    done, total = self.queue["done"], self.queue["total"]
                    st.progress(done / total if total else 0.0, text=f"{done:,} of {total:,} labelled by you")
                    nxt = labels.next_in_queue(self.queue["items"])
                    if nxt is None:
                        st.success("You have labelled every CoT of this queue that this store holds.")
                    elif nxt["cot_id"] not in self.ids or nxt["cot_id"] != self.focus:
                        st.button("Go to the queue's next CoT", key="label_queue_go", on_click=self.go_to_cot,
                                  args=(nxt["problem_id"], nxt["cot_id"]))
            if self.who:
                st.caption(SHORTCUTS_HELP)

    def show(self, cot: dict) -> None:
        """Inside a CoT's box: its labels, and the panel when it is the focused CoT."""
        cot_id = int(cot["cot_id"])
        if cot_id != self.focus or not self.who:
            line = labels_line(self.frame, cot_id)
            left, right = st.columns([5, 1], vertical_alignment="center")
            if line:
                left.markdown(line)
            if self.who:
                right.button("Label this CoT", key=f"label_focus_{cot_id}", on_click=self.go_to_cot,
                             args=(self.problem_id, cot_id), width="stretch")
            return
        with st.container(border=True, key="label_panel"):
            panel(cot, self.frame, self.who, prefix="label", then=self._move if self._next() else None)


# ---------------------------------------------------------------------------- Explore


def explore_panel(rows: pl.DataFrame) -> None:
    """Under Explore's table: label the CoTs of the page one after another."""
    if rows.height == 0:
        return
    box = st.expander("Label the CoTs of this page", key="explore_label_box", on_change="rerun")
    if not box.open:
        return
    with box:
        who = who_line()
        if not who:
            return
        ids = [int(c) for c in rows["cot_id"].to_list()]
        info = {int(r["cot_id"]): r for r in rows.iter_rows(named=True)}
        key = "explore_label_cot"
        if st.session_state.get(key) not in ids:
            st.session_state[key] = ids[0]

        def later() -> None:
            current = st.session_state.get(key)
            if current in ids and ids.index(current) + 1 < len(ids):
                st.session_state[key] = ids[ids.index(current) + 1]

        cot_id = st.selectbox(
            "CoT", ids, key=key,
            format_func=lambda c: f"CoT {c} · {info[c].get('model') or 'unknown model'} · "
                                  f"{(info[c].get('question') or '')[:70]}")
        frame = labels_of(ids)
        st.caption(SHORTCUTS_HELP + " · the next CoT is the next row of this page")
        panel(info[cot_id], frame, who, prefix="explore_label", then=later if ids.index(cot_id) + 1 < len(ids) else None)
