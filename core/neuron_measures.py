"""Neuron-perturbation measure (paper §5.2.1): activation×weight curves, class bands, band gap,
curve difference, activation difference, direct neuron substitution, and the IoU ranking of the
image-perturbation measure.

Notation: ``p`` is a pooled vector (n,) (last-conv feature maps average-pooled, one value per neuron),
``W`` (classes, n) and ``b`` (classes,) are the final dense layer (``logits = W p + b``), ``B`` the benign
(true) class of the selected pair and ``A`` its adversarial class.

**Activation×weight** (``activation_times_weight``). The Neuron Vulnerability View plots, per neuron j,
``p[j] · W[k, j]``: neuron j's contribution to the logit of class k. The benign curve is the benign
image's ``p`` times row ``W[B]``; the adversarial curve is the adversarial image's ``p`` times row
``W[A]`` (the two classes have different weight rows, paper §5.2.1). Results are float64.

**Per-class statistics** (``class_statistics``, computed once by ``prepare`` and stored in
``class_stats.npz``). Because ``W[k, j]`` is one scalar per neuron and class, every interval of
activation×weight follows from the same interval of the activations (scaled by W[k, j], the bounds
swapping when W[k, j] < 0). The store therefore keeps, per class and neuron, the count, mean, standard
deviation and a set of quantiles (``QUANTILE_LEVELS``) of the pooled activations over two populations:

- ``benign_*``: correctly classified benign images of each true class (all of them, not only the
  attacked ones, for the most stable bands);
- ``adversarial_*``: successful adversarial images grouped by adversarial label.

**Class band** (``class_band``): an interval [lo, hi] of activation×weight of class k over the images
of one population, per neuron. ``interval`` chooses what the interval describes:

- ``"quantile"`` (default): the central ``coverage`` interval of the per-image activations, the
  quantiles at (1−coverage)/2 and (1+coverage)/2. Only coverages whose two levels are stored are
  available (0.5, 0.8, 0.9, 0.95, 1.0); any other raises ValueError.
- ``"std"``: mean ± z·std with z = Φ⁻¹((1+coverage)/2) (a normal reference interval).
- ``"ci"``: a confidence interval of the class *mean*, mean ± t_{(1+coverage)/2, count−1}·std/√count
  (Student t); a class with a single image gives the mean itself (no spread to estimate).

Then ``[lo·w, hi·w]`` when w = W[k, j] ≥ 0 and ``[hi·w, lo·w]`` when w < 0. A class with no image in the
population gives NaN bounds (and so a NaN band gap, ranked last).

*Why the quantile interval by default, although the paper says "confidence interval":* the paper's
band shows that the activations "share a roughly similar pattern across images within the same
class", i.e. where the class's individual images lie. A CI of the mean shrinks as 1/√count (≈ 1/√800
for a CIFAR-10 class), so with many images the two bands collapse onto the class means and the band gap
degenerates into a difference of class means, losing the "does the attack move the neuron outside the
class's usual range" reading. A quantile interval keeps the images' spread and is robust to outliers;
``"std"`` and ``"ci"`` remain available. The default coverage, 0.5 (the interquartile range), is a
constant (``DEFAULT_COVERAGE``) to retune after measurements.

**Which images form the adversarial class's band** (``pair_bands``, ``adversarial_band``). The benign
band is always the benign images of class B (× W[B]). For the adversarial band (× W[A]):

- ``"benign"`` (default, the paper): correctly classified benign images whose true class is A. Fig. 6
  contrasts "the adversarial image (orange curve) or images of the car class (orange band)": the band
  is the genuine class A, so the gap says how far the attack pushed the neuron towards real A images.
- ``"adversarial"``: the successful adversarial images predicted as A (by the attack, from any class).

**Band gap** (``band_gap``), exactly the paper's formula with a = adversarial, b = benign::

    BG((CLa, CUa), (CLb, CUb)) = CUa − CLb   if CLb > CUa
                                 CLa − CUb   if CLa > CUb
                                 0           otherwise

Both non-zero branches are the signed distance between the two bands: negative when the adversarial
band lies entirely below the benign band (the attack inhibits the neuron, region C of Fig. 4), positive
when entirely above (the attack excites it, region A); touching or overlapping bands give 0 (region
B). NaN bounds give NaN. Ranked descending (``rank``), region A is on the left and C on the right, as
in Fig. 4; the most vulnerable neurons are at both ends.

**Curve difference** (``curve_difference``): adversarial curve − benign curve, per neuron: the band
gap's per-image counterpart (one pair's curves instead of the classes' bands).

**Activation difference** (``activation_difference``): adversarial pooled activation − benign pooled
activation, per neuron, without any weight: the paper's first, "straightforward" answer to "how to
identify the most vulnerable neurons" (§5.2.1: "sort the neurons based on the difference between neuron
activations for the benign and adversarial images"), which it sets aside because activations alone do
not say which class a neuron speaks for. Ranked descending like the others: the neurons the attack
excites most on the left, those it silences most on the right.

**Rank** (``rank``): neuron ids ordered by a measure, descending by default; NaNs last, ties broken by
the lower neuron id (a stable, reproducible order).

**Direct neuron substitution** (``substitution_effect``): for every neuron j, the benign pooled vector
with entry j replaced by the adversarial image's value, ``p_j = p_B; p_j[j] = p_A[j]``, pushed through
the head: ``y(p_j)`` with y = softmax(W p + b) (``output="probability"``) or the logits
(``output="logit"``). Returned per neuron:

- ``benign_decrease[j] = y_B(p_B) − y_B(p_j)`` (how much the substitution lowers the benign class),
- ``adversarial_increase[j] = y_A(p_j) − y_A(p_B)`` (how much it raises the adversarial class),

so, as in the vulnerability maps (core.vulnerability), larger means more vulnerable. This is exact with
no CNN forward: the head is linear in the pooled vector and the pooled vector is all the CNN passes
on. The n substituted vectors form one (n, n) matrix run through the head in one matrix product, in
float64.

**IoU ranking** (``iou_ranking``, the image-perturbation measure's last step): for each neuron's
receptive-field mask RF_j (H, W) and one binarized vulnerability map V (bMap or aMap),
``IoU_j = |RF_j ∧ V| / |RF_j ∨ V|``, 0 when both masks are empty (nothing to overlap), computed for all
neurons at once; neurons are ranked by descending IoU.

**The registry** (``MEASURES``): one ``Measure`` per way the neurons can be ranked (the sorts of the
Neuron ranking page), in menu order: its key, label, plain words, the function from one pair's inputs
(``PairInput``: pooled vectors, head, classes, bands, curves, substitution effects, the IoU arrays when
the maps are there) to its (n,) values, whether it needs the vulnerability maps or the head's weights,
and how its value reads.

**Heads without activation×weight.** Everything above that reads W assumes the head is global average
pooling into one linear layer (or a 1×1 convolution into class maps, then the average: the same by
linearity). For any other head (an MLP, max or attention pooling, a norm after the pooling,
``core.models.ExplainedModel.head_type`` "other") a neuron's contribution to a logit is not
``p[j] · W[k, j]``, so the curves, bands, band gap, curve difference and substitution are not computed
(``pair_input`` with ``weight=None``; ``Measure.needs_weights``); the activation difference and the IoU
measures need no weights and are kept, with ``p`` the global average of each neuron's map.
The sort menu, the selection's and the link's validation (``core.ui.state.NEURON_SORTS``), the chart's
hover columns, the neuron's detail text, ``Analysis.neuron_measures`` and the tests iterate over it, so
a new measure is its function, its entry here and its test.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from core.probability import log_odds, sigmoid_difference

QUANTILE_LEVELS = np.array([0.0, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.975, 1.0])

INTERVALS = ("quantile", "std", "ci")
DEFAULT_INTERVAL = "quantile"
DEFAULT_COVERAGE = 0.5
POPULATIONS = ("benign", "adversarial")
ADVERSARIAL_BANDS = ("benign", "adversarial")
DEFAULT_ADVERSARIAL_BAND = "benign"
OUTPUTS = ("probability", "logit")

# -- plain words -----------------------------------------------------------------------------------------
# What each term and setting means, for a reader who knows the images but not the code: the app's "?"
# tooltips read them from here, so every page says the same thing. Each measure's own words are in its
# registry entry (``MEASURES``: ``help``, and ``summary`` for the sort menu, where all of them are listed at
# once); ``HELP`` (built at the end of the module) holds them under the measure's key beside the other
# terms below; INTERVAL_HELP: the band intervals. The words follow the page's: "benign" is the original
# image and its true class, "adversarial" the attacked image and the class the attack made the model
# predict.
TERMS = {
    "activation_times_weight": (
        "How much the neuron pushes the model towards a class on one image: the neuron's average "
        "activity on the image times the weight the model's last layer gives it for that class. "
        "Positive: it speaks for the class; negative: against it. The benign curve is the original "
        "image with the benign class, the adversarial curve the attacked image with the adversarial "
        "class."),
    "class_band": (
        "The usual range of that value for a class: over the correctly classified original images of "
        "the class, how wide is set in Band settings. The benign band is the benign class's, the "
        "adversarial band the adversarial class's."),
    "regions": (
        "The sign of the band gap. A (excited): the adversarial class's usual range lies above the "
        "benign class's, so the attack pushes the neuron up. B (unaffected): the two ranges overlap. "
        "C (inhibited): it lies below, the attack pushes the neuron down. The neurons at both ends of "
        "the band-gap order (far left of A, far right of C) are the ones the paper looks at first."),
    "rank": (
        "The neuron's position in the chosen order: 1 is the highest value (the left end of the chart), "
        "the last rank the lowest (the right end)."),
    "substitution": (
        "Put only this neuron's value from the attacked image into the original image's, keep every "
        "other neuron as it was, and recompute the class probabilities: how the two classes' "
        "probabilities change (the direct-substitution sorts)."),
    "interval": "How each class band is computed from the class's images.",
    "coverage": (
        "How much each band covers: for quantiles, the share of the class's images inside it; for the "
        "other two, the confidence level. Wider bands overlap more, so fewer neurons get a non-zero "
        "band gap."),
}
INTERVAL_HELP = {
    "quantile": (
        "The middle share of the class's images, e.g. 50%: from the image at the 25th percentile to the "
        "one at the 75th. Shows where the individual images lie (the default)."),
    "std": ("The class average plus and minus a multiple of the spread (standard deviation), as for a "
            "bell-shaped spread of values."),
    "ci": (
        "The range in which the class's average probably lies (the paper's \"confidence interval\"). "
        "It narrows as the class has more images, so with many images the bands look like thin lines."),
}
INTERVAL_LABELS = {"quantile": "quantiles of the class's images", "std": "mean ± z·std",
                   "ci": "confidence interval of the mean"}


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


def _np(x, dtype=np.float64) -> np.ndarray:
    """A numpy array from numpy or torch input (torch parameters need detaching first)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def activation_times_weight(pooled, weight, cls: int) -> np.ndarray:
    """``pooled * weight[cls]``: pooled (..., n), weight (classes, n) → (..., n) float64."""
    weight = _np(weight)
    _check_class(cls, weight.shape[0])
    return _np(pooled) * weight[cls]


