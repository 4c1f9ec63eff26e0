"""The diffusion training loop: a class-conditional UNet on cached, normalised VAE latents.

The training images and their mirror images (and, with ``crop_copies``, random crops of them and
their mirrors) are encoded once (posterior mean and log-variance) and cached in the run folder,
keyed by the VAE's content hash and the augmentation settings. Each step draws z from the
cached posterior (``latent_sampling: posterior``, a free augmentation) or uses its mean
(``mean``), normalises it with the statistics stored in the VAE checkpoint, and regresses the
schedule's target. An EMA of the weights is what gets saved for sampling. With representation
alignment (REPA, on by default), the VGG16 features of the same images are cached beside the
latents, and a projector trained with the UNet (never saved for sampling) aligns the UNet's
middle features with them.

Run folder (``save_dir``)::

    config.json, metrics.jsonl, loss_curves.png
    conditional_diffusion_final.pt      EMA UNet + schedule + VAE link, for generation
    diffusion_train_state.pt            everything --resume needs
    latents.pt                          the cached training latents (and VGG16 features)
    samples/epoch_NNNN.png              a grid of cats (top rows) and dogs (bottom rows)
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import augment, checkpoint, distributed, subclasses, viz
from .config import DiffusionTrainConfig, to_dict
from .data import (
    ImageSet,
    balanced_subset,
    check_held_out,
    load_split,
    random_resized_crops,
    to_float,
)
from .diffusion import NoiseSchedule, self_conditioned
from .ema import EMA
from .errors import CatdogError
from .generate import decode_latents, sample_latents
from .losses import alignment_loss, load_vgg16_features, vgg_feature_map
from .models.unet import FeatureProjector, UNet
from .runs import prepare_run, write_metrics
from .train_vae import encode_means, encode_training_set

FINAL, STATE, LATENTS = "conditional_diffusion_final.pt", "diffusion_train_state.pt", "latents.pt"
GUIDE = "guide.pt"  # the early EMA snapshot that autoguidance uses
SUBCLASS_OFF_HINT = "or train without sub-classes (--subclasses 1)"  # when VGG16 is missing
CURVE_KEYS = ["loss", "loss_repa", "train_x0_mse", "val_x0_mse", "latents_per_s"]


def _cache_key(cfg: DiffusionTrainConfig, latent_hash: str) -> dict[str, Any]:
    return {"vae_latent_sha256": latent_hash, "split": cfg.data.train_split,
            "data_dir": str(cfg.data.data_dir), "dataset": cfg.data.dataset,
            "crop_copies": cfg.crop_copies, "crop_min_scale": cfg.crop_min_scale,
            "seed": cfg.seed, "with_features": cfg.repa_weight > 0,
            "repa_layer": cfg.repa_layer if cfg.repa_weight > 0 or cfg.unet.subclasses > 1
                          else None,
            "subclasses": cfg.unet.subclasses if cfg.unet.subclasses > 1 else None}  # fmt: skip


def vgg_loader(cfg: DiffusionTrainConfig) -> Callable[[], torch.nn.Module]:
    """VGG16's features for representation alignment and sub-classes: loaded on the first call
    and only then, so a run that needs them for both the cache and the held-out sub-class labels
    loads them once, and a run whose cache is already written does not load them for it."""

    @functools.cache
    def load() -> torch.nn.Module:
        hint = ("turn representation alignment off with --repa-weight 0" if cfg.repa_weight > 0
                else SUBCLASS_OFF_HINT)  # fmt: skip
        vgg = load_vgg16_features(cfg.vgg_weights, off_hint=hint)
        if not 0 <= cfg.repa_layer < len(vgg):
            raise CatdogError(f"repa_layer must be in 0..{len(vgg) - 1} (a layer of "
                              f"vgg16().features), got {cfg.repa_layer}")  # fmt: skip
        return vgg

    return load


def load_or_cache_latents(
    cfg: DiffusionTrainConfig,
    vae: torch.nn.Module,
    latent_hash: str,
    *,
    write: bool = True,
    vgg: Callable[[], torch.nn.Module] | None = None,
) -> dict[str, torch.Tensor]:
    """The encoded training set: each image and its mirror, then ``crop_copies`` random crops of
    each (with their mirrors), cached in the run folder under a key of everything it depends on.
    With representation alignment on, the VGG16 features of the same images (fp16, rows as the
    latents') come with them as ``features``; with sub-classes, each row's sub-class label and
    the clusters' centroids. ``vgg`` is a ``vgg_loader`` to share with ``held_out_labels``."""
    path = Path(cfg.save_dir) / LATENTS
    key = _cache_key(cfg, latent_hash)
    if path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a cut or foreign file is a cache miss: encode again
            cached = {}
        if all(cached.get(k) == v for k, v in key.items()):
            return cached
    if cfg.crop_copies < 0 or not 0 < cfg.crop_min_scale <= 1:
        raise CatdogError("crop_copies must be >= 0 and crop_min_scale in (0, 1]")
    data = load_split(cfg.data, cfg.data.train_split)
    known = data.labels >= 0
    if not known.all():
        raise CatdogError("diffusion training needs labelled images (cat/dog), not 'unlabeled'")
    copies = [data.images]
    if cfg.crop_copies > 0:
        # Crop from twice the training resolution (STL-10's native 96 px for 48 px training).
        source = load_split(dataclasses.replace(cfg.data, image_size=2 * cfg.data.image_size),
                            cfg.data.train_split).images  # fmt: skip
        crop_rng = torch.Generator().manual_seed(cfg.seed + 2)
        copies += [
            random_resized_crops(source, cfg.data.image_size, cfg.crop_min_scale, crop_rng)
            for _ in range(cfg.crop_copies)
        ]
    encoded = [encode_training_set(vae, images) for images in copies]
    cached = {
        "mean": torch.cat([mean for mean, _ in encoded]),
        "logvar": torch.cat([logvar for _, logvar in encoded]),
        "labels": data.labels.repeat(2 * len(copies)),
        **key,
    }
    if cfg.repa_weight > 0 or cfg.unet.subclasses > 1:
        network = (vgg or vgg_loader(cfg))()
        features = torch.cat([mirrored_feature_maps(network, images, cfg.repa_layer)
                              for images in copies])  # fmt: skip
        if cfg.repa_weight > 0:
            cached["features"] = features
        if cfg.unet.subclasses > 1:  # clusters of the originals, each copy assigned to one
            pooled = subclasses.mirror_pooled(features, len(data.images))
            split = subclasses.fit(pooled[: len(data.images)], data.labels, cfg.unet.subclasses,
                                   cfg.seed, cfg.unet.num_classes)  # fmt: skip
            fine = split.assign(pooled, data.labels.repeat(len(copies)))
            cached["subclass_labels"] = fine.view(len(copies), 1, -1).expand(-1, 2, -1).flatten()
            cached["subclass_centroids"] = split.centroids
    if write:
        checkpoint.atomic_write(path, lambda f: torch.save(cached, f))
    return cached


@torch.no_grad()
def mirrored_feature_maps(vgg: torch.nn.Module, images: torch.Tensor, layer: int) -> torch.Tensor:
    """Layer ``layer`` of ``vgg16().features`` (fp16) for uint8 ``images``, then for their mirror
    images: rows laid out as ``encode_training_set``'s."""
    return torch.cat([
        vgg_feature_map(vgg, x.flip(-1) if flip else x, layer).half()
        for flip in (False, True) for x in (to_float(chunk) for chunk in images.split(128))
    ])  # fmt: skip


def held_out_labels(
    cfg: DiffusionTrainConfig,
    latents: dict[str, torch.Tensor],
    held_out: ImageSet,
    vgg: Callable[[], torch.nn.Module] | None = None,
) -> torch.Tensor:
    """The labels the UNet embeds for held-out images: their classes, or with sub-classes each
    image's nearest cluster of its class (its VGG16 features and its mirror's, as in training)."""
    if cfg.unet.subclasses == 1:
        return held_out.labels
    maps = mirrored_feature_maps((vgg or vgg_loader(cfg))(), held_out.images, cfg.repa_layer)
    split = subclasses.Subclasses(latents["subclass_centroids"])
    return split.assign(subclasses.mirror_pooled(maps, len(held_out.images)), held_out.labels)


def predict_x0(
    unet: torch.nn.Module,
    schedule: NoiseSchedule,
    noisy: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor,
    self_cond: torch.Tensor | None = None,
    augment_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """The clean latent as ``unet`` predicts it from ``noisy`` in one pass (given ``self_cond``,
    the previous estimate, if it is self-conditioned, and the augmentation labels if any)."""
    kwargs = {} if self_cond is None else {"self_cond": self_cond.to(noisy.dtype)}
    if augment_labels is not None:
        kwargs["augment_labels"] = augment_labels
    return schedule.predict_x0_eps(unet(noisy, t, labels, **kwargs).float(), noisy, t)[0]


@torch.no_grad()
def denoising_error(
    model: torch.nn.Module,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    labels: torch.Tensor,
    *,
    seed: int = 0,
    timesteps: tuple[int, ...] = (100, 250, 500, 750),
    batch_size: int = 256,
) -> float:
    """Mean squared error of the predicted clean latent over fixed noise and noise levels
    (fractions of T): a loss that does not depend on the objective, to compare the training
    latents with held-out ones (the gap is overfitting) and runs with each other."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for t in timesteps:
        t = max(1, round(t * schedule.num_timesteps / 1000))
        for x, y in zip(x0.split(batch_size), labels.split(batch_size), strict=True):
            x, y = x.to(device), y.to(device)
            noise = torch.randn(x.shape, generator=generator).to(device)
            tt = torch.full((len(x),), t, device=device, dtype=torch.long)
            noisy = schedule.add_noise(x, noise, tt)
            predicted = predict_x0(model, schedule, noisy, tt, y)
            if self_conditioned(model):  # a second pass given the first estimate, as in training
                predicted = predict_x0(model, schedule, noisy, tt, y, self_cond=predicted)
            total += float((predicted - x).pow(2).sum())
            count += x.numel()
    return total / count


@torch.no_grad()
def sample_grid(
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    schedule: NoiseSchedule,
    *,
    per_class: int = 8,
    steps: int = 25,
    guidance: float = 2.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Images (2 * per_class, 3, H, W): ``per_class`` cats, then as many dogs (sampled on
    ``device``, decoded on the CPU)."""
    labels = torch.arange(2).repeat_interleave(per_class)
    seeds = [seed + i for i in range(len(labels))]
    steps = min(steps, schedule.num_timesteps)
    z = sample_latents(
        unet, schedule, labels, seeds, sampler="ddim", steps=steps, guidance=guidance,
        device=device,
    )  # fmt: skip
    return decode_latents(vae, z)


@torch.no_grad()
def self_condition_inputs(
    unet: UNet,
    schedule: NoiseSchedule,
    noisy: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor,
    estimated: torch.Tensor,
    rt: distributed.Runtime,
    augment_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Self-conditioning's training input (Chen et al. 2023): for the samples in ``estimated``,
    the network's own clean-latent estimate from a first pass without one (no gradient), and
    zeros for the rest, so the network learns both the first sampling step and the later ones.
    The first pass runs on the bare UNet, outside data-parallel synchronisation."""
    self_cond = torch.zeros_like(noisy)
    if estimated.any():
        with rt.autocast():
            aug = None if augment_labels is None else augment_labels[estimated]
            x0 = predict_x0(unet, schedule, noisy[estimated], t[estimated], labels[estimated],
                            augment_labels=aug)  # fmt: skip
        self_cond[estimated] = x0
    return self_cond


class Denoiser(torch.nn.Module):
    """The UNet and, with representation alignment, its projector: one module, so that
    data-parallel training sees every trained parameter take part in each step."""

    def __init__(self, unet: UNet, projector: FeatureProjector | None) -> None:
        super().__init__()
        self.unet = unet
        self.projector = projector

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        labels: torch.Tensor,
        self_cond: torch.Tensor | None = None,
        augment_labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        kwargs = {"self_cond": self_cond, "augment_labels": augment_labels}
        if self.projector is None:
            return self.unet(x, t, labels, **kwargs), None
        prediction, features = self.unet(x, t, labels, return_features=True, **kwargs)
        return prediction, self.projector(features)


def train(
    cfg: DiffusionTrainConfig, *, resume: bool = False, given: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Train (or, with ``resume``, continue) a diffusion run; returns the last epoch's record.

    Runs as one process, or as one rank of a ``torchrun`` job (see ``catdog.distributed``).
    ``given``: the settings the command line set, for ``runs.prepare_run`` on resume."""
    with distributed.running(cfg.runtime, cfg.batch_size) as rt:
        return train_on(rt, cfg, resume, given)[0]


def learning_rate(
    cfg: DiffusionTrainConfig, base_lr: float, step: int, epochs_done: float
) -> float:
    """The rate for optimiser step ``step`` (0-based), taken ``epochs_done`` (fractional) epochs
    into the run: linear warm-up over ``lr_warmup_steps``, then constant, then over the last
    ``cooldown_epochs`` a linear fall towards 0 (warmup-stable-decay). The last step of the run
    still has a positive rate."""
    lr = base_lr * min(1.0, (step + 1) / cfg.lr_warmup_steps)
    cooldown_start = cfg.epochs - cfg.cooldown_epochs
    if cfg.cooldown_epochs > 0 and epochs_done >= cooldown_start:
        lr *= 1.0 - (epochs_done - cooldown_start) / cfg.cooldown_epochs
    return lr


def train_on(
    rt: distributed.Runtime,
    cfg: DiffusionTrainConfig,
    resume: bool = False,
    given: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], torch.nn.Module]:
    """``train`` on a given runtime; also returns this rank's trained UNet (live, not EMA)."""
    cfg, state = rt.from_main(
        lambda: prepare_run(
            cfg,
            resume=resume,
            state_name=STATE,
            final_name=FINAL,
            state_kind=checkpoint.KIND_DIFFUSION_TRAIN_STATE,
            what="diffusion",
            given=given,
        )
    )
    # setup checked the batch given now; a resumed run trains with its saved one
    distributed.check_batch(cfg.batch_size, rt.world_size, cfg.runtime.grad_accum)
    check_held_out(cfg.data.train_split, cfg.data.val_split)
    if cfg.latent_sampling not in ("posterior", "mean"):
        raise CatdogError(f"latent_sampling must be posterior or mean, not {cfg.latent_sampling!r}")
    if cfg.repa_weight < 0:
        raise CatdogError(f"repa weight must be >= 0, got {cfg.repa_weight}")
    if cfg.unet.subclasses < 1:
        raise CatdogError(f"subclasses must be >= 1 (1 = none), got {cfg.unet.subclasses}")
    if cfg.repa_hidden < 1:
        raise CatdogError(f"repa hidden width must be >= 1, got {cfg.repa_hidden}")
    if not 0 <= cfg.augment_prob <= 1:
        raise CatdogError(f"augment probability must be in [0, 1], got {cfg.augment_prob}")
    for name, value in (("class dropout", cfg.unet.class_dropout), ("dropout", cfg.unet.dropout)):
        if not 0 <= value < 1:
            raise CatdogError(f"{name} must be in [0, 1), got {value}")
    if not 0 <= cfg.cooldown_epochs <= cfg.epochs:
        raise CatdogError(f"cooldown epochs must be in 0..{cfg.epochs} (the run's epochs), "
                          f"got {cfg.cooldown_epochs}")  # fmt: skip
    save_dir = Path(cfg.save_dir)
    vae, vae_record = checkpoint.load_vae(cfg.vae_path)
    if not bool(vae.has_latent_stats):
        raise CatdogError(f"VAE {cfg.vae_path} has no latent statistics (an unfinished run?)")
    if state is not None and not checkpoint.fits_link(vae, vae_record, state["vae"]):
        raise CatdogError(f"VAE {cfg.vae_path} is not the one this diffusion run was trained on")
    vae_link = checkpoint.vae_link(vae, str(Path(cfg.vae_path).resolve()))
    if state is None:  # a new UNet takes its VAE's latent shape; a resumed one keeps its own
        cfg.unet.latent_channels, cfg.unet.latent_size = vae.cfg.latent_shape[:2]
        cfg.unet.augment_dim = augment.LABEL_DIM if cfg.augment_prob > 0 else 0
    if (vae.cfg.latent_channels, vae.cfg.latent_size) != (
        cfg.unet.latent_channels,
        cfg.unet.latent_size,
    ):
        raise CatdogError(
            f"UNet latent {cfg.unet.latent_channels}x{cfg.unet.latent_size} does not match the "
            f"VAE's {vae.cfg.latent_shape}"
        )
    if cfg.data.image_size != vae.cfg.image_size:
        cfg.data.image_size = vae.cfg.image_size  # the data follows the VAE

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    data_rng = torch.Generator().manual_seed(cfg.seed + 1)  # shared by all ranks, see above
    vgg = vgg_loader(cfg)
    latents = load_or_cache_latents(cfg, vae, vae_link["latent_sha256"], write=rt.is_main, vgg=vgg)
    n = len(latents["labels"])
    originals = n // (2 + 2 * cfg.crop_copies)  # the first rows: unflipped, uncropped
    schedule = NoiseSchedule(cfg.schedule)
    unet = UNet(cfg.unet)
    train_labels = latents["labels"]  # what the UNet embeds: classes, or sub-classes
    if cfg.unet.subclasses > 1:  # sampling draws them as often as the photos fall in each
        train_labels = latents["subclass_labels"]
        unet.class_embedder.subclass_prior.copy_(subclasses.frequencies(
            train_labels[: 2 * originals], cfg.unet.num_classes, cfg.unet.subclasses))  # fmt: skip
    projector = None
    if cfg.repa_weight > 0:
        projector = FeatureProjector(
            cfg.unet.channels[-1], latents["features"].shape[1], cfg.repa_hidden
        )
    denoiser = Denoiser(unet, projector)
    ema = EMA(unet, cfg.ema_decay)
    base_lr = distributed.effective_lr(cfg.runtime, cfg.lr, cfg.batch_size)
    opt = torch.optim.AdamW(denoiser.parameters(), lr=base_lr, weight_decay=0.0)
    start_epoch, step, history, guide_link = 0, 0, [], None
    if state is not None:
        unet.load_state_dict(state["unet"])
        if projector is not None:  # the saved config, so the saved state, has REPA on
            projector.load_state_dict(state["projector"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        start_epoch, step, history = state["epoch"], state["step"], state["history"]
        guide_link = state.get("guide")
        torch.set_rng_state(state["rng"])
        data_rng.set_state(state["data_rng"])
    device = rt.device
    denoiser.to(device)
    ema.model.to(device)
    distributed.optimizer_to(opt, device)  # a resumed optimiser's moments follow the weights
    model = rt.wrap(denoiser)
    if rt.is_main:
        checkpoint.atomic_write_json(save_dir / "config.json", to_dict(cfg))

    def save_state(epoch: int) -> None:
        checkpoint.save(save_dir / STATE, checkpoint.KIND_DIFFUSION_TRAIN_STATE, {
            "train_config": to_dict(cfg), "unet": unet.state_dict(),
            "projector": projector.state_dict() if projector is not None else None,
            "ema": ema.state_dict(), "opt": opt.state_dict(), "epoch": epoch,
            "step": step, "history": history, "rng": torch.get_rng_state(),
            "data_rng": data_rng.get_state(), "vae": vae_link, "guide": guide_link,
        })  # fmt: skip

    def save_final(epoch: int, record: dict) -> None:
        extra = {"guide": guide_link} if guide_link else {}
        checkpoint.save(save_dir / FINAL, checkpoint.KIND_DIFFUSION, checkpoint.diffusion_payload(
            ema.model, to_dict(cfg.schedule), vae_link, to_dict(cfg), epoch=epoch, metrics=record,
            **extra,
        ))  # fmt: skip

    def save_guide(epoch: int) -> dict[str, Any]:
        path = save_dir / GUIDE
        checkpoint.save(path, checkpoint.KIND_DIFFUSION, checkpoint.diffusion_payload(
            ema.model, to_dict(cfg.schedule), vae_link, to_dict(cfg), epoch=epoch, step=step,
        ))  # fmt: skip
        digest = checkpoint.content_hash(ema.model.state_dict())
        return {"path": str(path.resolve()), "sha256": digest, "step": step,
                "guidance": cfg.guide_guidance}  # fmt: skip

    tracked: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if rt.is_main:  # held-out latents (posterior means) and as many training ones, normalised
        val = balanced_subset(load_split(cfg.data, cfg.data.val_split), cfg.data.val_limit)
        pick_rng = torch.Generator().manual_seed(cfg.seed)
        pick = torch.randperm(originals, generator=pick_rng)[: len(val)]
        tracked = {
            "val": (vae.normalize_latent(encode_means(vae, val.images)),
                    held_out_labels(cfg, latents, val, vgg)),
            "train": (vae.normalize_latent(latents["mean"][pick]), train_labels[pick]),
        }  # fmt: skip
    del vgg  # its last use: the loaded VGG16 (59 MB) is not kept through the training loop
    accum = cfg.runtime.grad_accum
    drop_last = rt.world_size * accum > 1  # every rank and micro-step gets an equal share
    started = time.monotonic()
    record: dict[str, Any] = history[-1] if history else {}
    unet.train()
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        epoch_start, loss_sum, repa_sum, seen, repa_seen = time.monotonic(), 0.0, 0.0, 0, 0
        batches = distributed.epoch_batches(n, cfg.batch_size, data_rng, drop_last=drop_last)
        for i, index in enumerate(tqdm(batches, desc=f"epoch {epoch}/{cfg.epochs}", leave=False,
                                       disable=not (cfg.progress and rt.is_main))):  # fmt: skip
            lr = learning_rate(cfg, base_lr, step, epoch - 1 + i / len(batches))
            for group in opt.param_groups:
                group["lr"] = lr
            # Per-sample randomness for the whole global batch, from the shared stream.
            mean, labels = latents["mean"][index], train_labels[index]
            if cfg.latent_sampling == "posterior":
                std = (0.5 * latents["logvar"][index]).exp()
                mean = mean + std * torch.randn(mean.shape, generator=data_rng)
            noise = torch.randn(mean.shape, generator=data_rng)
            t = torch.randint(1, schedule.num_timesteps + 1, (len(index),), generator=data_rng)
            labels = unet.drop_labels(labels, data_rng)  # null label, for guidance
            estimated = None  # which samples get a self-conditioning estimate (half of them)
            if cfg.unet.self_condition:
                estimated = torch.rand(len(index), generator=data_rng) < 0.5
            transforms = None  # non-leaking augmentation: each sample's transform, if any
            if cfg.augment_prob > 0:
                transforms = augment.draw(len(index), cfg.augment_prob, data_rng)
            slices = rt.local_slices(len(index), accum)
            opt.zero_grad(set_to_none=True)
            for k, part in enumerate(slices):
                x0, aug, kept = vae.normalize_latent(mean[part]), None, None
                if transforms is not None:
                    moves = transforms[part]
                    x0, aug = augment.apply(x0, moves), augment.labels(moves).to(device)
                    kept = (~moves.any(1)).to(device)  # untransformed: REPA's targets fit them
                x0 = x0.to(device)
                eps, tt, yy = noise[part].to(device), t[part].to(device), labels[part].to(device)
                noisy = schedule.add_noise(x0, eps, tt)
                self_cond = None
                if estimated is not None:
                    self_cond = self_condition_inputs(
                        unet, schedule, noisy, tt, yy, estimated[part].to(device), rt, aug
                    )
                with rt.no_sync(model, k == len(slices) - 1), rt.autocast():
                    prediction, projected = model(noisy, tt, yy, self_cond, aug)
                per_sample = F.mse_loss(prediction.float(), schedule.target(x0, eps, tt),
                                        reduction="none")  # fmt: skip
                loss = (schedule.loss_weight(tt) * per_sample.flatten(1).mean(1)).mean()
                total = loss
                if projected is not None:
                    target = latents["features"][index[part]].to(device)
                    repa = alignment_loss(projected, target, kept)
                    total = loss + cfg.repa_weight * repa
                    aligned = len(eps) if kept is None else int(kept.sum())
                    repa_sum += repa.item() * aligned
                    repa_seen += aligned
                with rt.no_sync(model, k == len(slices) - 1):
                    (total / len(slices)).backward()
                loss_sum += loss.item() * len(eps)
                seen += len(eps)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(denoiser.parameters(), cfg.grad_clip)
            opt.step()
            ema.update(unet)
            step += 1
            if step == cfg.guide_step and rt.is_main:
                guide_link = save_guide(epoch)
        totals = rt.sum(torch.tensor([loss_sum, repa_sum, float(seen), float(repa_seen)],
                                     dtype=torch.float64))  # fmt: skip
        elapsed = time.monotonic() - epoch_start
        record = {"epoch": epoch, "step": step, "lr": lr, "loss": float(totals[0] / totals[2]),
                  "latents_per_s": float(totals[2]) / elapsed,
                  "epoch_seconds": elapsed}  # fmt: skip
        if projector is not None:
            record["loss_repa"] = float(totals[1] / totals[3].clamp(min=1))
        history.append(record)
        time_up = rt.agree(
            cfg.max_minutes is not None and (time.monotonic() - started) > 60 * cfg.max_minutes
        )
        stopping = time_up or (cfg.stop_at_epoch is not None and epoch >= cfg.stop_at_epoch)
        last = epoch == cfg.epochs
        checkpointing = epoch % cfg.checkpoint_every == 0 or last or stopping
        if rt.is_main:
            if checkpointing:
                for name, (x0, labels) in tracked.items():
                    record[f"{name}_x0_mse"] = denoising_error(ema.model, schedule, x0, labels,
                                                               seed=cfg.seed)  # fmt: skip
            if epoch % cfg.sample_every == 0 or last or stopping:
                images = sample_grid(ema.model, vae, schedule, seed=cfg.seed, device=device)
                viz.save_png(save_dir / "samples" / f"epoch_{epoch:04d}.png",
                             viz.image_grid(images, nrow=8), scale=2)  # fmt: skip
            write_metrics(save_dir, history, CURVE_KEYS, curves=checkpointing)
            if checkpointing:
                save_final(epoch, record)  # usable weights at every checkpoint, not only the end
                save_state(epoch)
            if cfg.progress and (epoch % 10 == 0 or last or stopping):
                tqdm.write(
                    f"epoch {epoch}: loss {record['loss']:.4f}, "
                    f"{record['latents_per_s']:.0f} latents/s"
                )
        rt.barrier()
        if stopping and not last:
            if cfg.progress and rt.is_main:
                tqdm.write(f"stopped after epoch {epoch}; continue with --resume")
            break
    return record, unet
