"""The shipped-weights format: a diffusion checkpoint and its VAE as fp16 safetensors, side by
side, plus a small 2D map of real latents for the denoising-path figure."""

from __future__ import annotations

import os
from pathlib import Path

from . import checkpoint
from .config import DataConfig, from_dict
from .data import balanced_subset, load_split
from .errors import CatdogError
from .generate import check_scales

VAE_FILE, DIFFUSION_FILE = "catdog_vae.safetensors", "catdog_diffusion.safetensors"
GUIDE_FILE = "catdog_guide.safetensors"
DISTILLED_FILE = "catdog_diffusion_distilled.safetensors"  # a guidance-distilled model's name


def export_pair(
    diffusion_path: str | os.PathLike, out_dir: str | os.PathLike, *, data_dir: str | None = None,
    guide_path: str | None = None, guidance: float | None = None, vae_path: str | None = None,
) -> list[Path]:  # fmt: skip
    """Write ``catdog_vae.safetensors`` and ``catdog_diffusion.safetensors`` into ``out_dir``,
    and ``catdog_guide.safetensors`` where the model has a guide (the one recorded by training,
    or ``guide_path``; "none" for none): the weaker model that autoguidance uses, linked from the
    diffusion file with the scale it was tuned for (``guidance``, default the recorded one), so
    that generation uses it by default. ``vae_path`` ships another VAE than the recorded one:
    it must fit the model (``checkpoint.fits_link``), e.g. a decoder fine-tune of it. A
    guidance-distilled model (``catdog distill``) is written as
    ``catdog_diffusion_distilled.safetensors`` instead, so it can ship beside its teacher.

    The diffusion file links its VAE by the content hash of the VAE *as it loads from the fp16
    file*, so the pair checks itself exactly like the training checkpoints do. The latent map
    is a 2D PCA of up to 400 held-out latents (basis and projected points, no images)."""
    from .train_vae import encode_means
    from .visualize import LatentMap

    check_scales(guidance=guidance)
    unet, schedule, record = checkpoint.load_diffusion(diffusion_path)
    vae, vae_path = checkpoint.find_vae(diffusion_path, record, vae_path)
    guide, guide_link = checkpoint.find_guide(diffusion_path, record, guide_path)  # checks it fits
    if guide is None and guidance is not None:
        raise CatdogError("a guidance scale is recorded with a guide, and this export has none")
    vae_record = checkpoint.load(vae_path, checkpoint.KIND_VAE)
    guide_record = None
    if guide is not None:
        guide_record = checkpoint.load(guide_link["file"], checkpoint.KIND_DIFFUSION)
    out = Path(out_dir)
    # Every file's weights must fit fp16 before any is written.
    model_name = DISTILLED_FILE if record.get("distilled") else DIFFUSION_FILE
    for name, rec in ((VAE_FILE, vae_record), (model_name, record), (GUIDE_FILE, guide_record)):
        if rec is not None:
            checkpoint.check_fp16(rec["state_dict"], out / name)
    data_cfg = from_dict(DataConfig, record["train_config"]["data"])
    if data_dir is not None:
        data_cfg.data_dir = data_dir
    data_cfg.image_size = vae.cfg.image_size
    # The data before any file: a missing data folder must not leave a new VAE beside an old
    # export's diffusion file.
    held_out = balanced_subset(load_split(data_cfg, data_cfg.val_split), 400)
    checkpoint.check_writable(out)
    vae_file, diffusion_file = out / VAE_FILE, out / model_name
    checkpoint.save_safetensors(vae_file, checkpoint.KIND_VAE, checkpoint.payload_of(vae_record))
    shipped_vae, _ = checkpoint.load_vae(vae_file)
    latent_map = LatentMap.fit(
        shipped_vae.normalize_latent(encode_means(shipped_vae, held_out.images)), held_out.labels
    )
    link = {**checkpoint.vae_link(shipped_vae, VAE_FILE), "shipped": True}
    payload = checkpoint.payload_of(record, "vae", "guide")
    written = [vae_file, diffusion_file]
    if guide is not None:
        guide_file = out / GUIDE_FILE
        checkpoint.save_safetensors(guide_file, checkpoint.KIND_DIFFUSION, {
            **checkpoint.payload_of(guide_record, "vae", "guide"), "vae": link,
        })  # fmt: skip
        shipped_guide, _, _ = checkpoint.load_diffusion(guide_file)
        payload["guide"] = {"sha256": checkpoint.content_hash(shipped_guide.state_dict()),
                            "path": GUIDE_FILE, "shipped": True}  # fmt: skip
        guidance = guidance if guidance is not None else guide_link.get("guidance")
        if guidance is not None:
            payload["guide"]["guidance"] = guidance
        written.append(guide_file)
    checkpoint.save_safetensors(diffusion_file, checkpoint.KIND_DIFFUSION, {
        **payload, "vae": link, "latent_map": latent_map.tensors(),
    })  # fmt: skip
    return written
