"""The packaged command line: ``catdog SUBCOMMAND [options]``. It parses arguments, builds a
typed config and calls the stage's ``train``; bad input becomes one ``error:`` line, exit 2."""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from .config import (
    DEFAULT_GUIDANCE,
    DIFFUSION_PRESETS,
    LOSS_TERMS,
    VAE_PRESETS,
    DiffusionTrainConfig,
    EvaluateConfig,
    GenerateConfig,
    RuntimeConfig,
    VAETrainConfig,
    diffusion_preset,
    from_dict,
    merge,
    to_dict,
    vae_preset,
)
from .errors import CatdogError

DEFAULTS = vae_preset("cpu")  # what an unset flag keeps: the default preset's value
DIFF_DEFAULTS = diffusion_preset("cpu")
GEN_DEFAULTS = GenerateConfig()
TERM_HELP = {
    "kl": "KL divergence to N(0, I)",
    "vgg": "VGG16 perceptual loss",
    "adv": "hinge adversarial loss from the patch discriminator",
    "cls": "latent classifier cross-entropy",
    "center": "center loss toward per-class latent centers",
    "align": "latent alignment to VGG16 features (VA-VAE's VF loss)",
    "equiv": "scale-equivariance loss (decoded 2x-downsampled latent vs 2x-downsampled image)",
}


def _flag(parser: argparse.ArgumentParser, name: str, **kwargs: Any) -> None:
    """Register ``--a-b`` and its underscore spelling ``--a_b`` (the original script's style)."""
    names = [f"--{name}"]
    if "-" in name:
        names.append(f"--{name.replace('-', '_')}")
    parser.add_argument(*names, default=None, **kwargs)


def add_runtime_args(parser: argparse.ArgumentParser, defaults: RuntimeConfig) -> None:
    """Device, precision and scale-out flags, shared by both training commands; ``defaults``:
    the command's default preset's (the VAE's lr_base_batch differs from the diffusion's)."""
    r = defaults
    g = parser.add_argument_group("where it runs (also under torchrun)")
    _flag(g, "device", help=f"auto, cpu, cuda, cuda:N or mps (default: {r.device})")
    _flag(g, "precision", choices=["fp32", "bf16"],
          help=f"bf16 autocast on CUDA; fp32 elsewhere (default: {r.precision})")  # fmt: skip
    _flag(g, "grad-accum", type=int,
          help="micro-steps per optimiser step; --batch-size stays the global batch "
          f"(default: {r.grad_accum})")  # fmt: skip
    g.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the trained network (CUDA only)")  # fmt: skip
    _flag(g, "lr-scaling", choices=["none", "linear", "sqrt"],
          help="scale --lr by f(batch size / --lr-base-batch) "
          f"(default: {r.lr_scaling})")  # fmt: skip
    _flag(g, "lr-base-batch", type=int,
          help="the batch --lr is meant for, with --lr-scaling "
          f"(default: {r.lr_base_batch})")  # fmt: skip


