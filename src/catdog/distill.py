"""Guidance distillation: one network that gives, in one pass, what a model and its guide give
together (Meng et al. 2023, "On distillation of guided diffusion models", stage one).

Guided sampling costs two UNet passes a step: the model and its guide (autoguidance), or the
model given the label and given the null label (classifier-free). The student is a copy of the
model, fine-tuned so that ``student(x_t, t, c)`` matches the teacher's guided output
``diffusion.guided_output`` at the same input, at noise levels drawn uniformly. Its checkpoint
is an ordinary diffusion checkpoint with a ``distilled`` record (teacher, guide, scale, steps):
``checkpoint.find_guide`` gives it no guide and guidance 1, so generation, evaluation and the
pictures sample it at one pass a step with no other change.

The inputs the student learns at are noised latents of two kinds: the training photos and
their mirrors as the VAE encodes them (posterior means), and a pool of latents the guided
teacher samples once (``cfg.generated``), because sampling passes through the guided
trajectories, off the photos' latents.

With ``cfg.members`` the teacher is an ensemble: the weighted mean of the teacher's and each
member's own guided output (each member guided by its recorded guide, at the same scale), which
``models.ensemble.Ensemble`` gives in one call. The student starts as the first teacher.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import checkpoint
from .config import DistillConfig, from_dict, to_dict
from .data import load_split
from .diffusion import guided_output
from .distributed import optimizer_to, select_device
from .ema import EMA
from .errors import CatdogError
from .generate import SHIPPED_TEACHER, check_scales, sample_latents
from .models.ensemble import Ensemble
from .runs import prepare_run, write_metrics
from .train_vae import encode_training_set

STATE, FINAL = "distill_state.pt", "conditional_diffusion_distilled.pt"
KIND_STATE = checkpoint.KIND_DIFFUSION_TRAIN_STATE
CURVE_KEYS = ["loss", "latents_per_s"]
POOL_SEED = 2**31  # the pool's seeds start here, away from generate's and evaluate's (from 0)


def check(cfg: DistillConfig) -> None:
    """The settings, before anything is loaded or written."""
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.checkpoint_every < 1:
        raise CatdogError("--steps, --batch-size and --checkpoint-every must be at least 1, got "
                          f"{cfg.steps}, {cfg.batch_size}, {cfg.checkpoint_every}")  # fmt: skip
    if not 0 <= cfg.generated_fraction <= 1:
        raise CatdogError(f"--generated-fraction must be in [0, 1], got {cfg.generated_fraction}")
    if cfg.generated < 0 or (cfg.generated_fraction > 0 and cfg.generated == 0):
        raise CatdogError(f"--generated must be at least 1 with --generated-fraction above 0, "
                          f"got {cfg.generated}")  # fmt: skip
    if cfg.generated_fraction > 0 and POOL_SEED + cfg.generated > 2**32:
        raise CatdogError(f"--generated must be at most {2**32 - POOL_SEED}, got {cfg.generated}")
    if not cfg.lr > 0:
        raise CatdogError(f"--lr must be positive, got {cfg.lr}")
    if not 0 <= cfg.ema_decay < 1:
        raise CatdogError(f"--ema-decay must be in [0, 1), got {cfg.ema_decay}")
    if cfg.max_minutes is not None and not cfg.max_minutes > 0:
        raise CatdogError(f"--max-minutes must be positive, got {cfg.max_minutes}")
    if cfg.member_weights:
        weights = cfg.member_weights
        if len(weights) != 1 + len(cfg.members):
            raise CatdogError(f"--member-weights needs {1 + len(cfg.members)} values (the "
                              f"teacher's and one per --member), got {len(weights)}")  # fmt: skip
        if not all(math.isfinite(w) and w >= 0 for w in weights) or abs(sum(weights) - 1) > 1e-6:
            raise CatdogError(f"--member-weights must be numbers >= 0 summing to 1, got "
                              f"{','.join(map(str, weights))}")  # fmt: skip
    check_scales(guidance=cfg.guidance)


def ensemble_weights(cfg: DistillConfig) -> list[float]:
    """The teacher's weight, then each member's (equal when not given)."""
    n = 1 + len(cfg.members)
    return list(cfg.member_weights) if cfg.member_weights else [1 / n] * n


def teacher_path(cfg: DistillConfig) -> str:
    """The teacher's checkpoint: ``cfg.model_path``, else the shipped pair (not the shipped
    default, which is distilled already)."""
    if cfg.model_path is not None:
        return cfg.model_path
    if not SHIPPED_TEACHER.is_file():
        raise CatdogError(
            f"no --model-path given and no shipped teacher at {SHIPPED_TEACHER}; pass the "
            "diffusion checkpoint to distil (a model trained with a guide)"
        )
    return str(SHIPPED_TEACHER)


def teacher_of(cfg: DistillConfig) -> tuple[Any, ...]:
    """The teacher (the model, its schedule and record), its VAE and path, its guide and the
    guidance scale, each checked as generation checks them."""
    model_path = teacher_path(cfg)
    teacher, schedule, record = checkpoint.load_diffusion(model_path)
    if record.get("distilled"):
        raise CatdogError(f"{model_path} is already guidance-distilled; distil its teacher")
    if teacher.cfg.subclasses > 1 or teacher.cfg.self_condition:
        raise CatdogError(f"{model_path} has sub-classes or self-conditioning, which "
                          "distillation does not support")  # fmt: skip
    vae, vae_path = checkpoint.find_vae(model_path, record, cfg.vae_path)
    guide, link = checkpoint.find_guide(model_path, record, cfg.guide_path)
    guidance = checkpoint.resolve_guidance(cfg.guidance, link)
    if guidance == 1.0:
        raise CatdogError("guidance 1 is the model itself: there is no guidance to distil")
    return model_path, teacher, schedule, record, vae, vae_path, guide, guidance


def members_of(cfg: DistillConfig, schedule: Any, vae_path: str,
               classifier_free: bool) -> list[tuple[str, Any, Any]]:  # fmt: skip
    """Each ``--member``: its path, its network and its recorded guide (none when the teacher's
    guidance is classifier-free), checked to share the teacher's schedule and latent space."""
    members = []
    for path in cfg.members:
        member, member_schedule, member_record = checkpoint.load_diffusion(path)
        if member_record.get("distilled"):
            raise CatdogError(f"--member {path} is guidance-distilled; give the model it was "
                              "distilled from")  # fmt: skip
        if member.cfg.subclasses > 1 or member.cfg.self_condition:
            raise CatdogError(f"--member {path} has sub-classes or self-conditioning, which "
                              "distillation does not support")  # fmt: skip
        if member_schedule.cfg != schedule.cfg:
            raise CatdogError(f"--member {path} has another noise schedule than the teacher")
        checkpoint.find_vae(path, member_record, vae_path)  # refuses another latent space
        guide, _ = checkpoint.find_guide(path, member_record, "none" if classifier_free else None)
        if guide is None and not classifier_free:
            raise CatdogError(f"--member {path} has no recorded guide; each member is guided by "
                              "its own (or give the teacher --guide-path none)")  # fmt: skip
        members.append((path, member, guide))
    return members


