"""Checkpoints are data, not code: state dicts, config, step and a format tag, written atomically.

Files are ``torch.save`` dicts of tensors and plain Python values that load with
``weights_only=True`` (no pickled modules). Every write goes to a temporary file in the same
folder, is flushed to disk, then renamed over the target, so a crash never leaves half a file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .config import DEFAULT_GUIDANCE, ScheduleConfig, UNetConfig, VAEConfig, from_dict, to_dict
from .diffusion import NoiseSchedule
from .errors import CatdogError, missing_file, one_line
from .models.unet import UNet
from .models.vae import VAE

FORMAT_VERSION = 1
KIND_VAE = "catdog.vae"
KIND_VAE_TRAIN_STATE = "catdog.vae_train_state"
KIND_DIFFUSION = "catdog.diffusion"
KIND_SELECTOR = "catdog.selector"
KIND_DIFFUSION_TRAIN_STATE = "catdog.diffusion_train_state"
KIND_NAMES = {
    KIND_VAE: "a VAE checkpoint",
    KIND_VAE_TRAIN_STATE: "a VAE training state",
    KIND_DIFFUSION: "a diffusion checkpoint",
    KIND_DIFFUSION_TRAIN_STATE: "a diffusion training state",
    KIND_SELECTOR: "a sample selector",
}


def check_writable(folder: Path) -> None:
    """A folder about to be written into: writable, or creatable in its nearest existing parent
    (one line if not). Nothing is created here: every file is written by ``atomic_write``,
    which makes its folder, so a command that fails before it writes leaves no empty folder."""
    folder = Path(folder)
    try:  # exists() itself raises PermissionError where a parent cannot be entered
        if folder.exists() and not folder.is_dir():
            raise CatdogError(f"{folder} is a file, and a folder is needed here")
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise CatdogError(f"cannot write to output folder {folder}: {existing} is a file")
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise CatdogError(
            f"cannot write to output folder {folder}: {exc.strerror or exc}"
        ) from None


def check_output_file(path: Path) -> None:
    """A file about to be written: not an existing folder, and its folder writable."""
    path = Path(path)
    if path.is_dir():
        raise CatdogError(f"output {path} is a folder; give a file name")
    check_writable(path.parent)


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
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as a plain open() would create it, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def to_cpu(tree: Any) -> Any:
    """A (nested) state dict with every tensor on the CPU, so checkpoints load anywhere."""
    if torch.is_tensor(tree):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {k: to_cpu(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [to_cpu(v) for v in tree]
    return tree


def save(path: str | os.PathLike, kind: str, payload: dict[str, Any]) -> None:
    """Save ``payload`` tagged with ``kind`` and the format version, atomically. Tensors are
    saved from the CPU, so a checkpoint written on a GPU loads anywhere."""
    record = {"kind": kind, "format_version": FORMAT_VERSION, **to_cpu(payload)}
    atomic_write(path, lambda f: torch.save(record, f))


def save_safetensors(path: str | os.PathLike, kind: str, payload: dict[str, Any]) -> None:
    """A model checkpoint as fp16 safetensors: the ``state_dict`` as tensors (floating point ones
    in fp16), everything else as JSON in the file's metadata. Used for the shipped weights."""
    from safetensors.torch import save

    check_fp16(payload["state_dict"], path)
    tensors = {
        k: (v.half() if v.is_floating_point() else v).contiguous()
        for k, v in payload["state_dict"].items()
    }
    for name, tensor in payload.get("latent_map", {}).items():  # kept in fp32: it is tiny
        tensors[f"latent_map/{name}"] = tensor.contiguous()
    meta = {k: v for k, v in payload.items() if k not in ("state_dict", "latent_map")}
    meta = {"catdog": json.dumps({"kind": kind, "format_version": FORMAT_VERSION, **meta})}
    data = save(tensors, metadata=meta)
    atomic_write_bytes(path, data)


