"""Streamlit helpers shared by the pages: the sidebar filter and error handling. No logic
beyond widgets lives here; everything computed comes from core/."""