def _check_class(cls, num_classes: int) -> None:
    if not isinstance(cls, (int, np.integer)) or isinstance(cls, bool) or not 0 <= cls < num_classes:
        raise ValueError(f"class must be an integer in [0, {num_classes}), got {cls!r}")


def quantile_coverages(levels) -> list[float]:
    """The coverages the ``"quantile"`` interval offers: c with both (1−c)/2 and (1+c)/2 stored."""
    levels = np.asarray(levels, dtype=np.float64)
    return sorted(round(1 - 2 * lv, 6) for lv in levels
                  if lv < 0.5 and np.isclose(levels, 1 - lv, atol=1e-6).any())


def _level_index(levels: np.ndarray, target: float) -> int | None:
    hit = np.flatnonzero(np.isclose(levels, target, atol=1e-6))  # levels are stored as float32
    return int(hit[0]) if len(hit) else None


def class_band(stats: dict, population: str, cls: int, weight_row, *, interval: str = DEFAULT_INTERVAL,
               coverage: float = DEFAULT_COVERAGE) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper), each (n,) float64: the band of activation×weight of class ``cls`` over the
    images of ``population`` ("benign" or "adversarial" statistics), see the module docstring."""
    _check_choice("population", population, POPULATIONS)
    _check_choice("interval", interval, INTERVALS)
    count = np.asarray(stats[f"{population}_count"])
    _check_class(cls, len(count))
    upper_ok = coverage <= 1 if interval == "quantile" else coverage < 1  # z and t are infinite at 1
    if not (isinstance(coverage, (int, float, np.floating)) and 0 < coverage and upper_ok):
        raise ValueError(f"coverage must be in (0, 1{']' if interval == 'quantile' else ')'} for "
                         f"interval={interval!r}, got {coverage!r}")
    w = _np(weight_row)
    mean = _np(stats[f"{population}_mean"][cls])
    if w.shape != mean.shape:
        raise ValueError(f"weight_row has shape {w.shape}, the statistics have {mean.shape[0]} neurons")
    if interval == "quantile":
        levels = _np(stats[f"{population}_levels"])
        i_lo, i_hi = _level_index(levels, (1 - coverage) / 2), _level_index(levels, (1 + coverage) / 2)
        if i_lo is None or i_hi is None:
            avail = ", ".join(f"{c:g}" for c in quantile_coverages(levels))
            raise ValueError(f"coverage {coverage:g} is not available for the quantile interval: the store "
                             f"keeps quantiles for coverages {avail}; use one of those, or interval='std' "
                             "or 'ci'")
        q = _np(stats[f"{population}_quantiles"][cls])
        lo, hi = q[i_lo], q[i_hi]
    else:
        from scipy import stats as sps
        std = _np(stats[f"{population}_std"][cls])
        k = int(count[cls])
        if interval == "std":
            half = sps.norm.ppf((1 + coverage) / 2) * std
        elif k <= 1:
            half = np.zeros_like(mean)  # one image: no spread to estimate; the band is the mean itself
        else:
            half = sps.t.ppf((1 + coverage) / 2, k - 1) * std / np.sqrt(k)
        lo, hi = mean - half, mean + half
    if count[cls] == 0:
        nan = np.full_like(mean, np.nan)
        return nan, nan.copy()
    a, b = lo * w, hi * w
    neg = w < 0  # multiplying by a negative weight reverses the interval
    return np.where(neg, b, a), np.where(neg, a, b)


def pair_bands(stats: dict, weight, benign_class: int, adversarial_class: int, *,
               interval: str = DEFAULT_INTERVAL, coverage: float = DEFAULT_COVERAGE,
               adversarial_band: str = DEFAULT_ADVERSARIAL_BAND) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"benign": (lo, hi), "adversarial": (lo, hi)}: the benign class's band (its benign images ×
    W[B]) and the adversarial class's band (``adversarial_band`` images × W[A])."""
    _check_choice("adversarial_band", adversarial_band, ADVERSARIAL_BANDS)
    weight = _np(weight)
    _check_class(benign_class, weight.shape[0])
    _check_class(adversarial_class, weight.shape[0])
    kw = {"interval": interval, "coverage": coverage}
    return {"benign": class_band(stats, "benign", benign_class, weight[benign_class], **kw),
            "adversarial": class_band(stats, adversarial_band, adversarial_class,
                                      weight[adversarial_class], **kw)}


