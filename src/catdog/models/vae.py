"""The VAE: encoder, mirrored decoder, diagonal Gaussian posterior, latent heads and statistics.

The latent is a 2D map (latent_channels x latent_size x latent_size) that the diffusion UNet
models directly. The per-channel mean and std of the training set's posterior means are stored
as buffers (``latent_mean``, ``latent_std``) so that the diffusion stage normalises with exactly
the statistics saved with the model, never with per-batch ones.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import VAEConfig
from .layers import ResBlock, group_norm


class Encoder(nn.Module):
    """Conv stem, residual blocks with attention, strided-conv downsampling, (mean, logvar) head."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        ch = cfg.channels
        self.stem = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        layers: list[nn.Module] = []
        for level, width in enumerate(ch):
            in_width = ch[level - 1] if level > 0 else ch[0]
            if level > 0:  # downsample by 2, changing width
                layers.append(nn.Conv2d(in_width, width, 4, stride=2, padding=1))
            for _ in range(cfg.blocks_per_level):
                attention = level >= cfg.attention_from_level
                layers.append(ResBlock(width, width, groups=cfg.norm_groups, attention=attention))
        self.body = nn.Sequential(*layers)
        self.norm_out = group_norm(ch[-1], cfg.norm_groups)
        self.head = nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(self.stem(x))  # (B, C_last, h, w)
        mean, logvar = self.head(torch.nn.functional.silu(self.norm_out(h))).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)


class Decoder(nn.Module):
    """Mirror of the encoder, upsampling with transposed convolutions; tanh output in [-1, 1]."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        ch = cfg.channels[::-1]
        self.stem = nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)
        layers: list[nn.Module] = []
        for level, width in enumerate(ch):
            if level > 0:  # upsample by 2 with a transposed convolution
                layers.append(nn.ConvTranspose2d(ch[level - 1], width, 4, stride=2, padding=1))
            for _ in range(cfg.blocks_per_level):
                attention = len(ch) - 1 - level >= cfg.attention_from_level  # mirrored levels
                layers.append(ResBlock(width, width, groups=cfg.norm_groups, attention=attention))
        self.body = nn.Sequential(*layers)
        self.norm_out = group_norm(ch[-1], cfg.norm_groups)
        self.head = nn.Conv2d(ch[-1], cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.body(self.stem(z))
        return torch.tanh(self.head(torch.nn.functional.silu(self.norm_out(h))))


class VAE(nn.Module):
    """Encoder and decoder, plus the latent classifier and class centers that the losses use."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        latent_dim = cfg.latent_channels * cfg.latent_size**2
        # A linear classifier on the flattened posterior mean, and one learnable center per class.
        self.classifier = nn.Linear(latent_dim, cfg.num_classes)
        self.class_centers = nn.Parameter(torch.zeros(cfg.num_classes, latent_dim))
        # Latent normalisation statistics, filled in from the training set after training.
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_channels))
        self.register_buffer("latent_std", torch.ones(cfg.latent_channels))
        self.register_buffer("has_latent_stats", torch.tensor(False))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance, each (B, latent_channels, h, w)."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from latents (B, latent_channels, h, w)."""
        return self.decoder(z)

    @staticmethod
    def sample_posterior(
        mean: torch.Tensor,
        logvar: torch.Tensor,
        generator: torch.Generator | None = None,
        eps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Reparameterised sample z = mean + std * eps, with ``eps`` when given (noise drawn
        elsewhere), else fresh noise."""
        if eps is None:
            eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * eps.to(mean.dtype)

    def forward(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        eps: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction (from a posterior sample), posterior mean, posterior log-variance.

        The sample uses ``eps`` when given (noise drawn elsewhere), else fresh noise."""
        mean, logvar = self.encode(x)
        return self.decode(self.sample_posterior(mean, logvar, generator, eps)), mean, logvar

    # Latent normalisation: stored with the model, used by the diffusion stage.
    def set_latent_stats(self, latent_means: torch.Tensor) -> None:
        """Per-channel mean and std of a set of posterior means (N, C, h, w)."""
        self.latent_mean.copy_(latent_means.mean(dim=(0, 2, 3)))
        self.latent_std.copy_(latent_means.std(dim=(0, 2, 3)).clamp_min(1e-6))
        self.has_latent_stats.fill_(True)

    def normalize_latent(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]

    def denormalize_latent(self, z: torch.Tensor) -> torch.Tensor:
        """The exact inverse of ``normalize_latent``."""
        return z * self.latent_std[:, None, None] + self.latent_mean[:, None, None]
