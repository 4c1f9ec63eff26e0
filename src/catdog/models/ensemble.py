"""The weighted mean of several denoisers' outputs, as one network.

Guided outputs are linear in the model's and the guide's outputs, so guiding an ensemble of
models by the ensemble of their guides (same weights) gives the weighted mean of each member's
own guided output; samplers and ``diffusion.guided_output`` take it unchanged (docs/design.md,
"Two models averaged").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Ensemble(nn.Module):
    """``sum_i weights[i] * members[i](x, t, labels)``. The members must share the latent shape,
    the labels and the noise schedule (the caller checks); ``cfg`` and ``null_label`` are the
    first member's."""

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float]) -> None:
        super().__init__()
        if len(members) != len(weights) or not members:
            raise ValueError(f"{len(members)} members but {len(weights)} weights")
        self.members = nn.ModuleList(members)
        self.weights = [float(w) for w in weights]
        self.cfg = members[0].cfg

    @property
    def null_label(self) -> int:
        return self.members[0].null_label

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return sum(w * m(x, t, labels) for w, m in zip(self.weights, self.members, strict=True))