def band_gap(adversarial_band, benign_band) -> np.ndarray:
    """The paper's BG((CLa, CUa), (CLb, CUb)) per neuron (float64); NaN where any bound is NaN."""
    la, ua = (_np(x) for x in adversarial_band)
    lb, ub = (_np(x) for x in benign_band)
    # nested where = the formula's if / elif / otherwise, in that order
    gap = np.where(lb > ua, ua - lb, np.where(la > ub, la - ub, 0.0))
    return np.where(np.isnan(la) | np.isnan(ua) | np.isnan(lb) | np.isnan(ub), np.nan, gap)


def curve_difference(benign_axw, adversarial_axw) -> np.ndarray:
    """Adversarial curve − benign curve (activation×weight), per neuron, float64."""
    return _np(adversarial_axw) - _np(benign_axw)


def activation_difference(benign_pooled, adversarial_pooled) -> np.ndarray:
    """Adversarial − benign pooled activation (no weights), per neuron, float64."""
    return _np(adversarial_pooled) - _np(benign_pooled)


def rank(values, *, descending: bool = True) -> np.ndarray:
    """Neuron ids ordered by ``values`` (descending by default); NaNs last, ties by lower id."""
    v = _np(values).ravel()
    nan = np.isnan(v)
    key = np.where(nan, 0.0, -v if descending else v)
    return np.lexsort((np.arange(len(v)), key, nan))  # last key is the primary one


