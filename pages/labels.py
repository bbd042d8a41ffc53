"""Labels: labelling queues drawn from the sidebar filter, filters on tags and flags, who
labelled what, and the labels as JSONL (what `python -m core labels export|import` reads and
writes). The labelling itself happens in the Reader (and under Explore's table); see
ui/annotate.py and core/labels.py.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import polars as pl
import streamlit as st

from core import access, labels
from core.figures import Figure
from ui import annotate, common, reader_view

SAMPLING_LABELS = {
    "random": "random (with a seed)",
    "stratified": "stratified by a figure (equal numbers per level)",
    "disagreement": "where two figures disagree",
}


def open_queue(queue_id: int, problem_id: int | None, cot_id: int | None) -> None:
    st.session_state[annotate.QUEUE_KEY] = int(queue_id)
    if problem_id is not None:
        reader_view.open_problem(int(problem_id), focus=None if cot_id is None else int(cot_id))
        st.switch_page("pages/reader.py", query_params={"problem": str(int(problem_id))})
    st.switch_page("pages/reader.py")


def delete_queue(queue_id: int) -> None:
    labels.delete_queue(queue_id)
    if st.session_state.get(annotate.QUEUE_KEY) == queue_id:
        st.session_state[annotate.QUEUE_KEY] = None


def figure_picker(where, label: str, key: str, rows: dict) -> Figure | None:
    choices = {r["label"]: f for f, r in rows.items()}
    picked = where.selectbox(label, list(choices), index=None, key=key, placeholder="a judge's rv, a label, …")
    return choices.get(picked)


st.title("Labels")
with common.guard():
    f = common.sidebar_filter()
    common.labels_in_view()
    stamp = common.store_stamp()
    who = annotate.who_line()

    st.subheader("Labelling queues")
    st.caption("A queue is a fixed sample of the CoTs the sidebar filter matches, to label in the Reader one after "
               "another; each annotator's progress is their own. It is kept by CoT content, like the labels.")
    with st.expander("New queue from the current filter", expanded=labels.queues().height == 0):
        name_col, n_col, seed_col = st.columns([3, 1, 1])
        name = name_col.text_input("Name", key="lab_q_name", placeholder="e.g. rv check, judge vs labels")
        n = n_col.number_input("CoTs", 1, 100_000, 50, key="lab_q_n")
        seed = seed_col.number_input("Seed", 0, 2**31 - 1, 0, key="lab_q_seed")
        sampling = st.radio("Draw", list(SAMPLING_LABELS), format_func=SAMPLING_LABELS.get, key="lab_q_sampling",
                            horizontal=True)
        rows = common.catalogue_rows(stamp)
        by = a = b = None
        gap = 1.0
        if sampling == "stratified":
            by = figure_picker(st, "Strata: the levels of", "lab_q_by", rows)
        elif sampling == "disagreement":
            left, right, gap_col = st.columns([2, 2, 1])
            a = figure_picker(left, "Figure A", "lab_q_a", rows)
            b = figure_picker(right, "Figure B", "lab_q_b", rows)
            gap = gap_col.number_input("Least difference", 0.5, 100.0, 1.0, step=0.5, key="lab_q_gap",
                                       help="of the two values rounded to whole levels")
        if st.button("Draw the queue", key="lab_q_create", type="primary", disabled=who is None):
            opts = labels.QueueOptions(name=name, n=int(n), sampling=sampling, seed=int(seed), by=by, a=a, b=b,
                                       min_gap=float(gap))
            made = labels.create_queue(f, opts, created_by=who)
            st.session_state[annotate.QUEUE_KEY] = made["queue_id"]
            st.success(f"Queue '{made['name']}': {made['size']:,} CoTs drawn · " + json.dumps(made["spec"]["found"]))

    existing = labels.queues()
    if existing.height:
        ids = existing["queue_id"].to_list()
        names = dict(zip(ids, existing["name"].to_list()))
        if st.session_state.get("lab_q_pick") not in ids:
            st.session_state["lab_q_pick"] = st.session_state.get(annotate.QUEUE_KEY) if \
                st.session_state.get(annotate.QUEUE_KEY) in ids else ids[-1]
        picked = st.selectbox("Queue", ids, format_func=names.get, key="lab_q_pick")
        q = labels.queue(picked, annotator=who)
        spec = q["spec"]
        st.caption(f"{SAMPLING_LABELS[spec['options']['sampling']]} · {q['total']:,} CoTs ({q['in_store']:,} in this "
                   f"store) · made by {q['created_by'] or 'unknown'} at {q['created_at']} · found: "
                   + json.dumps(spec["found"]))
        if who:
            st.progress(q["done"] / q["total"] if q["total"] else 0.0, text=f"You: {q['done']:,} of {q['total']:,} labelled")
        if q["by_annotator"]:
            st.dataframe(pl.DataFrame({"annotator": list(q["by_annotator"]), "labelled": list(q["by_annotator"].values())}),
                         hide_index=True, key="lab_q_progress")
        nxt = labels.next_in_queue(q["items"])
        go, drop = st.columns([2, 1])
        if go.button("Label it in the Reader", key="lab_q_open", type="primary", disabled=who is None):
            open_queue(picked, nxt["problem_id"] if nxt else None, nxt["cot_id"] if nxt else None)
        drop.button("Delete this queue", key="lab_q_delete", on_click=delete_queue, args=(picked,),
                    help="The queue only; the labels given stay.")

    st.subheader("Filter on labels")
    st.caption("Labels are figures: every annotator is a score source 'human: <name>', and 'annotations' holds "
               "everyone's tags, flags and notes (value 1). These add a condition to the sidebar's filters on "
               "figures; the Select page offers the same figures as conditions.")
    in_use = labels.tags()
    c1, c2, c3 = st.columns(3)
    c1.button("Drop CoTs flagged exclude", key="lab_f_drop_exclude", on_click=common.add_filter_condition,
              args=(labels.drop_flag("exclude"),))
    c2.button("Only CoTs flagged needs review", key="lab_f_review", on_click=common.add_filter_condition,
              args=(labels.only_flag("review"),))
    tag = c3.selectbox("Only CoTs tagged", in_use, index=None, key="lab_f_tag", placeholder="a tag in use")
    c3.button("Add", key="lab_f_tag_add", disabled=tag is None, on_click=common.add_filter_condition,
              args=(labels.only_tag(tag),) if tag else (None,))

    st.subheader("Annotators")
    summary = labels.summary()
    if summary.height == 0:
        st.caption("No labels yet: open a CoT in the Reader and label it.")
    else:
        st.dataframe(summary, hide_index=True, key="lab_summary")

    st.subheader("Export and import")
    st.caption("One JSON object a line: event_id, at, annotator, cot_key, chars, field, value, cot_id, context "
               "(the README has the format). Importing a file adds the events this store's labels lack.")
    lines = labels.export_lines()
    st.download_button(f"Download every label event ({len(lines):,})", "".join(json.dumps(x) + "\n" for x in lines),
                       file_name="labels.jsonl", mime="application/x-ndjson", key="lab_export", disabled=not lines)
    upload = st.file_uploader("Import labels (JSONL)", type=["jsonl"], key="lab_import")
    refusal = access.job_refusal()
    if upload is not None:
        if refusal:
            st.info("Importing labels writes labels under other people's names: " + refusal)
        elif st.button("Import", key="lab_import_go"):
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "labels.jsonl"
                path.write_bytes(upload.getvalue())
                result = labels.import_jsonl(path)
            st.success(f"{result['added']:,} events added, {result['already_present']:,} already here.")
