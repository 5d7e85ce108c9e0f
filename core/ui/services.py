"""Cached access to stores and their analytics for the pages (one instance per experiment, shared by
all sessions; core objects are never mutated by pages)."""
from __future__ import annotations

import gc
import threading

import streamlit as st

from core import image_space
from core.analysis import Analysis
from core.store import Store, cache_dir, open_store
from core.ui import overview_charts


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


CHART_HEIGHT = 300  # of Image space's three overview charts


# -- Image space's charts, built once per experiment (and subset) and shared by sessions, never mutated --
@st.cache_resource(show_spinner=False, max_entries=16)
def prediction_matrix(experiment: str, stamp: str):
    """The (classes, classes) counts of pairs per (true, adversarial) label (``image_space``)."""
    s = store(experiment)
    return image_space.prediction_matrix(s.pairs, len(s.classes))


@st.cache_data(show_spinner=False, max_entries=16)
def matrix_spec(experiment: str, stamp: str, rows=None, cols=None):
    """The matrix (or its class subset ``rows`` × ``cols``) as a Vega-Lite dict, built (and
    schema-validated by Altair, ~0.1 s) once per experiment and subset; cache_data hands out a copy
    each time, which the page points at the selected cell."""
    return overview_charts.matrix_spec(prediction_matrix(experiment, stamp), store(experiment).classes,
                                       height=CHART_HEIGHT, rows=rows, cols=cols)


@st.cache_resource(show_spinner=False, max_entries=32)
def scatter(experiment: str, stamp: str, side: str, color_by: str, highlight_key, _highlight,
            subset, colors: tuple[str, ...]):
    """``subset``: None, or the class subset as (benign ids, adversarial ids) tuples; ``colors``: per
    class (the view's)."""
    s = store(experiment)
    inside = None if subset is None else image_space.in_subset(s.pairs, *subset)
    return overview_charts.scatter_figure(s.pairs, s.classes, list(colors), side, color_by,
                                          _highlight, height=CHART_HEIGHT, subset=inside)
