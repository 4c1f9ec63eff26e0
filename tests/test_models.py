import torch

from catdog.config import DiscriminatorConfig, VAEConfig
from catdog.models.discriminator import PatchDiscriminator
from catdog.models.layers import ResBlock
from catdog.models.vae import VAE

TINY = VAEConfig(image_size=16, channels=(8, 16), latent_channels=2, norm_groups=4)


def test_encode_decode_shapes_and_range():
    torch.manual_seed(0)
    vae = VAE(TINY)
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    mean, logvar = vae.encode(x)
    assert mean.shape == logvar.shape == (3, *TINY.latent_shape) == (3, 2, 8, 8)
    out = vae.decode(mean * 50)  # even extreme latents decode into [-1, 1]
    assert out.shape == x.shape
    assert out.min() >= -1 and out.max() <= 1


def test_forward_samples_posterior_with_generator():
    vae = VAE(TINY)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    a = vae(x, generator=torch.Generator().manual_seed(1))[0]
    b = vae(x, generator=torch.Generator().manual_seed(1))[0]
    c = vae(x, generator=torch.Generator().manual_seed(2))[0]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_latent_stats_and_exact_inverse():
    vae = VAE(TINY)
    assert not vae.has_latent_stats
    latents = torch.randn(50, 2, 8, 8) * torch.tensor([3.0, 0.5])[None, :, None, None] + 2.0
    vae.set_latent_stats(latents)
    assert vae.has_latent_stats
    normalised = vae.normalize_latent(latents)
    assert normalised.mean(dim=(0, 2, 3)).abs().max() < 1e-5
    assert (normalised.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-4
    assert torch.allclose(vae.denormalize_latent(normalised), latents, atol=1e-5)


def test_four_level_vae_gives_6x6_latent():
    cfg = VAEConfig(channels=(8, 8, 16, 16), latent_channels=8, norm_groups=4)
    assert cfg.latent_shape == (8, 6, 6)
    assert VAE(cfg).encode(torch.zeros(1, 3, 48, 48))[0].shape == (1, 8, 6, 6)


def test_attention_only_from_chosen_level():
    vae = VAE(VAEConfig(image_size=16, channels=(8, 16), norm_groups=4, attention_from_level=1))
    blocks = [m for m in vae.encoder.body if isinstance(m, ResBlock)]
    assert isinstance(blocks[0].attn, torch.nn.Identity)
    assert not isinstance(blocks[1].attn, torch.nn.Identity)


def test_resblock_uses_embedding():
    block = ResBlock(8, 16, groups=4, emb_dim=5)
    x = torch.randn(2, 8, 6, 6)
    a = block(x, torch.zeros(2, 5))
    b = block(x, torch.ones(2, 5))
    assert a.shape == (2, 16, 6, 6)
    assert not torch.allclose(a, b)


def test_patch_discriminator_gives_patch_logits():
    disc = PatchDiscriminator(DiscriminatorConfig(channels=(8, 16, 32)))
    logits = disc(torch.randn(2, 3, 48, 48))
    assert logits.dim() == 4 and logits.shape[:2] == (2, 1) and logits.shape[-1] > 1
