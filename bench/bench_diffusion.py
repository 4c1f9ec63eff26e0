"""Diffusion speed on this machine: training throughput (latents/s) and sampling throughput
(images/s, decoding included) for DDPM over all T steps, DDIM at 10, 25 and 50 steps and
DPM-Solver++(2M) at 10, 20 and 25 steps, with guidance: classifier-free (two UNet passes a
step), or autoguidance (one pass of the UNet and one of its smaller guide) when the model has a
guide or ``--guide-path`` names one, optionally with a classifier-free term on top
(``--class-guidance``, a third pass).

Speed does not depend on the weights, so a model pair is optional: without --model-path the
UNet and VAE of the chosen presets are built with random weights.

    python bench/bench_diffusion.py [--model-path RUN/conditional_diffusion_final.pt] [--rounds 3]

Appends one JSON record to bench/results/diffusion_speed.jsonl.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from common import append_record, record_header  # noqa: E402

from catdog import checkpoint  # noqa: E402
from catdog.config import UNetConfig, diffusion_preset, from_dict, to_dict, vae_preset  # noqa: E402
from catdog.diffusion import NoiseSchedule  # noqa: E402
from catdog.generate import sample_latents  # noqa: E402
from catdog.models.unet import UNet  # noqa: E402
from catdog.models.vae import VAE  # noqa: E402


def train_throughput(unet: UNet, schedule: NoiseSchedule, batch: int, repeats: int = 5) -> float:
    opt = torch.optim.AdamW(unet.parameters())
    c, s = unet.cfg.latent_channels, unet.cfg.latent_size
    x0, labels = torch.randn(batch, c, s, s), torch.randint(0, 2, (batch,))
    unet.train()

    def step() -> None:
        noise = torch.randn_like(x0)
        t = torch.randint(1, schedule.num_timesteps + 1, (batch,))
        loss = (unet(schedule.add_noise(x0, noise, t), t, labels) - noise).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    unet.eval()
    return batch * repeats / (time.perf_counter() - start)


def sample_throughput(
    unet,
    vae,
    schedule,
    sampler: str,
    steps: int,
    n: int,
    guidance: float,
    guide=None,
    class_guidance: float = 1.0,
) -> float:
    labels = torch.arange(n) % 2
    start = time.perf_counter()
    z = sample_latents(unet, schedule, labels, list(range(n)), sampler=sampler, steps=steps,
                       guidance=guidance, eta=0.0, batch_size=n, guide=guide,
                       class_guidance=class_guidance)  # fmt: skip
    with torch.no_grad():
        vae.decode(vae.denormalize_latent(z))
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-path", default=None)
    parser.add_argument("--preset", default=None, help="diffusion preset when no model is given "
                        "(default: cpu)")  # fmt: skip
    parser.add_argument("--unet", default=None, help="JSON overrides of the UNet config")
    parser.add_argument("--guidance", type=float, default=None,
                        help="default: the model guide's scale, else 2.0")  # fmt: skip
    parser.add_argument("--guide-path", default=None,
                        help="autoguidance guide (default: the model's; 'none' = CFG)")  # fmt: skip
    parser.add_argument("--class-guidance", type=float, default=1.0,
                        help="with autoguidance: the CFG term on top (1 = off)")  # fmt: skip
    parser.add_argument("--images", type=int, default=64, help="images per sampling measurement")
    parser.add_argument("--ddpm-images", type=int, default=8, help="images for the T-step DDPM")
    parser.add_argument("--batch", type=int, default=128, help="training batch")
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="timed calls of each sampler, interleaved round by round; the median is recorded "
        "(more than 1 on a machine shared with other work)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.model_path and (args.unet or args.preset is not None):
        parser.error("--preset and --unet build a model with random weights; not with --model-path")
    torch.manual_seed(0)
    if args.model_path:
        unet, schedule, model_record = checkpoint.load_diffusion(args.model_path)
        vae, _ = checkpoint.find_vae(args.model_path, model_record)
        guide, link = checkpoint.find_guide(args.model_path, model_record, args.guide_path)
    else:
        cfg = diffusion_preset(args.preset or "cpu")
        if args.unet:
            cfg.unet = from_dict(UNetConfig, {**to_dict(cfg.unet), **json.loads(args.unet)})
        unet, schedule = UNet(cfg.unet).eval(), NoiseSchedule(cfg.schedule)
        vae = VAE(vae_preset("cpu").model).eval()
        guide, link = None, {}
        if args.guide_path not in (None, "none"):
            guide = checkpoint.load_diffusion(args.guide_path)[0]
    if args.class_guidance != 1.0 and guide is None:
        parser.error("--class-guidance adds to autoguidance, and there is no guide")
    guidance = checkpoint.resolve_guidance(args.guidance, link)
    distilled = bool(args.model_path) and bool(model_record.get("distilled"))
    record = {
        **record_header(),
        "unet_config": to_dict(unet.cfg),
        "unet_params": sum(p.numel() for p in unet.parameters()),
        "guidance": guidance,
        "guide": checkpoint.guidance_kind({"distilled": distilled}, guide),
        "guide_params": sum(p.numel() for p in guide.parameters()) if guide is not None else 0,
        "class_guidance": args.class_guidance,
        "images": args.images,
        "ddpm_images": args.ddpm_images,
        "train_batch": args.batch,
        "rounds": args.rounds,
        "train_latents_per_s": round(train_throughput(unet, schedule, args.batch), 1),
        "sampling_images_per_s": {},
    }
    runs = [("ddpm", schedule.num_timesteps, args.ddpm_images)]
    runs += [("ddim", s, args.images) for s in (10, 25, 50)]
    runs += [("dpmpp", s, args.images) for s in (10, 20, 25)]
    speeds: dict[str, list[float]] = {f"{sampler}-{steps}": [] for sampler, steps, _ in runs}
    for _ in range(args.rounds):
        for sampler, steps, n in runs:
            speed = sample_throughput(unet, vae, schedule, sampler, steps, n, guidance, guide,
                                      args.class_guidance)  # fmt: skip
            speeds[f"{sampler}-{steps}"].append(speed)
            print(f"{sampler}-{steps}: {speed:.2f} images/s", flush=True)
    for key, values in speeds.items():
        record["sampling_images_per_s"][key] = round(statistics.median(values), 2)
    print(f"training: {record['train_latents_per_s']} latents/s")
    append_record("diffusion_speed.jsonl", record)


if __name__ == "__main__":
    main()
