import math

import pytest
import torch

from catdog.config import ScheduleConfig, UNetConfig
from catdog.diffusion import (
    NoiseSchedule,
    ddim_sample,
    ddpm_sample,
    dpmpp_2m_sample,
    guided_output,
    per_sample_noise,
)


@pytest.fixture(params=["linear", "cosine"])
def kind(request):
    return request.param


def test_add_noise_at_t0_returns_x0_and_alpha_bar_decreases(kind):
    schedule = NoiseSchedule(ScheduleConfig(kind=kind, num_timesteps=100))
    x0, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    assert torch.equal(schedule.add_noise(x0, noise, torch.zeros(3, dtype=torch.long)), x0)
    ab = schedule.alpha_bar
    assert ab[0] == 1 and (ab[1:] < ab[:-1]).all() and ab[-1] < 0.05 and ab[-1] >= 0


@pytest.mark.parametrize("objective", ["eps", "v"])
def test_prediction_conversions_invert_the_target(kind, objective):
    schedule = NoiseSchedule(ScheduleConfig(kind=kind, num_timesteps=100, objective=objective))
    x0, noise = torch.randn(4, 2, 4, 4), torch.randn(4, 2, 4, 4)
    t = torch.tensor([1, 30, 60, 90])
    x_t = schedule.add_noise(x0, noise, t)
    x0_hat, eps_hat = schedule.predict_x0_eps(schedule.target(x0, noise, t), x_t, t)
    torch.testing.assert_close(x0_hat, x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(eps_hat, noise, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shift", [-math.log(2), 1.0])
def test_logsnr_shift_moves_every_level_by_the_shift(kind, shift):
    base = NoiseSchedule(ScheduleConfig(kind=kind, num_timesteps=100)).alpha_bar.double()
    ab = NoiseSchedule(ScheduleConfig(kind=kind, num_timesteps=100, logsnr_shift=shift)).alpha_bar
    ab = ab.double()
    logsnr = lambda a: (a / (1 - a)).log()  # noqa: E731
    inner = slice(1, 90)  # away from float32's ends
    torch.testing.assert_close(logsnr(ab[inner]), logsnr(base[inner]) + shift, atol=1e-3, rtol=0)
    assert ab[0] == 1 and (ab[1:] < ab[:-1]).all() and ab[-1] >= 0
    assert (ab[1:] < base[1:]).all() if shift < 0 else (ab[1:-1] > base[1:-1]).all()


def test_min_snr_weight_caps_low_noise_steps():
    schedule = NoiseSchedule(ScheduleConfig(objective="eps", min_snr_gamma=5.0))
    w = schedule.loss_weight(torch.tensor([1, 999]))
    assert w[0] < 0.01 and w[1] == pytest.approx(1.0)
    assert (NoiseSchedule(ScheduleConfig()).loss_weight(torch.tensor([1, 5])) == 1).all()


def test_spaced_timesteps():
    schedule = NoiseSchedule(ScheduleConfig(num_timesteps=1000))
    steps = schedule.spaced_timesteps(25)
    assert len(steps) == 25 and steps[0] == 1000 and steps[-1] >= 1
    assert all(a > b for a, b in zip(steps, steps[1:], strict=False))
    assert schedule.spaced_timesteps(1000) == list(range(1000, 0, -1))
    for bad in (0, 1001):
        with pytest.raises(ValueError, match="steps must be in"):
            schedule.spaced_timesteps(bad)


def oracle(schedule, x0):
    """A 'network' that knows the clean latent: returns the exact target at x_t."""

    def model(x_t, t, labels):
        a, s = schedule._coeffs(t)
        eps = (x_t - a * x0) / s
        return schedule.target(x0, eps, t)

    return model


@pytest.mark.parametrize("objective", ["eps", "v"])
def test_ddim_with_a_perfect_model_lands_on_x0(objective):
    schedule = NoiseSchedule(ScheduleConfig(kind="linear", num_timesteps=200, objective=objective))
    x0 = torch.randn(2, 2, 4, 4)
    x_T = torch.randn(2, 2, 4, 4)
    labels = torch.zeros(2, dtype=torch.long)
    steps = schedule.spaced_timesteps(10)
    out = ddim_sample(
        oracle(schedule, x0), x_T, steps, labels=labels, schedule=schedule, null_label=2
    )
    torch.testing.assert_close(out, x0, atol=1e-3, rtol=1e-3)


def test_ddim_eta0_is_deterministic_and_callback_sees_every_step():
    schedule = NoiseSchedule(ScheduleConfig(num_timesteps=50))
    torch.manual_seed(0)
    net = torch.nn.Conv2d(2, 2, 3, padding=1)

    def model(x, t, labels):
        return net(x) * (1 + t[:, None, None, None] / 50) + labels[:, None, None, None]

    x_T = torch.randn(3, 2, 4, 4)
    seen = []
    kwargs = dict(labels=torch.tensor([0, 1, 0]), schedule=schedule, null_label=2)
    a = ddim_sample(
        model, x_T, schedule.spaced_timesteps(7), callback=lambda *s: seen.append(s[1]), **kwargs
    )
    b = ddim_sample(model, x_T, schedule.spaced_timesteps(7), **kwargs)
    assert torch.equal(a, b)
    assert len(seen) == 7 and seen[-1] == 0


def test_guidance_one_is_the_conditional_model_and_w_extrapolates():
    calls = []

    def model(x, t, labels):
        calls.append(len(labels))
        return x + labels[:, None, None, None].float()

    x, t = torch.zeros(2, 1, 2, 2), torch.tensor([5, 5])
    labels = torch.tensor([0, 1])
    assert torch.equal(guided_output(model, x, t, labels, 1.0, null_label=2), model(x, t, labels))
    assert calls[0] == 2  # one plain conditional pass, no null-label batch
    guided = guided_output(model, x, t, labels, 3.0, null_label=2)  # uncond = 2, cond = label
    torch.testing.assert_close(guided, 2 + 3 * (labels[:, None, None, None] - 2.0).expand_as(x))


def test_autoguidance_extrapolates_from_the_guide_given_the_same_label():
    calls = []

    def model(x, t, labels):
        return x + 2 * labels[:, None, None, None].float()

    def guide(x, t, labels):
        calls.append(labels.clone())
        return x + labels[:, None, None, None].float()

    x, t, labels = torch.zeros(2, 1, 2, 2), torch.tensor([5, 5]), torch.tensor([0, 1])
    out = guided_output(model, x, t, labels, 1.0, null_label=2, guide=guide)
    assert torch.equal(out, model(x, t, labels)) and not calls  # scale 1: the guide is not run
    out = guided_output(model, x, t, labels, 3.0, null_label=2, guide=guide)
    # guide + 3 (model - guide) = x + 1*label + 3*(1*label) = 4*label; never the null label
    torch.testing.assert_close(out, 4 * labels[:, None, None, None].float().expand_as(x))
    assert torch.equal(calls[0], labels)
    same = guided_output(model, x, t, labels, 5.0, null_label=2, guide=model)
    torch.testing.assert_close(same, model(x, t, labels))  # a guide equal to the model: no-op


def test_class_guidance_adds_a_classifier_free_term_to_autoguidance():
    def model(x, t, labels):  # the null label (2) gives the unconditional output 10
        return x + torch.where(labels == 2, 10.0, 2.0 * labels.float())[:, None, None, None]

    def guide(x, t, labels):
        return x + labels[:, None, None, None].float()

    x, t, labels = torch.zeros(2, 1, 2, 2), torch.tensor([5, 5]), torch.tensor([0, 1])
    plain = guided_output(model, x, t, labels, 3.0, null_label=2, guide=guide)
    one = guided_output(model, x, t, labels, 3.0, null_label=2, guide=guide, class_guidance=1.0)
    assert torch.equal(one, plain)  # class guidance 1 is plain autoguidance, exactly
    out = guided_output(model, x, t, labels, 3.0, null_label=2, guide=guide, class_guidance=2.5)
    m, g = 2.0 * labels.float(), labels.float()
    expected = m + 2 * (m - g) + 1.5 * (m - 10)  # m + (w_a - 1)(m - g) + (w_c - 1)(m - m_null)
    torch.testing.assert_close(out, expected[:, None, None, None].expand_as(x))
    cfg_only = guided_output(model, x, t, labels, 1.0, null_label=2, guide=guide,
                             class_guidance=2.5)  # fmt: skip
    torch.testing.assert_close(cfg_only, (m + 1.5 * (m - 10))[:, None, None, None].expand_as(x))
    with pytest.raises(ValueError, match="needs a guide"):
        guided_output(model, x, t, labels, 3.0, null_label=2, class_guidance=2.5)


@pytest.mark.parametrize("sampler", [ddim_sample, dpmpp_2m_sample])
def test_samplers_pass_class_guidance_on(sampler):
    schedule = NoiseSchedule(ScheduleConfig(num_timesteps=50))
    torch.manual_seed(0)
    net, weak = torch.nn.Conv2d(2, 2, 3, padding=1), torch.nn.Conv2d(2, 2, 3, padding=1)
    shift = torch.nn.Embedding(3, 2)

    def model(x, t, labels):
        return net(x) + shift(labels)[:, :, None, None]

    def guide(x, t, labels):
        return weak(x)

    x, labels = torch.randn(2, 2, 4, 4), torch.tensor([0, 1])
    kw = {"labels": labels, "schedule": schedule, "null_label": 2, "guide": guide}
    with torch.no_grad():
        auto = sampler(model, x, [50, 30, 10], guidance=3.0, **kw)
        same = sampler(model, x, [50, 30, 10], guidance=3.0, class_guidance=1.0, **kw)
        pushed = sampler(model, x, [50, 30, 10], guidance=3.0, class_guidance=3.0, **kw)
    assert torch.equal(same, auto)
    assert not torch.allclose(pushed, auto)


@pytest.mark.parametrize("sampler", [ddim_sample, dpmpp_2m_sample])
def test_samplers_pass_the_guide_on(sampler):
    schedule = NoiseSchedule(ScheduleConfig(num_timesteps=50))
    torch.manual_seed(0)
    net, weak = torch.nn.Conv2d(2, 2, 3, padding=1), torch.nn.Conv2d(2, 2, 3, padding=1)

    def model(x, t, labels):
        return net(x)

    def guide(x, t, labels):
        return weak(x)

    x, labels = torch.randn(2, 2, 4, 4), torch.tensor([0, 1])
    kw = {"labels": labels, "schedule": schedule, "null_label": 2}
    with torch.no_grad():
        plain = sampler(model, x, [50, 30, 10], guidance=1.0, **kw)
        self_guided = sampler(model, x, [50, 30, 10], guidance=3.0, guide=model, **kw)
        guided = sampler(model, x, [50, 30, 10], guidance=3.0, guide=guide, **kw)
    torch.testing.assert_close(self_guided, plain)
    assert not torch.allclose(guided, plain)


def test_same_seed_same_image_whatever_the_batch():
    schedule = NoiseSchedule(ScheduleConfig(num_timesteps=30))
    torch.manual_seed(0)
    net = torch.nn.Conv2d(2, 2, 3, padding=1)

    def model(x, t, labels):
        return net(x)

    def generate(seeds):
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        x_T = per_sample_noise((2, 4, 4), gens)
        labels = torch.zeros(len(seeds), dtype=torch.long)
        steps = schedule.spaced_timesteps(5)
        return ddim_sample(model, x_T, steps, labels=labels, schedule=schedule, null_label=2,
                           eta=1.0, generators=gens)  # fmt: skip

    together = generate([7, 8, 9])
    alone = generate([8])
    torch.testing.assert_close(together[1:2], alone, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(together[0], together[1])


def test_ddpm_runs_every_timestep():
    schedule = NoiseSchedule(ScheduleConfig(num_timesteps=20))
    seen = []
    out = ddpm_sample(lambda x, t, y: torch.zeros_like(x), torch.randn(1, 1, 2, 2),
                      labels=torch.zeros(1, dtype=torch.long), schedule=schedule, null_label=2,
                      generators=[torch.Generator().manual_seed(0)],
                      callback=lambda i, t, x, x0: seen.append(t))  # fmt: skip
    assert seen == list(range(19, -1, -1)) and torch.isfinite(out).all()


def test_dpmpp_matches_ddim_on_a_gaussian_with_enough_steps():
    """For data ~ N(0, c^2) the exact denoiser is known; both solvers of the probability-flow ODE
    must map the same noise to (nearly) the same sample, and DPM++ must get there in fewer steps."""
    schedule = NoiseSchedule(ScheduleConfig(kind="cosine", num_timesteps=1000, objective="eps"))
    c2 = 0.25

    def model(x_t, t, labels):  # E[eps | x_t] for x0 ~ N(0, c2)
        a, s = schedule._coeffs(t)
        return s * x_t / (a**2 * c2 + s**2)

    x_T = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    kw = dict(labels=torch.zeros(64, dtype=torch.long), schedule=schedule, null_label=2)
    reference = ddim_sample(model, x_T, schedule.spaced_timesteps(1000), **kw)
    fast = dpmpp_2m_sample(model, x_T, schedule.spaced_timesteps(15), **kw)
    ddim_fast = ddim_sample(model, x_T, schedule.spaced_timesteps(15), **kw)
    error_dpmpp = (fast - reference).abs().mean().item()
    error_ddim = (ddim_fast - reference).abs().mean().item()
    assert error_dpmpp < 0.01 and error_dpmpp < error_ddim


class _SelfConditioned(torch.nn.Module):
    """Records the estimate it is given at each call and predicts v = 0 (x0 = alpha x_t)."""

    def __init__(self) -> None:
        super().__init__()
        self.cfg = UNetConfig(self_condition=True)
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def forward(self, x, t, labels, self_cond=None):
        self.calls.append((x.clone(), None if self_cond is None else self_cond.clone()))
        return torch.zeros_like(x)


@pytest.mark.parametrize("sampler", [ddim_sample, dpmpp_2m_sample])
def test_samplers_give_a_self_conditioned_model_its_previous_estimate(sampler):
    schedule = NoiseSchedule(ScheduleConfig(num_timesteps=50))
    model, guide = _SelfConditioned(), _SelfConditioned()
    x, labels = torch.randn(2, 2, 4, 4), torch.tensor([0, 1])
    kw = {"labels": labels, "schedule": schedule, "null_label": 2}
    timesteps = [50, 30, 10]
    seen = []
    sampler(model, x, timesteps, callback=lambda i, t, x_t, x0: seen.append(x0), **kw)
    assert model.calls[0][1] is None  # the first step has no estimate yet
    for (_, given), previous in zip(model.calls[1:], seen[:-1], strict=True):
        torch.testing.assert_close(given, previous)
    # With guidance, every pass (the guide's, and the batched null pass) gets the guided estimate.
    model.calls.clear()
    sampler(model, x, timesteps, guidance=3.0, guide=guide, class_guidance=2.0, **kw)
    assert [c[1] is None for c in guide.calls] == [True, False, False]
    torch.testing.assert_close(model.calls[1][1], torch.cat([guide.calls[1][1]] * 2))
    # A model without self-conditioning is never given one.
    plain = _SelfConditioned()
    plain.cfg = UNetConfig()
    sampler(plain, x, timesteps, **kw)
    assert all(c[1] is None for c in plain.calls)
