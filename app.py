"""Neuron Vulnerability Explorer — the Streamlit entry point: navigation and the sidebar (experiment
picker, the current selection, links to the next step). Pages hold the views."""
from pathlib import Path

import streamlit as st

from core.ui import auth, services, session, sidebar

# a local favicon: a page icon would make the browser fetch it from Google (offline servers: an error)
st.set_page_config(page_title="Neuron Vulnerability Explorer", layout="wide",
                   page_icon=str(Path(__file__).parent / "core" / "assets" / "favicon.png"))
auth.require_login()  # open unless .streamlit/secrets.toml has an [auth] section (README, hosting)
PAGES = {
    "experiments": st.Page("pages/experiments.py", title="Experiments", icon=":material/science:",
                           default=True),
    "image_space": st.Page("pages/image_space.py", title="Image space", icon=":material/grid_view:"),
    "neuron_ranking": st.Page("pages/neuron_ranking.py", title="Neuron ranking",
                              icon=":material/leaderboard:"),
    "receptive_fields": st.Page("pages/receptive_fields.py", title="Receptive fields",
                                icon=":material/center_focus_strong:"),
    "clustering": st.Page("pages/clustering.py", title="Clustering", icon=":material/account_tree:"),
    "prepare": st.Page("pages/prepare.py", title="Prepare an experiment", icon=":material/add_circle:"),
}
page = st.navigation({"Explore": [PAGES[k] for k in ("experiments", "image_space", "neuron_ranking",
                                                     "receptive_fields", "clustering")],
                      "Set up": [PAGES["prepare"]]})
sidebar.render(PAGES)
try:
    page.run()
finally:  # also after a page's st.stop(): the URL always mirrors the selection
    session.sync_url()
    services.freeze_heap()  # once per process: keeps full garbage collections short
