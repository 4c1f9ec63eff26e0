"""The whole pipeline on one GPU inside one device call (under 10 minutes), with its timings.

Some development sessions are lent a GPU for a few minutes (an H200 here) on a machine with no
network and no copy of ../shared. This script is what such a session runs: one command that
smoke-tests CUDA and bf16, trains both stages and the decoder fine-tune with the `gpu` presets,
exports fp16 weights, distils the exported pair's autoguidance into one network (`catdog
distill`, what the shipped default is) when the deadline leaves time, and records how long every
stage took. Three steps:

    # 1. here, no GPU needed: the training photos (48 px), the held-out subset the runs score
    #    themselves on, and the VGG16 weights in fp16, into an ignored folder (about 37 MB)
    python bench/gpu_pipeline.py pack --data-dir ../shared/data/catdog96 \\
        --vgg-weights ../shared/weights/vgg16_features_imagenet1k_v1.pth --out data/device

    # 2. on the device (the `run` tool, carry ["data/device"], timeout_s 600):
    PYTHONUNBUFFERED=1 python3 bench/gpu_pipeline.py run --pack data/device --out $OUT

    # 3. here, with the files that came back: append the record, then score the weights
    python bench/gpu_pipeline.py record DIR_OF_OUT
    python bench/bench_quality.py --model-path DIR_OF_OUT/weights/catdog_diffusion.safetensors ...
    python bench/bench_quality.py --model-path \
        DIR_OF_OUT/weights/catdog_diffusion_distilled.safetensors ...

`run` trains through the project's own CLI (`main.py`, `python -m catdog`), each stage in its
own process, and fits each stage into its minutes by measurement rather than by guessing the
GPU's speed: the VAE runs two epochs, and is resumed with the epoch count that fills its
budget at the measured epoch time (so its cosine schedule ends on time). The diffusion model
trains at a constant rate for three quarters of its budget and is resumed with a cooldown
(`--cooldown-epochs`) of a third of the epochs it reached (a quarter of all epochs). Every
stage also has a hard `--max-minutes` cap, and no stage may start or run past the run's own
`--deadline-minutes` (default 9, inside the device's 10-minute limit): the sample grids are
skipped when time is short. The smoke test's failure is recorded, not fatal: training does not
depend on it.
Only small files come back (the device returns at most 8): `timings.json` (rewritten after
every stage, so a killed run still reports), `log.txt`, the exported weight files (the VAE, the
diffusion model and its guide, and the distilled student when it was made), and `runs.tar.gz`
with each run's config, metrics, loss curves and last sample pictures. The distillation and the
sample grids are optional: a failure or a lack of time there is recorded, and the pair stands.

`run --smoke` does the same with the tiny presets on the CPU, in about a minute: it is how the
tests check this script without a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from common import append_record, machine, record_header  # noqa: E402

PACK_IMAGES = "catdog48.npz"
PACK_VGG = "vgg16_features_fp16.pth"
CLASSES = ("cat", "dog")


# ----------------------------------------------------------------------------------------- pack


def pack(data_dir: str, vgg_weights: str, out: Path, image_size: int, val_limit: int) -> None:
    """The training split and a balanced held-out subset of the test split (what training
    scores itself on, never trained on) at ``image_size``, as the loaders deliver them, plus
    the VGG16 features in fp16."""
    from catdog.config import DataConfig
    from catdog.data import balanced_subset, load_split

    data = DataConfig(data_dir=data_dir, image_size=image_size)
    train = load_split(data, "train")
    val = balanced_subset(load_split(data, "test"), val_limit)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out / PACK_IMAGES,
        train_images=train.images.numpy(), train_labels=train.labels.numpy(),
        test_images=val.images.numpy(), test_labels=val.labels.numpy(),
    )  # fmt: skip
    state = torch.load(vgg_weights, map_location="cpu", weights_only=True)
    torch.save({k: v.half() for k, v in state.items()}, out / PACK_VGG)
    for name in (PACK_IMAGES, PACK_VGG):
        print(f"wrote {out / name} ({(out / name).stat().st_size / 2**20:.1f} MiB)")


def unpack(pack_dir: Path, data_dir: Path) -> dict[str, int]:
    """The packed images as a folder dataset: DATA/{train,test}/{cat,dog}/NNNN.png."""
    arrays = np.load(pack_dir / PACK_IMAGES)
    counts = {}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        for label, name in enumerate(CLASSES):
            folder = data_dir / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(images[labels == label]):
                Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{i:04d}.png")
        counts[split] = int(len(labels))
    return counts


# ------------------------------------------------------------------------------------------ run


class Pipeline:
    """The stages of one `run`, sharing its clock, its log and its timings file."""

    def __init__(self, out: Path, smoke: bool, deadline_minutes: float) -> None:
        self.out = out
        self.started = time.monotonic()
        self.deadline = self.started + 60 * deadline_minutes
        self.log = out / "log.txt"
        self.timings: dict = {
            **record_header(),
            "machine": machine(),
            "smoke": smoke,
            "stages": {},
        }
        if torch.cuda.is_available():
            self.timings["gpu"] = torch.cuda.get_device_name(0)

    def save(self) -> None:
        self.timings["total_seconds"] = round(time.monotonic() - self.started, 1)
        tmp = self.out / "timings.json.tmp"
        tmp.write_text(json.dumps(self.timings, indent=1))
        os.replace(tmp, self.out / "timings.json")

    def left(self) -> float:
        """Seconds to the run's deadline."""
        return self.deadline - time.monotonic()

    def cap(self, minutes: float, reserve: float) -> str:
        """A stage's --max-minutes: its own cap, or what the deadline leaves after ``reserve``
        seconds for the stages after it (start-up and final evaluation come on top of it)."""
        return f"{max(0.05, min(minutes, (self.left() - reserve) / 60)):.3f}"

    def stage(self, name: str, argv: list[str], required: bool = True) -> float | None:
        """Run one CLI command, its output appended to the log; its wall time, recorded. A
        failed stage stops the run, unless it is not ``required`` (then: None)."""
        if self.left() <= 0:
            raise SystemExit(f"{name} not started: the run's deadline has passed")
        start = time.monotonic()
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}
        with self.log.open("a") as log:
            log.write(f"\n### {name}: {' '.join(argv)}\n")
            log.flush()
            try:
                code = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, stdout=log,
                                      stderr=subprocess.STDOUT,
                                      timeout=max(1.0, self.left())).returncode  # fmt: skip
            except subprocess.TimeoutExpired:
                code = "killed at the deadline"
        seconds = time.monotonic() - start
        self.timings["stages"][name] = {"seconds": round(seconds, 1), "exit": code}
        self.save()
        print(f"{name}: {seconds:.1f} s, exit {code}", flush=True)
        if code != 0:
            if not required:
                return None
            raise SystemExit(f"{name} failed (exit {code}); see {self.log}")
        return seconds


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def epochs_to_fill(seconds: float, epoch_seconds: float, low: int, high: int) -> int:
    """How many epochs of ``epoch_seconds`` fit in ``seconds``, with 15 % kept for evaluation
    and checkpoints between epochs, clamped to [low, high]."""
    return max(low, min(high, math.floor(0.85 * seconds / max(epoch_seconds, 1e-6))))


