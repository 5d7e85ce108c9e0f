"""Context images for one neuron (paper §5.3, "One Neuron–Multiple Images", Fig. 5).

Clicking a neuron's receptive field (RF) in the Receptive Field View lists the top-m images of the
current selection (e.g. one Prediction Matrix cell) with that neuron's RFs, as visual evidence of what
the neuron captures.

``top_images(store, neuron, pairs, m, sort, side)`` ranks the pair ids ``pairs`` by a score, highest
first, and keeps m of them:

- ``sort="activation"`` (sorting option 1, "images that maximally excite the neuron"): the neuron's
  pooled activation on that side's image, ``store.array(f"{side}_pooled")[pair, neuron]``;
- ``sort="confidence"`` (sorting option 2, "the highest prediction confidence"): the probability of the
  side's predicted class on the side's image: ``pairs.benign_prob`` (the true class, which is the
  benign prediction) for ``side="benign"``, ``pairs.adv_prob`` (the adversarial label) for
  ``side="adversarial"``.

``side`` is the image shown (and the side of the ``activation`` and ``confidence`` columns);
``ranked_by`` (default: ``side``) is the side whose score ranks the pairs. The paper's Fig. 5 sentence
("the system first extracts the top-m images for the benign images' adversarial counterparts") reads
two ways, and both are offered (``READINGS``):

- ``"own"``: ``side="adversarial", ranked_by="adversarial"``: the adversarial images ranked by their own
  activation or confidence, so the benign and adversarial lists may hold different pairs;
- ``"counterparts"``: ``side="adversarial", ranked_by="benign"``: the adversarial counterparts of the
  benign top-m, in the benign order, so both lists hold the same pairs and the neuron's RF can be
  compared image by image.

Choices: ties go to the lower pair id (a reproducible order); ``pairs=None`` means every pair; the
selection is a set (duplicate ids count once); ids out of range, a neuron out of range, or an unknown
side or sort raise ValueError; an empty selection gives an empty frame with the same columns. The
frame has one row per listed pair: pair, rank (0 = top), score (the sort key, on ``ranked_by``),
activation (``side``'s pooled activation of the neuron), confidence (``side``'s confidence as above),
label, adv_label.
Rows of ``store.pairs`` are in pair-id order (``pair`` is the row number of every per-pair array).

``context_receptive_fields(store, neuron, pairs, side, rf_fn)`` returns, per pair id in the given
order, the side's image (float32 (C,H,W) in [0,1], ``store.pair_images``) and the neuron's RF mask
computed by the injected ``rf_fn(fmap, image)`` from the stored feature map
``store.array(f"{side}_fmaps")[pair, neuron]`` (h,w) as float32. The RF method is injected so this
module stays independent of it; ``core.analysis.Analysis.context_images`` does both for a page (the
frame, and each listed pair's ``side`` image with the neuron's RF at the page's threshold), for either
reading.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

SORTS = ("activation", "confidence")
SIDES = ("benign", "adversarial")
READINGS = {"own": "adversarial", "counterparts": "benign"}  # reading -> ranked_by for the adversarial row
COLUMNS = ("pair", "rank", "score", "activation", "confidence", "label", "adv_label")
_CONFIDENCE = {"benign": "benign_prob", "adversarial": "adv_prob"}
# the same order without ties at p = 1.0 (float32): log-odds from the logits (core.probability), where the
# store provides them
_CONFIDENCE_ORDER = {"benign": "benign_log_odds", "adversarial": "adv_log_odds"}


def _check_side(side: str) -> None:
    if side not in SIDES:
        raise ValueError(f"side must be 'benign' or 'adversarial', got {side!r}")


def _check_neuron(store, neuron, side: str) -> None:
    n = store.array(f"{side}_pooled").shape[1]
    if not isinstance(neuron, (int, np.integer)) or isinstance(neuron, bool) or not 0 <= neuron < n:
        raise ValueError(f"neuron must be an integer in [0, {n}), got {neuron!r}")


def _check_ids(store, pairs) -> np.ndarray:
    """``pairs`` as int64 pair ids (order and repeats kept), validated against the store."""
    ids = np.asarray(pairs).ravel()
    if ids.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(ids.dtype, np.integer):  # booleans and floats are not pair ids
        raise ValueError(f"pairs must be integer pair ids (e.g. np.flatnonzero(mask)), got dtype {ids.dtype}")
    total = len(store.pairs)
    bad = ids[(ids < 0) | (ids >= total)]
    if bad.size:
        raise ValueError(f"pair ids out of range [0, {total}): {bad[:5].tolist()}"
                         f"{' …' if bad.size > 5 else ''}")
    return ids.astype(np.int64)


def _pair_ids(store, pairs) -> np.ndarray:
    """The selection as sorted unique pair ids; None = every pair."""
    if pairs is None:
        return np.arange(len(store.pairs), dtype=np.int64)
    return np.unique(_check_ids(store, pairs))


def _empty() -> pd.DataFrame:
    dtypes = {"pair": "int64", "rank": "int64", "score": "float64", "activation": "float64",
              "confidence": "float64", "label": "int64", "adv_label": "int64"}
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in dtypes.items()})


def _scores(store, neuron: int, ids: np.ndarray, side: str) -> tuple[np.ndarray, np.ndarray]:
    """(activation, confidence) of ``side``'s images of pairs ``ids`` for ``neuron``, float64."""
    activation = np.asarray(store.array(f"{side}_pooled")[ids, neuron], dtype=np.float64)
    confidence = store.pairs[_CONFIDENCE[side]].to_numpy(np.float64)[ids]
    return activation, confidence


