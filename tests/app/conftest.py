"""Shared set-up of the app tests."""
import pytest


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Each AppTest starts with empty Streamlit caches (they are process-wide)."""
    import streamlit as st
    st.cache_data.clear()
    st.cache_resource.clear()
