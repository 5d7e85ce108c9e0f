"""Differences of softmax probabilities that saturation cannot erase.

A confident CNN gives its predicted class a probability within 1e-8 of 1 (a logit lead of 18 or more):
in float32 that probability *is* 1.0 (the spacing of float32 numbers just below 1 is 6e-8), in float64
it is 1.0 from a lead of about 37. A difference of two such probabilities computed by subtracting the
rounded probabilities — the paper's y_B − y'_B (Alg. 1) or the grid's p_b(B) − p_a(B) — is then 0 or a
multiple of the spacing, whatever the logits say. Everything here is computed in float64 from the
logits z instead, with no subtraction of two nearly equal numbers:

- **Log-odds** of class c: ``g_c = z_c − logsumexp_{j≠c} z_j``, so that p_c = softmax(z)_c = σ(g_c) and
  1 − p_c = σ(−g_c) exactly (σ the logistic function). ``log_odds`` computes it from the logits
  (logsumexp shifted by its maximum); sorting by g_c is sorting by p_c, with no ties at 1.0.
- **Difference of two probabilities** of one class from their log-odds g₁, g₂:

      σ(g₁) − σ(g₂) = sinh((g₁ − g₂)/2) / (2·cosh(g₁/2)·cosh(g₂/2))

  (multiply (e^−g₂ − e^−g₁) / ((1 + e^−g₁)(1 + e^−g₂)) above and below by e^((g₁+g₂)/2)). The only
  subtraction left is g₁ − g₂, of two numbers of the size of the logits; the rest is products, so the
  result keeps its relative precision whether both probabilities are near 1 (bMap on a confident
  model: it equals q₂ − q₁ for the complements q = 1 − p, as computing the complements would give),
  near 0 (aMap: the adversarial class on the benign image) or in between. It is evaluated in log
  space (log sinh, log cosh written with ``expm1``/``log1p``) so that nothing overflows for any finite
  logits; the result underflows to 0 only below 1e-308.

Choice: one closed form for every case instead of "the complements when p is near 1, the plain
difference otherwise", which would need a threshold and still lose digits near it. The precision is
then that of g₁ − g₂, i.e. of the logits themselves (float32 logits: about 1e-7 of their size).
"""
from __future__ import annotations

import numpy as np

LN2 = float(np.log(2.0))


def log_odds(logits, cls: int) -> np.ndarray:
    """g = z_cls − logsumexp_{j≠cls} z_j in float64, over the last axis of ``logits`` (…, classes):
    softmax(z)_cls = σ(g). At least two classes."""
    z = np.asarray(logits, dtype=np.float64)
    n = z.shape[-1]
    if n < 2 or not -n <= int(cls) < n:
        raise ValueError(f"need a class in [0, {n}) of at least two classes, got class {cls} of {n}")
    others = np.delete(z, int(cls), axis=-1)
    top = others.max(-1)
    return z[..., int(cls)] - (top + np.log(np.exp(others - top[..., None]).sum(-1)))


def _log_cosh(x: np.ndarray) -> np.ndarray:
    """log cosh x = |x| + log1p(e^−2|x|) − log 2, with no overflow."""
    a = np.abs(x)
    return a + np.log1p(np.exp(-2 * a)) - LN2


def _log_sinh(y: np.ndarray) -> np.ndarray:
    """log sinh y for y ≥ 0: y + log(−expm1(−2y)) − log 2 (−inf at 0), exact for tiny y too."""
    with np.errstate(divide="ignore"):
        return y + np.log(-np.expm1(-2 * y)) - LN2


def sigmoid_difference(g1, g2) -> np.ndarray:
    """σ(g1) − σ(g2) in float64 for log-odds g1, g2 (broadcast), by the closed form of the module notes."""
    g1, g2 = np.asarray(g1, dtype=np.float64), np.asarray(g2, dtype=np.float64)
    d = g1 - g2
    # (cosh + cosh) is symmetric, so swapping g1 and g2 negates the result exactly
    log_mag = _log_sinh(np.abs(d) / 2) - LN2 - (_log_cosh(g1 / 2) + _log_cosh(g2 / 2))
    return np.sign(d) * np.exp(log_mag)


def probability_difference(logits1, logits2, cls: int) -> np.ndarray:
    """softmax(logits1)_cls − softmax(logits2)_cls, float64, exact up to the precision of the logits
    (broadcast over the leading axes)."""
    return sigmoid_difference(log_odds(logits1, cls), log_odds(logits2, cls))


def probability(logits, cls: int) -> np.ndarray:
    """softmax(logits)_cls in float64 (σ of the log-odds; still rounds to 1.0 from a lead of ~37)."""
    g = log_odds(logits, cls)
    return np.exp(-np.logaddexp(0.0, -g))


PAIR_SCORES = {  # the columns Store.pairs adds to the pair table (float64, from the logits; not stored)
    "benign_drop": "p_b(B) − p_a(B): drop of the true label's probability",
    "adversarial_rise": "p_a(A) − p_b(A): rise of the adversarial label's probability",
    "benign_log_odds": "log-odds of the true label on the benign image (orders like benign_prob, with "
                       "no ties at 1.0)",
    "adv_log_odds": "log-odds of the adversarial label on the adversarial image (orders like adv_prob)",
}


def row_log_odds(logits, classes) -> np.ndarray:
    """(N,) float64: the log-odds of class ``classes[i]`` in row i of ``logits`` (N, classes)."""
    z = np.asarray(logits, dtype=np.float64)
    c = np.asarray(classes, dtype=np.int64).reshape(-1)
    if z.ndim != 2 or len(z) != len(c):
        raise ValueError(f"expected logits (N, classes) and N classes, got {z.shape} and {c.shape}")
    if z.shape[1] < 2 or ((c < 0) | (c >= z.shape[1])).any():
        raise ValueError(f"need classes in [0, {z.shape[1]}) of at least two classes")
    rows = np.arange(len(c))
    others = z.copy()
    others[rows, c] = -np.inf
    top = others.max(1, initial=-np.inf)
    return z[rows, c] - (top + np.log(np.exp(others - top[:, None]).sum(1)))


def row_probabilities(logits, classes) -> np.ndarray:
    """(N,) float64: softmax(logits[i])[classes[i]], as σ of the log-odds."""
    return np.exp(-np.logaddexp(0.0, -row_log_odds(logits, classes)))


def pair_scores(benign_logits, adversarial_logits, labels, adv_labels) -> dict[str, np.ndarray]:
    """Per pair, float64, from the stored logits (N, classes) of the benign and adversarial images:

    - ``benign_drop``: p_b(B) − p_a(B), the drop of the true label's probability;
    - ``adversarial_rise``: p_a(A) − p_b(A), the rise of the adversarial label's probability;
    - ``benign_log_odds``: g_B on the benign image, ``adv_log_odds``: g_A on the adversarial image
      (the confidences as sort keys that do not tie at 1.0).
    """
    labels, adv_labels = np.asarray(labels, dtype=np.int64), np.asarray(adv_labels, dtype=np.int64)
    gbb, gab = row_log_odds(benign_logits, labels), row_log_odds(adversarial_logits, labels)
    gba, gaa = row_log_odds(benign_logits, adv_labels), row_log_odds(adversarial_logits, adv_labels)
    return {"benign_drop": sigmoid_difference(gbb, gab), "adversarial_rise": sigmoid_difference(gaa, gba),
            "benign_log_odds": gbb, "adv_log_odds": gaa}