def substitution_effect(weight, bias, benign_pooled, adversarial_pooled, benign_class: int,
                        adversarial_class: int, *, output: str = "probability") -> dict[str, np.ndarray]:
    """{"benign_decrease", "adversarial_increase"}: (n,) float64 effects of substituting each neuron's
    benign pooled value by the adversarial one, through the linear head (see the module docstring)."""
    _check_choice("output", output, OUTPUTS)
    W, b = _np(weight), _np(bias)
    pb, pa = _np(benign_pooled).ravel(), _np(adversarial_pooled).ravel()
    c, n = W.shape
    if b.shape != (c,) or pb.shape != (n,) or pa.shape != (n,):
        raise ValueError(f"expected weight (c, n), bias (c,), pooled vectors (n,); got {W.shape}, "
                         f"{b.shape}, {pb.shape}, {pa.shape}")
    _check_class(benign_class, c)
    _check_class(adversarial_class, c)
    subst = np.tile(pb, (n, 1))  # row j: the benign vector with neuron j taken from the adversarial one
    subst[np.arange(n), np.arange(n)] = pa
    logits = np.vstack([pb, subst]) @ W.T + b  # row 0: the benign image itself
    if output == "logit":
        return {"benign_decrease": logits[0, benign_class] - logits[1:, benign_class],
                "adversarial_increase": logits[1:, adversarial_class] - logits[0, adversarial_class]}
    # exact from the logits (core.probability): float64 probabilities saturate from a lead of ~37
    g_b, g_a = log_odds(logits, benign_class), log_odds(logits, adversarial_class)
    return {"benign_decrease": sigmoid_difference(g_b[0], g_b[1:]),
            "adversarial_increase": sigmoid_difference(g_a[1:], g_a[0])}


