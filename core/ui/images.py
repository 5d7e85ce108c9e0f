"""Image rendering for the pages: nearest-neighbour upscaling (32×32 pixels stay visible), coloured
borders, RF overlays and vulnerability-map overlays, all as uint8 RGB numpy arrays, and ``data_uri`` to
hand them to ``st.image`` inline.

Choices (issue 13, items 5 and 9):

- **RF** (``rf_overlay``): the RF is drawn on the full, undimmed image as a double outline, a band of
  ``RF_COLOR`` (bright cyan) just inside the mask and a black band just outside it, plus a light tint of
  the same colour inside (``tint``: share of the colour in each inside pixel). The bright band shows on
  dark images (Fashion-MNIST's black background), the black band on bright ones, and the tint keeps the
  inside recognizable. Dimming the outside, the old drawing, made a small RF on a dark image a black
  square; ``dim`` is kept (default 1: no dimming) for callers that still want it.
- **Vulnerability map** (``heatmap``): the map is drawn over the image in grey (luminance, squeezed into
  [``GRAY_LO``, ``GRAY_HI``] so no pixel is pure black or white and every colour stands out) with the
  colour scale ``MAP_STOPS`` (yellow → orange → red as the value rises from 0 to the map's maximum) at an
  opacity that rises with the value (``MAP_ALPHA``); values ≤ 0 leave the grey image as it is. The
  binarized top-% is outlined like an RF. ``legend=True`` adds the colour scale as a strip under the map
  (left: just above 0, right: the maximum; the page's caption gives the numbers).
- **Outline bands** (``outline``) are computed at display resolution: with the mask upscaled to ``M``,
  the inside band is the pixels of ``M`` within ``width`` pixels (Chebyshev distance) of a pixel outside
  ``M`` or of the image's edge, the outside band the pixels not in ``M`` within ``width`` of ``M``. A
  mask touching the image's edge is thus closed by the inside band along that edge.
- **Serving** (``data_uri``): Streamlit's media endpoint drops the previous run's files when a newer
  run of the session replaces them, so a browser that fetches an image late (several sessions on two
  cores) got a 404. ``st.image`` passes a ``data:`` URL through unchanged, so the PNG travels inside the
  page's message and no late fetch can fail. PNG (lossless, small for nearest-neighbour upscales: a
  160-px image is a few kB), not JPEG (which smears the pixel edges and the outline colours).
"""
from __future__ import annotations

import base64
import io

import numpy as np

from core.ui.palette import rgb

DISPLAY = 160  # pixels per image side on screen
RF_COLOR = "#00e5ff"  # bright cyan: far from black, white and every grey, rare in natural images
DARK = (0, 0, 0)  # the outside band of an outline
RF_TINT = 0.3  # share of RF_COLOR mixed into each pixel inside the RF
OUTLINE_WIDTH = 2  # display pixels per band of an outline
GRAY_LO, GRAY_HI = 0.2, 0.8  # the grey image under a map spans this range of [0, 1]
# The map's colour scale: (position in [0, 1], RGB), linearly interpolated.
MAP_STOPS = ((0.0, (255, 230, 0)), (0.5, (255, 120, 0)), (1.0, (200, 0, 0)))
# Opacity of the map's colour just above 0 and at the maximum: rising with the value, so the many small
# positive values of a map stay faint and the object shows through where the attack barely works.
MAP_ALPHA = (0.1, 0.9)
LEGEND_HEIGHT = 10  # display pixels of the colour strip under a map (legend=True)
LEGEND_GAP = 4


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


def coverage(mask) -> str:
    """The share of the image's pixels in ``mask`` as a whole percentage; "<1%" when some pixels are in
    it but the share rounds to 0% (a tiny RF must not read like an empty one), ">99%" when it rounds to
    100% without being the whole image."""
    share = float(np.asarray(mask, dtype=bool).mean()) if np.size(mask) else 0.0
    text = f"{share:.0%}"
    if share > 0 and text == "0%":
        return "<1%"
    return ">99%" if share < 1 and text == "100%" else text


