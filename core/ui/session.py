"""Streamlit glue for the selection model (core.ui.state): read, write, and mirror it in the URL."""
from __future__ import annotations

import streamlit as st

from core.ui.state import KEY, Selection, from_query, to_query


def get() -> Selection:
    """The session's selection; on a session's first run it comes from the URL (a shared link)."""
    if KEY not in st.session_state:
        st.session_state[KEY] = from_query(st.query_params.to_dict())
    return st.session_state[KEY]


def put(sel: Selection) -> Selection:
    st.session_state[KEY] = sel
    return sel


def sync_url() -> None:
    """Write the selection into the query string (idempotent; no rerun)."""
    want = to_query(get())
    if st.query_params.to_dict() != want:
        st.query_params.from_dict(want)
