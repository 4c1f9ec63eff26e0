"""The class-conditional UNet that denoises VAE latents.

Residual blocks receive a time embedding (sinusoidal, then an MLP) plus a class embedding.
The class embedding has one extra row, the null label. The training loop replaces labels by it
with probability ``class_dropout`` (``UNet.drop_labels``), so one network gives both the
conditional and the unconditional prediction that classifier-free guidance combines (Ho &
Salimans 2022).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..config import UNetConfig
from .layers import ResBlock, SelfAttention, group_norm, timestep_embedding


class ClassEmbedder(nn.Module):
    """Label -> embedding, with one more row for the named null label.

    With ``subclasses`` K > 1 the labels it embeds are sub-class labels, ``class * K + k``, and
    ``subclass_prior`` (num_classes, K) holds how often each sub-class occurs in its class."""

    def __init__(self, num_classes: int, dim: int, subclasses: int = 1) -> None:
        super().__init__()
        self.num_classes, self.subclasses = num_classes, subclasses
        self.null_label = num_classes * subclasses
        self.embedding = nn.Embedding(self.null_label + 1, dim)
        if subclasses > 1:
            self.register_buffer("subclass_prior", torch.full((num_classes, subclasses),
                                                              1.0 / subclasses))  # fmt: skip

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding(labels)


class Level(nn.Module):
    """Residual blocks (optionally each followed by self-attention) at one resolution."""

    def __init__(self, in_ch: int, out_ch: int, cfg: UNetConfig, emb_dim: int, attention: bool):
        super().__init__()
        self.blocks = nn.ModuleList(
            ResBlock(in_ch if i == 0 else out_ch, out_ch, groups=cfg.norm_groups, attention=False,
                     emb_dim=emb_dim, dropout=cfg.dropout)
            for i in range(cfg.blocks_per_level)
        )  # fmt: skip
        self.attn = nn.ModuleList(
            SelfAttention(out_ch, heads=cfg.heads, groups=cfg.norm_groups)
            if attention
            else nn.Identity()
            for _ in range(cfg.blocks_per_level)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for block, attn in zip(self.blocks, self.attn, strict=True):
            x = attn(block(x, emb))
        return x


class UNet(nn.Module):
    """``forward(x_t, t, labels)`` -> the objective's prediction (eps or v), shaped like x_t."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        emb_dim = 4 * ch[0]
        self.time_mlp = nn.Sequential(
            nn.Linear(ch[0], emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.class_embedder = ClassEmbedder(cfg.num_classes, emb_dim, cfg.subclasses)
        self.augment_embedder = (
            nn.Linear(cfg.augment_dim, emb_dim, bias=False) if cfg.augment_dim > 0 else None
        )
        in_ch = cfg.latent_channels * (2 if cfg.self_condition else 1)
        self.stem = nn.Conv2d(in_ch, ch[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for level, width in enumerate(ch):
            prev = ch[level - 1] if level > 0 else ch[0]
            self.down.append(Level(prev, width, cfg, emb_dim, level in cfg.attention_levels))
            if level < len(ch) - 1:
                self.downsample.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
        self.middle = Level(ch[-1], ch[-1], cfg, emb_dim, attention=True)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(len(ch))):
            width = ch[level]  # input: the path (already at width) concatenated with the skip
            self.up.append(Level(2 * width, width, cfg, emb_dim, level in cfg.attention_levels))
            if level > 0:
                self.upsample.append(
                    nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                  nn.Conv2d(width, ch[level - 1], 3, padding=1))
                )  # fmt: skip
        self.norm_out = group_norm(ch[0], cfg.norm_groups)
        self.head = nn.Conv2d(ch[0], cfg.latent_channels, 3, padding=1)
        nn.init.zeros_(self.head.weight)  # start as the zero predictor (stable early training)
        nn.init.zeros_(self.head.bias)

    @property
    def null_label(self) -> int:
        return self.class_embedder.null_label

    def draw_subclasses(
        self, labels: torch.Tensor, generators: Sequence[torch.Generator]
    ) -> torch.Tensor:
        """Class labels (the class null label ``cfg.num_classes`` included) -> the labels this
        network embeds: each class label gets a sub-class drawn from ``subclass_prior`` with its
        image's own generator, so an image depends on its seed only. Without sub-classes the
        labels are returned as they are."""
        embedder = self.class_embedder
        if embedder.subclasses == 1:
            return labels
        if len(generators) != len(labels):
            raise ValueError(f"{len(labels)} labels but {len(generators)} generators")
        out = []
        for label, generator in zip(labels.tolist(), generators, strict=True):
            if label == embedder.num_classes:
                out.append(embedder.null_label)
            else:
                prior = embedder.subclass_prior[label].float().cpu()
                k = int(torch.multinomial(prior, 1, generator=generator))
                out.append(label * embedder.subclasses + k)
        return torch.tensor(out, dtype=labels.dtype, device=labels.device)

    def drop_labels(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Labels with each replaced by the null label with probability ``class_dropout``.

        Done by the training loop on the whole global batch (with the run's shared random
        stream), not inside ``forward``, so data-parallel ranks agree with one process."""
        drop = torch.rand(labels.shape, generator=generator) < self.cfg.class_dropout
        return torch.where(drop, torch.full_like(labels, self.null_label), labels)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        labels: torch.Tensor,
        return_features: bool = False,
        self_cond: torch.Tensor | None = None,
        augment_labels: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The prediction; with ``return_features`` also the middle level's output (B, C, h, w),
        which representation alignment trains to carry image features.

        ``self_cond`` is the previous estimate of the clean latent, for a self-conditioned
        network (``cfg.self_condition``); None stands for "no estimate yet" (zeros). A network
        without self-conditioning refuses one.

        ``augment_labels`` (B, cfg.augment_dim) describe the transform each training latent got
        (``catdog.augment``); None stands for none (zeros), which is what sampling asks for."""
        emb = self.time_mlp(timestep_embedding(t, self.cfg.channels[0])) + self.class_embedder(
            labels
        )
        if augment_labels is not None:
            if self.augment_embedder is None:
                raise ValueError("augment_labels given to a UNet trained without augmentation")
            emb = emb + self.augment_embedder(augment_labels.to(emb.dtype))
        if self.cfg.self_condition:
            x = torch.cat([x, torch.zeros_like(x) if self_cond is None else self_cond], dim=1)
        elif self_cond is not None:
            raise ValueError("self_cond given to a UNet trained without self-conditioning")
        h = self.stem(x)  # (B, C0, H, W)
        skips = []
        for level, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
        h = self.middle(h, emb)
        features = h
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if i < len(self.upsample):
                h = self.upsample[i](h)
        out = self.head(nn.functional.silu(self.norm_out(h)))
        return (out, features) if return_features else out


class FeatureProjector(nn.Module):
    """REPA's projector (Yu et al. 2025): a per-position MLP (three layers, SiLU) from the UNet's
    middle features to the target features' width. Used in training only, never saved for
    sampling."""

    def __init__(self, in_ch: int, out_ch: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 1), nn.SiLU(),
            nn.Conv2d(hidden, hidden, 1), nn.SiLU(),
            nn.Conv2d(hidden, out_ch, 1),
        )  # fmt: skip

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)
