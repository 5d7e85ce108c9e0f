"""A lab's own CNN, written here (not an architecture of core), exported to a ``.pt2`` program and to ONNX:
``python -m core prepare`` on each file with no arch finds the in-memory model's neurons, and the app's
five views open on each store (AppTest). The network's last block ends in a 2×2 max-pool, which a flat
graph (no container module around the block) must still analyse; its head is a ``Sequential`` with
Flatten and Dropout. Trained briefly (seeded) on real CIFAR-10 test images; 4 per class are prepared,
with a 3-step PGD at the paper's eps."""
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest
from torch import nn

from core.models import ExplainedModel
from core.store import Store
from core.ui.state import KEY, Selection

ROOT = Path(__file__).resolve().parents[2]
PAGES = ("pages/experiments.py", "pages/image_space.py", "pages/neuron_ranking.py",
         "pages/receptive_fields.py", "pages/clustering.py")
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


class _Stage(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                                  nn.ReLU())
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        return self.pool(self.conv(x))


class LabCNN(nn.Module):
    """Nested VGG-style stages, each ending in a max-pool; a Sequential head on the average of the last."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(_Stage(3, 8), nn.Sequential(_Stage(8, 12), _Stage(12, 24)))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(24, 10))

    def forward(self, x):
        return self.head(self.features(x))


@pytest.fixture(scope="module")
def lab_cnn(cifar_root) -> nn.Module:
    """The CNN trained for a few seconds on 600 CIFAR-10 test images (random weights classify every image
    alike, with margins no attack crosses): a lab's model, with BatchNorm statistics of real data."""
    from core.config import DataConfig
    from core.data import load_dataset
    ds = load_dataset(DataConfig(source="image_folder", root=str(cifar_root), per_class=60), channels=3)
    x, y = ds.get(range(len(ds))), torch.as_tensor(ds.labels)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.manual_seed(0)
    net = LabCNN()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(4):
        for idx in torch.randperm(len(x)).split(50):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def stores(lab_cnn, cifar_root, tmp_path_factory) -> Path:
    """The CNN as model.pt2 and model.onnx (dynamic batch), and a store prepared from each by the CLI."""
    folder = tmp_path_factory.mktemp("lab")
    x = torch.rand(2, 3, 32, 32)
    batch = torch.export.Dim("batch")
    with torch.no_grad():
        torch.export.save(torch.export.export(lab_cnn, (x,), dynamic_shapes={"x": {0: batch}}),
                          folder / "lab.pt2")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(lab_cnn, (x,), str(folder / "lab.onnx"), input_names=["x"],
                              dynamic_shapes={"x": {0: batch}}, external_data=False)
    cache = folder / "cache"
    for suffix in ("pt2", "onnx"):
        config = folder / f"{suffix}.toml"
        config.write_text(f'[model]\ncheckpoint = "{folder / f"lab.{suffix}"}"\n'
                          f"mean = {list(MEAN)}\nstd = {list(STD)}\n"
                          f'[data]\nsource = "image_folder"\nroot = "{cifar_root}"\nper_class = 4\n'
                          "[attack]\nsteps = 3\n"
                          "[prepare]\ntsne_perplexity = 2\nbatch_size = 20\n")
        done = subprocess.run([sys.executable, "-m", "core", "prepare", "--config", str(config), "--out",
                               f"lab-{suffix}"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "NVE_CACHE": str(cache)})
        assert done.returncode == 0, done.stderr[-2000:]
    return cache


@pytest.mark.parametrize("suffix", ["pt2", "onnx"])
def test_the_cli_finds_the_in_memory_models_neurons_and_every_page_opens(suffix, stores, lab_cnn,
                                                                         monkeypatch):
    own = ExplainedModel(lab_cnn, MEAN, STD, (3, 32, 32))
    assert (own.num_neurons, own.fmap_size, own.head_type) == (24, (4, 4), "linear")  # the last max-pool's
    store = Store(stores / f"lab-{suffix}")
    found = store.manifest["model"]
    assert (found["num_neurons"], tuple(found["fmap_size"]), found["head_type"]) == \
        (own.num_neurons, own.fmap_size, own.head_type)
    assert store.manifest["config"]["model"]["arch"] is None  # the file carries it
    assert len(store.pairs) >= 2, "a few pairs to look at"
    monkeypatch.setenv("NVE_CACHE", str(stores))
    for page in PAGES:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        at.session_state[KEY] = Selection(experiment=f"lab-{suffix}", pair=0, neuron=0, stride=4)
        at.switch_page(page)
        at.run()
        assert not at.exception, (page, at.exception)
        assert not at.error, (page, [e.value for e in at.error])
