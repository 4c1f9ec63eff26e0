"""Cat/dog images: STL-10 (through torchvision) or any folder with cat/ and dog/ subfolders.

Images are decoded once, resized 96 -> ``image_size`` with antialiasing, and held in memory as a
uint8 tensor (the cat/dog splits are small), so training never decodes a file twice. Folder
photos are first turned upright by their EXIF orientation and centre-cropped to a square
(``read_rgb``). Labels are 0 = cat, 1 = dog, and -1 for unlabeled images (STL-10's
``unlabeled`` split).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image, ImageOps
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset
from torchvision.transforms.v2 import functional as TF

from . import CLASS_NAMES
from .config import DataConfig
from .errors import CatdogError

STL10_CLASS_IDS = {"cat": 3, "dog": 5}  # torchvision's 0-based STL-10 labels
STL10_SPLITS = ("train", "test", "train+test", "unlabeled", "train+unlabeled")


@dataclass
class ImageSet:
    """A split held in memory."""

    images: torch.Tensor  # (N, 3, S, S) uint8
    labels: torch.Tensor  # (N,) int64; 0 = cat, 1 = dog, -1 = unlabeled
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index], self.source)


class STL10Files(torchvision.datasets.STL10):
    """torchvision's STL-10 reader, checking that the split's files exist instead of re-hashing
    all 2.6 GB on every load (the archive's md5 is verified by torchvision when it downloads)."""

    def _check_integrity(self) -> bool:
        needed = {
            "train": ["train_X.bin", "train_y.bin"],
            "test": ["test_X.bin", "test_y.bin"],
            "unlabeled": ["unlabeled_X.bin"],
            "train+unlabeled": ["train_X.bin", "train_y.bin", "unlabeled_X.bin"],
        }[self.split]
        folder = Path(self.root, self.base_folder)
        return all((folder / name).is_file() for name in needed)


# ---------------------------------------------------------------------------------------------
# Loading


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased resize of uint8 images (N, 3, H, W) to (N, 3, size, size)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return TF.resize(images, [size, size], antialias=True)


def resolve_kind(cfg: DataConfig) -> str:
    """'folder' or 'stl10', checking that the data directory makes sense for it."""
    root = Path(cfg.data_dir)
    if cfg.dataset not in ("auto", "folder", "stl10"):
        raise CatdogError(f"unknown dataset {cfg.dataset!r}; choose auto, folder or stl10")
    if cfg.dataset == "stl10":
        return "stl10"
    if root.is_file():
        raise CatdogError(f"{root} is a file; --data-dir needs a folder of cat/ and dog/ photos "
                          "or an STL-10 root")  # fmt: skip
    if not root.is_dir():
        raise CatdogError(
            f"data directory not found: {root} (give a folder with cat/ and dog/ subfolders, or "
            "an STL-10 root; training downloads STL-10 into it with --dataset stl10)"
        )
    # The usual layouts first, then STL-10's files, then any SPLIT/cat and SPLIT/dog: a folder
    # of STL-10 may hold other cat/ dog/ folders beside it (samples kept for evaluate, say).
    if _has_class_dirs(root) or any(_has_class_dirs(root / s) for s in ("train", "test")):
        return "folder"
    has_stl10 = (root / STL10Files.base_folder).is_dir()
    if cfg.dataset == "auto" and has_stl10:
        return "stl10"
    if any(_has_class_dirs(p) for p in root.iterdir() if p.is_dir()):
        return "folder"
    if cfg.dataset == "auto":
        nor = f" (nor {STL10Files.base_folder}/ of STL-10)"
    elif has_stl10:
        nor = f" (its {STL10Files.base_folder}/ is read with --dataset stl10 or auto)"
    else:
        nor = ""
    raise CatdogError(
        f"{root} has no cat/ and dog/ subfolders{nor}; "
        "give a folder laid out as cat/*.png and dog/*.png, or SPLIT/cat and SPLIT/dog"
    )


def check_held_out(train_split: str, val_split: str) -> None:
    """The held-out split picks checkpoints and tracks quality: it must not be trained on."""
    shared = set(train_split.split("+")) & set(val_split.split("+"))
    if shared:
        raise CatdogError(
            f"--train-split {train_split} contains the held-out split {val_split} "
            f"({'+'.join(sorted(shared))}), which is never trained on; choose another training "
            "split (the VAE's --val-split picks the held-out one)"
        )


def load_split(cfg: DataConfig, split: str) -> ImageSet:
    """Load one split (``train``, ``test``, ``train+test``, ...) at ``cfg.image_size``."""
    kind = resolve_kind(cfg)
    if "+" in split:
        parts = [load_split(cfg, s) for s in split.split("+")]
        return ImageSet(
            torch.cat([p.images for p in parts]),
            torch.cat([p.labels for p in parts]),
            " + ".join(p.source for p in parts),
        )
    if kind == "stl10":  # detected (auto) STL-10 files are read, never downloaded
        download = cfg.download and cfg.dataset == "stl10"
        return load_stl10(cfg.data_dir, split, cfg.image_size, download=download)
    return load_folder(cfg.data_dir, split, cfg.image_size)


def _has_class_dirs(path: Path) -> bool:
    return all((path / name).is_dir() for name in CLASS_NAMES)


def load_folder(data_dir: str | os.PathLike, split: str, image_size: int) -> ImageSet:
    """Images from DIR/SPLIT/{cat,dog}/ or, for a flat DIR/{cat,dog}/, a fixed 90/10 split:
    every 10th image of each class (in sorted order) is ``test``, the rest ``train``."""
    root = Path(data_dir)
    if (root / split).is_dir() and _has_class_dirs(root / split):
        folder, flat = root / split, False
    elif _has_class_dirs(root):
        if split not in ("train", "test"):
            raise CatdogError(f"a flat cat/ dog/ folder has splits train and test, not {split!r}")
        folder, flat = root, True
    else:
        raise CatdogError(f"{root} has no {split}/cat and {split}/dog (nor cat/ and dog/) folders")
    return read_class_folder(folder, image_size, split=split if flat else None)


def read_class_folder(folder: Path, image_size: int, *, split: str | None = None) -> ImageSet:
    """Every readable image in FOLDER/cat and FOLDER/dog, resized to ``image_size``.

    With ``split`` ("train" or "test") only that part of the fixed 90/10 split is kept.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CatdogError(f"image folder not found: {folder}")
    if not _has_class_dirs(folder):
        raise CatdogError(f"{folder} has no cat/ and dog/ folders")
    samples = make_dataset(
        str(folder),
        {name: i for i, name in enumerate(CLASS_NAMES)},
        extensions=IMG_EXTENSIONS,
        allow_empty=True,  # an empty class is reported below, in our words
    )
    files = [sum(s[1] == label for s in samples) for label in range(len(CLASS_NAMES))]
    if split is not None:
        keep = []
        for label in range(len(CLASS_NAMES)):
            of_class = [s for s in samples if s[1] == label]
            keep += [s for i, s in enumerate(of_class) if (i % 10 == 0) == (split == "test")]
        samples = keep
    images, labels = [], []
    for path, label in samples:
        try:
            array = read_rgb(path)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:  # skip, naming the file
            warnings.warn(f"skipping unreadable image {path}: {exc}", stacklevel=2)
            continue
        tensor = torch.from_numpy(array.copy()).permute(2, 0, 1)  # (3, H, W) uint8
        images.append(resize(tensor[None], image_size)[0])
        labels.append(label)
    counts = [labels.count(i) for i in range(len(CLASS_NAMES))]
    if min(counts) == 0:
        missing = [CLASS_NAMES[i] for i, c in enumerate(counts) if c == 0]
        where = f"{folder}"
        if split is not None:
            found = ", ".join(f"{CLASS_NAMES[i]} {files[i]}" for i in range(len(files)))
            where += (f"'s {split} part (a flat cat/ dog/ folder keeps every 10th image of each "
                      f"class, in sorted order, for test and the rest for train; image files: "
                      f"{found})")  # fmt: skip
        raise CatdogError(f"no readable images for {', '.join(missing)} in {where}")
    source = f"folder {folder}" + (f" [{split}]" if split else "")
    return ImageSet(torch.stack(images), torch.tensor(labels, dtype=torch.long), source)


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """One photo as a square (S, S, 3) uint8 array.

    Turned upright by its EXIF orientation (a phone's portrait photo is stored sideways), with
    16-bit and float greyscale scaled to 8 bits (PIL's ``convert("RGB")`` clips them, so that a
    16-bit photo would load white), and centre-cropped to a square (resizing a 2:1 photo to a
    square would squash it)."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode.startswith("I") or im.mode == "F":  # 16/32-bit integer or float greyscale
            grey = np.asarray(im, dtype=np.float64)
            if im.mode == "F":
                scale = 255.0 if grey.max(initial=0) <= 1.0 else 1.0  # [0, 1] or [0, 255]
            elif im.mode == "I" and grey.max(initial=0) <= 255:
                scale = 1.0  # 32-bit integers holding 8-bit values
            else:
                scale = 255.0 / 65535.0  # 16-bit data, the common case
            grey = np.clip(np.rint(grey * scale), 0, 255).astype(np.uint8)
            array = np.repeat(grey[..., None], 3, axis=-1)
        else:
            array = np.asarray(im.convert("RGB"))
    h, w = array.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return array[top : top + side, left : left + side]


def load_stl10(
    data_dir: str | os.PathLike, split: str, image_size: int, *, download: bool = True
) -> ImageSet:
    """STL-10's cat and dog images (labels remapped to 0 = cat, 1 = dog) through torchvision.

    ``unlabeled`` keeps every image, with label -1.
    """
    if split not in STL10_SPLITS:
        raise CatdogError(f"unknown STL-10 split {split!r}; choose from {', '.join(STL10_SPLITS)}")
    made = [p for p in (Path(data_dir), *Path(data_dir).absolute().parents) if not p.exists()]
    try:
        dataset = _open_stl10(data_dir, split, download)
    finally:  # folders a failed download made and left empty go again (deepest first)
        for folder in made:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    data = torch.from_numpy(dataset.data)  # (N, 3, 96, 96) uint8, already row-major
    labels = torch.from_numpy(np.asarray(dataset.labels, dtype=np.int64))
    if len(data) == 0 or len(labels) != len(data):
        raise CatdogError(
            f"STL-10 files in {data_dir} are corrupt or truncated: {len(data)} images and "
            f"{len(labels)} labels in the {split} split"
        )
    if split != "unlabeled":
        keep = (
            (labels == STL10_CLASS_IDS["cat"]) | (labels == STL10_CLASS_IDS["dog"]) | (labels < 0)
        )
        data, labels = data[keep], labels[keep]
        labels = torch.where(
            labels < 0, labels, (labels == STL10_CLASS_IDS["dog"]).long()
        )  # cat -> 0, dog -> 1
        missing = [name for i, name in enumerate(CLASS_NAMES) if not (labels == i).any()]
        if missing:
            raise CatdogError(
                f"STL-10 files in {data_dir} hold no {' or '.join(missing)} images in the {split} "
                "split: are they corrupt or truncated?"
            )
    images = torch.cat([resize(chunk, image_size) for chunk in data.split(2048)])
    return ImageSet(images, labels, f"STL-10 {data_dir} [{split}]")


def _open_stl10(data_dir: str | os.PathLike, split: str, download: bool) -> STL10Files:
    """torchvision's reader, its errors in our words."""
    try:
        return STL10Files(str(data_dir), split=split, download=download)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted. You can use
        # download=True ...", which --no-download contradicts: said only after a download
        raise CatdogError(
            _stl10_missing(
                data_dir, f"not found ({exc})" if download else "not found (no download asked for)"
            )
        ) from None
    except OSError as exc:  # URLError is an OSError: no network
        raise CatdogError(
            _stl10_missing(data_dir, f"not found and download failed ({exc})")
        ) from None
    except ValueError as exc:  # np.reshape of a truncated file
        raise CatdogError(f"STL-10 files in {data_dir} are corrupt or truncated: {exc}") from None


def _stl10_missing(data_dir: str | os.PathLike, what: str) -> str:
    return (
        f"STL-10 {what} in {data_dir}: download {STL10Files.url} and extract it there "
        f"(giving {Path(data_dir, STL10Files.base_folder)}/), or use --data-dir with a folder of "
        "cat/ and dog/ photos"
    )


def balanced_subset(data: ImageSet, limit: int) -> ImageSet:
    """The first ``limit // 2`` images of each class, in order (all images if ``limit`` <= 0)."""
    if limit <= 0 or limit >= len(data):
        return data
    per_class = limit // len(CLASS_NAMES)
    index = torch.cat(
        [torch.nonzero(data.labels == c).flatten()[:per_class] for c in range(len(CLASS_NAMES))]
    )
    return data.subset(index)


# ---------------------------------------------------------------------------------------------
# Tensors and augmentation


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255]."""
    return images.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def random_resized_crops(
    images: torch.Tensor, size: int, min_scale: float, generator: torch.Generator
) -> torch.Tensor:
    """One random square crop per uint8 image (N, 3, H, W), resized to ``size`` with antialiasing.

    The crop's side is ``U(min_scale, 1)`` times the image's, at a uniform position: a small zoom
    and shift with no padded borders. Crop from a resolution above ``size`` (e.g. STL-10's 96 px
    for 48 px training) so that the zoom does not upsample.
    """
    n, _, h, w = images.shape
    side = min(h, w)
    scales = min_scale + (1 - min_scale) * torch.rand(n, generator=generator)
    corners = torch.rand(n, 2, generator=generator)
    out = []
    for img, scale, (u, v) in zip(images, scales.tolist(), corners.tolist(), strict=True):
        c = max(1, round(side * scale))
        top, left = round(u * (h - c)), round(v * (w - c))
        out.append(TF.resized_crop(img, top, left, c, c, [size, size], antialias=True))
    return torch.stack(out)


def augment(
    images: torch.Tensor, generator: torch.Generator, *, hflip: bool, color_jitter: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal flips and mild colour jitter on a float batch in [-1, 1].

    Returns the augmented batch and the per-image flip mask (used to look up cached targets).
    No rotations or crops that would leave black borders for the model to learn.
    """
    n = images.shape[0]
    flipped = (
        torch.rand(n, generator=generator) < 0.5 if hflip else torch.zeros(n, dtype=torch.bool)
    )
    out = torch.where(flipped[:, None, None, None], images.flip(-1), images)
    if color_jitter > 0:
        factors = 1.0 + color_jitter * (2 * torch.rand(n, 3, generator=generator) - 1)
        out01 = (out + 1) / 2
        jittered = []
        for img, (b, c, s) in zip(out01, factors.tolist(), strict=True):
            img = TF.adjust_brightness(img, b)
            img = TF.adjust_contrast(img, c)
            jittered.append(TF.adjust_saturation(img, s))
        out = torch.stack(jittered).clamp(0, 1) * 2 - 1
    return out, flipped
