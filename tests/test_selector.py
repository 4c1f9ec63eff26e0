import pytest
import torch
import torchvision

from catdog import checkpoint, selector
from catdog.config import GenerateConfig
from catdog.data import to_float
from catdog.errors import CatdogError
from catdog.generate import generate
from catdog.metrics import fit_probe
from tests.conftest import assert_one_line_error, run_cli_batch


def coloured(n: int, seed: int, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """n reddish (cat, 0) then n bluish (dog, 1) noisy uint8 images."""
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor([[200.0, 60, 60], [60, 60, 200]])[:, :, None, None]
    images = base.repeat_interleave(n, 0) + 40 * torch.randn(2 * n, 3, size, size, generator=g)
    return images.clamp(0, 255).to(torch.uint8), torch.arange(2).repeat_interleave(n)


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    return torchvision.models.vgg16().features.eval()


@pytest.fixture(scope="module")
def fitted(vgg):
    images, labels = coloured(10, seed=0)
    return selector.fit(vgg, images, labels)


def test_the_folded_layer_is_the_fitted_probe(vgg, fitted):
    images, labels = coloured(10, seed=0)
    both = torch.cat([images, images.flip(-1)])
    features = fitted.features(to_float(both))
    probe = fit_probe(features, torch.cat([labels, labels]), 0)
    test, test_labels = coloured(6, seed=1)
    expected = probe.predict_proba(fitted.features(to_float(test)).double().numpy())
    expected = torch.from_numpy(expected).float().gather(1, test_labels[:, None]).squeeze(1)
    got = fitted.probability(to_float(test), test_labels)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-3)
    assert (got > 0.5).all()  # it tells the held-out colours apart
    flipped = fitted.probability(to_float(test), 1 - test_labels)
    torch.testing.assert_close(got + flipped, torch.ones_like(got))


def test_save_and_load_keep_the_selector_and_refuse_other_files(vgg, fitted, tmp_path,
                                                                tiny_vae):  # fmt: skip
    path = tmp_path / "selector.safetensors"
    selector.save(fitted, path, fitted_on="colours")
    loaded = selector.load(path, vgg)
    test, labels = coloured(6, seed=2)
    x = to_float(test)
    torch.testing.assert_close(loaded.probability(x, labels), fitted.probability(x, labels),
                               atol=2e-3, rtol=0)  # fmt: skip
    with pytest.raises(CatdogError, match="not found"):
        selector.load(tmp_path / "missing.safetensors", vgg)
    with pytest.raises(CatdogError, match="a VAE checkpoint, but a sample selector"):
        selector.load(tiny_vae, vgg)
    record = checkpoint.load(path, checkpoint.KIND_SELECTOR)
    other = tmp_path / "other_layers.safetensors"
    checkpoint.save_safetensors(other, checkpoint.KIND_SELECTOR,
                                {**checkpoint.payload_of(record), "layers": [15, 22]})  # fmt: skip
    with pytest.raises(CatdogError, match="other VGG16 features"):
        selector.load(other, vgg)
    (tmp_path / "corrupt.safetensors").write_bytes(b"not a selector")
    with pytest.raises(CatdogError, match="corrupt"):
        selector.load(tmp_path / "corrupt.safetensors", vgg)


def test_fit_needs_both_classes(vgg):
    images, labels = coloured(4, seed=0)
    with pytest.raises(CatdogError, match="both classes"):
        selector.fit(vgg, images[:4], labels[:4])


class MeanRed(torch.nn.Module):
    """A stand-in ranker (the selector is not under test here): cats rank by red, dogs by blue."""

    def probability(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        red, blue = images[:, 0].mean((1, 2)), images[:, 2].mean((1, 2))
        return torch.where(labels == 0, red - blue, blue - red)


def draw(seeds: list[int]) -> torch.Tensor:
    """An image per seed, a function of its seed alone."""
    return torch.stack([torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(s)) * 2 - 1
                        for s in seeds])  # fmt: skip


