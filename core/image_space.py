"""Image space (paper §5.1): the Data Overview's selections and the Image Grid View's sorts.

- **Prediction matrix**: counts of pairs by (true label, adversarial label), rows = true label as in
  Fig. 2-a4. Only successful pairs exist, so the diagonal is empty.
- **Selection**: the pairs in a clicked matrix cell and/or a box/lasso set of the scatterplots; when
  both are set the grid shows their intersection (the user narrowed the cell with a lasso, or the
  other way round); neither set means every pair.
- **Grid sorts** (``SORTS``), the four of §5.1:

  * ``"l2_increasing"`` / ``"l2_decreasing"``: the L2 norm of the perturbation ‖a − b‖₂ in [0,1]
    pixel units;
  * ``"benign_drop"``: decreasing drop of the benign label's probability, p_b(B) − p_a(B);
  * ``"adversarial_rise"``: decreasing rise of the adversarial label's probability, p_a(A) − p_b(A).

  Ties go to the lower pair id, so pages and links are reproducible.
- **Pages** of the grid: ``page`` (0-based) of ``per_page`` pairs, clamped to the last page.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

SORTS = {"l2_increasing": "L2 perturbation, increasing", "l2_decreasing": "L2 perturbation, decreasing",
         "benign_drop": "drop of the benign label's probability",
         "adversarial_rise": "rise of the adversarial label's probability"}
DEFAULT_SORT = "l2_increasing"


def prediction_matrix(pairs: pd.DataFrame, num_classes: int) -> np.ndarray:
    """(classes, classes) int64 counts; [true label, adversarial label]."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (pairs["label"].to_numpy(np.int64), pairs["adv_label"].to_numpy(np.int64)), 1)
    return m


def select(pairs: pd.DataFrame, cell: tuple[int, int] | None = None, ids=None) -> np.ndarray:
    """Pair ids (sorted) in ``cell`` (true, adversarial) and in ``ids``; None leaves that filter off."""
    keep = np.ones(len(pairs), dtype=bool)
    if cell is not None:
        keep &= (pairs["label"].to_numpy() == cell[0]) & (pairs["adv_label"].to_numpy() == cell[1])
    if ids is not None:
        chosen = np.zeros(len(pairs), dtype=bool)
        ids = np.asarray(list(ids), dtype=np.int64)
        chosen[ids[(ids >= 0) & (ids < len(pairs))]] = True
        keep &= chosen
    return pairs["pair"].to_numpy(np.int64)[keep]


def sort_key(pairs: pd.DataFrame, sort: str) -> np.ndarray:
    """The value each sort orders by, ascending (so decreasing sorts are negated)."""
    if sort == "l2_increasing":
        return pairs["l2"].to_numpy(np.float64)
    if sort == "l2_decreasing":
        return -pairs["l2"].to_numpy(np.float64)
    if sort == "benign_drop":
        # float64 before subtracting: 1.0f − 1e-9 rounds to 1.0 in float32 and would tie strong attacks
        return -(pairs["benign_prob"].to_numpy(np.float64) - pairs["benign_prob_adv"].to_numpy(np.float64))
    if sort == "adversarial_rise":
        return -(pairs["adv_prob"].to_numpy(np.float64) - pairs["adv_prob_benign"].to_numpy(np.float64))
    raise ValueError(f"unknown grid sort {sort!r}; sorts: {', '.join(SORTS)}")


def sort_pairs(pairs: pd.DataFrame, ids, sort: str = DEFAULT_SORT) -> np.ndarray:
    """``ids`` reordered by ``sort`` (ties by lower pair id)."""
    ids = np.asarray(ids, dtype=np.int64)
    key = sort_key(pairs, sort)[ids]
    return ids[np.lexsort((ids, key))]


def page(ids, page: int, per_page: int) -> tuple[np.ndarray, int, int]:
    """(the ids on ``page``, the page actually shown after clamping, the number of pages)."""
    ids = np.asarray(ids)
    pages = max(1, -(-len(ids) // per_page))
    p = min(max(int(page), 0), pages - 1)
    return ids[p * per_page:(p + 1) * per_page], p, pages
