"""Can the diffusion training step run faster on this CPU without changing the model?

Times the default training step (the ``cpu`` preset's UNet, batch 128, REPA with its default
projector, as ``bench_repa_step.py`` builds it) in four variants: eager in the default memory
format, eager in channels-last (NHWC, which speeds up the VAE's convolutions), and each of
those under ``torch.compile`` (inductor, C++ code generation on the CPU). The variants are
interleaved round by round, so that drift in the machine's speed falls on all alike; the
compiled ones are warmed up (compiled) before timing, and the compile time is recorded apart.
Random weights and data: speed does not depend on them.

    python bench/bench_diffusion_step.py [--rounds 6] [--steps 10]

Appends one JSON record to bench/results/diffusion_step.jsonl.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bench_repa_step import make_step  # noqa: E402
from common import append_record, interleaved_median_ms, record_header  # noqa: E402

from catdog.config import diffusion_preset, to_dict  # noqa: E402

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
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