def test_best_of_keeps_each_images_highest_ranked_candidate():
    seeds, labels = [0, 1, 2, 3], torch.tensor([0, 0, 1, 1])
    assert torch.equal(selector.best_of(draw, None, labels, seeds, 1), draw(seeds))
    ranker = MeanRed()
    chosen = selector.best_of(draw, ranker, labels, seeds, 3)
    for i, s in enumerate(seeds):
        candidates = draw([s + j * selector.CANDIDATE_STRIDE for j in range(3)])
        scores = ranker.probability(candidates, labels[i].repeat(3))
        assert torch.equal(chosen[i], candidates[scores.argmax()])
    assert not torch.equal(chosen, draw(seeds))  # some image was replaced
    alone = selector.best_of(draw, ranker, labels[2:3], seeds[2:3], 3)
    assert torch.equal(alone[0], chosen[2])  # a kept image depends on its own seed only
    for bad in (0, selector.MAX_SELECT + 1):
        with pytest.raises(CatdogError, match="must be in 1.."):
            selector.best_of(draw, ranker, labels, seeds, bad)
    with pytest.raises(CatdogError, match="needs a selector"):
        selector.best_of(draw, None, labels, seeds, 2)


def test_generate_with_select_keeps_one_of_its_candidates(tiny_pair, vgg, fitted, vgg_weights,
                                                          tmp_path):  # fmt: skip
    path = tmp_path / "selector.safetensors"
    selector.save(fitted, path)
    kw = dict(model_path=str(tiny_pair), class_name="dog", num_samples=3, steps=4, progress=False,
              vgg_weights=str(vgg_weights), selector_path=str(path))  # fmt: skip
    chosen = generate(GenerateConfig(output=str(tmp_path / "k3"), select=3, batch_size=2, **kw))
    plain = generate(GenerateConfig(output=str(tmp_path / "k1"), **kw))
    stride = selector.CANDIDATE_STRIDE
    candidates = [
        generate(GenerateConfig(output=str(tmp_path / f"c{j}"), seed=j * stride, **kw))
        for j in range(3)
    ]
    assert [p.read_bytes() for p in plain[1:]] == [p.read_bytes() for p in candidates[0][1:]]
    for i, kept in enumerate(chosen[1:]):
        assert kept.read_bytes() in {c[1 + i].read_bytes() for c in candidates}
    one_batch = generate(GenerateConfig(output=str(tmp_path / "k3b"), select=3, batch_size=3,
                                        **kw))  # fmt: skip
    assert [p.read_bytes() for p in one_batch[1:]] == [p.read_bytes() for p in chosen[1:]]


def test_fit_selector_and_select_from_the_command_line(tiny_pair, tiny_data, vgg_weights,
                                                        tmp_path):  # fmt: skip
    path = tmp_path / "sel" / "selector.safetensors"
    out = tmp_path / "samples"
    fit = ("-m", "catdog", "fit-selector", "--data-dir", str(tiny_data))
    common = ("generate.py", "--class_name", "cat", "--num_samples", "2", "--steps", "3",
              "--model_path", str(tiny_pair), "--no-progress")  # fmt: skip
    # One interpreter for all seven commands, each run as `python ARGS...` would run it.
    fitted, folder, size, selected, zero, unused, missing = run_cli_batch(
        (*fit, "--image-size", "16", "--vgg-weights", str(vgg_weights), "--output", str(path),
         "--no-progress"),
        (*fit, "--output", str(path.parent)),
        (*fit, "--output", str(tmp_path / "s.safetensors"), "--image-size", "-5"),
        (*common, "--select", "2", "--selector_path", str(path), "--vgg_weights",
         str(vgg_weights), "--output", str(out)),
        (*common, "--select", "0", "--output", str(tmp_path / "z")),
        (*common, "--selector_path", str(path), "--output", str(tmp_path / "z")),
        (*common, "--select", "2", "--selector_path", str(tmp_path / "none.safetensors"),
         "--vgg_weights", str(vgg_weights), "--output", str(tmp_path / "m")),
    )  # fmt: skip
    assert fitted.returncode == 0, fitted.stderr
    record = checkpoint.load(path, checkpoint.KIND_SELECTOR)
    assert record["images"] == 24 and "train" in record["fitted_on"]
    assert_one_line_error(folder, "is a folder")
    assert_one_line_error(size, "--image-size must be at least 16")
    assert selected.returncode == 0, selected.stderr
    assert sorted(p.name for p in out.iterdir()) == ["cat_0000.png", "cat_0001.png", "cat_grid.png"]
    assert_one_line_error(zero, "--select must be in 1..64, got 0")
    assert_one_line_error(unused, "are for best-of-K")
    assert_one_line_error(missing, "checkpoint not found")
    assert not (tmp_path / "z").exists() and not (tmp_path / "m").exists()  # nothing written
