"""Neuron Vulnerability Explorer: the library behind the app (no Streamlit outside core/ui)."""
__version__ = "0.1.0"
