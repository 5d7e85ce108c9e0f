"""One class palette for every view (scatterplots, matrix, grid borders, curves, bands).

Up to 20 classes: Tableau 10 then its light companions (tab20 reordered so the first ten are the
strong colours, as CIFAR-10 and Fashion-MNIST need). Beyond 20: evenly spaced hues in HSL (distinct
enough to tell neighbours apart, not to name them; the paper notes the same limit for Places365).
"""
from __future__ import annotations

import colorsys

TAB20 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
         "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
         "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5"]


def class_colors(num_classes: int) -> list[str]:
    """A hex colour per class id."""
    if num_classes <= len(TAB20):
        return TAB20[:num_classes]
    out = []
    for i in range(num_classes):
        r, g, b = colorsys.hls_to_rgb(i / num_classes, 0.45 + 0.15 * (i % 2), 0.65)
        out.append(f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}")
    return out


def rgb(hex_color: str) -> tuple[int, int, int]:
    h = hex_color.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)
