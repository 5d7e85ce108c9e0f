"""Exact scores (issue 13, item 1): probability differences that saturation cannot erase.

A standard-trained CNN gives many images a benign probability of exactly 1.0 in float32. Alg. 1's
bMap is a difference of two such probabilities, so subtracting rounded probabilities gives 0 and the
top-20% mask is empty. These tests check ``core.probability`` against a 60-digit ``decimal``
reference, and the vulnerability maps of the standard-trained ResNet20 and ResNet56 on lossless
CIFAR-10 images whose float32 benign probability is 1.0 against a float64 line-by-line Alg. 1
(``_alg1_float64``: the model converted to float64, softmax in float64, the literal y_B − y'_B).

The float64 reference is exact enough here because the benign log-odds g_B of the images used stay
below 30 (asserted): 1 − p_B ≥ e^−30 ≈ 1e-13, so float64 (spacing 1.1e-16 near 1) resolves the
differences; from a lead of about 37 float64 probabilities saturate too.
"""
from __future__ import annotations

import copy
from decimal import Decimal, getcontext

import numpy as np
import pytest
import torch

from core import probability
from core.attacks import pgd
from core.vulnerability import (
    MaskInfo,
    binarize,
    binarize_info,
    reference_maps,
    vulnerability_maps,
)
from tests.helpers import lossless20 as load_lossless20
from tests.helpers import resnet20, shared_model

EPS, ALPHA, K = 8 / 255, 2 / 255, 2


# ---------------------------------------------------------------------------------------------
# core.probability against 60-digit decimal arithmetic
# ---------------------------------------------------------------------------------------------
def _dec_softmax(z, c) -> Decimal:
    getcontext().prec = 60
    e = [Decimal(float(v)).exp() for v in z]
    return e[c] / sum(e)


def _dec_log_odds(z, c) -> Decimal:
    getcontext().prec = 60
    others = sum(Decimal(float(v)).exp() for j, v in enumerate(z) if j != c)
    return Decimal(float(z[c])) - others.ln()


def _rel(got, ref: Decimal) -> float:
    if ref == 0:
        return abs(float(got))
    return abs(float((Decimal(float(got)) - ref) / ref))


CASES = [  # (logits 1, logits 2, class): both near 1, both near 0, mixed, equal, tiny difference
    ([20.0, 1.0, -3.0], [19.5, 1.2, -2.0], 0),
    ([30.0, 2.0, 0.5, -1.0], [29.999, 2.0, 0.5, -1.0], 0),
    ([20.0, 1.0, -3.0], [19.5, 1.2, -2.0], 2),
    ([0.3, 0.1], [-0.2, 0.4], 1),
    ([5.0, 1.0, 2.0], [5.0, 1.0, 2.0], 0),
    ([45.0, 0.0, 1.0], [44.0, 0.0, 1.0], 0),   # float64 softmax saturates too: 1.0 − 1.0 = 0
    ([-3.0, 40.0, 2.0], [-3.5, 41.0, 2.0], 0),
]


@pytest.mark.parametrize("z1, z2, c", CASES)
def test_probability_difference_against_decimal(z1, z2, c):
    ref = _dec_softmax(z1, c) - _dec_softmax(z2, c)
    got = probability.probability_difference(np.array(z1), np.array(z2), c)
    # the one float64 subtraction left, g1 − g2, costs about 1e-16·|g| / |g1 − g2| of relative error
    # (3.5e-12 for the 30 vs 29.999 case); a float softmax's difference is off by 100% on most cases
    assert _rel(got, ref) < 1e-10, (float(got), float(ref))
    assert _rel(probability.log_odds(np.array(z1), c), _dec_log_odds(z1, c)) < 1e-14
    assert _rel(probability.probability(np.array(z1), c), _dec_softmax(z1, c)) < 1e-14


def test_float_softmax_really_loses_these_differences():
    """The cases above are ones where subtracting rounded probabilities fails (so the test can fail)."""
    z1, z2 = torch.tensor([[45.0, 0.0, 1.0]]), torch.tensor([[44.0, 0.0, 1.0]])
    for dtype in (torch.float32, torch.float64):
        assert (z1.to(dtype).softmax(1)[0, 0] - z2.to(dtype).softmax(1)[0, 0]).item() == 0
    assert probability.probability_difference(z1.numpy(), z2.numpy(), 0)[0] > 1e-20


