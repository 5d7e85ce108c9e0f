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


SELECT_ELEMENTS = 1 << 21  # values per step of neuron_quantiles' selection (~16 MB per uint64 temporary)


def neuron_quantiles(fmaps, q: float = DEFAULT_QUANTILE, *, blocks=None, block_bytes: int = 64 << 20
                     ) -> np.ndarray:
    """Per neuron j, the q-quantile of all raw values ``fmaps[:, j, :, :]`` over the dataset -> (n,) float32,
    exactly ``np.quantile(values, q)`` (linear interpolation between order statistics k = ⌊q(M−1)⌋ and
    k + 1 of the M = N·h·w values), without holding the values: a radix selection.

    ``fmaps``: an (N,n,h,w) array, memmap or tensor. ``blocks``: None (rows of ``block_bytes`` sliced
    from ``fmaps``), or a zero-argument callable returning an iterator of ``fmaps``' (rows,n,h,w) row
    blocks in order (``Store.row_blocks``: read without mapping, so a multi-GB store leaves the
    process's RSS alone; ``fmaps`` then gives only the shape and dtype). Floats are mapped to
    order-preserving unsigned keys; one pass per key byte (2 for the store's float16, 4 for float32)
    counts, per neuron, the next byte of the keys that share the already chosen high bytes of the
    wanted order statistic. Memory: one block, a few
    uint64 temporaries of ``SELECT_ELEMENTS`` values (rows of a block are taken that many at a time),
    and n×256 counters.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile q must be in [0, 1], got {q}")
    arr = fmaps.numpy() if isinstance(fmaps, torch.Tensor) else fmaps
    if arr.ndim != 4:
        raise ValueError(f"fmaps must be (N,n,h,w), got shape {tuple(arr.shape)}")
    if len(arr) == 0:
        raise ValueError("neuron_quantiles needs at least one image's maps")
    if blocks is None:
        rows = max(1, block_bytes // max(1, arr[:1].nbytes))
        blocks = lambda: (arr[i:i + rows] for i in range(0, len(arr), rows))  # noqa: E731
    dtype, n, per_row = np.dtype(arr.dtype), arr.shape[1], int(np.prod(arr.shape[1:]))
    if dtype not in (np.float16, np.float32):
        dtype = np.dtype(np.float32)
    bits = np.dtype(dtype).itemsize * 8
    ukey = np.uint16 if bits == 16 else np.uint32
    sign = ukey(1 << (bits - 1))

    def keys(block):  # (rows,n,h,w) floats -> (n, rows·h·w) order-preserving unsigned keys
        b = np.ascontiguousarray(np.asarray(block, dtype=dtype)).view(ukey)
        k = np.where(b & sign, ~b, b | sign)
        return np.moveaxis(k, 1, 0).reshape(n, -1)

    total = len(arr) * int(np.prod(arr.shape[2:]))  # values per neuron, from the shape: no extra pass
    h = q * (total - 1)
    lo = int(np.floor(h))
    ranks = np.array([lo, min(lo + 1, total - 1)], dtype=np.int64)  # the two order statistics
    prefix = np.zeros((2, n), dtype=np.uint64)  # chosen high bytes of each statistic's key, per neuron
    left = np.repeat(ranks[:, None], n, axis=1)  # rank still to find among keys sharing the prefix
    rows_n = np.arange(n)[:, None]
    sub = max(1, SELECT_ELEMENTS // max(1, per_row))  # rows per pass: bounds the uint64 temporaries
    for shift in range(bits - 8, -8, -8):
        counts = np.zeros((2, n, 256), dtype=np.int64)
        for block in (b[i:i + sub] for b in blocks() for i in range(0, len(b), sub)):
            k = keys(block).astype(np.uint64)
            digit = ((k >> np.uint64(shift)) & np.uint64(255)).astype(np.int64)
            high = k >> np.uint64(shift + 8)
            for t in range(2):
                match = high == (prefix[t][:, None] >> np.uint64(shift + 8))
                idx = (rows_n * 256 + digit)[match]
                counts[t] += np.bincount(idx, minlength=n * 256).reshape(n, 256)
        for t in range(2):
            cum = np.cumsum(counts[t], axis=1)
            d = (cum <= left[t][:, None]).sum(axis=1)  # first digit whose cumulative count passes the rank
            below = np.where(d > 0, cum[np.arange(n), np.maximum(d - 1, 0)], 0)
            left[t] -= below
            prefix[t] |= d.astype(np.uint64) << np.uint64(shift)
    key = prefix.astype(ukey)
    values = np.where(key & sign, key ^ sign, ~key).view(dtype).astype(np.float64)  # undo the key map
    return (values[0] + (h - lo) * (values[1] - values[0])).astype(np.float32)


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
             neuron_thresholds=None, block_bytes: int = 64 << 20) -> torch.Tensor:
    """Steps 2–3: (n,h,w) maps of one image -> bool masks (n,H,W); (N,n,h,w) -> (N,n,H,W).

    quantile/absolute: ``up > T`` (empty for a dead neuron); fraction: ``up >= value·max`` where the
    map's max on this image is > 0, else empty. ``value``: ignored for quantile, ``DEFAULT_FRACTION``
    for fraction, required for absolute. One image's neurons are upsampled ``block_bytes`` of float32
    at a time (each mask depends on its own map only), so 1,280 maps at 224 px never need 257 MB.
    """
    if mode not in THRESHOLD_MODES:
        raise ValueError(f"unknown threshold mode {mode!r}; valid modes: {', '.join(THRESHOLD_MODES)}")
    h, w = _size(size)
    per = max(1, block_bytes // (4 * h * w))
    if np.ndim(fmaps) == 3 and len(fmaps) > per:
        t = None if neuron_thresholds is None else _float(neuron_thresholds)
        if t is not None and t.shape != (len(fmaps),):
            raise ValueError(f"neuron_thresholds must be ({len(fmaps)},), got shape {tuple(t.shape)}")
        return torch.cat([rf_masks(fmaps[lo:lo + per], (h, w), mode=mode, value=value,
                                   neuron_thresholds=None if t is None else t[lo:lo + per])
                          for lo in range(0, len(fmaps), per)])
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


COMBINE = {"union": union, "intersection": intersection}  # how the RFs of selected neurons combine


def combine(masks, how: str) -> torch.Tensor:
    """``union`` or ``intersection`` (``how``, a key of ``COMBINE``) of (m,...,H,W) bool masks."""
    if how not in COMBINE:
        raise ValueError(f"how must be one of {tuple(COMBINE)}, got {how!r}")
    return COMBINE[how](masks)
