"""core.prepare_experiment (the notebook API) and `python -m core serve ID`, on real CIFAR-10 test images
and a CNN written here (not one of core.models' architectures): nested blocks, max pooling inside, a
Flatten/Dropout/Linear head. Its trunk has random weights; its head is fitted to the 40 images by least
squares (deterministic, milliseconds), so nearly all are classified correctly and there are pairs."""
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import torch
from torch import nn

from core import prepare_experiment
from core.cli import app_url, main
from core.config import ConfigError
from core.data import DataError, cifar10
from core.models import ExplainedModel, ModelError
from core.pipeline import STAGES, PrepareError
from core.store import StoreError, open_store

ROOT = Path(__file__).resolve().parents[2]
MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
ATTACK = {"eps": 8 / 255, "steps": 3}
OPTIONS = {"tsne_perplexity": 5}


class _Block(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1, pool: bool = False):
        super().__init__(nn.Conv2d(cin, cout, 3, stride, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                         *([nn.MaxPool2d(2)] if pool else []))


class TinyVGG(nn.Module):
    """Two nested conv blocks (max pooling in the first, a stride-2 conv in the second: 8×8 maps at 32 px),
    global average pooling, then Flatten, Dropout and Linear."""

    def __init__(self, last_pool: bool = False):
        super().__init__()
        self.features = nn.Sequential(_Block(3, 16, pool=True),
                                      _Block(16, 32, pool=True) if last_pool else _Block(16, 32, stride=2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(32, 10))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


@pytest.fixture(scope="module")
def cifar40(cifar_root):
    ds = cifar10(cifar_root, per_class=4)
    return ds.get(np.arange(len(ds))), torch.tensor(ds.labels), list(ds.classes)


@pytest.fixture(scope="module")
def tiny(cifar40):
    x, y, _ = cifar40
    torch.manual_seed(0)
    net = TinyVGG().eval()
    with torch.no_grad():
        z = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
        f = torch.cat([net.pool(net.features(z)).flatten(1), torch.ones(len(x), 1)], 1)
        w = torch.linalg.lstsq(f, nn.functional.one_hot(y, 10).float()).solution
        net.classifier[2].weight.copy_(w[:-1].T)
        net.classifier[2].bias.copy_(w[-1])
    return net.train()  # a notebook's model in training mode: prepare_experiment must not change it


@pytest.fixture(scope="module")
def progress_seen():
    return []


@pytest.fixture(scope="module")
def prepared(tiny, cifar40, tmp_path_factory, progress_seen):
    x, y, classes = cifar40
    cache = tmp_path_factory.mktemp("nb-cache")
    return prepare_experiment(tiny, x, y, class_names=classes, mean=MEAN, std=STD, cache_dir=cache,
                              progress=lambda *a: progress_seen.append(a), prepare_options=OPTIONS,
                              **ATTACK)


def test_tensors_give_a_store_of_the_in_memory_model(prepared, tiny, cifar40, progress_seen):
    x, y, classes = cifar40
    store = open_store(prepared.id, prepared.cache_dir)
    m = store.manifest
    # the CLI's progress, stage by stage, to the callback
    assert ("clean", 40, 40) in progress_seen and ("tsne", 2, 2) in progress_seen
    assert [s for s in STAGES if any(p[0] == s for p in progress_seen)] == ["clean", "attack", "features",
                                                                            "tsne"]
    own = ExplainedModel(TinyVGG().eval(), MEAN, STD, (3, 32, 32))  # the same architecture, wrapped
    assert m["model"]["num_neurons"] == own.num_neurons == 32 and m["model"]["fmap_size"] == [8, 8]
    assert m["classes"] == classes and m["counts"]["n_images"] == 40
    assert m["counts"]["clean_accuracy"] > 0.9 and len(store) > 30
    # the benign images are the given pixels, exactly (8-bit), at their positions in the given set
    idx = np.array(store.pairs["index"])  # an image's id: its position in the given tensor
    want = (x[idx] * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(store.array("benign_images"), want)
    assert np.array_equal(store.pairs["label"], y[idx].numpy())
    # the model is a content-addressed torch.export program in the cache, named with no arch
    cfg = m["config"]["model"]
    assert cfg["arch"] is None and Path(cfg["checkpoint"]) == prepared.model_file
    assert prepared.model_file.parent == prepared.cache_dir / ".models"
    assert prepared.model_file.name == hashlib.sha256(prepared.model_file.read_bytes()).hexdigest() + ".pt2"
    assert cfg["mean"] == MEAN and cfg["std"] == STD
    program = torch.export.load(prepared.model_file).module()
    z = (x[:5] - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():  # a batch of 5: the batch dimension is dynamic
        assert torch.allclose(program(z), tiny.eval()(z), atol=1e-5)
    tiny.train()
    # the caller's module is untouched: still training, gradients on
    assert tiny.training and all(p.requires_grad for p in tiny.parameters())


def test_a_dataset_of_the_same_images_finds_the_same_experiment(prepared, tiny, cifar40):
    x, y, classes = cifar40

    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return x[i], y[i]  # a 0-d label tensor, as torchvision datasets with ToTensor give

    before = (prepared.path / "manifest.json").stat().st_mtime_ns
    again = prepare_experiment(tiny, Pairs(), class_names=classes, mean=MEAN, std=STD, progress=False,
                               cache_dir=prepared.cache_dir, prepare_options=OPTIONS, **ATTACK)
    # same pixels, labels, classes, model and settings: the same (derived) id, found, not recomputed
    assert again == prepared and (prepared.path / "manifest.json").stat().st_mtime_ns == before
    with pytest.raises(StoreError, match="overwrite=True"):  # other settings under that id are refused
        prepare_experiment(tiny, Pairs(), class_names=classes, mean=MEAN, std=STD, out=prepared.id,
                           cache_dir=prepared.cache_dir, progress=False, eps=4 / 255, steps=3)


def test_a_vulnerability_map_reloads_the_exported_model(prepared, tiny):
    pytest.importorskip("core.exported_programs", reason="the .pt2 loader (core.exported_programs) comes "
                        "with the i15-pt2 branch; the app reloads the notebook's model through it")
    analysis = prepared.analysis()
    assert analysis.num_neurons == 32
    b, _ = analysis.store.pair_images(0)
    with torch.no_grad():
        want = ExplainedModel(tiny, MEAN, STD, (3, 32, 32))(torch.from_numpy(b)[None])
        assert torch.allclose(analysis.model(torch.from_numpy(b)[None]), want, atol=1e-4)
    bmap, amap = analysis.vulnerability_maps(0, stride=4)
    assert bmap.shape == amap.shape == (32, 32) and np.isfinite(bmap).all() and np.abs(bmap).max() > 0


def test_a_model_whose_last_block_ends_in_max_pooling_survives_the_export(cifar40, tmp_path):
    x, y, _ = cifar40
    with pytest.raises(PrepareError, match="eps = 0"):  # past the reload, prepare refuses eps = 0 at once
        prepare_experiment(TinyVGG(last_pool=True), x[:8], y[:8], cache_dir=tmp_path, progress=False, eps=0.0)


@pytest.mark.parametrize("change, error, words", [
    (lambda x, y: {"epz": 0.1}, ConfigError, "did you mean eps"),
    (lambda x, y: {"eps": 2.0}, ConfigError, "[attack] eps = 2.0"),
    (lambda x, y: {"method": "cw"}, ConfigError, "[attack] method = 'cw'"),
    (lambda x, y: {"prepare_options": {"batchsize": 8}}, ConfigError, "[prepare] has unknown key(s)"),
    (lambda x, y: {"class_names": ["a", "b"]}, DataError, "2 class names for a model with 10 outputs"),
    (lambda x, y: {"class_names": ["cat\u202e", *"123456789"]}, DataError, "control character"),
    (lambda x, y: {"images": x * 2}, DataError, "in [0, 1]"),
    (lambda x, y: {"labels": y[:5]}, DataError, "labels must be 40 whole numbers"),
    (lambda x, y: {"labels": y + 10}, DataError, "labels must lie in 0..9"),
    (lambda x, y: {"model": nn.Sequential(nn.Flatten(), nn.Linear(3072, 10))}, ModelError,
     "no convolutional"),
    (lambda x, y: {"model": "resnet18"}, ModelError, "torch.nn.Module"),
    (lambda x, y: {"out": "../up"}, StoreError, "experiment id"),
])
def test_user_errors_say_what_to_change_before_any_work(change, error, words, tiny, cifar40, tmp_path):
    x, y, classes = cifar40
    kw = {"model": tiny, "images": x, "labels": y, "class_names": classes, "cache_dir": tmp_path,
          "progress": False, **ATTACK} | change(x, y)
    with pytest.raises(error, match=re.escape(words)):
        prepare_experiment(**kw)
    assert not any(tmp_path.iterdir())  # refused before exporting or writing anything


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_refuses_a_missing_experiment(tmp_path, capsys):
    assert main(["--cache", str(tmp_path), "serve", "nothing-here"]) == 2
    assert "no experiment 'nothing-here'" in capsys.readouterr().err


def test_serve_runs_the_app_on_the_experiment(prepared):
    from core.ui.state import from_query
    port = _free_port()
    command = [sys.executable, "-m", "core", "--cache", str(prepared.cache_dir), "serve", prepared.id,
               "--port", str(port)]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)  # its own process group: streamlit stops with it
    try:
        first = proc.stdout.readline()
        url = app_url(prepared.id, "127.0.0.1", port)
        assert url in first
        # the link opens this experiment in the app
        assert from_query(parse_qs(urlsplit(url).query)).experiment == prepared.id
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, "the app did not start"
                time.sleep(0.3)
        page = urllib.request.urlopen(url, timeout=10).read().decode()
        assert "<noscript>" in page and "streamlit" in page.lower()
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, as in a terminal
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
