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

  Ties go to the lower pair id, so pages and links are reproducible. The drop and the rise are read
  from the table's exact float64 columns of the same names, which ``Store.pairs`` computes from the
  stored logits (``core.probability``): the stored float32 probabilities of a confident model are 1.0
  for many pairs (p_b(B) for most benign images, p_a(A) for strong attacks), and their differences
  would tie those pairs. A table without these columns (a hand-made frame) falls back to subtracting
  its probability columns in float64.
- **Pages** of the grid: ``page`` (0-based) of ``per_page`` pairs, clamped to the last page.
- **Class subset** (paper §6.2.2, Places365): above ``SUBSET_ABOVE`` classes the matrix cannot show every
  row and column and colours cannot tell the classes apart, so the views show the pairs of a subset:
  ``TOP_CLASSES`` benign classes with the most successful attacks, and the ``TOP_CLASSES`` adversarial
  labels most frequent among their pairs (``class_subset``); the user may change either list.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

SORTS = {"l2_increasing": "L2 perturbation, increasing", "l2_decreasing": "L2 perturbation, decreasing",
         "benign_drop": "drop of the benign label's probability",
         "adversarial_rise": "rise of the adversarial label's probability"}
DEFAULT_SORT = "l2_increasing"
SUBSET_ABOVE = 20   # more classes than this get a class subset: the palette has 20 distinct colours
TOP_CLASSES = 10    # the paper's "top-10 benign classes" and "top-10 adversarial labels"


def prediction_matrix(pairs: pd.DataFrame, num_classes: int) -> np.ndarray:
    """(classes, classes) int64 counts; [true label, adversarial label]."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (pairs["label"].to_numpy(np.int64), pairs["adv_label"].to_numpy(np.int64)), 1)
    return m


def _top(labels: np.ndarray, n_classes: int, k: int) -> np.ndarray:
    """The ``k`` most frequent of ``labels`` (only classes that occur), ties to the lower class id,
    returned in class-id order."""
    counts = np.bincount(labels, minlength=n_classes)
    ranked = np.lexsort((np.arange(n_classes), -counts))[:max(int(k), 0)]  # count decreasing, then id
    return np.sort(ranked[counts[ranked] > 0])


def class_subset(pairs: pd.DataFrame, n_classes: int, top_benign: int = TOP_CLASSES,
                 top_adversarial: int = TOP_CLASSES, benign=None) -> tuple[np.ndarray, np.ndarray]:
    """(benign classes, adversarial classes), each sorted by class id, by the rule of paper §6.2.2.

    Benign classes: the ``top_benign`` true labels with the most pairs (every stored pair is an image
    misclassified after the attack). Adversarial classes: the ``top_adversarial`` adversarial labels
    most frequent among the pairs whose true label is a benign class. Only classes with at least one
    such pair are taken (so fewer come back when fewer exist); ties go to the lower class id.
    ``benign`` (class ids) replaces the first step: the adversarial classes then follow the user's
    benign classes."""
    label = pairs["label"].to_numpy(np.int64)
    adv = pairs["adv_label"].to_numpy(np.int64)
    if benign is None:
        benign = _top(label, n_classes, top_benign)
    else:
        benign = np.unique(np.asarray(list(benign), dtype=np.int64))
    within = np.isin(label, benign)
    return benign, _top(adv[within], n_classes, top_adversarial)


def resolve_subset(pairs: pd.DataFrame, n_classes: int, benign=None, adversarial=None
                   ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The subset the views show for a selection's (``benign``, ``adversarial``) class lists, where None
    means the rule of ``class_subset``: (benign, adversarial, the ids ignored as outside
    [0, n_classes)). A list whose every id is out of range (a stale link) falls back to the rule; an
    empty list stays empty (the user removed every class)."""
    ignored: list[int] = []

    def valid(ids):
        if ids is None:
            return None
        ids = [int(i) for i in ids]
        ok = [i for i in ids if 0 <= i < n_classes]
        ignored.extend(i for i in ids if not 0 <= i < n_classes)
        return None if ids and not ok else np.unique(np.asarray(ok, dtype=np.int64))

    b, a = valid(benign), valid(adversarial)
    b, rule_a = class_subset(pairs, n_classes, benign=b)
    return b, rule_a if a is None else a, sorted(set(ignored))


def restrict_matrix(matrix: np.ndarray, rows, cols) -> np.ndarray:
    """The prediction matrix's ``rows`` (true labels) × ``cols`` (adversarial labels), in that order."""
    return matrix[np.ix_(np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64))]


def in_subset(pairs: pd.DataFrame, benign=None, adversarial=None) -> np.ndarray:
    """A mask of the pairs whose true label is in ``benign`` and adversarial label in ``adversarial``
    (None leaves that side unfiltered)."""
    keep = np.ones(len(pairs), dtype=bool)
    if benign is not None:
        keep &= np.isin(pairs["label"].to_numpy(np.int64), np.asarray(list(benign), dtype=np.int64))
    if adversarial is not None:
        keep &= np.isin(pairs["adv_label"].to_numpy(np.int64), np.asarray(list(adversarial), dtype=np.int64))
    return keep


def cell_in_subset(cell: tuple[int, int] | None, benign, adversarial) -> bool:
    """Whether a matrix cell (true, adversarial) is a cell of the subset's matrix (None is)."""
    return cell is None or (int(cell[0]) in np.asarray(benign).tolist()
                            and int(cell[1]) in np.asarray(adversarial).tolist())


def select(pairs: pd.DataFrame, cell: tuple[int, int] | None = None, ids=None, benign=None,
           adversarial=None) -> np.ndarray:
    """Pair ids (sorted) in ``cell`` (true, adversarial), in ``ids``, and in the class subset
    (``in_subset``); None leaves that filter off."""
    keep = in_subset(pairs, benign, adversarial)
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
    if sort in ("benign_drop", "adversarial_rise") and sort in pairs.columns:
        return -pairs[sort].to_numpy(np.float64)  # exact, from the logits (Store.pairs)
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
