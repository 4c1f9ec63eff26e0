"""Inception-v3 pool3 features for FID/KID/precision-recall, with an on-disk cache for real splits.

The network is torch-fidelity's TF-compatible Inception (the FID standard), with torch-fidelity's
own resize to 299 px, so figures are comparable with published TF-FID numbers. Its weights come
from a local file (``--inception-weights`` or ``CATDOG_INCEPTION_WEIGHTS``) or torch-fidelity's
normal download. Only the 2048-d pool3 features are used (the offline weight file used in
development has a NaN fc layer on purpose: no Inception Score from it).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import checkpoint
from .errors import CatdogError, missing_file, one_line

INCEPTION_ENV = "CATDOG_INCEPTION_WEIGHTS"
INCEPTION_ID = "inception-v3-compat-pool3"


class FeatureExtractor(torch.nn.Module):
    """Maps uint8 images (N, 3, H, W) to float features (N, D). ``name`` is the feature space, as
    reported; ``cache_key`` keys the cache and also tells apart networks with other weights."""

    name: str = "features"

    @property
    def cache_key(self) -> str:
        """What cached features are filed under: the feature space, here nothing more."""
        return self.name


class InceptionPool3(FeatureExtractor):
    name = INCEPTION_ID

    def __init__(self, weights_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        import torch_fidelity
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        try:
            self.net = FeatureExtractorInceptionV3(
                "inception-v3-compat",
                ["2048"],
                feature_extractor_weights_path=None if weights_path is None else str(weights_path),
            )
        except Exception as exc:  # URLError is an OSError; a corrupt file, UnpicklingError etc.
            where = f"file {weights_path}" if weights_path else "torch-fidelity's download"
            raise CatdogError(
                f"cannot load the FID Inception weights from {where} ({type(exc).__name__}: "
                f"{one_line(exc, 200)}); offline, pass "
                f"--inception-weights FILE or set {INCEPTION_ENV} to "
                "weights-inception-2015-12-05-6726825d.pth"
            ) from None
        # Features cached from another weight file or another torch-fidelity (its resize) are
        # never reused. The fc layer is left out: pool3 does not depend on it.
        digest = hashlib.sha256(torch_fidelity.__version__.encode())
        for key, value in sorted(self.net.state_dict().items()):
            if not key.startswith("fc."):
                digest.update(key.encode())
                digest.update(value.contiguous().cpu().numpy().tobytes())
        self.weights_hash = digest.hexdigest()[:12]

    @property
    def cache_key(self) -> str:
        """The feature space and a hash of the weights pool3 depends on."""
        return f"{self.name}-{self.weights_hash}"

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)[0]


def load_inception(weights_path: str | os.PathLike | None = None) -> InceptionPool3:
    """The FID Inception network: from ``weights_path``, else ``$CATDOG_INCEPTION_WEIGHTS``, else
    torch-fidelity's download. A missing file or a failed download is a clear error."""
    path = weights_path or os.environ.get(INCEPTION_ENV) or None
    if path is not None and not Path(path).is_file():
        raise missing_file(path, "Inception weights file")
    return InceptionPool3(path).eval()


@torch.no_grad()
def extract(
    extractor: torch.nn.Module,
    images: torch.Tensor,
    *,
    batch_size: int = 100,
    desc: str = "features",
    progress: bool = True,
) -> torch.Tensor:
    """Features of uint8 images, in batches, with a progress bar."""
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    out = [
        extractor(batch).float().cpu()
        for batch in tqdm(images.split(batch_size), desc=desc, disable=not progress, leave=False)
    ]
    return torch.cat(out) if out else torch.empty(0)


def images_key(images: torch.Tensor) -> str:
    """Content hash of a uint8 image tensor (shape included)."""
    digest = hashlib.sha256(str(tuple(images.shape)).encode())
    digest.update(images.contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def cached_extract(
    extractor: FeatureExtractor,
    images: torch.Tensor,
    cache_dir: str | os.PathLike | None,
    **kwargs,
) -> torch.Tensor:
    """``extract``, reusing features saved under ``cache_dir`` for the same extractor (its
    ``cache_key``: feature space and weights) and pixels."""
    if cache_dir is None:
        return extract(extractor, images, **kwargs)
    path = Path(cache_dir) / f"{extractor.cache_key}-{images_key(images)}.pt"
    if path.is_file():
        try:
            features = torch.load(path, weights_only=True)
            if features.shape[0] == images.shape[0]:
                return features
        except Exception:  # noqa: BLE001 - any damage: recompute and replace the entry
            pass
    features = extract(extractor, images, **kwargs)
    buffer = io.BytesIO()
    torch.save(features, buffer)
    checkpoint.atomic_write_bytes(path, buffer.getvalue())
    return features
