"""Benchmarks (``python -m core bench ...``): every ratio is measured within one run, on this machine.

``attack``: PGD-7 (ε=8/255, α=2/255) over N CIFAR-10 test images with the 512-neuron ResNet18 from
../shared, as ``prepare`` runs it (bf16 autocast search where the CPU/GPU has fast bf16, fp32-verified),
beside the fp32 baseline (the plain loop, timed on a subset and scaled to N, since it takes ~15 min
for 8,200 images on 2 cores) and the early-stopping variant; plus the agreement of bf16 and fp32 on
which images are fooled.

``analytics``: the neuron-space analytics (core.vulnerability, core.analysis) with the same ResNet18:
vulnerability-map times at strides 1 and 2 (fp32 batched, and the bf16 difference-propagation fast
path) beside the naive Alg. 1 loop (one fp32 forward per substituted image) measured in the same run;
the fast path's top-20% mask agreement (IoU) with fp32; the per-pair interactive analytics once a
store is open (RFs, IoU ranking, bands and band gap, substitution, linkage); and, on the CIFAR-10
store, stride-2 vs stride-1 fidelity and whether the dead neurons fall into one cluster.

``app`` (the §6.1.2 walk through the pages, with Streamlit's AppTest) drives the app, so it lives
outside the library: ``bench/app.py`` (core never imports the UI layer).

``scale``: vulnerability-map and PGD timings at 32 and 224 px on this machine's device (``bench_scale``).
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from core import attacks, data
from core import device as devices
from core.features import extract
from core.presets import preset


def machine() -> str:
    """The CPU, cores, GPU and torch version: every report says where it was measured."""
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
    prec = devices.resolve_precision("auto", device)
    fast = model.to(memory_format=torch.channels_last) if prec == "bf16" else model
    xf = x.contiguous(memory_format=torch.channels_last) if prec == "bf16" else x

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
        "machine": machine(),
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


def _sync() -> None:
    if torch.cuda.is_available():  # CUDA runs asynchronously: time the work, not its launch
        torch.cuda.synchronize()


def timed(fn, *args, repeat: int = 1, **kwargs):
    """(fn(*args, **kwargs), best wall time of ``repeat`` runs)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        _sync()
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        _sync()
        best = min(best, time.perf_counter() - t)
    return out, best


def _mask_iou(x, y, top: float) -> float:
    from core.vulnerability import binarize
    a, b = binarize(x, top), binarize(y, top)
    u = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / u) if u else 1.0


