"""Benchmarks (``python -m core bench ...``): every ratio is measured within one run, on this machine.

``attack``: PGD-7 (ε=8/255, α=2/255) over N CIFAR-10 test images with the 512-neuron ResNet18 from
../shared, as ``prepare`` runs it (bf16 autocast search where the CPU/GPU has fast bf16, fp32-verified),
beside the fp32 baseline (the plain loop, timed on a subset and scaled to N, since it takes ~15 min
for 8,200 images on 2 cores) and the early-stopping variant; plus the agreement of bf16 and fp32 on
which images are fooled.
"""
from __future__ import annotations

import os
import platform
import time

import numpy as np
import torch

from core import attacks, data
from core.features import extract
from core.presets import preset


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {dev}, torch {torch.__version__}, {platform.machine()}"


def bench_attack(n_images: int = 8200, fp32_subset: int = 512, batch_size: int = 128) -> dict:
    from core.models import load_model
    cfg = preset("cifar10-resnet18")
    ds = data.load_dataset(cfg.data)
    per_class = -(-n_images // len(ds.classes))
    ds = data.select(ds, per_class=per_class)
    pos = np.arange(min(n_images, len(ds)))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(cfg.model, (3, 32, 32)).to(device)
    x = ds.get(pos).to(device)
    y = torch.as_tensor(ds.labels[pos], device=device)
    a = cfg.attack
    kw = dict(eps=a.eps, alpha=a.alpha, steps=a.steps, batch_size=batch_size)
    prec = "bf16" if attacks.fast_bf16_available(device) else "fp32"
    fast = model.to(memory_format=torch.channels_last) if prec == "bf16" else model
    xf = x.contiguous(memory_format=torch.channels_last) if prec == "bf16" else x

    def timed(fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - t

    def predict(images):
        return extract(model, images.contiguous(), batch_size=256, fmaps=False).logits.argmax(1)

    def fooled(adv, idx=slice(None)):
        return (predict(adv) != y[idx].cpu()).numpy()

    attacks.pgd(fast, xf[:16], y[:16], precision=prec, **kw)  # warm-up (oneDNN kernel selection)
    adv_fast, t_fast = timed(lambda: attacks.pgd(fast, xf, y, precision=prec, **kw))
    adv_es, t_es = timed(lambda: attacks.pgd(fast, xf, y, precision=prec, early_stop=True, **kw))
    sub = slice(0, min(fp32_subset, len(x)))
    adv_32, t_32 = timed(lambda: attacks.pgd(model.to(memory_format=torch.contiguous_format),
                                             x[sub], y[sub], precision="fp32", **kw))
    clean = (predict(x) == y.cpu()).numpy()
    f_fast, f_es, f_32 = fooled(adv_fast), fooled(adv_es), fooled(adv_32, sub)
    n = len(x)
    t_32_scaled = t_32 / (sub.stop - sub.start) * n
    return {
        "machine": _machine(),
        "images": n,
        "search_precision": prec,
        "pgd7_seconds": round(t_fast, 1),
        "pgd7_fp32_baseline_seconds_scaled": round(t_32_scaled, 1),
        "pgd7_fp32_baseline_measured_on_images": sub.stop - sub.start,
        "speedup_vs_fp32": round(t_32_scaled / t_fast, 2),
        "pgd7_early_stop_seconds": round(t_es, 1),
        "speedup_early_stop_vs_fp32": round(t_32_scaled / t_es, 2),
        "target_seconds": 180,
        "clean_accuracy": round(float(clean.mean()), 4),
        "success_on_correct_fp32_verified": round(float(f_fast[clean].mean()), 4),
        "success_on_correct_early_stop": round(float(f_es[clean].mean()), 4),
        "success_on_correct_fp32_search_subset": round(float(f_32[clean[sub]].mean()), 4),
        "bf16_vs_fp32_same_outcome_subset": round(float((f_fast[sub] == f_32).mean()), 4),
        "mean_linf_fp32_verified": round(float((adv_fast - x).abs().flatten(1).max(1)[0].mean()), 5),
    }
