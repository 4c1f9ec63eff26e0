"""Measured quality: FID, KID, class accuracy, precision/recall and memorisation of a generator.

All figures are computed from one feature space (Inception-v3 pool3 by default):

- **FID** and **KID** (torch-fidelity's estimators), overall and per class. KID is unbiased and
  the better guide at small n; FID is biased upward at small n.
- **Class accuracy**: the share of generated images that a logistic-regression probe, fitted on
  features of the real training split, assigns to the class they were asked for. The probe's
  accuracy on the real reference split is reported beside it as the ceiling.
- **Precision / recall**: k-nearest-neighbour manifolds with k = 3 (Kynkäänniemi et al. 2019).
- **Memorisation**: the share of images whose nearest training image is closer than the
  ``q``-quantile (5 %) of the same distance for real reference images. The threshold is set on
  one half of the reference split and the real rate measured on the other half, so real images
  score about ``q``; a generator that copies its training images scores about 1.

Reference points, computed the same way: real training images and VAE reconstructions of the
reference split, each scored against the reference split.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_kid import (
    KEY_METRIC_KID_MEAN,
    KEY_METRIC_KID_STD,
    kid_features_to_metric,
)
from torch_fidelity.metric_prc import calculate_precision_recall_full

from . import CLASS_NAMES, checkpoint, viz
from .config import EvaluateConfig, GenerateConfig, to_dict
from .data import ImageSet, load_split, read_class_folder, to_float, to_uint8
from .errors import CatdogError
from .features import FeatureExtractor, cached_extract, extract, load_inception
from .generate import _check as check_sampling
from .generate import (
    check_class_guidance,
    load_selector,
    resolve_model_path,
    sample_images,
)
from .metrics import fit_probe
from .train_vae import encode_means

# --------------------------------------------------------------------------- metrics on features


def _check_sizes(what: str, minimum: int, *sets: torch.Tensor) -> None:
    sizes = [len(x) for x in sets]
    if min(sizes) < minimum:
        raise CatdogError(f"{what} needs at least {minimum} images in each set, got "
                          f"{' and '.join(map(str, sizes))}")  # fmt: skip


def fid(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (torch-fidelity)."""
    _check_sizes("FID", 2, a, b)  # a covariance needs two rows
    stats = [fid_features_to_statistics(x.double()) for x in (a, b)]
    return float(fid_statistics_to_metric(*stats, verbose=False)["frechet_inception_distance"])


