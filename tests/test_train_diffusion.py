import json
import shutil

import pytest
import torch
from PIL import Image

from catdog import augment, checkpoint, train_diffusion
from catdog.config import DiffusionTrainConfig, RuntimeConfig, ScheduleConfig
from catdog.data import load_folder, to_float
from catdog.diffusion import SAMPLERS, NoiseSchedule, per_sample_noise
from catdog.errors import CatdogError
from catdog.export import export_pair
from catdog.generate import sample_latents
from catdog.losses import load_vgg16_features, vgg_feature_map
from catdog.models.unet import UNet
from catdog.models.vae import VAE
from catdog.train_diffusion import (
    FINAL,
    GUIDE,
    LATENTS,
    STATE,
    denoising_error,
    learning_rate,
    load_or_cache_latents,
    train,
)
from catdog.train_vae import encode_training_set
from tests.conftest import resave, tiny_diffusion_cfg, write_image_folder


def test_training_writes_an_ema_checkpoint_linked_to_its_vae(tiny_data, tiny_vae, tiny_pair):
    save_dir = tiny_pair.parent
    unet, schedule, record = checkpoint.load_diffusion(tiny_pair)
    vae, _ = checkpoint.load_vae(tiny_vae)
    assert record["vae"]["sha256"] == checkpoint.content_hash(vae.state_dict())
    found, path = checkpoint.find_vae(tiny_pair, record)
    assert path.resolve() == tiny_vae.resolve()
    state = checkpoint.load(save_dir / STATE, checkpoint.KIND_DIFFUSION_TRAIN_STATE)
    # Sampling weights are the EMA, not the live weights.
    assert all(torch.equal(record["state_dict"][k], v) for k, v in state["ema"].items())
    assert not all(torch.equal(record["state_dict"][k], v) for k, v in state["unet"].items())
    history = [json.loads(x) for x in (save_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2] and history[-1]["loss"] > 0
    # Held-out and training denoising errors are tracked at checkpoints.
    assert history[-1]["val_x0_mse"] > 0 and history[-1]["train_x0_mse"] > 0
    with Image.open(save_dir / "samples" / "epoch_0002.png") as im:
        im.verify()
    cached = torch.load(save_dir / LATENTS, weights_only=True)
    assert cached["mean"].shape == (48, 2, 8, 8)  # 24 images and their mirror images
    assert cached["labels"].tolist() == ([0] * 12 + [1] * 12) * 2


def test_cached_latents_are_the_posterior_of_images_and_mirrors(tiny_data, tiny_vae):
    vae, _ = checkpoint.load_vae(tiny_vae)
    images = load_folder(tiny_data, "train", 16).images[:3]
    mean, logvar = encode_training_set(vae, images)
    with torch.no_grad():
        direct = vae.encode(to_float(images[1:2]).flip(-1))
    torch.testing.assert_close(mean[3 + 1], direct[0][0])
    torch.testing.assert_close(logvar[3 + 1], direct[1][0])


def test_crop_copies_add_cropped_latents_and_key_the_cache(tiny_data, tiny_vae, tmp_path):
    cfg = tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path, epochs=1, crop_copies=2)
    vae, _ = checkpoint.load_vae(tiny_vae)
    cfg.data.image_size = vae.cfg.image_size  # as training does: the data follows the VAE
    key = checkpoint.content_hash(vae.state_dict())
    cached = load_or_cache_latents(cfg, vae, key)
    assert cached["mean"].shape == (24 * 2 * 3, 2, 8, 8)  # (original + 2 crops) x mirrors
    assert cached["labels"].tolist() == ([0] * 12 + [1] * 12) * 6
    plain = encode_training_set(vae, load_folder(tiny_data, "train", 16).images)[0]
    torch.testing.assert_close(cached["mean"][:48], plain)  # the first copy is uncropped
    assert not torch.allclose(cached["mean"][48:96], plain)  # the others are not
    # Another crop setting does not reuse the cache.
    cfg.crop_min_scale = 0.5
    again = load_or_cache_latents(cfg, vae, key)
    assert not torch.equal(again["mean"][48:], cached["mean"][48:])
    assert torch.equal(load_or_cache_latents(cfg, vae, key)["mean"], again["mean"])
    # Nor do other photos (a run that died before its first checkpoint, started again on other
    # data), and a cut cache file is encoded again rather than an error.
    cfg.data.data_dir = str(write_image_folder(tmp_path / "other", {"train": 12}, size=16, seed=5))
    other = load_or_cache_latents(cfg, vae, key)
    assert other["mean"].shape == again["mean"].shape and not torch.equal(
        other["mean"], again["mean"]
    )
    (tmp_path / LATENTS).write_bytes(b"PK\x03\x04 cut")
    assert torch.equal(load_or_cache_latents(cfg, vae, key)["mean"], other["mean"])
    cfg.crop_copies = -1
    with pytest.raises(CatdogError, match="crop_copies"):
        load_or_cache_latents(cfg, vae, key)