def bench_analytics(experiment: str = "cifar10-resnet18", pairs: int = 3, fidelity_pairs: int = 10,
                    store_pairs: int = 20, strides: tuple[int, ...] = (1, 2), cache_dir=None,
                    seed: int = 0) -> dict:
    """See the module docstring. ``pairs``: lossless CIFAR-10 test images (fooled by PGD-7) for the
    speed and bf16 agreement part; ``fidelity_pairs`` / ``store_pairs``: random pairs of the store
    ``experiment`` for the stride fidelity and dead-neuron check / the interactive-cost timing."""
    from core import clustering, vulnerability
    from core.analysis import Analysis
    from core.models import load_model
    from core.store import open_store
    from core.vulnerability import DEFAULT_TOP, reference_maps, vulnerability_maps
    torch.manual_seed(seed)
    cfg = preset("cifar10-resnet18")
    model = load_model(cfg.model, (3, 32, 32))
    x, y = data.lossless_pngs(Path(cfg.data.root).parent / "cifar10-test-lossless-20")
    adv = attacks.pgd(model, x, y, eps=cfg.attack.eps, alpha=cfg.attack.alpha, steps=cfg.attack.steps)
    with torch.no_grad():
        adv_label = model(adv).argmax(1)
    fooled = torch.nonzero(adv_label != y).flatten()[:pairs].tolist()
    k = vulnerability.default_k(32, 32)
    report: dict = {"machine": machine(), "model": "resnet18_cifar (512 last-conv neurons), 32x32",
                    "k": k, "top": DEFAULT_TOP, "fast_precision": "bf16 (difference propagation)"}

    def maps(i, stride, precision):
        return vulnerability_maps(model, x[i], adv[i], int(y[i]), int(adv_label[i]), k=k, stride=stride,
                                  precision=precision)
    maps(fooled[0], 4, "bf16"), maps(fooled[0], 4, "fp32")  # warm-up (oneDNN kernel selection)
    for s in strides:
        i = fooled[0]
        ref, t_ref = timed(reference_maps, model, x[i], adv[i], int(y[i]), int(adv_label[i]), k=k, stride=s)
        f32, t_32 = timed(maps, i, s, "fp32", repeat=2)
        _, t_16 = timed(maps, i, s, "bf16", repeat=2)
        report[f"stride{s}"] = {
            "naive_loop_s": round(t_ref, 3), "fp32_batched_s": round(t_32, 3), "fast_bf16_s": round(t_16, 3),
            "speedup_fp32_vs_naive": round(t_ref / t_32, 2), "speedup_fast_vs_naive": round(t_ref / t_16, 2),
            "fp32_max_abs_diff_vs_naive": float(max((f32[j] - ref[j]).abs().max() for j in range(2))),
        }
        ious = []
        for i in fooled:
            a32, a16 = maps(i, s, "fp32"), maps(i, s, "bf16")
            ious.append([_mask_iou(a32[j], a16[j], DEFAULT_TOP) for j in range(2)])
        ious = np.asarray(ious)
        report[f"stride{s}"]["fast_vs_fp32_top20_iou"] = {
            "pairs": len(fooled), "bmap_min": round(float(ious[:, 0].min()), 4),
            "bmap_mean": round(float(ious[:, 0].mean()), 4), "amap_min": round(float(ious[:, 1].min()), 4),
            "amap_mean": round(float(ious[:, 1].mean()), 4)}
    report["target"] = {"stride1_s": 0.5, "speedup_vs_naive": 10, "fast_iou": 0.9, "per_pair_ms": 150}

    store = open_store(experiment, cache_dir)  # None: core.store.cache_dir()
    an = Analysis(store)
    rng = np.random.default_rng(seed)
    ids = rng.choice(len(store), size=min(store_pairs, len(store)), replace=False).tolist()
    _, t_thr = timed(an.rf_thresholds)
    an.head  # noqa: B018 -- loads the model once, as the app does when the store opens

    def interactive(p):
        an.rf(p, "benign"), an.rf(p, "adversarial")
        an.neuron_measures(p)
        an.linkage(p)
    costs = [timed(interactive, p)[1] for p in ids]
    # the IoU ranking given the (cached) maps: RFs + binarize + IoU
    an.vulnerability_maps(ids[0], stride=2, precision="bf16")
    _, t_iou = timed(an.iou_ranking, ids[0], stride=2, precision="bf16", repeat=3)
    report["store"] = {
        "experiment": experiment, "pairs": len(store), "rf_thresholds_once_s": round(t_thr, 2),
        "per_pair_rfs_bands_gap_substitution_linkage_ms": {
            "median": round(1000 * float(np.median(costs)), 1), "max": round(1000 * max(costs), 1),
            "pairs_timed": len(ids)},
        "iou_ranking_given_maps_ms": round(1000 * t_iou, 1)}

    fid = []
    for p in ids[:fidelity_pairs]:
        b, a = (torch.from_numpy(np.array(v)) for v in store.pair_images(p))
        bc, ac = an.classes_of(p)
        run = {s: timed(vulnerability_maps, an.model, b, a, bc, ac, k=k, stride=s) for s in (1, 2)}
        ious = [_mask_iou(run[1][0][j], run[2][0][j], DEFAULT_TOP) for j in range(2)]
        Z = an.linkage(p)
        fmaps_b = np.asarray(store.array("benign_fmaps")[p], dtype=np.float32)
        fmaps_a = np.asarray(store.array("adversarial_fmaps")[p], dtype=np.float32)
        dead = np.flatnonzero((fmaps_b.reshape(len(fmaps_b), -1).max(1) <= 0)
                              & (fmaps_a.reshape(len(fmaps_a), -1).max(1) <= 0))
        node = clustering.common_ancestor(Z, dead) if len(dead) else None
        cluster = clustering.subtree(Z, node) if len(dead) else dead
        empty = ~(an.rf(p, "benign")[1].flatten(1).any(1) | an.rf(p, "adversarial")[1].flatten(1).any(1))
        fid.append({"pair": p, "iou_bmap": ious[0], "iou_amap": ious[1],
                    "time_ratio": run[2][1] / run[1][1], "dead": len(dead), "cluster": len(cluster),
                    "cluster_all_empty_rf": bool(empty[torch.as_tensor(cluster, dtype=torch.long)].all()),
                    "empty_rf": int(empty.sum()),
                    "height": float(Z[node - len(Z) - 1, 2]) if len(dead) > 1 else 0.0})
    report["fidelity_stride2_vs_stride1"] = {
        "pairs": len(fid), "precision": "fp32",
        "top20_iou_bmap_mean": round(float(np.mean([f["iou_bmap"] for f in fid])), 4),
        "top20_iou_bmap_min": round(float(np.min([f["iou_bmap"] for f in fid])), 4),
        "top20_iou_amap_mean": round(float(np.mean([f["iou_amap"] for f in fid])), 4),
        "top20_iou_amap_min": round(float(np.min([f["iou_amap"] for f in fid])), 4),
        "time_ratio_stride2_over_stride1": round(float(np.mean([f["time_ratio"] for f in fid])), 3)}
    report["dead_neurons"] = {
        "definition": "all-zero last-conv map on both images of the pair; cluster = the smallest "
                      "dendrogram subtree (L2 of RFs, average linkage) holding all of them",
        "pairs": len(fid), "mean_dead_per_pair": round(float(np.mean([f["dead"] for f in fid])), 1),
        "mean_empty_rf_per_pair": round(float(np.mean([f["empty_rf"] for f in fid])), 1),
        "mean_cluster_size": round(float(np.mean([f["cluster"] for f in fid])), 1),
        "pairs_where_cluster_is_exactly_the_dead": int(sum(f["cluster"] == f["dead"] for f in fid)),
        "pairs_where_cluster_has_only_empty_rf_neurons": int(sum(f["cluster_all_empty_rf"] for f in fid)),
        "max_merge_height_of_that_cluster": round(max(f["height"] for f in fid), 6)}
    return report


