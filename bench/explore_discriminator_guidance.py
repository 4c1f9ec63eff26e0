"""Exploration: discriminator guidance (Kim et al. 2023, "Refining generative process with
discriminator guidance in score-based diffusion models") on a model pair, in the latent.

1. Sample ``--num-fake-per-class`` latents per class with the pair's default sampler
   (DPM-Solver++ 20 steps, autoguidance at the recorded scale), seeds from 100,000 on, so none
   is an evaluation seed.
2. Train a small time- and class-conditional discriminator on noised latents: the training
   split's (posterior samples of each photo and its mirror, normalised as in diffusion
   training) against the generated ones, at t uniform in 1..T. A tenth of each is held out to
   report the discriminator's accuracy by noise level.
3. Sample the evaluation seeds (cats 0..n-1, dogs n..2n-1, as ``evaluate``) with the score
   corrected by ``w * grad log(D / (1 - D))`` at every step with t <= ``--t-max``, and score
   them against the whole test split (Inception pool3), as ``explore_guidance.py``, plus the
   memorisation rate as ``evaluate`` computes it.

For the v objective, a score correction ``c`` at x_t = a x0 + s eps changes eps by ``-s c``
and so the network's v by ``-(s / a) c``; it is applied to the guided output.

A one-off script (run from the repository root); results in
bench/results/discriminator_guidance.jsonl.

    python bench/explore_discriminator_guidance.py --weights 0,0.5,1,2
"""

import argparse
import json
import os
import sys
import time

import torch
from torch import nn

sys.path.insert(0, "src")
sys.path.insert(0, "bench")
from common import append_record, record_header  # noqa: E402
from scoring import Guided, SeedScorer  # noqa: E402

from catdog import checkpoint  # noqa: E402
from catdog.diffusion import guided_output  # noqa: E402
from catdog.generate import sample_latents  # noqa: E402
from catdog.models.layers import ResBlock, group_norm, timestep_embedding  # noqa: E402
from catdog.train_vae import encode_training_set  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--model-path", default="src/catdog/weights/catdog_diffusion.safetensors")
p.add_argument("--weights", default="0,0.5,1,2", help="discriminator guidance weights to score")
p.add_argument("--t-max", type=int, default=1000, help="correct only at t <= this")
p.add_argument("--num-fake-per-class", type=int, default=1000)
p.add_argument("--d-width", type=int, default=64)
p.add_argument("--d-steps", type=int, default=3000)
p.add_argument("--d-lr", type=float, default=1e-3)
p.add_argument("--num-per-class", type=int, default=100)
p.add_argument("--label", default="shipped weights")
p.add_argument("--cache", default=None, help="save the discriminator here; reuse it if there")
a = p.parse_args()
torch.manual_seed(0)

unet, schedule, record = checkpoint.load_diffusion(a.model_path)
vae, _ = checkpoint.find_vae(a.model_path, record, None)
guide, link = checkpoint.find_guide(a.model_path, record, None)
scale = checkpoint.resolve_guidance(None, link)
assert schedule.cfg.objective == "v"
scorer = SeedScorer(vae, a.num_per_class)
train = scorer.train
T = schedule.num_timesteps


