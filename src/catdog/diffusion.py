"""Noise schedule and samplers for latent diffusion. Samplers are pure functions with one
signature: ``sampler(model, x_T, timesteps, *, labels, schedule, guidance, generators, callback,
guide, class_guidance)``. A self-conditioned model (``UNetConfig.self_condition``) is given the
previous step's estimate of the clean latent at every step after the first.

Timesteps 1..T are noise levels and t = 0 is the clean latent (alpha_bar(0) = 1), so
``add_noise(x0, noise, 0) == x0`` exactly, and every sampler ends on t = 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .config import ScheduleConfig

# callback(step_index, t, x_t, predicted_x0) is called after every sampler step.
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]
# denoiser(x_t, t, labels) -> the network's output (eps or v).
Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class NoiseSchedule:
    """alpha_bar(t) for t = 0..T (index 0 = clean), and the objective's conversions."""

    def __init__(self, cfg: ScheduleConfig) -> None:
        self.cfg = cfg
        T = cfg.num_timesteps
        if cfg.kind == "linear":  # DDPM (Ho et al. 2020), as the original code
            scale = 1000 / T  # keep alpha_bar(T) near 0 for T != 1000 (Nichol & Dhariwal 2021)
            betas = torch.linspace(
                cfg.beta_start * scale, cfg.beta_end * scale, T, dtype=torch.float64
            ).clamp(max=0.999)
            alpha_bar = torch.cumprod(1 - betas, dim=0)
        elif cfg.kind == "cosine":  # Nichol & Dhariwal 2021, eq. 17, betas clipped at 0.999
            s = 0.008
            steps = torch.arange(T + 1, dtype=torch.float64) / T
            f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
            betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
            alpha_bar = torch.cumprod(1 - betas, dim=0)
        else:
            raise ValueError(f"unknown schedule {cfg.kind!r}; choose linear or cosine")
        if cfg.logsnr_shift:  # sigmoid(logit(alpha_bar) + shift), exact at alpha_bar = 0 or 1
            alpha_bar = alpha_bar / (alpha_bar + (1 - alpha_bar) * math.exp(-cfg.logsnr_shift))
        if cfg.objective not in ("eps", "v"):
            raise ValueError(f"unknown objective {cfg.objective!r}; choose eps or v")
        self.alpha_bar = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar]).float()

    @property
    def num_timesteps(self) -> int:
        return self.cfg.num_timesteps

    def _coeffs(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ab = self.alpha_bar.to(t.device)[t][:, None, None, None]
        return ab.sqrt(), (1 - ab).sqrt()

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0): sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) noise (DDPM eq. 4)."""
        a, s = self._coeffs(t)
        return a * x0 + s * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network learns to predict: eps, or v = a*eps - s*x0 (Salimans & Ho 2022)."""
        if self.cfg.objective == "eps":
            return noise
        a, s = self._coeffs(t)
        return a * noise - s * x0

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample weight. With min-SNR-gamma (Hang et al. 2023), min(SNR, gamma) / SNR for eps
        and min(SNR, gamma) / (SNR + 1) for v; 1 otherwise."""
        if self.cfg.min_snr_gamma <= 0:
            return torch.ones(t.shape, device=t.device)
        ab = self.alpha_bar.to(t.device)[t]
        snr = ab / (1 - ab)
        clipped = snr.clamp(max=self.cfg.min_snr_gamma)
        return clipped / snr if self.cfg.objective == "eps" else clipped / (snr + 1)

    def predict_x0_eps(
        self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Recover (x0, eps) from the network's output at x_t."""
        a, s = self._coeffs(t)
        if self.cfg.objective == "eps":
            eps = output
            x0 = (x_t - s * eps) / a
        else:
            x0 = a * x_t - s * output
            eps = s * x_t + a * output
        return x0, eps

    def spaced_timesteps(self, num_steps: int) -> list[int]:
        """``num_steps`` levels from T down to 1, evenly spaced ("trailing", Lin et al. 2024)."""
        if not 1 <= num_steps <= self.num_timesteps:
            raise ValueError(f"steps must be in 1..{self.num_timesteps}, got {num_steps}")
        T = self.num_timesteps
        return sorted({round(T - i * T / num_steps) for i in range(num_steps)}, reverse=True)


