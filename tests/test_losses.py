import pytest
import torch
import torchvision

from catdog import losses
from catdog.errors import CatdogError
from catdog.losses import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PerceptualLoss,
    alignment_loss,
    center_loss,
    classifier_loss,
    hinge_d_loss,
    hinge_g_loss,
    kl_divergence,
    load_vgg16_features,
    vf_loss,
    vgg_feature_map,
)


def test_kl_is_zero_for_the_prior_and_positive_otherwise():
    zeros = torch.zeros(2, 4, 3, 3)
    assert kl_divergence(zeros, zeros).item() == 0.0
    assert kl_divergence(zeros + 1, zeros).item() == pytest.approx(0.5)
    assert kl_divergence(zeros, zeros + 1).item() > 0


def test_hinge_losses():
    assert hinge_d_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)).item() == 0.0
    assert hinge_d_loss(torch.zeros(4), torch.zeros(4)).item() == pytest.approx(1.0)
    assert hinge_g_loss(torch.full((4,), 3.0)).item() == -3.0


def test_center_loss_ignores_unlabeled_and_is_zero_at_centers():
    centers = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    feats = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    assert center_loss(feats, torch.tensor([0, 1, -1]), centers).item() == 0.0
    assert center_loss(feats, torch.tensor([1, 1, -1]), centers).item() == pytest.approx(0.5)
    assert center_loss(feats, torch.tensor([-1, -1, -1]), centers).item() == 0.0


def test_classifier_loss_ignores_unlabeled():
    logits = torch.tensor([[10.0, -10.0], [0.0, 0.0]])
    assert classifier_loss(logits, torch.tensor([0, -1])).item() < 1e-6
    assert classifier_loss(logits, torch.tensor([-1, -1])).item() == 0.0


def test_vgg_weights_from_file_and_full_state_dict(vgg_weights, tmp_path):
    features = load_vgg16_features(vgg_weights)
    expected = torch.load(vgg_weights, weights_only=True)
    assert torch.equal(features[0].weight, expected["0.weight"])
    assert not any(p.requires_grad for p in features.parameters())
    full = tmp_path / "vgg16_full.pth"
    vgg = torchvision.models.vgg16()
    vgg.features.load_state_dict(expected)
    torch.save(vgg.state_dict(), full)
    assert torch.equal(load_vgg16_features(full)[28].bias, expected["28.bias"])


def test_vgg_weights_from_environment(vgg_weights, monkeypatch):
    monkeypatch.setenv(losses.VGG_WEIGHTS_ENV, str(vgg_weights))
    expected = torch.load(vgg_weights, weights_only=True)
    assert torch.equal(load_vgg16_features()[2].weight, expected["2.weight"])


def test_vgg_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(CatdogError, match="not found"):
        load_vgg16_features(tmp_path / "missing.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save({"foo": torch.zeros(1)}, wrong)
    with pytest.raises(CatdogError, match="not a torchvision vgg16"):
        load_vgg16_features(wrong)
    with pytest.raises(CatdogError, match="VGG16 weights file .* is a folder"):
        load_vgg16_features(str(tmp_path))


def test_vgg_download_failure_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.delenv(losses.VGG_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # nothing cached
    monkeypatch.setattr(losses, "VGG16_URL", "http://127.0.0.1:9/vgg16-397923af.pth")
    with pytest.raises(CatdogError, match="VGG16 weights unavailable.*--vgg-weights.*--lambda_vgg"):
        load_vgg16_features()
    hint = "turn representation alignment off with --repa-weight 0"
    with pytest.raises(CatdogError, match=f"--vgg-weights.*{hint}"):
        load_vgg16_features(off_hint=hint)


def test_perceptual_loss_zero_for_identical_and_grows_with_distortion(vgg_weights):
    loss = PerceptualLoss(load_vgg16_features(vgg_weights))
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    targets = loss.features(x)
    assert len(targets) == 3
    assert loss(x, targets).item() == pytest.approx(0.0, abs=1e-6)
    small = loss(x + 0.05 * torch.randn_like(x), targets).item()
    large = loss(x + 0.5 * torch.randn_like(x), targets).item()
    assert 0 < small < large
    y = x.clone().requires_grad_(True)
    loss(y, [t.half() for t in targets]).backward()  # cached fp16 targets work too
    assert y.grad is not None


def test_alignment_loss_is_one_minus_cosine_per_position():
    target = torch.randn(2, 8, 3, 3)
    assert alignment_loss(2.5 * target, target).item() == pytest.approx(0.0, abs=1e-6)
    assert alignment_loss(-target, target).item() == pytest.approx(2.0, abs=1e-6)
    orthogonal = torch.zeros(1, 2, 1, 1), torch.zeros(1, 2, 1, 1)
    orthogonal[0][0, 0], orthogonal[1][0, 1] = 1.0, 1.0
    assert alignment_loss(*orthogonal).item() == pytest.approx(1.0)
    # A larger target is average-pooled to the projection's size.
    fine = torch.randn(2, 8, 6, 6)
    pooled = torch.nn.functional.avg_pool2d(fine, 2)
    assert alignment_loss(pooled, fine).item() == pytest.approx(0.0, abs=1e-6)


def test_vf_loss_is_zero_within_its_margins_and_grows_beyond_them():
    torch.manual_seed(0)
    target = torch.randn(2, 16, 3, 3)
    assert vf_loss(3.0 * target, target).item() == pytest.approx(0.0, abs=1e-6)
    # Opposite vectors: cosine -1 gives 1 - 0.5 + 1 on the cosine part; the similarity
    # matrices are equal (both flip sign), so the distance-matrix part is 0.
    assert vf_loss(-target, target).item() == pytest.approx(1.5, abs=1e-5)
    # Cosine part only, with margins 0: the mean of 1 - cos per position.
    noisy = target + torch.randn_like(target)
    cos = torch.nn.functional.cosine_similarity(noisy, target, dim=1)
    distmat_zero = vf_loss(noisy, target, cos_margin=0.0, distmat_margin=2.0)
    assert distmat_zero.item() == pytest.approx((1 - cos).mean().item(), abs=1e-5)
    # Distance-matrix part only: positions of one image compared with each other.
    p = torch.nn.functional.normalize(noisy.flatten(2), dim=1)
    t = torch.nn.functional.normalize(target.flatten(2), dim=1)
    gap = (p.transpose(1, 2) @ p - t.transpose(1, 2) @ t).abs()
    cos_zero = vf_loss(noisy, target, cos_margin=2.0, distmat_margin=0.1)
    assert cos_zero.item() == pytest.approx((gap - 0.1).clamp_min(0).mean().item(), abs=1e-5)
    assert cos_zero.item() > 0
    projected = noisy.clone().requires_grad_(True)
    vf_loss(projected, target).backward()
    assert projected.grad.abs().sum() > 0


def test_vgg_feature_map_is_the_layer_output_on_imagenet_normalised_input(vgg_weights):
    vgg = load_vgg16_features(vgg_weights)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    mean = torch.tensor(IMAGENET_MEAN)[None, :, None, None]
    std = torch.tensor(IMAGENET_STD)[None, :, None, None]
    expected = ((images + 1) / 2 - mean) / std
    for layer in vgg[:23]:
        expected = layer(expected)
    out = vgg_feature_map(vgg, images, 22)
    assert out.shape == (2, 512, 2, 2)  # relu4_3: three poolings
    torch.testing.assert_close(out, expected)
