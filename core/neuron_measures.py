"""Neuron-perturbation measure inputs (paper §5.2.1): per-class statistics of pooled activations.

The Neuron Vulnerability View draws, for the benign class b and the adversarial class a, a band (an
interval over the images of that class) of activation×weight: ``pooled[j] · W[k, j]`` for neuron j
and class k. Because ``W[k, j]`` is one scalar per neuron and class, every interval of activation×weight
follows from the same interval of the activations (scaled by W[k, j], the bounds swapping when
W[k, j] < 0). The store therefore keeps, per class and neuron, the count, mean, standard deviation
and a set of quantiles of the pooled activations over two populations:

- ``benign_*``: correctly classified benign images of each true class (all of them, not only the
  attacked ones, for the most stable bands);
- ``adversarial_*``: successful adversarial images grouped by adversarial label.
"""
from __future__ import annotations

import numpy as np

QUANTILE_LEVELS = np.array([0.0, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.975, 1.0])


def class_statistics(pooled: np.ndarray, labels: np.ndarray, num_classes: int,
                     levels: np.ndarray = QUANTILE_LEVELS) -> dict[str, np.ndarray]:
    """Per class k over rows with ``labels == k``: count (c,), mean and std (c,n; std with ddof=1,
    0 for a single image), quantiles (c, len(levels), n). Classes with no image get NaN statistics."""
    pooled = np.asarray(pooled, dtype=np.float64)
    n = pooled.shape[1]
    count = np.bincount(labels, minlength=num_classes)[:num_classes]
    mean = np.full((num_classes, n), np.nan)
    std = np.full((num_classes, n), np.nan)
    quant = np.full((num_classes, len(levels), n), np.nan)
    for k in np.flatnonzero(count):
        rows = pooled[labels == k]
        mean[k] = rows.mean(0)
        std[k] = rows.std(0, ddof=1) if len(rows) > 1 else 0.0
        quant[k] = np.quantile(rows, levels, axis=0)
    return {"count": count.astype(np.int64), "mean": mean.astype(np.float32),
            "std": std.astype(np.float32), "quantiles": quant.astype(np.float32),
            "levels": np.asarray(levels, dtype=np.float32)}