def iou_ranking(rf_masks, vulnerability_mask) -> tuple[np.ndarray, np.ndarray]:
    """(iou (n,) float64, rank(iou)) between each neuron's RF mask (n, H, W) and one binarized
    vulnerability map (H, W); numpy or torch booleans."""
    rf, v = _np(rf_masks, bool), _np(vulnerability_mask, bool)
    if rf.ndim != 3 or rf.shape[1:] != v.shape:
        raise ValueError(f"expected RF masks (n, H, W) and a vulnerability mask (H, W); got {rf.shape} "
                         f"and {v.shape}")
    rf, v = rf.reshape(len(rf), -1), v.reshape(-1)
    inter = np.count_nonzero(rf & v, axis=1)
    union = np.count_nonzero(rf | v, axis=1)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return iou, rank(iou)


# -- the registry ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PairInput:
    """Everything a measure may read about one pair, per neuron (n,) float64 unless said: the pooled
    vectors ``benign_pooled`` (p_B) and ``adversarial_pooled`` (p_A); the head ``weight`` (classes, n) and
    ``bias`` (classes,); the ``benign_class`` B and ``adversarial_class`` A; the class ``bands``
    ({"benign"|"adversarial": (lo, hi)}, ``pair_bands``); the activation×weight curves ``benign_axw``
    (p_B·W[B]) and ``adversarial_axw`` (p_A·W[A]); the direct ``substitution`` effects
    (``substitution_effect``); and ``iou`` ({"bmap"|"amap": IoU of each neuron's RF with the binarized
    map}, ``iou_ranking``), None when the vulnerability maps were not asked for. Without a head's
    weights (a model whose head is not "linear" or "conv1x1", ``core.models.ExplainedModel.head_type``)
    ``weight``, ``bias``, ``bands``, the curves and ``substitution`` are None (``has_weights``)."""
    benign_pooled: np.ndarray
    adversarial_pooled: np.ndarray
    weight: np.ndarray | None
    bias: np.ndarray | None
    benign_class: int
    adversarial_class: int
    bands: dict | None
    benign_axw: np.ndarray | None
    adversarial_axw: np.ndarray | None
    substitution: dict | None
    iou: dict | None = None

    @property
    def has_weights(self) -> bool:
        return self.weight is not None


