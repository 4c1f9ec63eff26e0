"""Exponential moving average of a model's weights; sampling uses the EMA copy."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """``shadow = decay * shadow + (1 - decay) * weights`` after every optimiser step."""

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for shadow, live in zip(self.model.parameters(), model.parameters(), strict=True):
            shadow.lerp_(live.detach(), 1 - self.decay)
        for shadow, live in zip(self.model.buffers(), model.buffers(), strict=True):
            shadow.copy_(live)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