def runtime_overrides(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("device", "precision", "grad_accum", "compile", "lr_scaling", "lr_base_batch")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def add_vae_train_args(parser: argparse.ArgumentParser) -> None:
    """Every VAE training flag. Unset flags keep the preset's value (shown as the default)."""
    d, m = DEFAULTS.data, DEFAULTS.model
    parser.add_argument(
        "--preset",
        choices=sorted(VAE_PRESETS),
        default=None,
        help="named config preset (default: cpu, or decoder with --finetune-decoder)",
    )
    g = parser.add_argument_group(
        "fine-tuning a trained VAE",
        "--finetune-decoder trains only the decoder of a trained VAE: the latent space stays the "
        "same, so diffusion models trained on that VAE still fit the result",
    )
    _flag(
        g,
        "finetune-decoder",
        metavar="VAE_PATH",
        help="the trained VAE to start from (its architecture is used; model flags are ignored)",
    )
    _flag(
        g,
        "init-from",
        metavar="VAE_PATH",
        help="fine-tune a whole trained VAE instead (every weight starts from it and trains; the "
        "latent changes, so diffusion models of the source no longer fit)",
    )
    _flag(
        g,
        "latent-noise",
        type=float,
        help="std of noise added to the decoder's input, in normalised latent units "
        f"(default: {VAE_PRESETS['decoder']['latent_noise']} with the decoder preset)",
    )
    g = parser.add_argument_group("data")
    _flag(g, "data-dir", help=f"STL-10 root or a folder with cat/ and dog/ (default: {d.data_dir})")
    _flag(
        g,
        "dataset",
        choices=["auto", "stl10", "folder"],
        help=f"data source (default: {d.dataset})",
    )
    _flag(
        g,
        "train-split",
        help=f"split to train on, e.g. train, train+unlabeled (default: {d.train_split})",
    )
    _flag(
        g, "val-split", help=f"held-out split for PSNR and probe tracking (default: {d.val_split})"
    )
    _flag(
        g,
        "val-limit",
        type=int,
        help=f"balanced subset size of the held-out split, 0 = all (default: {d.val_limit})",
    )
    _flag(
        g, "image-size", type=int, help=f"training resolution in pixels (default: {d.image_size})"
    )
    _flag(
        g,
        "color-jitter",
        type=float,
        help=f"colour jitter strength, 0 = off (default: {d.color_jitter})",
    )
    g.add_argument("--no-hflip", action="store_true", help="turn off horizontal-flip augmentation")
    g.add_argument("--no-download", action="store_true", help="never download STL-10")

    g = parser.add_argument_group("model")
    _flag(
        g,
        "channels",
        help=f"comma-separated widths per resolution (default: {','.join(map(str, m.channels))})",
    )
    _flag(g, "latent-channels", type=int, help=f"latent channels (default: {m.latent_channels})")
    _flag(
        g,
        "blocks-per-level",
        type=int,
        help=f"residual blocks per resolution (default: {m.blocks_per_level})",
    )

    g = parser.add_argument_group("optimisation")
    _flag(g, "epochs", type=int, help=f"total epochs (default: {DEFAULTS.epochs})")
    _flag(g, "batch-size", type=int, help=f"batch size (default: {DEFAULTS.batch_size})")
    _flag(g, "lr", type=float, help=f"peak learning rate of the VAE (default: {DEFAULTS.lr})")
    _flag(
        g, "disc-lr", type=float, help=f"discriminator learning rate (default: {DEFAULTS.disc_lr})"
    )
    _flag(
        g,
        "lr-schedule",
        choices=["cosine", "constant"],
        help=f"learning-rate schedule after warm-up (default: {DEFAULTS.lr_schedule})",
    )
    _flag(g, "seed", type=int, help=f"random seed (default: {DEFAULTS.seed})")

    g = parser.add_argument_group(
        "loss schedule", "each term: weight, switch-on epoch, and linear ramp length in epochs"
    )
    for term in LOSS_TERMS:
        t = getattr(DEFAULTS.losses, term)
        _flag(
            g,
            f"lambda-{term}",
            type=float,
            help=f"weight of the {TERM_HELP[term]} (default: {t.weight})",
        )
        _flag(
            g,
            f"{term}-start",
            type=float,
            help=f"epoch the {term} term switches on (default: {t.start})",
        )
        _flag(
            g,
            f"{term}-ramp",
            type=float,
            help=f"epochs to ramp the {term} weight up (default: {t.ramp})",
        )
    _flag(
        g,
        "align-layer",
        type=int,
        help=f"layer of vgg16().features the align term aligns the latent to "
        f"(default: {DEFAULTS.align_layer} = relu4_3)",
    )

    g = parser.add_argument_group("run")
    _flag(
        g,
        "save-dir",
        help=f"run folder for checkpoints, metrics and pictures (default: {DEFAULTS.save_dir})",
    )
    _flag(
        g,
        "vgg-weights",
        help="local vgg16().features state dict (else $CATDOG_VGG_WEIGHTS, else download)",
    )
    _flag(
        g,
        "eval-every",
        type=int,
        help=f"epochs between held-out evaluations (default: {DEFAULTS.eval_every})",
    )
    _flag(
        g,
        "viz-every",
        type=int,
        help=f"epochs between reconstruction grids and t-SNE plots (default: {DEFAULTS.viz_every})",
    )
    _flag(
        g,
        "checkpoint-every",
        type=int,
        help=f"epochs between resumable checkpoints (default: {DEFAULTS.checkpoint_every})",
    )
    _flag(
        g,
        "max-minutes",
        type=float,
        help="stop resumably after this many minutes (default: no limit)",
    )
    _flag(
        g,
        "stop-at-epoch",
        type=int,
        help="stop resumably after this epoch (default: run to --epochs)",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --save-dir exactly where it stopped",
    )
    g.add_argument(
        "--no-vgg-cache", action="store_true", help="recompute VGG features of targets every step"
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bars or per-epoch lines")
    add_runtime_args(parser, DEFAULTS.runtime)


def vae_config_from_args(args: argparse.Namespace) -> VAETrainConfig:
    """The preset, overridden by every flag the user set."""
    preset = args.preset or ("decoder" if args.finetune_decoder else "cpu")
    cfg = from_dict(VAETrainConfig, merge(to_dict(vae_preset(preset)), vae_overrides(args)))
    _check_vae_config(cfg)
    return cfg


def vae_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields the user's flags set, as a nested dict (the rest keep the preset's)."""
    o: dict[str, Any] = {"data": {}, "model": {}, "losses": {t: {} for t in LOSS_TERMS}}
    for key in ("data_dir", "dataset", "train_split", "val_split", "val_limit", "color_jitter"):
        if getattr(args, key) is not None:
            o["data"][key] = getattr(args, key)
    if args.image_size is not None:
        o["data"]["image_size"] = o["model"]["image_size"] = args.image_size
    if args.no_hflip:
        o["data"]["hflip"] = False
    if args.no_download:
        o["data"]["download"] = False
    if args.channels is not None:
        try:
            o["model"]["channels"] = tuple(int(c) for c in args.channels.split(","))
        except ValueError:
            raise CatdogError(
                f"--channels must be comma-separated integers, got {args.channels!r}"
            ) from None
    for key in ("latent_channels", "blocks_per_level"):
        if getattr(args, key) is not None:
            o["model"][key] = getattr(args, key)
    for key in (
        "epochs", "batch_size", "lr", "disc_lr", "lr_schedule", "seed", "save_dir", "vgg_weights",
        "eval_every", "viz_every", "checkpoint_every", "max_minutes", "stop_at_epoch",
        "finetune_decoder", "latent_noise", "align_layer", "init_from",
    ):  # fmt: skip
        if getattr(args, key) is not None:
            o[key] = getattr(args, key)
    for term in LOSS_TERMS:
        for suffix, field in (("lambda_{}", "weight"), ("{}_start", "start"), ("{}_ramp", "ramp")):
            value = getattr(args, suffix.format(term))
            if value is not None:
                o["losses"][term][field] = value
    if args.no_vgg_cache:
        o["cache_vgg_targets"] = False
    o["progress"] = not args.no_progress
    o["runtime"] = runtime_overrides(args)
    return o


def _check_shared_config(cfg: VAETrainConfig | DiffusionTrainConfig) -> None:
    """What both stages' configs hold: data and runtime settings."""
    if cfg.data.val_limit == 1 or cfg.data.val_limit < 0:
        raise CatdogError(f"--val-limit must be 0 (all) or at least 2 (one image per class), got "
                          f"{cfg.data.val_limit}")  # fmt: skip
    if not 0 <= cfg.data.color_jitter < 1:
        raise CatdogError(f"--color-jitter must be in [0, 1), got {cfg.data.color_jitter}")
    if cfg.runtime.lr_base_batch < 1:
        raise CatdogError(f"--lr-base-batch must be positive, got {cfg.runtime.lr_base_batch}")
    if cfg.max_minutes is not None and not cfg.max_minutes > 0:
        raise CatdogError(f"--max-minutes must be positive, got {cfg.max_minutes}")
    if cfg.stop_at_epoch is not None and cfg.stop_at_epoch < 1:
        raise CatdogError(f"--stop-at-epoch must be at least 1, got {cfg.stop_at_epoch}")


def _check_vae_config(cfg: VAETrainConfig) -> None:
    _check_shared_config(cfg)
    positive = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "eval_every": cfg.eval_every,
                "viz_every": cfg.viz_every, "checkpoint_every": cfg.checkpoint_every}  # fmt: skip
    for name, value in positive.items():
        if value <= 0:
            raise CatdogError(f"--{name.replace('_', '-')} must be positive, got {value}")
    for name, value in (("lr", cfg.lr), ("disc-lr", cfg.disc_lr)):
        if not value > 0:
            raise CatdogError(f"--{name} must be positive, got {value:g}")
    _check_widths(cfg.model.channels, cfg.model.blocks_per_level, min_blocks=0)
    if cfg.model.latent_channels < 1:
        raise CatdogError(f"--latent-channels must be at least 1, got {cfg.model.latent_channels}")
    if cfg.latent_noise < 0:
        raise CatdogError(f"--latent-noise must be 0 or more, got {cfg.latent_noise}")
    if cfg.model.image_size <= 0:
        raise CatdogError(f"--image-size must be positive, got {cfg.model.image_size}")
    if cfg.model.image_size % 2 ** (len(cfg.model.channels) - 1):
        raise CatdogError(
            f"image size {cfg.model.image_size} is not divisible by the VAE's downsampling "
            f"factor {2 ** (len(cfg.model.channels) - 1)}"
        )


