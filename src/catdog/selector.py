"""Best-of-K sample selection: a cat/dog probe on VGG16 features ranks candidate images.

Sampling with ``select = K`` draws K candidates for every requested image (candidate j of the
image with seed s uses seed ``s + j * CANDIDATE_STRIDE``; candidate 0 is the plain sample) and
keeps the one the selector gives the highest probability of the asked-for class. Each kept
image is a function of its own seed, whatever the batch size, and K = 1 is the plain sampler.

The selector is a logistic-regression probe (``metrics.fit_probe``: standardised, C = 0.1) on
VGG16 ImageNet features: relu4_3 and relu5_3, globally average-pooled, of the image upsampled
2x. It is fitted on the training split and its horizontal flips; the standardisation is folded
into one linear layer, so a selector file is 1,024 weights and a bias. The evaluation's own
networks (Inception-v3) are never used to select. Measured in ``bench/explore_rerank.py``:
docs/design.md, "Best-of-K selection".
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from . import checkpoint
from .data import to_float
from .errors import CatdogError
from .losses import vgg_input
from .metrics import fit_probe

LAYERS: tuple[int, ...] = (22, 29)  # relu4_3, relu5_3 of torchvision's vgg16().features
UPSAMPLE = 2  # 48x48 images reach relu5_3 at 6x6 instead of 3x3
# Candidate j of seed s uses seed s + j * stride. torch's CPU generator keeps only the low 32
# bits of a seed, so the stride and MAX_SELECT keep every candidate seed distinct below 2^32.
CANDIDATE_STRIDE = 1 << 24
MAX_SELECT = 64
FEATURES = 512 * len(LAYERS)


class ClassSelector(nn.Module):
    """p(class | image) for two classes from pooled VGG16 features and one linear layer."""

    def __init__(self, vgg_features: nn.Sequential) -> None:
        super().__init__()
        self.vgg = vgg_features[: max(LAYERS) + 1].eval().requires_grad_(False)
        self.head = nn.Linear(FEATURES, 1)  # the logit of class 1 (dog)

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
        """(N, 1024) pooled features of images in [-1, 1]."""
        out = []
        for chunk in images.split(batch_size):
            h = vgg_input(F.interpolate(chunk.float(), scale_factor=UPSAMPLE, mode="bilinear"))
            pooled = []
            for i, layer in enumerate(self.vgg):
                h = layer(h)
                if i in LAYERS:
                    pooled.append(h.mean(dim=(2, 3)))
            out.append(torch.cat(pooled, dim=1))
        return torch.cat(out)

    @torch.no_grad()
    def probability(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """p(labels[i] | images[i]) for images in [-1, 1] and labels in {0, 1}."""
        p_dog = torch.sigmoid(self.head(self.features(images)).squeeze(1))
        return torch.where(labels.to(p_dog.device) == 1, p_dog, 1 - p_dog)


def fit(vgg_features: nn.Sequential, images: torch.Tensor, labels: torch.Tensor,
        seed: int = 0, progress: bool = False) -> ClassSelector:  # fmt: skip
    """A selector fitted on uint8 images (N, 3, S, S) and their flips; labels in {0, 1}
    (unlabelled images, -1, are left out)."""
    known = labels >= 0
    images, labels = images[known], labels[known]
    if set(labels.tolist()) != {0, 1}:
        raise CatdogError("the selector needs labelled images of both classes (cat and dog)")
    selector = ClassSelector(vgg_features)
    both = torch.cat([images, images.flip(-1)])
    chunks = tqdm(both.split(256), desc="selector features", disable=not progress, leave=False)
    x = torch.cat([selector.features(to_float(c)) for c in chunks])
    probe = fit_probe(x, torch.cat([labels, labels]), seed)
    scaler, logistic = probe[0], probe[-1]
    scale = torch.from_numpy(scaler.scale_).float()
    weight = torch.from_numpy(logistic.coef_[0]).float() / scale
    bias = float(logistic.intercept_[0]) - float(weight @ torch.from_numpy(scaler.mean_).float())
    selector.head.weight.data.copy_(weight[None])
    selector.head.bias.data.fill_(bias)
    return selector


def save(selector: ClassSelector, path: str | os.PathLike, **record: object) -> None:
    """The head only (the VGG16 weights are torchvision's), as fp16 safetensors."""
    state = {k: v.detach().cpu() for k, v in selector.head.state_dict().items()}
    payload = {"state_dict": state, "layers": list(LAYERS), "upsample": UPSAMPLE, **record}
    checkpoint.save_safetensors(path, checkpoint.KIND_SELECTOR, payload)


def load(path: str | os.PathLike, vgg_features: nn.Sequential) -> ClassSelector:
    record = checkpoint.load(path, checkpoint.KIND_SELECTOR)
    if tuple(record.get("layers", ())) != LAYERS or record.get("upsample") != UPSAMPLE:
        raise CatdogError(f"selector {path} uses other VGG16 features than this catdog")
    selector = ClassSelector(vgg_features)
    try:
        selector.head.load_state_dict(record["state_dict"])
    except (KeyError, RuntimeError) as exc:
        raise CatdogError(f"selector {path} does not hold a selector head ({exc})") from None
    return selector


def check_select(select: int) -> None:
    if not 1 <= select <= MAX_SELECT:
        raise CatdogError(f"--select must be in 1..{MAX_SELECT}, got {select}")


def best_of(
    draw: Callable[[list[int]], torch.Tensor],
    selector: ClassSelector | None,
    labels: torch.Tensor,
    seeds: list[int],
    select: int,
) -> torch.Tensor:
    """For each image, the candidate (of ``select``) the selector ranks highest.

    ``draw(seeds)`` returns images in [-1, 1], one per seed, each a function of its own seed;
    candidate j of seed s is drawn with seed ``s + j * CANDIDATE_STRIDE``."""
    check_select(select)
    best = draw(seeds)
    if select == 1:
        return best
    if selector is None:
        raise CatdogError("--select above 1 needs a selector")
    best_p = selector.probability(best, labels)
    for j in range(1, select):
        images = draw([s + j * CANDIDATE_STRIDE for s in seeds])
        p = selector.probability(images, labels)
        better = p > best_p
        best[better], best_p[better] = images[better], p[better]
    return best
