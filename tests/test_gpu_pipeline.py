"""bench/gpu_pipeline.py, the device run, checked end to end on the CPU with --smoke."""

import importlib.util
import json
import tarfile
import time

import numpy as np
import pytest
import torch

from catdog import checkpoint
from tests.conftest import ROOT, run_cli

SCRIPT = "bench/gpu_pipeline.py"


def test_pack_then_smoke_run_trains_exports_and_reports_within_the_device_limits(
    tiny_data, vgg_weights, tmp_path
):
    pack, out = tmp_path / "pack", tmp_path / "out"
    result = run_cli(SCRIPT, "pack", "--data-dir", str(tiny_data), "--vgg-weights",
                     str(vgg_weights), "--out", str(pack), "--image-size", "16")  # fmt: skip
    assert result.returncode == 0, result.stderr
    arrays = np.load(pack / "catdog48.npz")
    assert arrays["train_images"].shape == (24, 3, 16, 16)  # the whole training split
    assert arrays["test_images"].shape == (16, 3, 16, 16)  # the held-out subset
    assert sorted(np.bincount(arrays["train_labels"])) == [12, 12]
    vgg = torch.load(pack / "vgg16_features_fp16.pth", weights_only=True)
    assert {v.dtype for v in vgg.values()} == {torch.float16}

    result = run_cli(SCRIPT, "run", "--smoke", "--pack", str(pack), "--out", str(out), "--work",
                     str(tmp_path / "work"), "--vae-minutes", "0.15", "--decoder-minutes", "0.1",
                     "--diffusion-minutes", "0.15")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    timings = json.loads((out / "timings.json").read_text())
    stages = timings["stages"]
    for name in ("vae_calibrate", "vae", "decoder", "diffusion_constant", "diffusion_cooldown",
                 "export", "distill", "export_distilled", "generate_cat",
                 "generate_dog"):  # fmt: skip
        assert stages[name]["exit"] == 0 and stages[name]["seconds"] > 0
    assert stages["vae"]["epochs"] > 2  # resumed past the two calibration epochs
    assert stages["diffusion_cooldown"]["epochs"] > stages["diffusion_constant"]["epochs"]
    smoke = timings["smoke_test"]
    assert smoke["bf16_train_step_finite"] and smoke["shipped_sampling_finite"]

    # The exported pair is linked to the fine-tuned decoder and the cooldown was applied.
    unet, _, record = checkpoint.load_diffusion(out / "weights/catdog_diffusion.safetensors")
    vae, _ = checkpoint.find_vae(out / "weights/catdog_diffusion.safetensors", record)
    assert vae.cfg.image_size == 16
    # The distilled student: the exported pair as its teacher, its own VAE the exported one.
    student_file = out / "weights/catdog_diffusion_distilled.safetensors"
    _, _, student = checkpoint.load_diffusion(student_file)
    assert student["distilled"]["teacher"]["sha256"] == checkpoint.content_hash(unet.state_dict())
    assert student["distilled"]["steps"] == stages["distill"]["steps"] == 6
    assert checkpoint.find_vae(student_file, student)[1] == out / "weights/catdog_vae.safetensors"
    generate_lines = [line for line in (out / "log.txt").read_text().splitlines()
                      if line.startswith("### generate_")]  # fmt: skip
    assert len(generate_lines) == 2  # the grids come from the student
    assert all(str(student_file) in line for line in generate_lines)
    with tarfile.open(out / "runs.tar.gz") as tar:
        names = tar.getnames()
        lines = tar.extractfile("diffusion/metrics.jsonl").read().decode().splitlines()
    history = [json.loads(line) for line in lines]
    assert {"samples/cat_cat_grid.png", "samples/dog_dog_grid.png"} <= set(names)
    assert "distilled/metrics.jsonl" in names
    with tarfile.open(out / "runs.tar.gz") as tar:
        config = json.load(tar.extractfile("diffusion/config.json"))
    # Whether the cooldown also ends inside its minutes depends on the machine's speed (a timing
    # property, for the device run's timings.json, not for a test); that it ran is checked here.
    assert config["cooldown_epochs"] >= 1
    assert history[-1]["epoch"] > config["epochs"] - config["cooldown_epochs"]
    warmup_only = config["lr"] * min(1.0, history[-1]["step"] / config["lr_warmup_steps"])
    assert history[-1]["lr"] < warmup_only  # the last epoch ran in the cooldown

    # What the device returns: at most 8 files, none more than two folders down.
    files = [f for f in out.rglob("*") if f.is_file()]
    assert len(files) <= 8
    assert all(len(f.relative_to(out).parts) <= 3 for f in files)


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_pipeline", ROOT / SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_stage_starts_or_runs_past_the_deadline(tmp_path):
    module = load_script()
    p = module.Pipeline(tmp_path, smoke=True, deadline_minutes=1.0)
    assert float(p.cap(0.5, reserve=0)) == 0.5  # its own cap, when the deadline is far
    assert float(p.cap(5.0, reserve=0)) <= 1.0  # else what the deadline leaves
    assert float(p.cap(5.0, reserve=50)) == pytest.approx(10 / 60, abs=2e-3)
    p.deadline = time.monotonic() + 2
    with pytest.raises(SystemExit, match="sleeper failed .exit killed at the deadline"):
        p.stage("sleeper", ["-c", "import time; time.sleep(60)"])
    assert json.loads((tmp_path / "timings.json").read_text())["stages"]["sleeper"]["seconds"] < 60
    with pytest.raises(SystemExit, match="not started: the run's deadline has passed"):
        p.stage("late", ["-c", "pass"])


def test_record_appends_the_returned_timings(tmp_path, monkeypatch):
    module = load_script()
    import common  # bench/common.py, on the path once the script is loaded

    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path / "results")
    timings = {"machine": "m", "gpu": "NVIDIA H200", "total_seconds": 412.0, "stages": {}}
    (tmp_path / "timings.json").write_text(json.dumps(timings))
    module.record(tmp_path)
    lines = (tmp_path / "results" / "gpu_pipeline.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [timings]