def test_sigmoid_difference_broadcasts_and_keeps_sign():
    g1 = np.array([20.0, -20.0, 0.0, 3.0])
    got = probability.sigmoid_difference(g1[:, None], g1[None, :])
    assert got.shape == (4, 4)
    np.testing.assert_array_equal(np.sign(got), np.sign(g1[:, None] - g1[None, :]))
    np.testing.assert_allclose(got, -got.T, rtol=0, atol=0)
    assert np.all(np.diag(got) == 0)
    assert np.isfinite(probability.sigmoid_difference(1e4, -1e4)) and \
        probability.sigmoid_difference(1e4, -1e4) == pytest.approx(1.0)


def test_log_odds_needs_two_classes():
    with pytest.raises(ValueError):
        probability.log_odds(np.array([1.0]), 0)
    with pytest.raises(ValueError):
        probability.log_odds(np.array([1.0, 2.0]), 2)


def test_pair_scores_against_decimal():
    rng = np.random.default_rng(0)
    zb = rng.normal(size=(7, 4)) * 3
    za = rng.normal(size=(7, 4)) * 3
    zb[:, 0] += 25  # confident benign images (float32 probability 1.0)
    labels, adv = np.array([0, 0, 0, 1, 2, 0, 3]), np.array([1, 2, 3, 0, 0, 2, 1])
    za[np.arange(7), adv] += 30
    out = probability.pair_scores(zb.astype(np.float32), za.astype(np.float32), labels, adv)
    zb, za = zb.astype(np.float32).astype(float), za.astype(np.float32).astype(float)
    for i in range(7):
        b, a = labels[i], adv[i]
        assert _rel(out["benign_drop"][i], _dec_softmax(zb[i], b) - _dec_softmax(za[i], b)) < 1e-12
        assert _rel(out["adversarial_rise"][i], _dec_softmax(za[i], a) - _dec_softmax(zb[i], a)) < 1e-12
        assert _rel(out["benign_log_odds"][i], _dec_log_odds(zb[i], b)) < 1e-13
        assert _rel(out["adv_log_odds"][i], _dec_log_odds(za[i], a)) < 1e-13
    empty = probability.pair_scores(np.zeros((0, 4)), np.zeros((0, 4)), [], [])
    assert all(len(v) == 0 for v in empty.values())


# ---------------------------------------------------------------------------------------------
# binarize: the full share whenever that many pixels are positive; binarize_info says when not
# ---------------------------------------------------------------------------------------------
def test_binarize_info_counts():
    v = np.zeros((10, 10))
    assert binarize_info(v) == MaskInfo(kept=0, requested=20, positive=0, total=100)
    assert binarize_info(v).empty and binarize_info(v).short
    v.flat[:7] = np.arange(1, 8) * 1e-20  # tiny but positive values count
    info = binarize_info(v, 0.2)
    assert info == MaskInfo(kept=7, requested=20, positive=7, total=100) and info.short and not info.empty
    assert info.positive_share == pytest.approx(0.07)
    assert binarize(v, 0.2).sum() == info.kept
    v.flat[:50] = 1.0
    info = binarize_info(v, 0.2)
    assert (info.kept, info.requested, info.positive, info.short) == (20, 20, 50, False)
    assert binarize(v, 0.2).sum() == 20
    with pytest.raises(ValueError):
        binarize_info(v, 1.5)


# ---------------------------------------------------------------------------------------------
# Alg. 1 in float64, line by line
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def _alg1_float64(model, benign, adversarial, b_cls, a_cls, k, stride, batch=64):
    """Alg. 1 with the model, the images and the softmax in float64, the differences of lines 10–11
    subtracted literally (signs as the paper's comments: decrease of B, increase of A). The
    substituted images are forwarded in batches (float64: batching moves nothing that matters)."""
    m64 = copy.deepcopy(model).double().eval()
    b, a = benign.double(), adversarial.double()
    _, h, w = b.shape
    y = m64(b[None]).softmax(1)[0]                                   # line 4
    positions, images = [], []
    for r in range(0, h, stride):                                    # lines 5-6
        for c in range(0, w, stride):
            x = b.clone()                                            # line 7
            x[:, max(r - k, 0):r + k, max(c - k, 0):c + k] = a[:, max(r - k, 0):r + k, max(c - k, 0):c + k]
            positions.append((r, c))                                 # line 8 ^
            images.append(x)
    bmap, amap = torch.zeros(h, w, dtype=torch.float64), torch.zeros(h, w, dtype=torch.float64)
    for lo in range(0, len(images), batch):
        y2 = m64(torch.stack(images[lo:lo + batch])).softmax(1)      # line 9
        for (r, c), yy in zip(positions[lo:lo + batch], y2, strict=True):
            bmap[r:r + stride, c:c + stride] = y[b_cls] - yy[b_cls]  # line 10: y_B − y'_B
            amap[r:r + stride, c:c + stride] = yy[a_cls] - y[a_cls]  # line 11: y'_A − y_A
    return bmap, amap, float(_log_odds64(m64, b, b_cls))


