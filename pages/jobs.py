"""Jobs: long work (ingest, token counts, verification, ...) running in worker processes.

The state lives in data/jobs.sqlite, so this page shows the same jobs after a browser reload
or an app restart; a job whose worker died reads 'interrupted' and can be resumed.
"""

from __future__ import annotations

import streamlit as st

from core import jobs
from core.tokens import DEFAULT_TOKENIZER
from ui import common

SHOWN_FINISHED = 5  # finished jobs shown as cards; the table below lists every job
STATE_ICONS = {
    "queued": ":material/schedule:", "running": ":material/play_circle:", "done": ":material/check_circle:",
    "failed": ":material/error:", "cancelled": ":material/cancel:", "interrupted": ":material/warning:",
}


def _start_forms() -> None:
    left, right = st.columns(2)
    with left.form("jobs_tokens_form"):
        st.markdown("**Count tokens**")
        tokenizer = st.text_input(
            "Tokenizer", value=DEFAULT_TOKENIZER, key="jobs_tokenizer",
            help="A Hugging Face hub id (needs the network the first time), a local folder or "
                 "tokenizer.json, or the offline default.",
        )
        recount = st.checkbox("Also recount CoTs counted with another tokenizer", key="jobs_recount")
        if st.form_submit_button("Start token count"):
            job_id = jobs.submit("tokens", {"tokenizer": tokenizer.strip() or DEFAULT_TOKENIZER, "recount": recount})
            st.session_state.jobs_started = f"Started job {job_id}: token count."
    with right.form("jobs_verify_form"):
        st.markdown("**Verify answers**")
        st.caption("Checks each CoT's final answer against its problem's reference answer with math-verify "
                   "(source 'math-verify'); CoTs already verified are skipped.")
        if st.form_submit_button("Start verification"):
            job_id = jobs.submit("verify", {})
            st.session_state.jobs_started = f"Started job {job_id}: verification."


def _job_card(job: dict) -> None:
    state = job["state"]
    with st.container(border=True):
        head, buttons = st.columns([5, 1])
        head.markdown(f"{STATE_ICONS.get(state, '')} **Job {job['id']} · {job['kind']}** — {state}")
        params = {k: v for k, v in job["params"].items() if v not in (None, "", {}, [])}
        if params:
            head.text(", ".join(f"{k}={v}" for k, v in params.items()))
        fraction = jobs.fraction_done(job)
        text = jobs.progress_text(job)
        if fraction is not None:
            st.progress(fraction, text=text)
        else:
            st.caption(text)
        if state == "interrupted":
            st.warning("Its worker process stopped without finishing (killed, or the machine restarted). "
                       "Resume it: work already committed is kept.")
        if job["error"]:
            st.error(job["error"])
        elif job["message"] and state in ("queued", "running"):
            st.caption(job["message"])
        if state in ("queued", "running", "interrupted"):
            if buttons.button("Cancel", key=f"jobs_cancel_{job['id']}", disabled=job["cancel_requested"] and state != "interrupted"):
                jobs.cancel(job["id"])
                st.rerun(scope="fragment")
        if state in jobs.RESUMABLE:
            if buttons.button("Resume", key=f"jobs_resume_{job['id']}"):
                jobs.resume(job["id"])
                st.rerun(scope="fragment")
        if job["cancel_requested"] and state in ("queued", "running"):
            st.caption("Cancelling: it stops at its next batch.")
        with st.expander("Log (last lines)"):
            st.code(job["log_tail"] or "(empty)", language=None)


@st.fragment(run_every="2s")
def _job_list() -> None:
    """Re-reads the job table every 2 s, so progress moves without a page rerun."""
    with common.guard():
        table = jobs.list_jobs(limit=None)
        if table.height == 0:
            st.info("No jobs yet. Start one above, or ingest a dataset on the Overview page.")
            return
        active = table.filter(table["state"].is_in(["queued", "running", "interrupted"]))["id"].to_list()
        recent = [i for i in table["id"].to_list() if i not in active][:SHOWN_FINISHED]
        st.subheader(f"Running and interrupted ({len(active)})" if active else "No job running")
        for job_id in active:
            _job_card(jobs.get(job_id))
        if recent:
            st.subheader("Recently finished")
            for job_id in recent:
                _job_card(jobs.get(job_id))
        st.subheader(f"All jobs ({table.height:,})")
        st.dataframe(
            table.drop("pid"), hide_index=True, key="jobs_table",
            column_config={
                "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0),
                "throughput": st.column_config.NumberColumn("per second", format="%.1f"),
                "eta_s": st.column_config.NumberColumn("ETA (s)", format="%.0f"),
            },
        )


st.title("Jobs")
st.caption("Long work runs in its own worker process, outside the app: closing the browser or "
           "restarting the app does not stop it. Progress is kept in data/jobs.sqlite; each job's "
           "full log is in data/jobs/<id>.log.")
with common.guard():
    with st.expander("Start a job", expanded=False):
        _start_forms()
    if "jobs_started" in st.session_state:
        st.success(st.session_state.pop("jobs_started"))
_job_list()
