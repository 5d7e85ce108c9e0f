"""Adversarial attacks in [0,1] pixel space: PGD (Madry et al. 2018, the paper's §3.1/§6) and FGSM.

PGD with budget ε, step α and κ steps (paper: κ=7, ε=8/255, α=2/255)::

    x⁰ = x                      (or x + U(-ε, ε), clamped to [0,1], with random_start)
    xᵗ⁺¹ = clip₀¹( x + clip₋ε^ε( xᵗ + α·sign(∇ₓ L(f(xᵗ), y)) − x ) )

L is the cross-entropy with the true label (ascended), or with a target label (descended, targeted).
FGSM is the single step x + ε·sign(∇ₓ L), clamped to [0,1].

Choices:
- The loss is *summed* over the batch, not averaged: the sign of each image's gradient is then the
  same whatever the batch size (averaging can underflow small gradients to 0 in large batches).
- ``precision="bf16"`` runs the forward/backward under bf16 autocast (about 3.5× faster on CPUs with
  AMX and on GPUs). The search is then approximate, so callers must re-verify success in fp32:
  ``core.pipeline`` does, and only fp32-verified successes enter a store.
- ``early_stop=True`` (off by default, not the paper's PGD) stops updating an image at the first
  iterate the model misclassifies (or classifies as the target). It returns a smaller perturbation and
  skips most of the work; it exists because standard PGD-7 is compute-bound (BENCHMARKS.md).
- The **last iterate** xᵏ is returned, as in Madry et al.'s reference code (``pgd_attack.py``), which
  also keeps no best iterate. ``random_start`` (off by default: the paper describes no random start) is
  their code's start, x + U(−ε, ε) per pixel (their challenge configs turn it on), here clamped to [0, 1]
  at once; ``generator`` makes the noise reproducible. docs/method.md compares the two.
- The model is put in eval mode for the attack and restored afterwards; its weights are untouched
  and no weight gradients are computed (``torch.autograd.grad`` w.r.t. the input only).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from core.device import autocast


def pgd(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps: float = 8 / 255,
        alpha: float = 2 / 255, steps: int = 7, random_start: bool = False, targeted: bool = False,
        precision: str = "fp32", batch_size: int | None = None, early_stop: bool = False,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Return PGD adversarial images for ``images`` (N,C,H,W in [0,1]) with true (or target) ``labels``.

    ``model`` maps [0,1] images to logits, on the images' device. ``batch_size`` splits the work into
    chunks (None: one batch). The inputs are not modified.
    """
    _check(images, eps)
    if batch_size and len(images) > batch_size:
        return torch.cat([pgd(model, images[i:i + batch_size], labels[i:i + batch_size], eps=eps,
                              alpha=alpha, steps=steps, random_start=random_start, targeted=targeted,
                              precision=precision, early_stop=early_stop, generator=generator)
                          for i in range(0, len(images), batch_size)])
    x = images.detach()
    adv = x.clone()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, device="cpu").to(x) * 2 - 1
        adv = (adv + eps * noise).clamp(0, 1)
    with _eval(model):
        if not early_stop:
            for _ in range(steps):
                adv = _step(model, x, adv, labels, alpha, eps, targeted, precision)
            return adv.detach()
        # The logits of each step's forward tell which images the current iterate already fools:
        # those are frozen, so early stopping costs no extra forward pass.
        active = torch.arange(len(x), device=x.device)
        for _ in range(steps):
            new, logits = _step(model, x[active], adv[active], labels[active], alpha, eps, targeted,
                                precision, return_logits=True)
            pred = logits.argmax(1)
            keep = (pred != labels[active]) if targeted else (pred == labels[active])
            adv[active[keep]] = new[keep]
            active = active[keep]
            if len(active) == 0:
                break
    return adv.detach()


def fgsm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps: float = 8 / 255,
         targeted: bool = False, precision: str = "fp32") -> torch.Tensor:
    """Fast gradient sign method: one step of size ε from the clean image."""
    _check(images, eps)
    x = images.detach()
    with _eval(model):
        return _step(model, x, x.clone(), labels, eps, eps, targeted, precision).detach()


def _step(model, x, adv, labels, alpha, eps, targeted, precision, return_logits=False):
    adv = adv.clone().requires_grad_(True)
    with autocast(x.device, precision):
        logits = model(adv)
    loss = F.cross_entropy(logits.float(), labels, reduction="sum")
    grad, = torch.autograd.grad(-loss if targeted else loss, adv)
    adv = adv.detach() + alpha * grad.sign()
    new = (x + (adv - x).clamp(-eps, eps)).clamp(0, 1)
    return (new, logits.detach()) if return_logits else new


@contextlib.contextmanager
def _eval(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            yield
    finally:
        model.train(was_training)


def _check(images: torch.Tensor, eps: float) -> None:
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if eps < 0:
        raise ValueError("eps must be >= 0")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError("images must be in [0, 1] pixel space (normalization belongs in the model)")
