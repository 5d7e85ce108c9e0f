"""Features of a batch of images from one forward pass (paper §3.2, §5.1, §5.2.1).

For each image: the logits, the softmax probabilities, the pooled activations of the n neurons (the
t-SNE input and the "activation" of activation×weight), and the last-conv feature maps (n×h×w; the
receptive-field input). Hooks live only inside the call.

"pooled" follows the model's head (``ExplainedModel.head_type``, ``core.models.capture``): for a
"linear" head it is the vector the final linear layer reads, the global average of the maps, so
``logits = W · pooled + b``; for "conv1x1" the global average of the maps too (the same identity by
linearity); for "other" heads (an MLP, max or attention pooling, a norm after the pooling, ...) it is
still the global average of each neuron's map, one activation per neuron for the t-SNE, the class
statistics and the activation difference, though the head does not read it as such.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from core.device import autocast
from core.models import ExplainedModel, capture


@dataclass
class Features:
    logits: torch.Tensor  # (N, classes) float32
    probs: torch.Tensor  # (N, classes) float32
    pooled: torch.Tensor  # (N, n) float32: the neurons' global average activations (see above)
    fmaps: torch.Tensor | None  # (N, n, h, w) float32, or None when not asked for


@torch.no_grad()
def extract(model: ExplainedModel, images: torch.Tensor, *, batch_size: int = 128, fmaps: bool = True,
            precision: str = "fp32") -> Features:
    """Run ``model`` on ``images`` ((N,C,H,W) in [0,1]) in batches; results come back on the CPU.

    fp32 by default: these are the numbers users see.
    """
    device = next(model.parameters()).device
    out: dict[str, list[torch.Tensor]] = {"logits": [], "pooled": [], "fmaps": []}
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device)
        with capture(model) as cap, autocast(device, precision):
            logits = model(x)
        out["logits"].append(logits.float().cpu())
        out["pooled"].append(cap.pooled.float().flatten(1).cpu())
        if fmaps:
            out["fmaps"].append(cap.fmap.float().cpu())
    if not out["logits"]:
        n, c = model.num_neurons, model.num_classes
        h, w = model.fmap_size
        return Features(torch.zeros(0, c), torch.zeros(0, c), torch.zeros(0, n),
                        torch.zeros(0, n, h, w) if fmaps else None)
    logits = torch.cat(out["logits"])
    return Features(logits, logits.softmax(1), torch.cat(out["pooled"]),
                    torch.cat(out["fmaps"]) if fmaps else None)
