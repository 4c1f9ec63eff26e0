"""A small patch discriminator: one real/fake logit per overlapping image patch."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ..config import DiscriminatorConfig


class PatchDiscriminator(nn.Module):
    """PatchGAN-style (Isola et al. 2017) with spectral norm (Miyato et al. 2018) for stability."""

    def __init__(self, cfg: DiscriminatorConfig, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for i, width in enumerate(cfg.channels):
            stride = 2 if i < len(cfg.channels) - 1 else 1
            layers += [
                spectral_norm(nn.Conv2d(prev, width, 4, stride=stride, padding=1)),
                nn.LeakyReLU(0.2),
            ]
            prev = width
        layers.append(spectral_norm(nn.Conv2d(prev, 1, 3, padding=1)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 1, h, w) logits
        return self.net(x)
