"""2-D layouts of the image space (paper §5.1): t-SNE of the penultimate (pooled) activations.

The benign and adversarial scatterplots are separate t-SNE runs, each on its own activations. Inputs
with more than 50 dimensions are first reduced by PCA to 50 (the usual t-SNE preprocessing, which
makes it several times faster with no visible change); initialisation is PCA and the seed is fixed,
so a store is reproducible.
"""
from __future__ import annotations

import numpy as np


def tsne(x: np.ndarray, *, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """(N, d) → (N, 2) float32 t-SNE coordinates; perplexity is capped at (N-1)/3 for small N."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.asarray(x, dtype=np.float32)
    n = len(x)
    if n < 4:  # t-SNE needs a few neighbours; place tiny sets on a line
        return np.stack([np.arange(n), np.zeros(n)], 1).astype(np.float32)
    if x.shape[1] > 50 and n > 50:
        x = PCA(50, random_state=seed).fit_transform(x)
    emb = TSNE(2, perplexity=min(perplexity, (n - 1) / 3), init="pca", random_state=seed,
               n_jobs=-1).fit_transform(x)
    return emb.astype(np.float32)
