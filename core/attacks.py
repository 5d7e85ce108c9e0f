"""Adversarial attacks in [0,1] pixel space, and their registry ``ATTACKS``: PGD (Madry et al. 2018, the
paper's §3.1/§6), FGSM and MI-FGSM (Dong et al. 2018).

PGD with budget ε, step α and κ steps (paper: κ=7, ε=8/255, α=2/255)::

    x⁰ = x                      (or x + U(-ε, ε), clamped to [0,1], with random_start)
    xᵗ⁺¹ = clip₀¹( x + clip₋ε^ε( xᵗ + α·sign(∇ₓ L(f(xᵗ), y)) − x ) )

L is the cross-entropy with the true label (ascended), or with a target label (descended, targeted).
FGSM is the single step x + ε·sign(∇ₓ L), clamped to [0,1].

MI-FGSM (momentum iterative FGSM, Dong et al. 2018, "Boosting Adversarial Attacks with Momentum"), with
momentum μ (default 1.0), κ steps (default 10) and step α (default ε/κ), from x⁰ = x and g⁰ = 0::

    gᵗ⁺¹ = μ·gᵗ + ∇ₓL(xᵗ) / ‖∇ₓL(xᵗ)‖₁            (the L1 norm per image)
    xᵗ⁺¹ = clip₀¹( x + clip₋ε^ε( xᵗ + α·sign(gᵗ⁺¹) − x ) )

torchattacks' MIFGSM divides by mean |∇| instead, ‖∇‖₁ over the pixel count: a positive constant per
image, so its g is that constant times this g and every sign step is the same (tests/core/test_mi_fgsm.py).

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

The registry: ``ATTACKS`` holds one :class:`Attack` per method (its name, function, parameters with
defaults, ranges, units and plain-words help). The config's ``[attack]`` keys and their checks
(``core.config``), the pipeline (through :func:`run`), the CLI's choices and the Prepare page's form are
generated from it, so adding an attack is its function, its entry (``register``) and its test. A
parameter's name is its ``[attack]`` key; a key several attacks share (``eps``, ``steps``) is one config
field, whose type, and its default where the config leaves the key out of a file naming no method, come
from the first attack that declares it. ``precision``, ``batch_size``, ``generator`` and ``targeted`` are
not parameters but how to run: :func:`run` passes each to the functions that accept it.
"""
from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

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


