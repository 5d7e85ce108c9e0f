"""Stores prepared from architectures beyond the built-in ResNets, opened in the app: a torchvision VGG
(an "other" head: 7×7 pooling and an MLP), a torchvision MobileNetV2 (a linear head on maps its forward
pools with ``F.adaptive_avg_pool2d``) and a timm MobileNetV3 (an "other" head: a 1×1 conv and an
activation after the pooling). Random, seeded weights saved as the user's checkpoint (the app reloads
the model from it); real CIFAR-10 test images, 3 per class; a strong 3-step attack, since random
weights give a few correct images with large margins. Every page opens without an exception, and the
Neuron ranking page says which measures a head without activation×weight cannot have."""
import json
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from core.models import build_architecture
from core.pipeline import prepare
from core.presets import preset
from core.store import Store
from core.ui.state import KEY, NEURON_SORTS, Selection
from core.ui.views.ranking import ACTIVATION_NAMES, NO_WEIGHTS

APP = str(Path(__file__).resolve().parents[2] / "app.py")
PAGES = ("pages/experiments.py", "pages/image_space.py", "pages/neuron_ranking.py",
         "pages/receptive_fields.py", "pages/clustering.py")
# experiment id -> (arch, image size (the smallest with last maps of 2×2), images per class, head type)
STORES = {"vgg": ("vgg11", 32, 3, "other"), "mobilenet": ("mobilenet_v2", 64, 3, "linear"),
          "timm": ("timm:mobilenetv3_small_050", 64, 3, "other")}


@pytest.fixture(scope="module")
def cache(cifar_root, tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("own")
    for ident, (arch, size, per_class, _) in STORES.items():
        torch.manual_seed(0)
        checkpoint = cache.parent / f"{ident}.pt"
        torch.save(build_architecture(arch, 10).state_dict(), checkpoint)
        cfg = preset("cifar10-resnet56", [
            f'data.root="{cifar_root}"', f"data.per_class={per_class}", f"data.image_size={size}",
            f'model.arch="{arch}"', f'model.checkpoint="{checkpoint}"', "attack.steps=3", "attack.eps=0.1",
            "attack.alpha=0.04",
            "prepare.batch_size=16", "prepare.tsne_perplexity=2"])
        prepare(cfg, ident, cache_dir=cache, show_bars=False)
    return cache


@pytest.mark.parametrize("ident", list(STORES))
def test_every_page_opens_on_a_store_of_another_architecture(ident, cache, monkeypatch):
    store = Store(cache / ident)
    head_type = STORES[ident][3]
    assert store.manifest["model"]["head_type"] == head_type
    assert len(store.pairs) >= 2, "a few pairs to look at"
    monkeypatch.setenv("NVE_CACHE", str(cache))
    for page in PAGES:
        at = AppTest.from_file(APP, default_timeout=120)
        at.session_state[KEY] = Selection(experiment=ident, pair=0, neuron=0, stride=4)
        at.switch_page(page)
        at.run()
        assert not at.exception, (page, at.exception)
        if page.endswith("neuron_ranking.py") and head_type == "other":  # still said when ranking by IoU
            at.selectbox(key="neuron_ranking_sort").select("iou_amap").run()
            assert not at.exception and NO_WEIGHTS in [i.value for i in at.info]
            at.selectbox(key="neuron_ranking_sort").select("activation_difference").run()
        if page.endswith("neuron_ranking.py"):
            infos = [i.value for i in at.info]
            spec = json.loads(at.get("plotly_chart")[0].proto.spec)
            metas = [t.get("meta") for t in spec["data"]]
            if head_type == "other":  # no activation×weight: said once, the activations drawn instead
                assert NO_WEIGHTS in infos and list(ACTIVATION_NAMES) == metas[:2]
                options = at.selectbox(key="neuron_ranking_sort").options
                assert NEURON_SORTS["band_gap"] not in options and NEURON_SORTS["iou_bmap"] in options
            else:
                assert NO_WEIGHTS not in infos and "benign curve" in metas


def test_a_store_without_head_weights_has_only_the_measures_that_need_none(cache):
    import numpy as np

    from core import neuron_measures
    from core.analysis import Analysis
    an = Analysis(Store(cache / "vgg"))
    assert an.head_type == "other" and an.head is None and an._model is None  # known without the model
    m = an.neuron_measures(0)
    assert set(m) == {k.key for k in neuron_measures.MEASURES if not k.needs_weights and not k.needs_maps}
    pb, pa = an.pooled(0)
    assert np.array_equal(m["activation_difference"], pa - pb)
    fmaps = np.asarray(an.store.array("benign_fmaps")[0], dtype=np.float64)
    assert np.allclose(fmaps.mean((1, 2)), pb, rtol=2e-3, atol=1e-4)  # each map's average (float16 maps)
    linear = Analysis(Store(cache / "mobilenet"))
    assert linear.head_type == "linear" and linear.head[0].shape == (10, linear.num_neurons)
    older = Store(cache / "vgg")
    del older.manifest["model"]["head_type"]  # a store prepared before head types were recorded
    assert Analysis(older).head_type == "linear"