def kid(
    a: torch.Tensor, b: torch.Tensor, *, subsets: int = 100, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance (cubic polynomial kernel, unbiased MMD^2): mean and std over
    ``subsets`` random subsets of size min(1000, len(a), len(b))."""
    _check_sizes("KID", 2, a, b)  # the unbiased MMD^2 divides by m (m - 1)
    size = min(1000, len(a), len(b))
    out = kid_features_to_metric(
        a.double(), b.double(), kid_subsets=subsets, kid_subset_size=size, kid_kernel="poly",
        kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1,
        rng_seed=seed, verbose=False,
    )  # fmt: skip
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD])


def precision_recall(
    generated: torch.Tensor, real: torch.Tensor, k: int = 3
) -> tuple[float, float]:
    """Improved precision and recall (k-NN manifolds), torch-fidelity's implementation."""
    _check_sizes(f"precision/recall with k = {k}", k + 1, generated, real)  # k neighbours + self
    return calculate_precision_recall_full(generated.float(), real.float(), neighborhood=k)


def nearest_distance(x: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Euclidean distance from each row of ``x`` to its nearest row of ``bank``."""
    chunks = x.float().split(512)
    return torch.cat([torch.cdist(chunk, bank.float()).min(1).values for chunk in chunks])


def memorisation_threshold(reference: torch.Tensor, train: torch.Tensor, q: float) -> float:
    """The ``q``-quantile of the reference images' distance to their nearest training image."""
    return float(torch.quantile(nearest_distance(reference, train), q))


def memorisation_rate(x: torch.Tensor, train: torch.Tensor, threshold: float) -> float:
    """Share of images closer to a training image than ``threshold``."""
    return float((nearest_distance(x, train) < threshold).float().mean())


def score(
    images: torch.Tensor,
    labels: torch.Tensor,
    reference: torch.Tensor,
    reference_labels: torch.Tensor,
    *,
    subsets: int = 100,
    seed: int = 0,
) -> dict[str, float]:
    """FID, KID, precision and recall of a feature set against the reference, overall and per
    class (FID and KID)."""
    out: dict[str, float] = {"n": len(images), "fid": fid(images, reference)}
    out["kid"], out["kid_std"] = kid(images, reference, subsets=subsets, seed=seed)
    out["precision"], out["recall"] = precision_recall(images, reference)
    for label, name in enumerate(CLASS_NAMES):
        a, b = images[labels == label], reference[reference_labels == label]
        out[f"fid_{name}"] = fid(a, b)
        out[f"kid_{name}"] = kid(a, b, subsets=subsets, seed=seed)[0]
    return out


# --------------------------------------------------------------------------- feature extractors


class PixelFeatures(FeatureExtractor):
    """Downsampled raw pixels (16x16x3 = 768 values). For smoke tests only: figures computed on
    these are not FID and are not comparable with anything published."""

    name = "pixels-16"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0
        return F.interpolate(x, size=(16, 16), mode="area").flatten(1)


def make_extractor(cfg: EvaluateConfig) -> FeatureExtractor:
    if cfg.features == "inception":
        return load_inception(cfg.inception_weights)
    if cfg.features == "pixels":
        return PixelFeatures()
    raise CatdogError(f"unknown feature space {cfg.features!r}; choose inception or pixels")


# --------------------------------------------------------------------------- the evaluation


def _check_counts(data: ImageSet, what: str) -> None:
    for label, name in enumerate(CLASS_NAMES):
        count = int((data.labels == label).sum())
        if count < 2:
            raise CatdogError(
                f"{what} has {count} {name} image(s); at least 2 per class are needed"
            )


def _load_model(cfg: EvaluateConfig) -> tuple[Any, ...]:
    """The model, its schedule, VAE, guide and selector (None unless ``cfg.select`` > 1); sets
    ``cfg.guidance`` to the scale in use."""
    request = GenerateConfig(num_samples=len(CLASS_NAMES) * cfg.num_per_class,
                             sampler=cfg.sampler, steps=cfg.steps, guidance=cfg.guidance,
                             class_guidance=cfg.class_guidance, seed=cfg.seed, eta=cfg.eta,
                             batch_size=cfg.batch_size, select=cfg.select)  # fmt: skip
    check_sampling(request)
    unet, schedule, record = checkpoint.load_diffusion(cfg.model_path)
    check_sampling(request, schedule.num_timesteps)
    vae, vae_path = checkpoint.find_vae(cfg.model_path, record, cfg.vae_path)
    guide, link = checkpoint.find_guide(cfg.model_path, record, cfg.guide_path)
    cfg.guidance = checkpoint.resolve_guidance(cfg.guidance, link)
    check_class_guidance(cfg.class_guidance, guide, record)
    class_selector = load_selector(cfg.select, cfg.selector_path, cfg.vgg_weights)
    return unet, schedule, vae, vae_path, guide, class_selector, record


def generate_images(
    unet: torch.nn.Module,
    schedule: Any,
    vae: torch.nn.Module,
    cfg: EvaluateConfig,
    guide: torch.nn.Module | None = None,
    class_selector: torch.nn.Module | None = None,
) -> ImageSet:
    """``num_per_class`` uint8 images of each class; cats use seeds seed.., dogs seed + n..
    (``cfg.guidance`` must be resolved: a number); best of ``cfg.select`` with a selector."""
    n = cfg.num_per_class
    labels = torch.arange(len(CLASS_NAMES)).repeat_interleave(n)
    seeds = [cfg.seed + i for i in range(len(labels))]
    steps = schedule.num_timesteps if cfg.sampler == "ddpm" else cfg.steps
    images = to_uint8(sample_images(unet, schedule, vae, labels, seeds, select=cfg.select,
                                    class_selector=class_selector, sampler=cfg.sampler,
                                    steps=steps, guidance=cfg.guidance, eta=cfg.eta,
                                    batch_size=cfg.batch_size, progress=cfg.progress,
                                    guide=guide, class_guidance=cfg.class_guidance))  # fmt: skip
    best_of = f", best of {cfg.select}" if cfg.select > 1 else ""
    return ImageSet(images, labels, f"generated by {cfg.model_path}{best_of}")


@torch.no_grad()
def reconstruct(vae: torch.nn.Module, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """VAE reconstructions (posterior mean, decoded) of uint8 images, as uint8."""
    means = encode_means(vae, images, batch_size)
    return torch.cat([to_uint8(vae.decode(m)) for m in means.split(batch_size)])


def evaluate(cfg: EvaluateConfig, extractor: FeatureExtractor | None = None) -> dict[str, Any]:
    """Score a model pair (generating ``num_per_class`` images per class) or a folder of images
    against the reference split; write the JSON report to ``cfg.output`` and return it."""
    if cfg.model_path is not None and cfg.images is not None:
        raise CatdogError("give either a model (--model-path) or a folder of images (--images)")
    if cfg.images is None:
        cfg.model_path = resolve_model_path(cfg.model_path)  # default: the shipped weights
    if cfg.num_per_class < 2:
        raise CatdogError(f"--num-per-class must be at least 2, got {cfg.num_per_class}")
    if cfg.kid_subsets < 1:
        raise CatdogError(f"--kid-subsets must be at least 1, got {cfg.kid_subsets}")
    if not 0 < cfg.memorisation_quantile < 1:
        raise CatdogError("--memorisation-quantile must be between 0 and 1")
    shared = set(cfg.train_split.split("+")) & set(cfg.reference_split.split("+"))
    if shared:  # the probe would be fitted on the reference, and its images match themselves
        raise CatdogError(
            f"--train-split {cfg.train_split} and --reference-split {cfg.reference_split} share "
            f"{'+'.join(sorted(shared))}; the reference split must be held out (the class probe "
            "and the memorisation check are fitted on the training split)"
        )
    if "unlabeled" in cfg.train_split.split("+"):  # the diffusion stage never trains on it
        raise CatdogError(
            f"--train-split {cfg.train_split} includes unlabeled: the class probe and the "
            "memorisation check need the labelled images a diffusion model trains on"
        )
    vae = None
    if cfg.model_path is not None:
        unet, schedule, vae, vae_path, guide, class_selector, record = _load_model(cfg)
        cfg.data.image_size = vae.cfg.image_size
    output = Path(cfg.output)
    if output.suffix in (".png", ".md"):
        raise CatdogError(f"--output {output} is the JSON report, and its .png grid and .md table "
                          "are written beside it: give it another suffix (.json)")  # fmt: skip
    checkpoint.check_output_file(output)
    if cfg.cache_dir is not None:
        checkpoint.check_writable(Path(os.path.expanduser(cfg.cache_dir)))
    reference = load_split(cfg.data, cfg.reference_split)
    train = load_split(cfg.data, cfg.train_split)
    _check_counts(reference, f"reference split {reference.source}")
    _check_counts(train, f"training split {train.source}")
    if cfg.images is not None:
        generated = read_class_folder(Path(cfg.images), cfg.data.image_size)
        _check_counts(generated, f"image folder {cfg.images}")
    extractor = extractor if extractor is not None else make_extractor(cfg)
    if cfg.model_path is not None:
        generated = generate_images(unet, schedule, vae, cfg, guide, class_selector)
        viz.save_png(output.with_suffix(".png"), viz.image_grid(
            to_float(torch.cat([generated.images[generated.labels == c][:16] for c in (0, 1)])),
            nrow=16), scale=2)  # fmt: skip
    cache = None if cfg.cache_dir is None else os.path.expanduser(cfg.cache_dir)
    kw = {"progress": cfg.progress}
    f_ref = cached_extract(extractor, reference.images, cache, desc="reference features", **kw)
    f_train = cached_extract(extractor, train.images, cache, desc="training features", **kw)
    f_gen = extract(extractor, generated.images, desc="features of the scored images", **kw)

    probe = fit_probe(f_train, train.labels, cfg.seed)
    half_a, half_b = f_ref[0::2], f_ref[1::2]
    threshold = memorisation_threshold(half_a, f_train, cfg.memorisation_quantile)

    def row(features: torch.Tensor, labels: torch.Tensor, *, accuracy: bool = True) -> dict:
        out = score(features, labels, f_ref, reference.labels, subsets=cfg.kid_subsets,
                    seed=cfg.seed)  # fmt: skip
        if accuracy:
            predicted = torch.from_numpy(probe.predict(features.double().numpy()))
            out["class_accuracy"] = float((predicted == labels).float().mean())
        out["memorisation"] = memorisation_rate(features, f_train, threshold)
        return out

    rows = {"scored": row(f_gen, generated.labels)}
    if cfg.reference_points:
        # The probe was fitted on the training images: its accuracy there says nothing.
        rows["real_train"] = row(f_train, train.labels, accuracy=False)
        if vae is not None:
            recon = reconstruct(vae, reference.images)
            f_recon = cached_extract(extractor, recon, cache, desc="reconstruction features", **kw)
            rows["vae_reconstruction"] = row(f_recon, reference.labels)
    predicted_ref = torch.from_numpy(probe.predict(f_ref.double().numpy()))
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "features": extractor.name,
        "scored": generated.source,
        "reference": {"source": reference.source, "n": len(reference)},
        "train": {"source": train.source, "n": len(train)},
        "config": to_dict(cfg),
        "rows": rows,
        "real_reference": {
            "probe_accuracy": float((predicted_ref == reference.labels).float().mean()),
            "memorisation": memorisation_rate(half_b, f_train, threshold),
        },
        "memorisation_threshold": threshold,
    }
    if vae is not None:
        report["vae_path"] = str(vae_path)
        report["guide"] = checkpoint.guidance_kind(record, guide)
    checkpoint.atomic_write_json(output, report)
    return report


ROW_NAMES = {
    "scored": "scored images",
    "real_train": "real training images",
    "vae_reconstruction": "VAE reconstructions",
}


def format_table(report: dict[str, Any]) -> str:
    """A readable Markdown table of a report."""
    cols = ["n", "fid", "kid", "fid_cat", "fid_dog", "kid_cat", "kid_dog", "precision",
            "recall", "class_accuracy", "memorisation"]  # fmt: skip
    head = ["", "n", "FID", "KIDx1000", "FID cat", "FID dog", "KIDx1000 cat", "KIDx1000 dog",
            "precision", "recall", "class acc.", "memorisation"]  # fmt: skip

    def fmt(key: str, value: Any) -> str:
        if value is None:
            return "-"
        if key == "n":
            return str(value)
        if key.startswith("kid"):
            return f"{1000 * value:.2f}"
        if key.startswith("fid"):
            return f"{value:.2f}"
        return f"{value:.3f}"

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, values in report["rows"].items():
        cells = [fmt(c, values.get(c)) for c in cols]
        lines.append(f"| {ROW_NAMES.get(key, key)} | " + " | ".join(cells) + " |")
    real = report["real_reference"]
    lines.append(
        f"| real reference images | {report['reference']['n']} | - | - | - | - | - | - | - | - | "
        f"{real['probe_accuracy']:.3f} | {real['memorisation']:.3f} |"
    )
    lines.append("")
    lines.append(
        f"Features: {report['features']}. Reference: {report['reference']['source']} "
        f"({report['reference']['n']} images). Class probe fitted on {report['train']['source']}. "
        f"Memorisation: share of images closer to a training image than "
        f"{100 * report['config']['memorisation_quantile']:.0f} % of real reference images are."
    )
    return "\n".join(lines)
