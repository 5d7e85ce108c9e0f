"""Benchmarks that drive the Streamlit app (``python -m core bench app``: ``bench.app``).

A package of its own beside app.py and pages/, which it runs: the library (``core``, outside ``core.ui``)
never imports the UI layer or Streamlit, and its own benchmarks stay in ``core.bench``. Like app.py and
pages/, it is not part of the installed package: it runs from a checkout of the repository.
"""
