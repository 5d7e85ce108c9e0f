"""Where the heavy work runs and in what batch sizes: the CPU, or a CUDA GPU when there is one.

Everything that runs the CNN (the attack, the feature pass, the vulnerability maps) takes its tensors
to ``resolve_device(...)``; on CUDA the attack and the maps use bf16 (``autocast``, the maps'
difference propagation) and every number users see comes from an fp32 pass, as on the CPU.

Batch sizes (``batch_size``):

- **CPU**: ``CPU_BATCH`` = 128 images of 32×32 (the fastest measured on this project's machines:
  64–128), scaled down in proportion to the pixels of larger images (at least ``MIN_BATCH``), so a
  224-px map or attack keeps its activations to a few hundred MB instead of gigabytes.
- **CUDA**: as many images as fit in ``FREE_FRACTION`` of the GPU's free memory, from the memory one
  image costs, measured on the model itself once per input shape and pass (peak allocation of a
  2-image and a 4-image pass, forward and, for the attack, backward: ``per_image_bytes``), capped at
  ``GPU_MAX_BATCH``, rounded down to a multiple of 8. ``batch_from_memory`` is that arithmetic, kept
  pure so it is tested on any machine.

Precision. "auto" means bf16 where the device has fast bf16 (``fast_bf16_available``), else fp32; it is
resolved in one place, ``resolve_precision``, for the attack, the feature pass, the maps and the
benchmarks alike.
"""
from __future__ import annotations

import contextlib
import functools
import weakref

import torch
from torch import nn

CPU_BATCH = 128
MIN_BATCH = 8
GPU_MAX_BATCH = 2048
FREE_FRACTION = 0.6  # of the free GPU memory: room for the allocator's fragmentation and other users
# per model: {(input shape, backward, precision): bytes per image}, measured once (each app map asks)
_MEASURED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class DeviceError(RuntimeError):
    """A device that was asked for is not there; the message says what to use instead."""


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto``: the first CUDA GPU when there is one, else the CPU; ``cuda`` without a GPU is refused."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError("[prepare] device = cuda, but no CUDA GPU is available; use auto or cpu")
    return torch.device(name)


def cpu_batch(image_hw: tuple[int, int]) -> int:
    """``CPU_BATCH`` per 32×32 image area, at least ``MIN_BATCH``: 128 at 32 px, 8 at 224 px."""
    h, w = image_hw
    return max(MIN_BATCH, min(CPU_BATCH, CPU_BATCH * 32 * 32 // max(1, h * w)))


def batch_from_memory(free_bytes: int, per_image: int, fixed: int = 0, *,
                      fraction: float = FREE_FRACTION, cap: int = GPU_MAX_BATCH) -> int:
    """Images that fit in ``fraction`` of ``free_bytes`` after ``fixed`` bytes, at ``per_image`` bytes
    each: a multiple of 8 when at least 8 fit, never below 1, never above ``cap``."""
    if per_image <= 0:
        return cap
    n = int((free_bytes * fraction - fixed) // per_image)
    if n >= 8:
        n -= n % 8
    return max(1, min(cap, n))


def per_image_bytes(model: nn.Module, input_shape: tuple[int, ...], device: torch.device, *,
                    backward: bool, precision: str = "fp32") -> int:
    """Peak CUDA memory one more image adds to a pass of ``model`` (forward, plus backward to the input
    when ``backward``): the difference between a 4-image and a 2-image pass, halved."""
    peaks = []
    for n in (2, 4):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        x = torch.rand((n, *input_shape), device=device, requires_grad=backward)
        with torch.set_grad_enabled(backward), autocast(device, precision):
            out = model(x)
        if backward:
            out.float().sum().backward()
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - base)
        del x, out
    return max(1, (peaks[1] - peaks[0]) // 2)


def batch_size(model: nn.Module, input_shape: tuple[int, ...], device: torch.device, *,
               backward: bool = False, precision: str = "fp32", requested: int = 0) -> int:
    """The batch size to use: ``requested`` when > 0, else ``cpu_batch`` on a CPU and the measured
    ``batch_from_memory`` on CUDA."""
    if requested > 0:
        return int(requested)
    if device.type != "cuda":
        return cpu_batch(tuple(input_shape[-2:]))
    free, _total = torch.cuda.mem_get_info(device)
    measured = _MEASURED.setdefault(model, {})
    key = (tuple(input_shape), backward, precision, str(device))
    if key not in measured:  # a model property: free memory is read on every call, this only once
        measured[key] = per_image_bytes(model, input_shape, device, backward=backward, precision=precision)
    return batch_from_memory(free, measured[key])


PRECISIONS = ("auto", "fp32", "bf16")


def autocast(device: torch.device, precision: str):
    """bf16 autocast for "bf16", nothing for "fp32"."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"precision must be 'fp32' or 'bf16', not {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16)


def fast_bf16_available(device: torch.device) -> bool:
    """True where bf16 convolutions are fast: CUDA with bf16 support, or a CPU with AMX-bf16 or
    AVX512-BF16 instructions (measured here: ~3× fp32 for PGD on an AVX512-BF16 EPYC)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return _cpu_has_fast_bf16()


@functools.cache
def _cpu_has_fast_bf16() -> bool:
    """The CPU's flags, read once: every map request resolves "auto" (``resolve_precision``), several
    times per page rerun, and the flags cannot change while the process runs."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """"fp32" or "bf16" for ``precision`` on ``device``: "auto" becomes bf16 where the device has fast
    bf16 (``fast_bf16_available``), else fp32; the others are returned as they are."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if fast_bf16_available(torch.device(device)) else "fp32"
