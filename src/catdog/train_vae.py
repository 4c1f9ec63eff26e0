"""The VAE training loop (reconstruction, KL, VGG perceptual, hinge adversarial, latent classifier
and center losses on a progressive schedule), with held-out tracking, pictures and exact resume.

Run folder (``save_dir``)::

    config.json            resolved config of the run
    metrics.jsonl          one record per epoch (losses, weights, lr, PSNR, probe accuracy, speed)
    loss_curves.png        plotted from metrics.jsonl
    vae_gan_best.pt        best held-out PSNR so far, with latent statistics
    vae_gan_final.pt       after the last epoch, with latent statistics
    vae_train_state.pt     everything --resume needs (models, optimisers, schedule, RNG)
    reconstructions/epoch_NNNN.png, tsne/epoch_NNNN.png
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import checkpoint, viz
from .config import VAETrainConfig, to_dict
from .data import ImageSet, augment, balanced_subset, load_split, to_float
from .errors import CatdogError
from .losses import (
    PerceptualLoss,
    center_loss,
    classifier_loss,
    hinge_d_loss,
    hinge_g_loss,
    kl_divergence,
    load_vgg16_features,
)
from .metrics import linear_probe_accuracy, psnr
from .models.discriminator import PatchDiscriminator
from .models.vae import VAE
from .runs import prepare_run, write_metrics

BEST, FINAL, STATE = "vae_gan_best.pt", "vae_gan_final.pt", "vae_train_state.pt"
VGG_CACHE_MAX_BYTES = 4 * 2**30  # cache target features only while they fit comfortably in RAM
CURVE_KEYS = ["loss_total", "loss_rec", "loss_kl", "loss_vgg", "loss_adv", "loss_disc", "loss_cls",
              "loss_center", "val_psnr", "probe_acc"]  # fmt: skip


def lr_at(cfg: VAETrainConfig, step: int, total_steps: int, base_lr: float) -> float:
    """Linear warm-up, then constant or cosine decay to 10% of ``base_lr``."""
    if step < cfg.lr_warmup_steps:
        return base_lr * (step + 1) / cfg.lr_warmup_steps
    if cfg.lr_schedule == "constant":
        return base_lr
    progress = min(1.0, (step - cfg.lr_warmup_steps) / max(1, total_steps - cfg.lr_warmup_steps))
    return base_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def encode_means(vae: VAE, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Posterior means (N, C, h, w) of uint8 images, in batches."""
    return torch.cat([vae.encode(to_float(chunk))[0] for chunk in images.split(batch_size)])


@torch.no_grad()
def evaluate(vae: VAE, train: ImageSet, val: ImageSet, seed: int) -> tuple[dict[str, float], Any]:
    """Held-out PSNR (decoding posterior means), linear-probe accuracy, and training-set means."""
    was_training = vae.training
    vae.eval()
    train_means = encode_means(vae, train.images)
    val_means = encode_means(vae, val.images)
    recon = torch.cat([vae.decode(m) for m in val_means.split(256)])
    result = {
        "val_psnr": psnr(recon, to_float(val.images)).mean().item(),
        "probe_acc": linear_probe_accuracy(train_means, train.labels, val_means, val.labels, seed),
    }
    vae.train(was_training)
    return result, (train_means, val_means, recon)


def _cache_vgg_targets(perceptual: PerceptualLoss, images: torch.Tensor) -> list[torch.Tensor]:
    """fp16 features of every training image and its mirror image: rows [0, N) unflipped,
    [N, 2N) flipped. Valid while augmentation is only a horizontal flip."""
    chunks: list[list[torch.Tensor]] = []
    with torch.no_grad():
        for flip in (False, True):
            for chunk in tqdm(images.split(128), desc="caching VGG targets", leave=False):
                x = to_float(chunk)
                feats = perceptual.features(x.flip(-1) if flip else x)
                chunks.append([f.half() for f in feats])
    return [torch.cat(layer) for layer in zip(*chunks, strict=True)]


