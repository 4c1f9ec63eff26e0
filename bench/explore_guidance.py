"""Exploration of guidance variants on a model pair, sampler-side only (no training): each
variant samples the same 100 seeds per class (DPM-Solver++, cats seeds 0..n-1, dogs n..2n-1,
as ``evaluate``) and is scored against the whole test split (Inception pool3): KID x1000, FID,
precision, recall, the class probe's accuracy and the memorisation rate (``scoring.py``).

Variants (m = the model, g = the guide, c = the class, 0 = the null label):

- ``plain``: the model alone, one pass a step (for a guidance-distilled model);
- ``ag W``: autoguidance, ``m(c) + (W-1) (m(c) - g(c))`` (the shipped default, W = 3);
- ``agnull W``: the guide given the null label, ``m(c) + (W-1) (m(c) - g(0))``: a weaker
  *and* unconditional reference, so the push is towards quality and the class at once;
- ``agcfg WA WC``: both terms, ``m(c) + (WA-1) (m(c) - g(c)) + (WC-1) (m(c) - m(0))``;
- ``apg W ETA``: autoguidance with the update projected as in adaptive projected guidance
  (Sadat et al. 2025, eq. 7), in clean-latent (x0) space: the part of ``x0(m) - x0(g)``
  parallel to ``x0(m)`` (which mostly raises contrast and saturation) is scaled by ETA, the
  orthogonal part kept, ``x0 = x0(m) + (W-1) (orth + ETA par)``;
- ``agrs W PHI``: autoguidance rescaled (Lin et al. 2024, eq. 15-16) so the guided x0 keeps the
  per-image std of ``x0(m)``, mixed with weight PHI with the plain autoguided x0;
- ``... @LO-HI``: guidance only at timesteps LO..HI, the plain conditional model elsewhere
  (the guidance interval of Kynkaanniemi et al. 2024);
- ``... sN``: N sampler steps instead of 20;
- ``... tT``: the starting noise scaled by T (for Gaussian data a temperature below 1 would
  draw nearer the mode; measured in docs/design.md, "Ranking by realism, and a lower
  temperature").

``--member PATH`` (repeatable) makes m and g ensembles: the weighted mean of the model's and
each member's outputs, every member with its own recorded guide (``--weights``, default
equal). All members share the schedule and the VAE's latent space (checked). Every variant is
then applied to the ensemble; for the linear ones (``ag``, ``cfg``, ...) that is the weighted
mean of each member's own guided output.

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
from scoring import Guided, SeedScorer  # noqa: E402

from catdog import checkpoint  # noqa: E402
from catdog import generate as generate_module  # noqa: E402
from catdog.models.ensemble import Ensemble  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("variants", nargs="+")
p.add_argument("--model-path", default="src/catdog/weights/catdog_diffusion.safetensors")
p.add_argument("--guide-path", default=None)
p.add_argument("--vae-path", default=None)
p.add_argument("--num-per-class", type=int, default=100)
p.add_argument("--label", default="shipped weights")
p.add_argument("--member", action="append", default=[],
               help="another model to average with the model (repeatable)")  # fmt: skip
p.add_argument(
    "--weights",
    default=None,
    help="ensemble weights, comma-separated, the model's first (default: equal)",
)
a = p.parse_args()

unet, schedule, record = checkpoint.load_diffusion(a.model_path)
vae, vae_path = checkpoint.find_vae(a.model_path, record, a.vae_path)
members = [(unet, checkpoint.find_guide(a.model_path, record, a.guide_path)[0])]
for path in a.member:
    member, member_schedule, member_record = checkpoint.load_diffusion(path)
    if member_schedule.cfg != schedule.cfg:
        sys.exit(f"{path} has another noise schedule")
    checkpoint.find_vae(path, member_record, str(vae_path))  # refuses another latent space
    members.append((member, checkpoint.find_guide(path, member_record)[0]))
equal = ",".join([str(1 / len(members))] * len(members))
weights = [float(v) for v in (a.weights or equal).split(",")]
if len(weights) != len(members) or abs(sum(weights) - 1) > 1e-6:
    sys.exit(f"--weights needs {len(members)} values summing to 1")


def ensemble(nets: list) -> object:
    """The weighted mean of ``nets``' outputs (the one net itself when there is one)."""
    if len(nets) == 1:
        return nets[0]
    if any(net is None for net in nets):
        return None
    return Ensemble(nets, weights)