class _EpsOracleForZeroLatents(torch.nn.Module):
    """Predicts the exact noise when the clean latent is 0 (then x_t = sigma_t * eps)."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule, self.dummy = schedule, torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, t, labels):
        return x / (1 - self.schedule.alpha_bar[t]).sqrt()[:, None, None, None]


def test_denoising_error_is_zero_for_an_oracle_and_not_for_a_guess():
    schedule = NoiseSchedule(ScheduleConfig(objective="eps"))
    x0, labels = torch.zeros(6, 2, 4, 4), torch.tensor([0, 1] * 3)
    oracle = _EpsOracleForZeroLatents(schedule)
    assert denoising_error(oracle, schedule, x0, labels) < 1e-8
    guess = _EpsOracleForZeroLatents(schedule)
    guess.forward = lambda x, t, labels: torch.zeros_like(x)  # "no noise": x0 = x_t / alpha_t
    assert denoising_error(guess, schedule, x0, labels) > 0.1
    assert denoising_error(guess, schedule, x0, labels, seed=1) != denoising_error(
        guess, schedule, x0, labels, seed=2
    )


def test_the_held_out_split_is_never_trained_on(tiny_data, tiny_vae, tmp_path):
    cfg = tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path, epochs=1)
    cfg.data.train_split = "test"
    with pytest.raises(CatdogError, match="contains the held-out split test"):
        train(cfg)
    assert not (tmp_path / LATENTS).exists()


def test_resume_continues_exactly(tiny_data, tiny_vae, tmp_path):
    train(tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path / "a", epochs=3))
    train(tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path / "b", epochs=3, stop_at_epoch=1))
    stopped = checkpoint.load(tmp_path / "b" / FINAL, checkpoint.KIND_DIFFUSION)
    assert stopped["epoch"] == 1  # a stopped run leaves usable weights, marked with their epoch
    train(tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path / "b", epochs=3), resume=True)
    a = checkpoint.load(tmp_path / "a" / FINAL, checkpoint.KIND_DIFFUSION)["state_dict"]
    b = checkpoint.load(tmp_path / "b" / FINAL, checkpoint.KIND_DIFFUSION)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_learning_rate_warms_up_stays_constant_then_cools_down_to_near_zero():
    cfg = DiffusionTrainConfig(epochs=10, cooldown_epochs=4, lr_warmup_steps=10)
    assert learning_rate(cfg, 1.0, step=0, epochs_done=0.0) == pytest.approx(0.1)
    assert learning_rate(cfg, 1.0, step=50, epochs_done=5.9) == 1.0
    assert learning_rate(cfg, 1.0, step=60, epochs_done=6.0) == 1.0  # the cooldown starts here
    assert learning_rate(cfg, 1.0, step=70, epochs_done=8.0) == pytest.approx(0.5)
    last = learning_rate(cfg, 1.0, step=99, epochs_done=9.9)  # last step of 10 per epoch
    assert 0 < last == pytest.approx(0.025)
    cfg.cooldown_epochs = 0
    assert learning_rate(cfg, 1.0, step=99, epochs_done=9.9) == 1.0


def test_a_resumed_run_takes_its_cooldown_from_the_command_line(tiny_data, tiny_vae, tmp_path):
    """Warmup-stable-decay: a constant-rate run, resumed with more epochs and a cooldown, ends
    with the rate falling towards 0; the epochs before it are untouched."""
    train(tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path, epochs=2, lr_warmup_steps=1))
    before = [r["lr"] for r in map(json.loads, (tmp_path / "metrics.jsonl").open())]
    cfg = tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path, epochs=4, cooldown_epochs=2)
    train(cfg, resume=True)
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    rates = [r["lr"] for r in history]
    assert rates[:2] == before and len(rates) == 4
    assert 0 < rates[3] < rates[2] < rates[1]
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["epochs"], saved["cooldown_epochs"]) == (4, 2)
    with pytest.raises(CatdogError, match="cooldown epochs must be in 0..4"):
        train(tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path / "bad", epochs=4,
                                 cooldown_epochs=5))  # fmt: skip


def test_a_resumed_run_checks_its_saved_batch_against_gradient_accumulation(
    tiny_data, tiny_vae, tmp_path
):
    """The batch the run trains with on resume is the saved one (6), not the command line's
    (16, which 4 micro-steps divide): 6 is refused for --grad-accum 4 before anything is
    written."""
    train(tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path, epochs=2, batch_size=6,
                             stop_at_epoch=1))  # fmt: skip
    before = (tmp_path / "metrics.jsonl").read_bytes()
    cfg = tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path)
    cfg.runtime = RuntimeConfig(grad_accum=4)
    with pytest.raises(CatdogError, match="global batch 6 is not divisible"):
        train(cfg, resume=True, given={"runtime": {"grad_accum": 4}})
    assert (tmp_path / "metrics.jsonl").read_bytes() == before
    cfg.runtime = RuntimeConfig(grad_accum=2)  # 6 = 2 x 3: accepted
    assert train(cfg, resume=True, given={"runtime": {"grad_accum": 2}})["epoch"] == 2


def test_bad_dropouts_and_a_save_dir_that_is_a_file_are_refused_before_any_work(
    tiny_data, tiny_vae, tmp_path
):
    for name, value in (("class_dropout", -0.5), ("dropout", 1.0)):
        cfg = tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path / name)
        setattr(cfg.unet, name, value)
        with pytest.raises(CatdogError, match=f"{name.replace('_', ' ')} must be in .0, 1."):
            train(cfg)
        assert not (tmp_path / name / LATENTS).exists()
    taken = tmp_path / "notes.md"
    taken.write_text("x")
    with pytest.raises(CatdogError, match="notes.md is a file"):
        train(tiny_diffusion_cfg(tiny_data, tiny_vae, taken))


def test_vae_without_statistics_is_refused_and_a_new_unet_takes_the_vae_shape(
    tiny_data, tiny_vae, tmp_path
):
    raw = tmp_path / "raw_vae.pt"
    vae, record = checkpoint.load_vae(tiny_vae)
    fresh = VAE(vae.cfg)
    checkpoint.save(raw, checkpoint.KIND_VAE, checkpoint.vae_payload(fresh, {}))
    with pytest.raises(CatdogError, match="no latent statistics"):
        train(tiny_diffusion_cfg(tiny_data, raw, tmp_path / "r1", epochs=1))
    cfg = tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path / "r2", epochs=2, stop_at_epoch=1)
    cfg.unet.latent_channels = 4  # a new run's UNet follows the VAE's latent shape instead
    train(cfg)
    saved = json.loads((tmp_path / "r2" / "config.json").read_text())["unet"]
    assert (saved["latent_channels"], saved["latent_size"]) == vae.cfg.latent_shape[:2]
    state = checkpoint.load(
        tmp_path / "r2" / "diffusion_train_state.pt", checkpoint.KIND_DIFFUSION_TRAIN_STATE
    )
    state["train_config"]["unet"]["latent_channels"] = 4  # a resumed run keeps its saved shape
    checkpoint.save(
        tmp_path / "r2" / "diffusion_train_state.pt", checkpoint.KIND_DIFFUSION_TRAIN_STATE, state
    )
    with pytest.raises(CatdogError, match="does not match the VAE"):
        train(tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path / "r2", epochs=2), resume=True)


def test_resume_after_the_vae_file_changed_is_refused(tiny_data, tiny_vae, tmp_path):
    vae_copy = tmp_path / "vae.pt"
    vae_copy.write_bytes(tiny_vae.read_bytes())
    train(tiny_diffusion_cfg(tiny_data, vae_copy, tmp_path / "run", epochs=2, stop_at_epoch=1))
    vae, _ = checkpoint.load_vae(tiny_vae)
    other = VAE(vae.cfg)
    other.set_latent_stats(torch.randn(10, 2, 8, 8))
    checkpoint.save(vae_copy, checkpoint.KIND_VAE, checkpoint.vae_payload(other, {}))
    with pytest.raises(CatdogError, match="is not the one"):
        train(tiny_diffusion_cfg(tiny_data, vae_copy, tmp_path / "run", epochs=2), resume=True)


def test_an_early_ema_snapshot_is_saved_as_the_guide_and_linked(tiny_data, tiny_vae, tmp_path):
    kw = {"epochs": 3, "guide_step": 4, "guide_guidance": 2.5}  # 3 steps an epoch
    train(tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path / "a", **kw))
    final = tmp_path / "a" / FINAL
    record = checkpoint.load(final, checkpoint.KIND_DIFFUSION)
    snapshot = checkpoint.load(tmp_path / "a" / GUIDE, checkpoint.KIND_DIFFUSION)
    assert snapshot["step"] == 4 and snapshot["vae"] == record["vae"]
    assert record["guide"]["step"] == 4 and record["guide"]["guidance"] == 2.5
    guide, link = checkpoint.find_guide(final, record)
    assert link["file"] == str((tmp_path / "a" / GUIDE).resolve())
    assert not all(torch.equal(v, record["state_dict"][k]) for k, v in guide.state_dict().items())
    # Stopped after the snapshot and resumed: the link survives, to the same weights.
    train(tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path / "b", stop_at_epoch=2, **kw))
    train(tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path / "b", **kw), resume=True)
    resumed = checkpoint.load(tmp_path / "b" / FINAL, checkpoint.KIND_DIFFUSION)
    assert resumed["guide"]["sha256"] == record["guide"]["sha256"]
    # A moved run folder finds its guide beside the model.
    shutil.move(tmp_path / "a", tmp_path / "moved")
    moved = tmp_path / "moved" / FINAL
    _, link = checkpoint.find_guide(moved, checkpoint.load(moved, checkpoint.KIND_DIFFUSION))
    assert link["file"] == str(tmp_path / "moved" / GUIDE)
    # guide_step 0: no snapshot, no link, classifier-free guidance.
    train(tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path / "c", epochs=2, guide_step=0))
    assert not (tmp_path / "c" / GUIDE).exists()
    assert "guide" not in checkpoint.load(tmp_path / "c" / FINAL, checkpoint.KIND_DIFFUSION)


def test_loss_curves_are_redrawn_at_checkpoints_only(tiny_data, tiny_vae, tmp_path, monkeypatch):
    """metrics.jsonl is rewritten every epoch; the figure (slow to draw) at checkpoints and at
    the end."""
    from catdog import viz

    drawn = []
    draw = viz.save_loss_curves
    monkeypatch.setattr(viz, "save_loss_curves", lambda p, rows, k, **kw: (
        drawn.append(len(rows)), draw(p, rows, k, **kw)))  # fmt: skip
    train(tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path, epochs=5, checkpoint_every=2))
    assert drawn == [2, 4, 5]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 5
    assert (tmp_path / "loss_curves.png").is_file()


def test_representation_alignment_caches_vgg_features_and_trains_a_projector(
    tiny_data, tiny_vae, vgg_weights, tmp_path
):
    kw = {"epochs": 2, "repa_weight": 0.5, "repa_layer": 15, "repa_hidden": 24,
          "vgg_weights": str(vgg_weights)}  # fmt: skip
    record = train(tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path / "a", **kw))
    assert 0 < record["loss_repa"] <= 2
    cached = torch.load(tmp_path / "a" / LATENTS, weights_only=True)
    assert cached["repa_layer"] == 15
    assert cached["features"].shape == (48, 256, 4, 4)  # relu3_3 at 16 px, rows as the latents
    images = load_folder(tiny_data, "train", 16).images
    vgg = load_vgg16_features(vgg_weights)
    with torch.no_grad():
        mirror = vgg_feature_map(vgg, to_float(images[5:6]).flip(-1), 15)
    torch.testing.assert_close(cached["features"][24 + 5].float(), mirror[0], atol=2e-2, rtol=1e-2)
    # The projector is trained and saved for resuming, never in the sampling checkpoint.
    state = checkpoint.load(tmp_path / "a" / STATE, checkpoint.KIND_DIFFUSION_TRAIN_STATE)
    assert state["projector"]["net.0.weight"].shape[:2] == (24, 16)  # hidden width, UNet middle
    final = checkpoint.load(tmp_path / "a" / FINAL, checkpoint.KIND_DIFFUSION)
    assert set(final["state_dict"]) == set(state["unet"])
    # Resuming is exact, as without REPA.
    train(tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path / "b", stop_at_epoch=1, **kw))
    train(tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path / "b", **kw), resume=True)
    resumed = checkpoint.load(tmp_path / "b" / FINAL, checkpoint.KIND_DIFFUSION)["state_dict"]
    assert all(torch.equal(v, resumed[k]) for k, v in final["state_dict"].items())
    # The alignment changes what the UNet learns: not the same weights as without it.
    plain = train(tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path / "c", epochs=2))
    assert "loss_repa" not in plain
    other = checkpoint.load(tmp_path / "c" / FINAL, checkpoint.KIND_DIFFUSION)["state_dict"]
    assert not all(torch.equal(v, other[k]) for k, v in final["state_dict"].items())
    # Bad settings are refused with one line.
    with pytest.raises(CatdogError, match="repa weight must be >= 0"):
        train(tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path / "d", epochs=1, repa_weight=-1))
    with pytest.raises(CatdogError, match="repa_layer must be in 0..30"):
        train(tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path / "e", **{**kw, "repa_layer": 31}))
    with pytest.raises(CatdogError, match="repa hidden width must be >= 1"):
        train(tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path / "f", **{**kw, "repa_hidden": 0}))


def test_a_run_saved_before_repa_existed_resumes_without_it(tiny_data, tiny_vae, tmp_path):
    """REPA is on by default now; a saved config without the field was trained without it."""
    assert DiffusionTrainConfig().repa_weight > 0
    train(tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path, epochs=2, stop_at_epoch=1))
    state = checkpoint.load(tmp_path / STATE, checkpoint.KIND_DIFFUSION_TRAIN_STATE)
    for key in ("repa_weight", "repa_layer", "vgg_weights"):
        del state["train_config"][key]
    del state["projector"]
    resave(tmp_path / STATE, checkpoint.KIND_DIFFUSION_TRAIN_STATE, state)
    record = train(tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path, epochs=2), resume=True)
    assert record["epoch"] == 2 and "loss_repa" not in record
    assert json.loads((tmp_path / "config.json").read_text())["repa_weight"] == 0.0


def test_a_repa_run_saved_before_the_projector_width_was_an_option_resumes_at_256(
    tiny_data, tiny_vae, vgg_weights, tmp_path
):
    """The projector was 256 wide before --repa-hidden existed; the default is narrower now."""
    assert DiffusionTrainConfig().repa_hidden != 256
    kw = {"epochs": 2, "repa_weight": 0.5, "repa_layer": 15, "vgg_weights": str(vgg_weights)}
    train(tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path, stop_at_epoch=1, repa_hidden=256, **kw))
    state = checkpoint.load(tmp_path / STATE, checkpoint.KIND_DIFFUSION_TRAIN_STATE)
    del state["train_config"]["repa_hidden"]
    resave(tmp_path / STATE, checkpoint.KIND_DIFFUSION_TRAIN_STATE, state)
    record = train(tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path, **kw), resume=True)
    assert record["epoch"] == 2 and "loss_repa" in record
    state = checkpoint.load(tmp_path / STATE, checkpoint.KIND_DIFFUSION_TRAIN_STATE)
    assert state["projector"]["net.0.weight"].shape[0] == 256
    assert json.loads((tmp_path / "config.json").read_text())["repa_hidden"] == 256


def test_self_conditioning_trains_samples_and_resumes(tiny_data, tiny_vae, tmp_path):
    cfg = tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path / "a", epochs=2)
    cfg.unet.self_condition = True
    train(cfg)
    unet, schedule, record = checkpoint.load_diffusion(tmp_path / "a" / FINAL)
    assert unet.cfg.self_condition and unet.stem.in_channels == 2 * unet.cfg.latent_channels
    assert record["train_config"]["unet"]["self_condition"] is True
    # The stem's weights on the estimate move only if non-zero estimates were fed in training.
    torch.manual_seed(cfg.seed)
    initial = UNet(unet.cfg).stem.weight[:, unet.cfg.latent_channels :]
    assert not torch.allclose(unet.stem.weight[:, unet.cfg.latent_channels :], initial)
    x = torch.randn(4, unet.cfg.latent_channels, unet.cfg.latent_size, unet.cfg.latent_size)
    t, y = torch.full((4,), 500), torch.tensor([0, 1, 0, 1])
    with torch.no_grad():  # None stands for zeros, the first sampling step's input
        torch.testing.assert_close(unet(x, t, y), unet(x, t, y, self_cond=torch.zeros_like(x)))
    history = [json.loads(r) for r in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["val_x0_mse"] > 0
    # Resuming gives the same weights as one straight run, the estimate's coin flips included.
    cfg_b = tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path / "b", epochs=2, stop_at_epoch=1)
    cfg_b.unet.self_condition = True
    train(cfg_b)
    train(tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path / "b", epochs=2), resume=True)
    a = checkpoint.load(tmp_path / "a" / FINAL, checkpoint.KIND_DIFFUSION)["state_dict"]
    b = checkpoint.load(tmp_path / "b" / FINAL, checkpoint.KIND_DIFFUSION)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_augmented_training_learns_its_labels_samples_and_resumes(
    tiny_data, tiny_vae, vgg_weights, tmp_path
):
    kw = {"epochs": 2, "augment_prob": 0.5}
    train(tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path / "a", **kw))
    unet, _, record = checkpoint.load_diffusion(tmp_path / "a" / FINAL)
    assert unet.cfg.augment_dim == augment.LABEL_DIM
    assert record["train_config"]["augment_prob"] == 0.5
    # The label's weights get gradients only from transformed samples: they moved, so some
    # were fed, with their labels.
    torch.manual_seed(0)
    initial = UNet(unet.cfg).augment_embedder.weight
    assert not torch.allclose(unet.augment_embedder.weight, initial)
    assert (tmp_path / "a" / "samples" / "epoch_0002.png").is_file()
    # Resuming gives the same weights as one straight run, the transforms included.
    train(tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path / "b", stop_at_epoch=1, **kw))
    train(tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path / "b", **kw), resume=True)
    a = checkpoint.load(tmp_path / "a" / FINAL, checkpoint.KIND_DIFFUSION)["state_dict"]
    b = checkpoint.load(tmp_path / "b" / FINAL, checkpoint.KIND_DIFFUSION)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The fp16 export keeps the label's weights (sampling never feeds it, but a reload must fit).
    diffusion_file = export_pair(tmp_path / "a" / FINAL, tmp_path / "shipped")[1]
    shipped, _, _ = checkpoint.load_diffusion(diffusion_file)
    assert shipped.cfg.augment_dim == augment.LABEL_DIM
    torch.testing.assert_close(shipped.augment_embedder.weight.float(),
                               unet.augment_embedder.weight, atol=1e-3, rtol=1e-3)  # fmt: skip
    # With representation alignment, the untransformed samples still train it.
    repa = {"repa_weight": 0.5, "repa_layer": 15, "vgg_weights": str(vgg_weights)}
    train(tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path / "c", **kw, **repa))
    history = [json.loads(r) for r in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["loss_repa"] > 0
    with pytest.raises(CatdogError, match=r"augment probability must be in \[0, 1\]"):
        train(tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path / "d", epochs=1, augment_prob=1.5))


def test_subclasses_cluster_the_training_images_and_sampling_draws_them(
    tiny_data, tiny_vae, vgg_weights, tmp_path, monkeypatch
):
    def cfg(name: str, k: int = 2, **kw):
        c = tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path / name, repa_layer=15,
                               vgg_weights=str(vgg_weights), guide_step=2, **kw)  # fmt: skip
        c.unet.subclasses = k
        return c

    loads = []  # the real loader, counted: the cache and the held-out labels share one VGG16

    def counted(*args, **kw):
        loads.append(args)
        return load_vgg16_features(*args, **kw)

    monkeypatch.setattr(train_diffusion, "load_vgg16_features", counted)
    record = train(cfg("a", epochs=2))
    assert record["val_x0_mse"] > 0  # held-out images get their nearest cluster's label
    assert len(loads) == 1
    cached = torch.load(tmp_path / "a" / LATENTS, weights_only=True)
    fine, labels = cached["subclass_labels"], cached["labels"]
    assert (fine // 2 == labels).all() and torch.equal(fine[:24], fine[24:])  # mirrors share
    assert "features" not in cached  # REPA is off: the features only made the clusters
    assert "subclass_prior" not in cached  # derived from the labels, not cached beside them
    prior = torch.stack([torch.bincount(fine[:24][labels[:24] == c] - 2 * c, minlength=2)
                         for c in (0, 1)]).float()  # fmt: skip
    prior /= prior.sum(1, keepdim=True)
    # The model and its guide carry the frequencies, and sampling draws sub-classes from them.
    final = tmp_path / "a" / FINAL
    unet, schedule, saved = checkpoint.load_diffusion(final)
    assert unet.null_label == 4
    assert torch.equal(unet.class_embedder.subclass_prior, prior)
    guide, _ = checkpoint.find_guide(final, saved)
    one_by_one = sample_latents(unet, schedule, torch.tensor([0, 1, 1]), [5, 6, 7], steps=3,
                                batch_size=1, guide=guide, guidance=2.0)  # fmt: skip
    batched = sample_latents(unet, schedule, torch.tensor([0, 1, 1]), [5, 6, 7], steps=3,
                             batch_size=3, guide=guide, guidance=2.0)  # fmt: skip
    torch.testing.assert_close(one_by_one, batched)
    # With all of the cat prior on sub-class 1 (then 0), a cat is sampled as that sub-class:
    # the UNet sees the sub-class label, and the noise is the seed's, as without sub-classes.
    noise = per_sample_noise((2, 8, 8), [torch.Generator().manual_seed(5)])
    per_subclass = []
    for k in (1, 0):
        unet.class_embedder.subclass_prior[0] = torch.eye(2)[k]
        direct = SAMPLERS["ddim"](unet, noise, schedule.spaced_timesteps(3),
                                  labels=torch.tensor([k]), schedule=schedule,
                                  null_label=unet.null_label, guidance=1.0)  # fmt: skip
        per_subclass.append(sample_latents(unet, schedule, torch.tensor([0]), [5], steps=3))
        torch.testing.assert_close(per_subclass[-1], direct)
    assert not torch.allclose(*per_subclass)
    # The shipped format keeps the frequencies (in fp16), for the model and its guide alike.
    shipped = export_pair(final, tmp_path / "shipped", data_dir=str(tiny_data))
    model, _, shipped_record = checkpoint.load_diffusion(shipped[1])
    torch.testing.assert_close(model.class_embedder.subclass_prior, prior, atol=1e-3, rtol=0)
    assert checkpoint.find_guide(shipped[1], shipped_record)[0] is not None
    # Resuming is exact, and a guide from other clusters does not belong with the model.
    train(cfg("b", epochs=2, stop_at_epoch=1))
    train(cfg("b", epochs=2), resume=True)
    resumed = checkpoint.load(tmp_path / "b" / FINAL, checkpoint.KIND_DIFFUSION)["state_dict"]
    assert all(torch.equal(v, resumed[k]) for k, v in saved["state_dict"].items())
    train(cfg("c", k=3, epochs=1))
    with pytest.raises(CatdogError, match="different sub-classes"):
        checkpoint.find_guide(final, saved, str(tmp_path / "c" / GUIDE))
    with pytest.raises(CatdogError, match="subclasses must be >= 1"):
        train(cfg("d", k=0, epochs=1))
