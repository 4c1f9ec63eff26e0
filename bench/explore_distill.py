"""Exploration: distil autoguidance into one network (Meng et al. 2023, "On distillation of
guided diffusion models", stage one), so that sampling needs one UNet pass a step instead of
two (the model and its guide).

The student starts as a copy of the model and learns, at random noise levels, the guided
output ``m + (W-1) (m - g)`` of the model m and its guide g, on noised latents of two kinds:
the training photos (and their mirrors) as the VAE encodes them, and latents the guided model
itself sampled, so the student also sees the off-manifold latents that sampling passes
through. Every --save-every steps the student's EMA is written to OUT/student_STEP.pt (a
diffusion checkpoint with no guide, linked to the model's VAE), for scoring with
``explore_guidance.py --model-path ... --guide-path none "ag 1"``-style runs or bench_quality.

A one-off script (run from the repository root):

    python bench/explore_distill.py --minutes 30 --out runs/distill
"""

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, "src")
from catdog import checkpoint  # noqa: E402
from catdog.config import DataConfig  # noqa: E402
from catdog.data import load_split  # noqa: E402
from catdog.ema import EMA  # noqa: E402
from catdog.generate import sample_latents  # noqa: E402
from catdog.train_vae import encode_training_set  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--model-path", default="src/catdog/weights/catdog_diffusion.safetensors")
p.add_argument("--data-dir", default="../shared/data/catdog96")
p.add_argument("--guidance", type=float, default=None, help="default: the guide's tuned scale")
p.add_argument("--generated", type=int, default=1000, help="guided samples in the pool")
p.add_argument("--generated-fraction", type=float, default=0.5)
p.add_argument("--batch-size", type=int, default=128)
p.add_argument("--lr", type=float, default=1e-4)
p.add_argument("--ema-decay", type=float, default=0.998)
p.add_argument("--minutes", type=float, default=30)
p.add_argument("--save-every", type=int, default=400)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--out", default="runs/distill")
a = p.parse_args()
out = Path(a.out)
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(a.seed)

teacher, schedule, record = checkpoint.load_diffusion(a.model_path)
vae, vae_path = checkpoint.find_vae(a.model_path, record)
guide, link = checkpoint.find_guide(a.model_path, record)
w = checkpoint.resolve_guidance(a.guidance, link)
teacher, guide = (
    teacher.to(memory_format=torch.contiguous_format),
    guide.to(memory_format=torch.contiguous_format),
)

train = load_split(DataConfig(data_dir=a.data_dir, image_size=48), "train")
means, _ = encode_training_set(vae, train.images)
real = vae.normalize_latent(means)
real_labels = train.labels.repeat(2)
start = time.monotonic()
gen_labels = torch.arange(2).repeat_interleave(a.generated // 2)
seeds = list(range(10**6, 10**6 + len(gen_labels)))  # away from the scoring seeds (0..)
generated = sample_latents(teacher, schedule, gen_labels, seeds, sampler="dpmpp", steps=20,
                           guidance=w, guide=guide, batch_size=100)  # fmt: skip
print(f"pool: {len(real)} real, {len(generated)} generated in {time.monotonic() - start:.0f} s",
      flush=True)  # fmt: skip

student = copy.deepcopy(teacher).train()
ema = EMA(student, a.ema_decay)
opt = torch.optim.AdamW(student.parameters(), lr=a.lr, weight_decay=0.0)
rng = torch.Generator().manual_seed(a.seed)
n_gen = round(a.batch_size * a.generated_fraction)
n_real = a.batch_size - n_gen
T = schedule.num_timesteps
step, start, log = 0, time.monotonic(), []


def save(step: int) -> None:
    payload = checkpoint.diffusion_payload(
        ema.model, record["schedule_config"], record["vae"], record.get("train_config", {}),
        epoch=0, distilled={"from": a.model_path, "guidance": w, "step": step},
    )  # fmt: skip
    checkpoint.save(out / f"student_{step:05d}.pt", checkpoint.KIND_DIFFUSION, payload)


while time.monotonic() - start < 60 * a.minutes:
    i_real = torch.randint(len(real), (n_real,), generator=rng)
    i_gen = torch.randint(len(generated), (n_gen,), generator=rng)
    x0 = torch.cat([real[i_real], generated[i_gen]])
    labels = torch.cat([real_labels[i_real], gen_labels[i_gen]])
    labels = teacher.drop_labels(labels, rng)  # the null label too, as in training
    t = torch.randint(1, T + 1, (len(x0),), generator=rng)
    x_t = schedule.add_noise(x0, torch.randn(x0.shape, generator=rng), t)
    with torch.no_grad():
        m = teacher(x_t, t, labels)
        target = m + (w - 1) * (m - guide(x_t, t, labels))
    loss = torch.nn.functional.mse_loss(student(x_t, t, labels), target)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    opt.step()
    ema.update(student)
    step += 1
    log.append(loss.item())
    if step % 50 == 0:
        rate = step * a.batch_size / (time.monotonic() - start)
        print(json.dumps({"step": step, "loss": round(sum(log[-50:]) / 50, 5),
                          "latents_per_s": round(rate, 1)}), flush=True)  # fmt: skip
    if step % a.save_every == 0:
        save(step)
save(step)
print(f"done: {step} steps in {(time.monotonic() - start) / 60:.1f} min", flush=True)
