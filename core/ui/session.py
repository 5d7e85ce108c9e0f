"""Streamlit glue for the selection model (core.ui.state): read, write, and mirror it in the URL.

The address always holds the whole selection (``to_query``), so a copied link or a reload opens the same
case. Streamlit 1.67 sends the browser's query string with every rerun and resets it to the link's own
query parameters (none for the navigation menu) on a page change; the server's ``st.query_params`` is
that copy. The URL is written whenever the selection changes (``put``) and once before each page runs
(``sync_url``): a message queued after a page's ``st.stop()`` is never sent (the runner raises its
``StopException`` again at the next message), so writing it at the end of the run lost it on every
page that stops early (Clustering with no cluster selected: a bare ``/clustering`` and a stale
``clusters=``)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import streamlit as st

from core.store import StoreError
from core.ui import services
from core.ui.pages import PAGES
from core.ui.state import KEY, Selection, from_query, to_query
from core.ui.text import plain, quoted


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
    """Keep ``sel`` as the session's selection and write it to the address at once (in a widget callback
    or in the page body, before the page can stop)."""
    st.session_state[KEY] = sel
    sync_url()
    return sel


def update(**changes) -> Selection:
    """Replace some fields of the selection (for widget callbacks)."""
    return put(replace(get(), **changes))


def seed(key: str, value) -> None:
    """Show the selection's value in a widget: widget state is dropped on page change, so each run
    writes the model's value into the widget's key before the widget is created."""
    if key not in st.session_state or st.session_state[key] != value:
        st.session_state[key] = value


def url_matches(current: Mapping[str, list[str]], wanted: Mapping[str, str]) -> bool:
    """Whether the address's query parameters (each with all its values, as ``get_all`` gives them)
    are exactly ``wanted`` (``to_query``): same keys, one value each, equal. A parameter given twice,
    an unknown one or a field left over from a cleared selection all make it differ."""
    return current.keys() == wanted.keys() and all(list(current[k]) == [wanted[k]] for k in wanted)


def sync_url() -> None:
    """Write the selection into the address if it differs from the browser's (no rerun). The server's
    ``st.query_params`` is the query string the browser sent with this run (reset by a page change),
    updated by each write, so the comparison saves a message and never misses a reset address.
    ``from_dict`` replaces every parameter (``embed`` excepted): a cleared field leaves the address."""
    wanted = to_query(get())
    params = st.query_params
    if not url_matches({k: params.get_all(k) for k in params}, wanted):
        params.from_dict(wanted)


def link_params() -> dict[str, str]:
    """The query parameters that carry the current selection in a page link (``st.page_link``'s
    ``query_params``): opening the link in a new tab opens the same case."""
    return to_query(get())


def page_link(page: str, *, label: str, icon: str | None = None, **kwargs) -> None:
    """``st.page_link`` to a page of this app, carrying the selection (see ``link_params``). ``page``:
    its key in ``core.ui.pages.PAGES`` (KeyError for another: a typo fails the tests); ``icon``: the
    page's own unless given."""
    known = PAGES[page]
    st.page_link(known.path, query_params=link_params(), label=label, icon=icon or known.icon, **kwargs)


# -- guards: a page that needs something says how to get it, links there and stops -----------------------
def require_experiment(text: str = "Choose an experiment in the sidebar, or prepare one first.") -> Selection:
    """The selection of a page that needs an experiment; without one, say what to do and stop."""
    sel = get()
    if sel.experiment is None:
        st.info(text)
        page_link("prepare", label="Prepare an experiment")
        st.stop()
    return sel


def require_analysis(sel: Selection):
    """The ``core.analysis.Analysis`` of the selected experiment; a store removed or damaged since the
    sidebar listed it is said in one plain sentence, and the page stops."""
    try:
        return services.analysis(sel.experiment)
    except StoreError as e:
        st.error(plain(e))
        st.stop()


def require_pair(analysis, sel: Selection,
                 why: str = "click a prediction-matrix cell, then a pair of the grid.") -> int:
    """The selected pair of a page that needs one. With none: "pick a pair first" (``why``: how, or
    what the page does with it); with one the experiment does not have (a stale or edited link): which
    and how many there are. Either way a link to Image space, and the page stops."""
    if sel.pair is None:
        st.info(f"Pick a pair in Image space first: {why}")
    elif not 0 <= sel.pair < analysis.num_pairs:
        st.warning(f"Pair #{sel.pair} is not in experiment {quoted(sel.experiment)} (it has "
                   f"{analysis.num_pairs} pairs); pick a pair in Image space.")
    else:
        return sel.pair
    page_link("image_space", label="Go to Image space")
    st.stop()


def require_neuron(analysis, sel: Selection) -> int:
    """The selected neuron of a page that needs one (after ``require_pair``); without one of this
    experiment: "pick a neuron first", a link to Neuron ranking, and the page stops."""
    if sel.neuron is None or not 0 <= sel.neuron < analysis.num_neurons:
        st.info(f"Pick a neuron of pair #{sel.pair} in Neuron ranking: click it on the chart or type its id.")
        page_link("neuron_ranking", label="Go to Neuron ranking")
        st.stop()
    return sel.neuron
