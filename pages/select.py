import streamlit as st

st.title("Select")
st.info("This page is being built.")