class LatentDiscriminator(nn.Module):
    """logit D(x_t, t, y): two residual levels (12x12, 6x6), time + class embedding, pooled."""

    def __init__(self, channels: int, width: int, num_classes: int = 2) -> None:
        super().__init__()
        emb = 4 * width
        self.width = width
        self.time_mlp = nn.Sequential(nn.Linear(width, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.class_emb = nn.Embedding(num_classes, emb)
        self.stem = nn.Conv2d(channels, width, 3, padding=1)
        self.block1 = ResBlock(width, width, attention=False, emb_dim=emb)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.block2 = ResBlock(2 * width, 2 * width, attention=False, emb_dim=emb)
        self.norm = group_norm(2 * width, 8)
        self.head = nn.Linear(2 * width, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        e = self.time_mlp(timestep_embedding(t, self.width)) + self.class_emb(y)
        h = self.block2(self.down(self.block1(self.stem(x), e)), e)
        return self.head(nn.functional.silu(self.norm(h)).mean((2, 3))).squeeze(1)


def autoguided(x, t, c):
    return guided_output(unet, x, t, c, scale, unet.null_label, guide)


def train_discriminator():
    """Steps 1 and 2: (discriminator, its held-out accuracy by t, sampling and fit seconds)."""
    # 1. generated latents
    start = time.monotonic()
    nf = a.num_fake_per_class
    fake_labels = torch.arange(2).repeat_interleave(nf)
    fake_seeds = [100_000 + i for i in range(2 * nf)]
    fake = sample_latents(Guided(autoguided, unet), schedule, fake_labels, fake_seeds,
                          sampler="dpmpp", steps=20, guidance=1.0, batch_size=100)  # fmt: skip
    fake_seconds = time.monotonic() - start
    print(f"sampled {len(fake)} latents in {fake_seconds:.0f} s", flush=True)

    # 2. the discriminator
    with torch.no_grad():
        mean, logvar = encode_training_set(vae, train.images)
    real_labels = train.labels.repeat(2)
    g = torch.Generator().manual_seed(0)
    perm_r, perm_f = torch.randperm(len(mean), generator=g), torch.randperm(len(fake), generator=g)
    hold_r, hold_f = perm_r[: len(mean) // 10], perm_f[: len(fake) // 10]
    fit_r, fit_f = perm_r[len(mean) // 10 :], perm_f[len(fake) // 10 :]

    def real_batch(index):
        z = mean[index] + (0.5 * logvar[index]).exp() * torch.randn(mean[index].shape, generator=g)
        return vae.normalize_latent(z), real_labels[index]

    def noised(x0, t):
        return schedule.add_noise(x0, torch.randn(x0.shape, generator=g), t)

    disc = LatentDiscriminator(unet.cfg.latent_channels, a.d_width)
    opt = torch.optim.AdamW(disc.parameters(), lr=a.d_lr, weight_decay=0.0)
    bce = nn.functional.binary_cross_entropy_with_logits
    start = time.monotonic()
    half = 128
    for step in range(a.d_steps):
        ir = fit_r[torch.randint(len(fit_r), (half,), generator=g)]
        jf = fit_f[torch.randint(len(fit_f), (half,), generator=g)]
        xr, yr = real_batch(ir)
        x0 = torch.cat([xr, fake[jf]])
        y = torch.cat([yr, fake_labels[jf]])
        t = torch.randint(1, T + 1, (2 * half,), generator=g)
        target = torch.cat([torch.ones(half), torch.zeros(half)])
        loss = bce(disc(noised(x0, t), t, y), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 500 == 0:
            print(f"discriminator step {step + 1}: loss {loss.item():.4f}", flush=True)
    d_seconds = time.monotonic() - start
    disc.eval().requires_grad_(False)

    held = {}
    with torch.no_grad():
        xr, yr = real_batch(hold_r)
        x0, y = torch.cat([xr, fake[hold_f]]), torch.cat([yr, fake_labels[hold_f]])
        truth = torch.cat([torch.ones(len(hold_r)), torch.zeros(len(hold_f))])
        for lo, hi in ((1, 100), (101, 300), (301, 600), (601, T)):
            accs = []
            for _ in range(4):
                t = torch.randint(lo, hi + 1, (len(x0),), generator=g)
                accs.append(((disc(noised(x0, t), t, y) > 0).float() == truth).float().mean())
            held[f"t{lo}-{hi}"] = round(float(torch.stack(accs).mean()), 3)
    print(f"discriminator: {d_seconds:.0f} s, held-out accuracy by t {held}", flush=True)
    return disc, held, fake_seconds, d_seconds


# what the record says of the discriminator: a cached one must have been trained so
settings = {"width": a.d_width, "steps": a.d_steps, "lr": a.d_lr,
            "fake_per_class": a.num_fake_per_class, "model_path": a.model_path}  # fmt: skip
if a.cache and os.path.exists(a.cache):
    saved = torch.load(a.cache, weights_only=True)
    if saved.get("settings", settings) != settings:  # caches of 2026-11-30 hold no settings
        raise SystemExit(f"{a.cache} holds a discriminator trained with {saved['settings']}; "
                         f"this run asks for {settings}")  # fmt: skip
    disc = LatentDiscriminator(unet.cfg.latent_channels, a.d_width)
    disc.load_state_dict(saved["state_dict"])
    held, fake_seconds, d_seconds = saved["held"], saved["fake_seconds"], saved["d_seconds"]
    disc.eval().requires_grad_(False)
    print(f"discriminator from {a.cache}: held-out accuracy by t {held}", flush=True)
else:
    disc, held, fake_seconds, d_seconds = train_discriminator()
    if a.cache:
        torch.save({"state_dict": disc.state_dict(), "held": held, "fake_seconds": fake_seconds,
                    "d_seconds": d_seconds, "settings": settings}, a.cache)  # fmt: skip


def dg(w):
    def fn(x, t, c):
        out = autoguided(x, t, c)
        if w == 0:
            return out
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(disc(xg, t, c).sum(), xg)
        ab = schedule.alpha_bar[t][:, None, None, None]
        inside = (t <= a.t_max).float()[:, None, None, None]
        return out - w * inside * ((1 - ab) / ab).sqrt() * grad  # (s / a) c

    return fn


# 3. scored samples
for w in (float(v) for v in a.weights.split(",")):
    scores = scorer(Guided(dg(w), unet), schedule)
    rec = {
        **record_header(),
        "label": a.label,
        "weight": w,
        "t_max": a.t_max,
        "num_per_class": a.num_per_class,
        "discriminator": {"width": a.d_width, "steps": a.d_steps, "lr": a.d_lr,
                          "fake_per_class": a.num_fake_per_class, "seconds": round(d_seconds, 1),
                          "fake_seconds": round(fake_seconds, 1), "held_out_accuracy": held},
        **scores,
    }  # fmt: skip
    shown = ("weight", "kid_x1000", "fid", "precision", "recall", "class_accuracy", "memorisation")
    print(json.dumps({k: rec[k] for k in shown}), flush=True)
    append_record("discriminator_guidance.jsonl", rec)
