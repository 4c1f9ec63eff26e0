"""Typed configuration for every knob, named presets, and dict round-trips.

Configs are plain dataclasses passed down explicitly (no globals). The resolved config is
written into the run folder and into every checkpoint, so a checkpoint describes itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

T = TypeVar("T")

LOSS_TERMS: tuple[str, ...] = ("kl", "vgg", "adv", "cls", "center", "align", "equiv")


@dataclass
class DataConfig:
    """Where the images come from and how they are prepared."""

    dataset: str = "auto"  # "auto" | "stl10" | "folder"; auto picks folder if cat/ dog/ exist
    data_dir: str = "./data"
    train_split: str = "train"  # stl10: train | test | train+test | unlabeled | train+unlabeled
    val_split: str = "test"  # held-out split for PSNR / probe tracking (never trained on)
    val_limit: int = 400  # balanced subset of the held-out split used for tracking; 0 = all
    image_size: int = 48  # 96 -> 48 with antialiasing
    hflip: bool = True
    color_jitter: float = 0.0  # 0 = off; else max relative change of brightness/contrast/saturation
    download: bool = True  # let torchvision download STL-10 when it is missing


@dataclass
class VAEConfig:
    """Shape of the VAE. The latent is a 2D map: latent_channels x latent_size x latent_size."""

    image_size: int = 48
    in_channels: int = 3
    channels: tuple[int, ...] = (32, 64, 128)  # width per resolution; len-1 downsamplings
    blocks_per_level: int = 1
    latent_channels: int = 4
    norm_groups: int = 8
    # Residual blocks at levels >= this one (0 = full resolution) carry channel + spatial
    # attention; skipping full resolution saves ~30% of the VAE's time at little cost.
    attention_from_level: int = 1
    num_classes: int = 2

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, self.latent_size, self.latent_size)


@dataclass
class DiscriminatorConfig:
    """A small patch discriminator (PatchGAN-style, spectral norm)."""

    channels: tuple[int, ...] = (32, 64, 128)


@dataclass
class LossTerm:
    """One loss term of the progressive schedule.

    The weight is 0 before ``start`` (in epochs, fractional allowed), ramps linearly to ``weight``
    over ``ramp`` epochs, and stays there.
    """

    weight: float = 0.0
    start: float = 0.0
    ramp: float = 0.0

    def weight_at(self, epoch: float) -> float:
        if self.weight == 0.0 or epoch < self.start:
            return 0.0
        if self.ramp <= 0:
            return self.weight
        return self.weight * min(1.0, (epoch - self.start) / self.ramp)


@dataclass
class LossSchedule:
    """Weight and switch-on time of every VAE loss term. Reconstruction (L1) has weight 1."""

    kl: LossTerm = field(default_factory=lambda: LossTerm(1e-5, 0.0, 10.0))  # KL warm-up
    vgg: LossTerm = field(default_factory=lambda: LossTerm(0.8, 0.0, 0.0))
    adv: LossTerm = field(default_factory=lambda: LossTerm(0.05, 30.0, 10.0))
    cls: LossTerm = field(default_factory=lambda: LossTerm(1.0, 1.0, 2.0))
    center: LossTerm = field(default_factory=lambda: LossTerm(0.1, 2.0, 3.0))
    # Latent alignment to frozen VGG16 features (VA-VAE's VF loss, Yao et al. 2025); 0 = off.
    align: LossTerm = field(default_factory=lambda: LossTerm(0.0, 0.0, 0.0))
    # Scale equivariance (Skorokhodov et al. 2025, "Improving the diffusability of
    # autoencoders"): L1 between the decoded 2x-downsampled latent and the 2x-downsampled image,
    # so that the latent decodes sensibly at half its side, as an image does; 0 = off.
    equiv: LossTerm = field(default_factory=lambda: LossTerm(0.0, 0.0, 0.0))

    def weights_at(self, epoch: float) -> dict[str, float]:
        return {name: getattr(self, name).weight_at(epoch) for name in LOSS_TERMS}

    def ever_on(self, name: str) -> bool:
        return getattr(self, name).weight > 0


@dataclass
class RuntimeConfig:
    """Where and how a training run executes; taken from each launch, also on --resume."""

    device: str = "auto"  # auto (CUDA, then MPS, then CPU) | cpu | cuda | cuda:N | mps
    precision: str = "fp32"  # "bf16": bf16 autocast on CUDA (elsewhere fp32, with a warning)
    grad_accum: int = 1  # micro-steps per optimiser step; batch_size stays the global batch
    compile: bool = False  # torch.compile the trained network (CUDA only)
    lr_scaling: str = "none"  # none | linear | sqrt: lr * f(batch_size / lr_base_batch)
    lr_base_batch: int = 128  # the batch the given lr is meant for (with lr_scaling)


@dataclass
class VAETrainConfig:
    """Everything one VAE training run needs."""

    data: DataConfig = field(default_factory=DataConfig)
    model: VAEConfig = field(default_factory=VAEConfig)
    disc: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    losses: LossSchedule = field(default_factory=LossSchedule)
    # Default preset, 80 epochs: 17.9 minutes on a 2-thread AMD EPYC, 36.3 on a 2-thread Xeon
    # (median epoch; bench/results/training_runs.jsonl).
    epochs: int = 80
    batch_size: int = 32
    lr: float = 1e-3
    disc_lr: float = 2e-4
    lr_warmup_steps: int = 100
    lr_schedule: str = "cosine"  # "cosine" (to 10% of lr) | "constant"
    grad_clip: float = 1.0
    seed: int = 0
    save_dir: str = "./results"
    eval_every: int = 5  # epochs between held-out PSNR / probe evaluations (~8 s each on CPU)
    viz_every: int = 10  # epochs between reconstruction grids and t-SNE plots
    checkpoint_every: int = 1  # epochs between resumable checkpoints
    vgg_weights: str | None = None  # local torchvision vgg16().features state dict
    cache_vgg_targets: bool = True  # cache VGG features of (flip-augmented) targets
    # The layer of vgg16().features that the latent is aligned to (the "align" loss term):
    # 22 = relu4_3, 512 channels at 1/8 of the image side. A 1x1 convolution projects the
    # posterior mean to its channels; the projection is average-pooled to its size.
    align_layer: int = 22
    # NHWC memory format: +18% for the VAE alone, +12% for the full step on CPU
    # (bench/results/vae_step.jsonl).
    channels_last: bool = True
    max_minutes: float | None = None  # stop (resumably) after this much wall-clock time
    stop_at_epoch: int | None = None  # stop (resumably) after this epoch
    progress: bool = True
    runtime: RuntimeConfig = field(default_factory=lambda: RuntimeConfig(lr_base_batch=32))
    # Decoder fine-tuning: train only the decoder of this trained VAE. Its encoder, latent
    # statistics and latent heads stay as they are, so diffusion models trained on it still fit.
    finetune_decoder: str | None = None
    latent_noise: float = 0.0  # decoder fine-tuning: std of noise on its input (normalised units)
    # Whole-VAE fine-tuning: start every weight from this trained VAE (its architecture is
    # used) and train all of them, e.g. with a new loss term. The latent changes, so diffusion
    # models trained on the source do not fit the result.
    init_from: str | None = None


@dataclass
class UNetConfig:
    """The class-conditional denoiser on the VAE's 2D latent."""

    latent_channels: int = 4
    latent_size: int = 12
    # Sized for >= 20 images/s with CFG on 2 CPU cores (bench/results/diffusion_speed.jsonl).
    channels: tuple[int, ...] = (48, 96)  # width per resolution; len-1 downsamplings
    blocks_per_level: int = 1
    attention_levels: tuple[int, ...] = (1,)  # self-attention at these levels (1 = 6x6)
    heads: int = 4
    norm_groups: int = 8
    dropout: float = 0.0
    num_classes: int = 2  # the embedding has one more row: the null label (index num_classes)
    class_dropout: float = 0.1  # label -> null with this probability in training (for CFG)
    # Sub-classes per class (Hu et al. 2023, "Self-guided diffusion models"): > 1 splits each
    # class into this many k-means clusters of the training images' VGG16 features, and the
    # embedding has a row per cluster. The UNet stores each class's cluster frequencies, and
    # sampling by class draws a cluster from them per image (UNet.draw_subclasses).
    subclasses: int = 1
    # Self-conditioning (Chen et al. 2023, "Analog Bits"): the network also sees its own
    # previous estimate of the clean latent (zeros when there is none), which samplers pass on
    # from step to step. Doubles the stem's input channels only.
    self_condition: bool = False
    # Width of the augmentation label (catdog.augment.LABEL_DIM when the run augments its
    # latents, 0 = none): a bias-free linear map of it is added to the time embedding, so the
    # label of no augmentation (zeros), which sampling uses, adds nothing.
    augment_dim: int = 0


