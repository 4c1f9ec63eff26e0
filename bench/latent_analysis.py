"""Compare trained VAEs on how well they reconstruct and how easy their latent is to model.

For each VAE checkpoint, on the held-out split (all images):
- reconstruction PSNR (decoding posterior means);
- latent size, and the linear-probe cat/dog accuracy of latent means (fit on the train split);
- noise sensitivity: PSNR between decode(z) and decode(z') where z' adds Gaussian noise of
  0.1 (in units of the stored per-channel latent std). A diffusion model's small latent errors
  are exactly such perturbations: the higher this PSNR, the more forgiving the latent;
- effective dimension: how many principal components of the normalised test latents explain
  95% of their variance (more = more for the diffusion model to learn from 1,000 images).
- spectrum: the share of the test latents' power (each channel of each latent standardised)
  in the upper half of spatial frequencies, beside the same share for the test images
  downsampled to the latent's side. Diffusion is easier on a latent whose spectrum falls off
  like an image's (Skorokhodov et al. 2025);
- scale equivariance: PSNR of the decoded 2x-downsampled latent mean against the
  2x-downsampled image (what train-vae's equiv term trains for).

    python bench/latent_analysis.py --data-dir ../shared/data/catdog96 RUN/vae_gan_final.pt ...

Appends one JSON record per checkpoint to bench/results/latent_analysis.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from common import append_record, record_header  # noqa: E402

from catdog.checkpoint import load_vae  # noqa: E402
from catdog.config import DataConfig  # noqa: E402
from catdog.data import load_split, to_float  # noqa: E402
from catdog.metrics import linear_probe_accuracy, psnr  # noqa: E402
from catdog.train_vae import EQUIV_FACTOR, encode_means  # noqa: E402


@torch.no_grad()
def analyse(path: str, data_dir: str, noise: float = 0.1) -> dict:
    vae, record = load_vae(path)
    data = DataConfig(data_dir=data_dir, image_size=vae.cfg.image_size)
    train, test = load_split(data, "train"), load_split(data, "test")
    train_means, test_means = encode_means(vae, train.images), encode_means(vae, test.images)
    recon = torch.cat([vae.decode(m) for m in test_means.split(256)])
    g = torch.Generator().manual_seed(0)
    noisy = vae.denormalize_latent(
        vae.normalize_latent(test_means) + noise * torch.randn(test_means.shape, generator=g)
    )
    recon_noisy = torch.cat([vae.decode(m) for m in noisy.split(256)])
    x = to_float(test.images)
    half = torch.cat([vae.decode(F.avg_pool2d(m, EQUIV_FACTOR)) for m in test_means.split(256)])
    return {
        **record_header(),
        "checkpoint": path,
        "epoch": record.get("epoch"),
        "latent_shape": list(vae.cfg.latent_shape),
        "latent_dims": int(test_means[0].numel()),
        "test_images": len(test),
        "test_psnr": round(psnr(recon, to_float(test.images)).mean().item(), 2),
        "probe_acc": linear_probe_accuracy(train_means, train.labels, test_means, test.labels),
        f"noise{noise}_psnr": round(psnr(recon_noisy, recon).mean().item(), 2),
        "pca95_dims": effective_dimension(vae.normalize_latent(test_means)),
        "high_freq_share": round(high_frequency_share(test_means), 4),
        "image_high_freq_share": round(
            high_frequency_share(F.interpolate(x, size=vae.cfg.latent_size, mode="area")), 4
        ),
        "half_scale_psnr": round(psnr(half, F.avg_pool2d(x, EQUIV_FACTOR)).mean().item(), 2),
    }


def high_frequency_share(maps: torch.Tensor) -> float:
    """Share of the power of (N, C, h, w) maps, each channel of each map standardised, at
    radial spatial frequencies above half the Nyquist frequency."""
    maps = maps.double()
    maps = maps - maps.mean(dim=(2, 3), keepdim=True)
    maps = maps / maps.std(dim=(2, 3), keepdim=True).clamp_min(1e-8)
    power = torch.fft.fft2(maps).abs().pow(2).mean(dim=(0, 1))
    freq = torch.fft.fftfreq(maps.shape[-1], dtype=torch.float64).abs()  # cycles per pixel
    radius = (freq[:, None] ** 2 + freq[None, :] ** 2).sqrt()
    return (power[radius > 0.25].sum() / power.sum()).item()


def effective_dimension(latents: torch.Tensor, share: float = 0.95) -> int:
    """Principal components needed to explain ``share`` of the variance."""
    x = latents.flatten(1).double()
    variances = torch.linalg.svdvals(x - x.mean(0)).pow(2)
    cumulative = variances.cumsum(0) / variances.sum()
    return int((cumulative < share).sum().item()) + 1


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--data-dir", required=True)
    args = parser.parse_args()
    for path in args.checkpoints:
        result = analyse(path, args.data_dir)
        append_record("latent_analysis.jsonl", result)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
