"""Where does a model pair lose its quality? KID and FID (Inception pool3, against the whole
reference split) of images that isolate each stage, on ``--num-per-class`` reference images:

- ``reconstruction``: decoded posterior means (the VAE's ceiling);
- ``decode(z + s*noise)``: the same latents with Gaussian noise of std ``s`` (in normalised
  latent units) added before decoding: how forgiving the decoder is of imperfect latents;
- ``SDEdit t``: the latents noised to step t and denoised back with their own label (DDIM,
  guidance 1): how well the diffusion model restores real latents from each noise level;
- ``samples``: generated from scratch with the default sampler, the same labels.

With ``--vae-only`` (and ``--vae-path``, no model) only the first two kinds are scored: a VAE
can be judged as a latent space for diffusion before a diffusion model is trained on it.

Also the diffusion model's denoising error (``train_diffusion.denoising_error``) on training
and on held-out latents: a gap is overfitting.

    python bench/bench_diagnose.py --model-path runs/RUN/conditional_diffusion_final.pt \
        --data-dir ../shared/data/catdog96 \
        --inception-weights ../shared/weights/weights-inception-2015-12-05-6726825d.pth

Appends one record to bench/results/diagnostics.jsonl.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from common import add_scoring_args, append_record, record_header  # noqa: E402

from catdog import checkpoint  # noqa: E402
from catdog.config import DataConfig, EvaluateConfig  # noqa: E402
from catdog.data import ImageSet, balanced_subset, load_split, to_uint8  # noqa: E402
from catdog.diffusion import ddim_sample  # noqa: E402
from catdog.evaluate import fid, kid  # noqa: E402
from catdog.features import cached_extract, extract, load_inception  # noqa: E402
from catdog.generate import decode_latents, sample_latents  # noqa: E402
from catdog.train_diffusion import denoising_error  # noqa: E402
from catdog.train_vae import encode_means  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_scoring_args(parser, num_per_class=100, model_required=False)
    parser.add_argument(
        "--vae-only", action="store_true",
        help="score only --vae-path's reconstructions and noisy decodes",
    )  # fmt: skip
    args = parser.parse_args()
    if args.vae_only != (args.model_path is None) or (args.vae_only and not args.vae_path):
        parser.error("give --model-path, or --vae-only with --vae-path")
    start = time.perf_counter()
    if args.vae_only:
        vae, diffusion = checkpoint.load_vae(args.vae_path)[0], None
    else:
        diffusion = checkpoint.load_diffusion(args.model_path)
        vae, _ = checkpoint.find_vae(args.model_path, diffusion[2], args.vae_path)
    data = DataConfig(data_dir=args.data_dir, image_size=vae.cfg.image_size)
    reference = load_split(data, "test")
    extractor = load_inception(args.inception_weights)
    f_ref = cached_extract(extractor, reference.images, args.cache_dir, progress=False)
    subset = balanced_subset(reference, 2 * args.num_per_class)
    labels = subset.labels
    z = vae.normalize_latent(encode_means(vae, subset.images))
    generator = torch.Generator().manual_seed(0)
    rows: dict[str, dict[str, float]] = {}

    def score(name: str, latents: torch.Tensor) -> None:
        features = extract(extractor, to_uint8(decode_latents(vae, latents)), progress=False)
        rows[name] = {"kid_x1000": 1000 * kid(features, f_ref)[0], "fid": fid(features, f_ref)}
        print(f"{name:24s} KIDx1000 {rows[name]['kid_x1000']:6.1f}  FID {rows[name]['fid']:6.1f}")

    score("reconstruction", z)
    for s in (0.1, 0.3):
        score(f"decode(z + {s} noise)", z + s * torch.randn(z.shape, generator=generator))
    errors = None
    if diffusion is not None:
        diffusion_rows(args, diffusion, z, labels, generator, score)
        errors = denoising_errors(diffusion, vae, reference, load_split(data, "train"))
    append_record("diagnostics.jsonl", {
        **record_header(), "label": args.label, "model_path": args.model_path,
        "vae_path": args.vae_path, "num_per_class": args.num_per_class, "rows": rows,
        **({} if errors is None else {"denoising_error": errors}),
        "seconds": round(time.perf_counter() - start, 1),
    })  # fmt: skip


def diffusion_rows(args, diffusion, z, labels, generator, score) -> None:
    """Score SDEdit restorations of z and class-conditional samples of the diffusion model."""
    unet, schedule, record = diffusion
    defaults = EvaluateConfig()
    guide, link = checkpoint.find_guide(args.model_path, record, args.guide_path)
    guidance = checkpoint.resolve_guidance(None, link)
    kind = "autoguidance" if guide is not None else "guidance"
    for fraction in (0.1, 0.3, 0.6):
        t = round(fraction * schedule.num_timesteps)
        noisy = schedule.add_noise(
            z, torch.randn(z.shape, generator=generator), torch.full((len(z),), t)
        )
        steps = [t] + [s for s in schedule.spaced_timesteps(defaults.steps) if s < t]
        restored = ddim_sample(
            unet, noisy, steps, labels=labels, schedule=schedule, null_label=unet.null_label
        )
        score(f"SDEdit t={t}", restored)
    seeds = list(range(len(labels)))
    samples = sample_latents(unet, schedule, labels, seeds, sampler=defaults.sampler,
                             steps=defaults.steps, guidance=guidance, guide=guide)  # fmt: skip
    score(f"samples ({defaults.sampler} {defaults.steps}, {kind} {guidance})", samples)


def denoising_errors(diffusion, vae, reference: ImageSet, train: ImageSet) -> dict[str, float]:
    """The UNet's denoising loss on 400 training images and on 400 held-out ones."""
    unet, schedule, _ = diffusion
    held_out = balanced_subset(reference, 400)
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:400]
    errors = {}
    for name, images, y in (
        ("train", train.images[pick], train.labels[pick]),
        ("held_out", held_out.images, held_out.labels),
    ):
        latents = vae.normalize_latent(encode_means(vae, images))
        errors[name] = denoising_error(unet, schedule, latents, y)
    print(f"denoising error: train {errors['train']:.4f}, held-out {errors['held_out']:.4f}")
    return errors


if __name__ == "__main__":
    main()
