import dataclasses

import pytest
import torch

from catdog import augment
from catdog.config import UNetConfig
from catdog.ema import EMA
from catdog.models.unet import FeatureProjector, UNet

TINY = UNetConfig(latent_channels=2, latent_size=8, channels=(8, 16), blocks_per_level=1,
                  attention_levels=(1,), heads=2, norm_groups=4)  # fmt: skip


def test_unet_output_shape_and_conditioning():
    torch.manual_seed(0)
    net = UNet(TINY)
    torch.nn.init.normal_(net.head.weight, std=0.1)  # the head starts at zero
    net.eval()
    x, t = torch.randn(3, 2, 8, 8), torch.tensor([1, 500, 999])
    out = net(x, t, torch.tensor([0, 1, 2]))
    assert out.shape == x.shape
    assert not torch.allclose(
        net(x, t, torch.tensor([0, 0, 0])), net(x, t, torch.tensor([1, 1, 1]))
    )
    assert not torch.allclose(
        net(x, t, torch.tensor([0, 0, 0])), net(x, t + 1, torch.tensor([0, 0, 0]))
    )


def test_three_level_unet():
    cfg = UNetConfig(latent_channels=4, latent_size=12, channels=(8, 16, 16), blocks_per_level=1,
                     attention_levels=(2,), heads=2, norm_groups=4)  # fmt: skip
    assert UNet(cfg)(
        torch.randn(2, 4, 12, 12), torch.tensor([3, 4]), torch.tensor([0, 1])
    ).shape == (2, 4, 12, 12)


def test_middle_features_come_with_the_same_prediction_and_project_per_position():
    torch.manual_seed(0)
    net = UNet(TINY).eval()
    torch.nn.init.normal_(net.head.weight, std=0.1)
    x, t, y = torch.randn(3, 2, 8, 8), torch.tensor([1, 50, 99]), torch.tensor([0, 1, 2])
    out, features = net(x, t, y, return_features=True)
    torch.testing.assert_close(out, net(x, t, y))
    assert features.shape == (3, 16, 4, 4)  # the middle level: last width, half the size
    projector = FeatureProjector(16, 32, hidden=8)
    projected = projector(features)
    assert projected.shape == (3, 32, 4, 4)
    # Per position: changing one position's features changes only that position's output.
    changed = features.clone()
    changed[:, :, 0, 0] += 1.0
    moved = (projector(changed) - projected).abs().sum(dim=1)
    assert moved[:, 0, 0].min() > 0 and moved.flatten(1)[:, 1:].max() == 0


def test_label_dropout_uses_the_given_stream_at_the_configured_rate():
    net = UNet(UNetConfig(**{**TINY.__dict__, "class_dropout": 0.5}))
    assert net.null_label == 2
    labels = torch.zeros(4000, dtype=torch.long)
    dropped = net.drop_labels(labels, torch.Generator().manual_seed(0))
    assert set(dropped.unique().tolist()) == {0, 2}
    assert 0.45 < (dropped == 2).float().mean().item() < 0.55
    again = net.drop_labels(labels, torch.Generator().manual_seed(0))
    assert torch.equal(dropped, again)  # the same stream gives the same mask
    net.train()  # the embedding itself never drops labels
    null = net.class_embedder.embedding.weight[2]
    assert not (net.class_embedder(labels) == null).all(dim=1).any()


def test_ema_tracks_weights():
    net = torch.nn.Linear(2, 2)
    ema = EMA(net, decay=0.5)
    before = ema.model.weight.clone()
    with torch.no_grad():
        net.weight.add_(2.0)
    ema.update(net)
    torch.testing.assert_close(ema.model.weight, before + 1.0)
    restored = EMA(torch.nn.Linear(2, 2))
    restored.load_state_dict(ema.state_dict())
    assert torch.equal(restored.model.weight, ema.model.weight)
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_self_conditioned_unet_reads_its_estimate_and_a_plain_one_refuses_it():
    torch.manual_seed(0)
    net = UNet(dataclasses.replace(TINY, self_condition=True)).eval()
    torch.nn.init.normal_(net.head.weight, std=0.1)
    x, t, y = torch.randn(2, 2, 8, 8), torch.tensor([10, 900]), torch.tensor([0, 1])
    estimate = torch.randn_like(x)
    assert net(x, t, y, self_cond=estimate).shape == x.shape
    assert not torch.allclose(net(x, t, y, self_cond=estimate), net(x, t, y))
    torch.testing.assert_close(net(x, t, y), net(x, t, y, self_cond=torch.zeros_like(x)))
    with pytest.raises(ValueError, match="self-conditioning"):
        UNet(TINY)(x, t, y, self_cond=estimate)


def test_augment_labels_steer_the_unet_and_zeros_read_as_none():
    torch.manual_seed(0)
    net = UNet(dataclasses.replace(TINY, augment_dim=augment.LABEL_DIM)).eval()
    torch.nn.init.normal_(net.head.weight, std=0.1)
    x, t, y = torch.randn(2, 2, 8, 8), torch.tensor([10, 900]), torch.tensor([0, 1])
    turned = augment.labels(torch.tensor([[0, 1, 0, 0], [1, 2, 1, -1]]))
    assert not torch.allclose(net(x, t, y, augment_labels=turned), net(x, t, y))
    # No augmentation (what sampling asks for) is the label of zeros, and adds nothing.
    torch.testing.assert_close(net(x, t, y), net(x, t, y, augment_labels=torch.zeros(2, 5)))
    with pytest.raises(ValueError, match="without augmentation"):
        UNet(TINY)(x, t, y, augment_labels=turned)


def test_subclasses_are_drawn_per_image_from_the_prior_and_seed():
    net = UNet(UNetConfig(**{**TINY.__dict__, "subclasses": 3}))
    assert net.null_label == 6 and net.class_embedder.embedding.num_embeddings == 7
    net.class_embedder.subclass_prior.copy_(torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5]]))
    labels = torch.tensor([0, 1, 2] * 400)  # cat, dog, the class null label

    def draw(seed: int) -> torch.Tensor:
        return net.draw_subclasses(labels, [torch.Generator().manual_seed(seed + i)
                                            for i in range(len(labels))])  # fmt: skip

    drawn = draw(0)
    assert (drawn[0::3] == 1).all()  # the cat prior has all its mass on sub-class 1
    assert set(drawn[1::3].tolist()) == {3, 5}  # dog sub-classes 0 and 2, never 1
    assert 0.4 < (drawn[1::3] == 3).float().mean() < 0.6
    assert (drawn[2::3] == net.null_label).all()
    assert torch.equal(drawn, draw(0)) and not torch.equal(drawn, draw(1))
    with pytest.raises(ValueError, match="3 labels but 2 generators"):
        net.draw_subclasses(labels[:3], [torch.Generator(), torch.Generator()])
    # Without sub-classes the labels are the classes themselves.
    plain = UNet(TINY)
    assert plain.draw_subclasses(labels, []) is labels
    assert "class_embedder.subclass_prior" not in plain.state_dict()
