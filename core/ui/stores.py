"""Cached access to experiment stores for the pages."""
from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from core.store import DEFAULT_CACHE, StoreInfo, list_stores


def cache_dir() -> Path:
    """The folder of stores: $NVE_CACHE, else the repository's cache/ (read per call, for tests)."""
    return Path(os.environ.get("NVE_CACHE", DEFAULT_CACHE))


@st.cache_data(ttl=10, show_spinner=False)
def experiments(cache: str) -> list[StoreInfo]:
    return list_stores(cache)