def _log_odds64(m64, image, cls):
    z = m64(image[None])[0]
    others = torch.cat([z[:cls], z[cls + 1:]])
    return z[cls] - torch.logsumexp(others, 0)


def _iou(m1, m2) -> float:
    return float((m1 & m2).sum() / max((m1 | m2).sum(), 1))


def saturated_pairs(model, x, y, n):
    """The first n lossless images whose float32 benign probability is exactly 1.0 and that PGD-7
    (8/255, 2/255) fools: (index, benign, adversarial, benign class, adversarial class)."""
    with torch.no_grad():
        p = model(x).softmax(1)[torch.arange(len(y)), y]
    idx = (p == 1.0).nonzero().flatten()
    adv = pgd(model, x[idx], y[idx], eps=EPS, alpha=ALPHA, steps=7)
    with torch.no_grad():
        pred = model(adv).argmax(1)
    out = [(i, x[i], adv[j], int(y[i]), int(pred[j])) for j, i in enumerate(idx.tolist()) if pred[j] != y[i]]
    assert len(out) >= n, f"only {len(out)} saturated fooled images"
    return out[:n]


@torch.no_grad()
def _alg1_float32_softmax(model, benign, adversarial, b_cls, k, stride):
    """The former computation (the issue's reproduction): bMap as a difference of float32 softmax
    probabilities, literally y_B − y'_B."""
    _, h, w = benign.shape
    y = model(benign[None]).float().softmax(1)[0, b_cls]
    bmap = torch.zeros(h, w)
    for r in range(0, h, stride):
        rows = []
        for c in range(0, w, stride):
            x = benign.clone()
            rs, cs = slice(max(r - k, 0), r + k), slice(max(c - k, 0), c + k)
            x[:, rs, cs] = adversarial[:, rs, cs]
            rows.append(x)
        y2 = model(torch.stack(rows)).float().softmax(1)[:, b_cls]
        for j, c in enumerate(range(0, w, stride)):
            bmap[r:r + stride, c:c + stride] = y - y2[j]
    return bmap


# The images: the first lossless images whose float32 benign probability is 1.0 and that PGD-7 fools
# (ResNet20: 2, ResNet56: 1), at stride 2 (256 substituted images each) to keep the float64 loop short.
# Bounds: measured on every saturated image of the 20 (ResNet20 at stride 1: 9 images, ResNet56 at
# stride 2: 10; docs/method.md, "Exact differences"), fp32: top-20% IoU 1.000, largest error 9.2e-6 of
# the map's largest value; bf16: IoU >= 0.952 (one 2x2 block at stride 2), error <= 5.4e-2. The bounds
# leave a margin over those; "rel" is the largest error over the largest |value| of the float64 map.
STRIDE = 2
REAL = [("resnet20", 0), ("resnet20", 1), ("resnet56", 0)]
BOUNDS = {"fp32": {"iou": 0.97, "rel": 1e-4}, "bf16": {"iou": 0.9, "rel": 0.1}}
FULL = round(0.2 * 32 * 32)


class Real:
    """Loads each model once, finds its saturated pairs, memoizes the maps."""

    def __init__(self, root, models_dir):
        self.x, self.y = load_lossless20(root)
        self.models_dir = models_dir
        self.memo = {}

    def _get(self, key, make):
        if key not in self.memo:
            self.memo[key] = make()
        return self.memo[key]

    def model(self, name):
        return self._get(("model", name), lambda: resnet20(self.models_dir) if name == "resnet20"
                         else shared_model("cifar10-resnet56", self.models_dir))

    def pair(self, name, i):
        n = 1 + max(j for m, j in REAL if m == name)
        return self._get(("pairs", name), lambda: saturated_pairs(self.model(name), self.x, self.y, n))[i]

    def maps(self, name, i, how):
        def make():
            _, b, a, bc, ac = self.pair(name, i)
            model = self.model(name)
            if how == "float64":
                return _alg1_float64(model, b, a, bc, ac, K, STRIDE)
            if how == "reference":
                return reference_maps(model, b, a, bc, ac, k=K, stride=STRIDE)
            if how == "float32_softmax":
                return _alg1_float32_softmax(model, b, a, bc, K, STRIDE)
            return vulnerability_maps(model, b, a, bc, ac, k=K, stride=STRIDE, precision=how)
        return self._get(("maps", name, i, how), make)