@dataclass
class ScheduleConfig:
    """Forward noising process. Timesteps 1..T are noise levels; t = 0 is the clean latent."""

    kind: str = "cosine"  # "cosine" (Nichol & Dhariwal 2021) | "linear" (DDPM, as the original)
    num_timesteps: int = 1000
    beta_start: float = 1e-4  # linear only
    beta_end: float = 0.02  # linear only
    objective: str = "v"  # "eps" | "v" (Salimans & Ho 2022)
    min_snr_gamma: float = 0.0  # > 0: min-SNR loss weighting (Hang et al. 2023)
    # Added to log SNR at every noise level (Hoogeboom et al. 2023, "simple diffusion"):
    # negative = noisier at every t. A latent with k times the dimensions of the one the
    # schedule suits keeps more of its signal at the same SNR; -log(k) shifts that back.
    logsnr_shift: float = 0.0


@dataclass
class DiffusionTrainConfig:
    """Everything one diffusion training run needs."""

    # Values for fields that a saved run's config lacks: what runs saved before the field
    # existed were trained with, where that differs from today's default (runs.prepare_run).
    SAVED_BEFORE: ClassVar[dict[str, Any]] = {"repa_weight": 0.0, "repa_hidden": 256}

    vae_path: str = "./results/vae_gan_best.pt"
    data: DataConfig = field(default_factory=DataConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    latent_sampling: str = "posterior"  # "posterior": draw z ~ q(z|x) each step; "mean": use mu
    # Extra copies of each training image in the latent cache, each a random crop (side
    # U(crop_min_scale, 1) of the source image) and its mirror image: data-limited training
    # sees more distinct latents. 0 = the images and their mirrors only.
    crop_copies: int = 0
    crop_min_scale: float = 0.8
    # Non-leaking augmentation (EDM; catdog.augment): each training latent is flipped
    # vertically, turned and shifted with this probability, and the UNet is told which
    # transform it got (a new run sets unet.augment_dim to augment.LABEL_DIM). 0 = off.
    augment_prob: float = 0.0
    epochs: int = 2000  # one epoch = one pass over the cached (flip-augmented) training latents
    batch_size: int = 128
    lr: float = 1e-3
    lr_warmup_steps: int = 200
    # The learning rate is constant after the warm-up, except over the run's last
    # cooldown_epochs, where it falls linearly to 0 (warmup-stable-decay, Hagele et al. 2024).
    # A run-control field, like epochs: a constant-rate run can be resumed with a cooldown.
    cooldown_epochs: int = 0
    # Representation alignment (REPA, Yu et al. 2025): a small projector maps the UNet's
    # middle features to the frozen VGG16 features (layer repa_layer of vgg16().features,
    # 22 = relu4_3) of the clean training image, and 1 - cosine similarity is added to the loss
    # with this weight. The features are cached with the latents. 0 = off. On by default:
    # better samples on every measure at the same steps (docs/design.md, "Representation
    # alignment").
    repa_weight: float = 0.5
    repa_layer: int = 22
    # Width of the projector's two hidden layers: 128 costs half the time of 256 per step
    # (bench/bench_repa_step.py), and its run scored as well (docs/design.md).
    repa_hidden: int = 128
    vgg_weights: str | None = None  # local torchvision vgg16().features state dict (for REPA)
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    # Autoguidance (Karras et al. 2024) for free: the EMA weights after guide_step steps are
    # saved as guide.pt, a weaker model of the same kind that sampling steers away from, and
    # linked into the final checkpoint with the scale guide_guidance. 0 = no guide.
    guide_step: int = 1280
    guide_guidance: float = 3.0
    seed: int = 0
    save_dir: str = "./results"
    checkpoint_every: int = 50  # epochs between resumable checkpoints
    sample_every: int = 200  # epochs between sample grids
    max_minutes: float | None = None
    stop_at_epoch: int | None = None
    progress: bool = True
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


DEFAULT_GUIDANCE = 2.0  # classifier-free guidance scale when no guide model is used


@dataclass
class GenerateConfig:
    """One generation request: which model, which class, how many, how to sample."""

    model_path: str | None = None  # None: the weights shipped with the package
    vae_path: str | None = None  # default: the VAE recorded in the diffusion checkpoint
    class_name: str = "cat"
    num_samples: int = 10
    sampler: str = "dpmpp"  # "dpmpp" (DPM-Solver++ 2M) | "ddim" (eta) | "ddpm" (ancestral, all T)
    steps: int = 20
    # guidance scale; 1 = plain conditional model. None: the scale the model's guide was tuned
    # for (autoguidance), else DEFAULT_GUIDANCE (classifier-free).
    guidance: float | None = None
    guide_path: str | None = None  # weaker model for autoguidance; None: the recorded one; "none"
    # With autoguidance only: > 1 adds a classifier-free term that pushes towards the class
    # (a third UNet pass per step). 1 = off, the default: over 800 per class, 3 raised class
    # accuracy 0.70 -> 0.77 but cost FID, KID, precision and recall (docs/design.md).
    class_guidance: float = 1.0
    eta: float = 0.0  # DDIM stochasticity (0 = deterministic)
    seed: int = 0  # image i uses seed + i, whatever the batch size
    # Best of K: draw K candidates per image and keep the one a VGG16 class probe ranks highest
    # (selector.py). 1 = off, the default: K = 4 raised class accuracy 0.70 -> 0.87 and cut
    # KID x1000 42.6 -> 37.3 over 800 per class, at 4x the sampling time (docs/design.md).
    select: int = 1
    selector_path: str | None = None  # None: the selector shipped with the package
    vgg_weights: str | None = None  # for the selector: else $CATDOG_VGG_WEIGHTS, else download
    batch_size: int = 64
    output: str = "./samples"
    progress: bool = True


@dataclass
class DistillConfig:
    """Guidance distillation (Meng et al. 2023, stage one; catdog.distill): a student UNet, a
    copy of a trained model, learns the guided output of the model and its guide, so sampling
    needs one UNet pass a step instead of two."""

    model_path: str | None = None  # the teacher; None: the pair shipped with the package
    guide_path: str | None = None  # None: the teacher's recorded guide; "none": classifier-free
    vae_path: str | None = None  # default: the VAE recorded in the teacher's checkpoint
    guidance: float | None = None  # None: the scale the teacher's guide was tuned for
    data: DataConfig = field(default_factory=DataConfig)  # the training photos (and mirrors)
    # Other trained models (diffusion checkpoints on the same latent and schedule) whose guided
    # outputs, each with its own recorded guide at the same scale, are averaged with the
    # teacher's: the student learns the ensemble (docs/design.md, "Two models averaged").
    members: tuple[str, ...] = ()
    member_weights: tuple[float, ...] = ()  # the teacher's first; empty: equal
    # Latents sampled once by the guided teacher (DPM-Solver++ 20 steps): the student also
    # learns where sampling goes, off the photos' latents. Seeds from 2**31 up, away from the
    # seeds that generate and evaluate use.
    generated: int = 1000
    generated_fraction: float = 0.5  # of every batch; the rest are the photos' latents
    # 2,400: the shipped student's, 64 minutes on a 2-thread Xeon (its KID at 100 per class fell
    # 50.8 -> 43.4 -> 42.8 at 400, 800, 1,307 steps in a first try, and 40.4 by 2,400)
    steps: int = 2400
    batch_size: int = 128
    lr: float = 1e-4  # constant: the student starts as the teacher, a fine-tune
    ema_decay: float = 0.998
    grad_clip: float = 1.0
    seed: int = 0
    save_dir: str = "./results/distilled"
    checkpoint_every: int = 200  # steps
    max_minutes: float | None = None  # stop (resumably) after this much wall-clock time
    device: str = "auto"  # auto (CUDA, then MPS, then CPU) | cpu | cuda | cuda:N | mps
    progress: bool = True


@dataclass
class EvaluateConfig:
    """One evaluation: which images (a model pair to sample from, or a folder), against what."""

    model_path: str | None = None  # diffusion checkpoint to generate from ...
    vae_path: str | None = None  # default: the VAE recorded in the diffusion checkpoint
    images: str | None = None  # ... or a folder with cat/ and dog/ of images to score
    data: DataConfig = field(default_factory=DataConfig)  # the real images (data_dir, dataset)
    reference_split: str = "test"  # what the images are compared with
    train_split: str = "train"  # fits the class probe; the memorisation check looks here
    num_per_class: int = 800  # images generated per class
    sampler: str = GenerateConfig.sampler
    steps: int = GenerateConfig.steps
    guidance: float | None = GenerateConfig.guidance
    guide_path: str | None = GenerateConfig.guide_path
    class_guidance: float = GenerateConfig.class_guidance
    eta: float = 0.0
    seed: int = 0
    select: int = GenerateConfig.select
    selector_path: str | None = GenerateConfig.selector_path
    vgg_weights: str | None = GenerateConfig.vgg_weights
    batch_size: int = 64
    features: str = "inception"  # "inception" (FID standard) | "pixels" (smoke tests only)
    inception_weights: str | None = None  # default: $CATDOG_INCEPTION_WEIGHTS, else download
    cache_dir: str | None = "~/.cache/catdog/features"  # features of real splits; None = off
    reference_points: bool = True  # also score real train images and VAE reconstructions
    memorisation_quantile: float = 0.05  # "closer than almost all real test images": 5 %
    kid_subsets: int = 100
    output: str = "./results/eval.json"
    progress: bool = True


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base``."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


# The recipe of the shipped weights, shared by the cpu and gpu presets: an 8x12x12 latent
# (reconstructions under the KID target), KL 1e-3 and no adversarial term for the VAE, and a
# schedule shifted by -log 2 in log SNR for that latent's twice as many dimensions
# (docs/design.md, "The richer latent" and "A wider UNet for the 8-channel latent").
LATENT_CHANNELS = 8
VAE_RECIPE: dict[str, Any] = {
    "model": {"latent_channels": LATENT_CHANNELS},
    "losses": {"kl": {"weight": 1e-3}, "adv": {"weight": 0.0}},
}
DIFFUSION_RECIPE: dict[str, Any] = {
    "unet": {"latent_channels": LATENT_CHANNELS},
    "schedule": {"logsnr_shift": -0.693},
}

VAE_PRESETS: dict[str, dict[str, Any]] = {
    # A few thousand parameters: for tests and smoke runs (16 px images).
    "tiny": {
        "data": {"image_size": 16, "val_limit": 16},
        "model": {"image_size": 16, "channels": (8, 16), "latent_channels": 2, "norm_groups": 4},
        "disc": {"channels": (8, 16)},
        "batch_size": 8,
        "eval_every": 1,
        "viz_every": 1,
    },
    # The default: sized for a 2-core CPU at 48 px; the shipped weights were trained with it.
    "cpu": VAE_RECIPE,
    # Wider, for a GPU, with the same recipe (not yet run on a GPU).
    "gpu": merge(
        VAE_RECIPE,
        {
            "model": {"channels": (64, 128, 256), "blocks_per_level": 2},
            "disc": {"channels": (64, 128, 256)},
            "batch_size": 64,
        },
    ),
    # Decoder fine-tuning (--finetune-decoder) of a trained VAE: L1 + VGG at a low constant
    # learning rate, no adversarial term, noise on the latents (docs/design.md, "Decoder
    # fine-tuning").
    "decoder": {
        "losses": {"adv": {"weight": 0.0}},
        "epochs": 30,
        "lr": 1e-4,
        "lr_schedule": "constant",
        "latent_noise": 0.1,
    },
}


DIFFUSION_PRESETS: dict[str, dict[str, Any]] = {
    # For tests and smoke runs, on a tiny VAE's 2x8x8 latent.
    "tiny": {
        "unet": {
            "latent_channels": 2,
            "latent_size": 8,
            "channels": (8, 16),
            "blocks_per_level": 1,
            "heads": 2,
            "norm_groups": 4,
        },
        "schedule": {"num_timesteps": 100},
        "repa_weight": 0.0,  # no VGG16 weights needed
        "batch_size": 16,
        "checkpoint_every": 1,
        "sample_every": 1,
    },  # fmt: skip
    # The default, and what the shipped weights were trained with: a UNet wide enough for the
    # 8x12x12 latent, the widest that trains inside the hour on 2 CPU cores (docs/design.md,
    # "A wider UNet for the 8-channel latent" and "80/160: wider still").
    "cpu": merge(DIFFUSION_RECIPE, {"unet": {"channels": (80, 160)}}),
    # Wider, for a GPU: 7.1 M parameters, so the model and its guide (14.2 MB each in fp16)
    # ship beside the gpu VAE (15.3 MB) within 50 MB. Self-attention at 12x12 as well: it beat
    # its control in a CPU proxy run; it stays out of the cpu preset for its cost there (27 %
    # more time a step, docs/design.md "Self-attention at 12x12 as well"), which on a GPU, where
    # a UNet this small does not fill the device, should be far less (not measured yet).
    "gpu": merge(
        DIFFUSION_RECIPE,
        {
            "unet": {"channels": (96, 192), "blocks_per_level": 2, "attention_levels": (0, 1)},
            "batch_size": 256,
        },
    ),
}


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a (nested) config dataclass."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build a (nested) config dataclass from a dict; unknown keys are an error."""
    kwargs: dict[str, Any] = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key, value in data.items():
        if key not in fields:
            raise ValueError(f"unknown config key {key!r} for {cls.__name__}")
        ftype = fields[key].type
        sub = _DATACLASSES.get(ftype if isinstance(ftype, str) else getattr(ftype, "__name__", ""))
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def _preset(cls: type[T], presets: dict[str, dict[str, Any]], name: str) -> T:
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(presets)}")
    return from_dict(cls, merge(to_dict(cls()), presets[name]))


def vae_preset(name: str) -> VAETrainConfig:
    """The named VAE training preset as a config."""
    return _preset(VAETrainConfig, VAE_PRESETS, name)


def diffusion_preset(name: str) -> DiffusionTrainConfig:
    """The named diffusion training preset as a config."""
    return _preset(DiffusionTrainConfig, DIFFUSION_PRESETS, name)


_DATACLASSES: dict[str, type] = {
    c.__name__: c
    for c in (
        DataConfig,
        VAEConfig,
        DiscriminatorConfig,
        LossTerm,
        LossSchedule,
        VAETrainConfig,
        UNetConfig,
        ScheduleConfig,
        DiffusionTrainConfig,
        RuntimeConfig,
        GenerateConfig,
        DistillConfig,
        EvaluateConfig,
    )
}
