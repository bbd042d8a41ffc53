import streamlit as st

st.title("Sql")
st.info("This page is being built.")
