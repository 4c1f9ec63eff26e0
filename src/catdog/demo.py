"""The main job until trained weights ship: a short VAE training on the data it finds.

Data: ``../shared/data/catdog96`` beside the repository when present (development machines),
else STL-10 in ``./data`` (downloaded by torchvision if missing). VGG16 weights: the file named
by ``CATDOG_VGG_WEIGHTS``, else ``../shared/weights/...``, else torchvision's download; if none
works the demo trains without the perceptual loss and says so.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from .config import vae_preset
from .errors import CatdogError
from .losses import VGG_WEIGHTS_ENV, load_vgg16_features

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
OUT = REPO / "demo" / "vae"


def main() -> int:
    cfg = vae_preset("cpu")
    shared_data = SHARED / "data" / "catdog96"
    if shared_data.is_dir():
        cfg.data.data_dir = str(shared_data)
    else:
        cfg.data.dataset, cfg.data.data_dir = "stl10", str(REPO / "data")
    shared_vgg = SHARED / "weights" / "vgg16_features_imagenet1k_v1.pth"
    if not os.environ.get(VGG_WEIGHTS_ENV) and shared_vgg.is_file():
        cfg.vgg_weights = str(shared_vgg)
    try:
        load_vgg16_features(cfg.vgg_weights)
    except CatdogError as exc:
        print(f"warning: {exc}\nwarning: training without the perceptual loss", file=sys.stderr)
        cfg.losses.vgg.weight = 0.0
    cfg.epochs, cfg.viz_every = 4, 2
    cfg.save_dir = str(OUT)
    if OUT.exists():
        shutil.rmtree(OUT)  # the demo's own previous output
    print(
        f"Demo: a {cfg.epochs}-epoch VAE training on {cfg.data.data_dir} (a few minutes on 2 cores)"
    )
    start = time.monotonic()
    from .train_vae import train

    try:
        record = train(cfg)
    except CatdogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"\nDone in {(time.monotonic() - start) / 60:.1f} min: held-out PSNR "
        f"{record['val_psnr']:.2f} dB, linear-probe cat/dog accuracy {record['probe_acc']:.3f}\n"
        f"  reconstructions: {OUT / 'reconstructions'}\n"
        f"  t-SNE of latents: {OUT / 'tsne'}\n"
        f"  loss curves:      {OUT / 'loss_curves.png'}\n"
        f"  checkpoints:      {OUT / 'vae_gan_best.pt'}, {OUT / 'vae_gan_final.pt'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
