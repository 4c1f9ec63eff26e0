import pytest

from catdog.config import (
    LossTerm,
    VAETrainConfig,
    diffusion_preset,
    from_dict,
    to_dict,
    vae_preset,
)
from catdog.models.unet import UNet
from catdog.models.vae import VAE


def test_round_trip_through_dict():
    cfg = vae_preset("tiny")
    again = from_dict(VAETrainConfig, to_dict(cfg))
    assert again == cfg
    assert isinstance(again.model.channels, tuple)


def test_unknown_key_is_rejected():
    with pytest.raises(ValueError, match="unknown config key"):
        from_dict(VAETrainConfig, {"epochz": 3})


def test_presets_differ_and_unknown_preset_fails():
    assert vae_preset("tiny").model.channels != vae_preset("cpu").model.channels
    with pytest.raises(ValueError, match="unknown preset"):
        vae_preset("huge")


def test_latent_shape_follows_channels():
    cfg = vae_preset("cpu").model
    assert cfg.latent_shape == (cfg.latent_channels, 12, 12)


def test_loss_term_ramp():
    term = LossTerm(weight=2.0, start=10, ramp=4)
    assert term.weight_at(9.99) == 0.0
    assert term.weight_at(10) == 0.0
    assert term.weight_at(12) == pytest.approx(1.0)
    assert term.weight_at(14) == 2.0
    assert term.weight_at(100) == 2.0
    assert LossTerm(weight=1.0, start=3, ramp=0).weight_at(3) == 1.0
    assert LossTerm(weight=0.0).weight_at(5) == 0.0


@pytest.mark.parametrize("preset", ["cpu", "gpu"])
def test_preset_weights_ship_within_50_mb(preset):
    """What `catdog export` ships for a preset, the VAE and the diffusion model with its guide
    (same architecture) in fp16, stays inside the 50 MB the repository allows."""

    def fp16_bytes(model):
        return 2 * sum(t.numel() for t in model.state_dict().values())

    vae = VAE(vae_preset(preset).model)
    unet = UNet(diffusion_preset(preset).unet)
    assert unet.cfg.latent_channels == vae.cfg.latent_channels
    assert fp16_bytes(vae) + 2 * fp16_bytes(unet) <= 50e6