def pair_input(stats: dict, weight, bias, benign_pooled, adversarial_pooled, benign_class: int,
               adversarial_class: int, *, interval: str = DEFAULT_INTERVAL,
               coverage: float = DEFAULT_COVERAGE, adversarial_band: str = DEFAULT_ADVERSARIAL_BAND,
               output: str = "probability", iou: dict | None = None) -> PairInput:
    """The ``PairInput`` of one pair from the store's class statistics, the head and the pair's pooled
    vectors (the band and substitution settings as for ``pair_bands`` and ``substitution_effect``).
    ``weight`` None (a head without activation×weight): only the pooled vectors, classes and IoU."""
    pb, pa = _np(benign_pooled), _np(adversarial_pooled)
    if weight is None:
        return PairInput(benign_pooled=pb, adversarial_pooled=pa, weight=None, bias=None,
                         benign_class=benign_class, adversarial_class=adversarial_class, bands=None,
                         benign_axw=None, adversarial_axw=None, substitution=None,
                         iou=None if iou is None else {k: _np(v) for k, v in iou.items()})
    W, b = _np(weight), _np(bias)
    return PairInput(
        benign_pooled=pb, adversarial_pooled=pa, weight=W, bias=b, benign_class=benign_class,
        adversarial_class=adversarial_class,
        bands=pair_bands(stats, W, benign_class, adversarial_class, interval=interval, coverage=coverage,
                         adversarial_band=adversarial_band),
        benign_axw=activation_times_weight(pb, W, benign_class),
        adversarial_axw=activation_times_weight(pa, W, adversarial_class),
        substitution=substitution_effect(W, b, pb, pa, benign_class, adversarial_class, output=output),
        iou=None if iou is None else {k: _np(v) for k, v in iou.items()})


