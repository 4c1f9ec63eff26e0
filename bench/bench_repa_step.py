"""What representation alignment (REPA) costs per diffusion training step on this machine.

Times the training step of the default UNet (batch 128) without REPA and with REPA projectors
of the given hidden widths, as the training loop runs it: the cached fp16 VGG16 features of the
batch are gathered from a 2,000-row table, the projector maps the UNet's middle features to
them, and ``1 - cosine`` is added to the loss. The settings are interleaved, round by round,
so that drift in the machine's speed falls on all of them alike. Random weights and data:
speed does not depend on them.

    python bench/bench_repa_step.py [--hidden 128 256] [--rounds 6] [--steps 10]

Appends one JSON record to bench/results/repa_step.jsonl.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from common import append_record, interleaved_median_ms, record_header  # noqa: E402

from catdog.config import UNetConfig, diffusion_preset, to_dict  # noqa: E402
from catdog.diffusion import NoiseSchedule  # noqa: E402
from catdog.losses import alignment_loss  # noqa: E402
from catdog.models.unet import FeatureProjector, UNet  # noqa: E402


def make_step(
    hidden: int,
    batch: int,
    rows: int,
    feature_channels: int,
    memory_format: torch.memory_format = torch.contiguous_format,
    compiled: bool = False,
    unet_config: UNetConfig | None = None,
):
    """One training step's closure for a projector of width ``hidden`` (0 = no REPA); the UNet
    (the ``cpu`` preset's unless ``unet_config`` is given) in ``memory_format``, its forward
    pass ``torch.compile``d if ``compiled``."""
    cfg = diffusion_preset("cpu")
    if unet_config is not None:
        cfg.unet = unet_config
    unet = UNet(cfg.unet).train().to(memory_format=memory_format)
    forward = torch.compile(unet) if compiled else unet
    schedule = NoiseSchedule(cfg.schedule)
    projector = (
        FeatureProjector(cfg.unet.channels[-1], feature_channels, hidden) if hidden else None
    )
    params = list(unet.parameters()) + (list(projector.parameters()) if projector else [])
    opt = torch.optim.AdamW(params, lr=1e-3)
    c, s = cfg.unet.latent_channels, cfg.unet.latent_size
    latents, labels = torch.randn(rows, c, s, s), torch.randint(0, 2, (rows,))
    grid = s // 2 ** (len(cfg.unet.channels) - 1)
    features = torch.randn(rows, feature_channels, grid, grid).half() if hidden else None

    def step() -> None:
        index = torch.randint(0, rows, (batch,))
        x0, y = latents[index], labels[index]
        noise = torch.randn_like(x0)
        t = torch.randint(1, schedule.num_timesteps + 1, (batch,))
        xt = schedule.add_noise(x0, noise, t).contiguous(memory_format=memory_format)
        if projector is None:
            prediction = forward(xt, t, y)
            total = F.mse_loss(prediction, schedule.target(x0, noise, t))
        else:
            prediction, middle = forward(xt, t, y, return_features=True)
            total = F.mse_loss(prediction, schedule.target(x0, noise, t))
            total = total + 0.5 * alignment_loss(projector(middle), features[index])
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    return step, sum(p.numel() for p in projector.parameters()) if projector else 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 256],
                        help="projector hidden widths to time, besides no REPA")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per setting and round")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--feature-channels", type=int, default=512, help="512 = relu4_3")
    args = parser.parse_args()
    torch.manual_seed(0)
    settings = [0, *args.hidden]
    steps, params = {}, {}
    for hidden in settings:
        steps[hidden], params[hidden] = make_step(hidden, args.batch, 2000, args.feature_channels)
        steps[hidden]()  # warm-up
    median_ms = interleaved_median_ms(steps, args.rounds, args.steps)
    results = {}
    for hidden in settings:
        ms = median_ms[hidden]
        name = "off" if hidden == 0 else f"hidden {hidden}"
        results[name] = {"median_ms_per_step": round(ms, 1), "projector_params": params[hidden],
                         "overhead_pct": round(100 * (ms / median_ms[0] - 1), 1)}  # fmt: skip
        print(f"REPA {name}: {ms:.1f} ms/step, {results[name]['overhead_pct']:+.1f} %", flush=True)
    append_record("repa_step.jsonl", {
        **record_header(), "unet_config": to_dict(diffusion_preset("cpu").unet),
        "batch": args.batch, "feature_channels": args.feature_channels, "rounds": args.rounds,
        "steps_per_round": args.steps, "results": results,
    })  # fmt: skip


if __name__ == "__main__":
    main()