def _check_widths(channels: tuple[int, ...], blocks_per_level: int, *, min_blocks: int) -> None:
    """Network widths and depth: a width of 0 or less crashes in the first forward pass, and a
    negative block count would silently mean none."""
    if not all(width > 0 for width in channels):
        raise CatdogError(f"--channels must be positive integers, got {channels}")
    if blocks_per_level < min_blocks:
        raise CatdogError(
            f"--blocks-per-level must be {'0 or more' if min_blocks == 0 else 'at least 1'}, "
            f"got {blocks_per_level}"
        )


def cmd_train_vae(args: argparse.Namespace) -> None:
    from .train_vae import train

    cfg = vae_config_from_args(args)
    record = train(cfg, resume=args.resume, given=vae_overrides(args))
    print(f"VAE run in {cfg.save_dir}: " + ", ".join(
        f"{k}={record[k]:.4g}" for k in ("epoch", "val_psnr", "probe_acc") if k in record
    ))  # fmt: skip


def add_diffusion_train_args(parser: argparse.ArgumentParser) -> None:
    """Every diffusion training flag. Unset flags keep the preset's value (shown as the default)."""
    d, u, s = DIFF_DEFAULTS, DIFF_DEFAULTS.unet, DIFF_DEFAULTS.schedule
    parser.add_argument(
        "--preset", choices=sorted(DIFFUSION_PRESETS), default="cpu",
        help="named config preset (default: cpu)",
    )  # fmt: skip
    _flag(parser, "vae-path", help=f"VAE checkpoint to train on (default: {d.vae_path})")
    _flag(
        parser,
        "channels",
        help=f"UNet widths per resolution (default: {','.join(map(str, u.channels))})",
    )
    _flag(
        parser,
        "blocks-per-level",
        type=int,
        help=f"UNet residual blocks per resolution (default: {u.blocks_per_level})",
    )
    _flag(
        parser,
        "attention-levels",
        help="resolution levels with self-attention, 0 = full size, comma-separated "
        f"(default: {','.join(map(str, u.attention_levels))})",
    )
    _flag(
        parser,
        "class-dropout",
        type=float,
        help=f"label -> null probability, for guidance (default: {u.class_dropout})",
    )
    _flag(parser, "dropout", type=float, help=f"UNet dropout (default: {u.dropout})")
    _flag(
        parser,
        "subclasses",
        type=int,
        help="k-means clusters of VGG16 features per class, each its own label; sampling by "
        f"class draws one (default: {u.subclasses}, no clusters)",
    )
    _flag(
        parser,
        "self-condition",
        action=argparse.BooleanOptionalAction,
        help="self-conditioning: the UNet also sees its previous clean-latent estimate "
        f"(default: {'on' if u.self_condition else 'off'})",
    )
    _flag(
        parser, "schedule", choices=["linear", "cosine"], help=f"noise schedule (default: {s.kind})"
    )
    _flag(
        parser, "timesteps", type=int, help=f"number of noise levels T (default: {s.num_timesteps})"
    )
    _flag(
        parser,
        "objective",
        choices=["eps", "v"],
        help=f"what the UNet predicts (default: {s.objective})",
    )
    _flag(
        parser,
        "min-snr-gamma",
        type=float,
        help=f"min-SNR loss weighting, 0 = off (default: {s.min_snr_gamma})",
    )
    _flag(
        parser,
        "logsnr-shift",
        type=float,
        help=f"added to the schedule's log SNR; < 0 = noisier (default: {s.logsnr_shift})",
    )
    _flag(
        parser,
        "latent-sampling",
        choices=["posterior", "mean"],
        help=f"train on posterior samples or means (default: {d.latent_sampling})",
    )
    _flag(
        parser,
        "crop-copies",
        type=int,
        help="extra random-crop copies (and mirrors) of each training image in the latent cache "
        f"(default: {d.crop_copies})",
    )
    _flag(
        parser,
        "crop-min-scale",
        type=float,
        help=f"smallest crop side, relative to the image (default: {d.crop_min_scale})",
    )
    _flag(
        parser, "augment-prob", type=float,
        help="non-leaking augmentation: the probability that a training latent is flipped, "
        "turned and shifted, with the UNet told which (sampling asks for none); 0 = off "
        f"(default: {d.augment_prob})",
    )  # fmt: skip
    _flag(parser, "epochs", type=int, help=f"passes over the cached latents (default: {d.epochs})")
    _flag(parser, "batch-size", type=int, help=f"batch size (default: {d.batch_size})")
    _flag(parser, "lr", type=float, help=f"learning rate (default: {d.lr})")
    _flag(
        parser, "cooldown-epochs", type=int,
        help="over the run's last N epochs the learning rate falls linearly to 0; given again "
        f"with --resume, like --epochs (default: {d.cooldown_epochs})",
    )  # fmt: skip
    _flag(
        parser, "repa-weight", type=float,
        help="weight of representation alignment (REPA): the UNet's middle features are "
        "trained to predict VGG16 features of the clean image; 0 = off "
        f"(default: {d.repa_weight})",
    )  # fmt: skip
    _flag(
        parser, "repa-layer", type=int,
        help=f"layer of vgg16().features that REPA aligns with (default: {d.repa_layer}, relu4_3)",
    )  # fmt: skip
    _flag(
        parser, "repa-hidden", type=int,
        help=f"width of the REPA projector's hidden layers (default: {d.repa_hidden})",
    )  # fmt: skip
    _flag(
        parser, "vgg-weights",
        help="local vgg16().features state dict for REPA (else $CATDOG_VGG_WEIGHTS, else "
        "download)",
    )  # fmt: skip
    _flag(
        parser,
        "ema-decay",
        type=float,
        help=f"EMA decay of the sampling weights (default: {d.ema_decay})",
    )
    _flag(
        parser, "guide-step", type=int,
        help="save the EMA weights after this many steps as guide.pt, the autoguidance guide "
        f"linked into the final checkpoint; 0 = none (default: {d.guide_step})",
    )  # fmt: skip
    _flag(
        parser, "guide-guidance", type=float,
        help=f"guidance scale recorded with the guide (default: {d.guide_guidance})",
    )  # fmt: skip
    _flag(parser, "seed", type=int, help=f"random seed (default: {d.seed})")
    _flag(parser, "save-dir", help=f"run folder (default: {d.save_dir})")
    _flag(
        parser,
        "data-dir",
        help="STL-10 root or a folder with cat/ and dog/ (default: the VAE run's, where it "
        f"exists, else {d.data.data_dir})",
    )
    _flag(
        parser,
        "dataset",
        choices=["auto", "stl10", "folder"],
        help=f"data source (default: {d.data.dataset})",
    )
    _flag(parser, "train-split", help=f"split to train on (default: {d.data.train_split})")
    _flag(
        parser,
        "checkpoint-every",
        type=int,
        help=f"epochs between resumable checkpoints (default: {d.checkpoint_every})",
    )
    _flag(
        parser,
        "sample-every",
        type=int,
        help=f"epochs between sample grids (default: {d.sample_every})",
    )
    _flag(
        parser,
        "max-minutes",
        type=float,
        help="stop resumably after this many minutes (default: no limit)",
    )
    _flag(
        parser,
        "stop-at-epoch",
        type=int,
        help="stop resumably after this epoch (default: run to --epochs)",
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in --save-dir")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_runtime_args(parser, DIFF_DEFAULTS.runtime)


def diffusion_config_from_args(args: argparse.Namespace) -> DiffusionTrainConfig:
    """The preset, overridden by every flag the user set."""
    base = to_dict(diffusion_preset(args.preset))
    cfg = from_dict(DiffusionTrainConfig, merge(base, diffusion_overrides(args)))
    _check_shared_config(cfg)
    for name in ("epochs", "batch_size", "checkpoint_every", "sample_every"):
        if getattr(cfg, name) <= 0:
            raise CatdogError(
                f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}"
            )
    if not cfg.lr > 0:
        raise CatdogError(f"--lr must be positive, got {cfg.lr:g}")
    _check_widths(cfg.unet.channels, cfg.unet.blocks_per_level, min_blocks=1)
    levels = len(cfg.unet.channels)
    if not all(0 <= level < levels for level in cfg.unet.attention_levels):
        raise CatdogError(f"--attention-levels must be in 0..{levels - 1} (one per --channels "
                          f"width), got {cfg.unet.attention_levels}")  # fmt: skip
    if cfg.schedule.num_timesteps <= 0:
        raise CatdogError(f"--timesteps must be positive, got {cfg.schedule.num_timesteps}")
    if not cfg.schedule.min_snr_gamma >= 0:
        raise CatdogError(
            f"--min-snr-gamma must be 0 (off) or more, got {cfg.schedule.min_snr_gamma:g}"
        )
    if not math.isfinite(cfg.schedule.logsnr_shift):
        raise CatdogError(
            f"--logsnr-shift must be a finite number, got {cfg.schedule.logsnr_shift}"
        )
    if cfg.guide_step < 0 or cfg.guide_guidance < 0:
        raise CatdogError("--guide-step and --guide-guidance must be >= 0")
    if not 0 <= cfg.ema_decay < 1:
        raise CatdogError(f"--ema-decay must be in [0, 1), got {cfg.ema_decay}")
    if cfg.schedule.objective == "eps" and cfg.schedule.kind == "cosine":
        # The cosine schedule ends at alpha_bar_T ~ 2e-9, and the first sampling step recovers
        # x0 = (x_T - sigma * eps) / sqrt(alpha_bar_T): it multiplies the network's eps error by
        # ~2e4 (no x0 clipping in a latent space). v-prediction has no such division.
        raise CatdogError("--objective eps with --schedule cosine is numerically unstable at the "
                          "first sampling step; use --objective v (the default) or --schedule "
                          "linear")  # fmt: skip
    return cfg


