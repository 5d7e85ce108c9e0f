"""Cached access to stores and their analytics for the pages (one instance per experiment, shared by
all sessions; core objects are never mutated by pages)."""
from __future__ import annotations

import streamlit as st

from core.analysis import Analysis
from core.store import Store, open_store
from core.ui.stores import cache_dir


@st.cache_resource(show_spinner=False, max_entries=8)
def _analysis(cache: str, experiment: str, stamp: str) -> Analysis:
    return Analysis(open_store(experiment, cache))


def analysis(experiment: str) -> Analysis:
    """The experiment's ``Analysis``; a re-prepared store (new manifest time) gets a fresh one."""
    cache = cache_dir()
    stamp = open_store(experiment, cache).manifest.get("created", "")
    return _analysis(str(cache), experiment, stamp)


def store(experiment: str) -> Store:
    return analysis(experiment).store


def linkage(experiment: str, pair: int, sel) -> tuple:
    """(Z, None) of the pair's neurons with the selection's clustering and RF settings, or (None, why)
    when the combination is refused (e.g. ward with 1 − IoU). Every page calls this one function, so
    dendrogram node ids agree between pages; ``Analysis`` memoizes it."""
    from core.ui.neuron_charts import rf_kw
    a = analysis(experiment)
    try:
        return a.linkage(pair, distance=sel.distance, method=sel.method, **rf_kw(sel, a)), None
    except ValueError as e:
        return None, str(e)