@dataclass(frozen=True)
class Measure:
    """One way to rank the neurons of a pair: a sort of the Neuron ranking page.

    ``key``: its id (selection, link, dict keys); ``label``: the sort menu's words; ``name``: the value's
    short name (the table column, and by default the words before its value); ``summary``: one plain line
    for the sort menu's tooltip; ``help``: the full plain words (the "?" of its value); ``compute``:
    ``PairInput`` → (n,) float64, ranked descending (``rank``); ``needs_maps``: ``compute`` reads
    ``PairInput.iou`` (the vulnerability maps must be computed first); ``needs_weights``: ``compute``
    reads the head's weights (activation×weight: unavailable when the head is not global average pooling
    into one linear layer or a 1×1 convolution, ``PairInput.has_weights``); ``vmap``: the map
    ("bmap"/"amap") whose binarized mask it compares the RFs with (the page warns when that mask is empty).

    How its value reads: ``fmt``, the number format; ``reads``: "value" (``phrase: number``), "decrease"
    or "increase" (a change in words, ``phrase falls by x``: a decrease is shown as a fall);
    ``phrase``: the words before the value (default ``name``; "{benign}"/"{adversarial}" become the class
    names), ``hover_phrase``/``detail_phrase`` the same for the chart's hover or the neuron's detail text
    only. ``hover_line``/``detail_line``: measures naming the same line share one line there (default:
    a line of its own); lines come in registry order, those of the measures that need maps last."""
    key: str
    label: str
    name: str
    summary: str
    help: str
    compute: Callable[[PairInput], np.ndarray]
    needs_maps: bool = False
    needs_weights: bool = False
    vmap: str | None = None
    fmt: str = ".4g"
    reads: str = "value"
    phrase: str | None = None
    hover_phrase: str | None = None
    detail_phrase: str | None = None
    hover_line: str | None = None
    detail_line: str | None = None

    def words(self, where: str) -> str:
        """The words before the value in the ``"hover"`` or the ``"detail"`` text."""
        own = self.hover_phrase if where == "hover" else self.detail_phrase
        return own or self.phrase or self.name

    def line(self, where: str) -> str:
        """The key of the ``"hover"`` or ``"detail"`` line the value is on."""
        return (self.hover_line if where == "hover" else self.detail_line) or self.key


def _iou(which: str) -> Callable[[PairInput], np.ndarray]:
    def compute(p: PairInput) -> np.ndarray:
        if p.iou is None or which not in p.iou:
            raise ValueError(f"the IoU with {which} needs the vulnerability maps: pass the IoU arrays")
        return p.iou[which]
    return compute