def _factor(h: int, w: int, size: int) -> int:
    """The integer upscaling factor that makes the longer side at least ``size``."""
    return max(1, -(-size // max(h, w)))


def upscale(rgb_image: np.ndarray, size: int = DISPLAY) -> np.ndarray:
    """Nearest-neighbour upscale by an integer factor so the longer side is at least ``size``."""
    f = _factor(*rgb_image.shape[:2], size)
    return np.repeat(np.repeat(rgb_image, f, axis=0), f, axis=1)


def data_uri(rgb_image: np.ndarray) -> str:
    """A uint8 (H,W,3) or (H,W) array as a ``data:image/png;base64,...`` URL, which ``st.image`` passes
    to the browser unchanged (no media file to fetch later, see the module doc)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb_image, dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def bordered(rgb_image: np.ndarray, color: str, width: int = 6, uri: bool = False):
    """``rgb_image`` inside a ``width``-pixel border of ``color``; as a data URI when ``uri``."""
    out = np.empty((rgb_image.shape[0] + 2 * width, rgb_image.shape[1] + 2 * width, 3), np.uint8)
    out[:] = rgb(color)
    out[width:-width, width:-width] = rgb_image
    return data_uri(out) if uri else out


def show(image, color: str | None = None, size: int = DISPLAY, uri: bool = False):
    """A (C,H,W) [0,1] image upscaled, with a border in ``color`` if given; as a data URI when ``uri``."""
    x = upscale(to_rgb(image), size)
    x = bordered(x, color) if color else x
    return data_uri(x) if uri else x


def _near(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels within Chebyshev distance ``width`` of a True pixel of ``mask`` (a dilation by a square)."""
    h, w = mask.shape
    padded = np.zeros((h + 2 * width, w + 2 * width), bool)
    padded[width:width + h, width:width + w] = mask
    out = np.zeros_like(mask)
    for dy in range(2 * width + 1):
        for dx in range(2 * width + 1):
            out |= padded[dy:dy + h, dx:dx + w]
    return out


def outline(mask, size: int = DISPLAY, width: int = OUTLINE_WIDTH) -> tuple[np.ndarray, np.ndarray]:
    """(inside band, outside band) of ``mask`` (H,W) upscaled like ``upscale(·, size)``, as boolean
    display-resolution arrays (see the module doc: within ``width`` pixels of the mask's boundary, the
    image's edge counting as outside)."""
    m = np.asarray(mask, dtype=bool)
    f = _factor(*m.shape, size)
    big = np.repeat(np.repeat(m, f, axis=0), f, axis=1)
    # outside the image counts as outside the mask: pad with False before looking for outside pixels
    outside = np.pad(~big, width, constant_values=True)
    near_outside = _near(outside, width)[width:-width, width:-width] if width else np.zeros_like(big)
    return big & near_outside, ~big & _near(big, width)


def _draw_outline(big: np.ndarray, mask, size: int, color: str, width: int) -> np.ndarray:
    inside, outside = outline(mask, size, width)
    big[outside] = DARK
    big[inside] = rgb(color)
    return big


def rf_overlay(image, mask, size: int = DISPLAY, dim: float = 1.0, *, color: str = RF_COLOR,
               tint: float = RF_TINT, width: int = OUTLINE_WIDTH) -> np.ndarray:
    """The RF (paper step 4) on the full image, upscaled: inside the mask each pixel is
    ``(1 - tint) · pixel + tint · color``; outside it is ``dim · pixel`` (default 1: unchanged); then
    the double outline (``color`` inside the boundary, black outside it, ``width`` px each)."""
    x = to_rgb(image).astype(np.float32)
    m = np.asarray(mask, dtype=bool)[..., None]
    inside = (1 - tint) * x + tint * np.asarray(rgb(color), np.float32)
    out = np.where(m, inside, x * dim)
    big = upscale((out + 0.5).astype(np.uint8), size)
    return _draw_outline(big, mask, size, color, width)


def gray(image) -> np.ndarray:
    """(C,H,W) [0,1] image -> (H,W,3) uint8 grey: luminance 0.299 R + 0.587 G + 0.114 B, mapped linearly
    onto [GRAY_LO, GRAY_HI]."""
    x = to_rgb(image).astype(np.float32) / 255
    lum = x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114
    g = GRAY_LO + (GRAY_HI - GRAY_LO) * lum
    return np.repeat((g * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=-1)


def map_colors(t) -> np.ndarray:
    """The colour scale at positions ``t`` in [0, 1] (any shape): (..., 3) float RGB in [0, 255],
    piecewise linear through ``MAP_STOPS``."""
    t = np.clip(np.asarray(t, np.float64), 0, 1)
    pos = np.array([p for p, _ in MAP_STOPS])
    cols = np.array([c for _, c in MAP_STOPS], np.float64)
    return np.stack([np.interp(t, pos, cols[:, k]) for k in range(3)], axis=-1)


def map_scale(values) -> float:
    """The value drawn at full colour: the map's maximum, or 1 when no value is > 0."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.max()) if v.size and v.max() > 0 else 1.0


def _blend(background: np.ndarray, values: np.ndarray, top: float) -> np.ndarray:
    """``background`` (…,3) with the colour of ``values / top`` at opacity MAP_ALPHA[0] + (MAP_ALPHA[1]
    - MAP_ALPHA[0]) · t where the value is > 0; untouched where it is ≤ 0."""
    t = np.clip(values / top, 0, 1)
    alpha = np.where(values > 0, MAP_ALPHA[0] + (MAP_ALPHA[1] - MAP_ALPHA[0]) * t, 0.0)[..., None]
    out = (1 - alpha) * background.astype(np.float64) + alpha * map_colors(t)
    return (out + 0.5).astype(np.uint8)


def colorbar(width: int, height: int = LEGEND_HEIGHT) -> np.ndarray:
    """The colour scale as a (height, width, 3) strip, left (just above 0) to right (the maximum), drawn
    over mid grey as a map draws it over the image."""
    t = (np.arange(width) + 1) / width  # every column > 0: the strip shows only drawn colours
    row = _blend(np.full((width, 3), 128, np.uint8), t, 1.0)
    return np.repeat(row[None], height, axis=0)


def heatmap(values, size: int = DISPLAY, mask=None, *, image=None, top: float | None = None,
            legend: bool = False, color: str = RF_COLOR, width: int = OUTLINE_WIDTH) -> np.ndarray:
    """A vulnerability map (H,W) drawn over ``image`` in grey (white without one) with the colour scale
    (see the module doc; ``top``: the value at full colour, default ``map_scale(values)``), upscaled;
    ``mask`` (the binarized top-%) outlined in ``color`` and black; ``legend``: the colour strip below,
    after a white gap."""
    v = np.asarray(values, dtype=np.float64)
    top = map_scale(v) if top is None else float(top)
    base = gray(image) if image is not None else np.full(v.shape + (3,), 255, np.uint8)
    if base.shape[:2] != v.shape:
        raise ValueError(f"image {base.shape[:2]} and map {v.shape} differ in size")
    big = upscale(_blend(base, v, top), size)
    if mask is not None:
        _draw_outline(big, mask, size, color, width)
    if legend:
        gap = np.full((LEGEND_GAP, big.shape[1], 3), 255, np.uint8)
        big = np.concatenate([big, gap, colorbar(big.shape[1])], axis=0)
    return big
