"""Receptive fields (paper §3.2) against slow references that follow the four steps line by line."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core import receptive_fields as rf
from core.features import extract
from tests.helpers import lossless20 as load_lossless20
from tests.helpers import shared_model


@pytest.fixture(scope="module")
def real(models_dir, lossless20):
    """ResNet18 (512 neurons, 4×4 maps) on the 20 lossless CIFAR-10 test images."""
    x, _ = load_lossless20(lossless20)
    fmaps = extract(shared_model("cifar10-resnet18", models_dir), x).fmaps
    return SimpleNamespace(x=x, fmaps=fmaps, q=rf.neuron_quantiles(fmaps, rf.DEFAULT_QUANTILE))


def bilinear_reference(a: np.ndarray, H: int, W: int) -> np.ndarray:
    """align_corners=False bilinear upsampling of one (h,w) map, pixel by pixel."""
    h, w = a.shape
    out = np.zeros((H, W))
    for r in range(H):
        for c in range(W):
            y = max((r + 0.5) * h / H - 0.5, 0.0)  # source coordinate of the output pixel's centre
            x = max((c + 0.5) * w / W - 0.5, 0.0)
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            dy, dx = y - y0, x - x0
            out[r, c] = ((1 - dy) * (1 - dx) * a[y0, x0] + (1 - dy) * dx * a[y0, x1]
                         + dy * (1 - dx) * a[y1, x0] + dy * dx * a[y1, x1])
    return out


def mask_reference(fmaps, size, mode, value=None, q=None) -> torch.Tensor:
    """Steps 2-3 one neuron at a time, with the documented threshold rules."""
    out = []
    for j in range(fmaps.shape[0]):
        up = F.interpolate(torch.as_tensor(fmaps[j], dtype=torch.float32)[None, None], size=size,
                           mode="bilinear", align_corners=False)[0, 0].numpy()
        if mode == "quantile":
            m = up > q[j]
        elif mode == "absolute":
            m = up > value
        else:
            m = up >= value * up.max() if up.max() > 0 else np.zeros_like(up, dtype=bool)
        out.append(torch.from_numpy(m))
    return torch.stack(out)


def test_upsample_maps_is_bilinear_align_corners_false(real):
    maps = real.fmaps[0, :6].numpy().astype(np.float16)  # the store keeps float16 maps
    up = rf.upsample_maps(maps, 32)
    assert up.dtype == torch.float32 and up.shape == (6, 32, 32)
    for j in range(6):
        np.testing.assert_allclose(up[j].numpy(), bilinear_reference(maps[j].astype(np.float32), 32, 32),
                                   rtol=1e-5, atol=1e-6)
    # vectorized over every leading dim, numpy or torch, non-square sizes
    batch = rf.upsample_maps(real.fmaps[:3], (40, 24))
    assert batch.shape == (3, 512, 40, 24)
    torch.testing.assert_close(batch[2, 7], torch.from_numpy(
        bilinear_reference(real.fmaps[2, 7].numpy(), 40, 24)).float(), rtol=1e-5, atol=1e-6)
    assert rf.upsample_maps(real.fmaps[0], 4).equal(real.fmaps[0])


def test_resize_image(real):
    img = real.x[0]
    assert rf.resize_image(img.numpy(), 32).equal(img)  # same size: unchanged
    up = rf.resize_image(img, (48, 40))
    assert up.shape == (3, 48, 40) and up.dtype == torch.float32
    # enlarging: antialiasing has no effect, plain align_corners=False bilinear per channel
    for c in range(3):
        np.testing.assert_allclose(up[c].numpy(), bilinear_reference(img[c].numpy(), 48, 40), atol=1e-5)
    small = rf.resize_image(real.x[:2], 16)
    assert small.shape == (2, 3, 16, 16) and 0 <= small.min() and small.max() <= 1
    # shrinking by 2 with antialiasing averages neighbouring pixels: smoother than subsampling
    assert small[0].std() < img[:, ::2, ::2].std()


def test_neuron_quantiles_match_np_quantile_per_neuron(real, tmp_path):
    # a float16 memmap, as the store keeps benign_fmaps; blocks of 7 images leave a partial last block
    mm = np.lib.format.open_memmap(tmp_path / "fmaps.npy", mode="w+", dtype=np.float16,
                                   shape=tuple(real.fmaps.shape))
    mm[:] = real.fmaps.numpy()
    mm.flush()
    fmaps = np.load(tmp_path / "fmaps.npy", mmap_mode="r")
    for q in (0.9, 0.5, 0.995):
        got = rf.neuron_quantiles(fmaps, q, block_bytes=7 * fmaps[0].nbytes)
        assert got.dtype == np.float32 and got.shape == (512,)
        ref = [np.quantile(fmaps[:, j, :, :].astype(np.float32).ravel(), q) for j in range(512)]
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(rf.neuron_quantiles(real.fmaps, 0.9), real.q)  # torch input
    with pytest.raises(ValueError):
        rf.neuron_quantiles(fmaps, 1.5)


def test_thresholds_per_mode(real):
    up = rf.upsample_maps(real.fmaps[0], 32)
    torch.testing.assert_close(rf.thresholds(up, "quantile", None, real.q), torch.from_numpy(real.q))
    torch.testing.assert_close(rf.thresholds(up, "fraction", 0.3), 0.3 * up.amax(dim=(1, 2)))
    assert rf.thresholds(up, "absolute", 0.7).tolist() == [pytest.approx(0.7)] * 512
    with pytest.raises(ValueError, match="neuron_thresholds"):
        rf.thresholds(up, "quantile", 0.9)
    with pytest.raises(ValueError, match="quantile, fraction, absolute"):
        rf.thresholds(up, "top", 0.9)


@pytest.mark.parametrize("mode,value", [("quantile", None), ("fraction", None), ("fraction", 0.8),
                                        ("absolute", 0.5), ("absolute", 0.0)])
@pytest.mark.parametrize("size", [32, (56, 40)])
def test_rf_masks_match_per_neuron_loop(real, mode, value, size):
    fm = real.fmaps[0]
    got = rf.rf_masks(fm.numpy().astype(np.float16) if mode == "absolute" else fm, size, mode=mode,
                      value=value, neuron_thresholds=real.q)
    ref_value = rf.DEFAULT_FRACTION if (mode == "fraction" and value is None) else value
    ref = mask_reference(fm.numpy().astype(np.float16) if mode == "absolute" else fm.numpy(), size, mode,
                         ref_value, real.q)
    assert got.dtype == torch.bool and got.shape == ref.shape
    assert got.equal(ref)
    assert got.any() and not got.all()  # a real image: neither trivial answer


def test_rf_masks_batched_equals_per_image(real):
    batch = rf.rf_masks(real.fmaps[:4], 32, neuron_thresholds=real.q)
    assert batch.shape == (4, 512, 32, 32)
    for i in range(4):
        assert batch[i].equal(rf.rf_masks(real.fmaps[i], 32, neuron_thresholds=real.q))


def test_dead_neurons_have_empty_rfs(real):
    fm = real.fmaps.clone()
    fm[:, 5] = 0  # dead on the whole dataset: its dataset quantile is 0
    fm[:, 6] = 0
    fm[0, 6, 1, 2] = 1.0  # almost dead: quantile 0, but alive at one position of image 0
    q = rf.neuron_quantiles(fm, 0.9)
    assert q[5] == 0 and q[6] == 0
    dead = (fm[0].flatten(1).amax(1) <= 0).nonzero().ravel()  # dead on this image (real ones too)
    assert len(dead) > 10 and 5 in dead and 6 not in dead
    for mode, value in [("quantile", None), ("fraction", None), ("absolute", 0.0)]:
        m = rf.rf_masks(fm[0], 32, mode=mode, value=value, neuron_thresholds=q)
        assert not m[dead].any(), mode  # empty, never the whole image
    # T = 0 but alive on this image: the RF is exactly where the upsampled map is positive
    m = rf.rf_masks(fm[0], 32, neuron_thresholds=q)
    assert m[6].equal(rf.upsample_maps(fm[0, 6], 32) > 0) and 0 < m[6].sum() < 32 * 32


def test_rf_masks_errors(real):
    with pytest.raises(ValueError, match="neuron_thresholds"):
        rf.rf_masks(real.fmaps[0], 32)
    with pytest.raises(ValueError, match="absolute thresholds need a value"):
        rf.rf_masks(real.fmaps[0], 32, mode="absolute")
    with pytest.raises(ValueError, match="valid modes"):
        rf.rf_masks(real.fmaps[0], 32, mode="otsu")
    with pytest.raises(ValueError, match=r"\(512,\)"):
        rf.rf_masks(real.fmaps[0], 32, neuron_thresholds=real.q[:10])
    with pytest.raises(ValueError, match="fraction"):
        rf.rf_masks(real.fmaps[0], 32, mode="fraction", value=1.5)


@pytest.mark.parametrize("size", [None, 32, 64, (24, 20)])
def test_receptive_fields_step4_is_resized_image_times_mask(real, size):
    image = real.x[3].numpy()
    out, masks = rf.receptive_fields(image, real.fmaps[3], size, neuron_thresholds=real.q)
    S = (32, 32) if size is None else ((size, size) if isinstance(size, int) else size)
    assert out.shape == (512, 3, *S) and out.dtype == torch.float32 and masks.shape == (512, *S)
    assert masks.equal(rf.rf_masks(real.fmaps[3], S, neuron_thresholds=real.q))
    x = rf.resize_image(image, S)
    for j in range(0, 512, 37):
        for c in range(3):  # step 4: each channel of the resized image times the binary mask
            ref = torch.where(masks[j], x[c], torch.zeros(()))
            assert out[j, c].equal(ref)
    # batched form
    b_out, b_masks = rf.receptive_fields(real.x[:2], real.fmaps[:2], size, mode="fraction")
    assert b_out.shape == (2, 512, 3, *S)
    one, _ = rf.receptive_fields(real.x[1], real.fmaps[1], size, mode="fraction")
    assert b_out[1].equal(one)


# Hand-drawn 4×4 masks with known answers.
A = np.array([[1, 1, 0, 0],
              [1, 1, 0, 0],
              [0, 0, 0, 0],
              [0, 0, 0, 0]], dtype=bool)
B = np.array([[0, 1, 1, 0],
              [0, 1, 1, 0],
              [0, 0, 0, 0],
              [0, 0, 0, 0]], dtype=bool)
C = np.array([[0, 0, 0, 0],
              [0, 0, 0, 0],
              [0, 0, 1, 1],
              [0, 0, 1, 1]], dtype=bool)
E = np.zeros((4, 4), dtype=bool)


def test_union_and_intersection_by_hand():
    assert rf.union([A, B]).numpy().astype(int).tolist() == [[1, 1, 1, 0], [1, 1, 1, 0],
                                                             [0, 0, 0, 0], [0, 0, 0, 0]]
    assert rf.intersection(np.stack([A, B])).numpy().astype(int).tolist() == [[0, 1, 0, 0], [0, 1, 0, 0],
                                                                              [0, 0, 0, 0], [0, 0, 0, 0]]
    assert rf.union(np.stack([A, B, C])).sum() == 10
    assert not rf.intersection(np.stack([A, B, C])).any()
    assert rf.intersection(torch.from_numpy(A)[None]).equal(torch.from_numpy(A))
    # leading dims after the first: benign and adversarial masks of 2 neurons at once
    two = torch.from_numpy(np.stack([np.stack([A, C]), np.stack([B, C])]))  # (neurons, images, 4, 4)
    assert rf.union(two)[1].equal(torch.from_numpy(C)) and rf.intersection(two)[0].sum() == 2
    assert not rf.union(np.zeros((0, 4, 4), dtype=bool)).any()
    with pytest.raises(ValueError, match="zero masks"):
        rf.intersection(np.zeros((0, 4, 4), dtype=bool))
    with pytest.raises(ValueError, match="zero masks"):
        rf.intersection([])


def test_iou_by_hand():
    assert rf.iou(A, B).item() == pytest.approx(2 / 6)
    assert rf.iou(A, C).item() == 0.0
    assert rf.iou(A, A).item() == 1.0
    assert rf.iou(np.stack([A, B, C]), A).tolist() == pytest.approx([1.0, 2 / 6, 0.0])
    # empty RFs: an empty union gives `empty`; one empty side overlaps nothing either way
    assert rf.iou(E, E).item() == 0.0
    assert rf.iou(E, E, empty=1.0).item() == 1.0
    assert rf.iou(E, A, empty=1.0).item() == 0.0
    assert rf.iou(np.stack([E, A]), np.stack([E, B]), empty=1.0).tolist() == pytest.approx([1.0, 2 / 6])


@pytest.mark.parametrize("select", [None, 1, 150])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_neuron_quantiles_exact_with_negatives_ties_and_blocks(dtype, select, monkeypatch):
    if select is not None:  # the selection's own row steps: 1 row, or a few, of each block at a time
        monkeypatch.setattr(rf, "SELECT_ELEMENTS", select)
    # signed values (the key map must order negatives before positives), many ties (float16 grid, ReLU
    # zeros), extreme q, and maps streamed as blocks of uneven size
    g = np.random.default_rng(0)
    fm = (g.standard_normal((13, 6, 3, 5)) * 4).astype(dtype)
    fm[:, 2] = np.maximum(fm[:, 2], 0)  # half zeros
    fm[:, 3] = 1.5  # constant neuron
    fm[0, 4, 0, 0] = -0.0
    blocks = lambda: iter((fm[:5], fm[5:6], fm[6:]))  # noqa: E731
    for q in (0.0, 0.1, 0.5, 0.9, 0.999, 1.0):
        ref = [np.quantile(fm[:, j].astype(np.float32).ravel(), q) for j in range(6)]
        np.testing.assert_allclose(rf.neuron_quantiles(fm, q), ref, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(rf.neuron_quantiles(fm, q, blocks=blocks), ref, rtol=1e-6, atol=1e-7)


def test_rf_masks_in_neuron_blocks_equal_one_pass(real):
    # blocks of 5 neurons (one image's maps) give the very masks of one pass, in every threshold mode
    fm = real.fmaps[0]
    q = rf.neuron_quantiles(real.fmaps, 0.9)
    for kw in ({"mode": "quantile", "neuron_thresholds": q}, {"mode": "fraction", "value": 0.5},
               {"mode": "absolute", "value": 0.3}):
        one = rf.rf_masks(fm, 32, **kw)
        blocks = rf.rf_masks(fm, 32, block_bytes=5 * 4 * 32 * 32, **kw)
        assert torch.equal(one, blocks) and one.shape == (512, 32, 32)