def mi_fgsm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps: float = 8 / 255,
            alpha: float | None = None, steps: int = 10, momentum: float = 1.0, targeted: bool = False,
            precision: str = "fp32", batch_size: int | None = None) -> torch.Tensor:
    """Momentum iterative FGSM (module notes): ``steps`` sign steps of size ``alpha`` (None: eps/steps)
    along the running gradient sum g ← μ·g + ∇/‖∇‖₁, projected to the ε-ball and [0, 1] every step."""
    _check(images, eps)
    if not eps > 0 or not steps >= 1 or not momentum >= 0:
        raise ValueError(f"mi-fgsm needs eps > 0, steps >= 1 and momentum >= 0 (got eps = {eps}, steps = "
                         f"{steps}, momentum = {momentum})")
    alpha = eps / steps if alpha is None else alpha
    if batch_size and len(images) > batch_size:  # the momentum is per image: chunks are independent
        return torch.cat([mi_fgsm(model, images[i:i + batch_size], labels[i:i + batch_size], eps=eps,
                                  alpha=alpha, steps=steps, momentum=momentum, targeted=targeted,
                                  precision=precision) for i in range(0, len(images), batch_size)])
    x = images.detach()
    adv, g = x.clone(), torch.zeros_like(x)
    with _eval(model):
        for _ in range(steps):
            grad, _ = _grad(model, adv, labels, targeted, precision)
            l1 = grad.abs().sum(dim=tuple(range(1, grad.dim())), keepdim=True)
            g = momentum * g + grad / l1.clamp_min(torch.finfo(grad.dtype).tiny)  # ∇ = 0: no new direction
            adv = (x + (adv + alpha * g.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    return adv.detach()


def _grad(model, adv, labels, targeted, precision):
    """∇ₓ of the summed cross-entropy at ``adv`` (of its negative when targeted), and the logits."""
    adv = adv.clone().requires_grad_(True)
    with autocast(adv.device, precision):
        logits = model(adv)
    loss = F.cross_entropy(logits.float(), labels, reduction="sum")
    grad, = torch.autograd.grad(-loss if targeted else loss, adv)
    return grad, logits


def _step(model, x, adv, labels, alpha, eps, targeted, precision, return_logits=False):
    grad, logits = _grad(model, adv, labels, targeted, precision)
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


# -- the registry ---------------------------------------------------------------------------------------
MAX_STEPS = 10_000  # iterations; more is a typo, and hours of work per image
_OPTIONS = ("precision", "batch_size", "generator", "targeted")  # how to run, not what to compute


class ParamError(ValueError):
    """An attack's parameters that cannot run; the message names the parameter and its valid range."""


@dataclass(frozen=True)
class Param:
    """One parameter of an attack: its ``[attack]`` key, type, default, range, units and help.

    ``default`` is a value, or a function of the attack's other parameters (a derived default, e.g. a
    step of ε/steps). ``lo``/``hi`` bound it (inclusive, ``lo`` exclusive with ``lo_open``); ``note`` says
    what the value means and ends the range's words; ``label``/``help``/``scale``/``step`` are the form's
    (the form shows ``value × scale``: 255 for pixel units in 1/255)."""
    name: str
    kind: type  # float, int or bool
    default: Any
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    note: str = ""
    label: str = ""
    help: str = ""
    scale: float = 1
    step: float = 1

    @property
    def expected(self) -> str:
        """A good value, in words: ``a number from 0 to 1 (pixel units: 8/255 = 0.0314)``."""
        note = f" ({self.note})" if self.note else ""
        if self.kind is bool:
            return "true or false" + note
        if self.kind is int:
            return f"a whole number from {int(self.lo) + self.lo_open} to {int(self.hi)}{note}"
        if self.lo_open:
            return f"a number > {self.lo:g} and at most {self.hi:g}{note}"
        return f"a number from {self.lo:g} to {self.hi:g}{note}"

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` has this parameter's type and lies in its range."""
        if self.kind is bool:
            return isinstance(value, bool)
        if isinstance(value, bool) or not isinstance(value, int | float) or (
                self.kind is int and not isinstance(value, int)):
            return False
        if not math.isfinite(value):
            return False
        return (value > self.lo if self.lo_open else value >= self.lo) and value <= self.hi

    def default_for(self, values: Mapping[str, Any]) -> Any:
        """The default, given the attack's other parameters (``values``) for a derived one."""
        return self.default(values) if callable(self.default) else self.default


@dataclass(frozen=True)
class Attack:
    """One attack: ``fn(model, images, labels, **params, **options)`` returns the adversarial images.

    ``label``/``help`` are the form's words; ``check`` is a rule between parameters (given all of them):
    None, or what is wrong as ``key = value: expected ...``."""
    name: str
    fn: Callable[..., torch.Tensor]
    label: str
    help: str
    params: dict[str, Param]
    check: Callable[[Mapping[str, Any]], str | None] = lambda p: None
    options: tuple[str, ...] = field(default=())  # the run options ``fn`` accepts (from its signature)


ATTACKS: dict[str, Attack] = {}
PARAMS: dict[str, Param] = {}  # every parameter name, first declaration wins: the config's fields


def register(name: str, fn: Callable[..., torch.Tensor], label: str, help: str, params: tuple[Param, ...],
             check: Callable[[Mapping[str, Any]], str | None] = lambda p: None) -> Attack:
    """Add an attack to ``ATTACKS``; a parameter a previous attack declared must keep its type."""
    if name in ATTACKS:
        raise ValueError(f"attack {name!r} is registered already")
    accepted = inspect.signature(fn).parameters
    for p in params:
        if p.name not in accepted:
            raise TypeError(f"{fn.__name__} has no parameter {p.name!r}")
        if p.name in PARAMS and PARAMS[p.name].kind is not p.kind:
            raise TypeError(f"parameter {p.name!r} of {name!r} is a {p.kind.__name__}, but a "
                            f"{PARAMS[p.name].kind.__name__} for {PARAMS[p.name]!r}")
    attack = Attack(name, fn, label, help, {p.name: p for p in params}, check,
                    tuple(o for o in _OPTIONS if o in accepted))
    ATTACKS[name] = attack
    for p in params:
        PARAMS.setdefault(p.name, p)
    return attack


def param(method: str, name: str) -> Param:
    """Parameter ``name`` as attack ``method`` declares it, else as first declared (``PARAMS``)."""
    spec = ATTACKS.get(method)
    return spec.params[name] if spec is not None and name in spec.params else PARAMS[name]


def resolve(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Every parameter of attack ``name``: ``params`` checked against the registry's types and ranges,
    the rest its defaults. A ParamError names the parameter and its valid values."""
    if name not in ATTACKS:
        raise ParamError(f"unknown attack {name!r}; attacks: {', '.join(ATTACKS)}")
    spec = ATTACKS[name]
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        raise ParamError(f"{name} has no parameter(s) {', '.join(unknown)}; its parameters: "
                         f"{', '.join(spec.params)}")
    values = dict(params)
    # derived defaults last: from values already checked
    for p in sorted(spec.params.values(), key=lambda p: callable(p.default)):
        if p.name not in values:
            values[p.name] = p.default_for(values)
        value = values[p.name]
        if p.kind is float and isinstance(value, int) and not isinstance(value, bool):
            values[p.name] = value = float(value)
        if not p.accepts(value):
            raise ParamError(f"{name}: {p.name} = {value!r}: expected {p.expected}")
    if (problem := spec.check(values)) is not None:
        raise ParamError(f"{name}: {problem}")
    return {p: values[p] for p in spec.params}


def run(name: str, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, precision: str = "fp32",
        batch_size: int | None = None, generator: torch.Generator | None = None, targeted: bool = False,
        **params) -> torch.Tensor:
    """Attack ``images`` with the registered attack ``name`` and ``params`` (the rest: its defaults).

    The run options (``precision``, ``batch_size``, ``generator``, ``targeted``) go to the attacks whose
    function accepts them; an attack without ``batch_size`` takes the images in one batch, one without a
    ``generator`` draws no noise. Bad parameters raise ParamError."""
    values = resolve(name, params)
    spec = ATTACKS[name]
    given = {"precision": precision, "batch_size": batch_size, "generator": generator, "targeted": targeted}
    if targeted and "targeted" not in spec.options:
        raise ParamError(f"{name} has no targeted form")
    return spec.fn(model, images, labels, **values, **{o: given[o] for o in spec.options})


_EPS = Param("eps", float, 8 / 255, 0, 1, note="pixel units: 8/255 = 0.0314", label="ε (/255)",
             help="The largest change of any pixel, in 1/255 of the pixel range; the paper uses 8.",
             scale=255, step=0.5)


def _pgd_check(p: Mapping[str, Any]) -> str | None:
    if p["steps"] > 0 and p["alpha"] == 0:
        return (f"alpha = 0: expected a step > 0 for PGD with {p['steps']} steps (e.g. eps/4, the paper's "
                "2/255 = 0.00784), or steps = 0")
    return None


register(
    "pgd", pgd, "PGD (the paper's)",
    "PGD takes several small steps, each in the direction that most lowers the model's confidence in the "
    "true class.",
    (_EPS,
     Param("alpha", float, 2 / 255, 0, 1, note="the PGD step in pixel units: 2/255 = 0.00784",
           label="Step α (/255)", help="The change per step, in 1/255; the paper uses 2.", scale=255,
           step=0.5),
     Param("steps", int, 7, 0, MAX_STEPS, note="PGD iterations; the paper: 7", label="Steps κ",
           help="How many small steps PGD takes; more steps find stronger attacks but take longer. The "
           "paper uses 7."),
     Param("random_start", bool, False, label="Random start inside the ε-ball",
           help="Off (the paper's PGD): the attack starts from the image itself. On: it starts from the "
           "image plus random noise of at most ε per pixel, as in Madry et al.'s own code. The noise comes "
           "from the run's seed: preparing again with the same settings gives the same attacks."),
     Param("early_stop", bool, False, label="Early stop (faster; not the paper's PGD)",
           help="Stop each image's attack as soon as the model gets it wrong: much faster, and the changes "
           "stay smaller, but it is not the attack the paper used.")),
    check=_pgd_check)
register("fgsm", fgsm, "FGSM (one step)", "FGSM takes one step of the full size ε (faster, weaker).",
         (_EPS,))
register(
    "mi-fgsm", mi_fgsm, "MI-FGSM (momentum)",
    "MI-FGSM takes several steps like PGD, each along a running sum (momentum) of the directions of all "
    "the steps so far, so single noisy directions matter less (Dong et al. 2018).",
    (Param("eps", float, 8 / 255, 0, 1, lo_open=True, note=_EPS.note, label=_EPS.label, help=_EPS.help,
           scale=255, step=0.5),
     Param("alpha", float, lambda p: p["eps"] / p["steps"], 0, 1, lo_open=True,
           note="the step in pixel units; left out: eps/steps", label="Step α (/255)",
           help="The change per step, in 1/255; Dong et al. use ε/steps.", scale=255, step=0.5),
     Param("steps", int, 10, 1, MAX_STEPS, note="iterations; Dong et al.: 10", label="Steps κ"),
     Param("momentum", float, 1.0, 0, 10, note="the decay μ of the running gradient sum; Dong et al.: 1.0",
           label="Momentum μ", help="How much of the earlier steps' direction each step keeps (MI-FGSM "
           "only): 0 forgets it (plain iterative FGSM), 1 (Dong et al.'s) keeps all of it.", step=0.1)))