def top_images(store, neuron: int, pairs=None, *, m: int = 6, sort: str = "activation",
               side: str = "benign", ranked_by: str | None = None) -> pd.DataFrame:
    """The top-m pairs of ``pairs`` for ``neuron`` by ``sort`` on ``ranked_by`` (default ``side``), with
    ``side``'s activation and confidence (see the module docstring)."""
    _check_side(side)
    ranked_by = side if ranked_by is None else ranked_by
    _check_side(ranked_by)
    if sort not in SORTS:
        raise ValueError(f"sort must be 'activation' or 'confidence', got {sort!r}")
    _check_neuron(store, neuron, side)
    if not isinstance(m, (int, np.integer)) or m < 0:
        raise ValueError(f"m must be a non-negative integer, got {m!r}")
    ids = _pair_ids(store, pairs)
    if ids.size == 0:
        return _empty()
    activation, confidence = _scores(store, neuron, ids, side)
    table = store.pairs
    score = _scores(store, neuron, ids, ranked_by)[0 if sort == "activation" else 1]
    key = score
    if sort == "confidence" and _CONFIDENCE_ORDER[ranked_by] in table:
        key = table[_CONFIDENCE_ORDER[ranked_by]].to_numpy(np.float64)[ids]
    order = np.lexsort((ids, -key))[:m]  # descending score, then ascending pair id
    sel = ids[order]
    return pd.DataFrame({"pair": sel, "rank": np.arange(len(sel), dtype=np.int64),
                         "score": score[order], "activation": activation[order],
                         "confidence": confidence[order],
                         "label": table["label"].to_numpy(np.int64)[sel],
                         "adv_label": table["adv_label"].to_numpy(np.int64)[sel]})


def context_receptive_fields(store, neuron: int, pairs, *, side: str,
                             rf_fn: Callable[[np.ndarray, np.ndarray], np.ndarray]
                             ) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(image (C,H,W) float32 in [0,1], RF mask (H,W) bool)] for each pair id, in the given order."""
    _check_side(side)
    _check_neuron(store, neuron, side)
    ids = _check_ids(store, pairs)
    fmaps = store.array(f"{side}_fmaps")
    out = []
    for p in ids.tolist():  # only the m listed images: each needs its own RF computation anyway
        image = store.pair_images(p)[0 if side == "benign" else 1]
        mask = np.asarray(rf_fn(np.asarray(fmaps[p, neuron], dtype=np.float32), image), dtype=bool)
        if mask.shape != image.shape[1:]:
            raise ValueError(f"rf_fn returned a mask of shape {mask.shape}, expected {image.shape[1:]}")
        out.append((image, mask))
    return out

