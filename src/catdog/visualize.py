"""Pictures that explain the diffusion stage: the denoising path, GIFs of the reverse process,
and original / reconstruction / noised-and-denoised comparisons.

Every panel is labelled with what it shows: decoded *predicted x0* (the model's current guess
of the clean latent) or the decoded *current latent x_t*.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import imageio.v2 as imageio
import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image
from sklearn.decomposition import PCA

from . import CLASS_NAMES
from .checkpoint import atomic_write_bytes
from .data import ImageSet, to_float, to_uint8
from .diffusion import NoiseSchedule, ddim_sample, per_sample_noise
from .generate import decode_latents
from .viz import save_figure


@torch.no_grad()
def reverse_trajectory(
    unet: torch.nn.Module, schedule: NoiseSchedule, label: int, seed: int, *, steps: int = 50,
    guidance: float = 2.0, guide: torch.nn.Module | None = None,
) -> tuple[list[int], torch.Tensor, torch.Tensor]:  # fmt: skip
    """One reverse DDIM run for one class: the timesteps, the latents x_t after each step
    (steps + 1, C, h, w, starting with the noise), and the predicted x0 at each step."""
    shape = (unet.cfg.latent_channels, unet.cfg.latent_size, unet.cfg.latent_size)
    generator = torch.Generator().manual_seed(seed)
    x_T = per_sample_noise(shape, [generator])
    labels = unet.draw_subclasses(torch.tensor([label]), [generator])  # as sample_latents
    timesteps = schedule.spaced_timesteps(steps)
    xs, x0s, ts = [x_T[0]], [], [timesteps[0]]

    def record(i: int, t: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        xs.append(x[0])
        x0s.append(x0[0])
        ts.append(t)

    ddim_sample(unet, x_T, timesteps, labels=labels, schedule=schedule,
                null_label=unet.null_label, guidance=guidance, callback=record,
                guide=guide)  # fmt: skip
    return ts, torch.stack(xs), torch.stack(x0s)


def _show(ax: plt.Axes, image: torch.Tensor, title: str) -> None:
    ax.imshow(to_uint8(image).permute(1, 2, 0).numpy())
    ax.set_title(title, fontsize=7)
    ax.axis("off")


@dataclass
class LatentMap:
    """A 2D PCA of real (normalised) latents: the basis and the projected points with labels.

    Small enough to ship with the weights, so the denoising-path figure can be drawn where no
    real images are at hand."""

    mean: torch.Tensor  # (D,)
    components: torch.Tensor  # (2, D)
    points: torch.Tensor  # (N, 2)
    labels: torch.Tensor  # (N,)

    @classmethod
    def fit(cls, latents: torch.Tensor, labels: torch.Tensor) -> LatentMap:
        flat = latents.flatten(1).double().numpy()
        pca = PCA(2, random_state=0).fit(flat)
        return cls(torch.from_numpy(pca.mean_).float(), torch.from_numpy(pca.components_).float(),
                   torch.from_numpy(pca.transform(flat)).float(), labels.clone())  # fmt: skip

    def project(self, latents: torch.Tensor) -> np.ndarray:
        return ((latents.flatten(1).float() - self.mean) @ self.components.T).numpy()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "components": self.components, "points": self.points,
                "labels": self.labels}  # fmt: skip


def panel_title(name: str, show: str, i: int, ts: list[int]) -> str:
    """The caption of step ``i`` (0-based) of a ``reverse_trajectory``: its x0 was predicted
    from the latent at ``ts[i]``, and the step leaves the latent at ``ts[i + 1]``."""
    if show == "x0":
        return f"{name}: predicted x0\nstep {i + 1}, from t={ts[i]}"
    return f"{name}: current x_t\nstep {i + 1}, t={ts[i + 1]}"


def shown_steps(steps: int, shown: int) -> list[int]:
    """Up to ``shown`` distinct steps (0-based) of a ``steps``-step trajectory, evenly spread from
    the first to the last: all of them when there are no more than ``shown``."""
    return sorted({round(i) for i in np.linspace(0, steps - 1, min(shown, steps))})


def save_denoising_path(
    path: str | os.PathLike,
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    schedule: NoiseSchedule,
    latent_map: LatentMap,
    *,
    seed: int = 0,
    steps: int = 50,
    guidance: float = 2.0,
    guide: torch.nn.Module | None = None,
    shown: int = 6,
    show: str = "x0",
) -> None:
    """One reverse trajectory per class: decoded images at up to ``shown`` steps (predicted x0, or
    the current latent x_t with ``show='xt'``), and beside them the trajectory's latent path
    projected (PCA) onto the cloud of real latents (normalised), coloured by class."""
    cloud, real_labels = latent_map.points.numpy(), latent_map.labels
    picks = shown_steps(steps, shown)
    shown = len(picks)
    fig = plt.figure(figsize=(2 + 1.3 * shown + 3.5, 2.6 * len(CLASS_NAMES)))
    grid = fig.add_gridspec(len(CLASS_NAMES), shown + 3)
    for row, name in enumerate(CLASS_NAMES):
        ts, xs, x0s = reverse_trajectory(unet, schedule, row, seed + row, steps=steps,
                                         guidance=guidance, guide=guide)  # fmt: skip
        for col, i in enumerate(picks):
            image = decode_latents(vae, (x0s[i] if show == "x0" else xs[i + 1])[None])[0]
            _show(fig.add_subplot(grid[row, col]), image, panel_title(name, show, i, ts))
        ax = fig.add_subplot(grid[row, shown:])
        for label_id, class_name in enumerate(CLASS_NAMES):
            pts = cloud[real_labels.numpy() == label_id]
            ax.scatter(pts[:, 0], pts[:, 1], s=4, alpha=0.35, label=f"real {class_name}")
        traj = latent_map.project(xs)
        ax.plot(traj[:, 0], traj[:, 1], "k.-", lw=1, ms=3, label=f"path to a {name} (x_t)")
        ax.scatter(*traj[0], marker="x", c="k", s=40, label="start (noise)")
        ax.scatter(*traj[-1], marker="*", c="red", s=90, label="end")
        ax.set_title(f"latent path of the {name} sample, PCA of real test latents", fontsize=8)
        ax.legend(fontsize=6, loc="best")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, path)


def save_denoising_gif(
    path: str | os.PathLike,
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    schedule: NoiseSchedule,
    label: int,
    *,
    seed: int = 0,
    steps: int = 50,
    guidance: float = 2.0,
    guide: torch.nn.Module | None = None,
    scale: int = 4,
) -> None:
    """Animated GIF from noise to image: each frame shows the decoded current latent x_t
    (left) and the decoded predicted x0 (right). The first frame is the starting noise x_T,
    beside a grey square (nothing is predicted before the first step); then one frame per
    step, the last held for 1.5 s."""
    ts, xs, x0s = reverse_trajectory(unet, schedule, label, seed, steps=steps, guidance=guidance,
                                     guide=guide)  # fmt: skip
    current = decode_latents(vae, xs)
    predicted = decode_latents(vae, x0s)
    predicted = torch.cat([torch.zeros_like(predicted[:1]), predicted])  # 0 = mid-grey
    frames = []
    for cur, pred in zip(current, predicted, strict=True):
        pair = torch.cat([cur, torch.ones(3, cur.shape[1], 2), pred], dim=2)
        frame = to_uint8(pair).permute(1, 2, 0).numpy()
        frames.append(np.kron(frame, np.ones((scale, scale, 1), dtype=np.uint8)))
    durations = [80] * (len(frames) - 1) + [1500]  # milliseconds; the final image is held
    # Pillow directly, with its fast octree palette: imageio's default quantiser takes ~0.3 s a
    # frame here, this ~5 ms, with no visible difference on these smooth small images.
    paletted = [
        Image.fromarray(f).quantize(colors=256, method=Image.Quantize.FASTOCTREE) for f in frames
    ]
    buffer = io.BytesIO()
    paletted[0].save(buffer, format="GIF", save_all=True, append_images=paletted[1:],
                     duration=durations, loop=0)  # fmt: skip
    atomic_write_bytes(path, buffer.getvalue())


@torch.no_grad()
def save_comparison(
    path: str | os.PathLike,
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    schedule: NoiseSchedule,
    originals: ImageSet,
    names: list[str],
    *,
    noise_levels: tuple[int, ...] = (200, 500, 800),
    steps: int = 25,
    guidance: float = 2.0,
    guide: torch.nn.Module | None = None,
    seed: int = 0,
) -> None:
    """Rows: real images, labelled with ``names``. Columns: the original, its VAE
    reconstruction, and its latent noised to step t and denoised back with its own class label
    (SDEdit, Meng et al. 2022; for a UNet with sub-classes, one drawn from its class's)."""
    if len(names) != len(originals.images):
        raise ValueError(f"{len(names)} names for {len(originals.images)} images")
    x = to_float(originals.images)
    mean, _ = vae.encode(x)
    recon = vae.decode(mean).clamp(-1, 1)
    z0 = vae.normalize_latent(mean)
    columns = [("original", x), ("VAE reconstruction", recon)]
    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(x))]
    noise = per_sample_noise(z0.shape[1:], gens)
    labels = unet.draw_subclasses(originals.labels, gens)  # with sub-classes, one per image
    for t in noise_levels:
        t = min(t, schedule.num_timesteps)
        x_t = schedule.add_noise(z0, noise, torch.full((len(x),), t))
        timesteps = [s for s in schedule.spaced_timesteps(steps) if s < t]
        z = ddim_sample(unet, x_t, [t, *timesteps], labels=labels, schedule=schedule,
                        null_label=unet.null_label, guidance=guidance, guide=guide)  # fmt: skip
        columns.append((f"noised to t={t},\ndenoised", decode_latents(vae, z)))
    fig, axes = plt.subplots(len(x), len(columns), figsize=(1.6 * len(columns), 1.7 * len(x)),
                             squeeze=False)  # fmt: skip
    for row in range(len(x)):
        for col, (title, images) in enumerate(columns):
            _show(axes[row, col], images[row], f"{title}" if row == 0 else "")
            if col == 0:
                axes[row, col].set_title(f"{title}\n({names[row]})", fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def comparison_rows(labels: torch.Tensor, per_class: int) -> tuple[torch.Tensor, list[str]]:
    """The first ``per_class`` images of each class (positions in ``labels``, in file order) and
    their names, one per position: a class with fewer images gives fewer rows."""
    index, names = [], []
    for label, name in enumerate(CLASS_NAMES):
        rows = torch.nonzero(labels == label).flatten()[:per_class]
        index.append(rows)
        names += [f"test {name} #{k}" for k in range(len(rows))]
    return torch.cat(index), names


def load_gif_frames(path: str | Path) -> list[np.ndarray]:
    """The frames of a GIF (for tests and inspection)."""
    return list(imageio.mimread(path))


def make_figures(
    model_path: str | None, output: str | os.PathLike, *, vae_path: str | None = None,
    data_dir: str | None = None, steps: int = 50, guidance: float | None = None,
    guide_path: str | None = None, seed: int = 0,
    comparisons: int = 4, samples_per_class: int = 16, real_images: bool = True,
) -> list[Path]:  # fmt: skip
    """All diffusion figures for a model pair: the denoising path, one GIF per class, one sample
    grid per class and the comparison grid. Real latents come from the test split of the data
    the model was trained on (or ``data_dir``); where that data is absent, the denoising path
    uses the latent map shipped with the weights and the comparison (which needs real images)
    is skipped, with a note. ``real_images=False`` does that without looking for data, and
    ``samples_per_class=0`` skips the sample grids."""
    from . import checkpoint
    from .config import DataConfig, from_dict
    from .data import balanced_subset, load_split
    from .errors import CatdogError
    from .generate import (
        check_scales,
        check_seed,
        check_steps,
        resolve_model_path,
        sample_latents,
    )
    from .train_vae import encode_means
    from .viz import image_grid, save_png

    check_steps(steps)
    check_scales(guidance=guidance)
    check_seed(seed, max(samples_per_class, len(CLASS_NAMES), comparisons))
    out = Path(output)
    if out.is_file():
        raise CatdogError(f"output {out} is a file; give a folder for the figures")
    model_path = resolve_model_path(model_path)
    unet, schedule, record = checkpoint.load_diffusion(model_path)
    check_steps(steps, schedule.num_timesteps)
    vae, _ = checkpoint.find_vae(model_path, record, vae_path)
    guide, link = checkpoint.find_guide(model_path, record, guide_path)
    guidance = checkpoint.resolve_guidance(guidance, link)
    data_cfg = from_dict(DataConfig, record["train_config"]["data"])
    if data_dir is not None:
        data_cfg.data_dir = data_dir
    data_cfg.image_size = vae.cfg.image_size
    test = None
    if real_images or "latent_map" not in record:
        try:
            test = balanced_subset(load_split(data_cfg, data_cfg.val_split), 400)
            latent_map = LatentMap.fit(vae.normalize_latent(encode_means(vae, test.images)),
                                       test.labels)  # fmt: skip
        except CatdogError as exc:
            if data_dir is not None or "latent_map" not in record:
                raise
            print(f"note: no real images ({exc}); using the latent map shipped with the model "
                  "and skipping the comparison figure")  # fmt: skip
    if test is None:
        latent_map = LatentMap(**record["latent_map"])
    checkpoint.check_writable(out)  # after the data: a missing data folder leaves nothing behind
    written = [out / "denoising_path.png"]
    save_denoising_path(written[0], unet, vae, schedule, latent_map, seed=seed, steps=steps,
                        guidance=guidance, guide=guide)  # fmt: skip
    for label, name in enumerate(CLASS_NAMES):
        gif = out / f"denoising_{name}.gif"
        save_denoising_gif(gif, unet, vae, schedule, label, seed=seed + label, steps=steps,
                           guidance=guidance, guide=guide)  # fmt: skip
        written.append(gif)
        if samples_per_class > 0:
            n = samples_per_class
            z = sample_latents(unet, schedule, torch.full((n,), label),
                               list(range(seed, seed + n)), sampler="dpmpp", steps=20,
                               guidance=guidance, guide=guide)  # fmt: skip
            written.append(out / f"samples_{name}.png")
            save_png(written[-1], image_grid(decode_latents(vae, z), nrow=8), scale=2)
    if test is not None:
        index, names = comparison_rows(test.labels, max(1, comparisons // 2))
        written.append(out / "comparison.png")
        save_comparison(written[-1], unet, vae, schedule, test.subset(index), names,
                        guidance=guidance, guide=guide, seed=seed)  # fmt: skip
    return written