def smoke_test(device: str, smoke: bool) -> dict:
    """CUDA and bf16 on the real models: a bf16 matrix product, a UNet training step under
    bf16 autocast, and sampling the shipped weights on the device."""
    from catdog import checkpoint
    from catdog.config import diffusion_preset
    from catdog.generate import decode_latents, sample_latents
    from catdog.models.unet import UNet

    result: dict = {"torch": torch.__version__, "device": device}
    bf16 = device.startswith("cuda")
    n = 256 if smoke else 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16 if bf16 else torch.float32)
    (a @ a).sum().item()
    start = time.perf_counter()
    for _ in range(10):
        b = a @ a
    b.sum().item()
    result["matmul_tflops"] = round(10 * 2 * n**3 / (time.perf_counter() - start) / 1e12, 3)
    unet = UNet(diffusion_preset("tiny" if smoke else "gpu").unet).to(device)
    c = unet.cfg
    x = torch.randn(64, c.latent_channels, c.latent_size, c.latent_size, device=device)
    t = torch.randint(1, 1000, (64,), device=device)
    y = torch.randint(0, 2, (64,), device=device)
    with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
        out = unet(x, t, y)
    loss = out.float().pow(2).mean()
    loss.backward()
    result["bf16_train_step_finite"] = bool(torch.isfinite(loss)) and all(
        torch.isfinite(p.grad).all() for p in unet.parameters() if p.grad is not None
    )
    model, schedule, record = checkpoint.load_diffusion(
        ROOT / "src/catdog/weights/catdog_diffusion.safetensors"
    )
    vae, _ = checkpoint.find_vae(ROOT / "src/catdog/weights/catdog_diffusion.safetensors", record)
    model.to(device)
    vae.to(device)  # decode_latents decodes on the VAE's device
    start = time.perf_counter()
    z = sample_latents(model, schedule, torch.zeros(16, dtype=torch.long), list(range(16)),
                       sampler="dpmpp", steps=20, guidance=2.0, device=device)  # fmt: skip
    images = decode_latents(vae, z)
    result["shipped_sampling_seconds_16"] = round(time.perf_counter() - start, 2)
    result["shipped_sampling_finite"] = bool(torch.isfinite(images).all())
    return result


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # A fresh folder each time: a rerun on a machine still warm from a failed one must not find
    # that run's folders (a new run refuses a folder that holds one).
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="catdog_gpu_"))
    work.mkdir(parents=True, exist_ok=True)
    p = Pipeline(out, args.smoke, args.deadline_minutes)
    p.timings["work"] = str(work)
    p.save()
    device = "cpu" if args.smoke else "cuda"
    runtime = ["--device", device, "--precision", "fp32" if args.smoke else "bf16"]
    quiet = ["--no-progress"]

    start = time.monotonic()
    try:
        p.timings["smoke_test"] = smoke_test(device, args.smoke)
    except Exception as exc:  # noqa: BLE001 - recorded; training does not depend on it
        p.timings["smoke_test"] = {"error": f"{type(exc).__name__}: {exc}"}
        with p.log.open("a") as log:
            log.write("### smoke_test failed\n" + traceback.format_exc())
    p.timings["stages"]["smoke_test"] = {"seconds": round(time.monotonic() - start, 1)}
    start = time.monotonic()
    data = work / "data"
    p.timings["images"] = unpack(Path(args.pack), data)
    p.timings["stages"]["unpack"] = {"seconds": round(time.monotonic() - start, 1)}
    p.save()

    vgg = str(Path(args.pack) / PACK_VGG)
    vae_dir, dec_dir, diff_dir = work / "vae", work / "decoder", work / "diffusion"
    vae_preset, diff_preset = ("tiny", "tiny") if args.smoke else ("gpu", "gpu")
    # What each stage keeps back for the ones after it: their caps and ~30 s of start-up each.
    after_vae = 60 * (args.decoder_minutes + args.diffusion_minutes) + 150
    after_decoder = 60 * args.diffusion_minutes + 120
    # VAE: two epochs to measure the epoch time, then resumed to fill its budget.
    budget = min(60 * args.vae_minutes, p.left() - after_vae)
    seconds = p.stage("vae_calibrate", [
        "main.py", "--mode", "vae", "--preset", vae_preset, "--data_dir", str(data),
        "--vgg_weights", vgg, "--save_dir", str(vae_dir), "--epochs", "1000", "--stop_at_epoch",
        "2", "--eval_every", "10", "--viz_every", "1000", "--checkpoint_every", "10", *runtime,
        *quiet,
    ])  # fmt: skip
    epoch_seconds = metrics(vae_dir)[-1]["epoch_seconds"]
    left = max(budget - seconds, 10.0)  # a slow start still gets a few epochs
    vae_epochs = epochs_to_fill(left, epoch_seconds, 3, 2000) + 2
    p.timings["stages"]["vae_calibrate"]["epoch_seconds"] = epoch_seconds
    p.stage("vae", [
        "main.py", "--mode", "vae", "--resume", "--save_dir", str(vae_dir), "--epochs",
        str(vae_epochs), "--max_minutes", p.cap(left / 60, after_vae), *runtime, *quiet,
    ])  # fmt: skip
    p.timings["stages"]["vae"].update(summary(vae_dir, "images_per_s"))
    vae_best = vae_dir / "vae_gan_best.pt"

    p.stage("decoder", [
        "main.py", "--mode", "vae", "--finetune_decoder", str(vae_best), "--data_dir", str(data),
        "--vgg_weights", vgg, "--save_dir", str(dec_dir), "--eval_every", "10", "--viz_every",
        "1000", "--checkpoint_every", "10", "--max_minutes",
        p.cap(args.decoder_minutes, after_decoder), *runtime, *quiet,
    ])  # fmt: skip
    p.timings["stages"]["decoder"].update(summary(dec_dir, "images_per_s"))
    decoder = next(f for f in (dec_dir / "vae_gan_final.pt", dec_dir / "vae_gan_best.pt")
                   if f.is_file())  # fmt: skip

    # Diffusion: a constant rate for three quarters of the budget, then a cooldown of a third
    # as many epochs (a quarter of the run). Export and the sample grids keep ~90 s back.
    budget = 60 * args.diffusion_minutes
    p.stage("diffusion_constant", [
        "main.py", "--mode", "diffusion", "--preset", diff_preset, "--vae_path", str(vae_best),
        "--data_dir", str(data), "--vgg_weights", vgg, "--save_dir", str(diff_dir),
        "--epochs", "1000000", "--max_minutes", p.cap(0.75 * budget / 60, 0.25 * budget + 120),
        *runtime, *quiet,
    ])  # fmt: skip
    history = metrics(diff_dir)
    reached = history[-1]["epoch"]
    # The cooldown's epochs at the training time per epoch (the wall time of the first phase
    # includes its start-up and latent caching, which the resumed run does not repeat).
    epoch_seconds = float(np.median([r["epoch_seconds"] for r in history]))
    cooldown = max(1, reached // 3)
    p.timings["stages"]["diffusion_constant"].update(
        {"epochs": reached, "epoch_seconds": round(epoch_seconds, 3)}
    )
    p.stage("diffusion_cooldown", [
        "main.py", "--mode", "diffusion", "--resume", "--save_dir", str(diff_dir), "--epochs",
        str(reached + cooldown), "--cooldown_epochs", str(cooldown), "--max_minutes",
        p.cap(max(0.25 * budget, 1.5 * cooldown * epoch_seconds) / 60, 90), *runtime, *quiet,
    ])  # fmt: skip
    p.timings["stages"]["diffusion_cooldown"].update(summary(diff_dir, "latents_per_s"))

    weights = out / "weights"
    p.stage("export", [
        "-m", "catdog", "export", "--model-path", str(diff_dir / "conditional_diffusion_final.pt"),
        "--output", str(weights), "--data-dir", str(data), "--vae-path", str(decoder),
    ])  # fmt: skip
    p.timings["weights_mib"] = weight_sizes(weights)
    runs = (vae_dir, dec_dir, diff_dir)
    pack_runs(out, runs, work)  # before the optional stages
    p.save()
    # Optional from here: the exported pair is the result; the distilled student (one UNet pass
    # a sampling step instead of two) and the sample grids come when there is time left.
    shipped = weights / "catdog_diffusion.safetensors"
    distill_dir = work / "distilled"
    if args.distill_minutes <= 0:
        p.timings["stages"]["distill"] = {"skipped": "--distill-minutes 0"}
    elif p.left() < 90 + 30 * args.distill_minutes:
        p.timings["stages"]["distill"] = {"skipped": "too close to the deadline"}
    else:
        sizes = ["--steps", "6", "--generated", "16", "--batch-size", "16",
                 "--checkpoint-every", "3"] if args.smoke else ["--steps", "100000"]  # fmt: skip
        # The teacher is the exported pair, as when distilling the shipped weights here.
        done = p.stage("distill", [
            "-m", "catdog", "distill", "--model-path", str(shipped), "--data-dir", str(data),
            "--save-dir", str(distill_dir), *sizes, "--max-minutes",
            p.cap(args.distill_minutes, 75), "--device", device, *quiet,
        ], required=False)  # fmt: skip
        if done is not None:
            p.timings["stages"]["distill"].update(distill_summary(distill_dir))
            runs = (vae_dir, dec_dir, distill_dir, diff_dir)
            if p.stage("export_distilled", [
                "-m", "catdog", "export", "--model-path",
                str(distill_dir / "conditional_diffusion_distilled.pt"), "--output", str(weights),
                "--data-dir", str(data),
            ], required=False) is not None:  # fmt: skip
                shipped = weights / "catdog_diffusion_distilled.safetensors"
                p.timings["weights_mib"] = weight_sizes(weights)
        pack_runs(out, runs, work)
        p.save()
    for name in CLASSES:
        if p.left() < 45:
            p.timings["stages"][f"generate_{name}"] = {"skipped": "too close to the deadline"}
            continue
        p.stage(f"generate_{name}", [
            "-m", "catdog", "generate", "--model-path", str(shipped), "--class-name", name,
            "--num-samples", "8" if args.smoke else "64", "--output",
            str(work / "samples" / name), "--no-progress",
        ])  # fmt: skip
    pack_runs(out, runs, work)
    p.save()
    print(json.dumps(p.timings, indent=1))


def pack_runs(out: Path, runs: tuple[Path, ...], work: Path) -> None:
    """runs.tar.gz: each run's config, metrics and loss curves, the last training samples of
    the last run (the diffusion model's), and the sample grids made so far (written
    atomically)."""
    tmp = out / "runs.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        for run_dir in runs:
            for name in ("config.json", "metrics.jsonl", "loss_curves.png"):
                if (run_dir / name).is_file():
                    tar.add(run_dir / name, f"{run_dir.name}/{name}")
        for picture in sorted((runs[-1] / "samples").glob("*.png"))[-1:]:
            tar.add(picture, f"diffusion/{picture.name}")
        for grid in sorted((work / "samples").glob("*/*grid*.png")):
            tar.add(grid, f"samples/{grid.parent.name}_{grid.name}")
    os.replace(tmp, out / "runs.tar.gz")


def summary(run: Path, speed_key: str) -> dict:
    """The epochs a run reached and its median throughput, from its metrics."""
    history = metrics(run)
    return {
        "epochs": history[-1]["epoch"],
        speed_key: round(float(np.median([r[speed_key] for r in history])), 1),
        "training_seconds": round(sum(r["epoch_seconds"] for r in history), 1),
    }


def weight_sizes(weights: Path) -> dict[str, float]:
    """Each exported file's size in MiB."""
    files = sorted(weights.glob("*.safetensors"))
    return {f.name: round(f.stat().st_size / 2**20, 2) for f in files}


def distill_summary(run: Path) -> dict:
    """The steps a distillation reached and its median throughput, from its metrics."""
    history = metrics(run)
    return {
        "steps": history[-1]["step"],
        "latents_per_s": round(float(np.median([r["latents_per_s"] for r in history])), 1),
        "training_seconds": round(sum(r["seconds"] for r in history), 1),
    }


def record(out_dir: Path) -> None:
    """Append the timings of a device run that came back to bench/results/gpu_pipeline.jsonl."""
    timings = json.loads((out_dir / "timings.json").read_text())
    append_record("gpu_pipeline.jsonl", timings)
    print(f"recorded {timings.get('gpu', timings['machine'])}: {timings['total_seconds']} s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="pack the photos and VGG weights for the device")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--vgg-weights", required=True)
    p.add_argument("--out", default="data/device")
    p.add_argument("--image-size", type=int, default=48)
    p.add_argument("--val-limit", type=int, default=400)
    p = sub.add_parser("run", help="train everything on the GPU (or --smoke: tiny, on the CPU)")
    p.add_argument("--pack", default="data/device")
    p.add_argument("--out", required=True)
    p.add_argument("--work", default=None, help="scratch folder (default: a new temporary one)")
    p.add_argument("--vae-minutes", type=float, default=2.5)
    p.add_argument("--decoder-minutes", type=float, default=0.5)
    p.add_argument("--diffusion-minutes", type=float, default=2.2)
    p.add_argument("--distill-minutes", type=float, default=0.8,
                   help="guidance distillation of the exported pair, when the deadline leaves "
                   "time (0: none)")  # fmt: skip
    p.add_argument("--deadline-minutes", type=float, default=9.0,
                   help="no stage starts or runs past this (default: 9)")  # fmt: skip
    p.add_argument("--smoke", action="store_true", help="tiny presets on the CPU (for tests)")
    p = sub.add_parser("record", help="append a returned timings.json to bench/results")
    p.add_argument("out_dir")
    args = parser.parse_args()
    if args.command == "pack":
        pack(args.data_dir, args.vgg_weights, Path(args.out), args.image_size, args.val_limit)
    elif args.command == "run":
        run(args)
    else:
        record(Path(args.out_dir))


if __name__ == "__main__":
    main()
