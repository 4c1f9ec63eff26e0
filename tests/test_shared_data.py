"""Tests on real photos and real weights from ../shared (skipped, with the reason, where absent)."""

import torch
import torchvision

from catdog.config import DataConfig
from catdog.data import load_split, to_float
from catdog.losses import PerceptualLoss, load_vgg16_features


def test_catdog96_loads_with_stl10_split_sizes(shared):
    cfg = DataConfig(data_dir=str(shared / "data" / "catdog96"))
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    assert train.images.shape == (1000, 3, 48, 48) and train.images.dtype == torch.uint8
    assert (train.labels == 0).sum() == 500 and (train.labels == 1).sum() == 500
    assert (test.labels == 0).sum() == 800 and (test.labels == 1).sum() == 800
    x = to_float(train.images[:64])
    assert x.min() >= -1 and x.max() <= 1 and x.std() > 0.2  # real, varied pixels


def test_imagenet_vgg_ranks_blur_farther_than_slight_noise_on_real_photos(shared):
    features = load_vgg16_features(shared / "weights" / "vgg16_features_imagenet1k_v1.pth")
    loss = PerceptualLoss(features)
    cfg = DataConfig(data_dir=str(shared / "data" / "catdog96"))
    x = to_float(load_split(cfg, "test").images[:16])
    targets = loss.features(x)
    blurred = torchvision.transforms.v2.functional.gaussian_blur(x, [5, 5], [2.0, 2.0])
    noisy = (x + 0.02 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(
        -1, 1
    )
    with torch.no_grad():
        assert loss(noisy, targets) < loss(blurred, targets)


def test_shipped_selector_tells_real_held_out_cats_from_dogs(shared):
    from catdog import selector
    from catdog.generate import SHIPPED_SELECTOR

    features = load_vgg16_features(shared / "weights" / "vgg16_features_imagenet1k_v1.pth")
    ranker = selector.load(SHIPPED_SELECTOR, features)
    test = load_split(DataConfig(data_dir=str(shared / "data" / "catdog96")), "test")
    keep = torch.arange(0, len(test.labels), 4)  # 400 test photos, both classes
    p = ranker.probability(to_float(test.images[keep]), test.labels[keep])
    assert (p > 0.5).float().mean() > 0.85  # 0.892 over the whole test split when fitted
