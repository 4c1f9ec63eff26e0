"""Shared fixtures: tiny image folders, a VGG16 weights file, the optional ../shared folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def write_image_folder(root: Path, counts: dict[str, int], size: int = 32, seed: int = 0) -> Path:
    """SPLIT/{cat,dog}/NNNN.png with class-dependent colours (cats reddish, dogs bluish)."""
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        for label, name in enumerate(("cat", "dog")):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.array([200, 60, 60] if label == 0 else [60, 60, 200], dtype=float)
                noise = rng.normal(0, 30, size=(size, size, 3))
                gradient = np.linspace(-40, 40, size)[None, :, None]
                pixels = np.clip(base + noise + gradient, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A small cat/dog folder with train (12 + 12) and test (8 + 8) splits."""
    return write_image_folder(tmp_path_factory.mktemp("catdog"), {"train": 12, "test": 8})


@pytest.fixture(scope="session")
def vgg_weights(tmp_path_factory) -> Path:
    """A vgg16().features state dict (random init: tests need the format, not ImageNet)."""
    path = tmp_path_factory.mktemp("vgg") / "vgg16_features.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.vgg16().features.state_dict(), path)
    return path


@pytest.fixture()
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip(
            "../shared is absent (real photos and weights are only on development machines)"
        )
    return SHARED


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command-line entry point the way a user would, capturing its output.

    The user's CATDOG_VGG_WEIGHTS is not inherited, so each test says where weights come from."""
    full_env = {k: v for k, v in os.environ.items() if k != "CATDOG_VGG_WEIGHTS"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=full_env, timeout=600
    )


# Runs each command of a batch the way ``python ARGS...`` would (``runpy``, ``__main__``), one
# after the other in this one interpreter, and records its exit status and output.
_BATCH_RUNNER = """
import contextlib, io, json, runpy, sys, traceback
commands, results_path, results = json.loads(sys.argv[1]), sys.argv[2], []
for argv in commands:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        sys.argv = argv[1:] if argv[0] == "-m" else list(argv)
        try:
            if argv[0] == "-m":
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(argv[0], run_name="__main__")
            code = 0
        except SystemExit as exc:  # what the interpreter makes of sys.exit(code)
            code = 0 if exc.code is None else exc.code
            if not isinstance(code, int):
                print(code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
    results.append([code, out.getvalue(), err.getvalue()])
with open(results_path, "w") as f:
    json.dump(results, f)
"""


def run_cli_batch(
    *commands: tuple[str, ...], env: dict | None = None
) -> list[subprocess.CompletedProcess]:
    """``run_cli`` for several commands in one fresh interpreter, run in order: each runs as
    ``python ARGS...`` would (script or ``-m module``, through ``runpy``), with its own exit
    status, stdout and stderr, but Python and torch are imported once.

    Not a fresh process per command: imported modules and their state carry over (a warning
    already shown, a logging handler, torch's global settings), output written straight to file
    descriptors 1 and 2 is not captured per command, and exit codes are not taken mod 256. Use
    it for commands whose outcome does not hang on those (refusals, independent runs); keep a
    user's sequence of stages on ``run_cli``."""
    with tempfile.TemporaryDirectory() as tmp:
        results_path = Path(tmp) / "results.json"
        commands_json = json.dumps([list(c) for c in commands])
        batch = run_cli("-c", _BATCH_RUNNER, commands_json, str(results_path), env=env)
        assert batch.returncode == 0 and results_path.is_file(), batch.stdout + batch.stderr
        results = json.loads(results_path.read_text())
    return [
        subprocess.CompletedProcess([sys.executable, *c], code, out, err)
        for c, (code, out, err) in zip(commands, results, strict=True)
    ]


def resave(path: Path, kind: str, record: dict) -> None:
    """Save a loaded (possibly edited) checkpoint record again."""
    from catdog import checkpoint

    checkpoint.save(path, kind, checkpoint.payload_of(record))


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit status 2, a single ``error:`` line on stderr, no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.fixture(scope="session")
def tiny_vae(tiny_data, tmp_path_factory) -> Path:
    """A tiny VAE (16 px, 2x8x8 latent) trained for one epoch, with latent statistics."""
    from catdog.config import LossTerm, vae_preset
    from catdog.train_vae import FINAL, train

    cfg = vae_preset("tiny")
    cfg.data.data_dir = str(tiny_data)
    cfg.save_dir = str(tmp_path_factory.mktemp("vae_run"))
    cfg.losses.vgg = LossTerm(0.0)
    cfg.epochs, cfg.viz_every, cfg.progress = 1, 100, False
    train(cfg)
    return Path(cfg.save_dir) / FINAL


def tiny_diffusion_cfg(data_dir, vae_path, save_dir, **overrides):
    from catdog.config import diffusion_preset

    cfg = diffusion_preset("tiny")
    cfg.data.data_dir, cfg.vae_path, cfg.save_dir = str(data_dir), str(vae_path), str(save_dir)
    cfg.progress = False
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


@pytest.fixture(scope="session")
def tiny_pair(tiny_data, tiny_vae, tmp_path_factory) -> Path:
    """A tiny diffusion checkpoint trained for two epochs on ``tiny_vae``."""
    from catdog.train_diffusion import FINAL, train

    save_dir = tmp_path_factory.mktemp("diffusion_run")
    train(tiny_diffusion_cfg(tiny_data, tiny_vae, save_dir, epochs=2))
    return save_dir / FINAL


@pytest.fixture(scope="session")
def tiny_guide(tiny_data, tiny_vae, tmp_path_factory) -> Path:
    """A weaker tiny diffusion checkpoint on the same VAE, for autoguidance: one epoch, then its
    weights jittered, since two barely trained tiny models would otherwise predict alike."""
    from catdog import checkpoint
    from catdog.train_diffusion import FINAL, train

    save_dir = tmp_path_factory.mktemp("guide_run")
    train(tiny_diffusion_cfg(tiny_data, tiny_vae, save_dir, epochs=1, seed=1))
    record = checkpoint.load(save_dir / FINAL, checkpoint.KIND_DIFFUSION)
    generator = torch.Generator().manual_seed(0)
    for value in record["state_dict"].values():
        if value.is_floating_point():
            value += 0.05 * torch.randn(value.shape, generator=generator)
    resave(save_dir / FINAL, checkpoint.KIND_DIFFUSION, record)
    return save_dir / FINAL


def tiny_decoder_cfg(data_dir, vae_path, save_dir, **overrides):
    """The decoder fine-tuning preset on a tiny VAE, without the VGG term."""
    from catdog.config import LossTerm, vae_preset

    cfg = vae_preset("decoder")
    cfg.data.data_dir, cfg.save_dir = str(data_dir), str(save_dir)
    cfg.finetune_decoder = str(vae_path)
    cfg.losses.vgg = LossTerm(0.0)
    cfg.batch_size, cfg.lr, cfg.epochs, cfg.viz_every, cfg.progress = 8, 1e-3, 2, 100, False
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


@pytest.fixture(scope="session")
def tiny_decoder_ft(tiny_data, tiny_vae, tmp_path_factory) -> Path:
    """``tiny_vae`` with its decoder fine-tuned for two epochs (``--finetune-decoder``)."""
    from catdog.train_vae import FINAL, train

    save_dir = tmp_path_factory.mktemp("decoder_run")
    train(tiny_decoder_cfg(tiny_data, tiny_vae, save_dir))
    return save_dir / FINAL
