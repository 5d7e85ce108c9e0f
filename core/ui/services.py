"""Cached access to stores and their analytics for the pages (one instance per experiment, shared by
all sessions; core objects are never mutated by pages)."""
from __future__ import annotations

import gc
import threading

import streamlit as st

from core.analysis import Analysis
from core.store import Store, cache_dir, open_store


@st.cache_resource(show_spinner=False, max_entries=8)
def _analysis(cache: str, experiment: str, stamp: str) -> Analysis:
    return Analysis(open_store(experiment, cache))


def analysis(experiment: str) -> Analysis:
    """The experiment's ``Analysis``; a re-prepared store (new manifest time) gets a fresh one."""
    cache = cache_dir()
    stamp = open_store(experiment, cache).manifest.get("created", "")
    return _analysis(str(cache), experiment, stamp)


def forget(cache, experiment: str, stamp: str) -> None:
    """Drop one experiment's cached ``Analysis`` (a deleted store: its open memory maps hold the disk)."""
    _analysis.clear(str(cache), experiment, stamp)


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


_freeze_lock = threading.Lock()
_frozen = False


def freeze_heap() -> None:
    """Once per process, at the end of its first run: collect garbage, then take every object alive (the
    imported libraries: ~450k objects of torch, pandas, plotly, streamlit) out of the cyclic garbage
    collector's scans (``gc.freeze``). Otherwise every full collection walks them all, a 250–400 ms
    pause in a random rerun on the 2-core machine (``python -m core bench app``). Frozen objects are still
    freed by reference counting; only reference cycles among them would never be collected."""
    global _frozen
    with _freeze_lock:
        if not _frozen:
            gc.collect()
            gc.freeze()
            _frozen = True
