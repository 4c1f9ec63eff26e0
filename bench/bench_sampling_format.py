"""Does the memory format of the loaded networks change sampling speed on this CPU?

Times the whole default sampling pipeline of a model pair (the shipped one unless
``--model-path``): DPM-Solver++(2M) at 20 steps with the model's guide, then the decoder, for
``--images`` images in one batch, with the UNet, its guide and the VAE in the default
(contiguous, NCHW) memory format and in channels-last (NHWC). The two are interleaved round by
round, so that drift in the machine's speed falls on both alike, and the images of the two are
compared (the largest difference, in [-1, 1] pixel units).

    python bench/bench_sampling_format.py [--model-path PATH] [--rounds 5]

Appends one JSON record to bench/results/sampling_format.jsonl.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from common import append_record, interleaved_median_ms, record_header  # noqa: E402

from catdog import checkpoint  # noqa: E402
from catdog.generate import decode_latents, resolve_model_path, sample_latents  # noqa: E402

FORMATS = {
    "contiguous (NCHW)": torch.contiguous_format,
    "channels_last (NHWC)": torch.channels_last,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-path", default=None, help="default: the shipped weights")
    parser.add_argument("--images", type=int, default=64, help="images per timed call (one batch)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    model_path = resolve_model_path(args.model_path)
    labels = torch.arange(args.images) % 2
    seeds = list(range(args.images))
    pipelines, images = {}, {}
    for name, memory_format in FORMATS.items():
        unet, schedule, record = checkpoint.load_diffusion(model_path)
        vae, _ = checkpoint.find_vae(model_path, record)
        guide, link = checkpoint.find_guide(model_path, record)
        guidance = checkpoint.resolve_guidance(None, link)
        for module in (unet, vae, guide):
            if module is not None:
                module.to(memory_format=memory_format)

        def pipeline(unet=unet, schedule=schedule, vae=vae, guide=guide, guidance=guidance,
                     name=name) -> None:  # fmt: skip
            z = sample_latents(unet, schedule, labels, seeds, sampler="dpmpp", steps=args.steps,
                               guidance=guidance, batch_size=args.images, guide=guide)  # fmt: skip
            images[name] = decode_latents(vae, z)

        pipeline()  # warm-up
        pipelines[name] = pipeline
    median_ms = interleaved_median_ms(pipelines, args.rounds, 1)
    first = next(iter(FORMATS))
    results = {}
    for name in FORMATS:
        ms = median_ms[name]
        results[name] = {
            "median_s_per_call": round(ms / 1000, 3),
            "images_per_s": round(args.images / (ms / 1000), 2),
            "vs_first_pct": round(100 * (ms / median_ms[first] - 1), 1),
        }
        print(f"{name}: {results[name]['images_per_s']} images/s "
              f"({results[name]['vs_first_pct']:+.1f} % time)", flush=True)  # fmt: skip
    max_diff = max((images[n] - images[first]).abs().max().item() for n in FORMATS)
    print(f"largest pixel difference between the formats: {max_diff:.2e}")
    append_record("sampling_format.jsonl", {
        **record_header(), "model_path": str(args.model_path or "shipped"),
        "sampler": "dpmpp", "steps": args.steps, "guide": guide is not None,
        "images": args.images, "rounds": args.rounds, "results": results,
        "max_pixel_diff": max_diff,
    })  # fmt: skip


if __name__ == "__main__":
    main()