def link_of(path: str, net: torch.nn.Module) -> dict[str, str]:
    """A network's record: its resolved path and content hash."""
    return {"path": str(Path(path).resolve()), "sha256": checkpoint.content_hash(net.state_dict())}


def distill(cfg: DistillConfig, *, resume: bool = False,
            given: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """Train (or, with ``resume``, continue) a student; returns the last logged record.

    Writes ``conditional_diffusion_distilled.pt`` (the student's EMA, usable at every
    checkpoint), ``distill_state.pt`` (to resume), ``config.json``, ``metrics.jsonl`` and the
    loss curve into ``cfg.save_dir``. ``given``: the settings the command line set, for
    ``runs.prepare_run`` on resume."""
    check(cfg)
    cfg, state = prepare_run(cfg, resume=resume, state_name=STATE, final_name=FINAL,
                             state_kind=KIND_STATE, what="distillation", given=given)  # fmt: skip
    check(cfg)
    model_path, teacher, schedule, record, vae, vae_path, guide, guidance = teacher_of(cfg)
    members = members_of(cfg, schedule, vae_path, classifier_free=guide is None)
    weights = ensemble_weights(cfg)
    teacher_link = link_of(model_path, teacher)
    distilled = {"teacher": teacher_link, "guidance": guidance,
                 "guide_sha256": None if guide is None else checkpoint.content_hash(
                     guide.state_dict())}  # fmt: skip
    if members:
        distilled["members"] = [
            {**link_of(path, member), "guide_sha256": None if member_guide is None
             else checkpoint.content_hash(member_guide.state_dict())}
            for path, member, member_guide in members
        ]  # fmt: skip
        distilled["weights"] = weights
    if state is not None:  # the paths may have moved; the networks must be the same
        started = state["distilled"]
        if started["teacher"]["sha256"] != teacher_link["sha256"]:
            raise CatdogError(f"{model_path} is not the teacher this distillation run started "
                              "from")  # fmt: skip
        if started["guide_sha256"] != distilled["guide_sha256"]:
            raise CatdogError("the guide is not the one this distillation run started from")
        hashes = [(m["sha256"], m["guide_sha256"]) for m in distilled.get("members", [])]
        if hashes != [(m["sha256"], m["guide_sha256"]) for m in started.get("members", [])]:
            raise CatdogError("the --member models are not the ones this distillation run "
                              "started from")  # fmt: skip
    vae_link = checkpoint.vae_link(vae, str(Path(vae_path).resolve()))
    save_dir = Path(cfg.save_dir)
    # The teacher and guide were loaded for sampling (channels-last); train in NCHW as
    # train_diffusion does.
    device = select_device(cfg.device)
    teacher = teacher.to(device, memory_format=torch.contiguous_format)
    if guide is not None:
        guide = guide.to(device, memory_format=torch.contiguous_format)
    # What the student learns: the teacher's guided output, or the ensemble's (the weighted
    # mean of each member's own guided output, since guidance is linear in both networks).
    target_net, target_guide = teacher, guide
    if members:
        nets = [teacher, *(m.to(device, memory_format=torch.contiguous_format)
                           for _, m, _ in members)]  # fmt: skip
        target_net = Ensemble(nets, weights)
        if guide is not None:
            guides = [guide, *(g.to(device, memory_format=torch.contiguous_format)
                               for _, _, g in members)]  # fmt: skip
            target_guide = Ensemble(guides, weights)

    real, real_labels = torch.empty(0), torch.empty(0, dtype=torch.long)
    if cfg.generated_fraction < 1:
        data = from_dict(type(cfg.data), {**to_dict(cfg.data), "image_size": vae.cfg.image_size})
        photos = load_split(data, data.train_split)
        real = vae.normalize_latent(encode_training_set(vae, photos.images)[0])
        real_labels = photos.labels.repeat(2)  # the photos, then their mirrors
    if state is not None:
        pool, pool_labels = state["pool"], state["pool_labels"]
    elif cfg.generated_fraction > 0:
        pool_labels = torch.arange(cfg.generated) % 2  # cats and dogs alike
        seeds = list(range(POOL_SEED, POOL_SEED + cfg.generated))  # the same pool for any seed
        pool = sample_latents(target_net, schedule, pool_labels, seeds, sampler="dpmpp",
                              steps=20, guidance=guidance, guide=target_guide, batch_size=100,
                              progress=cfg.progress, device=device).cpu()  # fmt: skip
    else:
        pool, pool_labels = torch.empty(0), torch.empty(0, dtype=torch.long)

    torch.manual_seed(cfg.seed)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    ema = EMA(student, cfg.ema_decay)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
    rng = torch.Generator().manual_seed(cfg.seed + 1)  # all randomness drawn on the CPU
    step, history = 0, []
    if state is not None:
        student.load_state_dict(state["student"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step, history = state["step"], state["history"]
        rng.set_state(state["rng"])
    optimizer_to(opt, device)
    checkpoint.atomic_write_json(save_dir / "config.json", to_dict(cfg))

    def save() -> None:
        checkpoint.save(save_dir / FINAL, checkpoint.KIND_DIFFUSION, checkpoint.diffusion_payload(
            ema.model, record["schedule_config"], vae_link, to_dict(cfg),
            distilled={**distilled, "steps": step}, step=step,
        ))  # fmt: skip
        checkpoint.save(save_dir / STATE, KIND_STATE, {
            "train_config": to_dict(cfg), "student": student.state_dict(), "ema": ema.state_dict(),
            "opt": opt.state_dict(), "step": step, "history": history, "rng": rng.get_state(),
            "pool": pool, "pool_labels": pool_labels, "distilled": distilled,
        })  # fmt: skip

    from_pool = round(cfg.batch_size * cfg.generated_fraction)
    started = last_log = time.monotonic()
    loss_sum, seen = 0.0, 0
    bar = tqdm(total=cfg.steps, initial=step, desc="distilling", disable=not cfg.progress)
    while step < cfg.steps:
        x0, labels = [], []
        for source, source_labels, count in ((real, real_labels, cfg.batch_size - from_pool),
                                             (pool, pool_labels, from_pool)):  # fmt: skip
            if count:
                pick = torch.randint(len(source), (count,), generator=rng)
                x0.append(source[pick])
                labels.append(source_labels[pick])
        x0, labels = torch.cat(x0), torch.cat(labels)
        labels = teacher.drop_labels(labels, rng)  # the null label too, as in training
        t = torch.randint(1, schedule.num_timesteps + 1, (len(x0),), generator=rng)
        noise = torch.randn(x0.shape, generator=rng)
        x0, noise, t, labels = x0.to(device), noise.to(device), t.to(device), labels.to(device)
        x_t = schedule.add_noise(x0, noise, t)
        with torch.no_grad():
            target = guided_output(target_net, x_t, t, labels, guidance, teacher.null_label,
                                   target_guide)  # fmt: skip
        loss = F.mse_loss(student(x_t, t, labels), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
        opt.step()
        ema.update(student)
        step += 1
        loss_sum, seen = loss_sum + loss.item() * len(x0), seen + len(x0)
        bar.update(1)
        time_up = cfg.max_minutes is not None and time.monotonic() - started > 60 * cfg.max_minutes
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or time_up:
            now = time.monotonic()
            history.append({"step": step, "loss": loss_sum / seen, "seconds": now - last_log,
                            "latents_per_s": seen / (now - last_log)})  # fmt: skip
            loss_sum, seen, last_log = 0.0, 0, now
            write_metrics(save_dir, history, CURVE_KEYS, x="step")
            save()
            if time_up:
                break
    bar.close()
    if step < cfg.steps and cfg.progress:
        tqdm.write(f"stopped at step {step} of {cfg.steps} (--max-minutes); continue with "
                   "--resume")  # fmt: skip
    return history[-1] if history else {"step": step}