@pytest.fixture(scope="module")
def real(lossless20, models_dir):
    return Real(lossless20, models_dir)


@pytest.mark.parametrize("name, i", REAL)
def test_the_images_saturate_and_the_reference_resolves_them(real, name, i):
    """The test images are the issue's case (p_B = 1.0 in float32, the former bMap mask short), and
    float64 still resolves them (log-odds below 30)."""
    idx, b, _, bc, _ = real.pair(name, i)
    with torch.no_grad():
        assert real.model(name)(b[None]).softmax(1)[0, bc].item() == 1.0
    *_, g = real.maps(name, i, "float64")
    assert g < 30, f"image {idx}: log-odds {g:.1f}, float64 probabilities would saturate too"
    old = binarize_info(real.maps(name, i, "float32_softmax"))
    assert old.short, f"image {idx}: the float32-softmax bMap mask is full ({old}): not a saturated case"


@pytest.mark.parametrize("how", ["fp32", "bf16", "reference"])
@pytest.mark.parametrize("name, i", REAL)
def test_maps_match_float64_alg1_on_saturated_images(real, name, i, how):
    idx = real.pair(name, i)[0]
    ref_b, ref_a, _ = real.maps(name, i, "float64")
    got = real.maps(name, i, how)
    bound = BOUNDS["bf16" if how == "bf16" else "fp32"]
    for label, g, r in zip(("bMap", "aMap"), got, (ref_b, ref_a), strict=True):
        assert g.dtype == torch.float32 and g.shape == (32, 32)
        r = r.numpy()
        g64 = g.numpy().astype(np.float64)
        info = binarize_info(g64)
        assert (info.kept, info.requested) == (FULL, FULL), f"image {idx} {label} ({how}): {info}"
        assert binarize(g64).sum() == FULL
        iou = _iou(binarize(g64), binarize(r))
        assert iou >= bound["iou"], f"image {idx} {label} ({how}): top-20% IoU {iou:.3f}"
        rel = np.abs(g64 - r).max() / np.abs(r).max()
        assert rel <= bound["rel"], f"image {idx} {label} ({how}): max error {rel:.2e} of max |value|"


# ---------------------------------------------------------------------------------------------
# Analysis.map_mask_status: what the IoU ranking's mask holds, and when the ranking is degenerate
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def store(cifar20_copy):
    return cifar20_copy  # the test writes derived/


def test_map_mask_status_full_on_a_saturated_pair_and_degenerate_on_a_flat_map(store):
    from core.analysis import Analysis
    from core.vulnerability import map_file_name
    an = Analysis(store)
    saturated = np.flatnonzero(store.pairs["benign_prob"].to_numpy() == 1.0)
    assert len(saturated) >= 2, "ResNet20 gives several benign images a float32 probability of 1.0"
    pair, flat = int(saturated[0]), int(saturated[1])
    bmap, amap = an.vulnerability_maps(pair, stride=2)
    info = an.map_mask_status(pair, "bmap", stride=2)
    assert info == binarize_info(bmap) and not info.short and info.kept == FULL
    assert an.map_mask_status(pair, "amap", top=0.5, stride=2) == binarize_info(amap, 0.5)
    with pytest.raises(ValueError):
        an.map_mask_status(pair, "cmap", stride=2)
    # a map with no positive pixel (what the float32 subtraction gave): the status says so, and the
    # IoU ranking it describes is all zeros in neuron-id order
    (store.path / "derived").mkdir(exist_ok=True)
    np.save(store.path / "derived" / map_file_name(flat, 2, 2, "probability", "fp32"),
            np.zeros((2, 32, 32), np.float32))
    status = an.map_mask_status(flat, "bmap", stride=2)
    assert status.empty and status.short and status.positive == 0 and status.requested == FULL
    iou, order = an.iou_ranking(flat, "bmap", stride=2)
    assert not iou.any() and order.tolist() == list(range(an.num_neurons))
