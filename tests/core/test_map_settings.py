"""MapSettings: the one place a vulnerability map's k, stride, output and precision are resolved."""
import numpy as np
import pytest
import torch

from core import vulnerability
from core.device import fast_bf16_available
from core.map_settings import MapSettings

CPU = torch.device("cpu")
AUTO = "bf16" if fast_bf16_available(CPU) else "fp32"


@pytest.mark.parametrize("hw, k, stride", [((32, 32), 2, 2), ((28, 28), 2, 2), ((224, 224), 14, 14),
                                           ((64, 48), 3, 3)])
def test_defaults_follow_the_image_size(hw, k, stride):
    s = MapSettings.resolve(hw, CPU)
    assert (s.k, s.stride, s.output, s.precision, s.requested) == (k, stride, "probability", AUTO, "auto")
    # the same rule written out: an eighth of the shorter side is the patch side 2k (at least k = 1)
    assert s.k == max(1, round(min(hw) / 16)) == vulnerability.default_k(*hw)


def test_explicit_values_are_kept_and_checked():
    s = MapSettings.resolve((32, 32), CPU, k=3, stride=1, output="logit", precision="fp32")
    assert s == MapSettings(k=3, stride=1, output="logit", precision="fp32", requested="fp32")
    assert s.kwargs() == {"k": 3, "stride": 1, "output": "logit", "precision": "fp32"}
    assert s.file_name(7) == vulnerability.map_file_name(7, 3, 1, "logit", "fp32")
    assert MapSettings.resolve((32, 32), k=np.int64(2), stride=np.int32(4)).stride == 4
    for bad in ({"k": 0}, {"stride": 0}, {"stride": 1.5}, {"k": True}, {"output": "softmax"},
                {"precision": "fp16"}):
        with pytest.raises(ValueError):
            MapSettings.resolve((32, 32), CPU, **bad)


def test_offered_settings_fall_back_to_the_defaults():
    """The app's selection: a stride the pages do not offer for this size, or a k larger than half the
    image, becomes the default (a link made on a 32-px experiment opened on a 224-px one)."""
    assert MapSettings.resolve((224, 224), stride=2, offered=True).stride == 14
    assert MapSettings.resolve((224, 224), stride=7, offered=True).stride == 7
    assert MapSettings.resolve((32, 32), stride=None, offered=True).stride == 2
    assert MapSettings.resolve((32, 32), k=17, offered=True).k == 2
    assert MapSettings.resolve((32, 32), k=16, offered=True).k == 16
    with pytest.raises(ValueError):  # without ``offered`` a bad value is an error, not a default
        MapSettings.resolve((32, 32), stride=0)


def test_precomputed_maps_serve_auto_and_their_own_precision_only():
    auto = MapSettings.resolve((32, 32), CPU, stride=2)
    assert auto.serves(2, 2, "probability", "fp32") and auto.serves(2, 2, "probability", "bf16")
    assert not auto.serves(2, 1, "probability", "fp32") and not auto.serves(2, 2, "logit", "fp32")
    exact = MapSettings.resolve((32, 32), CPU, stride=2, precision="fp32")
    assert exact.serves(2, 2, "probability", "fp32") and not exact.serves(2, 2, "probability", "bf16")


def test_analysis_takes_settings_or_keywords_alike(cifar20_store):
    from core.analysis import Analysis
    an = Analysis(cifar20_store)
    s = an.map_settings(stride=2, precision="fp32")
    assert s == MapSettings.resolve((32, 32), CPU, stride=2, precision="fp32")
    by_settings = an.vulnerability_maps(0, s)
    by_keywords = an.vulnerability_maps(0, stride=2, precision="fp32")
    assert all(np.array_equal(x, y) for x, y in zip(by_settings, by_keywords, strict=True))
    assert an.has_vulnerability_maps(0, s) and an.has_vulnerability_maps(0, settings=s)
    assert (an.derived / s.file_name(0)).is_file()
    iou_s, _ = an.iou_ranking(0, "bmap", settings=s)
    iou_k, _ = an.iou_ranking(0, "bmap", stride=2, precision="fp32")
    assert np.array_equal(iou_s, iou_k)
    with pytest.raises(TypeError):
        an.vulnerability_maps(0, s, stride=1)
    for asked, used in ((None, 2), (3, 2), (4, 4)):
        assert an.map_settings(stride=asked, offered=True).stride == used
