"""A Jobs-page form generated from a job kind's options (core.job_kinds, core.options): one
widget per field, its label, help and default taken from the field, the values checked by
core when the job is submitted. A new job kind gets a working form with one call::

    with common.guard():
        options_form("tokens", fields=("tokenizer", "recount"), title="**Count tokens**", submit="Start token count")
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import streamlit as st

from core import job_kinds, jobs
from core.options import describe


def _widget(field: dict[str, Any], key: str):
    """One input for one option field; returns its value as a job param."""
    label, help_text, default = field["label"], field["help"] or None, field["default"]
    if field["choices"]:
        choices = list(field["choices"])
        return st.selectbox(label, choices, index=choices.index(default) if default in choices else 0, key=key, help=help_text)
    if field["type"] is bool:
        return st.checkbox(label, value=bool(default), key=key, help=help_text)
    if field["type"] in (int, float):
        step = 1 if field["type"] is int else 0.1
        value = st.number_input(label, value=default, step=step, key=key, help=help_text,
                                placeholder="default" if default is None else None)
        return None if value is None else field["type"](value)
    if field["type"] is tuple:
        text = st.text_input(label, value=",".join(map(str, default or ())), key=key, help=help_text)
        return [p.strip() for p in text.split(",") if p.strip()]
    text = st.text_input(label, value=default or "", key=key, help=help_text)
    return text.strip() or None


def options_form(kind: str, *, fields: Sequence[str] | None = None, title: str | None = None,
                 submit: str | None = None, caption: str | None = None) -> int | None:
    """A form for job ``kind`` over its option ``fields`` (default: every field with a plain
    type); on submit, the job is checked and queued (core.jobs.submit) and its id returned.
    Call it inside ``ui.common.guard()`` so a refused value shows as a sentence."""
    job_kind = job_kinds.get(kind)
    shown = [f for cls in job_kind.options for f in describe(cls)
             if f["cli"] and f["type"] in (str, int, float, bool, tuple) and (fields is None or f["field"] in fields)]
    with st.form(f"jobs_{kind}_form"):
        if title:
            st.markdown(title)
        if caption:
            st.caption(caption)
        values = {f["name"]: _widget(f, key=f"jobs_{kind}_{f['field']}") for f in shown}
        pressed = st.form_submit_button(submit or f"Start {kind}")
    if not pressed:
        return None
    params = {name: value for name, value in values.items() if value is not None}
    job_id = jobs.submit(kind, params)
    st.session_state.jobs_started = f"Started job {job_id}: {kind}."
    return job_id
