"""VAE benchmark: training throughput, and held-out PSNR / linear-probe accuracy after a fixed
CPU budget. Appends one JSON record per run to bench/results/vae.jsonl.

    python bench/bench_vae.py --data-dir ../shared/data/catdog96 \
        --vgg-weights ../shared/weights/vgg16_features_imagenet1k_v1.pth --minutes 60
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from common import append_record, record_header  # noqa: E402

from catdog.cli import add_vae_train_args, vae_config_from_args  # noqa: E402
from catdog.models.vae import VAE  # noqa: E402
from catdog.train_vae import train  # noqa: E402
from catdog.viz import read_jsonl  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, required=True, help="wall-clock training budget")
    parser.add_argument("--label", default="", help="name of this configuration in the record")
    parser.add_argument(
        "--keep", default=None, help="keep the run folder here (default: temporary)"
    )
    add_vae_train_args(parser)
    args = parser.parse_args()
    run_dir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_vae_"))
    args.save_dir = str(run_dir)
    args.max_minutes = args.minutes
    args.no_progress = True
    cfg = vae_config_from_args(args)
    start = time.monotonic()
    train(cfg)
    wall = time.monotonic() - start
    history = read_jsonl(run_dir / "metrics.jsonl")
    evals = [r for r in history if "val_psnr" in r]
    last = evals[-1]
    record = {
        **record_header(),
        "label": args.label,
        "latent_shape": list(cfg.model.latent_shape),
        "latent_dims": cfg.model.latent_channels * cfg.model.latent_size**2,
        "vae_params": sum(p.numel() for p in VAE(cfg.model).parameters()),
        "budget_minutes": args.minutes,
        "wall_minutes": round(wall / 60, 2),
        "epochs_done": history[-1]["epoch"],
        "train_images_per_s_median": round(
            statistics.median(r["images_per_s"] for r in history), 1
        ),
        "val_psnr_last": round(last["val_psnr"], 2),
        "val_psnr_best": round(max(r["val_psnr"] for r in evals), 2),
        "probe_acc_last": last["probe_acc"],
        "val_images": cfg.data.val_limit,
        "kl_last": history[-1].get("loss_kl"),
        "run_dir": str(run_dir),
    }
    append_record("vae.jsonl", record)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
