"""The settings of one vulnerability map (paper Alg. 1, ``core.vulnerability``), resolved once.

A pair's (bMap, aMap) depend on four settings:

- ``k``: half the side of the square patch that is swapped from the adversarial into the benign image
  (None: ``vulnerability.default_k``, an eighth of the shorter image side: k = 2 at 32 px, 14 at 224 px);
- ``stride``: the spacing of the grid of patch positions (None: ``vulnerability.default_stride``, the
  same scale as k; 1 computes every position, exact);
- ``output``: whose difference is measured, "probability" (the paper) or "logit";
- ``precision``: of the substituted forwards, "fp32", "bf16", or "auto" (bf16 where the device has fast
  bf16, ``core.device.resolve_precision``, the one place that decides it).

``MapSettings.resolve`` turns what a caller asks for into concrete values for one image size and device,
in one place; the result names the maps' cache file (``file_name``) and is what ``core.analysis`` and
``prepare`` pass to ``vulnerability.vulnerability_maps`` (``kwargs``). ``requested`` keeps the precision
that was asked for: maps precomputed by ``prepare`` at either precision serve "auto" (``serves``).

The app resolves the selection with ``offered=True``: a stride that is not one of the choices the pages
offer for this image size (``vulnerability.stride_choices``, e.g. one chosen on a 32-px experiment and
kept in a link to a 224-px one) falls back to the default, as does a k outside [1, min(H, W) // 2].
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

from core import vulnerability
from core.device import PRECISIONS, resolve_precision

MAX_K_FRACTION = 2  # k <= min(H, W) // 2 with ``offered``: a patch at most the image's size


def _int(name: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class MapSettings:
    """Concrete map settings: ``k`` and ``stride`` integers, ``output`` one of ``vulnerability.OUTPUTS``,
    ``precision`` "fp32" or "bf16" (resolved), ``requested`` the precision asked for (may be "auto")."""
    k: int
    stride: int
    output: str = "probability"
    precision: str = "fp32"
    requested: str = "fp32"

    @classmethod
    def resolve(cls, image_hw: tuple[int, int], device: torch.device | str = "cpu", *, k: int | None = None,
                stride: int | None = None, output: str = "probability", precision: str = "auto",
                offered: bool = False) -> MapSettings:
        """The settings for ``image_hw`` (H, W) images on ``device`` (see the module notes).
        ValueError for a bad value (a k or stride < 1, an unknown output or precision); with
        ``offered``, a stride outside the pages' choices or an oversized k becomes the default instead."""
        h, w = (int(v) for v in image_hw)
        if output not in vulnerability.OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(vulnerability.OUTPUTS)}; got {output!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
        if offered:
            if stride not in vulnerability.stride_choices(h, w):
                stride = None
            fits = isinstance(k, numbers.Integral) and 1 <= k <= min(h, w) // MAX_K_FRACTION
            k = k if fits else None
        k = vulnerability.default_k(h, w) if k is None else _int("k", k, 1)
        stride = vulnerability.default_stride(h, w) if stride is None else _int("stride", stride, 1)
        return cls(k=k, stride=stride, output=output, precision=resolve_precision(precision, device),
                   requested=precision)

    def file_name(self, pair: int) -> str:
        """The file of one pair's maps ((2,H,W) float32, bMap then aMap): in a store's ``derived/`` cache
        and in ``prepare``'s ``vulnerability_maps/`` (``vulnerability.map_file_name``)."""
        return vulnerability.map_file_name(int(pair), self.k, self.stride, self.output, self.precision)

    def kwargs(self) -> dict:
        """Keyword arguments of ``vulnerability.vulnerability_maps``."""
        return {"k": self.k, "stride": self.stride, "output": self.output, "precision": self.precision}

    def serves(self, k, stride, output, precision) -> bool:
        """Whether maps made with these settings (e.g. ``prepare``'s, from its manifest) are what this
        asks for: the same k, stride and output, and the asked precision, or either for "auto"."""
        return ((k, stride, output) == (self.k, self.stride, self.output)
                and self.requested in ("auto", precision))
