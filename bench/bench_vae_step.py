"""Micro-benchmark of one VAE training step (batch 32, 48x48) under the design choices in
docs/design.md: attention placement, memory format, perceptual and adversarial terms.

    python bench/bench_vae_step.py --vgg-weights ../shared/weights/vgg16_features_imagenet1k_v1.pth

Appends one JSON record to bench/results/vae_step.jsonl.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from common import append_record, record_header  # noqa: E402

from catdog.config import DiscriminatorConfig, VAEConfig  # noqa: E402
from catdog.losses import (  # noqa: E402
    PerceptualLoss,
    hinge_d_loss,
    hinge_g_loss,
    load_vgg16_features,
)
from catdog.models.discriminator import PatchDiscriminator  # noqa: E402
from catdog.models.vae import VAE  # noqa: E402


def images_per_second(cfg: VAEConfig, vgg, *, channels_last: bool, adversarial: bool) -> float:
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    vae = VAE(cfg).to(memory_format=fmt)
    opt = torch.optim.AdamW(vae.parameters())
    disc = PatchDiscriminator(DiscriminatorConfig()).to(memory_format=fmt)
    disc_opt = torch.optim.AdamW(disc.parameters())
    perceptual = PerceptualLoss(vgg).to(memory_format=fmt) if vgg is not None else None
    x = (torch.rand(32, 3, 48, 48) * 2 - 1).contiguous(memory_format=fmt)
    targets = None
    if perceptual is not None:
        with torch.no_grad():
            targets = [f.half() for f in perceptual.features(x)]

    def step() -> None:
        recon, _, _ = vae(x)
        loss = (recon - x).abs().mean()
        if perceptual is not None:
            loss = loss + 0.8 * perceptual(recon, targets)
        if adversarial:
            loss = loss + 0.05 * hinge_g_loss(disc(recon))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if adversarial:
            d_loss = hinge_d_loss(disc(x), disc(recon.detach()))
            disc_opt.zero_grad()
            d_loss.backward()
            disc_opt.step()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(6):
        step()
    return 32 * 6 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vgg-weights", default=None)
    args = parser.parse_args()
    vgg = load_vgg16_features(args.vgg_weights)
    every, none = VAEConfig(attention_from_level=0), VAEConfig(attention_from_level=9)
    full = "full step (VAE + cached-target VGG + discriminator), default"
    variants = {
        "VAE only, attention in every block, NCHW": (every, None, False, False),
        "VAE only, no attention, NCHW": (none, None, False, False),
        "VAE only, attention in every block, channels_last": (every, None, True, False),
        "VAE only, default (attention from 24x24), channels_last": (VAEConfig(), None, True, False),
        f"{full}, NCHW": (VAEConfig(), vgg, False, True),
        f"{full}, channels_last": (VAEConfig(), vgg, True, True),
    }
    record = {
        **record_header(),
        "batch": 32,
        "images_per_s": {},
    }
    for name, (cfg, features, channels_last, adversarial) in variants.items():
        speed = images_per_second(
            cfg, features, channels_last=channels_last, adversarial=adversarial
        )
        record["images_per_s"][name] = round(speed, 1)
        print(f"{speed:7.1f} img/s  {name}", flush=True)
    append_record("vae_step.jsonl", record)


if __name__ == "__main__":
    main()
