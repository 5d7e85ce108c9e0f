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
