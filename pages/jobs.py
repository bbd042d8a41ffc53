import streamlit as st

st.title("Jobs")
st.info("This page is being built.")