model_fn, guide = ensemble([m for m, _ in members]), ensemble([g for _, g in members])
if any(v.split()[0] in ("apg", "agrs") for v in a.variants) and schedule.cfg.objective != "v":
    sys.exit("apg and agrs are written for the v objective")
scorer = SeedScorer(vae, a.num_per_class)
null = unet.null_label


def denoiser(kind: str, w: list[float], lo: int, hi: int):
    def fn(x, t, c):
        m = model_fn(x, t, c)
        inside = (t >= lo) & (t <= hi)
        if not bool(inside.any()):
            return m
        if kind == "plain":  # the model alone (e.g. a guidance-distilled student)
            out = m
        elif kind == "ag":
            out = m + (w[0] - 1) * (m - guide(x, t, c))
        elif kind == "agnull":
            out = m + (w[0] - 1) * (m - guide(x, t, torch.full_like(c, null)))
        elif kind == "agcfg":
            out = m + (w[0] - 1) * (m - guide(x, t, c))
            out = out + (w[1] - 1) * (m - model_fn(x, t, torch.full_like(c, null)))
        elif kind in ("apg", "agrs"):
            a, s = schedule._coeffs(t)  # x0 = a x_t - s v (v-objective)
            x0_m = a * x - s * m
            x0 = x0_m - (w[0] - 1) * s * (m - guide(x, t, c))
            if kind == "apg":
                diff = x0 - x0_m
                unit = x0_m / x0_m.flatten(1).norm(dim=1).clamp(min=1e-8)[:, None, None, None]
                par = (diff * unit).flatten(1).sum(1)[:, None, None, None] * unit
                x0 = x0_m + (diff - par) + w[1] * par
            else:
                std = lambda v: v.flatten(1).std(1)[:, None, None, None]  # noqa: E731
                x0 = w[1] * x0 * std(x0_m) / std(x0) + (1 - w[1]) * x0
            out = (a * x - x0) / s
        elif kind == "cfg":
            out = m + (w[0] - 1) * (m - model_fn(x, t, torch.full_like(c, null)))
        else:
            raise ValueError(kind)
        return torch.where(inside[:, None, None, None], out, m)

    return fn


noise = generate_module.per_sample_noise
for variant in a.variants:
    parts = variant.split()
    kind, w, lo, hi, steps, temperature = parts[0], [], 0, 10**9, 20, 1.0
    for part in parts[1:]:
        if part.startswith("@"):
            lo, hi = (int(v) for v in part[1:].split("-"))
        elif part.startswith("s"):
            steps = int(part[1:])
        elif part.startswith("t"):
            temperature = float(part[1:])
        else:
            w.append(float(part))
    # the starting noise comes from generate.per_sample_noise; scale it for this variant
    generate_module.per_sample_noise = lambda *args, t=temperature, **kw: t * noise(*args, **kw)
    start = time.monotonic()
    scores = scorer(Guided(denoiser(kind, w, lo, hi), unet), schedule, steps)
    rec = {
        **record_header(),
        "label": a.label,
        "variant": variant,
        "num_per_class": a.num_per_class,
        **({"members": [a.model_path, *a.member], "weights": weights} if a.member else {}),
        **{k: v for k, v in scores.items() if k != "sampling_seconds"},
        "seconds": round(time.monotonic() - start, 1),
    }
    print(json.dumps({k: rec[k] for k in list(rec)[5:]}), flush=True)
    append_record("guidance_explore.jsonl", rec)