def check_fp16(state_dict: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Refuse weights that fp16 cannot hold: a non-finite value, or one beyond fp16's range
    (65504), which would be written as inf. (Values below fp16's smallest, about 6e-8, become 0;
    that is not checked: such a weight contributes nothing an fp16 file could keep.)"""
    largest = torch.finfo(torch.float16).max
    for name, tensor in state_dict.items():
        if not tensor.is_floating_point() or not tensor.numel():
            continue
        if not torch.isfinite(tensor).all():
            raise CatdogError(f"cannot write {path}: {name} holds inf or NaN values")
        peak = tensor.detach().abs().max().item()
        if peak > largest:
            raise CatdogError(
                f"cannot write {path} in fp16: {name} holds a value of magnitude {peak:.3g}, "
                f"beyond fp16's {largest:.0f}"
            )


def _load_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if "catdog" not in metadata:  # a safetensors file from elsewhere
            return {}
        meta = json.loads(metadata["catdog"])
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iter
    maps = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith("latent_map/")}
    if maps:
        meta["latent_map"] = maps
    meta["state_dict"] = {
        k: v.float() if v.is_floating_point() else v
        for k, v in state.items()
        if not k.startswith("latent_map/")
    }
    return meta


def load(path: str | os.PathLike, kind: str) -> dict[str, Any]:
    """Load a checkpoint of the given kind, or raise a one-line ``CatdogError`` saying why not.

    ``.safetensors`` files (the shipped fp16 weights) load into the same record, in fp32."""
    path = Path(path)
    if not path.is_file():
        raise missing_file(path, "checkpoint")
    try:
        if path.suffix.lower() == ".safetensors":
            record = _load_safetensors(path)
        else:
            record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, bad pickle, random bytes, ...
        reason = one_line(exc, 200)
        raise CatdogError(f"checkpoint {path} is corrupt or truncated ({reason})") from None
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


def payload_of(record: dict[str, Any], *drop: str) -> dict[str, Any]:
    """A loaded record as a payload to save again: without the format tags ``load`` adds, and
    without the keys in ``drop`` (links the caller rewrites)."""
    return {k: v for k, v in record.items() if k not in ("kind", "format_version", *drop)}


def vae_payload(vae: torch.nn.Module, train_config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """What a VAE checkpoint holds: its model config, weights (with latent statistics) and the
    training config that produced it."""
    return {
        "config": to_dict(vae.cfg),
        "state_dict": {k: v.detach().cpu().clone() for k, v in vae.state_dict().items()},
        "train_config": train_config,
        **extra,
    }


# Loaded networks keep their weights in channels-last (NHWC): the whole default sampling
# pipeline runs 7 to 8 % faster on the CPU that way, with the same images to 1e-4
# (bench/bench_sampling_format.py). Not measured on CUDA. State dicts and hashes do not change:
# ``content_hash`` and ``save_safetensors`` make every tensor contiguous first.
INFERENCE_MEMORY_FORMAT = torch.channels_last


def load_vae(path: str | os.PathLike) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a VAE from a checkpoint; returns the model (eval mode, channels-last) and the whole
    record."""
    record = load(path, KIND_VAE)
    try:
        vae = VAE(from_dict(VAEConfig, record["config"]))
        vae.load_state_dict(record["state_dict"])
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise CatdogError(
            f"VAE checkpoint {path} does not match its own config ({one_line(exc)})"
        ) from None
    return vae.eval().to(memory_format=INFERENCE_MEMORY_FORMAT), record


def content_hash(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names, dtypes, shapes and values: the same weights give the same
    hash whichever file they were saved in."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        # view(-1): a channels-last (N, C, 1, 1) tensor counts as contiguous with a last stride
        # of C, which a view as bytes refuses; flat, its bytes are in the same order.
        flat = tensor.view(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def latent_hash(state_dict: dict[str, torch.Tensor]) -> str:
    """``content_hash`` of everything in a VAE state dict except the decoder: the encoder, the
    latent statistics and the latent heads. Two VAEs with the same latent hash map images to the
    same normalised latents, so a diffusion model trained on one fits the other; that is what a
    decoder fine-tune (``train-vae --finetune-decoder``) keeps."""
    return content_hash({k: v for k, v in state_dict.items() if not k.startswith("decoder.")})


def vae_link(vae: torch.nn.Module, path: str) -> dict[str, str]:
    """How a diffusion checkpoint names its VAE: content hash, latent hash and path."""
    state = vae.state_dict()
    return {"sha256": content_hash(state), "latent_sha256": latent_hash(state), "path": path}


def fits_link(vae: torch.nn.Module, vae_record: dict[str, Any], link: dict[str, Any]) -> bool:
    """Whether ``vae`` is the VAE ``link`` names, or has the same latent space: the same latent
    hash, or (for links written before latent hashes) a decoder fine-tune of the linked VAE
    whose encoder side is unchanged."""
    state = vae.state_dict()
    if content_hash(state) == link["sha256"]:
        return True
    latent = latent_hash(state)
    if "latent_sha256" in link:
        return latent == link["latent_sha256"]
    parent = vae_record.get("decoder_of") or {}
    return parent.get("sha256") == link["sha256"] and parent.get("latent_sha256") == latent


def diffusion_payload(
    ema_model: torch.nn.Module, schedule_config: dict[str, Any], vae_link: dict[str, str],
    train_config: dict[str, Any], **extra: Any,
) -> dict[str, Any]:  # fmt: skip
    """What a diffusion checkpoint holds: the EMA UNet (used for sampling), its config, the noise
    schedule, and the VAE it was trained on (content hash and path)."""
    return {
        "unet_config": to_dict(ema_model.cfg),
        "schedule_config": schedule_config,
        "state_dict": {k: v.detach().cpu().clone() for k, v in ema_model.state_dict().items()},
        "vae": vae_link,
        "train_config": train_config,
        **extra,
    }


def load_diffusion(path: str | os.PathLike) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """Rebuild the EMA UNet (eval mode, channels-last) and its noise schedule from a diffusion
    checkpoint."""
    record = load(path, KIND_DIFFUSION)
    try:
        unet = UNet(from_dict(UNetConfig, record["unet_config"]))
        unet.load_state_dict(record["state_dict"])
        schedule = NoiseSchedule(from_dict(ScheduleConfig, record["schedule_config"]))
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise CatdogError(
            f"diffusion checkpoint {path} does not match its config ({one_line(exc)})"
        ) from None
    return unet.eval().to(memory_format=INFERENCE_MEMORY_FORMAT), schedule, record


def find_vae(
    diffusion_path: str | os.PathLike, record: dict[str, Any], vae_path: str | None = None
) -> tuple[torch.nn.Module, Path]:
    """The VAE a diffusion checkpoint was trained on, checked by content hash; a decoder
    fine-tune of it also fits (same encoder and latent statistics, see ``fits_link``).

    Looks at ``vae_path`` if given, else the recorded path (as written, then relative to the
    diffusion checkpoint's folder), else a file of the recorded name beside the checkpoint.
    """
    link = record["vae"]
    if vae_path is None and link.get("shipped"):
        vae_path = str(Path(diffusion_path).parent / link["path"])  # shipped side by side
    if vae_path is not None:
        candidates = [Path(vae_path)]
    else:
        recorded = Path(link["path"])
        here = Path(diffusion_path).parent
        candidates = [recorded, here / recorded, here / recorded.name]
    for candidate in candidates:
        if candidate.is_file():
            vae, vae_record = load_vae(candidate)
            if not fits_link(vae, vae_record, link):
                found = content_hash(vae.state_dict())
                raise CatdogError(
                    f"VAE {candidate} does not match diffusion checkpoint {diffusion_path} (it was "
                    f"trained on VAE {link['sha256'][:12]}, this one is {found[:12]})"
                )
            return vae, candidate
    if vae_path is not None:
        raise missing_file(vae_path, "VAE checkpoint")
    raise CatdogError(
        f"cannot find the VAE that {diffusion_path} was trained on (looked for {link['path']}); "
        "pass it with --vae_path"
    )


def find_guide(
    diffusion_path: str | os.PathLike, record: dict[str, Any], guide_path: str | None = None
) -> tuple[torch.nn.Module | None, dict[str, Any]]:
    """The weaker model that autoguidance steers away from, or None for classifier-free guidance.

    ``guide_path`` "none" turns autoguidance off. Without a path, the guide recorded with the
    model is used (``record["guide"]``): training writes one (``guide.pt``, an early EMA
    snapshot) and links it, and ``catdog export`` ships it beside the model. Returns the guide
    (eval mode) and its link: ``file``, the path it was loaded from, and the optional
    ``guidance``, the scale it was tuned for. A guide must share the model's VAE (content hash),
    noise schedule, latent shape and classes, else the outputs cannot be combined.

    A guidance-distilled model (``catdog.distill``) takes no guide: its link is only its
    default scale, 1, since the guided output is what it learnt to give in one pass.
    """
    distilled = record.get("distilled")
    if distilled:  # the guided output is the model's own: one pass a step, guidance 1
        if guide_path not in (None, "none"):
            raise CatdogError(
                f"{diffusion_path} has its teacher's guidance (scale {distilled['guidance']:g}) "
                "distilled into it and takes no guide; drop --guide-path"
            )
        return None, {"guidance": 1.0}
    recorded = dict(record.get("guide") or {})
    if guide_path == "none" or (guide_path is None and not recorded):
        return None, {}
    if guide_path is None:  # as recorded; else beside the model (a moved run folder)
        link, named, here = recorded, Path(recorded["path"]), Path(diffusion_path).parent
        candidates = [here / named] if link.get("shipped") else [named, here / named.name]
        path = next((c for c in candidates if c.is_file()), candidates[0])
    else:
        path, link = Path(guide_path), {}
    if not path.is_file():
        raise CatdogError(f"guide model not found: {path} (pass --guide-path none to go without)")
    guide, _, guide_record = load_diffusion(path)
    guide_hash = content_hash(guide.state_dict())
    if link.get("sha256") and guide_hash != link["sha256"]:
        raise CatdogError(f"guide model {path} is not the one recorded with {diffusion_path}")
    if guide_path is not None and recorded.get("sha256") == guide_hash:
        link = recorded  # the recorded guide, named by its path: it keeps its tuned scale
    mismatch = [
        what
        for what, a, b in (
            ("VAE", *_latent_ids(guide_record["vae"], record["vae"])),
            ("noise schedule", guide_record["schedule_config"], record["schedule_config"]),
            (
                "latent shape",
                (guide.cfg.latent_channels, guide.cfg.latent_size),
                (record["unet_config"]["latent_channels"], record["unet_config"]["latent_size"]),
            ),
            ("classes", guide.cfg.num_classes, record["unet_config"]["num_classes"]),
            ("sub-classes", _subclass_ids(guide_record), _subclass_ids(record)),
        )  # fmt: skip
        if a != b
    ]
    if mismatch:
        raise CatdogError(
            f"guide model {path} does not belong with {diffusion_path}: different "
            + ", ".join(mismatch)
        )
    return guide, {**link, "file": str(path)}


def _subclass_ids(record: dict[str, Any]) -> tuple[int, list | None]:
    """A diffusion record's sub-classes: how many per class, and their frequencies (a guide
    from the same run has the same clusters, so the same frequencies)."""
    prior = record["state_dict"].get("class_embedder.subclass_prior")
    return record["unet_config"].get("subclasses", 1), None if prior is None else prior.tolist()


def _latent_ids(a: dict[str, Any], b: dict[str, Any]) -> tuple[str, str]:
    """What to compare of two VAE links: the latent hashes where both have one (a VAE and its
    decoder fine-tunes share it), else the content hashes."""
    key = "latent_sha256" if "latent_sha256" in a and "latent_sha256" in b else "sha256"
    return a[key], b[key]


def guidance_kind(record: dict[str, Any], guide: torch.nn.Module | None) -> str:
    """How a model is guided when sampled with ``guide``: "distilled" (its teacher's guidance
    built in), "autoguidance" or "classifier-free"."""
    if record.get("distilled"):
        return "distilled"
    return "autoguidance" if guide is not None else "classifier-free"


def resolve_guidance(guidance: float | None, guide_link: dict[str, Any]) -> float:
    """The guidance scale asked for, else the one the model's guide was tuned for, else the
    classifier-free default."""
    if guidance is not None:
        return guidance
    return float(guide_link.get("guidance", DEFAULT_GUIDANCE))
