"""Training-time quality measures: reconstruction PSNR and a linear probe on latent means."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
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
    known = train_labels >= 0
    x_train = train_features[known].flatten(1).double().numpy()
    y_train = train_labels[known].numpy()
    probe = make_pipeline(
        StandardScaler(), LogisticRegression(C=0.1, max_iter=2000, random_state=seed)
    )
    probe.fit(x_train, y_train)
    predictions = probe.predict(test_features.flatten(1).double().numpy())
    return float(np.mean(predictions == test_labels.numpy()))
