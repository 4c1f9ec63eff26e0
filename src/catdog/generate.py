"""Generation by class name: noise -> latent of the asked-for class -> decoded 48x48 images."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import CLASS_NAMES, checkpoint, selector, viz
from .config import GenerateConfig
from .diffusion import SAMPLERS, Callback, NoiseSchedule, per_sample_noise
from .errors import CatdogError

WEIGHTS = Path(__file__).resolve().parent / "weights"
# The default: the shipped model with its autoguidance distilled into it (catdog distill), one
# UNet pass a sampling step. Its teacher, the model and its guide, ships beside it.
SHIPPED_MODEL = WEIGHTS / "catdog_diffusion_distilled.safetensors"
SHIPPED_TEACHER = WEIGHTS / "catdog_diffusion.safetensors"
SHIPPED_SELECTOR = WEIGHTS / "catdog_selector.safetensors"


def resolve_model_path(model_path: str | None) -> str:
    """The given diffusion checkpoint, or the weights shipped with the package when None."""
    if model_path is not None:
        return model_path
    if not SHIPPED_MODEL.is_file():
        raise CatdogError(
            f"no --model_path given and no shipped weights at {SHIPPED_MODEL}; train a model "
            "(main.py --mode vae, then --mode diffusion) and pass its checkpoint"
        )
    return str(SHIPPED_MODEL)


def class_label(name: str) -> int:
    """0 for cat, 1 for dog; anything else is a clear error listing the valid names."""
    if name not in CLASS_NAMES:
        raise CatdogError(f"unknown class {name!r}; valid classes: {', '.join(CLASS_NAMES)}")
    return CLASS_NAMES.index(name)


@torch.no_grad()
def sample_latents(
    unet: torch.nn.Module,
    schedule: NoiseSchedule,
    labels: torch.Tensor,
    seeds: Sequence[int],
    *,
    sampler: str = "ddim",
    steps: int = 25,
    guidance: float = 1.0,
    eta: float = 0.0,
    batch_size: int = 64,
    callback: Callback | None = None,
    progress: bool = False,
    device: torch.device | str = "cpu",
    guide: torch.nn.Module | None = None,
    class_guidance: float = 1.0,
) -> torch.Tensor:
    """Normalised latents, one per (label, seed); image i depends only on its own seed.

    ``labels`` are classes; a UNet with sub-classes draws one per image from its seed
    (``UNet.draw_subclasses``), after the image's starting noise.

    With a ``guide`` (a weaker model, see ``checkpoint.find_guide``) the guidance is
    autoguidance instead of classifier-free guidance, and ``class_guidance`` may add a
    classifier-free term on top (``diffusion.guided_output``).

    The noise is drawn on the CPU and the sampling runs on the UNet's ``device``."""
    shape = (unet.cfg.latent_channels, unet.cfg.latent_size, unet.cfg.latent_size)
    timesteps = schedule.spaced_timesteps(steps)
    out = []
    batches = range(0, len(seeds), batch_size)
    for start in tqdm(batches, desc="sampling", disable=not progress, leave=False):
        gens = [torch.Generator().manual_seed(s) for s in seeds[start : start + batch_size]]
        x = per_sample_noise(shape, gens, device)
        batch_labels = labels[start : start + batch_size]
        if hasattr(unet, "draw_subclasses"):  # a sub-class per image, after its noise
            batch_labels = unet.draw_subclasses(batch_labels, gens)
        out.append(SAMPLERS[sampler](
            unet, x, timesteps, labels=batch_labels.to(device),
            schedule=schedule,
            null_label=unet.null_label, guidance=guidance, eta=eta, generators=gens,
            callback=callback, guide=guide, class_guidance=class_guidance,
        ))  # fmt: skip
    return torch.cat(out)


@torch.no_grad()
def decode_latents(
    vae: torch.nn.Module, normalised: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """Images in [-1, 1] (on the CPU) from normalised latents: the exact inverse of the
    normalisation the diffusion model was trained with, then the decoder, in batches, on the
    VAE's device."""
    device = next(vae.parameters()).device
    return torch.cat([
        vae.decode(vae.denormalize_latent(chunk.to(device))).clamp(-1, 1).cpu()
        for chunk in normalised.split(batch_size)
    ])  # fmt: skip


def _check(cfg: GenerateConfig, num_timesteps: int | None = None) -> None:
    class_label(cfg.class_name)
    if cfg.num_samples <= 0:
        raise CatdogError(f"--num_samples must be at least 1, got {cfg.num_samples}")
    if cfg.sampler not in SAMPLERS:
        raise CatdogError(f"unknown sampler {cfg.sampler!r}; choose from {', '.join(SAMPLERS)}")
    if cfg.batch_size <= 0:
        raise CatdogError(f"--batch_size must be at least 1, got {cfg.batch_size}")
    selector.check_select(cfg.select)
    check_scales(guidance=cfg.guidance, class_guidance=cfg.class_guidance, eta=cfg.eta)
    if cfg.eta != 0 and cfg.sampler != "ddim":
        raise CatdogError(f"--eta is DDIM's noise (--sampler ddim); {cfg.sampler} does not use "
                          "it (dpmpp is deterministic, ddpm is eta 1)")  # fmt: skip
    check_seed(cfg.seed, cfg.num_samples, cfg.select)
    check_steps(cfg.steps, num_timesteps)


def check_steps(steps: int, num_timesteps: int | None = None) -> None:
    if steps <= 0 or (num_timesteps is not None and steps > num_timesteps):
        limit = f"in 1..{num_timesteps}" if num_timesteps else "at least 1"
        raise CatdogError(f"--steps must be {limit}, got {steps}")


def check_scales(**scales: float | None) -> None:
    """Guidance scales and DDIM's eta: finite and >= 0 (None: the model's default)."""
    for name, value in scales.items():
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise CatdogError(
                f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}"
            )


