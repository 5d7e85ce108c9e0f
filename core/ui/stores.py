"""Cached access to experiment stores for the pages, and deleting one (which must drop those caches).
The folder of stores is ``core.store.cache_dir()`` (re-exported here for the pages)."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from core.store import (  # noqa: F401 -- cache_dir: the pages' folder of stores
    StoreError,
    StoreInfo,
    cache_dir,
    delete_experiment,
    list_stores,
    open_store,
)


@st.cache_data(ttl=10, show_spinner=False)
def experiments(cache: str) -> list[StoreInfo]:
    return list_stores(cache)


def being_prepared(experiment: str, cache: str | Path) -> bool:
    """Whether this server's prepare job for ``experiment`` is still running."""
    from core import jobs  # the job registry imports the pipeline: loaded only when asked
    job = jobs.get(experiment, cache)
    return job is not None and job.running


def delete(experiment: str, cache: str | Path) -> None:
    """Delete an experiment for the app (``core.store.delete_experiment``), refusing one that this
    server's prepare job for the same id is still working on (the job may publish it any moment; the
    store's lock covers a job only once it writes). Then the process-wide caches forget it: the listing
    (every session's sidebar and Experiments page) and the open stores, whose memory maps would keep the
    deleted files' disk space in use until evicted. A StoreError says why nothing was deleted."""
    from core.ui import services  # services imports this module
    if being_prepared(experiment, cache):
        raise StoreError(f"experiment {experiment!r} is being prepared now; wait for it to finish (or cancel "
                         "it on the Prepare page) before deleting it")
    try:  # the key services caches the open store under (see services.analysis)
        stamp = open_store(experiment, cache).manifest.get("created", "")
    except StoreError:  # a damaged store may still be deleted; it was never opened
        stamp = None
    try:
        delete_experiment(experiment, cache)
    finally:  # also when files stayed behind: the experiment itself is gone from the listing
        experiments.clear()
        if stamp is not None:
            services.forget(cache, experiment, stamp)
