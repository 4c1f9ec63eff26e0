"""Quality measures shared by training and evaluation: reconstruction PSNR and linear probes."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler


def psnr(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1] (peak-to-peak range 2)."""
    mse = (images.float() - reference.float()).pow(2).flatten(1).mean(dim=1).clamp_min(1e-10)
    return 10 * torch.log10(4.0 / mse)


def linear_probe_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    seed: int = 0,
) -> float:
    """Accuracy on the test set of a logistic regression fitted on the training features.

    Features are flattened and standardised; unlabeled (-1) training rows are ignored.
    """
    probe = fit_probe(train_features, train_labels, seed)
    predictions = probe.predict(test_features.flatten(1).double().numpy())
    return float(np.mean(predictions == test_labels.numpy()))


def fit_probe(features: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> Pipeline:
    """A standardised logistic regression fitted on labelled rows (unlabeled = -1 ignored)."""
    known = labels >= 0
    probe = make_pipeline(
        StandardScaler(), LogisticRegression(C=0.1, max_iter=2000, random_state=seed)
    )
    return probe.fit(features[known].flatten(1).double().numpy(), labels[known].numpy())
