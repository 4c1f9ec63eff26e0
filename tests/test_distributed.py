"""Scale-out: device choice, precision, batch checks, and both stages under torchrun (2 CPU
processes, gloo) against one process on the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch

from catdog.config import LossTerm, RuntimeConfig, to_dict, vae_preset
from catdog.distributed import (
    Runtime,
    amp_dtype,
    check_batch,
    effective_lr,
    epoch_batches,
    select_device,
)
from catdog.errors import CatdogError
from tests.conftest import ROOT, assert_one_line_error, run_cli, tiny_diffusion_cfg

# The 2-rank run equals one process up to float summation order (all-reduce of gradients).
LOSS_RTOL, WEIGHT_ATOL = 1e-4, 1e-4


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a CUDA-less machine")
def test_cuda_asked_for_without_cuda_is_a_one_line_error(tiny_data, tmp_path):
    with pytest.raises(CatdogError, match="CUDA is not available"):
        select_device("cuda")
    result = run_cli("main.py", "--mode", "diffusion", "--device", "cuda", "--data_dir",
                     str(tiny_data), "--save_dir", str(tmp_path / "r"))  # fmt: skip
    assert_one_line_error(result, "CUDA is not available")
    assert not (tmp_path / "r").exists()


def test_auto_device_and_unknown_device():
    expected = {"cuda"} if torch.cuda.is_available() else {"mps", "cpu"}
    assert select_device("auto").type in expected
    assert select_device("cpu") == torch.device("cpu")
    with pytest.raises(CatdogError, match="unknown device"):
        select_device("tpu")


def test_bf16_falls_back_to_fp32_with_a_warning_where_unsupported():
    with pytest.warns(UserWarning, match="bf16"):
        assert amp_dtype("bf16", torch.device("cpu")) is None
    assert amp_dtype("fp32", torch.device("cpu")) is None
    with pytest.raises(CatdogError, match="precision"):
        amp_dtype("fp8", torch.device("cpu"))


def test_world_size_that_does_not_divide_the_global_batch_is_refused():
    check_batch(32, 2, 2)
    with pytest.raises(CatdogError, match="not divisible"):
        check_batch(30, 4, 1)
    with pytest.raises(CatdogError, match="grad-accum"):
        check_batch(32, 1, 0)


def test_rank_slices_cover_the_global_batch_once():
    for world, accum in ((1, 1), (2, 1), (2, 2), (4, 2)):
        rows = []
        for rank in range(world):
            rt = Runtime(torch.device("cpu"), rank=rank, world_size=world)
            parts = rt.local_slices(16, accum)
            assert len(parts) == accum and all(p.stop - p.start == 16 // (world * accum)
                                               for p in parts)  # fmt: skip
            rows += [i for p in parts for i in range(p.start, p.stop)]
        assert sorted(rows) == list(range(16))


def test_lr_scaling_is_explicit():
    assert effective_lr(RuntimeConfig(), 1e-3, 512) == 1e-3
    linear = RuntimeConfig(lr_scaling="linear", lr_base_batch=128)
    assert effective_lr(linear, 1e-3, 512) == pytest.approx(4e-3)
    sqrt = RuntimeConfig(lr_scaling="sqrt", lr_base_batch=128)
    assert effective_lr(sqrt, 1e-3, 512) == pytest.approx(2e-3)


def _launch(stage, cfg, out, ranks, resume=False):
    config = out.parent / f"{out.name}.json"
    config.write_text(json.dumps(to_dict(cfg)))
    worker = [str(ROOT / "tests" / "ddp_worker.py"), stage, str(config), str(out)]
    worker += ["resume"] if resume else []
    if ranks == 1:
        cmd = [sys.executable, *worker]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={ranks}", *worker]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]


def _losses(save_dir, key):
    return [json.loads(line)[key] for line in (save_dir / "metrics.jsonl").read_text().splitlines()]


def _compare(tmp_path, stage, make_cfg, loss_key):
    single, double = tmp_path / "single", tmp_path / "double"
    _launch(stage, make_cfg(single / "run"), single, 1)
    _launch(stage, make_cfg(double / "run"), double, 2)
    w0, w1 = (torch.load(double / f"rank{r}.pt") for r in (0, 1))
    assert all(torch.equal(w0[k], w1[k]) for k in w0), "ranks hold different weights"
    ws = torch.load(single / "rank0.pt")
    for k in ws:
        torch.testing.assert_close(w0[k], ws[k], atol=WEIGHT_ATOL, rtol=0)
    a, b = _losses(single / "run", loss_key), _losses(double / "run", loss_key)
    assert len(a) == len(b) and a == pytest.approx(b, rel=LOSS_RTOL)
    # One set of files: the 2-rank run wrote exactly what one process writes.
    files = lambda d: sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())  # noqa: E731
    assert files(double / "run") == files(single / "run")


def test_vae_stage_on_two_ranks_matches_one_process(tiny_data, vgg_weights, tmp_path):
    def make(save_dir):
        cfg = vae_preset("tiny")
        cfg.data.data_dir, cfg.save_dir, cfg.vgg_weights = (
            str(tiny_data),
            str(save_dir),
            str(vgg_weights),
        )
        cfg.losses.vgg, cfg.losses.adv = LossTerm(0.5), LossTerm(0.1)  # every term from step 1
        cfg.epochs, cfg.progress, cfg.channels_last = 2, False, False
        return cfg

    _compare(tmp_path, "vae", make, "loss_total")


def test_diffusion_stage_on_two_ranks_matches_one_process(tiny_data, tiny_vae, tmp_path):
    def make(save_dir):
        cfg = tiny_diffusion_cfg(tiny_data, tiny_vae, save_dir, epochs=2)
        cfg.runtime = RuntimeConfig(grad_accum=2)  # accumulation and DDP together
        return cfg

    _compare(tmp_path, "diffusion", make, "loss")
    # --resume under DDP: stop the 2-rank run after epoch 1, resume it on 2 ranks; the result is
    # the straight 2-rank run's.
    resumed = tmp_path / "resumed"
    first = make(resumed / "run")
    first.stop_at_epoch = 1
    _launch("diffusion", first, resumed, 2)
    _launch("diffusion", make(resumed / "run"), resumed, 2, resume=True)
    straight, again = (torch.load(d / "rank0.pt") for d in (tmp_path / "double", resumed))
    for k in straight:
        torch.testing.assert_close(again[k], straight[k], atol=WEIGHT_ATOL, rtol=0)


def test_epoch_batches_shuffle_and_keep_only_whole_batches_when_shared():
    kept = epoch_batches(10, 4, torch.Generator().manual_seed(0), drop_last=False)
    assert [len(b) for b in kept] == [4, 4, 2]
    assert sorted(torch.cat(kept).tolist()) == list(range(10))
    dropped = epoch_batches(10, 4, torch.Generator().manual_seed(0), drop_last=True)
    assert [b.tolist() for b in dropped] == [b.tolist() for b in kept[:2]]
    with pytest.raises(CatdogError, match="3 training examples are fewer than one batch of 4"):
        epoch_batches(3, 4, torch.Generator().manual_seed(0), drop_last=True)
    assert len(epoch_batches(3, 4, torch.Generator().manual_seed(0), drop_last=False)) == 1


def test_lr_scaling_needs_a_positive_base_batch_only_when_it_scales():
    assert effective_lr(RuntimeConfig(lr_base_batch=0), 1e-3, 64) == 1e-3
    with pytest.raises(CatdogError, match="--lr-base-batch must be positive"):
        effective_lr(RuntimeConfig(lr_scaling="sqrt", lr_base_batch=-32), 1e-3, 64)
