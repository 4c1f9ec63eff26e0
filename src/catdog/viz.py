"""Pictures: reconstruction grids, t-SNE of latent means, loss curves. Every file is written
atomically (rendered to memory, then renamed into place)."""

from __future__ import annotations

import io
import json
import os

import matplotlib

matplotlib.use("Agg")  # headless; chosen here, where plotting is the module's one concern
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

from . import CLASS_NAMES  # noqa: E402
from .checkpoint import atomic_write_bytes  # noqa: E402
from .data import to_uint8  # noqa: E402


def save_png(path: str | os.PathLike, image: torch.Tensor, scale: int = 1) -> None:
    """Save a (3, H, W) image in [-1, 1] as PNG, optionally enlarged by an integer ``scale``."""
    array = to_uint8(image).permute(1, 2, 0).numpy()
    pil = Image.fromarray(array)
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def image_grid(images: torch.Tensor, nrow: int) -> torch.Tensor:
    """Tile (N, 3, H, W) images in [-1, 1] into one image, with a 2-pixel white border."""
    return torchvision.utils.make_grid(images, nrow=nrow, padding=2, pad_value=1.0)


def save_reconstruction_grid(
    path: str | os.PathLike, originals: torch.Tensor, reconstructions: torch.Tensor
) -> None:
    """Originals on the top row, their reconstructions below."""
    n = originals.shape[0]
    save_png(path, image_grid(torch.cat([originals, reconstructions]), nrow=n), scale=2)


def save_figure(fig: plt.Figure, path: str | os.PathLike) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def save_tsne(
    path: str | os.PathLike,
    latents: torch.Tensor,
    labels: torch.Tensor,
    *,
    seed: int = 0,
    title: str = "t-SNE of latent means",
) -> None:
    """2D t-SNE (scikit-learn) of flattened latents, coloured by class. Nothing is drawn for
    fewer than two latents (there is no neighbourhood to embed)."""
    x = latents.flatten(1).double().numpy()
    if len(x) < 2:
        return
    # scikit-learn requires perplexity < number of points.
    perplexity = float(min(30, max(2, (len(x) - 1) // 3), len(x) - 1))
    # Exact t-SNE is much faster than Barnes-Hut below ~1000 points (seconds instead of a minute).
    method = "exact" if len(x) <= 1000 else "barnes_hut"
    embedded = TSNE(
        2, perplexity=perplexity, init="pca", random_state=seed, method=method
    ).fit_transform(x)
    fig, ax = plt.subplots(figsize=(5, 5))
    for label, name in enumerate(CLASS_NAMES):
        pts = embedded[labels.numpy() == label]
        ax.scatter(pts[:, 0], pts[:, 1], s=6, alpha=0.7, label=name)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def save_loss_curves(
    path: str | os.PathLike, records: list[dict], keys: list[str], x: str = "epoch"
) -> None:
    """One panel per metric key present in the records, against ``x`` (epoch, or step)."""
    keys = [k for k in keys if any(k in r for r in records)]
    if not records or not keys:
        return
    cols = min(3, len(keys))
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        pts = [(r[x], r[key]) for r in records if key in r and r[key] is not None]
        if pts:
            ax.plot(*np.array(pts).T, marker="." if len(pts) < 30 else None)
        ax.set_title(key)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)