MEASURES: tuple[Measure, ...] = (
    Measure(
        "band_gap", "band gap (neuron perturbation)", "band gap",
        summary=("how far the attack moves the neuron from the benign class's usual range towards the "
                 "adversarial class's (the paper's neuron-perturbation measure)."),
        help=("How far apart the two class bands are at this neuron. Positive: the adversarial class's usual "
              "range lies entirely above the benign class's, so the attack must push the neuron up (region "
              "A, the left end of the chart). Negative: entirely below, the attack pushes it down (region "
              "C, the right end). Zero: the two ranges overlap (region B). The paper's neuron-perturbation "
              "measure; it compares whole classes, so it is steadier than the curve difference of one "
              "image pair."),
        compute=lambda p: band_gap(p.bands["adversarial"], p.bands["benign"]), needs_weights=True),
    Measure(
        "curve_difference", "curve difference", "curve difference",
        summary="the same for this image pair alone: the adversarial curve minus the benign curve.",
        help=("The adversarial curve minus the benign curve at this neuron: how much more the neuron speaks "
              "for the adversarial class on the attacked image than it spoke for the benign class on the "
              "original image. It depends on this one image pair only, so it is noisier than the band "
              "gap."),
        compute=lambda p: curve_difference(p.benign_axw, p.adversarial_axw), hover_line="band_gap",
        needs_weights=True),
    Measure(
        "iou_bmap", "IoU with bMap (image perturbation)", "IoU with bMap",
        summary=("overlap of the neuron's receptive field on the original image with the pixels where the "
                 "attack hurts the benign class most (the paper's image-perturbation measure)."),
        help=("How well the part of the original image this neuron looks at (its receptive field) matches "
              "the pixels where the attack lowers the benign class's probability most (bMap, the top share "
              "set on the Receptive fields page): the pixels in both divided by the pixels in either. 1: "
              "the same pixels; 0: none in common. The paper's image-perturbation measure."),
        compute=_iou("bmap"), needs_maps=True, vmap="bmap", fmt=".3f",
        detail_phrase="IoU of its receptive field with bMap"),
    Measure(
        "iou_amap", "IoU with aMap (image perturbation)", "IoU with aMap",
        summary="the same on the attacked image, with the pixels that help the adversarial class most.",
        help=("How well the part of the attacked image this neuron looks at (its receptive field) matches "
              "the pixels where the attack raises the adversarial class's probability most (aMap, the top "
              "share set on the Receptive fields page): the pixels in both divided by the pixels in "
              "either. 1: the same pixels; 0: none in common."),
        compute=_iou("amap"), needs_maps=True, vmap="amap", fmt=".3f", hover_phrase="with aMap",
        detail_phrase="IoU of its receptive field with aMap", hover_line="iou_bmap"),
    Measure(
        "benign_decrease", "direct substitution: benign probability drop",
        "direct substitution: benign probability drop",
        summary=("how much the benign class's probability falls when only this neuron takes its "
                 "attacked value."),
        help=("Put only this neuron's value from the attacked image into the original image's, keep every "
              "other neuron as it was, and recompute the class probabilities: how much the benign class's "
              "probability falls. Large: this neuron alone carries much of the attack."),
        compute=lambda p: p.substitution["benign_decrease"], fmt=".3g", reads="decrease",
        phrase="P({benign})", hover_line="substitution", detail_line="substitution", needs_weights=True),
    Measure(
        "adversarial_increase", "direct substitution: adversarial probability rise",
        "direct substitution: adversarial probability rise",
        summary=("how much the adversarial class's probability rises when only this neuron takes its "
                 "attacked value."),
        help=("Put only this neuron's value from the attacked image into the original image's, keep every "
              "other neuron as it was, and recompute the class probabilities: how much the adversarial "
              "class's probability rises. Large: this neuron alone carries much of the attack."),
        compute=lambda p: p.substitution["adversarial_increase"], fmt=".3g", reads="increase",
        phrase="P({adversarial})", hover_line="substitution", detail_line="substitution",
        needs_weights=True),
    Measure(
        "activation_difference", "activation difference (no weights)", "activation difference",
        summary=("how much more the neuron is active on the attacked image than on the original one, "
                 "whatever class it speaks for (the paper's first, simplest sort)."),
        help=("The neuron's average activity on the attacked image minus its average activity on the "
              "original image, without the weights of the model's last layer, so it does not say which "
              "class the change helps. Positive: the attack makes the neuron more active (the left end of "
              "the chart); negative: less active (the right end). The paper's straightforward first answer, "
              "which it replaces by the measures that bring in the classes."),
        compute=lambda p: activation_difference(p.benign_pooled, p.adversarial_pooled)),
)
BY_KEY = {m.key: m for m in MEASURES}
SORT_KEYS = tuple(BY_KEY)  # what the neurons can be ranked by (core.ui.state.NEURON_SORTS)
SUMMARY = {m.key: m.summary for m in MEASURES}  # one line per sort, for the sort menu's tooltip
HELP = {**{m.key: m.help for m in MEASURES}, **TERMS}  # the "?" words of every measure and term


def pair_measures(p: PairInput) -> dict[str, np.ndarray]:
    """Everything the Neuron Vulnerability View plots for one pair, per neuron (n,) float64: the
    activation×weight curves (``benign_axw``, ``adversarial_axw``), both bands (``benign_lo``,
    ``benign_hi``, ``adversarial_lo``, ``adversarial_hi``) and every registered measure under its key,
    those that need the maps only when ``p.iou`` is given. Without the head's weights
    (``p.has_weights`` False) the curves, bands and the measures that need weights are left out."""
    out = {}
    if p.has_weights:
        out = {"benign_axw": p.benign_axw, "adversarial_axw": p.adversarial_axw,
               "benign_lo": p.bands["benign"][0], "benign_hi": p.bands["benign"][1],
               "adversarial_lo": p.bands["adversarial"][0], "adversarial_hi": p.bands["adversarial"][1]}
    for m in MEASURES:
        if (p.iou is not None or not m.needs_maps) and (p.has_weights or not m.needs_weights):
            out[m.key] = np.asarray(m.compute(p), dtype=np.float64)
    return out
