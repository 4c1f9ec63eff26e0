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

A run stopped early (``--stop-at-epoch``, ``--max-minutes``) is also evaluated at the epoch it
stops at, so that it always leaves a ``vae_gan_best.pt`` to train diffusion on. That epoch is a
candidate for the best checkpoint, so a stopped-and-resumed run can keep a different best file
than the same run uninterrupted (which evaluates every ``eval_every`` epochs only); its final
weights and training are identical.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import checkpoint, distributed, viz
from .config import VAETrainConfig, to_dict
from .data import ImageSet, augment, balanced_subset, check_held_out, load_split, to_float
from .errors import CatdogError
from .losses import (
    PerceptualLoss,
    center_loss,
    classifier_loss,
    hinge_d_loss,
    hinge_g_loss,
    kl_divergence,
    load_vgg16_features,
    vf_loss,
    vgg_feature_map,
)
from .metrics import linear_probe_accuracy, psnr
from .models.discriminator import PatchDiscriminator
from .models.vae import VAE
from .runs import prepare_run, write_metrics

BEST, FINAL, STATE = "vae_gan_best.pt", "vae_gan_final.pt", "vae_train_state.pt"
EQUIV_FACTOR = 2  # the equiv term compares decode(pool(z)) with pool(x) at 1/2 the side
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
    """Posterior means (N, C, h, w) of uint8 images, in batches, on the CPU."""
    device = next(vae.parameters()).device
    return torch.cat(
        [vae.encode(to_float(chunk).to(device))[0].cpu() for chunk in images.split(batch_size)]
    )


