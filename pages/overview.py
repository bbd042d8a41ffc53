"""Overview: what the store holds (datasets, models / teachers with accuracy by every correctness
source, score sources), a headline length-by-correctness chart, and the ingest form."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import polars as pl
import streamlit as st

from core import access, charts, jobs, queries, render, store, summary
from core.formats import FORMATS
from core.records import IngestError
from ui import common, frames
from ui import problems as problem_ui

JOB_FAILED = {"failed", "cancelled", "interrupted"}  # interrupted: its worker died; resume it on the Jobs page
JOB_ENDED = {"done", *JOB_FAILED}

HOW_TO_INGEST = """The store is empty. Ingest a dataset to start:

* in the browser, with the form below (upload a file, or give a path on the server), or
* on the command line: `python -m core ingest PATH` (a JSONL / Parquet file, a folder such as the
  Qwen2.5-Math eval `outputs/`, or a Hugging Face hub id); it also checks answers with
  math-verify and counts tokens, or
* `python -m core demo` for a generated OmniThought-shaped dataset to try the app on."""


@st.cache_data(ttl=600, show_spinner=False, max_entries=4)
def store_summary(db: str, stamp: tuple[float, float]) -> pl.DataFrame:
    """core.summary.summary(), recomputed whenever the store is written (``stamp``)."""
    del stamp  # the cache key only
    return summary.summary(db=db)


def _save_upload(upload) -> Path:
    """Copy an uploaded file under <data>/uploads, keeping its extension (format detection reads it)."""
    folder = store.data_dir() / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(upload.name).name).strip("._") or "upload"
    target = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}"
    with open(target, "wb") as out:
        shutil.copyfileobj(upload, out)
    return target


def _job_finished(info: dict) -> bool:
    return str(info.get("state", "")).lower() in JOB_ENDED or bool(info.get("error"))


def _show_job(info: dict) -> None:
    done, total = info.get("done") or 0, info.get("total")
    stage = info.get("stage") or info.get("state") or ""
    text = f"{stage}: {done:,} of {total:,}" if total else f"{stage}: {done:,}"
    if info.get("message"):
        text += f" · {info['message']}"
    st.progress(max(0.0, min(1.0, done / total)) if total else 0.0, text=text)


def _ingest_form(jobs) -> None:
    with st.form("ingest_form"):
        upload = st.file_uploader("Upload a file (JSONL, JSON or Parquet)", key="ingest_upload")
        path = st.text_input("…or a path on the server (file or folder) or a hub id", key="ingest_path",
                             help="Server paths are read only under: " + ", ".join(map(str, access.ingest_roots())))
        c1, c2, c3 = st.columns([1, 2, 1])
        fmt = c1.selectbox("Format", ["auto", *FORMATS], key="ingest_format")
        name = c2.text_input("Dataset name (optional)", key="ingest_name")
        skip_bad = c3.checkbox("Skip bad rows", key="ingest_skip_bad",
                               help="Ingest the good rows and write the bad ones to a report, instead of stopping at the first.")
        submitted = st.form_submit_button("Ingest")
    if not submitted:
        return
    if upload is not None and path.strip():
        st.error("Give either an upload or a path, not both.")
        return
    if upload is None and not path.strip():
        st.error("Upload a file or give a path to ingest.")
        return
    if upload is None:
        try:  # a path on the server: only under the ingest roots (the job checks again)
            access.confine_to_roots(path.strip(), None if fmt == "auto" else fmt)
        except (access.AccessDenied, IngestError) as exc:
            st.error(str(exc))
            return
    source = str(_save_upload(upload)) if upload is not None else path.strip()
    job_id = jobs.submit("ingest", {"source": source, "format": None if fmt == "auto" else fmt,
                                    "name": name.strip() or None, "skip_bad": bool(skip_bad)})
    st.session_state.overview_ingest_job = job_id
    st.session_state.overview_ingest_source = source


@st.fragment(run_every="1s")
def _ingest_progress(jobs, job_id) -> None:
    """Polls the running ingest; when it ends the whole page reruns to show the new dataset."""
    info = jobs.get(job_id)
    if _job_finished(info):
        st.rerun()
    _show_job(info)


st.title("Overview")
with common.guard():
    f = common.sidebar_filter()
    datasets = common.per_stamp("datasets", queries.datasets)
    if datasets.height == 0:
        st.info(HOW_TO_INGEST)
    else:
        rows = store_summary(str(common.db_file()), common.store_stamp())
        shown = datasets.with_columns(pl.Series("name", [
            charts.dataset_label(n, g) for n, g in zip(datasets["name"], datasets["generated"])], dtype=pl.String))
        c = st.columns(4)
        c[0].metric("Datasets", f"{datasets.height:,}")
        problem_ui.problem_metric(c[1])  # one per question key: a benchmark and its eval runs' copies count once
        c[2].metric("CoTs", f"{int(datasets['n_cots'].sum()):,}")
        c[3].metric("Models / teachers", f"{rows['model'].n_unique():,}")

        st.subheader("Datasets")
        st.dataframe(
            shown.select("name", "format", "source", "n_problems", "n_cots", "generated", "created_at"),
            hide_index=True, key="overview_datasets",
            column_config={"n_problems": "problems", "n_cots": "CoTs"},
        )

        st.subheader("Models / teachers")
        st.caption("Per dataset, model and benchmark: CoT counts, tokens, and accuracy in percent by every "
                   "correctness source (`acc[source]`), beside the eval harness's own figure where the input "
                   "had one (`harness_acc`). The same table as `python -m core summary`.")
        generated = datasets.filter(pl.col("generated"))["name"].to_list()
        if rows.height:
            # accuracy first: it is what the table is read for; counts and tokens after it
            acc_cols = [c for c in rows.columns if c.startswith("acc[") or c.startswith("harness_")]
            first = ["dataset", "model", "benchmark", "cots", *acc_cols]
            shown_rows = charts.label_generated(rows, generated).drop("generated").with_columns(
                pl.col("mean_tokens").round(0))
            st.dataframe(shown_rows.select(*first, pl.exclude(first)), hide_index=True, key="overview_models")
        else:
            st.info("The datasets hold problems but no CoTs yet (a benchmark file has only questions and "
                    "reference answers); ingest model outputs to see models here.")

        st.subheader("Score sources")
        sources = common.per_stamp("score_sources", queries.score_sources)
        if sources.height:
            st.dataframe(sources, hide_index=True, key="overview_sources")
        else:
            st.info("No scores yet: run verification or an LLM judge on the Jobs page.")

        problem_ui.overview_section(f)

        st.subheader("Token length by correctness")
        df = frames.metric_frame(f)
        if df.height == 0 and not rows.height:
            st.info("No CoTs in the store yet, so there is no length distribution to show.")
        elif df.height == 0:
            common.explain_empty(f)
        else:
            fig = frames.length_figure(f, kind="histogram", bins=40, panel_height=200, height=340)
            st.plotly_chart(fig, key="overview_lengths", width="stretch")
            st.caption("All CoTs the sidebar filter matches; the Distributions page facets this by model, "
                       "CD level or dataset and adds RV / CD, token budgets and Mean@k.")

    st.subheader("Ingest a dataset")
    refusal = access.job_refusal()
    if refusal:  # read-only server, or not one of the job users
        st.info(refusal)
    else:
        _ingest_form(jobs)
        job_id = st.session_state.get("overview_ingest_job")
        if job_id is not None:
            info = jobs.get(job_id)
            source = st.session_state.get("overview_ingest_source", "")
            if not _job_finished(info):
                st.caption(f"Ingesting {render.escape_inline(source)} (job {job_id}); the page updates when it finishes.")
                _ingest_progress(jobs, job_id)
            elif info.get("error") or str(info.get("state", "")).lower() in JOB_FAILED:
                st.error(f"The ingest of {render.escape_inline(source)} did not finish ({info.get('state')}): "
                         f"{render.escape_inline(info.get('error') or info.get('message') or 'no reason was recorded')}. "
                         "The Jobs page can resume it.")
            else:
                result = info.get("result") or {}
                result = result.get("ingest", result) if isinstance(result, dict) else result
                if isinstance(result, dict) and result.get("already_present"):
                    st.success(f"{render.escape_inline(source)} is already in the store as '{render.escape_inline(result.get('name'))}'.")
                elif isinstance(result, dict) and result.get("name"):
                    named = f" (the name comes from {result['name_from']})" if result.get("name_from") else ""
                    st.success(f"Ingested '{render.escape_inline(result['name'])}'{named}: "
                               f"{result.get('problems', 0):,} problems, {result.get('cots', 0):,} CoTs.")
                else:
                    st.success(f"Ingest of {render.escape_inline(source)} finished.")
