"""The only Streamlit glue: cached store access and page helpers (no computation here)."""
