import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from catdog import checkpoint
from catdog.config import LossTerm, RuntimeConfig, vae_preset
from catdog.data import ImageSet, load_folder, to_float
from catdog.errors import CatdogError
from catdog.losses import PerceptualLoss, load_vgg16_features
from catdog.train_vae import (
    BEST,
    FINAL,
    STATE,
    _cache_vgg_targets,
    _decoder_input,
    encode_training_set,
    evaluate,
    train,
)
from tests.conftest import ROOT, tiny_decoder_cfg


def tiny_cfg(data_dir, save_dir, **overrides):
    cfg = vae_preset("tiny")
    cfg.data.data_dir = str(data_dir)
    cfg.save_dir = str(save_dir)
    cfg.losses.vgg = LossTerm(0.0)
    cfg.losses.adv = LossTerm(0.1, start=1.0, ramp=0.5)  # on in the second epoch
    cfg.losses.cls = LossTerm(0.1, start=0.0)
    cfg.losses.center = LossTerm(0.1, start=0.0)
    cfg.progress = False
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def state_dict_of(path):
    return checkpoint.load(path, checkpoint.KIND_VAE)["state_dict"]


def test_training_writes_checkpoints_metrics_and_pictures(tiny_data, tmp_path):
    record = train(tiny_cfg(tiny_data, tmp_path, epochs=2))
    assert record["epoch"] == 2 and "val_psnr" in record and 0 <= record["probe_acc"] <= 1
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    history = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in history] == [1, 2]
    assert "loss_adv" not in history[0] and "loss_adv" in history[1]  # the schedule switched it on
    assert history[1]["w_adv"] == pytest.approx(0.1)
    for name in (BEST, FINAL):
        vae, rec = checkpoint.load_vae(tmp_path / name)
        assert bool(vae.has_latent_stats) and (vae.latent_std > 0).all()
        assert rec["train_config"]["losses"]["adv"]["weight"] == 0.1  # schedule recorded with run
    for picture in ("loss_curves.png", "reconstructions/epoch_0002.png", "tsne/epoch_0002.png"):
        with Image.open(tmp_path / picture) as im:
            im.verify()
    with Image.open(tmp_path / "reconstructions/epoch_0002.png") as im:
        assert im.size[1] > im.size[0] / 8  # two rows of images
    assert json.loads((tmp_path / "config.json").read_text())["epochs"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_logged_losses_average_over_the_steps_and_images_each_term_ran_on(
    tiny_data, tmp_path, monkeypatch
):
    """Every term below is patched to 1 per batch where it is defined, so its logged epoch mean
    must be 1: also for kl and adv in the epoch they switch on (the first step of a ramp has
    weight 0, so the term is not computed there), and for cls and center when some batches
    hold no labelled image. The logged weights are those of the epoch's last step."""
    import catdog.train_vae as train_vae

    def one(*tensors, defined=True):  # 1 (0 where undefined), still a function of the inputs
        return sum(t.sum() * 0.0 for t in tensors) + (1.0 if defined else 0.0)

    monkeypatch.setattr(train_vae, "kl_divergence", lambda m, lv: one(m, lv))
    monkeypatch.setattr(train_vae, "hinge_g_loss", lambda fake: one(fake))
    monkeypatch.setattr(train_vae, "hinge_d_loss", lambda real, fake: one(real, fake))
    monkeypatch.setattr(
        train_vae, "classifier_loss", lambda lg, lb: one(lg, defined=bool((lb >= 0).any()))
    )
    monkeypatch.setattr(
        train_vae, "center_loss", lambda f, lb, c: one(f, c, defined=bool((lb >= 0).any()))
    )
    real_load = train_vae.load_split

    def mostly_unlabeled(data_cfg, split):  # 2 of 24 labelled: some batches of 8 have none
        images = real_load(data_cfg, split)
        if split != data_cfg.train_split:
            return images
        labels = torch.full_like(images.labels, -1)
        labels[:2] = images.labels[:2]
        return ImageSet(images.images, labels, images.source)

    monkeypatch.setattr(train_vae, "load_split", mostly_unlabeled)
    cfg = tiny_cfg(tiny_data, tmp_path, epochs=2)  # 3 steps an epoch
    cfg.losses.kl = LossTerm(0.1, start=0.0, ramp=10.0)  # weight 0 at the very first step
    cfg.losses.adv = LossTerm(0.1, start=1.5)  # on for the last step of epoch 2 only
    cfg.losses.center = LossTerm(0.1, start=1.0)  # off in all of epoch 1, on in all of epoch 2
    train(cfg)
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    for record in history:
        for term in ("kl", "adv", "disc", "cls", "center"):
            if f"loss_{term}" in record:
                assert record[f"loss_{term}"] == pytest.approx(1.0), (record["epoch"], term)
    assert "loss_adv" not in history[0] and "loss_disc" in history[1]
    assert history[0]["w_adv"] == 0.0 and history[1]["w_adv"] == pytest.approx(0.1)
    assert history[0]["w_center"] == 0.0 and history[1]["w_center"] == pytest.approx(0.1)
    assert history[0]["w_kl"] == pytest.approx(0.1 * (2 / 3) / 10)  # ramp at step 3 of 3


def test_latent_stats_are_those_of_the_training_set(tiny_data, tmp_path):
    train(tiny_cfg(tiny_data, tmp_path, epochs=1))
    vae, _ = checkpoint.load_vae(tmp_path / FINAL)
    images = load_folder(tiny_data, "train", 16).images
    with torch.no_grad():
        means = vae.encode(to_float(images))[0]
    assert torch.allclose(vae.latent_mean, means.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(vae.latent_std, means.std(dim=(0, 2, 3)), atol=1e-5)


def test_the_probe_is_fitted_on_labelled_training_images_only(tiny_data, tiny_vae):
    vae, _ = checkpoint.load_vae(tiny_vae)
    train_set, val = load_folder(tiny_data, "train", 16), load_folder(tiny_data, "test", 16)
    labelled = evaluate(vae, train_set, val, seed=0)[0]
    unknown = torch.full_like(train_set.labels, -1)  # as STL-10's unlabeled split
    alone = evaluate(vae, ImageSet(train_set.images, unknown, "unlabeled"), val, seed=0)[0]
    assert "probe_acc" not in alone and alone["val_psnr"] == labelled["val_psnr"]
    mixed = ImageSet(torch.cat([train_set.images, train_set.images.flip(-1)]),
                     torch.cat([train_set.labels, unknown]), "train+unlabeled")  # fmt: skip
    assert evaluate(vae, mixed, val, seed=0)[0]["probe_acc"] == labelled["probe_acc"]


def test_the_held_out_split_is_never_trained_on(tiny_data, tmp_path):
    cfg = tiny_cfg(tiny_data, tmp_path, epochs=1)
    cfg.data.train_split = "train+test"
    with pytest.raises(CatdogError, match="contains the held-out split test"):
        train(cfg)
    assert not (tmp_path / STATE).exists()


@pytest.mark.parametrize("eval_every", [1, 2])
def test_resume_continues_exactly(tiny_data, tmp_path, eval_every):
    """With eval_every 2 the stop at epoch 1 is evaluated off the schedule (and may become the
    best checkpoint); training is the same."""
    straight = tmp_path / "straight"
    train(tiny_cfg(tiny_data, straight, epochs=3, eval_every=eval_every))
    split = tmp_path / "split"
    train(tiny_cfg(tiny_data, split, epochs=3, stop_at_epoch=1, eval_every=eval_every))
    assert not (split / FINAL).exists()
    assert (split / BEST).is_file()  # a stopped run always leaves weights to train diffusion on
    assert checkpoint.load(split / STATE, checkpoint.KIND_VAE_TRAIN_STATE)["epoch"] == 1
    train(tiny_cfg(tiny_data, split, epochs=3, eval_every=eval_every), resume=True)
    a, b = state_dict_of(straight / FINAL), state_dict_of(split / FINAL)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    epochs = [
        json.loads(line)["epoch"] for line in (split / "metrics.jsonl").read_text().splitlines()
    ]
    assert epochs == [1, 2, 3]


def test_a_resumed_run_checks_its_saved_batch_against_gradient_accumulation(tiny_data, tmp_path):
    """Resumed, the run trains with its saved batch (6), which --grad-accum 4 does not divide,
    though the command line's (8) would pass."""
    train(tiny_cfg(tiny_data, tmp_path, epochs=2, batch_size=6, stop_at_epoch=1))
    cfg = tiny_cfg(tiny_data, tmp_path, epochs=2)
    cfg.runtime = RuntimeConfig(grad_accum=4)
    with pytest.raises(CatdogError, match="global batch 6 is not divisible"):
        train(cfg, resume=True, given={"runtime": {"grad_accum": 4}})
    assert checkpoint.load(tmp_path / STATE, checkpoint.KIND_VAE_TRAIN_STATE)["epoch"] == 1


def test_a_copied_run_folder_resumes_in_place_and_leaves_the_original_alone(tiny_data, tmp_path):
    original, copy = tmp_path / "original", tmp_path / "copy"
    train(tiny_cfg(tiny_data, original, epochs=2, stop_at_epoch=1))
    before = {p.name: p.read_bytes() for p in original.iterdir() if p.is_file()}
    shutil.copytree(original, copy)
    train(tiny_cfg(tiny_data, copy, epochs=2), resume=True)
    assert (copy / FINAL).is_file()
    assert json.loads((copy / "config.json").read_text())["save_dir"] == str(copy)
    assert {p.name: p.read_bytes() for p in original.iterdir() if p.is_file()} == before


def test_new_run_never_overwrites_and_resume_needs_a_run(tiny_data, tmp_path):
    with pytest.raises(CatdogError, match="nothing to resume"):
        train(tiny_cfg(tiny_data, tmp_path / "empty", epochs=1), resume=True)
    train(tiny_cfg(tiny_data, tmp_path / "run", epochs=1))
    before = (tmp_path / "run" / FINAL).read_bytes()
    with pytest.raises(CatdogError, match="already holds a VAE run"):
        train(tiny_cfg(tiny_data, tmp_path / "run", epochs=1))
    assert (tmp_path / "run" / FINAL).read_bytes() == before


def test_sigkill_loses_at_most_the_work_since_the_last_checkpoint(tiny_data, tmp_path):
    save_dir = tmp_path / "run"
    args = [
        sys.executable, "-m", "catdog", "train-vae", "--preset", "tiny",
        "--data-dir", str(tiny_data),
        "--save-dir", str(save_dir), "--epochs", "400", "--lambda-vgg", "0", "--viz-every", "1000",
        "--no-progress",
    ]  # fmt: skip
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = save_dir / STATE
    while proc.poll() is None:  # no wall-clock limit: the 400 epochs end it in any case
        if state.exists() and checkpoint.load(state, checkpoint.KIND_VAE_TRAIN_STATE)["epoch"] >= 2:
            break
        time.sleep(0.2)
    if proc.poll() is not None:
        pytest.fail(f"the run ended before it could be killed: {proc.stderr.read().decode()}")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = checkpoint.load(state, checkpoint.KIND_VAE_TRAIN_STATE)  # still a whole, loadable file
    assert saved["epoch"] >= 2
    at = args.index("--epochs") + 1
    resumed = [*args[:at], str(saved["epoch"] + 1), *args[at + 1 :], "--resume"]
    result = subprocess.run(resumed, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    epochs = [
        json.loads(line)["epoch"] for line in (save_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert epochs == list(range(1, saved["epoch"] + 2))
    assert (save_dir / FINAL).exists()


def test_cached_vgg_targets_match_direct_features(vgg_weights, tiny_data):
    perceptual = PerceptualLoss(load_vgg16_features(vgg_weights))
    images = load_folder(tiny_data, "train", 16).images[:5]
    cache = _cache_vgg_targets(perceptual.features, images)
    direct = perceptual.features(to_float(images[3:4]).flip(-1))
    for layer_cache, layer_direct in zip(cache, direct, strict=True):
        assert layer_cache.shape[0] == 10
        torch.testing.assert_close(
            layer_cache[5 + 3].float(), layer_direct[0], atol=2e-3, rtol=1e-2
        )


def test_training_with_perceptual_loss_cached_and_uncached(
    tiny_data, vgg_weights, tmp_path, monkeypatch
):
    import catdog.train_vae as train_vae

    built = []
    real = train_vae._cache_vgg_targets
    monkeypatch.setattr(
        train_vae, "_cache_vgg_targets", lambda *a, **k: built.append(1) or real(*a, **k)
    )
    results = []
    for cached in (True, False):
        cfg = tiny_cfg(tiny_data, tmp_path / str(cached), epochs=1, vgg_weights=str(vgg_weights))
        cfg.losses.vgg = LossTerm(0.5)
        cfg.cache_vgg_targets = cached
        results.append(train(cfg)["loss_vgg"])
    assert len(built) == 1  # the cached run only
    assert results[0] > 0
    assert results[0] == pytest.approx(results[1], rel=0.05)  # fp16 cache vs fp32 on the fly


def test_align_term_trains_a_projector_that_resumes_and_is_not_in_the_vae(
    tiny_data, vgg_weights, tmp_path
):
    def cfg(save_dir, **overrides):
        # relu2_2 (layer 8): 8x8 features for the 16 px tiny images.
        overrides = {"epochs": 2, "vgg_weights": str(vgg_weights), "align_layer": 8, **overrides}
        c = tiny_cfg(tiny_data, save_dir, **overrides)
        c.losses.align = LossTerm(0.5)
        return c

    straight = tmp_path / "straight"
    record = train(cfg(straight))
    assert record["loss_align"] > 0 and record["w_align"] == 0.5
    state = checkpoint.load(straight / STATE, checkpoint.KIND_VAE_TRAIN_STATE)
    assert state["projector"]["proj.weight"].shape == (128, 2, 1, 1)  # relu2_2's 128 channels
    assert not any("proj" in key for key in state_dict_of(straight / FINAL))
    # The align term changes the VAE it trains.
    plain = tmp_path / "plain"
    train(tiny_cfg(tiny_data, plain, epochs=2, vgg_weights=str(vgg_weights)))
    a, b = state_dict_of(straight / FINAL), state_dict_of(plain / FINAL)
    assert not torch.equal(a["encoder.head.weight"], b["encoder.head.weight"])
    # Resume restores the projector: the same weights as one straight run.
    split = tmp_path / "split"
    train(cfg(split, stop_at_epoch=1))
    train(cfg(split), resume=True)
    b = state_dict_of(split / FINAL)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # The features on the fly (no cache) give the same loss as the fp16 cache.
    uncached = train(cfg(tmp_path / "uncached", cache_vgg_targets=False))
    assert uncached["loss_align"] == pytest.approx(record["loss_align"], rel=0.05)
    with pytest.raises(CatdogError, match="align_layer must be in 0..30"):
        train(cfg(tmp_path / "bad", align_layer=31))


def test_align_targets_past_the_memory_budget_are_computed_each_step(
    tiny_data, vgg_weights, tmp_path, monkeypatch
):
    import catdog.train_vae as train_vae

    cached, real = [], train_vae._cache_vgg_targets
    monkeypatch.setattr(
        train_vae, "_cache_vgg_targets", lambda *a, **k: cached.append(1) or real(*a, **k)
    )
    losses = []
    for budget in (train_vae.VGG_CACHE_MAX_BYTES, 1):
        monkeypatch.setattr(train_vae, "VGG_CACHE_MAX_BYTES", budget)
        cfg = tiny_cfg(tiny_data, tmp_path / str(budget), epochs=1, vgg_weights=str(vgg_weights),
                       align_layer=8)  # fmt: skip
        cfg.losses.align = LossTerm(0.5)
        losses.append(train(cfg)["loss_align"])
    assert len(cached) == 1  # the first run only: the second is over its budget
    assert losses[1] == pytest.approx(losses[0], rel=0.05)


def test_decoder_finetune_trains_only_the_decoder(tiny_data, tiny_vae, tiny_decoder_ft):
    source, before = checkpoint.load_vae(tiny_vae)
    tuned, record = checkpoint.load_vae(tiny_decoder_ft)
    a, b = source.state_dict(), tuned.state_dict()
    assert a.keys() == b.keys()
    fixed = [k for k in a if not k.startswith("decoder.")]
    assert "latent_mean" in fixed and "class_centers" in fixed
    for key in fixed:  # encoder, latent statistics and heads: bit for bit
        assert torch.equal(a[key], b[key]), key
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("decoder."))
    assert record["decoder_of"] == {
        "sha256": checkpoint.content_hash(a),
        "latent_sha256": checkpoint.latent_hash(a),
        "path": str(tiny_vae.resolve()),
    }
    assert checkpoint.latent_hash(b) == checkpoint.latent_hash(a)
    assert checkpoint.content_hash(b) != checkpoint.content_hash(a)
    history = [json.loads(line) for line in (tiny_decoder_ft.parent / "metrics.jsonl").open()]
    assert [r["epoch"] for r in history] == [1, 2]
    assert "loss_rec" in history[0] and "loss_kl" not in history[0] and "loss_cls" not in history[0]
    assert record["train_config"]["model"] == before["config"]  # the architecture is the source's


def test_decoder_finetune_resumes_exactly(tiny_data, tiny_vae, tmp_path):
    straight = tmp_path / "straight"
    train(tiny_decoder_cfg(tiny_data, tiny_vae, straight, epochs=2))
    split = tmp_path / "split"
    train(tiny_decoder_cfg(tiny_data, tiny_vae, split, epochs=2, stop_at_epoch=1))
    train(tiny_decoder_cfg(tiny_data, tiny_vae, split, epochs=2), resume=True)
    a, b = state_dict_of(straight / FINAL), state_dict_of(split / FINAL)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert (
        checkpoint.load(split / FINAL, checkpoint.KIND_VAE)["decoder_of"]
        == checkpoint.load(straight / FINAL, checkpoint.KIND_VAE)["decoder_of"]
    )


def test_latent_noise_reaches_the_decoder_and_only_there(tiny_data, tiny_vae, tmp_path):
    quiet = train(tiny_decoder_cfg(tiny_data, tiny_vae, tmp_path / "quiet", latent_noise=0.0))
    noisy = train(tiny_decoder_cfg(tiny_data, tiny_vae, tmp_path / "noisy", latent_noise=1.0))
    assert noisy["loss_rec"] > quiet["loss_rec"]  # a noisier input is harder to reconstruct
    with pytest.raises(CatdogError, match="--latent-noise is for decoder fine-tuning"):
        train(tiny_cfg(tiny_data, tmp_path / "full", epochs=1, latent_noise=0.1))


def test_decoder_input_from_the_cache_equals_encoding_now(tiny_data, tiny_vae):
    vae, _ = checkpoint.load_vae(tiny_vae)
    images = load_folder(tiny_data, "train", 16).images[:4]
    posterior = encode_training_set(vae, images)
    x = to_float(images).flip(-1)  # rows 4..7 of the cache are the mirror images
    eps, noise = torch.randn(4, 2, 8, 8), torch.randn(4, 2, 8, 8)
    cached = _decoder_input(vae, posterior, x, torch.arange(4, 8), eps, noise)
    now = _decoder_input(vae, None, x, torch.arange(4, 8), eps, noise)
    torch.testing.assert_close(cached, now, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        mean, logvar = vae.encode(x)
    expected = mean + (0.5 * logvar).exp() * eps + vae.latent_std[:, None, None] * noise
    torch.testing.assert_close(cached, expected, atol=1e-5, rtol=1e-4)


def test_color_jitter_encodes_on_the_fly(tiny_data, tiny_vae, tmp_path, monkeypatch):
    import catdog.train_vae as train_vae

    cached = []  # the posterior cache of the training set: valid only for fixed images
    real = train_vae.encode_training_set
    monkeypatch.setattr(train_vae, "encode_training_set", lambda *a: cached.append(1) or real(*a))
    for jitter in (0.2, 0.0):
        cfg = tiny_decoder_cfg(tiny_data, tiny_vae, tmp_path / str(jitter), epochs=1)
        cfg.data.color_jitter = jitter
        record = train(cfg)
        assert record["loss_rec"] > 0 and record["epoch"] == 1
        assert len(cached) == (0 if jitter else 1)  # jittered images are encoded as they come


def half_scale_l1(vae, images):
    """L1 between the decoded 2x-downsampled latent mean and the 2x-downsampled image."""
    x = to_float(images)
    with torch.no_grad():
        mean = vae.encode(x)[0]
        return F.l1_loss(vae.decode(F.avg_pool2d(mean, 2)), F.avg_pool2d(x, 2)).item()


def test_init_from_starts_from_the_source_and_trains_the_whole_vae(tiny_data, tiny_vae, tmp_path):
    source, before = checkpoint.load_vae(tiny_vae)
    a = source.state_dict()
    # At lr 0 the fine-tune hands back the source itself: it starts from its weights.
    still = tiny_cfg(tiny_data, tmp_path / "still", epochs=1, lr=0.0, init_from=str(tiny_vae))
    still.model.latent_channels = 3  # ignored: the architecture is the source's
    train(still)
    same, record = checkpoint.load_vae(tmp_path / "still" / FINAL)
    assert record["train_config"]["model"] == before["config"]
    for key, value in same.state_dict().items():
        if key.startswith("latent_"):  # recomputed from the same encoder
            torch.testing.assert_close(value, a[key], atol=1e-5, rtol=1e-4)
        else:
            assert torch.equal(value, a[key]), key
    # At a real rate the encoder trains too, unlike --finetune-decoder: the latent changes.
    train(tiny_cfg(tiny_data, tmp_path / "moved", epochs=1, init_from=str(tiny_vae)))
    moved, _ = checkpoint.load_vae(tmp_path / "moved" / FINAL)
    b = moved.state_dict()
    assert not torch.equal(a["encoder.stem.weight"], b["encoder.stem.weight"])
    assert checkpoint.latent_hash(b) != checkpoint.latent_hash(a)


def test_init_from_resumes_exactly_without_its_source(tiny_data, tiny_vae, tmp_path):
    source = tmp_path / "source.pt"
    shutil.copy(tiny_vae, source)
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(tiny_cfg(tiny_data, straight, epochs=2, init_from=str(source)))
    train(tiny_cfg(tiny_data, split, epochs=2, stop_at_epoch=1, init_from=str(source)))
    source.unlink()  # a resumed run has its own weights and does not read the source again
    train(tiny_cfg(tiny_data, split, epochs=2, init_from=str(source)), resume=True)
    a, b = state_dict_of(straight / FINAL), state_dict_of(split / FINAL)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_equiv_term_makes_the_latent_scale_equivariant(tiny_data, tiny_vae, tmp_path):
    images = load_folder(tiny_data, "test", 16).images
    errors, records = {}, {}
    for weight in (0.0, 5.0):
        cfg = tiny_cfg(tiny_data, tmp_path / str(weight), epochs=4, init_from=str(tiny_vae),
                       lr_warmup_steps=1)  # fmt: skip
        cfg.losses.equiv = LossTerm(weight)
        records[weight] = train(cfg)
        errors[weight] = half_scale_l1(checkpoint.load_vae(tmp_path / str(weight) / FINAL)[0],
                                       images)  # fmt: skip
    # Held-out images; without the term the two runs are the same run (same seed, same data).
    assert errors[5.0] < 0.95 * errors[0.0]
    assert "loss_equiv" not in records[0.0] and records[5.0]["w_equiv"] == 5.0
    assert records[5.0]["loss_equiv"] > 0


def test_fine_tuning_options_that_cannot_combine(tiny_data, tiny_vae, tmp_path):
    both = tiny_decoder_cfg(tiny_data, tiny_vae, tmp_path / "both", init_from=str(tiny_vae))
    with pytest.raises(CatdogError, match="exclusive"):
        train(both)
    equiv = tiny_decoder_cfg(tiny_data, tiny_vae, tmp_path / "equiv")
    equiv.losses.equiv = LossTerm(1.0)
    with pytest.raises(CatdogError, match="decoder fine-tuning keeps the encoder fixed"):
        train(equiv)
    assert not (tmp_path / "both").exists() and not (tmp_path / "equiv").exists()


def test_the_training_set_is_encoded_on_the_vae_device():
    """As decode_latents (test_generate): CPU images reach a VAE on another device."""
    from catdog.config import VAEConfig
    from catdog.models.vae import VAE

    vae = VAE(VAEConfig(image_size=16, channels=(8, 16), latent_channels=2, norm_groups=4))
    images = torch.zeros(3, 3, 16, 16, dtype=torch.uint8)
    with pytest.raises(NotImplementedError, match="Cannot copy out of meta tensor"):
        encode_training_set(vae.to("meta"), images)