def check_seed(seed: int, count: int, select: int = 1) -> None:
    """Image i uses seed + i (candidate j of it, seed + i + j * 2^24): every one must be a
    distinct seed for torch's generator, which keeps only the low 32 bits."""
    top = 2**32 - count - (select - 1) * selector.CANDIDATE_STRIDE
    if not 0 <= seed <= top:
        raise CatdogError(
            f"--seed must be in 0..{top} for {count} images"
            + (f" with --select {select}" if select > 1 else "")
            + f", got {seed}"
        )


def check_class_guidance(
    class_guidance: float, guide: torch.nn.Module | None, record: dict
) -> None:
    """``class_guidance`` adds to autoguidance; without a guide it has nothing to add to.
    ``record``: the model's checkpoint, to name a guidance-distilled model as such."""
    if class_guidance != 1.0 and record.get("distilled"):
        raise CatdogError(
            "--class-guidance adds to autoguidance, and this model has its guidance distilled "
            f"into it; use a model with its guide, e.g. the shipped pair ({SHIPPED_TEACHER})"
        )
    if class_guidance != 1.0 and guide is None:
        raise CatdogError(
            "--class-guidance adds a classifier-free term to autoguidance, and this model has "
            "no guide (or --guide-path none); use --guidance for classifier-free guidance"
        )


def load_selector(select: int, path: str | None, vgg_weights: str | None):
    """The best-of-K selector when ``select`` > 1 (None otherwise): ``path``, or the shipped one,
    on torchvision's VGG16 ImageNet weights."""
    if select == 1:
        return None
    from .losses import load_vgg16_features

    vgg = load_vgg16_features(vgg_weights, off_hint="or sample without selection (--select 1)")
    return selector.load(path or SHIPPED_SELECTOR, vgg)


def sample_images(
    unet: torch.nn.Module,
    schedule: NoiseSchedule,
    vae: torch.nn.Module,
    labels: torch.Tensor,
    seeds: Sequence[int],
    *,
    select: int = 1,
    class_selector: torch.nn.Module | None = None,
    **sampling,
) -> torch.Tensor:
    """Decoded images in [-1, 1], one per (label, seed): ``sample_latents`` then the VAE, and
    with ``select`` K > 1 the best of K candidates per image (``selector.best_of``)."""

    def draw(candidate_seeds: list[int]) -> torch.Tensor:
        return decode_latents(vae, sample_latents(unet, schedule, labels, candidate_seeds,
                                                  **sampling))  # fmt: skip

    return selector.best_of(draw, class_selector, labels, list(seeds), select)


def generate(cfg: GenerateConfig) -> list[Path]:
    """Generate ``num_samples`` images of ``class_name``; write a grid PNG and one PNG per image.

    Everything is checked before sampling starts, and every file is written atomically.
    """
    _check(cfg)
    model_path = resolve_model_path(cfg.model_path)
    unet, schedule, record = checkpoint.load_diffusion(model_path)
    _check(cfg, schedule.num_timesteps)
    vae, _ = checkpoint.find_vae(model_path, record, cfg.vae_path)
    guide, link = checkpoint.find_guide(model_path, record, cfg.guide_path)
    guidance = checkpoint.resolve_guidance(cfg.guidance, link)
    check_class_guidance(cfg.class_guidance, guide, record)
    class_selector = load_selector(cfg.select, cfg.selector_path, cfg.vgg_weights)
    output = Path(cfg.output)
    checkpoint.check_writable(output)
    label = class_label(cfg.class_name)
    seeds = [cfg.seed + i for i in range(cfg.num_samples)]
    steps = schedule.num_timesteps if cfg.sampler == "ddpm" else cfg.steps
    images = sample_images(unet, schedule, vae, torch.full((cfg.num_samples,), label), seeds,
                           select=cfg.select, class_selector=class_selector,
                           sampler=cfg.sampler, steps=steps, guidance=guidance, eta=cfg.eta,
                           batch_size=cfg.batch_size, progress=cfg.progress, guide=guide,
                           class_guidance=cfg.class_guidance)  # fmt: skip
    paths = []
    for i, image in enumerate(images):
        path = output / f"{cfg.class_name}_{seeds[i]:04d}.png"
        viz.save_png(path, image)
        paths.append(path)
    grid = output / f"{cfg.class_name}_grid.png"
    viz.save_png(grid, viz.image_grid(images, nrow=min(10, len(images))), scale=2)
    return [grid, *paths]
