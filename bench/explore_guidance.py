"""Exploration of guidance variants on a model pair, sampler-side only (no training): each
variant samples the same 100 seeds per class (DPM-Solver++, cats seeds 0..n-1, dogs n..2n-1,
as ``evaluate``) and is scored against the whole test split (Inception pool3): KID x1000, FID,
precision, recall and the class probe's accuracy.

Variants (m = the model, g = the guide, c = the class, 0 = the null label):

- ``ag W``: autoguidance, ``m(c) + (W-1) (m(c) - g(c))`` (the shipped default, W = 3);
- ``agnull W``: the guide given the null label, ``m(c) + (W-1) (m(c) - g(0))``: a weaker
  *and* unconditional reference, so the push is towards quality and the class at once;
- ``agcfg WA WC``: both terms, ``m(c) + (WA-1) (m(c) - g(c)) + (WC-1) (m(c) - m(0))``;
- ``... @LO-HI``: guidance only at timesteps LO..HI, the plain conditional model elsewhere
  (the guidance interval of Kynkaanniemi et al. 2024);
- ``... sN``: N sampler steps instead of 20.

A one-off script (run from the repository root); results in bench/results/guidance_explore.jsonl.

    python bench/explore_guidance.py "ag 3" "agnull 3" "agcfg 3 1.5" "ag 4 @100-800"
"""

import argparse
import json
import sys
import time

import torch

sys.path.insert(0, "src")
sys.path.insert(0, "bench")
from common import append_record, record_header  # noqa: E402

from catdog import checkpoint  # noqa: E402
from catdog.config import DataConfig  # noqa: E402
from catdog.data import load_split, to_uint8  # noqa: E402
from catdog.evaluate import score  # noqa: E402
from catdog.features import cached_extract, extract, load_inception  # noqa: E402
from catdog.generate import decode_latents, sample_latents  # noqa: E402
from catdog.metrics import fit_probe  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("variants", nargs="+")
p.add_argument("--model-path", default="src/catdog/weights/catdog_diffusion.safetensors")
p.add_argument("--guide-path", default=None)
p.add_argument("--vae-path", default=None)
p.add_argument("--num-per-class", type=int, default=100)
p.add_argument("--label", default="shipped weights")
a = p.parse_args()

unet, schedule, record = checkpoint.load_diffusion(a.model_path)
vae, _ = checkpoint.find_vae(a.model_path, record, a.vae_path)
guide, _ = checkpoint.find_guide(a.model_path, record, a.guide_path)
data = DataConfig(data_dir="../shared/data/catdog96", image_size=48)
train, test = load_split(data, "train"), load_split(data, "test")
ext = load_inception("../shared/weights/weights-inception-2015-12-05-6726825d.pth")
f_ref = cached_extract(ext, test.images, "runs/feature_cache", progress=False)
f_train = cached_extract(ext, train.images, "runs/feature_cache", progress=False)
probe = fit_probe(f_train, train.labels, 0)
n = a.num_per_class
labels = torch.arange(2).repeat_interleave(n)
null = unet.null_label


def denoiser(kind: str, w: list[float], lo: int, hi: int):
    def fn(x, t, c):
        m = unet(x, t, c)
        inside = (t >= lo) & (t <= hi)
        if not bool(inside.any()):
            return m
        if kind == "ag":
            out = m + (w[0] - 1) * (m - guide(x, t, c))
        elif kind == "agnull":
            out = m + (w[0] - 1) * (m - guide(x, t, torch.full_like(c, null)))
        elif kind == "agcfg":
            out = m + (w[0] - 1) * (m - guide(x, t, c))
            out = out + (w[1] - 1) * (m - unet(x, t, torch.full_like(c, null)))
        elif kind == "cfg":
            out = m + (w[0] - 1) * (m - unet(x, t, torch.full_like(c, null)))
        else:
            raise ValueError(kind)
        return torch.where(inside[:, None, None, None], out, m)

    return fn


class Guided(torch.nn.Module):
    """The guided denoiser as a model: sample_latents reads cfg and null_label off it."""

    def __init__(self, fn):
        super().__init__()
        self.fn, self.cfg, self.null_label = fn, unet.cfg, null

    def forward(self, x, t, c):
        return self.fn(x, t, c)


for variant in a.variants:
    parts = variant.split()
    kind, w, lo, hi, steps = parts[0], [], 0, 10**9, 20
    for part in parts[1:]:
        if part.startswith("@"):
            lo, hi = (int(v) for v in part[1:].split("-"))
        elif part.startswith("s"):
            steps = int(part[1:])
        else:
            w.append(float(part))
    start = time.monotonic()
    guided = Guided(denoiser(kind, w, lo, hi))
    z = sample_latents(guided, schedule, labels, list(range(2 * n)), sampler="dpmpp", steps=steps,
                       guidance=1.0, batch_size=100)  # fmt: skip
    images = to_uint8(decode_latents(vae, z))
    f = extract(ext, images, progress=False)
    s = score(f, labels, f_ref, test.labels)
    acc = float((torch.from_numpy(probe.predict(f.double().numpy())) == labels).float().mean())
    rec = {
        **record_header(),
        "label": a.label,
        "variant": variant,
        "num_per_class": n,
        "kid_x1000": round(1000 * s["kid"], 2),
        "fid": round(s["fid"], 2),
        "precision": round(s["precision"], 3),
        "recall": round(s["recall"], 3),
        "class_accuracy": round(acc, 3),
        "seconds": round(time.monotonic() - start, 1),
    }
    print(json.dumps({k: rec[k] for k in list(rec)[5:]}), flush=True)
    append_record("guidance_explore.jsonl", rec)
