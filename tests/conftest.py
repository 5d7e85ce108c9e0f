"""Shared fixtures. Real data and models live in ../shared (read in place, never copied).

Outside CI a missing ../shared skips the tests that need it, with the reason; in CI
(NVE_REQUIRE_SHARED=1, set by .ci/run) it is a failure.
"""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NVE_SHARED", ROOT.parent / "shared"))


def _need(path: Path, why: str = "these tests read the real data/models in ../shared beside the repo"
          ) -> Path:
    if not path.exists():
        msg = f"{path} is missing: {why}"
        if os.environ.get("NVE_REQUIRE_SHARED") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _need(SHARED)


@pytest.fixture(scope="session")
def cifar_root(shared_dir) -> Path:
    return _need(shared_dir / "data" / "cifar10-test")


@pytest.fixture(scope="session")
def lossless20(shared_dir) -> Path:
    return _need(shared_dir / "data" / "cifar10-test-lossless-20")


@pytest.fixture(scope="session")
def models_dir(shared_dir) -> Path:
    return _need(shared_dir / "models")


@pytest.fixture(scope="session")
def fmnist_root() -> Path:
    from core.data import FASHION_MNIST_ROOT
    return _need(FASHION_MNIST_ROOT, "install the Debian package dataset-fashion-mnist (make test does)")


@pytest.fixture(scope="session")
def cifar20_config(cifar_root, models_dir):
    """ResNet20 on 10 real CIFAR-10 test images per class: a small but real experiment."""
    from core.presets import preset
    return preset("cifar10-resnet56", [f'data.root="{cifar_root}"', "data.per_class=10",
                                       "model.arch=\"resnet20_cifar\"",
                                       f'model.checkpoint="{models_dir / "resnet20-12fca82f.th"}"',
                                       "prepare.batch_size=16", "prepare.tsne_perplexity=10"])


@pytest.fixture(scope="session")
def cifar20_store(cifar20_config, tmp_path_factory):
    from core.pipeline import prepare
    from core.store import Store
    cache = tmp_path_factory.mktemp("cache")
    return Store(prepare(cifar20_config, "cifar20", cache_dir=cache, show_bars=False))


@pytest.fixture(scope="session")
def cifar56_store(cifar_root, models_dir, tmp_path_factory):
    """The standard-trained (confident) ResNet56 on 20 real CIFAR-10 test images per class: the paper's
    walks on a model whose probabilities reach 1.0 in float32."""
    from core.pipeline import prepare
    from core.presets import preset
    from core.store import Store
    config = preset("cifar10-resnet56", [f'data.root="{cifar_root}"', "data.per_class=20",
                                         f'model.checkpoint="{models_dir / "resnet56-4bfd9763.th"}"',
                                         "prepare.tsne_perplexity=15"])
    cache = tmp_path_factory.mktemp("cache56")
    return Store(prepare(config, "cifar56", cache_dir=cache, show_bars=False))


@pytest.fixture
def cifar20_copy(cifar20_store, tmp_path):
    """A private copy of the ResNet20 store without derived results, for tests that write derived/ or
    edit the manifest."""
    import shutil

    from core.store import Store
    dst = tmp_path / "cache" / cifar20_store.id
    shutil.copytree(cifar20_store.path, dst, ignore=shutil.ignore_patterns("derived"))
    return Store(dst)


# -- 224 px: real photos (scikit-image's samples) and a real ImageNet model ---------------------------
PHOTOS = {"chelsea": 285, "coffee": 967}  # ImageNet classes of the subjects: Egyptian cat, espresso


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory) -> Path:
    """An ImageFolder of scikit-image's sample photos (300×451 and 400×600 RGB) under ImageNet's 1,000
    class ids (folders c000…c999, so they sort into the model's class order; empty folders keep the
    class list whole)."""
    skimage_data = pytest.importorskip("skimage.data", reason="pip install scikit-image (test extra)")
    from PIL import Image
    root = tmp_path_factory.mktemp("photos")
    for k in range(1000):
        (root / f"c{k:03d}").mkdir()
    for name, k in PHOTOS.items():
        Image.fromarray(getattr(skimage_data, name)()).save(root / f"c{k:03d}" / f"{name}.png")
    return root


@pytest.fixture(scope="session")
def lite0_config(photo_folder):
    """EfficientNet-Lite0 with its ImageNet weights on the photos at 224 px, one precomputed map."""
    import warnings

    from core.config import DataConfig, ExperimentConfig, ModelConfig, PrepareConfig
    from core.models import imagenet_lite0_checkpoint
    warnings.filterwarnings("ignore", message=".*class folder.*hold no images")
    return ExperimentConfig(
        model=ModelConfig(arch="efficientnet_lite0", checkpoint=str(imagenet_lite0_checkpoint()),
                          num_classes=1000, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        data=DataConfig(source="image_folder", root=str(photo_folder), image_size=224),
        prepare=PrepareConfig(maps=1, tsne_perplexity=5))


@pytest.fixture(scope="session")
def photo_store_224(lite0_config, tmp_path_factory):
    from core.pipeline import prepare
    from core.store import Store
    cache = tmp_path_factory.mktemp("cache224")
    return Store(prepare(lite0_config, "photos224", cache_dir=cache, show_bars=False))
