import streamlit as st

st.title("Distributions")
st.info("This page is being built.")
