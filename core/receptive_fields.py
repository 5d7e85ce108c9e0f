"""Receptive fields (RFs) of last-conv neurons by the theoretical approximation (paper §3.2).

The paper follows Zhou et al. / NetDissect. For one image x (C×H×W in [0,1]), neuron j with feature
map A_j (h×w) and an RF size S×S (S_h×S_w in general)::

    (1) x̃    = resize(x, S)                          bilinear, antialiased         resize_image
    (2) Ã_j  = upsample(A_j, S)                      bilinear, align_corners=False upsample_maps
    (3) M_j  = Ã_j > T_j                             binary mask                   rf_masks
    (4) RF_j = x̃ ⊙ M_j    (each of the C channels)   "the RF" (step 4's output)    receptive_fields

Interpretation choices (the paper only says "a threshold value", adjustable in the UI, §5.2):

- **Step 1.** ``F.interpolate(mode="bilinear", antialias=True, align_corners=False)``; antialiasing
  matters only when the RF is smaller than the image (it avoids aliasing when shrinking, as PIL does).
  An image already of size S is returned unchanged (as float32).
- **Step 2.** Plain bilinear with ``align_corners=False``, as NetDissect upsamples activations (no
  antialiasing: the maps are enlarged). Every pixel value is a convex combination of raw map values.
- **Step 3, threshold T_j.** Three modes (``THRESHOLD_MODES``):

  * ``"quantile"`` (default, NetDissect): T_j is neuron j's dataset-wide q-quantile of its *raw* (not
    upsampled) activations, every pixel of every image's map A_j pooled together
    (``neuron_quantiles``; linear-interpolation ``np.quantile``). q = ``DEFAULT_QUANTILE`` = 0.9 keeps
    the neuron's top-10% activation level. T_j is the same on every image, so a neuron that is weak on
    this image gets a small or empty RF: RFs are comparable across images and neurons.
  * ``"fraction"``: T_j = value · max(Ã_j) on this image (``DEFAULT_FRACTION`` = 0.5): the region where
    the neuron fires at least at that fraction of its own peak on this image.
  * ``"absolute"``: T_j = value for every neuron (value required).

- **Strict vs. non-strict.** quantile and absolute use ``Ã_j > T_j`` (strict), so a dead neuron (all-zero
  map on the dataset, hence T_j = 0, or all-zero on this image) gets an EMPTY RF, never the whole image.
  fraction uses ``Ã_j >= value · max`` where max > 0 (the peak pixel itself is always in the RF), and
  gives an empty RF when the neuron's max on this image is <= 0 (ReLU maps: dead on this image).
- **Masked pixels** are set to 0 (black) in step 4, exactly the paper's elementwise product.
- **Set operations** (§5.2.2, the Neuron Cluster View): ``union`` / ``intersection`` of the masks of
  the selected neurons (any / all over the neurons). The union of no mask is empty; the intersection
  of no mask is undefined and raises.
- **IoU** (§5.2.1 ranking, §5.2.2 clustering): |a ∧ b| / |a ∨ b| per pair of masks; when the union is
  empty the value is ``empty``: 0.0 for ranking (an empty RF overlaps nothing), 1.0 for the clustering
  distance 1 − IoU (two empty RFs are the same RF).

Everything is vectorized over neurons (and images): no Python loop over neurons. Upsampling a whole
dataset at once costs N·n·S² floats, so callers chunk over images.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

THRESHOLD_MODES = ("quantile", "fraction", "absolute")
DEFAULT_MODE = "quantile"
DEFAULT_QUANTILE = 0.9
DEFAULT_FRACTION = 0.5


def _size(size) -> tuple[int, int]:
    if isinstance(size, int | np.integer):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def _float(x) -> torch.Tensor:
    # numpy (often a read-only float16 memmap slice) is copied: torch cannot wrap read-only arrays
    return x.float() if isinstance(x, torch.Tensor) else torch.tensor(np.asarray(x), dtype=torch.float32)


def resize_image(image, size) -> torch.Tensor:
    """Step 1: (C,H,W) or (N,C,H,W) image(s) in [0,1] -> float32 torch at ``size`` (int or (H,W))."""
    x = _float(image)
    if x.ndim not in (3, 4):
        raise ValueError(f"image must be (C,H,W) or (N,C,H,W), got shape {tuple(x.shape)}")
    size = _size(size)
    if tuple(x.shape[-2:]) == size:
        return x
    y = F.interpolate(x[None] if x.ndim == 3 else x, size=size, mode="bilinear", align_corners=False,
                      antialias=True)
    return y[0] if x.ndim == 3 else y


def upsample_maps(fmaps, size) -> torch.Tensor:
    """Step 2: feature maps (..., h, w) (numpy float16/32 or torch) -> float32 (..., H, W)."""
    a = _float(fmaps)
    size = _size(size)
    if tuple(a.shape[-2:]) == size:
        return a
    lead = a.shape[:-2]
    up = F.interpolate(a.reshape(-1, 1, *a.shape[-2:]), size=size, mode="bilinear", align_corners=False)
    return up.reshape(*lead, *size)


def neuron_quantiles(fmaps, q: float = DEFAULT_QUANTILE, *, chunk: int = 64) -> np.ndarray:
    """Per neuron j, the q-quantile of all raw values ``fmaps[:, j, :, :]`` over the dataset -> (n,) float32.

    ``fmaps`` (N,n,h,w) may be a float16 memmap: ``chunk`` neurons at a time are read and cast to
    float32 (N·chunk·h·w floats in memory), so N=8000, n=512, 4×4 maps never need the whole array.
    """
    if fmaps.ndim != 4:
        raise ValueError(f"fmaps must be (N,n,h,w), got shape {tuple(fmaps.shape)}")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile q must be in [0, 1], got {q}")
    n = fmaps.shape[1]
    out = np.empty(n, dtype=np.float32)
    for j in range(0, n, chunk):
        block = fmaps[:, j:j + chunk]
        block = block.numpy() if isinstance(block, torch.Tensor) else np.asarray(block)
        block = block.astype(np.float32)  # (N,c,h,w)
        values = np.moveaxis(block, 1, 0).reshape(block.shape[1], -1)  # (c, N·h·w)
        out[j:j + chunk] = np.quantile(values, q, axis=1)
    return out


def thresholds(up_maps, mode: str, value: float | None, neuron_thresholds=None) -> torch.Tensor:
    """Step 3's threshold per neuron for upsampled maps (..., n, H, W) -> (..., n) float32.

    quantile: ``neuron_thresholds`` (the dataset quantiles, required; ``value`` ignored); fraction:
    value × each map's max on this image (``value`` None: ``DEFAULT_FRACTION``); absolute: ``value``
    for all neurons (required).
    """
    up = _float(up_maps)
    lead = up.shape[:-2]
    if mode == "quantile":
        if neuron_thresholds is None:
            raise ValueError("quantile thresholds need neuron_thresholds (per-neuron dataset quantiles, "
                             "see neuron_quantiles)")
        t = _float(neuron_thresholds)
        if t.ndim != 1 or len(lead) == 0 or t.shape[0] != lead[-1]:
            raise ValueError(f"neuron_thresholds must be ({lead[-1] if lead else '?'},), "
                             f"got shape {tuple(t.shape)}")
        return t.expand(lead)
    if mode == "fraction":
        value = DEFAULT_FRACTION if value is None else float(value)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"fraction threshold must be in [0, 1], got {value}")
        return value * up.amax(dim=(-2, -1))
    if mode == "absolute":
        if value is None:
            raise ValueError("absolute thresholds need a value")
        return torch.full(lead, float(value))
    raise ValueError(f"unknown threshold mode {mode!r}; valid modes: {', '.join(THRESHOLD_MODES)}")


def rf_masks(fmaps, size, *, mode: str = DEFAULT_MODE, value: float | None = None,
             neuron_thresholds=None) -> torch.Tensor:
    """Steps 2–3: (n,h,w) maps of one image -> bool masks (n,H,W); (N,n,h,w) -> (N,n,H,W).

    quantile/absolute: ``up > T`` (empty for a dead neuron); fraction: ``up >= value·max`` where the
    map's max on this image is > 0, else empty. ``value``: ignored for quantile, ``DEFAULT_FRACTION``
    for fraction, required for absolute.
    """
    if mode not in THRESHOLD_MODES:
        raise ValueError(f"unknown threshold mode {mode!r}; valid modes: {', '.join(THRESHOLD_MODES)}")
    up = upsample_maps(fmaps, size)
    if up.ndim not in (3, 4):
        raise ValueError(f"fmaps must be (n,h,w) or (N,n,h,w), got shape {tuple(up.shape)}")
    t = thresholds(up, mode, value, neuron_thresholds)[..., None, None]
    if mode == "fraction":
        # >= keeps the peak pixel; a map whose peak is <= 0 (dead on this image) has no RF
        return (up >= t) & (up.amax(dim=(-2, -1), keepdim=True) > 0)
    return up > t  # strict: a dead neuron (T = 0, map all 0) gets an empty RF


def receptive_fields(image, fmaps, size=None, **mask_kw) -> tuple[torch.Tensor, torch.Tensor]:
    """All four steps for every neuron of one image: (C,H,W) image and (n,h,w) maps ->
    (rf (n,C,S,S) float32, masks (n,S,S) bool). ``size`` None: the image's own (H,W); int or (H,W).

    Also batched: (N,C,H,W) images with (N,n,h,w) maps -> (N,n,C,S,S), (N,n,S,S).
    ``mask_kw``: ``mode``, ``value``, ``neuron_thresholds`` of ``rf_masks``.
    """
    img = _float(image)
    size = tuple(img.shape[-2:]) if size is None else _size(size)
    x = resize_image(img, size)
    masks = rf_masks(fmaps, size, **mask_kw)
    if masks.ndim != x.ndim:
        raise ValueError(f"image {tuple(img.shape)} and fmaps {tuple(fmaps.shape)} disagree: give "
                         "(C,H,W) with (n,h,w), or (N,C,H,W) with (N,n,h,w)")
    return x.unsqueeze(-4) * masks.unsqueeze(-3), masks


def _bool(m) -> torch.Tensor:
    if isinstance(m, list | tuple):
        return torch.stack([_bool(x) for x in m]) if m else torch.zeros(0, dtype=torch.bool)
    return m.bool() if isinstance(m, torch.Tensor) else torch.tensor(np.asarray(m), dtype=torch.bool)


def iou(a, b, *, empty: float = 0.0) -> torch.Tensor:
    """|a ∧ b| / |a ∨ b| of bool masks (broadcast over leading dims, last two reduced) -> float32;
    ``empty`` where the union is empty (0.0 for ranking, 1.0 for the clustering distance)."""
    a, b = _bool(a), _bool(b)
    inter = (a & b).sum(dim=(-2, -1))
    uni = (a | b).sum(dim=(-2, -1))
    return torch.where(uni > 0, inter / uni.clamp(min=1), torch.tensor(float(empty))).float()


def union(masks) -> torch.Tensor:
    """(m,...,H,W) bool masks of m selected neurons -> (...,H,W): pixels in any RF (none: empty)."""
    return _bool(masks).any(dim=0)


def intersection(masks) -> torch.Tensor:
    """(m,...,H,W) bool masks of m selected neurons -> (...,H,W): pixels in every RF; m >= 1."""
    m = _bool(masks)
    if m.ndim == 0 or m.shape[0] == 0:
        raise ValueError("the intersection of zero masks is undefined: select at least one neuron")
    return m.all(dim=0)