def guided_output(
    model: Denoiser,
    x: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor,
    guidance: float,
    null_label: int,
    guide: Denoiser | None = None,
    class_guidance: float = 1.0,
    self_cond: torch.Tensor | None = None,
) -> torch.Tensor:
    """Guided output: ``reference + guidance * (model - reference)``.

    Without ``guide`` this is classifier-free guidance (Ho & Salimans 2022): the reference is the
    same model given the null label. With ``guide`` it is autoguidance (Karras et al. 2024): the
    reference is a weaker model of the same kind (smaller, shorter trained) given the same
    label, which pushes samples away from the weak model's errors rather than towards the
    class. ``guidance`` 1 is exactly the conditional model (one forward pass) in both cases.

    ``class_guidance`` (with a ``guide`` only) adds a classifier-free term on top:
    ``model + (guidance - 1)(model - guide) + (class_guidance - 1)(model - model(null))``, a
    third pass per step that pushes towards the asked-for class (docs/design.md, "Class
    guidance on top of autoguidance, as an option"). 1 leaves plain autoguidance, exactly.

    ``self_cond``, for self-conditioned networks only, is the previous step's (guided) estimate
    of the clean latent; every pass, the guide's included, is given it.
    """
    model = _with_self_cond(model, self_cond)
    guide = None if guide is None else _with_self_cond(guide, self_cond)
    if guidance == 1.0 and class_guidance == 1.0:
        return model(x, t, labels)
    if class_guidance != 1.0 and guide is None:
        raise ValueError("class_guidance needs a guide; without one, guidance is the "
                         "classifier-free scale")  # fmt: skip
    if guide is None:
        cond, uncond = _conditional_and_null(model, x, t, labels, null_label)
        return uncond + guidance * (cond - uncond)
    if class_guidance == 1.0:
        reference = guide(x, t, labels)
        return reference + guidance * (model(x, t, labels) - reference)
    cond, uncond = _conditional_and_null(model, x, t, labels, null_label)
    out = cond + (class_guidance - 1) * (cond - uncond)
    if guidance != 1.0:
        out = out + (guidance - 1) * (cond - guide(x, t, labels))
    return out


def _with_self_cond(model: Denoiser, self_cond: torch.Tensor | None) -> Denoiser:
    """``model`` with ``self_cond`` bound (repeated to the batch when cond and null passes are
    batched together); ``model`` itself when there is none."""
    if self_cond is None:
        return model

    def bound(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        repeat = len(x) // len(self_cond)
        return model(x, t, labels, self_cond=self_cond.repeat(repeat, 1, 1, 1))

    return bound


def self_conditioned(model: Denoiser) -> bool:
    """Whether ``model`` takes its previous clean-latent estimate (``cfg.self_condition``)."""
    return bool(getattr(getattr(model, "cfg", None), "self_condition", False))


def _conditional_and_null(
    model: Denoiser, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, null_label: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model given the labels and given the null label, in one batched pass."""
    both = model(
        torch.cat([x, x]),
        torch.cat([t, t]),
        torch.cat([labels, torch.full_like(labels, null_label)]),
    )
    cond, uncond = both.chunk(2)
    return cond, uncond


def per_sample_noise(
    shape: Sequence[int], generators: Sequence[torch.Generator], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Gaussian noise drawn image by image from each image's own generator, so an image
    depends on its seed only, whatever the batch it is generated in."""
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in generators]).to(device)


