import streamlit as st

st.title("Reader")
st.info("This page is being built.")
