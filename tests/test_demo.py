"""The main job: the shipped weights load, generate both classes, and draw the pictures."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from catdog import checkpoint
from catdog.generate import SHIPPED_MODEL, SHIPPED_TEACHER
from tests.conftest import assert_one_line_error, run_cli


def test_shipped_weights_are_a_linked_fp16_pair_within_budget():
    record = checkpoint.load(SHIPPED_MODEL, checkpoint.KIND_DIFFUSION)
    vae, vae_path = checkpoint.find_vae(SHIPPED_MODEL, record)
    assert vae_path.parent == SHIPPED_MODEL.parent and bool(vae.has_latent_stats)
    from safetensors import safe_open

    for weights in SHIPPED_MODEL.parent.glob("*.safetensors"):
        with safe_open(str(weights), framework="pt") as f:
            dtypes = {f.get_tensor(k).dtype for k in f.keys() if not k.startswith("latent_map/")}  # noqa: SIM118
        assert dtypes <= {torch.float16, torch.int64, torch.bool}, (weights.name, dtypes)
        assert torch.float16 in dtypes, weights.name
    total = sum(p.stat().st_size for p in SHIPPED_MODEL.parent.glob("*.safetensors"))
    assert total <= 50_000_000  # the 50 MB
    assert {"train_config", "unet_config", "schedule_config", "latent_map"} <= set(record)
    # The default is the teacher's autoguidance distilled: no guide, guidance 1, one pass.
    assert checkpoint.find_guide(SHIPPED_MODEL, record) == (None, {"guidance": 1.0})
    teacher_record = checkpoint.load(SHIPPED_TEACHER, checkpoint.KIND_DIFFUSION)
    teacher, _, _ = checkpoint.load_diffusion(SHIPPED_TEACHER)
    assert checkpoint.find_vae(SHIPPED_TEACHER, teacher_record)[1] == vae_path
    guide, link = checkpoint.find_guide(SHIPPED_TEACHER, teacher_record)  # its autoguidance
    assert guide is not None and Path(link["file"]).parent == SHIPPED_MODEL.parent
    assert checkpoint.resolve_guidance(None, link) == teacher_record["guide"]["guidance"]
    distilled = record["distilled"]  # from the teacher and guide shipped beside it
    assert distilled["teacher"]["sha256"] == checkpoint.content_hash(teacher.state_dict())
    assert distilled["guide_sha256"] == checkpoint.content_hash(guide.state_dict())
    assert distilled["guidance"] == link["guidance"]


def test_the_default_presets_train_what_ships():
    """`main.py` with the default preset must reproduce the shipped weights' architecture and
    training recipe; only run lengths and paths may differ (the model card gives those)."""
    from catdog.config import (
        DiffusionTrainConfig,
        DistillConfig,
        VAEConfig,
        VAETrainConfig,
        diffusion_preset,
        from_dict,
        vae_preset,
    )

    record = checkpoint.load(SHIPPED_TEACHER, checkpoint.KIND_DIFFUSION)
    _, vae_path = checkpoint.find_vae(SHIPPED_TEACHER, record)
    vae_record = checkpoint.load(vae_path, checkpoint.KIND_VAE)
    vae_default = vae_preset("cpu")
    assert from_dict(VAEConfig, vae_record["config"]) == vae_default.model
    vae_saved = from_dict(VAETrainConfig, vae_record["train_config"])
    for key in ("losses", "batch_size", "lr", "disc"):
        assert getattr(vae_saved, key) == getattr(vae_default, key), key
    diffusion_default = diffusion_preset("cpu")
    diffusion_saved = from_dict(DiffusionTrainConfig, record["train_config"])
    for key in (
        "unet",
        "schedule",
        "latent_sampling",
        "batch_size",
        "lr",
        "ema_decay",
        "repa_weight",
        "repa_layer",
        "repa_hidden",
        "guide_step",
        "guide_guidance",
    ):
        assert getattr(diffusion_saved, key) == getattr(diffusion_default, key), key
    # The distilled default: `catdog distill` with its defaults, from the shipped teacher.
    student = checkpoint.load(SHIPPED_MODEL, checkpoint.KIND_DIFFUSION)
    distill_saved = from_dict(DistillConfig, student["train_config"])
    distill_default = DistillConfig()
    for key in ("guidance", "generated", "generated_fraction", "steps", "batch_size", "lr",
                "ema_decay", "grad_clip", "seed"):  # fmt: skip
        assert getattr(distill_saved, key) == getattr(distill_default, key), key
    assert student["distilled"]["steps"] == distill_default.steps


def test_demo_writes_both_classes_gifs_and_the_denoising_path(tmp_path):
    result = run_cli("-m", "catdog.demo", "--output", str(tmp_path), "--num-samples", "4")
    assert result.returncode == 0, result.stderr
    for name in ("cat", "dog"):
        singles = sorted((tmp_path / name).glob(f"{name}_0*.png"))
        assert len(singles) == 4
        pixels = np.asarray(Image.open(singles[0]))
        assert pixels.shape == (48, 48, 3) and pixels.std() > 5  # an image, not a flat field
        assert (tmp_path / name / f"{name}_grid.png").is_file()
        with Image.open(tmp_path / "figures" / f"denoising_{name}.gif") as gif:
            assert gif.n_frames > 10
    assert (tmp_path / "figures" / "denoising_path.png").stat().st_size > 10_000
    assert str(tmp_path / "cat" / "cat_grid.png") in result.stdout


def test_a_missing_data_dir_stops_the_demo_before_it_writes(tmp_path):
    out = tmp_path / "demo"
    result = run_cli("-m", "catdog.demo", "--output", str(out), "--data-dir", str(tmp_path / "no"))
    assert_one_line_error(result, "data directory not found")
    assert not out.exists()


def test_bad_counts_and_seeds_stop_the_demo_before_it_writes(tmp_path, capsys):
    from catdog.demo import main

    out = tmp_path / "demo"
    assert main(["--output", str(out), "--num-samples", "0"]) == 2
    assert "--num-samples must be at least 1, got 0" in capsys.readouterr().err
    assert main(["--output", str(out), "--seed", "-1"]) == 2
    assert not out.exists()


def test_original_scripts_default_to_the_shipped_weights(tmp_path):
    result = run_cli("generate.py", "--class_name", "dog", "--num_samples", "2",
                     "--output", str(tmp_path), "--seed", "7")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert np.asarray(Image.open(tmp_path / "dog_0007.png")).shape == (48, 48, 3)


def test_the_probe_from_evaluate_sees_the_asked_for_class_in_shipped_samples(shared):
    """The probe of `catdog evaluate` (Inception pool3 features, logistic regression fitted on
    the real training split) must call a majority (9 of 16) of the shipped model's default
    samples of each class the class asked for. This is the issue's check on fixed seeds; the
    class-accuracy target itself (0.90 over 800 per class) is measured by `catdog evaluate` and
    reported in the model card, where it is still missed (0.699). At that accuracy a class
    passes 9 of 16 with a probability of about 0.92 for any one set of seeds (binomial)."""
    import torch

    from catdog.config import DataConfig
    from catdog.data import load_split, to_uint8
    from catdog.features import cached_extract, extract, load_inception
    from catdog.generate import sample_latents
    from catdog.metrics import fit_probe

    net = load_inception(shared / "weights" / "weights-inception-2015-12-05-6726825d.pth")
    train = load_split(DataConfig(data_dir=str(shared / "data" / "catdog96")), "train")
    cache = Path.home() / ".cache" / "catdog" / "features"
    probe = fit_probe(cached_extract(net, train.images, cache, progress=False), train.labels)
    unet, schedule, record = checkpoint.load_diffusion(SHIPPED_MODEL)
    vae, _ = checkpoint.find_vae(SHIPPED_MODEL, record)
    guide, link = checkpoint.find_guide(SHIPPED_MODEL, record)  # the default: distilled
    labels = torch.tensor([0] * 16 + [1] * 16)
    z = sample_latents(unet, schedule, labels, list(range(100, 132)), sampler="dpmpp", steps=20,
                       guidance=checkpoint.resolve_guidance(None, link), guide=guide)  # fmt: skip
    with torch.no_grad():
        images = to_uint8(vae.decode(vae.denormalize_latent(z)))
    assert images.shape == (32, 3, 48, 48)
    features = extract(net, images, progress=False).double().numpy()
    predicted = torch.from_numpy(probe.predict(features))
    hits = [int((predicted[labels == label] == label).sum()) for label in (0, 1)]
    assert min(hits) >= 9, f"the probe sees {hits[0]} of 16 cats and {hits[1]} of 16 dogs"
