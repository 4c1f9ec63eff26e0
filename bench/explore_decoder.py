"""Exploration behind `train-vae --finetune-decoder` (docs/design.md, "Decoder fine-tuning"):
fine-tune only the shipped VAE's decoder (encoder frozen, so the latent space and the shipped
diffusion model stay valid) and score it every --eval-minutes by KID x1000 against the whole
test split, on 100 test photos per class:

- ``recon``: decoded posterior means of the test photos;
- ``noisy0.1``: the same latents with 0.1 std of noise (normalised units) added;
- ``samples``: 200 latents sampled once by the shipped model (autoguidance 3, DPM-Solver++ 20).

A one-off script, kept as it ran for runs C and D (paths of the development machine; run from
the repository root; the earlier runs also stepped the discriminator when --adv 0, which does
not touch the decoder); its results are in bench/results/decoder_explore.jsonl. The packaged
feature is ``catdog train-vae --finetune-decoder``, measured by bench_diagnose and bench_quality.

    python bench/explore_decoder.py --adv 0 --noise 0.1 --minutes 12 --out runs/dec/B
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, "src")
from catdog import checkpoint
from catdog.config import DataConfig, DiscriminatorConfig
from catdog.data import balanced_subset, load_split, to_float, to_uint8
from catdog.evaluate import kid
from catdog.features import cached_extract, extract, load_inception
from catdog.generate import sample_latents
from catdog.losses import PerceptualLoss, hinge_d_loss, hinge_g_loss, load_vgg16_features
from catdog.models.discriminator import PatchDiscriminator
from catdog.models.vae import Decoder
from catdog.train_vae import _cache_vgg_targets, encode_means

p = argparse.ArgumentParser()
p.add_argument("--adv", type=float, default=0.3)
p.add_argument("--noise", type=float, default=0.0)
p.add_argument("--vgg", type=float, default=0.8)
p.add_argument("--lr", type=float, default=1e-4)
p.add_argument("--minutes", type=float, default=20)
p.add_argument("--eval-minutes", type=float, default=5)
p.add_argument("--fresh-disc", action="store_true")
p.add_argument("--dec-channels", type=str, default="")
p.add_argument("--out", required=True)
p.add_argument("--init", default="")
a = p.parse_args()
out = Path(a.out)
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
vae, _ = checkpoint.load_vae("src/catdog/weights/catdog_vae.safetensors")
unet, schedule, rec = checkpoint.load_diffusion("src/catdog/weights/catdog_diffusion.safetensors")
guide, link = checkpoint.find_guide("src/catdog/weights/catdog_diffusion.safetensors", rec)
data = DataConfig(data_dir="../shared/data/catdog96", image_size=48)
train, test = load_split(data, "train"), load_split(data, "test")
sub = balanced_subset(test, 200)
ext = load_inception("../shared/weights/weights-inception-2015-12-05-6726825d.pth")
f_ref = cached_extract(ext, test.images, "runs/feature_cache", progress=False)
zt = encode_means(vae, sub.images)  # raw latents of 200 test photos
gen = torch.Generator().manual_seed(0)
zt_noisy = vae.denormalize_latent(
    vae.normalize_latent(zt) + 0.1 * torch.randn(zt.shape, generator=gen)
)
samples_path = Path("runs/dec/samples200.pt")
if samples_path.exists():
    zs = torch.load(samples_path)
else:
    zs = vae.denormalize_latent(
        sample_latents(
            unet,
            schedule,
            sub.labels,
            list(range(200)),
            sampler="dpmpp",
            steps=20,
            guidance=3.0,
            guide=guide,
        )
    )
    torch.save(zs, samples_path)
# posterior of train images and their mirrors: rows [0,N) plain, [N,2N) flipped
with torch.no_grad():
    x = to_float(train.images)
    ml = [vae.encode(c) for c in torch.cat([x, x.flip(-1)]).split(256)]
    post_mean = torch.cat([m for m, _ in ml])
    post_std = torch.cat([(0.5 * lv).exp() for _, lv in ml])
perceptual = PerceptualLoss(
    load_vgg16_features("../shared/weights/vgg16_features_imagenet1k_v1.pth")
)
targets = _cache_vgg_targets(perceptual.features, train.images, progress=False)
n = len(train)
images2 = torch.cat([x, x.flip(-1)])
if a.dec_channels:
    cfg = vae.cfg.__class__(
        **{**vae.cfg.__dict__, "channels": tuple(int(c) for c in a.dec_channels.split(","))}
    )
    dec = Decoder(cfg)
else:
    dec = vae.decoder
dec.train()
if a.init:
    dec.load_state_dict(torch.load(a.init))
state = torch.load("runs/vae_cpu_default/vae_train_state.pt", weights_only=True)
disc = PatchDiscriminator(DiscriminatorConfig(channels=(32, 64, 128)))
if not a.fresh_disc:
    disc.load_state_dict(state["disc"])
opt = torch.optim.AdamW(dec.parameters(), lr=a.lr, betas=(0.5, 0.9), weight_decay=0)
dopt = torch.optim.AdamW(disc.parameters(), lr=2e-4, betas=(0.5, 0.9), weight_decay=0)
cl = torch.channels_last
dec.to(memory_format=cl)
disc.to(memory_format=cl)
perceptual.to(memory_format=cl)


def score(tag):
    dec.eval()
    res = {}
    with torch.no_grad():
        for name, z in (("recon", zt), ("noisy0.1", zt_noisy), ("samples", zs)):
            imgs = torch.cat([dec(c) for c in z.split(100)])
            f = extract(ext, to_uint8(imgs), progress=False)
            res[name] = round(1000 * kid(f, f_ref)[0], 2)
    dec.train()
    res["tag"] = tag
    print(json.dumps(res), flush=True)
    with open(out / "scores.jsonl", "a") as fh:
        fh.write(json.dumps(res) + "\n")


score("start")
start = time.monotonic()
last_eval = start
step = 0
sums = {}
while time.monotonic() - start < 60 * a.minutes:
    idx = torch.randint(0, 2 * n, (32,))
    z = post_mean[idx] + post_std[idx] * torch.randn(32, *post_mean.shape[1:])
    if a.noise > 0:
        z = z + a.noise * vae.latent_std[:, None, None] * torch.randn_like(z)
    real = images2[idx].contiguous(memory_format=cl)
    recon = dec(z.contiguous(memory_format=cl))
    l_rec = F.l1_loss(recon, real)
    l_vgg = perceptual(recon, [t[idx].float() for t in targets])
    if a.adv > 0:
        disc.requires_grad_(False)
        l_adv = hinge_g_loss(disc(recon))
        disc.requires_grad_(True)
    else:
        l_adv = torch.zeros(())
    loss = l_rec + a.vgg * l_vgg + a.adv * l_adv
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(dec.parameters(), 1.0)
    opt.step()
    if a.adv > 0:
        logits = disc(torch.cat([real, recon.detach()]))
        l_d = hinge_d_loss(logits[:32], logits[32:])
        dopt.zero_grad(set_to_none=True)
        l_d.backward()
        dopt.step()
    else:
        l_d = torch.zeros(())
    step += 1
    for k, v in (("rec", l_rec), ("vgg", l_vgg), ("adv", l_adv), ("d", l_d)):
        sums[k] = sums.get(k, 0) + v.item()
    if step % 50 == 0:
        print(
            step,
            round(time.monotonic() - start),
            {k: round(v / 50, 4) for k, v in sums.items()},
            flush=True,
        )
        sums = {}
    if time.monotonic() - last_eval > 60 * a.eval_minutes:
        score(f"step {step}")
        last_eval = time.monotonic()
score(f"end step {step}")
torch.save(dec.state_dict(), out / "decoder.pt")
