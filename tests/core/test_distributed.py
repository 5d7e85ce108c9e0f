"""A Ray-sharded prepare writes the store a single-process prepare writes (issue 6).

A local Ray cluster (``ray.init(num_cpus=2)``: two 1-thread workers) prepares a small real experiment
(ResNet20, 5 real CIFAR-10 test images per class in an ImageFolder under tmp, PGD, 3 precomputed
vulnerability maps) and the same config is prepared in this process on one torch thread. Tolerance:
every integer array and the pair table's ids/labels must be identical; every float array equal within
1e-6 absolute (the same code on the same chunks and seeds: we measured bit-identical results; the
tolerance only allows for a different BLAS path on another machine).
"""
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

ray = pytest.importorskip("ray", reason="pip install ray (the project's test extra) for the Ray test")

from core.pipeline import prepare  # noqa: E402
from core.presets import preset  # noqa: E402
from core.store import Store  # noqa: E402


@pytest.fixture(scope="module")
def small_folder(cifar_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    for cls in sorted(p.name for p in cifar_root.iterdir() if p.is_dir()):
        (root / cls).mkdir()
        for f in sorted((cifar_root / cls).iterdir())[:5]:
            shutil.copy(f, root / cls / f.name)  # a tmp copy, so the workers scan 50 files, not 10,000
    return root


def test_ray_sharded_prepare_equals_single_process(small_folder, models_dir, tmp_path):
    from core.distributed import RayRunner
    cfg = preset("cifar10-resnet56", [
        "data.source=\"image_folder\"", f'data.root="{small_folder}"',
        "model.arch=\"resnet20_cifar\"", f'model.checkpoint="{models_dir / "resnet20-12fca82f.th"}"',
        "attack.precision=\"fp32\"", "prepare.batch_size=4", "prepare.tsne_perplexity=5",
        "prepare.maps=3", "prepare.maps_stride=4", "prepare.maps_precision=\"fp32\"",
        "prepare.device=\"cpu\""])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = Store(prepare(cfg, "single", cache_dir=tmp_path, show_bars=False))
    finally:
        torch.set_num_threads(threads)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        runner = RayRunner(cfg, workers=2)
        sharded = Store(prepare(cfg, "sharded", cache_dir=tmp_path, show_bars=False, runner=runner))
        runner.close()
    finally:
        ray.shutdown()

    assert sharded.manifest["attack"]["workers"] == 2 and single.manifest["attack"]["workers"] == 1
    assert sharded.counts == single.counts and len(single) > 0
    # 50 images at batch 4: chunks of 16 -> several chunks per stage, so both workers took part
    assert single.counts["n_images"] == 50
    names = sorted(p.stem for p in single.path.glob("*.npy"))
    assert names == sorted(p.stem for p in sharded.path.glob("*.npy")) and "adversarial_fmaps" in names
    for name in names:
        a, b = single.array(name), sharded.array(name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        if np.issubdtype(a.dtype, np.integer):
            np.testing.assert_array_equal(a, b, err_msg=name)
        else:
            np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=0,
                                       atol=1e-6, err_msg=name)
    cols = ["pair", "index", "label", "adv_label"]
    pd.testing.assert_frame_equal(single.pairs[cols], sharded.pairs[cols])
    for k, v in single.class_stats.items():
        np.testing.assert_allclose(v, sharded.class_stats[k], rtol=0, atol=1e-6, err_msg=k)
    info = single.manifest["vulnerability_maps"]
    assert info == sharded.manifest["vulnerability_maps"] and len(info["pairs"]) == 3
    for f in sorted((single.path / "vulnerability_maps").iterdir()):
        np.testing.assert_allclose(np.load(f), np.load(sharded.path / "vulnerability_maps" / f.name),
                                   rtol=0, atol=1e-6, err_msg=f.name)
