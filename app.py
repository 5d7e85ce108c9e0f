"""Neuron Vulnerability Explorer — the Streamlit entry point (router only; pages hold the views)."""
import streamlit as st

st.set_page_config(page_title="Neuron Vulnerability Explorer", layout="wide")
page = st.navigation([st.Page("pages/experiments.py", title="Experiments", icon=":material/science:",
                              default=True)])
page.run()
