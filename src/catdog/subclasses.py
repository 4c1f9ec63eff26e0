"""Sub-classes: k-means clusters of the training images' VGG16 features within each class.

Self-guided diffusion (Hu et al. 2023) conditions a diffusion model on clusters of
self-supervised image features instead of, or within, the class labels: each conditional
distribution the network must learn is then narrower than "any cat". Sampling by class draws
a cluster with the frequency it has in the training set (``UNet.draw_subclasses``), so the
distribution of a class is the mixture of its clusters, as in the data.

The features are those representation alignment already caches (a layer of ``vgg16().features``),
averaged over positions and L2-normalised; an image and its mirror image share one cluster
(their features are averaged). k-means is scikit-learn's. Only the centroids are kept: the
sub-class frequencies follow from the training images' sub-class labels (``frequencies``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import CatdogError


def pooled(feature_maps: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) feature maps -> (N, C) unit vectors: the mean over positions, normalised."""
    return F.normalize(feature_maps.float().mean((2, 3)), dim=1)


def mirror_pooled(feature_maps: torch.Tensor, num_images: int) -> torch.Tensor:
    """Rows laid out as the latent cache's blocks of ``num_images``, [copy 0, its mirror, copy 1,
    its mirror, ...] -> (copies * num_images, C): each image's pooled features averaged with its
    mirror image's and normalised, one row per (copy, image)."""
    x = pooled(feature_maps)
    return F.normalize(x.view(-1, 2, num_images, x.shape[1]).mean(1).flatten(0, 1), dim=1)


@dataclass
class Subclasses:
    """The clustering of one training set: ``centroids`` (num_classes, K, C)."""

    centroids: torch.Tensor

    def assign(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sub-class labels ``class * K + k``: each row's nearest centroid (Euclidean, as k-means
        assigns) of its own class."""
        k = self.centroids.shape[1]
        distance = (features.float()[:, None] - self.centroids[labels].float()).square().sum(2)
        return labels * k + distance.argmin(1)


def frequencies(fine_labels: torch.Tensor, num_classes: int, k: int) -> torch.Tensor:
    """How often each sub-class occurs within its class, (num_classes, K), from sub-class labels
    ``class * K + k``: what ``UNet.draw_subclasses`` draws from. A class with no rows gets a
    uniform row rather than a division by zero."""
    counts = torch.bincount(fine_labels.long(), minlength=num_classes * k).view(num_classes, k)
    counts = counts.float()
    counts[counts.sum(1) == 0] = 1.0
    return counts / counts.sum(1, keepdim=True)


def fit(features: torch.Tensor, labels: torch.Tensor, k: int, seed: int,
        num_classes: int = 2) -> Subclasses:  # fmt: skip
    """k-means with ``k`` clusters within each class of ``features`` (N, C) (unit rows)."""
    from sklearn.cluster import KMeans

    centroids = []
    for c in range(num_classes):
        x = features[labels == c].double().numpy()
        if len(x) < k:
            raise CatdogError(f"{k} sub-classes need at least {k} images of class {c}, "
                              f"the training set has {len(x)}")  # fmt: skip
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x)
        centroids.append(torch.from_numpy(km.cluster_centers_).float())
    return Subclasses(torch.stack(centroids))