def diffusion_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields the user's flags set, as a nested dict (the rest keep the preset's)."""
    o: dict[str, Any] = {"data": {}, "unet": {}, "schedule": {}}
    for key in ("data_dir", "dataset", "train_split"):
        if getattr(args, key) is not None:
            o["data"][key] = getattr(args, key)
    if args.channels is not None:
        o["unet"]["channels"] = _int_list(args.channels, "--channels")
    if args.attention_levels is not None:
        o["unet"]["attention_levels"] = _int_list(args.attention_levels, "--attention-levels")
    for key in ("blocks_per_level", "class_dropout", "dropout", "self_condition", "subclasses"):
        if getattr(args, key) is not None:
            o["unet"][key] = getattr(args, key)
    for flag, key in (("schedule", "kind"), ("timesteps", "num_timesteps"),
                      ("objective", "objective"), ("min_snr_gamma", "min_snr_gamma"),
                      ("logsnr_shift", "logsnr_shift")):  # fmt: skip
        if getattr(args, flag) is not None:
            o["schedule"][key] = getattr(args, flag)
    run_keys = (
        "vae_path",
        "latent_sampling",
        "crop_copies",
        "crop_min_scale",
        "augment_prob",
        "epochs",
        "batch_size",
        "lr",
        "cooldown_epochs",
        "repa_weight",
        "repa_layer",
        "repa_hidden",
        "vgg_weights",
        "ema_decay",
        "guide_step",
        "guide_guidance",
        "seed",
        "save_dir",
        "checkpoint_every",
        "sample_every",
        "max_minutes",
        "stop_at_epoch",
    )
    for key in run_keys:
        if getattr(args, key) is not None:
            o[key] = getattr(args, key)
    o["progress"] = not args.no_progress
    o["runtime"] = runtime_overrides(args)
    return o


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(c) for c in text.split(","))
    except ValueError:
        raise CatdogError(f"{flag} must be comma-separated integers, got {text!r}") from None


GUIDANCE_HELP = (
    "guidance scale, 1 = off (default: the scale the model's guide was tuned for, else "
    f"{DEFAULT_GUIDANCE} classifier-free)"
)
GUIDE_HELP = (
    "weaker diffusion checkpoint for autoguidance (same VAE and schedule); 'none' = "
    "classifier-free guidance (default: the guide recorded with the model, if any)"
)
CLASS_GUIDANCE_HELP = (
    "with autoguidance: a classifier-free term on top, > 1 pushes towards the class at a third "
    "UNet pass per step (3: more recognisable, a little less faithful); 1 = off (default)"
)


def add_generate_args(parser: argparse.ArgumentParser) -> None:
    g = GEN_DEFAULTS
    _flag(parser, "model-path", help="diffusion checkpoint (default: the shipped weights)")
    _flag(
        parser,
        "vae-path",
        help="VAE checkpoint (default: the one recorded in the diffusion checkpoint)",
    )
    _flag(parser, "class-name", help=f"cat or dog (default: {g.class_name})")
    _flag(parser, "num-samples", type=int, help=f"number of images (default: {g.num_samples})")
    _flag(
        parser,
        "sampler",
        help=f"dpmpp, ddim, or ddpm (ancestral, all T steps) (default: {g.sampler})",
    )
    _flag(parser, "steps", type=int, help=f"sampling steps for dpmpp and ddim (default: {g.steps})")
    _flag(parser, "guidance", type=float, help=GUIDANCE_HELP)
    _flag(parser, "guide-path", help=GUIDE_HELP)
    _flag(parser, "class-guidance", type=float, help=CLASS_GUIDANCE_HELP)
    _flag(parser, "eta", type=float, help=f"DDIM noise, 0 = deterministic (default: {g.eta})")
    _flag(parser, "seed", type=int, help=f"image i uses seed + i (default: {g.seed})")
    add_select_args(parser)
    _flag(
        parser, "batch-size", type=int, help=f"images per sampling batch (default: {g.batch_size})"
    )
    _flag(parser, "output", help=f"output folder (default: {g.output})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_select_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    _flag(
        parser, "select", type=int,
        help="best of K: draw K candidates per image and keep the one a VGG16 cat/dog probe "
        "ranks highest (K times the sampling time; default: 1, off)",
    )  # fmt: skip
    _flag(parser, "selector-path", help="selector for --select (default: the shipped one)")
    _flag(
        parser, "vgg-weights",
        help="local vgg16().features state dict for --select (else $CATDOG_VGG_WEIGHTS, else "
        "download)",
    )  # fmt: skip


def check_select_flags(args: argparse.Namespace) -> None:
    """The selector's flags do nothing without --select K > 1: say so rather than ignore them."""
    if (args.select or 1) == 1 and (args.selector_path or args.vgg_weights) is not None:
        raise CatdogError("--selector-path and --vgg-weights are for best-of-K (--select K > 1)")


