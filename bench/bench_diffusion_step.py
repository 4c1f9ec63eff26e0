"""Can the diffusion training step run faster on this CPU without changing the model?

Times the default training step (the ``cpu`` preset's UNet, batch 128, REPA with its default
projector, as ``bench_repa_step.py`` builds it) in four variants: eager in the default memory
format, eager in channels-last (NHWC, which speeds up the VAE's convolutions), and each of
those under ``torch.compile`` (inductor, C++ code generation on the CPU). The variants are
interleaved round by round, so that drift in the machine's speed falls on all alike; the
compiled ones are warmed up (compiled) before timing, and the compile time is recorded apart.
Random weights and data: speed does not depend on them.

With ``--unet-variants``, it times named variants of the preset's UNet instead, each as the
training loop runs it (eager, default memory format, REPA): the training step, and the UNet's
forward pass without gradients on a sampling batch (``--sample-batch``; a guided step of 64
images is one such pass of the model and one of its guide, or two of the model), interleaved
alike, e.g. what self-attention at 12x12 as well costs:

    python bench/bench_diffusion_step.py --unet-variants \
        '{"attention 6x6": {}, "attention 6x6 and 12x12": {"attention_levels": [0, 1]}}'

    python bench/bench_diffusion_step.py [--rounds 6] [--steps 10]

Appends one JSON record to bench/results/diffusion_step.jsonl (with ``--unet-variants``, to
bench/results/unet_cost.jsonl).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bench_repa_step import make_step  # noqa: E402
from common import append_record, interleaved_median_ms, record_header  # noqa: E402

from catdog.config import UNetConfig, diffusion_preset, from_dict, to_dict  # noqa: E402
from catdog.models.unet import UNet  # noqa: E402

VARIANTS = {
    "eager": (torch.contiguous_format, False),
    "eager, channels_last": (torch.channels_last, False),
    "compiled": (torch.contiguous_format, True),
    "compiled, channels_last": (torch.channels_last, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant and round")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument(
        "--unet-variants",
        default=None,
        help="JSON: name -> overrides of the preset's UNet config; times these",
    )
    parser.add_argument(
        "--sample-batch",
        type=int,
        default=128,
        help="with --unet-variants: the batch of the timed forward pass",
    )
    args = parser.parse_args()
    if args.unet_variants is not None:
        compare_unets(args)
        return
    cfg = diffusion_preset("cpu")
    torch.manual_seed(0)
    steps, warmup = {}, {}
    for name, (memory_format, compiled) in VARIANTS.items():
        steps[name], _ = make_step(cfg.repa_hidden, args.batch, 2000, 512, memory_format, compiled)
        start = time.perf_counter()
        for _ in range(3):  # compiles the forward and backward graphs where compiled
            steps[name]()
        warmup[name] = time.perf_counter() - start
    median_ms = interleaved_median_ms(steps, args.rounds, args.steps)
    results = {}
    for name in VARIANTS:
        ms = median_ms[name]
        results[name] = {"median_ms_per_step": round(ms, 1),
                         "vs_eager_pct": round(100 * (ms / median_ms["eager"] - 1), 1),
                         "warmup_s": round(warmup[name], 1)}  # fmt: skip
        print(f"{name}: {ms:.1f} ms/step ({results[name]['vs_eager_pct']:+.1f} %), "
              f"warm-up {warmup[name]:.1f} s", flush=True)  # fmt: skip
    append_record("diffusion_step.jsonl", {
        **record_header(), "unet_config": to_dict(cfg.unet), "repa_hidden": cfg.repa_hidden,
        "batch": args.batch, "rounds": args.rounds, "steps_per_round": args.steps,
        "results": results,
    })  # fmt: skip


def compare_unets(args: argparse.Namespace) -> None:
    """Times the training step and the sampling forward pass of each named UNet variant."""
    preset = diffusion_preset("cpu")
    base = to_dict(preset.unet)
    configs = {name: from_dict(UNetConfig, {**base, **overrides})
               for name, overrides in json.loads(args.unet_variants).items()}  # fmt: skip
    torch.manual_seed(0)
    steps, forwards, params = {}, {}, {}
    for name, unet_cfg in configs.items():
        steps[name], _ = make_step(preset.repa_hidden, args.batch, 2000, 512,
                                   unet_config=unet_cfg)  # fmt: skip
        steps[name]()  # warm-up
        unet = UNet(unet_cfg).eval()
        params[name] = sum(p.numel() for p in unet.parameters())
        c, s = unet_cfg.latent_channels, unet_cfg.latent_size
        x = torch.randn(args.sample_batch, c, s, s)
        t = torch.randint(1, preset.schedule.num_timesteps + 1, (args.sample_batch,))
        y = torch.randint(0, unet_cfg.num_classes + 1, (args.sample_batch,))  # with the null class

        def forward(unet: UNet = unet, x: torch.Tensor = x, t: torch.Tensor = t,
                    y: torch.Tensor = y) -> None:  # fmt: skip
            with torch.no_grad():
                unet(x, t, y)

        forwards[name] = forward
        forward()  # warm-up
    train_ms = interleaved_median_ms(steps, args.rounds, args.steps)
    forward_ms = interleaved_median_ms(forwards, args.rounds, args.steps)
    first = next(iter(configs))
    results = {}
    for name in configs:
        results[name] = {
            "unet_config": to_dict(configs[name]), "params": params[name],
            "train_ms_per_step": round(train_ms[name], 1),
            "train_vs_first_pct": round(100 * (train_ms[name] / train_ms[first] - 1), 1),
            "forward_ms": round(forward_ms[name], 1),
            "forward_vs_first_pct": round(100 * (forward_ms[name] / forward_ms[first] - 1), 1),
        }  # fmt: skip
        print(f"{name}: train {train_ms[name]:.1f} ms/step "
              f"({results[name]['train_vs_first_pct']:+.1f} %), forward of {args.sample_batch} "
              f"{forward_ms[name]:.1f} ms ({results[name]['forward_vs_first_pct']:+.1f} %)",
              flush=True)  # fmt: skip
    append_record("unet_cost.jsonl", {
        **record_header(), "unet_variants": results, "batch": args.batch,
        "sample_batch": args.sample_batch, "repa_hidden": preset.repa_hidden,
        "rounds": args.rounds, "steps_per_round": args.steps,
    })  # fmt: skip


if __name__ == "__main__":
    main()
