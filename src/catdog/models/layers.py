"""Shared building blocks, defined once: normalisation, attention and residual blocks."""

from __future__ import annotations

import math

import torch
from torch import nn


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= ``groups`` that divides ``channels``."""
    groups = max(1, min(groups, channels))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation channel attention (Hu et al. 2018; CBAM's channel branch)."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(4, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.SiLU(), nn.Conv2d(hidden, channels, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        # CBAM eq. 2: shared MLP on average- and max-pooled descriptors.
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        mx = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return x * torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """CBAM spatial attention (Woo et al. 2018, eq. 3): a 7x7 conv over channel-pooled maps."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class ResBlock(nn.Module):
    """Pre-activation residual block: (GroupNorm, SiLU, conv) x 2, then channel + spatial attention.

    ``emb_dim`` > 0 adds a per-channel shift from an embedding vector (used by the UNet for
    time and class), so the VAE and the UNet share this one block.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        groups: int = 8,
        attention: bool = True,
        emb_dim: int = 0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_channels) if emb_dim > 0 else None
        self.norm2 = group_norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.attn = (
            nn.Sequential(ChannelAttention(out_channels), SpatialAttention())
            if attention
            else nn.Identity()
        )
        self.skip = (
            nn.Conv2d(in_channels, out_channels, 1)
            if in_channels != out_channels
            else nn.Identity()
        )
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        if self.emb is not None and emb is not None:
            h = h + self.emb(self.act(emb))[:, :, None, None]
        h = self.conv2(self.dropout(self.act(self.norm2(h))))
        return self.skip(x) + self.attn(h)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the h*w positions of a feature map, with a residual."""

    def __init__(self, channels: int, *, heads: int = 4, groups: int = 8) -> None:
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, H*W, C)
        out, _ = self.attn(tokens, tokens, tokens, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps (Vaswani et al. 2017; DDPM)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return nn.functional.pad(emb, (0, dim % 2))