def generate_config_from_args(args: argparse.Namespace) -> GenerateConfig:
    check_select_flags(args)
    values = {
        k: getattr(args, k) for k in to_dict(GEN_DEFAULTS) if getattr(args, k, None) is not None
    }
    values["progress"] = not args.no_progress
    return from_dict(GenerateConfig, {**to_dict(GEN_DEFAULTS), **values})


def cmd_train_diffusion(args: argparse.Namespace) -> None:
    from .train_diffusion import train

    cfg = diffusion_config_from_args(args)
    _data_of_vae_run(args, cfg)
    record = train(cfg, resume=args.resume, given=diffusion_overrides(args))
    print(
        f"diffusion run in {cfg.save_dir}: epoch={record.get('epoch')}, "
        f"loss={record.get('loss', float('nan')):.4g}"
    )


def _data_of_vae_run(args: argparse.Namespace, cfg: DiffusionTrainConfig) -> None:
    """Without --data-dir and --dataset, a new diffusion run trains on the data its VAE was
    trained on (the folder the VAE run recorded, where it exists), else on the default."""
    from pathlib import Path

    from . import checkpoint

    if args.data_dir is not None or args.dataset is not None or args.resume:
        return
    try:
        recorded = checkpoint.load(cfg.vae_path, checkpoint.KIND_VAE)["train_config"]["data"]
    except (CatdogError, KeyError, TypeError):
        return  # training reports a missing or bad VAE in its own words
    data_dir = recorded.get("data_dir") if isinstance(recorded, dict) else None
    if isinstance(data_dir, str) and data_dir and Path(data_dir).is_dir():
        cfg.data.data_dir = data_dir
        dataset = recorded.get("dataset")
        cfg.data.dataset = dataset if dataset in ("auto", "folder", "stl10") else "auto"
        print(f"training on {data_dir}, the data the VAE was trained on (--data-dir to change)",
              file=sys.stderr)  # fmt: skip


