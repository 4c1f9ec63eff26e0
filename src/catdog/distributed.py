"""Where training runs: device choice, mixed precision, and (under torchrun) data parallelism.

One code path from one CPU process to N GPUs on M machines. ``torchrun`` sets RANK, WORLD_SIZE
and LOCAL_RANK; without them the run is a single process and nothing distributed is touched.

Batches are *global*: ``batch_size`` is the number of images per optimiser step over all ranks
and gradient-accumulation micro-steps. Every rank draws the same global batch and the same
per-sample random numbers for it (noise, flips, timesteps) from a stream shared by all ranks,
then takes its own slice. This is what ``DistributedSampler`` does for indices (one seeded
permutation, sharded), extended to the noise; we hand-write it because sharding the noise too
makes ranks never share noise, makes a resumed run continue exactly, and makes N ranks compute
the same update as one process on the same global batch (a test checks it). Initial weights
agree because every rank seeds the same way (and DDP broadcasts rank 0's at the start).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .config import RuntimeConfig
from .errors import CatdogError

T = TypeVar("T")


def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device that is absent is an error."""
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if cuda else "mps" if mps else "cpu"
    if name.startswith("cuda"):
        if not cuda:
            raise CatdogError("--device cuda was asked for, but CUDA is not available here")
        return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    if name == "mps":
        if not mps:
            raise CatdogError("--device mps was asked for, but MPS is not available here")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise CatdogError(f"unknown device {name!r}; choose auto, cpu, cuda, cuda:N or mps")


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where the device does it well (CUDA with bf16 support); else fp32, warned."""
    if precision == "fp32":
        return None
    if precision != "bf16":
        raise CatdogError(f"unknown precision {precision!r}; choose fp32 or bf16")
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    warnings.warn(
        f"bf16 mixed precision is not supported on {device}; training in fp32", stacklevel=2
    )
    return None


@dataclass
class Runtime:
    """The device, precision and rank of this training process."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    amp: torch.dtype | None = None
    compile: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def wrap(self, module: nn.Module) -> nn.Module:
        """The module to call in training: DDP-wrapped when distributed, compiled on request."""
        if self.compile:
            module = torch.compile(module)
        if not self.distributed:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def no_sync(self, module: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
        """Skip DDP's gradient all-reduce on accumulation micro-steps that are not the last."""
        if sync or not isinstance(module, DistributedDataParallel):
            return contextlib.nullcontext()
        return module.no_sync()

    def local_slices(self, global_batch: int, accum: int) -> list[slice]:
        """This rank's rows of a global batch, one slice per accumulation micro-step.

        Micro-step k covers the k-th 1/accum of the global batch, shared out among the ranks
        (rank r takes the r-th part of it)."""
        per_micro = -(-global_batch // accum)
        out = []
        for k in range(accum):
            lo, hi = k * per_micro, min(global_batch, (k + 1) * per_micro)
            size = hi - lo
            per_rank = -(-size // self.world_size)
            a = lo + min(size, self.rank * per_rank)
            out.append(slice(a, min(hi, a + per_rank)))
        return out

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a float64 CPU tensor over ranks (every rank must call this)."""
        if not self.distributed:
            return values
        moved = values.to(self.device, torch.float32 if self.device.type == "mps" else None)
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        return moved.cpu()

    def agree(self, flag: bool) -> bool:
        """True on every rank if it is true on any rank (a stop decision all ranks follow)."""
        if not self.distributed:
            return flag
        return bool(self.sum(torch.tensor([float(flag)])).item() > 0)

    def from_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on rank 0 and its result (or its CatdogError) given to every rank."""
        if not self.distributed:
            return fn()
        box: list[Any] = [None]
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except CatdogError as exc:
                box[0] = ("error", str(exc))
        dist.broadcast_object_list(box, src=0)
        status, value = box[0]
        if status == "error":
            raise CatdogError(value)
        return value

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Give every rank rank 0's buffers (e.g. statistics that only rank 0 computed)."""
        if self.distributed:
            for buffer in module.buffers():
                dist.broadcast(buffer.data, src=0)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def optimizer_to(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Move an optimiser's state (e.g. Adam moments loaded on the CPU) to ``device``."""
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value) and key != "step":
                state[key] = value.to(device)


def check_batch(global_batch: int, world_size: int, accum: int) -> None:
    if accum < 1:
        raise CatdogError(f"--grad-accum must be at least 1, got {accum}")
    if global_batch % (world_size * accum):
        raise CatdogError(
            f"the global batch {global_batch} is not divisible by world size {world_size} x "
            f"gradient accumulation {accum}; choose a --batch-size that is"
        )


def epoch_batches(
    n: int, batch_size: int, generator: torch.Generator, *, drop_last: bool
) -> list[torch.Tensor]:
    """One epoch's shuffled index batches. With ``drop_last`` (several ranks or micro-steps,
    which need whole batches) a short last batch is dropped, and a training set smaller than
    one batch, which would leave the epoch empty, is an error."""
    if drop_last and n < batch_size:
        raise CatdogError(
            f"{n} training examples are fewer than one batch of {batch_size}, and several "
            "ranks or --grad-accum need whole batches; choose a smaller --batch-size"
        )
    batches = list(torch.randperm(n, generator=generator).split(batch_size))
    if drop_last and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def effective_lr(cfg: RuntimeConfig, lr: float, global_batch: int) -> float:
    """The learning rate after the chosen scaling rule for the global batch."""
    if cfg.lr_scaling == "none":
        return lr
    if cfg.lr_base_batch < 1:
        raise CatdogError(f"--lr-base-batch must be positive, got {cfg.lr_base_batch}")
    ratio = global_batch / cfg.lr_base_batch
    if cfg.lr_scaling == "linear":
        return lr * ratio
    if cfg.lr_scaling == "sqrt":
        return lr * ratio**0.5
    raise CatdogError(f"unknown --lr-scaling {cfg.lr_scaling!r}; choose none, linear or sqrt")


def setup(cfg: RuntimeConfig, global_batch: int) -> Runtime:
    """Start this process's part of the run (joining torchrun's process group, if any)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    check_batch(global_batch, world_size, cfg.grad_accum)
    device = select_device(cfg.device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    compile_ok = cfg.compile and device.type == "cuda"
    if cfg.compile and not compile_ok:
        warnings.warn("torch.compile is only used on CUDA here; running eagerly", stacklevel=2)
    return Runtime(device, rank, world_size, local_rank, amp_dtype(cfg.precision, device),
                   compile_ok)  # fmt: skip


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def running(cfg: RuntimeConfig, global_batch: int) -> Iterator[Runtime]:
    """``setup`` ... ``teardown``, also when training fails."""
    runtime = setup(cfg, global_batch)
    try:
        yield runtime
    finally:
        teardown()
