"""Small standalone loss callables for the VAE stage: KL, VGG16 perceptual, hinge adversarial,
latent classifier, center loss and latent alignment (VF loss); and REPA's alignment term.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from .errors import CatdogError, missing_file, one_line

VGG_WEIGHTS_ENV = "CATDOG_VGG_WEIGHTS"
# torchvision's official ImageNet VGG16 weights (VGG16_Weights.IMAGENET1K_V1).
VGG16_URL: str = torchvision.models.VGG16_Weights.IMAGENET1K_V1.url
# relu1_2, relu2_2, relu3_3 of torchvision's vgg16().features: enough for 48 px images, and the
# conv4 block (a third of the cost) is never run.
VGG_LAYERS: tuple[int, ...] = (3, 8, 15)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)), averaged over latent elements and batch."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss (Lim & Ye 2017; as in SAGAN / taming-transformers)."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator side of the hinge loss."""
    return -fake_logits.mean()


def center_loss(
    features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor
) -> torch.Tensor:
    """Center loss (Wen et al. 2016): mean squared distance of each feature to its class center.

    ``labels`` of -1 (unlabeled images) are ignored. Returns 0 when no label is known.
    """
    known = labels >= 0
    if not known.any():
        return features.sum() * 0.0
    diff = features[known] - centers[labels[known]]
    return diff.pow(2).mean()


def classifier_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on labelled images only (label -1 = unlabeled)."""
    known = labels >= 0
    if not known.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[known], labels[known])


def load_vgg16_features(
    weights: str | os.PathLike | None = None,
    off_hint: str = "turn the perceptual loss off with --lambda_vgg 0",
) -> nn.Sequential:
    """torchvision's ``vgg16().features`` with ImageNet weights, frozen and in eval mode.

    Weights come from ``weights`` (a local ``features`` state dict), else the file named by the
    ``CATDOG_VGG_WEIGHTS`` environment variable, else torchvision's download of the official
    weights (cached under ``$TORCH_HOME``).
    """
    features = torchvision.models.vgg16().features
    path = weights or os.environ.get(VGG_WEIGHTS_ENV)
    if path:
        if not Path(path).is_file():
            raise missing_file(path, "VGG16 weights file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if "features.0.weight" in state:  # a full vgg16() state dict also works
                state = {
                    k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")
                }
            features.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001 - any unreadable or mismatched file
            raise CatdogError(
                f"{path} is not a torchvision vgg16().features state dict ({one_line(exc)})"
            ) from None
    else:
        try:
            state = torch.hub.load_state_dict_from_url(VGG16_URL, progress=True, map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - URLError, HTTPError, timeouts...
            raise CatdogError(
                f"VGG16 weights unavailable: download from {VGG16_URL} failed ({exc}); pass "
                f"--vgg-weights PATH (a torchvision vgg16().features state dict), set "
                f"{VGG_WEIGHTS_ENV}=PATH, or {off_hint}"
            ) from None
        features.load_state_dict(
            {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
        )
    return features.eval().requires_grad_(False)


def vgg_input(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] as VGG16 expects them: in [0, 1], then normalised with ImageNet's
    per-channel mean and std (fp32 constants, on the images' device)."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device)[None, :, None, None]
    std = torch.tensor(IMAGENET_STD, device=images.device)[None, :, None, None]
    return ((images + 1) / 2 - mean) / std


def vgg_feature_map(vgg_features: nn.Sequential, images: torch.Tensor, layer: int) -> torch.Tensor:
    """The output of layer ``layer`` of ``vgg16().features`` for images in [-1, 1]."""
    return vgg_features[: layer + 1](vgg_input(images))


def alignment_loss(
    projected: torch.Tensor, target: torch.Tensor, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """REPA's alignment term (Yu et al. 2025): 1 - cosine similarity between projected denoiser
    features and target features (B, C, h, w), per position, averaged. The target is pooled to
    the projection's spatial size when they differ.

    ``keep`` (B, bool) averages over those samples only (the others' targets do not describe
    them); with none kept the term is 0, still a function of ``projected``."""
    if target.shape[-2:] != projected.shape[-2:]:
        target = F.adaptive_avg_pool2d(target.float(), projected.shape[-2:])
    per_sample = (1.0 - F.cosine_similarity(projected.float(), target.float(), dim=1)).flatten(1)
    if keep is None:
        return per_sample.mean()
    return (per_sample.mean(1) * keep).sum() / keep.sum().clamp(min=1)


def vf_loss(
    projected: torch.Tensor,
    target: torch.Tensor,
    cos_margin: float = 0.5,
    distmat_margin: float = 0.25,
) -> torch.Tensor:
    """VA-VAE's visual-foundation loss (Yao et al. 2025, eqs. 2-3) between a projected latent and
    frozen features, both (B, C, h, w) with the same h, w:

    - marginal cosine: mean of relu(1 - cos_margin - cos(projected_ij, target_ij)) per position;
    - marginal distance matrix: mean of relu(|S_p - S_t| - distmat_margin), where S is the
      (hw x hw) matrix of cosine similarities between the positions of one image.

    The margins leave the latent free once it is close enough, so reconstruction is not traded
    away for an exact copy of the features."""
    p = F.normalize(projected.float().flatten(2), dim=1)  # (B, C, hw), unit vectors per position
    t = F.normalize(target.float().flatten(2), dim=1)
    cos = F.relu(1.0 - cos_margin - (p * t).sum(dim=1)).mean()
    gram_p = p.transpose(1, 2) @ p
    gram_t = t.transpose(1, 2) @ t
    distmat = F.relu((gram_p - gram_t).abs() - distmat_margin).mean()
    return cos + distmat


class PerceptualLoss(nn.Module):
    """LPIPS-style VGG16 distance without learned weights (Zhang et al. 2018, eq. 1 with w = 1):
    unit-normalise each feature vector over channels, then average squared differences.

    ``features(target)`` can be computed once and cached when the targets do not change.
    """

    def __init__(self, vgg_features: nn.Sequential, layers: tuple[int, ...] = VGG_LAYERS) -> None:
        super().__init__()
        self.layers = layers
        self.vgg = vgg_features[: max(layers) + 1]

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised features at ``self.layers`` of images in [-1, 1]."""
        h = vgg_input(images)
        out = []
        for i, layer in enumerate(self.vgg):
            h = layer(h)
            if i in self.layers:
                out.append(h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, images: torch.Tensor, target_features: list[torch.Tensor]) -> torch.Tensor:
        feats = self.features(images)
        per_layer = [
            (f - t.to(f.dtype)).pow(2).sum(dim=1).mean()
            for f, t in zip(feats, target_features, strict=True)
        ]
        return torch.stack(per_layer).mean()