def cmd_generate(args: argparse.Namespace) -> None:
    from .generate import generate

    cfg = generate_config_from_args(args)
    paths = generate(cfg)
    print(f"wrote {len(paths) - 1} {cfg.class_name} images and a grid: {paths[0]}")


def add_visualize_args(parser: argparse.ArgumentParser) -> None:
    _flag(parser, "model-path", help="diffusion checkpoint (default: the shipped weights)")
    _flag(
        parser,
        "vae-path",
        help="VAE checkpoint (default: the one recorded in the diffusion checkpoint)",
    )
    _flag(parser, "data-dir", help="data for the real latents (default: the training run's)")
    _flag(parser, "output", help="folder for the figures (default: ./figures)")
    _flag(parser, "steps", type=int, help="DDIM steps of the shown trajectories (default: 50)")
    _flag(parser, "guidance", type=float, help=GUIDANCE_HELP)
    _flag(parser, "guide-path", help=GUIDE_HELP)
    _flag(parser, "seed", type=int, help="random seed (default: 0)")


def cmd_visualize(args: argparse.Namespace) -> None:
    from .visualize import make_figures

    paths = make_figures(
        args.model_path, args.output or "./figures",
        vae_path=args.vae_path, data_dir=args.data_dir,
        steps=50 if args.steps is None else args.steps, guidance=args.guidance,
        guide_path=args.guide_path, seed=0 if args.seed is None else args.seed,
    )  # fmt: skip
    print("wrote " + ", ".join(str(p) for p in paths))


EVAL_DEFAULTS = EvaluateConfig()


