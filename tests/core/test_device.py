"""core.device: device choice and batch sizes (the arithmetic on any machine; the CUDA measurement only
where a GPU is present)."""
import pytest
import torch

from core import device
from core.models import ExplainedModel, build_architecture


def test_batch_from_memory_fits_the_free_fraction():
    gib = 1 << 30
    # 10 GiB free, 60% usable, 1 GiB fixed: (6 - 1) GiB / 20 MiB = 256 images
    assert device.batch_from_memory(10 * gib, 20 << 20, fixed=gib, fraction=0.6) == 256
    # rounded down to a multiple of 8 when at least 8 fit
    assert device.batch_from_memory(100 * 13, 100, fraction=1.0) == 8
    assert device.batch_from_memory(100 * 7, 100, fraction=1.0) == 7
    # never 0, never above the cap
    assert device.batch_from_memory(10, 1 << 30) == 1
    assert device.batch_from_memory(1 << 50, 1, cap=512) == 512
    assert device.batch_from_memory(1 << 30, 0) == device.GPU_MAX_BATCH


def test_cpu_batch_scales_with_image_area():
    assert device.cpu_batch((32, 32)) == 128
    assert device.cpu_batch((28, 28)) == 128
    assert device.cpu_batch((64, 64)) == 32
    assert device.cpu_batch((224, 224)) == device.MIN_BATCH


def test_requested_batch_wins_and_cpu_needs_no_measurement():
    m = ExplainedModel(build_architecture("resnet20_cifar", 10), (0.5,), (0.25,), (3, 32, 32))
    cpu = torch.device("cpu")
    assert device.batch_size(m, (3, 32, 32), cpu, requested=7) == 7
    assert device.batch_size(m, (3, 32, 32), cpu, backward=True) == 128
    assert device.batch_size(m, (3, 224, 224), cpu) == device.MIN_BATCH


def test_resolve_device():
    assert device.resolve_device("cpu") == torch.device("cpu")
    assert device.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(device.DeviceError, match="no CUDA GPU"):
            device.resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs on the device machine)")
def test_gpu_batch_is_measured_from_free_memory():
    dev = torch.device("cuda")
    m = ExplainedModel(build_architecture("wrn18_places365", 365), (0.5,), (0.25,), (3, 224, 224)).to(dev)
    fwd = device.per_image_bytes(m, (3, 224, 224), dev, backward=False)
    bwd = device.per_image_bytes(m, (3, 224, 224), dev, backward=True)
    assert 0 < fwd < bwd  # a backward pass keeps the activations
    bs = device.batch_size(m, (3, 224, 224), dev, backward=True)
    free, _ = torch.cuda.mem_get_info(dev)
    assert 1 <= bs <= device.GPU_MAX_BATCH and bs * bwd <= free
    x = torch.rand(bs, 3, 224, 224, device=dev, requires_grad=True)  # the chosen batch really fits
    m(x).sum().backward()


def test_bench_scale_reports_this_device(cifar_root, models_dir):
    # the issue-6 device benchmark, small: on a CPU the 224-px map runs at the app's stride and the
    # stride-1 time is an extrapolation; on a GPU (the device machine) it is measured at stride 1
    from core.bench import bench_scale
    r = bench_scale(images_224=2, images_32=8)
    assert r["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert r["map_32px_resnet18_stride1_s"] > 0 and r["map_224px_substitutions_per_s"] > 0
    stride1 = r.get("map_224px_wrn18_stride1_s", r.get("map_224px_wrn18_stride1_s_estimated"))
    assert stride1 and stride1 > 0
    assert all(0.5 <= iou <= 1 for iou in r["map_224px_fast_vs_fp32_top20_iou"])
    assert r["pgd7_32px_resnet18_images_per_s"] > 0 and r["pgd7_224px_wrn18_images_per_s"] > 0


def test_resolve_precision_is_the_one_place_auto_is_decided():
    from core.device import fast_bf16_available, resolve_precision
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("auto", cpu) == ("bf16" if fast_bf16_available(cpu) else "fp32")
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16", cpu)
