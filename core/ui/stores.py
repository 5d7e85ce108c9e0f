"""Cached access to experiment stores for the pages."""
from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from core.store import DEFAULT_CACHE, Store, StoreInfo, list_stores, open_store


def cache_dir() -> Path:
    return Path(os.environ.get("NVE_CACHE", DEFAULT_CACHE))


@st.cache_data(ttl=10, show_spinner=False)
def experiments(cache: str) -> list[StoreInfo]:
    return list_stores(cache)


@st.cache_resource(show_spinner=False, max_entries=8)
def store(experiment_id: str, cache: str, mtime: float) -> Store:
    """One open (memory-mapped) store per experiment and version, shared by all sessions."""
    return open_store(experiment_id, cache)
