"""Image rendering for the pages: nearest-neighbour upscaling (32×32 pixels stay visible), coloured
borders, RF overlays and vulnerability-map heatmaps, all as uint8 RGB numpy arrays for ``st.image``."""
from __future__ import annotations

import numpy as np

from core.ui.palette import rgb

DISPLAY = 160  # pixels per image side on screen


def to_rgb(image) -> np.ndarray:
    """(C,H,W) float in [0,1] (C = 1 or 3) -> (H,W,3) uint8."""
    x = np.asarray(image, dtype=np.float32)
    if x.ndim == 3 and x.shape[0] in (1, 3):
        x = np.moveaxis(x, 0, -1)
    if x.ndim == 2:
        x = x[..., None]
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def upscale(rgb_image: np.ndarray, size: int = DISPLAY) -> np.ndarray:
    """Nearest-neighbour upscale by an integer factor so the longer side is at least ``size``."""
    h, w = rgb_image.shape[:2]
    f = max(1, -(-size // max(h, w)))
    return np.repeat(np.repeat(rgb_image, f, axis=0), f, axis=1)


def bordered(rgb_image: np.ndarray, color: str, width: int = 6) -> np.ndarray:
    out = np.empty((rgb_image.shape[0] + 2 * width, rgb_image.shape[1] + 2 * width, 3), np.uint8)
    out[:] = rgb(color)
    out[width:-width, width:-width] = rgb_image
    return out


def show(image, color: str | None = None, size: int = DISPLAY) -> np.ndarray:
    """A (C,H,W) [0,1] image upscaled, with a border in ``color`` if given."""
    x = upscale(to_rgb(image), size)
    return bordered(x, color) if color else x


def rf_overlay(image, mask, size: int = DISPLAY, dim: float = 0.25) -> np.ndarray:
    """The RF (paper step 4): pixels inside the mask as they are, outside dimmed (not black, so the
    context stays readable), upscaled."""
    x = to_rgb(image).astype(np.float32)
    m = np.asarray(mask, dtype=bool)[..., None]
    out = np.where(m, x, x * dim)
    return upscale(out.astype(np.uint8), size)


def heatmap(values, size: int = DISPLAY, mask=None) -> np.ndarray:
    """A vulnerability map as a white→red heatmap (values ≤ 0 white), the binarized pixels outlined
    in black dots when ``mask`` is given."""
    v = np.asarray(values, dtype=np.float32)
    top = float(v.max()) if v.size and v.max() > 0 else 1.0
    t = np.clip(v / top, 0, 1)[..., None]
    white, red = np.array([255, 255, 255], np.float32), np.array([178, 24, 43], np.float32)
    out = (white * (1 - t) + red * t).astype(np.uint8)
    big = upscale(out, size)
    if mask is not None:
        f = big.shape[0] // v.shape[0]
        m = np.repeat(np.repeat(np.asarray(mask, bool), f, 0), f, 1)
        edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
        big[edge] = (0, 0, 0)
    return big
