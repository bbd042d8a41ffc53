"""ThoughtScope core: store, ingest, metrics, selection, export and jobs. Never imports streamlit."""
