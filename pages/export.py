"""Export: write the CoTs a selection keeps (or every CoT the sidebar filter matches) as a
training file, with a manifest beside it, and download it.

The file goes to data/exports/ (or $THOUGHTSCOPE_DATA/exports); it is written in batches, so
its size is bounded by the disk, not by memory.
"""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from core import contamination, export, labels, queries, recipes, render
from ui import common

SOURCES = {
    "select": "The Select page's current selection",
    "recipe": "A saved recipe",
    "filter": "Every CoT the sidebar filter matches",
}
MODE_LABELS = {"thresholds": "thresholds", "capacity": "capacity-matched", "per_problem": "per problem",
               "target": "target size", "per_cluster": "across clusters", "rvcd_mix": "RV/CD mix (EasyDistill)"}
MIME = {".jsonl": "application/jsonl", ".parquet": "application/vnd.apache.parquet"}


@st.cache_data(ttl=600, max_entries=16, show_spinner="Counting the CoTs to export…")
def kept_count(key: str, db: str, stamp: tuple[float, float], _what) -> int:
    del key, db, stamp  # the cache key only
    if isinstance(_what, recipes.Recipe):
        return len(recipes.apply(_what))
    return queries.count(_what)["cots"]


def _file_reader(path: str):
    """Read only when the download is clicked, not on every rerun."""
    return lambda: Path(path).read_bytes()


st.title("Export")
with common.guard():
    base = common.sidebar_filter()
    stamp = common.store_stamp()
    db = str(common.db_file())
    saved = recipes.list_recipes()
    current = st.session_state.get("current_selection")
    offered = [k for k in SOURCES if (k != "select" or current is not None) and (k != "recipe" or saved)]
    if st.session_state.get("exp_source") not in offered:
        st.session_state.exp_source = offered[0]
    source = st.radio("Export", offered, format_func=SOURCES.get, key="exp_source")

    if source == "select":
        # named after the recipe it was loaded from or saved as, while it still is that recipe
        name = st.session_state.get("current_recipe_name")
        named = recipes.load(name) if name and name in saved else None
        what = named if named is not None and named.selection == current else recipes.Recipe("selection", current)
        st.caption(f"{render.escape_inline(what.name) if what.name != 'selection' else 'Unsaved selection'}: mode "
                   f"'{MODE_LABELS[current.rule.mode]}', pool = the sidebar filter as it was on the Select page.")
    elif source == "recipe":
        chosen = st.selectbox("Recipe", saved, key="exp_recipe")
        what = recipes.load(chosen)
        if what.description:
            st.caption(what.description)
    else:
        what = base
    key = json.dumps(what.as_dict() if isinstance(what, recipes.Recipe) else what.to_params(), sort_keys=True)
    if labels.uses_labels(what):  # it reads people's labels: count again after each new label
        common.labels_in_view()
        stamp = common.store_stamp()
    n = kept_count(key, db, stamp, what)
    st.metric("CoTs to export", f"{n:,}")

    c1, c2 = st.columns(2)
    fmt = c1.selectbox("Format", list(export.FORMATS), format_func=export.FORMAT_LABELS.get, key="exp_format")
    thinking = c2.radio("Thinking in the assistant turn", list(export.THINKING_STYLES),
                        format_func=export.THINKING_STYLES.get, key="exp_thinking",
                        disabled=fmt not in export.CONVERSATIONAL,
                        help="Only the conversational formats (TRL, ShareGPT, Alpaca) render a response; JSONL "
                             "and Parquet keep thinking and solution as separate fields.")

    if st.button(f"Write {n:,} CoTs to {export.exports_dir()}", key="exp_go", type="primary", disabled=n == 0):
        bar = st.progress(0.0, text="Exporting…")

        def report(stage: str, done: int, total: int | None) -> None:
            bar.progress(done / total if total else 1.0, text=f"Exporting… {done:,} of {total or 0:,} CoTs")

        result = export.export(what, fmt, thinking=thinking, progress=report)
        bar.empty()
        st.session_state.exp_last = {"path": str(result.path), "manifest_path": str(result.manifest_path),
                                     "manifest": result.manifest}

    last = st.session_state.get("exp_last")
    if last and Path(last["path"]).exists():
        manifest = last["manifest"]
        st.success(f"Wrote {manifest['counts']['rows']:,} CoTs to {last['path']} "
                   f"({manifest['bytes'] / 1e6:,.1f} MB, sha256 {manifest['sha256'][:12]}…); "
                   f"manifest: {last['manifest_path']}.")
        if manifest["counts"].get("truncated"):
            st.warning(f"{manifest['counts']['truncated']:,} exported CoTs are truncated (their thinking never "
                       "closed). Set 'Truncated: only complete' in the sidebar filter to leave them out.")
        for level, sentence in contamination.describe_export(manifest.get("contamination") or {}):
            getattr(st, level)(render.escape_inline(sentence))  # benchmark and dataset names come from the data
        path = Path(last["path"])
        st.download_button(f"Download {path.name}", data=_file_reader(str(path)), file_name=path.name,
                           mime=MIME.get(path.suffix, "application/octet-stream"), key="exp_download")
        with st.expander("Manifest"):
            st.json(manifest)

    st.subheader("Earlier exports")
    earlier = export.list_exports()
    if earlier.height:
        st.dataframe(earlier, hide_index=True, key="exp_list")
    else:
        st.caption(f"None yet in {export.exports_dir()}.")