def add_evaluate_args(parser: argparse.ArgumentParser) -> None:
    e = EVAL_DEFAULTS
    what = parser.add_argument_group("what to score (one of)")
    _flag(what, "model-path", help="diffusion checkpoint (default: the shipped weights)")
    _flag(what, "images", help="folder with cat/ and dog/ of images to score instead")
    _flag(what, "vae-path", help="VAE checkpoint (default: the one recorded with the model)")
    ref = parser.add_argument_group("real images")
    _flag(ref, "data-dir", help=f"STL-10 root or image folder (default: {e.data.data_dir})")
    _flag(ref, "dataset", choices=["auto", "stl10", "folder"], help="data source (default: auto)")
    _flag(ref, "reference-split", help=f"split compared with (default: {e.reference_split})")
    _flag(ref, "train-split", help=f"split the model was trained on (default: {e.train_split})")
    gen = parser.add_argument_group("generation")
    _flag(gen, "num-per-class", type=int, help=f"images per class (default: {e.num_per_class})")
    _flag(gen, "sampler", help=f"dpmpp, ddim or ddpm (default: {e.sampler})")
    _flag(gen, "steps", type=int, help=f"sampling steps (default: {e.steps})")
    _flag(gen, "guidance", type=float, help=GUIDANCE_HELP)
    _flag(gen, "guide-path", help=GUIDE_HELP)
    _flag(gen, "class-guidance", type=float, help=CLASS_GUIDANCE_HELP)
    _flag(gen, "seed", type=int, help=f"first seed (default: {e.seed})")
    add_select_args(gen)
    _flag(gen, "batch-size", type=int, help=f"sampling batch (default: {e.batch_size})")
    met = parser.add_argument_group("metrics")
    _flag(
        met, "features", choices=["inception", "pixels"],
        help="feature space: inception (FID standard) or pixels (smoke tests only; not FID) "
        f"(default: {e.features})",
    )  # fmt: skip
    _flag(
        met, "inception-weights",
        help="local FID Inception weights (default: $CATDOG_INCEPTION_WEIGHTS, else download)",
    )  # fmt: skip
    _flag(met, "cache-dir", help=f"feature cache for real splits (default: {e.cache_dir})")
    _flag(met, "kid-subsets", type=int, help=f"KID subsets (default: {e.kid_subsets})")
    parser.add_argument(
        "--no-reference-points", action="store_true",
        help="skip scoring real training images and VAE reconstructions",
    )  # fmt: skip
    _flag(parser, "output", help=f"JSON report; the table goes beside it (default: {e.output})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def evaluate_config_from_args(args: argparse.Namespace) -> EvaluateConfig:
    check_select_flags(args)
    base = to_dict(EVAL_DEFAULTS)
    o: dict[str, Any] = {"data": {}}
    for key in ("data_dir", "dataset"):
        if getattr(args, key) is not None:
            o["data"][key] = getattr(args, key)
    for key in base:
        if key != "data" and getattr(args, key, None) is not None:
            o[key] = getattr(args, key)
    o["reference_points"] = not args.no_reference_points
    o["progress"] = not args.no_progress
    return from_dict(EvaluateConfig, merge(base, o))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .checkpoint import atomic_write_bytes
    from .evaluate import evaluate, format_table

    cfg = evaluate_config_from_args(args)
    report = evaluate(cfg)
    table = format_table(report)
    atomic_write_bytes(Path(cfg.output).with_suffix(".md"), (table + "\n").encode())
    print(table)
    print(f"\nreport: {cfg.output}")


def add_export_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", required=True, help="diffusion checkpoint to export")
    parser.add_argument(
        "--output",
        required=True,
        help="folder for the .safetensors files (VAE, model, and its guide if any)",
    )
    parser.add_argument(
        "--data-dir", default=None,
        help="data whose test split gives the shipped latent map (default: the training data)",
    )  # fmt: skip
    parser.add_argument(
        "--guide-path", default=None,
        help="the autoguidance guide to ship: a weaker diffusion checkpoint on the same VAE "
        "(default: the one recorded by training; 'none' = no guide)",
    )  # fmt: skip
    parser.add_argument(
        "--guidance", type=float, default=None,
        help="the guidance scale recorded with the guide (generation's default)",
    )  # fmt: skip
    parser.add_argument(
        "--vae-path", default=None,
        help="the VAE to ship: the one the model was trained on, or a decoder fine-tune of it "
        "(train-vae --finetune-decoder); default: the recorded one",
    )  # fmt: skip


def cmd_export(args: argparse.Namespace) -> None:
    from .export import export_pair

    paths = export_pair(args.model_path, args.output, data_dir=args.data_dir,
                        guide_path=args.guide_path, guidance=args.guidance,
                        vae_path=args.vae_path)  # fmt: skip
    print("wrote " + ", ".join(f"{p} ({p.stat().st_size / 2**20:.1f} MiB)" for p in paths))


def add_fit_selector_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", required=True, help="STL-10 root or image folder")
    parser.add_argument("--dataset", choices=["auto", "stl10", "folder"], default="auto",
                        help="data source (default: auto)")  # fmt: skip
    parser.add_argument("--split", default="train", help="labelled split (default: train)")
    parser.add_argument("--image-size", type=int, default=48, help="image side (default: 48)")
    parser.add_argument(
        "--vgg-weights", default=None,
        help="local vgg16().features state dict (else $CATDOG_VGG_WEIGHTS, else download)",
    )  # fmt: skip
    parser.add_argument("--output", required=True, help="the selector's .safetensors file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_fit_selector(args: argparse.Namespace) -> None:
    from pathlib import Path

    from . import checkpoint, selector
    from .config import DataConfig
    from .data import load_split
    from .losses import load_vgg16_features

    if args.image_size < 16:  # the images the selector scores are 48 px; tests use 16
        raise CatdogError(f"--image-size must be at least 16, got {args.image_size}")
    output = Path(args.output)
    checkpoint.check_output_file(output)
    data = load_split(DataConfig(data_dir=args.data_dir, dataset=args.dataset,
                                 image_size=args.image_size), args.split)  # fmt: skip
    vgg = load_vgg16_features(args.vgg_weights, off_hint="a selector needs them")
    fitted = selector.fit(vgg, data.images, data.labels, progress=not args.no_progress)
    selector.save(fitted, output, fitted_on=f"{data.source}, split {args.split}, with flips",
                  images=len(data.labels))  # fmt: skip
    print(f"wrote {output}: a selector fitted on {len(data.labels)} images of {data.source}")


DISTILL_KEYS = ("model_path", "guide_path", "vae_path", "guidance", "generated",
                "generated_fraction", "steps", "batch_size", "lr", "ema_decay", "seed",
                "save_dir", "checkpoint_every", "max_minutes", "device")  # fmt: skip


def add_distill_args(parser: argparse.ArgumentParser) -> None:
    from .config import DistillConfig

    d = DistillConfig()
    _flag(parser, "model-path", help="the teacher: a diffusion checkpoint (default: the shipped "
          "pair, catdog_diffusion.safetensors with its guide)")  # fmt: skip
    _flag(parser, "guide-path", help=GUIDE_HELP)
    _flag(parser, "vae-path", help="VAE checkpoint (default: the one recorded with the teacher)")
    _flag(parser, "guidance", type=float, help=GUIDANCE_HELP + "; the student's built-in scale")
    _flag(parser, "member", action="append", help="another trained model to average with the "
          "teacher, with its own recorded guide (repeatable): the student learns the "
          "ensemble")  # fmt: skip
    _flag(parser, "member-weights", help="the ensemble's weights, comma-separated, the "
          "teacher's first, summing to 1 (default: equal)")  # fmt: skip
    _flag(parser, "data-dir", help="the training photos (default: the teacher's training data)")
    _flag(parser, "dataset", choices=["auto", "stl10", "folder"], help="data source (default: "
          "the teacher's)")  # fmt: skip
    _flag(parser, "train-split", help="the photos' split (default: the teacher's)")
    _flag(
        parser,
        "generated",
        type=int,
        help=f"latents the guided teacher samples once for the pool (default: {d.generated})",
    )
    _flag(
        parser,
        "generated-fraction",
        type=float,
        help=f"share of each batch from the pool (default: {d.generated_fraction})",
    )
    _flag(parser, "steps", type=int, help=f"optimiser steps (default: {d.steps})")
    _flag(parser, "batch-size", type=int, help=f"batch size (default: {d.batch_size})")
    _flag(parser, "lr", type=float, help=f"learning rate, constant (default: {d.lr})")
    _flag(parser, "ema-decay", type=float, help=f"EMA decay (default: {d.ema_decay})")
    _flag(parser, "seed", type=int, help=f"random seed (default: {d.seed})")
    _flag(parser, "save-dir", help=f"run folder (default: {d.save_dir})")
    _flag(
        parser,
        "checkpoint-every",
        type=int,
        help=f"steps between checkpoints (default: {d.checkpoint_every})",
    )
    _flag(parser, "max-minutes", type=float, help="stop (resumably) after this many minutes")
    _flag(parser, "device", help=f"auto, cpu, cuda, cuda:N or mps (default: {d.device})")
    parser.add_argument("--resume", action="store_true", help="continue the run in --save-dir")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def distill_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields the user's flags set, as a nested dict."""
    o: dict[str, Any] = {k: getattr(args, k) for k in DISTILL_KEYS if getattr(args, k) is not None}
    o["data"] = {k: getattr(args, k) for k in ("data_dir", "dataset", "train_split")
                 if getattr(args, k) is not None}  # fmt: skip
    if args.member is not None:
        o["members"] = args.member
    if args.member_weights is not None:
        try:
            o["member_weights"] = [float(w) for w in args.member_weights.split(",")]
        except ValueError:
            raise CatdogError(f"--member-weights must be numbers separated by commas, got "
                              f"{args.member_weights!r}") from None  # fmt: skip
    o["progress"] = not args.no_progress
    return o


def cmd_distill(args: argparse.Namespace) -> None:
    from pathlib import Path

    from . import checkpoint
    from .config import DistillConfig, from_dict, merge, to_dict
    from .distill import FINAL, distill, teacher_path

    given = distill_overrides(args)
    cfg = from_dict(DistillConfig, merge(to_dict(DistillConfig()), given))
    if not given["data"] and not args.resume:  # the photos the teacher was trained on
        try:
            teacher = checkpoint.load(teacher_path(cfg), checkpoint.KIND_DIFFUSION)
            recorded = teacher["train_config"]["data"]
            if Path(recorded["data_dir"]).is_dir():
                cfg.data = from_dict(type(cfg.data), {**to_dict(cfg.data), **recorded})
                print(f"distilling on {recorded['data_dir']}, the data the teacher was trained "
                      "on (--data-dir to change)", file=sys.stderr)  # fmt: skip
        except (CatdogError, KeyError, TypeError, ValueError):
            pass  # distill reports a missing or bad teacher in its own words
    record = distill(cfg, resume=args.resume, given=given)
    print(
        f"distilled model in {cfg.save_dir}/{FINAL}: step {record.get('step')}, "
        f"loss {record.get('loss', float('nan')):.4g}"
    )


# The `catdog` sub-commands: name, one-line help, description, argument adder, command.
COMMANDS: list[tuple[str, str, str, Callable, Callable]] = [
    ("train-vae", "train the VAE stage", "Train the VAE stage.", add_vae_train_args, cmd_train_vae),
    (
        "train-diffusion",
        "train the diffusion stage on a trained VAE",
        "Train the class-conditional latent diffusion UNet.",
        add_diffusion_train_args,
        cmd_train_diffusion,
    ),
    (
        "generate",
        "generate cats or dogs",
        "Generate images of one class from a trained model pair.",
        add_generate_args,
        cmd_generate,
    ),
    (
        "visualize",
        "denoising path, GIFs, comparisons and sample grids of a model pair",
        "Draw the pictures that explain a trained model pair.",
        add_visualize_args,
        cmd_visualize,
    ),
    (
        "evaluate",
        "FID, KID, class accuracy, precision/recall and memorisation",
        "Score a model pair (or a folder of images) against real images.",
        add_evaluate_args,
        cmd_evaluate,
    ),
    (
        "export",
        "write a model pair as fp16 safetensors (the shipped-weights format)",
        "Export a diffusion checkpoint and its VAE as fp16 safetensors.",
        add_export_args,
        cmd_export,
    ),
    (
        "distill",
        "distil a model's guidance into one network (one UNet pass a sampling step)",
        "Train a student that gives a model's guided output in one pass (guidance "
        "distillation, Meng et al. 2023).",
        add_distill_args,
        cmd_distill,
    ),
    (
        "fit-selector",
        "fit the VGG16 cat/dog probe that --select ranks candidates with",
        "Fit a best-of-K sample selector on labelled real images.",
        add_fit_selector_args,
        cmd_fit_selector,
    ),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="catdog", description="Class-conditional latent diffusion for 48x48 cats and dogs."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, description, add_args, func in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=description)
        add_args(p)
        p.set_defaults(func=func)
    return parser


def run(func: Callable[[argparse.Namespace], None], args: argparse.Namespace) -> int:
    """Run a command, turning CatdogError into one line on stderr (exit 2)."""
    warnings.simplefilter("default")
    try:
        func(args)
    except CatdogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue a training run with --resume", file=sys.stderr)
        return 130
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