@torch.no_grad()
def ddim_sample(
    model: Denoiser,
    x: torch.Tensor,
    timesteps: Sequence[int],
    *,
    labels: torch.Tensor,
    schedule: NoiseSchedule,
    null_label: int,
    guidance: float = 1.0,
    eta: float = 0.0,
    generators: Sequence[torch.Generator] | None = None,
    callback: Callback | None = None,
    guide: Denoiser | None = None,
    class_guidance: float = 1.0,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12) from x at ``timesteps[0]`` down to t = 0.

    ``eta`` = 0 is deterministic; ``eta`` = 1 over every timestep is ancestral DDPM sampling
    (the posterior variance beta-tilde of Ho et al. 2020).
    """
    alpha_bar = schedule.alpha_bar.to(x.device)
    steps = list(timesteps) + [0]
    keeps_estimate = self_conditioned(model)
    estimate = None  # the previous step's x0, for a self-conditioned model
    for i, (t, t_prev) in enumerate(zip(steps[:-1], steps[1:], strict=True)):
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        output = guided_output(model, x, t_batch, labels, guidance, null_label, guide,
                               class_guidance, estimate)  # fmt: skip
        x0, eps = schedule.predict_x0_eps(output, x, t_batch)
        estimate = x0 if keeps_estimate else None
        ab, ab_prev = alpha_bar[t], alpha_bar[t_prev]
        sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()
        x = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0 and t_prev > 0:
            if generators is None:
                raise ValueError("stochastic sampling (eta > 0) needs per-image generators")
            x = x + sigma * per_sample_noise(x.shape[1:], generators, x.device)
        if callback is not None:
            callback(i, t_prev, x, x0)
    return x


def ddpm_sample(model, x, timesteps=None, **kwargs) -> torch.Tensor:
    """Ancestral DDPM over all T steps, as the original code: DDIM with eta = 1, every step."""
    schedule: NoiseSchedule = kwargs["schedule"]
    kwargs["eta"] = 1.0
    return ddim_sample(model, x, list(range(schedule.num_timesteps, 0, -1)), **kwargs)


@torch.no_grad()
def dpmpp_2m_sample(
    model: Denoiser,
    x: torch.Tensor,
    timesteps: Sequence[int],
    *,
    labels: torch.Tensor,
    schedule: NoiseSchedule,
    null_label: int,
    guidance: float = 1.0,
    eta: float = 0.0,
    generators: Sequence[torch.Generator] | None = None,
    callback: Callback | None = None,
    guide: Denoiser | None = None,
    class_guidance: float = 1.0,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): a deterministic second-order multistep solver
    on the data prediction, good at 10-25 steps. ``eta`` and ``generators`` are unused."""
    del eta, generators
    alpha_bar = schedule.alpha_bar.double().to(x.device)
    steps = list(timesteps) + [0]
    alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    lam = lambda t: torch.log(alpha[t]) - torch.log(sigma[t])  # noqa: E731 - half log-SNR
    previous_x0, previous_h = None, None
    keeps_estimate = self_conditioned(model)
    for i, (t, t_next) in enumerate(zip(steps[:-1], steps[1:], strict=True)):
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        estimate = previous_x0 if keeps_estimate else None
        output = guided_output(model, x, t_batch, labels, guidance, null_label, guide,
                               class_guidance, estimate)  # fmt: skip
        x0, _ = schedule.predict_x0_eps(output, x, t_batch)
        if t_next == 0:  # sigma = 0: the solution is the data prediction itself
            x = x0
        else:
            h = lam(t_next) - lam(t)
            if previous_x0 is None:  # first step: DPM-Solver++(1), i.e. DDIM
                d = x0
            else:
                r = previous_h / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * previous_x0
            x = (sigma[t_next] / sigma[t]).float() * x - (
                alpha[t_next] * torch.expm1(-h)
            ).float() * d
            previous_h = h
        previous_x0 = x0
        if callback is not None:
            callback(i, t_next, x, x0)
    return x


SAMPLERS = {"ddim": ddim_sample, "ddpm": ddpm_sample, "dpmpp": dpmpp_2m_sample}