@torch.no_grad()
def encode_training_set(vae: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Posterior (mean, logvar) of every image and of its mirror image: rows [0, N) as given,
    [N, 2N) flipped. Encoded on the VAE's device, returned on the CPU."""
    device = next(vae.parameters()).device
    means, logvars = [], []
    for flip in (False, True):
        for chunk in images.split(256):
            x = to_float(chunk).to(device)
            mean, logvar = vae.encode(x.flip(-1) if flip else x)
            means.append(mean.cpu())
            logvars.append(logvar.cpu())
    return torch.cat(means), torch.cat(logvars)


@torch.no_grad()
def evaluate(vae: VAE, train: ImageSet, val: ImageSet, seed: int) -> tuple[dict[str, float], Any]:
    """Held-out PSNR (decoding posterior means), linear-probe accuracy (fitted on the labelled
    training images; absent without both classes), and training-set means."""
    was_training = vae.training
    vae.eval()
    train_means = encode_means(vae, train.images)
    val_means = encode_means(vae, val.images)
    device = next(vae.parameters()).device
    recon = torch.cat([vae.decode(m.to(device)).cpu() for m in val_means.split(256)])
    result = {"val_psnr": psnr(recon, to_float(val.images)).mean().item()}
    known = train.labels >= 0  # STL-10's unlabelled images have no class to probe
    if len(train.labels[known].unique()) > 1:
        result["probe_acc"] = linear_probe_accuracy(
            train_means[known], train.labels[known], val_means, val.labels, seed
        )
    vae.train(was_training)
    return result, (train_means, val_means, recon)


class LatentProjector(torch.nn.Module):
    """The align term's training-only head: a 1x1 convolution from the posterior mean to the
    feature channels, average-pooled to the features' spatial size. It is not part of the VAE
    checkpoint (only of the train state), so aligned and plain VAEs load the same way."""

    def __init__(self, latent_channels: int, channels: int, size: int) -> None:
        super().__init__()
        self.proj = torch.nn.Conv2d(latent_channels, channels, 1)
        self.size = size

    def forward(self, mean: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.proj(mean), self.size)


class GeneratorTerms(torch.nn.Module):
    """Every VAE output the generator losses use, from one forward, so that DDP sees each VAE
    parameter (classifier, class centers and the align projector included) take part in every
    step. With ``equivariance``, it also decodes the posterior sample downsampled by
    ``EQUIV_FACTOR`` (the equiv term's input)."""

    def __init__(
        self, vae: VAE, projector: LatentProjector | None = None, equivariance: bool = False
    ) -> None:
        super().__init__()
        self.vae = vae
        self.projector = projector
        self.equivariance = equivariance

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor, eps: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        mean, logvar = self.vae.encode(x)
        z = self.vae.sample_posterior(mean, logvar, eps=eps)
        recon = self.vae.decode(z)
        flat_mean = mean.flatten(1)
        logits = self.vae.classifier(flat_mean)
        center = center_loss(flat_mean, labels, self.vae.class_centers)
        projected = self.projector(mean) if self.projector is not None else None
        small = self.vae.decode(F.avg_pool2d(z, EQUIV_FACTOR)) if self.equivariance else None
        return recon, mean, logvar, logits, center, projected, small


def _cache_vgg_targets(
    features: Callable[[torch.Tensor], list[torch.Tensor]],
    images: torch.Tensor,
    progress: bool = True,
) -> list[torch.Tensor]:
    """fp16 ``features(x)`` of every training image and its mirror image: rows [0, N)
    unflipped, [N, 2N) flipped. Valid while augmentation is only a horizontal flip."""
    chunks: list[list[torch.Tensor]] = []
    with torch.no_grad():
        for flip in (False, True):
            for chunk in tqdm(
                images.split(128), desc="caching VGG targets", leave=False, disable=not progress
            ):
                x = to_float(chunk)
                chunks.append([f.half() for f in features(x.flip(-1) if flip else x)])
    return [torch.cat(layer) for layer in zip(*chunks, strict=True)]


def train(
    cfg: VAETrainConfig, *, resume: bool = False, given: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Train (or, with ``resume``, continue) a VAE run; returns the last epoch's record.

    Runs as one process, or as one rank of a ``torchrun`` job (see ``catdog.distributed``).
    ``given``: the settings the command line set, for ``runs.prepare_run`` on resume."""
    with distributed.running(cfg.runtime, cfg.batch_size) as rt:
        return train_on(rt, cfg, resume, given)[0]


def train_on(
    rt: distributed.Runtime,
    cfg: VAETrainConfig,
    resume: bool = False,
    given: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], torch.nn.Module]:
    """``train`` on a given runtime; also returns this rank's trained VAE."""
    cfg, state = rt.from_main(
        lambda: prepare_run(
            cfg,
            resume=resume,
            state_name=STATE,
            final_name=FINAL,
            state_kind=checkpoint.KIND_VAE_TRAIN_STATE,
            what="VAE",
            given=given,
        )
    )
    # setup checked the batch given now; a resumed run trains with its saved one
    distributed.check_batch(cfg.batch_size, rt.world_size, cfg.runtime.grad_accum)
    save_dir = Path(cfg.save_dir)
    decoder_only = cfg.finetune_decoder is not None
    if cfg.init_from is not None and decoder_only:
        raise CatdogError("--init-from and --finetune-decoder are exclusive: fine-tune the whole "
                          "VAE or its decoder only")  # fmt: skip
    if not decoder_only and cfg.latent_noise:
        raise CatdogError("--latent-noise is for decoder fine-tuning (--finetune-decoder)")
    for term in ("align", "equiv"):  # the terms that shape the encoder's latent
        if decoder_only and cfg.losses.ever_on(term):
            raise CatdogError(f"--lambda-{term} shapes the encoder's latent; decoder fine-tuning "
                              "keeps the encoder fixed, so it cannot be used there")  # fmt: skip
    # A fine-tune (of the decoder or of the whole VAE) starts from a trained VAE, read once: a
    # resumed run has its own weights.
    source, source_path = None, cfg.finetune_decoder or cfg.init_from
    if decoder_only and state is not None:
        decoder_of = state["decoder_of"]
    elif source_path is not None and state is None:
        source, _ = checkpoint.load_vae(source_path)
        if decoder_only and not bool(source.has_latent_stats):
            raise CatdogError(f"VAE {source_path} has no latent statistics")
        cfg.model = source.cfg  # the architecture is the source's
        cfg.data.image_size = source.cfg.image_size  # and the data follows it
        if decoder_only:
            decoder_of = checkpoint.vae_link(source, str(Path(source_path).resolve()))
    if cfg.model.image_size != cfg.data.image_size:
        raise CatdogError(
            f"model image_size {cfg.model.image_size} != data image_size {cfg.data.image_size}"
        )
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    data_rng = torch.Generator().manual_seed(cfg.seed + 1)  # shared by all ranks

    check_held_out(cfg.data.train_split, cfg.data.val_split)
    train_set = load_split(cfg.data, cfg.data.train_split)
    val_set = balanced_subset(load_split(cfg.data, cfg.data.val_split), cfg.data.val_limit)
    if (val_set.labels < 0).any():
        raise CatdogError("the held-out split must be labelled (cat/dog), not 'unlabeled'")

    vae = VAE(cfg.model)
    if source is not None:
        vae.load_state_dict(source.state_dict())
    if decoder_only:  # the encoder side stays fixed: the latent space is the source's
        vae.requires_grad_(False)
        vae.decoder.requires_grad_(True)
    trained = vae.decoder if decoder_only else vae
    losses = cfg.losses
    disc = PatchDiscriminator(cfg.disc) if losses.ever_on("adv") else None
    vgg = load_vgg16_features(cfg.vgg_weights) if losses.ever_on("vgg") else None
    blank = torch.zeros(1, 3, cfg.data.image_size, cfg.data.image_size)  # for feature shapes
    projector, align_features = None, None
    if losses.ever_on("align"):
        if vgg is None:
            vgg = load_vgg16_features(cfg.vgg_weights, off_hint="turn the align term off")
        if not 0 <= cfg.align_layer < len(vgg):
            raise CatdogError(f"align_layer must be in 0..{len(vgg) - 1} (a layer of "
                              f"vgg16().features), got {cfg.align_layer}")  # fmt: skip

        def align_features(x: torch.Tensor) -> list[torch.Tensor]:
            return [vgg_feature_map(vgg, x, cfg.align_layer)]

        with torch.no_grad():
            align_shape = align_features(blank)[0].shape[1:]  # (channels, size, size)
        projector = LatentProjector(cfg.model.latent_channels, align_shape[0], align_shape[-1])
    params = [*trained.parameters(), *(projector.parameters() if projector is not None else ())]
    betas = (0.5, 0.9)
    base_lr = distributed.effective_lr(cfg.runtime, cfg.lr, cfg.batch_size)
    disc_base_lr = distributed.effective_lr(cfg.runtime, cfg.disc_lr, cfg.batch_size)
    opt = torch.optim.AdamW(params, lr=base_lr, betas=betas, weight_decay=0.0)
    disc_opt = (
        torch.optim.AdamW(disc.parameters(), lr=disc_base_lr, betas=betas, weight_decay=0.0)
        if disc is not None
        else None
    )
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    vae.to(memory_format=memory_format)
    if disc is not None:
        disc.to(memory_format=memory_format)
    perceptual = None
    vgg_cache: list[torch.Tensor] | None = None
    align_cache: torch.Tensor | None = None
    if vgg is not None:
        vgg.to(memory_format=memory_format)

    def fits_cache(per_image: int) -> bool:
        """Whether fp16 features (``per_image`` values) of every training image and its mirror
        may be cached: flips only, and within the memory budget."""
        return (
            cfg.cache_vgg_targets
            and cfg.data.color_jitter == 0
            and 2 * len(train_set) * per_image * 2 < VGG_CACHE_MAX_BYTES
        )

    if losses.ever_on("vgg"):
        perceptual = PerceptualLoss(vgg)
        with torch.no_grad():
            per_image = sum(f.numel() for f in perceptual.features(blank))
        if fits_cache(per_image):
            vgg_cache = _cache_vgg_targets(
                perceptual.features, train_set.images, cfg.progress and rt.is_main
            )
    if projector is not None and fits_cache(align_shape.numel()):
        align_cache = _cache_vgg_targets(
            align_features, train_set.images, cfg.progress and rt.is_main
        )[0]

    start_epoch, step, history, best_psnr = 0, 0, [], -math.inf
    if state is not None:
        vae.load_state_dict(state["vae"])
        opt.load_state_dict(state["opt"])
        if disc is not None:
            disc.load_state_dict(state["disc"])
            disc_opt.load_state_dict(state["disc_opt"])
        if projector is not None:
            projector.load_state_dict(state["projector"])
        start_epoch, step = state["epoch"], state["step"]
        history, best_psnr = state["history"], state["best_psnr"]
        torch.set_rng_state(state["rng"])
        data_rng.set_state(state["data_rng"])
    device = rt.device
    vae.to(device)
    if disc is not None:
        disc.to(device)
    if vgg is not None:
        vgg.to(device)
    if projector is not None:
        projector.to(device)
    for optimiser in (opt, disc_opt):
        for value in optimiser.state.values() if optimiser is not None else ():
            for key, tensor in value.items():
                if torch.is_tensor(tensor) and key != "step":
                    value[key] = tensor.to(device)
    # Decoder fine-tuning decodes posterior samples of the fixed encoder, cached for every
    # training image and its mirror (rows as in the VGG cache) while augmentation is a flip.
    posterior = None
    if decoder_only and cfg.data.color_jitter == 0:
        posterior = encode_training_set(vae, train_set.images)
    generator_terms = rt.wrap(
        vae.decoder
        if decoder_only
        else GeneratorTerms(vae, projector, equivariance=losses.ever_on("equiv"))
    )
    disc_model = rt.wrap(disc) if disc is not None else None
    if rt.is_main:
        checkpoint.atomic_write_json(save_dir / "config.json", to_dict(cfg))

    lineage = {"decoder_of": decoder_of} if decoder_only else {}
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
                "projector": projector.state_dict() if projector is not None else None,
                "epoch": epoch,
                "step": step,
                "history": history,
                "best_psnr": best_psnr,
                "rng": torch.get_rng_state(),
                "data_rng": data_rng.get_state(),
                **lineage,
            },
        )

    accum = cfg.runtime.grad_accum
    drop_last = rt.world_size * accum > 1  # every rank and micro-step gets an equal share
    latent_shape = (cfg.model.latent_channels, cfg.model.latent_size, cfg.model.latent_size)
    vae.train()
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        epoch_start = time.monotonic()
        # Per term: the sum of its batch means times the images each mean is over, and that
        # count. A term on for part of the epoch (the first step of a ramp has weight 0) is
        # averaged over the steps it ran; cls and center over the labelled images only.
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        seen = 0
        batches = distributed.epoch_batches(n, cfg.batch_size, data_rng, drop_last=drop_last)
        bar = tqdm(
            batches,
            desc=f"epoch {epoch}/{cfg.epochs}",
            leave=False,
            disable=not (cfg.progress and rt.is_main),
        )
        for i, index in enumerate(bar):
            weights = losses.weights_at(epoch - 1 + i / steps_per_epoch)
            lr = lr_at(cfg, step, total_steps, base_lr)
            for group in opt.param_groups:
                group["lr"] = lr
            # Augmentation and posterior noise for the whole global batch (shared stream).
            x_all, flipped_all = augment(
                to_float(train_set.images[index]),
                data_rng,
                hflip=cfg.data.hflip,
                color_jitter=cfg.data.color_jitter,
            )
            eps_all = torch.randn((len(index), *latent_shape), generator=data_rng)
            noise_all = (
                cfg.latent_noise * torch.randn(eps_all.shape, generator=data_rng)
                if cfg.latent_noise
                else torch.zeros_like(eps_all)
            )
            use_adv = weights["adv"] > 0 and disc is not None
            slices = rt.local_slices(len(index), accum)
            opt.zero_grad(set_to_none=True)
            micro: list[tuple[torch.Tensor, torch.Tensor]] = []
            for k, part in enumerate(slices):
                sync = k == len(slices) - 1
                x = x_all[part].to(device).contiguous(memory_format=memory_format)
                labels = train_set.labels[index[part]].to(device)
                if decoder_only:
                    rows = index[part] + n * flipped_all[part].long()
                    z = _decoder_input(vae, posterior, x, rows, eps_all[part], noise_all[part])
                    with rt.no_sync(generator_terms, sync), rt.autocast():
                        recon = generator_terms(z.contiguous(memory_format=memory_format)).float()
                    terms = {"rec": F.l1_loss(recon, x)}
                else:
                    with rt.no_sync(generator_terms, sync), rt.autocast():
                        recon, mean, logvar, logits, center, projected, small = generator_terms(
                            x, labels, eps_all[part].to(device)
                        )
                    recon = recon.float()
                    terms = {"rec": F.l1_loss(recon, x),
                             "cls": classifier_loss(logits.float(), labels),
                             "center": center.float()}  # fmt: skip
                    if small is not None:
                        terms["equiv"] = F.l1_loss(small.float(), F.avg_pool2d(x, EQUIV_FACTOR))
                    if weights["kl"] > 0:
                        terms["kl"] = kl_divergence(mean.float(), logvar.float())
                    if projected is not None:
                        if align_cache is not None:
                            rows = index[part] + n * flipped_all[part].long()
                            target = align_cache[rows].to(device)
                        else:
                            with torch.no_grad():
                                target = align_features(x)[0]
                        terms["align"] = vf_loss(projected, target)
                if weights["vgg"] > 0 and perceptual is not None:
                    if vgg_cache is not None:
                        rows = index[part] + n * flipped_all[part].long()
                        targets = [layer[rows].to(device) for layer in vgg_cache]
                    else:
                        with torch.no_grad():
                            targets = perceptual.features(x)
                    with rt.autocast():
                        terms["vgg"] = perceptual(recon, targets).float()
                if use_adv:
                    disc.requires_grad_(False)  # the generator step does not train the critic
                    with rt.autocast():
                        terms["adv"] = hinge_g_loss(disc(recon).float())
                    disc.requires_grad_(True)
                # Zero-weighted terms stay in the sum, so every parameter gets a gradient.
                total = terms["rec"] + sum(weights[k] * v for k, v in terms.items() if k != "rec")
                with rt.no_sync(generator_terms, sync):
                    (total / len(slices)).backward()
                terms["total"] = total
                micro.append((x, recon.detach()))
                labelled = int((labels >= 0).sum())
                for key, value in terms.items():
                    count = labelled if key in ("cls", "center") else len(x)
                    sums[key] = sums.get(key, 0.0) + value.item() * count
                    counts[key] = counts.get(key, 0) + count
                seen += len(x)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()

            if use_adv:
                for group in disc_opt.param_groups:
                    group["lr"] = lr_at(cfg, step, total_steps, disc_base_lr)
                disc_opt.zero_grad(set_to_none=True)
                for k, (x, fake) in enumerate(micro):
                    # Real and fake in one forward: one DDP reduction per backward.
                    with rt.no_sync(disc_model, k == len(micro) - 1), rt.autocast():
                        logits = disc_model(torch.cat([x, fake])).float()
                    loss_disc = hinge_d_loss(logits[: len(x)], logits[len(x) :])
                    with rt.no_sync(disc_model, k == len(micro) - 1):
                        (loss_disc / len(micro)).backward()
                    sums["disc"] = sums.get("disc", 0.0) + loss_disc.item() * len(x)
                    counts["disc"] = counts.get("disc", 0) + len(x)
                disc_opt.step()
            step += 1
            bar.set_postfix(loss=f"{total.item():.4f}", rec=f"{terms['rec'].item():.4f}")

        keys = sorted(sums)
        totals = rt.sum(
            torch.tensor(
                [*(sums[k] for k in keys), *(counts[k] for k in keys), seen], dtype=torch.float64
            )
        )
        means = {
            k: float(totals[j]) / max(float(totals[len(keys) + j]), 1.0)  # 0 when never counted
            for j, k in enumerate(keys)
        }
        seen = float(totals[-1])
        elapsed = time.monotonic() - epoch_start
        record = {
            "epoch": epoch,
            "step": step,
            "lr": lr,
            **{f"loss_{k}": v for k, v in means.items()},
            # the weights of the epoch's last step, as for ``lr``: those it ended training with
            **{f"w_{k}": v for k, v in weights.items()},
            "images_per_s": seen / elapsed,
            "epoch_seconds": elapsed,
        }
        time_up = rt.agree(
            cfg.max_minutes is not None and (time.monotonic() - started) > 60 * cfg.max_minutes
        )
        stopping = time_up or (cfg.stop_at_epoch is not None and epoch >= cfg.stop_at_epoch)
        last = epoch == cfg.epochs
        evaluating = epoch % cfg.eval_every == 0 or last or stopping
        if rt.is_main:  # evaluation, pictures and files: rank 0 only
            if evaluating:
                scores, (train_means, val_means, recon) = evaluate(
                    vae, train_set, val_set, cfg.seed
                )
                record.update(scores)
                if not decoder_only:  # a fine-tuned decoder keeps the source's statistics
                    vae.set_latent_stats(train_means)
                if scores["val_psnr"] > best_psnr:
                    best_psnr = scores["val_psnr"]
                    checkpoint.save(save_dir / BEST, checkpoint.KIND_VAE, checkpoint.vae_payload(
                        vae, to_dict(cfg), epoch=epoch, metrics=record, **lineage))  # fmt: skip
                if epoch % cfg.viz_every == 0 or last or stopping:
                    _save_pictures(save_dir, epoch, val_set, val_means, recon, cfg.seed)
            history.append(record)
            write_metrics(save_dir, history, CURVE_KEYS, curves=evaluating)
            summary = ", ".join(
                f"{k} {record[k]:.4g}"
                for k in ("loss_total", "loss_rec", "val_psnr", "probe_acc", "images_per_s")
                if k in record
            )
            if cfg.progress:
                tqdm.write(f"epoch {epoch}: {summary}")
            if last:
                checkpoint.save(save_dir / FINAL, checkpoint.KIND_VAE, checkpoint.vae_payload(
                    vae, to_dict(cfg), epoch=epoch, metrics=record, **lineage))  # fmt: skip
            if epoch % cfg.checkpoint_every == 0 or last or stopping:
                save_state(epoch)
        rt.broadcast_buffers(vae)  # the latent statistics rank 0 just computed
        if stopping and not last:
            if cfg.progress and rt.is_main:
                tqdm.write(f"stopped after epoch {epoch}; continue with --resume")
            break
    return record, vae


def _decoder_input(
    vae: VAE,
    posterior: tuple[torch.Tensor, torch.Tensor] | None,
    x: torch.Tensor,
    rows: torch.Tensor,
    eps: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """Decoder fine-tuning's input: a posterior sample of the fixed encoder (cached ``rows``, or
    encoded now) plus ``noise``, given in normalised latent units."""
    if posterior is not None:
        mean, logvar = (p[rows].to(x.device) for p in posterior)
    else:
        with torch.no_grad():
            mean, logvar = vae.encode(x)
    eps, noise = eps.to(x.device), noise.to(x.device)
    return vae.sample_posterior(mean, logvar, eps=eps) + vae.latent_std[:, None, None] * noise


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
