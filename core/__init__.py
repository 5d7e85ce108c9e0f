"""Neuron Vulnerability Explorer: the library behind the app (no Streamlit outside core/ui)."""
__version__ = "0.1.0"
__all__ = ["prepare_experiment"]


def __getattr__(name: str):
    # core.prepare_experiment, imported on first use: `import core` (every CLI command, every page) stays
    # cheap and does not pull in torch.export
    if name == "prepare_experiment":
        from core.notebook import prepare_experiment
        return prepare_experiment
    raise AttributeError(f"module 'core' has no attribute {name!r}")
