import math

import torch

from catdog.metrics import linear_probe_accuracy, psnr


def test_psnr_known_value():
    a = torch.zeros(1, 3, 4, 4)
    b = torch.full((1, 3, 4, 4), 0.2)  # mse 0.04 on a range of 2 -> 10*log10(4 / 0.04) = 20 dB
    assert math.isclose(psnr(a, b).item(), 20.0, rel_tol=1e-5)
    assert psnr(a, a).item() > 90


def test_probe_separates_separable_classes_and_not_noise():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 2
    feats = torch.randn(200, 2, 3, 3, generator=g) + 3.0 * labels[:, None, None, None]
    assert linear_probe_accuracy(feats[:100], labels[:100], feats[100:], labels[100:]) == 1.0
    noise = torch.randn(200, 2, 3, 3, generator=g)
    assert linear_probe_accuracy(noise[:100], labels[:100], noise[100:], labels[100:]) < 0.75
