"""Neuron Vulnerability Explorer — the Streamlit entry point: navigation and the sidebar (experiment
picker, the current selection, links to the next step). Pages hold the views.

No traceback reaches a user: an unexpected error in the sidebar or a page is logged in full on the server
with a short error id, and the user sees one sentence with that id (``.streamlit/config.toml`` also sets
``client.showErrorDetails = "none"`` for anything that escapes, e.g. a widget callback)."""
import uuid
from pathlib import Path

import streamlit as st
from streamlit.logger import get_logger

from core.ui import auth, pages, services, session, sidebar

# a local favicon: a page icon would make the browser fetch it from Google (offline servers: an error)
st.set_page_config(page_title="Neuron Vulnerability Explorer", layout="wide",
                   page_icon=str(Path(__file__).parent / "core" / "assets" / "favicon.png"))
auth.require_login()  # open unless .streamlit/secrets.toml has an [auth] section (README, hosting)
PAGES = {key: st.Page(p.path, title=p.title, icon=p.icon, default=key == pages.DEFAULT)
         for key, p in pages.PAGES.items()}
log = get_logger("nve.app")  # the server's log (stderr), as Streamlit's own messages


def guarded(step, where: str) -> None:
    """Run ``step``; an unexpected error is logged with its traceback and an error id, and the user gets
    one plain sentence with the id. ``st.stop``, ``st.rerun`` and ``st.switch_page`` raise Streamlit's
    ``ScriptControlException``, a ``BaseException``: it is not caught here and keeps working."""
    try:
        step()
    except Exception:
        error_id = uuid.uuid4().hex[:8]
        log.exception("error %s in %s", error_id, where)
        st.error(f"Something went wrong here and this view stopped (error {error_id}). Reload the page or "
                 "change the selection; if it happens again, give the server's administrator this error "
                 "id (the details are in the server log).")


page = st.navigation({section: [PAGES[k] for k in keys] for section, keys in pages.SECTIONS.items()})
guarded(sidebar.render, "the sidebar")
# The address holds the whole selection before the page runs: a page change resets it to the bare page
# (the navigation menu) and a page that stops early could not write it afterwards (core.ui.session);
# changes made while the page runs are written as they happen (session.put).
guarded(session.sync_url, "the address")
try:
    guarded(page.run, f"page {page.url_path or 'experiments'}")
finally:
    services.freeze_heap()  # once per process: keeps full garbage collections short
