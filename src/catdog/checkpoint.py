"""Checkpoints are data, not code: state dicts, config, step and a format tag, written atomically.

Files are ``torch.save`` dicts of tensors and plain Python values that load with
``weights_only=True`` (no pickled modules). Every write goes to a temporary file in the same
folder, is flushed to disk, then renamed over the target, so a crash never leaves half a file.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .errors import CatdogError

FORMAT_VERSION = 1
KIND_VAE = "catdog.vae"
KIND_VAE_TRAIN_STATE = "catdog.vae_train_state"
KIND_NAMES = {
    KIND_VAE: "a VAE checkpoint",
    KIND_VAE_TRAIN_STATE: "a VAE training state",
}


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> None:
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def save(path: str | os.PathLike, kind: str, payload: dict[str, Any]) -> None:
    """Save ``payload`` tagged with ``kind`` and the format version, atomically."""
    record = {"kind": kind, "format_version": FORMAT_VERSION, **payload}
    atomic_write(path, lambda f: torch.save(record, f))


def load(path: str | os.PathLike, kind: str) -> dict[str, Any]:
    """Load a checkpoint of the given kind, or raise a one-line ``CatdogError`` saying why not."""
    path = Path(path)
    if not path.is_file():
        raise CatdogError(f"checkpoint not found: {path}")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, bad pickle, random bytes, ...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CatdogError(f"checkpoint {path} is corrupt or truncated ({reason[:200]})") from None
    if not isinstance(record, dict) or "kind" not in record:
        raise CatdogError(f"{path} is not a catdog checkpoint")
    if record["kind"] != kind:
        found = KIND_NAMES.get(record["kind"], repr(record["kind"]))
        raise CatdogError(f"{path} is {found}, but {KIND_NAMES.get(kind, kind)} is needed here")
    if record.get("format_version", 0) > FORMAT_VERSION:
        raise CatdogError(
            f"{path} has format version {record['format_version']}; this catdog reads up to "
            f"{FORMAT_VERSION} (upgrade catdog)"
        )
    return record


def vae_payload(vae: torch.nn.Module, train_config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """What a VAE checkpoint holds: its model config, weights (with latent statistics) and the
    training config that produced it."""
    from .config import to_dict

    return {
        "config": to_dict(vae.cfg),
        "state_dict": {k: v.detach().cpu().clone() for k, v in vae.state_dict().items()},
        "train_config": train_config,
        **extra,
    }


def load_vae(path: str | os.PathLike) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a VAE from a checkpoint; returns the model (eval mode) and the whole record."""
    from .config import VAEConfig, from_dict
    from .models.vae import VAE

    record = load(path, KIND_VAE)
    try:
        vae = VAE(from_dict(VAEConfig, record["config"]))
        vae.load_state_dict(record["state_dict"])
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise CatdogError(f"VAE checkpoint {path} does not match its own config ({exc})") from None
    return vae.eval(), record