def train(cfg: VAETrainConfig, *, resume: bool = False) -> dict[str, Any]:
    """Train (or, with ``resume``, continue) a VAE run; returns the last epoch's record."""
    cfg, state = prepare_run(
        cfg,
        resume=resume,
        state_name=STATE,
        final_name=FINAL,
        state_kind=checkpoint.KIND_VAE_TRAIN_STATE,
        what="VAE",
    )
    save_dir = Path(cfg.save_dir)
    if cfg.model.image_size != cfg.data.image_size:
        raise CatdogError(
            f"model image_size {cfg.model.image_size} != data image_size {cfg.data.image_size}"
        )
    torch.manual_seed(cfg.seed)
    data_rng = torch.Generator().manual_seed(cfg.seed + 1)

    train_set = load_split(cfg.data, cfg.data.train_split)
    val_set = balanced_subset(load_split(cfg.data, cfg.data.val_split), cfg.data.val_limit)
    if (val_set.labels < 0).any():
        raise CatdogError("the held-out split must be labelled (cat/dog), not 'unlabeled'")

    vae = VAE(cfg.model)
    losses = cfg.losses
    disc = PatchDiscriminator(cfg.disc) if losses.ever_on("adv") else None
    betas = (0.5, 0.9)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, betas=betas, weight_decay=0.0)
    disc_opt = (
        torch.optim.AdamW(disc.parameters(), lr=cfg.disc_lr, betas=betas, weight_decay=0.0)
        if disc is not None
        else None
    )
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    vae.to(memory_format=memory_format)
    if disc is not None:
        disc.to(memory_format=memory_format)
    perceptual = None
    vgg_cache: list[torch.Tensor] | None = None
    if losses.ever_on("vgg"):
        perceptual = PerceptualLoss(load_vgg16_features(cfg.vgg_weights))
        perceptual.to(memory_format=memory_format)
        per_image = sum(
            c * (cfg.data.image_size // s) ** 2 for c, s in ((64, 1), (128, 2), (256, 4))
        )
        cache_bytes = 2 * len(train_set) * per_image * 2
        if (
            cfg.cache_vgg_targets
            and cfg.data.color_jitter == 0
            and cache_bytes < VGG_CACHE_MAX_BYTES
        ):
            vgg_cache = _cache_vgg_targets(perceptual, train_set.images)

    start_epoch, step, history, best_psnr = 0, 0, [], -math.inf
    if state is not None:
        vae.load_state_dict(state["vae"])
        opt.load_state_dict(state["opt"])
        if disc is not None:
            disc.load_state_dict(state["disc"])
            disc_opt.load_state_dict(state["disc_opt"])
        start_epoch, step = state["epoch"], state["step"]
        history, best_psnr = state["history"], state["best_psnr"]
        torch.set_rng_state(state["rng"])
        data_rng.set_state(state["data_rng"])
    checkpoint.atomic_write_json(save_dir / "config.json", to_dict(cfg))

    n = len(train_set)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    started = time.monotonic()
    record: dict[str, Any] = history[-1] if history else {}

    def save_state(epoch: int) -> None:
        checkpoint.save(
            save_dir / STATE,
            checkpoint.KIND_VAE_TRAIN_STATE,
            {
                "train_config": to_dict(cfg),
                "vae": vae.state_dict(),
                "opt": opt.state_dict(),
                "disc": disc.state_dict() if disc is not None else None,
                "disc_opt": disc_opt.state_dict() if disc_opt is not None else None,
                "epoch": epoch,
                "step": step,
                "history": history,
                "best_psnr": best_psnr,
                "rng": torch.get_rng_state(),
                "data_rng": data_rng.get_state(),
            },
        )

    vae.train()
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        epoch_start = time.monotonic()
        sums: dict[str, float] = {}
        perm = torch.randperm(n, generator=data_rng)
        bar = tqdm(
            perm.split(cfg.batch_size),
            desc=f"epoch {epoch}/{cfg.epochs}",
            leave=False,
            disable=not cfg.progress,
        )
        for i, index in enumerate(bar):
            weights = losses.weights_at(epoch - 1 + i / steps_per_epoch)
            lr = lr_at(cfg, step, total_steps, cfg.lr)
            for group in opt.param_groups:
                group["lr"] = lr
            x, flipped = augment(
                to_float(train_set.images[index]),
                data_rng,
                hflip=cfg.data.hflip,
                color_jitter=cfg.data.color_jitter,
            )
            x = x.contiguous(memory_format=memory_format)
            labels = train_set.labels[index]
            recon, mean, logvar = vae(x)
            terms = {"rec": F.l1_loss(recon, x)}
            if weights["kl"] > 0:
                terms["kl"] = kl_divergence(mean, logvar)
            if weights["vgg"] > 0 and perceptual is not None:
                if vgg_cache is not None:
                    rows = index + n * flipped.long()
                    targets = [layer[rows] for layer in vgg_cache]
                else:
                    with torch.no_grad():
                        targets = perceptual.features(x)
                terms["vgg"] = perceptual(recon, targets)
            flat_mean = mean.flatten(1)
            if weights["cls"] > 0:
                terms["cls"] = classifier_loss(vae.classifier(flat_mean), labels)
            if weights["center"] > 0:
                terms["center"] = center_loss(flat_mean, labels, vae.class_centers)
            if weights["adv"] > 0 and disc is not None:
                terms["adv"] = hinge_g_loss(disc(recon))
            total = terms["rec"] + sum(weights[k] * v for k, v in terms.items() if k != "rec")
            opt.zero_grad(set_to_none=True)
            total.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(vae.parameters(), cfg.grad_clip)
            opt.step()

            if weights["adv"] > 0 and disc is not None:
                for group in disc_opt.param_groups:
                    group["lr"] = lr_at(cfg, step, total_steps, cfg.disc_lr)
                terms["disc"] = hinge_d_loss(disc(x), disc(recon.detach()))
                disc_opt.zero_grad(set_to_none=True)
                terms["disc"].backward()
                disc_opt.step()

            terms["total"] = total
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + value.item() * len(index)
            step += 1
            bar.set_postfix(loss=f"{total.item():.4f}", rec=f"{terms['rec'].item():.4f}")

        elapsed = time.monotonic() - epoch_start
        record = {
            "epoch": epoch,
            "step": step,
            "lr": lr,
            **{f"loss_{k}": v / n for k, v in sums.items()},
            **{f"w_{k}": v for k, v in losses.weights_at(epoch).items()},
            "images_per_s": n / elapsed,
            "epoch_seconds": elapsed,
        }
        time_up = (
            cfg.max_minutes is not None and (time.monotonic() - started) > 60 * cfg.max_minutes
        )
        stopping = time_up or (cfg.stop_at_epoch is not None and epoch >= cfg.stop_at_epoch)
        last = epoch == cfg.epochs
        if epoch % cfg.eval_every == 0 or last or stopping:
            scores, (train_means, val_means, recon) = evaluate(vae, train_set, val_set, cfg.seed)
            record.update(scores)
            vae.set_latent_stats(train_means)
            if scores["val_psnr"] > best_psnr:
                best_psnr = scores["val_psnr"]
                checkpoint.save(
                    save_dir / BEST,
                    checkpoint.KIND_VAE,
                    checkpoint.vae_payload(vae, to_dict(cfg), epoch=epoch, metrics=record),
                )
            if epoch % cfg.viz_every == 0 or last or stopping:
                _save_pictures(save_dir, epoch, val_set, val_means, recon, cfg.seed)
        history.append(record)
        write_metrics(save_dir, history, CURVE_KEYS)
        summary = ", ".join(
            f"{k} {record[k]:.4g}"
            for k in ("loss_total", "loss_rec", "val_psnr", "probe_acc", "images_per_s")
            if k in record
        )
        if cfg.progress:
            tqdm.write(f"epoch {epoch}: {summary}")
        if last:
            checkpoint.save(
                save_dir / FINAL,
                checkpoint.KIND_VAE,
                checkpoint.vae_payload(vae, to_dict(cfg), epoch=epoch, metrics=record),
            )
        if epoch % cfg.checkpoint_every == 0 or last or stopping:
            save_state(epoch)
        if stopping and not last:
            if cfg.progress:
                tqdm.write(f"stopped after epoch {epoch}; continue with --resume")
            break
    return record


def _save_pictures(
    save_dir: Path,
    epoch: int,
    val: ImageSet,
    val_means: torch.Tensor,
    recon: torch.Tensor,
    seed: int,
) -> None:
    """Reconstruction grid (4 cats and 4 dogs when available) and t-SNE of held-out means."""
    index = torch.cat([torch.nonzero(val.labels == c).flatten()[:4] for c in (0, 1)])
    viz.save_reconstruction_grid(
        save_dir / "reconstructions" / f"epoch_{epoch:04d}.png",
        to_float(val.images[index]),
        recon[index],
    )
    viz.save_tsne(
        save_dir / "tsne" / f"epoch_{epoch:04d}.png",
        val_means,
        val.labels,
        seed=seed,
        title=f"t-SNE of held-out latent means (epoch {epoch})",
    )
