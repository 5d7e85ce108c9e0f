"""Streamlit glue for the selection model (core.ui.state): read, write, and mirror it in the URL."""
from __future__ import annotations

from dataclasses import replace

import streamlit as st

from core.ui.state import KEY, Selection, from_query, to_query


def _ensure_router() -> None:
    """A shared deep link (``/clustering?...``) opened before the server ever ran ``app.py`` is served
    by Streamlit's legacy ``pages/`` mode, which runs the page without the app's navigation and
    sidebar; switch the server to ``st.navigation`` mode and rerun, which keeps the URL."""
    from streamlit.runtime.pages_manager import PagesManager
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


def require_app() -> None:
    """The first call of every page: a page must only ever run inside ``app.py`` (its navigation, the
    optional login gate and the sidebar). A session's first run is where a deep link can land in
    Streamlit's legacy mode (see ``_ensure_router``); after it the server is in navigation mode."""
    if KEY not in st.session_state:
        _ensure_router()


def get() -> Selection:
    """The session's selection; on a session's first run it comes from the URL (a shared link)."""
    if KEY not in st.session_state:  # a session's first run (never inside a widget callback)
        _ensure_router()
        st.session_state[KEY] = from_query(st.query_params.to_dict())
    return st.session_state[KEY]


def put(sel: Selection) -> Selection:
    st.session_state[KEY] = sel
    return sel


def update(**changes) -> Selection:
    """Replace some fields of the selection (for widget callbacks)."""
    return put(replace(get(), **changes))


def seed(key: str, value) -> None:
    """Show the selection's value in a widget: widget state is dropped on page change, so each run
    writes the model's value into the widget's key before the widget is created."""
    if key not in st.session_state or st.session_state[key] != value:
        st.session_state[key] = value


def sync_url() -> None:
    """Write the selection into the query string at the end of every run (no rerun). Always written,
    not only when it differs from the server's copy: a page switch clears the browser's query string
    without telling the server."""
    st.query_params.from_dict(to_query(get()))


def require_experiment() -> Selection:
    """The selection of a page that needs an experiment; without one, say what to do and stop."""
    sel = get()
    if sel.experiment is None:
        st.info("Choose an experiment in the sidebar, or prepare one first.")
        st.page_link("pages/prepare.py", label="Prepare an experiment", icon=":material/add_circle:")
        st.stop()
    return sel
