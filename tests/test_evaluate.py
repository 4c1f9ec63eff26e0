"""Quality metrics: closed-form checks on features, the evaluate command end to end, bad input."""

import json
import shutil

import pytest
import torch

from catdog.config import DataConfig, EvaluateConfig
from catdog.errors import CatdogError
from catdog.evaluate import (
    evaluate,
    fid,
    format_table,
    kid,
    memorisation_rate,
    memorisation_threshold,
    precision_recall,
)
from tests.conftest import (
    SHARED,
    assert_one_line_error,
    run_cli,
    run_cli_batch,
    write_image_folder,
)


def gaussian(n, d, mean=0.0, std=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return mean + std * torch.randn(n, d, generator=g, dtype=torch.float64)


def test_fid_of_identical_sets_is_zero():
    x = gaussian(500, 16)
    assert abs(fid(x, x.clone())) < 1e-6


def test_fid_of_known_gaussians_matches_closed_form():
    # N(0, I) vs N(m, s^2 I) in d dims: FID = |m|^2 + d (1 - s)^2 = 8 * 0.25 + 8 * 0.25 = 4
    d, shift, s = 8, 0.5, 1.5
    value = fid(gaussian(40000, d, seed=1), gaussian(40000, d, mean=shift, std=s, seed=2))
    assert value == pytest.approx(d * shift**2 + d * (1 - s) ** 2, rel=0.03)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    same, _ = kid(gaussian(600, 16, seed=1), gaussian(600, 16, seed=2), subsets=20)
    other, _ = kid(gaussian(600, 16, seed=1), gaussian(600, 16, mean=0.5, seed=3), subsets=20)
    assert abs(same) < 0.01 and other > 10 * max(abs(same), 1e-3)


def test_precision_recall_tell_fidelity_from_coverage():
    real = gaussian(400, 4, seed=1)
    p, r = precision_recall(gaussian(400, 4, seed=2), real)
    assert p > 0.8 and r > 0.8
    collapsed = real[:5].repeat(80, 1) + 1e-3 * gaussian(400, 4, seed=3)  # high fidelity, no cover
    p, r = precision_recall(collapsed, real)
    assert p > 0.95 and r < 0.2
    p, r = precision_recall(gaussian(400, 4, mean=20.0, seed=4), real)  # off the manifold
    assert p == 0.0


def test_memorisation_catches_copies_and_not_fresh_samples():
    train, reference = gaussian(1000, 8, seed=1), gaussian(1000, 8, seed=2)
    threshold = memorisation_threshold(reference, train, 0.05)
    assert memorisation_rate(train[:300] + 1e-4, train, threshold) == 1.0
    fresh = memorisation_rate(gaussian(1000, 8, seed=3), train, threshold)
    assert 0.02 < fresh < 0.09  # about the 5 % of real images, by construction


def test_too_few_features_is_a_clear_error_not_nan():
    x = gaussian(10, 4)
    for metric, few, message in ((kid, x[:1], "KID needs at least 2"), (fid, x[:1], "FID needs"),
                                 (precision_recall, x[:3], "k = 3 needs at least 4")):  # fmt: skip
        with pytest.raises(CatdogError, match=message):
            metric(few, x)
        with pytest.raises(CatdogError, match=message):
            metric(x, few)


@pytest.fixture()
def eval_cfg(tiny_data, tmp_path):
    def make(**kw):
        base = dict(data=DataConfig(data_dir=str(tiny_data), image_size=16), num_per_class=6,
                    steps=4, features="pixels", kid_subsets=5, cache_dir=str(tmp_path / "cache"),
                    output=str(tmp_path / "out" / "eval.json"), progress=False)  # fmt: skip
        return EvaluateConfig(**{**base, **kw})

    return make


def test_a_reference_split_inside_the_training_split_is_refused(eval_cfg, tiny_data):
    # Else the class probe is fitted on the reference images, and the memorisation threshold,
    # set on reference images that are themselves training images, is 0.
    for kw in ({"train_split": "train+test"}, {"reference_split": "train"}):
        with pytest.raises(CatdogError, match="must be held out"):
            evaluate(eval_cfg(images=str(tiny_data / "test"), **kw))


def test_an_unlabeled_training_split_is_refused(eval_cfg, tiny_data):
    # The probe ignores unlabelled rows and the generator never saw them; STL-10's 100,000 would
    # only make the memorisation and reference-point distances huge.
    with pytest.raises(CatdogError, match="includes unlabeled"):
        evaluate(eval_cfg(images=str(tiny_data / "test"), train_split="train+unlabeled"))


def test_a_copy_of_the_training_set_scores_as_memorised(eval_cfg, tiny_data, tmp_path):
    copies = tmp_path / "copies"
    shutil.copytree(tiny_data / "train", copies)
    report = evaluate(eval_cfg(images=str(copies)))
    assert report["rows"]["scored"]["memorisation"] == 1.0
    assert report["real_reference"]["memorisation"] < 0.5


def test_evaluate_command_end_to_end_on_a_tiny_model(tiny_pair, tiny_data, tmp_path):
    out = tmp_path / "report" / "eval.json"
    result = run_cli(
        "-m", "catdog", "evaluate", "--model-path", str(tiny_pair), "--data-dir", str(tiny_data),
        "--num-per-class", "5", "--steps", "3", "--features", "pixels", "--kid-subsets", "4",
        "--cache-dir", str(tmp_path / "cache"), "--output", str(out), "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert set(rows) == {"scored", "real_train", "vae_reconstruction"}
    assert rows["scored"]["n"] == 10 and rows["vae_reconstruction"]["n"] == 16
    for key in ("fid", "kid", "fid_cat", "kid_dog", "precision", "recall", "class_accuracy",
                "memorisation"):  # fmt: skip
        assert isinstance(rows["scored"][key], float)
    assert rows["real_train"]["memorisation"] == 1.0  # the training images themselves
    assert report["features"] == "pixels-16" and report["config"]["steps"] == 3
    assert "| scored images | 10 |" in result.stdout
    assert out.with_suffix(".md").read_text().strip() == format_table(report)
    assert out.with_suffix(".png").is_file()  # a few of the scored samples
    assert any((tmp_path / "cache").glob("pixels-16-*.pt"))


def test_folder_without_classes_or_images_is_refused(eval_cfg, tmp_path):
    (tmp_path / "flat").mkdir()
    with pytest.raises(CatdogError, match="no cat/ and dog/"):
        evaluate(eval_cfg(images=str(tmp_path / "flat")))
    for name in ("cat", "dog"):
        (tmp_path / "empty" / name).mkdir(parents=True)
    with pytest.raises(CatdogError, match="no readable images"):
        evaluate(eval_cfg(images=str(tmp_path / "empty")))


def test_fewer_than_two_images_of_a_class_is_refused(eval_cfg, tmp_path):
    write_image_folder(tmp_path / "few", {"x": 3}, size=16)
    for extra in list((tmp_path / "few" / "x" / "dog").iterdir())[1:]:
        extra.unlink()
    with pytest.raises(CatdogError, match="1 dog image"):
        evaluate(eval_cfg(images=str(tmp_path / "few" / "x")))


def test_evaluate_scores_the_best_of_k_samples(eval_cfg, tiny_pair, tiny_data, vgg_weights,
                                                tmp_path):  # fmt: skip
    from catdog import selector
    from catdog.data import load_split
    from catdog.losses import load_vgg16_features

    train = load_split(DataConfig(data_dir=str(tiny_data), image_size=16), "train")
    path = tmp_path / "selector.safetensors"
    selector.save(selector.fit(load_vgg16_features(vgg_weights), train.images, train.labels), path)
    kw = dict(model_path=str(tiny_pair), reference_points=False, vgg_weights=str(vgg_weights),
              selector_path=str(path))  # fmt: skip
    plain = evaluate(eval_cfg(**kw))
    best = evaluate(eval_cfg(select=3, **kw))
    assert plain["config"]["select"] == 1 and best["config"]["select"] == 3
    assert best["scored"].endswith(", best of 3") and "best of" not in plain["scored"]
    assert best["rows"]["scored"]["n"] == plain["rows"]["scored"]["n"] == 12
    assert best["rows"]["scored"]["fid"] != plain["rows"]["scored"]["fid"]  # other images


def test_model_and_images_together_is_refused(eval_cfg, tiny_pair, tiny_data):
    with pytest.raises(CatdogError, match="either"):
        evaluate(eval_cfg(model_path=str(tiny_pair), images=str(tiny_data / "train")))


def test_bad_outputs_and_settings_are_refused_before_any_work(eval_cfg, tiny_pair, tmp_path):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    cache_file = tmp_path / "cache_file"
    cache_file.write_text("not a folder")
    cases = [
        ({"output": str(folder)}, "is a folder"),
        ({"output": str(tmp_path / "e.png")}, "the JSON report"),
        ({"kid_subsets": 0}, "--kid-subsets must be at least 1"),
        ({"cache_dir": str(cache_file)}, "cache_file is a file, and a folder is needed"),
        ({"seed": -3}, "--seed must be in 0.."),
        ({"guidance": float("nan")}, "--guidance must be a finite number"),
    ]
    for kw, message in cases:
        with pytest.raises(CatdogError, match=message):
            evaluate(eval_cfg(model_path=str(tiny_pair), **kw))
    assert list(folder.iterdir()) == [] and not (tmp_path / "e.png").exists()
    assert not (tmp_path / "out" / "eval.json").exists()


def test_mismatched_model_pair_and_missing_inception_are_one_line_errors(
    tiny_pair, tiny_data, tmp_path
):
    from catdog import checkpoint

    vae, _ = checkpoint.load_vae(_vae_of(tiny_pair))
    vae.latent_mean.add_(1.0)  # another VAE of the same shape
    other = tmp_path / "other_vae.pt"
    checkpoint.save(other, checkpoint.KIND_VAE, checkpoint.vae_payload(vae, {}))
    common = ("-m", "catdog", "evaluate", "--model-path", str(tiny_pair), "--data-dir",
              str(tiny_data), "--num-per-class", "2", "--steps", "2", "--no-progress",
              "--output", str(tmp_path / "e.json"))  # fmt: skip
    junk = tmp_path / "junk.pth"
    junk.write_bytes(bytes(range(256)) * 64)
    mismatched, missing, junk_weights = run_cli_batch(
        (*common, "--vae-path", str(other), "--features", "pixels"),
        (*common, "--inception-weights", str(tmp_path / "missing.pth")),
        (*common, "--inception-weights", str(junk)),
    )
    assert_one_line_error(mismatched, "does not match")
    assert_one_line_error(missing, "Inception weights file not found")
    assert_one_line_error(junk_weights, "cannot load the FID Inception weights")
    assert not (tmp_path / "e.json").exists()


def _vae_of(diffusion_path):
    from catdog import checkpoint

    record = checkpoint.load(diffusion_path, checkpoint.KIND_DIFFUSION)
    return record["vae"]["path"]


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared is absent (no offline Inception)")
def test_real_inception_scores_real_photos_and_separates_cats_from_dogs(tmp_path):
    """The real path on a small slice of the shared photos: the probe on Inception features
    tells cats from dogs, and real images score far closer than heavily blurred ones."""
    import torchvision.transforms.v2.functional as TF
    from PIL import Image

    src = SHARED / "data" / "catdog96"
    small, blurred = tmp_path / "small", tmp_path / "blurred"
    for split, n in (("train", 16), ("test", 12)):
        for name in ("cat", "dog"):
            (small / split / name).mkdir(parents=True)
            (blurred / name).mkdir(parents=True, exist_ok=True)
            for path in sorted((src / split / name).iterdir())[:n]:
                shutil.copy(path, small / split / name / path.name)
                if split == "test":
                    image = TF.gaussian_blur(TF.pil_to_tensor(Image.open(path)), [9, 9], [4.0])
                    TF.to_pil_image(image).save(blurred / name / path.name)
    weights = SHARED / "weights" / "weights-inception-2015-12-05-6726825d.pth"
    cfg = dict(data=DataConfig(data_dir=str(small)), inception_weights=str(weights),
               cache_dir=str(tmp_path / "cache"), kid_subsets=10, reference_points=False,
               progress=False)  # fmt: skip
    sharp = evaluate(EvaluateConfig(images=str(small / "test"), output=str(tmp_path / "a.json"),
                                    **cfg))  # fmt: skip
    blur = evaluate(EvaluateConfig(images=str(blurred), output=str(tmp_path / "b.json"), **cfg))
    assert sharp["features"] == "inception-v3-compat-pool3"
    assert sharp["real_reference"]["probe_accuracy"] >= 0.75
    assert abs(sharp["rows"]["scored"]["fid"]) < 1e-3  # the reference split against itself
    assert blur["rows"]["scored"]["kid"] > 0.01 and blur["rows"]["scored"]["fid"] > 50
