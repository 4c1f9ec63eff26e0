"""Feature extraction: the content-keyed cache, and loading the FID Inception network."""

import urllib.error

import pytest
import torch

from catdog.errors import CatdogError
from catdog.features import FeatureExtractor, cached_extract, extract, images_key, load_inception


class MeanColour(FeatureExtractor):
    """A stand-in extractor that counts how many images it has seen."""

    name = "mean-colour"

    def __init__(self):
        super().__init__()
        self.seen = 0

    def forward(self, images):
        self.seen += len(images)
        return images.float().mean((2, 3))


def images(seed, n=6):
    return torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))  # fmt: skip


def test_extract_batches_and_refuses_float_images():
    x = images(0, 7)
    f = extract(MeanColour(), x, batch_size=3, progress=False)
    torch.testing.assert_close(f, x.float().mean((2, 3)))
    with pytest.raises(TypeError):
        extract(MeanColour(), x.float(), progress=False)


def test_cache_reuses_features_of_the_same_pixels_only(tmp_path):
    net, x = MeanColour(), images(0)
    first = cached_extract(net, x, tmp_path, progress=False)
    again = cached_extract(net, x.clone(), tmp_path, progress=False)
    assert net.seen == len(x) and torch.equal(first, again)
    changed = x.clone()
    changed[0, 0, 0, 0] ^= 1
    assert images_key(changed) != images_key(x)
    cached_extract(net, changed, tmp_path, progress=False)
    assert net.seen == 2 * len(x)


def test_damaged_cache_entry_is_recomputed(tmp_path):
    net, x = MeanColour(), images(1)
    cached_extract(net, x, tmp_path, progress=False)
    (entry,) = tmp_path.glob("mean-colour-*.pt")
    entry.write_bytes(b"not a tensor")
    f = cached_extract(net, x, tmp_path, progress=False)
    torch.testing.assert_close(f, x.float().mean((2, 3)))
    assert net.seen == 2 * len(x)


def test_missing_inception_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("CATDOG_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(CatdogError, match="not found"):
        load_inception(tmp_path / "nope.pth")
    monkeypatch.setenv("CATDOG_INCEPTION_WEIGHTS", str(tmp_path / "also-nope.pth"))
    with pytest.raises(CatdogError, match="also-nope"):
        load_inception()


def test_failed_download_offline_is_a_clear_error(monkeypatch):
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.delenv("CATDOG_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(fe, "load_state_dict_from_url", offline)
    with pytest.raises(CatdogError, match="--inception-weights"):
        load_inception()


def test_real_inception_gives_finite_pool3_features(shared):
    net = load_inception(shared / "weights" / "weights-inception-2015-12-05-6726825d.pth")
    f = extract(net, images(2, 4), progress=False)
    assert f.shape == (4, 2048) and torch.isfinite(f).all() and (f >= 0).all()  # after ReLU+pool


def test_cache_does_not_return_features_of_other_inception_weights(shared, tmp_path):
    # Same feature space, other weights (as another weight file would give): the cache must not
    # answer for them. The fc layer plays no part in pool3, so it does not split the cache.
    path = shared / "weights" / "weights-inception-2015-12-05-6726825d.pth"
    net, x = load_inception(path), images(3, 2)
    first = cached_extract(net, x, tmp_path, progress=False)
    state = torch.load(path, weights_only=True)
    state["Conv2d_1a_3x3.conv.weight"] = 0.5 * state["Conv2d_1a_3x3.conv.weight"]
    torch.save(state, tmp_path / "other.pth")
    other = load_inception(tmp_path / "other.pth")
    features = cached_extract(other, x, tmp_path, progress=False)
    torch.testing.assert_close(features, extract(other, x, progress=False))
    assert not torch.allclose(features, first)
    state = torch.load(path, weights_only=True)
    state["fc.bias"] = state["fc.bias"] + 1.0
    torch.save(state, tmp_path / "other_fc.pth")
    assert load_inception(tmp_path / "other_fc.pth").cache_key == net.cache_key