def bench_scale(images_224: int = 16, images_32: int = 128, seed: int = 0) -> dict:
    """``scale``: the issue-6 timings on this machine's device (a CUDA GPU when there is one, else the
    CPU), each path as ``prepare`` and the app run it (precision "auto", batch sizes from
    ``core.device``):

    - the vulnerability map of a 32×32 pair with the 512-neuron CIFAR ResNet18 (../shared), stride 1;
    - the map of a 224×224 pair with a WideResNet18 of the Places365 layout (512 neurons, 14×14; random
      weights, as no Places365 checkpoint ships offline; the cost does not depend on the weights) at
      stride 1 on a GPU (the target: ≤ 1 s) and, on a CPU, at the app's default stride 14 (256
      substitutions; stride 1 is 50,176) with the stride-1 time extrapolated from its substitutions per
      second (marked ``_estimated``);
    - the 224-px fast map's top-20% agreement (IoU) with the fp32 map at the measured stride;
    - PGD-7 throughput (images/s) at 32 px (ResNet18) and 224 px (WRN18), fp32-verified as in prepare.

    The 224-px pair is a lossless CIFAR-10 test image upsampled to 224 px and its PGD-7 adversarial.
    """
    import torch.nn.functional as F

    from core import vulnerability
    from core.models import ARCHITECTURES, ExplainedModel, build_architecture, load_model
    torch.manual_seed(seed)
    dev = devices.resolve_device("auto")
    prec = devices.resolve_precision("auto", dev)
    cfg = preset("cifar10-resnet18")
    x32, y32 = data.lossless_pngs(Path(cfg.data.root).parent / "cifar10-test-lossless-20")
    r18 = load_model(cfg.model, (3, 32, 32)).to(dev)
    _, mean, std = ARCHITECTURES["wrn18_places365"]
    wrn = ExplainedModel(build_architecture("wrn18_places365", 365), mean, std, (3, 224, 224)).to(dev)
    x224 = F.interpolate(x32, size=(224, 224), mode="bilinear", align_corners=False).clamp(0, 1)
    report: dict = {"machine": machine(), "device": str(dev), "precision": prec}

    def pair(model, x):
        x = x.to(dev)
        with torch.no_grad():
            y = model(x).argmax(1)
        adv = attacks.pgd(model, x, y, eps=8 / 255, alpha=2 / 255, steps=7, precision="fp32")
        with torch.no_grad():
            ya = model(adv).argmax(1)
        i = int(torch.nonzero(ya != y).flatten()[0]) if bool((ya != y).any()) else 0
        yb, yad = int(y[i]), int(ya[i])
        return x[i], adv[i], yb, yad if yad != yb else (yb + 1) % model.num_classes  # timing only

    def vmap(model, p, stride, precision):
        return vulnerability.vulnerability_maps(model, *p, stride=stride, precision=precision)

    p32 = pair(r18, x32[:8])
    vmap(r18, p32, 4, prec)  # warm-up (kernel selection)
    _, t32 = timed(vmap, r18, p32, 1, "auto", repeat=2)
    report["map_32px_resnet18_stride1_s"] = round(t32, 3)

    p224 = pair(wrn, x224[:2])
    stride = 1 if dev.type == "cuda" else vulnerability.default_stride(224, 224)
    vmap(wrn, p224, 56, prec)  # warm-up
    fast, t224 = timed(vmap, wrn, p224, stride, "auto")
    subs = len(range(0, 224, stride)) ** 2
    key = "map_224px_wrn18_stride1_s" if stride == 1 else f"map_224px_wrn18_stride{stride}_s"
    report[key] = round(t224, 3)
    report["map_224px_substitutions_per_s"] = round(subs / t224, 1)
    if stride != 1:
        report["map_224px_wrn18_stride1_s_estimated"] = round(224 * 224 / (subs / t224), 1)
    exact, t224_32 = timed(vmap, wrn, p224, stride, "fp32")
    report[f"map_224px_fp32_stride{stride}_s"] = round(t224_32, 3)
    report["map_224px_fast_vs_fp32_top20_iou"] = [round(_mask_iou(exact[j].numpy(), fast[j].numpy(), 0.2), 4)
                                                   for j in range(2)]
    report["map_224px_batch"] = devices.batch_size(wrn, (3, 224, 224), dev, precision=prec)
    report["target_map_224px_stride1_gpu_s"] = 1.0

    for name, model, x, n in (("32px_resnet18", r18, x32, images_32), ("224px_wrn18", wrn, x224, images_224)):
        x = x.repeat(-(-n // len(x)), 1, 1, 1)[:n].to(dev)
        with torch.no_grad():
            y = model(x).argmax(1)
        bs = devices.batch_size(model, tuple(x.shape[1:]), dev, backward=True, precision=prec)
        fast_model = model.to(memory_format=torch.channels_last) if prec == "bf16" else model
        attacks.pgd(fast_model, x[:bs], y[:bs], precision=prec, batch_size=bs)  # warm-up
        _, t = timed(attacks.pgd, fast_model, x, y, precision=prec, batch_size=bs)
        report[f"pgd7_{name}_images_per_s"] = round(n / t, 2)
        report[f"pgd7_{name}_batch"] = bs
    return report
