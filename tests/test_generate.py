import json

import numpy as np
import pytest
import torch
from PIL import Image

from catdog import checkpoint
from catdog.config import DEFAULT_GUIDANCE, GenerateConfig
from catdog.errors import CatdogError
from catdog.generate import generate, sample_latents
from catdog.models.vae import VAE
from tests.conftest import (
    assert_one_line_error,
    resave,
    run_cli,
    run_cli_batch,
    tiny_diffusion_cfg,
)


def cfg_for(pair, output, **kw):
    return GenerateConfig(model_path=str(pair), output=str(output), progress=False, **kw)


def test_generate_writes_a_grid_and_one_png_per_image(tiny_pair, tmp_path):
    paths = generate(cfg_for(tiny_pair, tmp_path, class_name="dog", num_samples=3, steps=5))
    assert [p.name for p in paths] == [
        "dog_grid.png",
        "dog_0000.png",
        "dog_0001.png",
        "dog_0002.png",
    ]
    for p in paths[1:]:
        with Image.open(p) as im:
            assert im.size == (16, 16) and im.mode == "RGB"
    with Image.open(paths[0]) as im:
        im.verify()


def test_same_seed_same_image_whatever_the_batch_size(tiny_pair, tmp_path):
    kw = dict(class_name="cat", num_samples=3, steps=4, sampler="ddim", eta=1.0, guidance=2.0)
    one = generate(cfg_for(tiny_pair, tmp_path / "one", batch_size=1, **kw))
    three = generate(cfg_for(tiny_pair, tmp_path / "three", batch_size=3, **kw))
    for a, b in zip(one[1:], three[1:], strict=True):
        assert a.read_bytes() == b.read_bytes()
    shifted = generate(cfg_for(tiny_pair, tmp_path / "shift", seed=1, **{**kw, "num_samples": 1}))
    assert shifted[1].read_bytes() == one[2].read_bytes()  # image i uses seed + i


def test_saved_model_is_loaded_model(tiny_pair):
    unet, schedule, record = checkpoint.load_diffusion(tiny_pair)
    again, _, _ = checkpoint.load_diffusion(tiny_pair)
    labels = torch.tensor([0, 1])
    a = sample_latents(unet, schedule, labels, [5, 6], steps=3, guidance=1.5)
    b = sample_latents(again, schedule, labels, [5, 6], steps=3, guidance=1.5)
    assert torch.equal(a, b)


def test_ddpm_sampler_runs_all_steps(tiny_pair, tmp_path):
    # Ancestral DDPM runs every one of the T steps whatever --steps says, so the step count
    # cannot change its images.
    kw = dict(sampler="ddpm", num_samples=1, guidance=1.0)
    few = generate(cfg_for(tiny_pair, tmp_path / "a", steps=3, **kw))
    many = generate(cfg_for(tiny_pair, tmp_path / "b", steps=20, **kw))
    assert len(few) == 2 and few[1].read_bytes() == many[1].read_bytes()
    ddim = generate(cfg_for(tiny_pair, tmp_path / "c", sampler="ddim", steps=3, eta=1.0,
                            num_samples=1, guidance=1.0))  # fmt: skip
    assert ddim[1].read_bytes() != few[1].read_bytes()  # 3 stochastic steps are another image


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"class_name": "horse"}, "valid classes: cat, dog"),
        ({"num_samples": 0}, "--num_samples must be at least 1"),
        ({"steps": 0}, "--steps must be at least 1"),
        ({"steps": 101}, "--steps must be in 1..100"),
        ({"sampler": "euler"}, "unknown sampler"),
        ({"guidance": float("nan")}, "--guidance must be a finite number >= 0, got nan"),
        ({"class_guidance": float("inf")}, "--class-guidance must be a finite number"),
        ({"eta": -1.0}, "--eta must be a finite number >= 0"),
        ({"seed": -1}, "--seed must be in 0..4294967286 for 10 images"),
        ({"seed": 2**32}, "--seed must be in 0.."),  # torch keeps 32 bits: it would repeat seed 0
        ({"eta": 0.5}, "--eta is DDIM's noise"),  # the default sampler is dpmpp
    ],
)
def test_bad_requests_are_clear_errors(tiny_pair, tmp_path, overrides, message):
    with pytest.raises(CatdogError, match=message):
        generate(cfg_for(tiny_pair, tmp_path / "out", **overrides))
    assert not (tmp_path / "out").exists()


def test_bad_checkpoints_are_clear_errors(tiny_pair, tiny_vae, tmp_path):
    with pytest.raises(CatdogError, match="not found"):
        generate(cfg_for(tmp_path / "missing.pt", tmp_path / "o"))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(tiny_pair.read_bytes()[:5000])
    with pytest.raises(CatdogError, match="corrupt or truncated"):
        generate(cfg_for(corrupt, tmp_path / "o"))
    with pytest.raises(CatdogError, match="is a VAE checkpoint, but a diffusion checkpoint"):
        generate(cfg_for(tiny_vae, tmp_path / "o"))
    vae, _ = checkpoint.load_vae(tiny_vae)
    other = tmp_path / "other_vae.pt"
    checkpoint.save(other, checkpoint.KIND_VAE, checkpoint.vae_payload(VAE(vae.cfg), {}))
    with pytest.raises(CatdogError, match="does not match diffusion checkpoint"):
        generate(cfg_for(tiny_pair, tmp_path / "o", vae_path=str(other)))
    assert not (tmp_path / "o").exists()


def test_a_decoder_finetune_of_its_vae_fits_the_model(tiny_pair, tiny_vae, tiny_decoder_ft,
                                                     tmp_path):  # fmt: skip
    _, _, record = checkpoint.load_diffusion(tiny_pair)
    assert record["vae"]["latent_sha256"] == checkpoint.latent_hash(
        checkpoint.load_vae(tiny_vae)[0].state_dict()
    )
    kw = dict(class_name="cat", num_samples=2, steps=3)
    plain = generate(cfg_for(tiny_pair, tmp_path / "plain", **kw))
    tuned = generate(cfg_for(tiny_pair, tmp_path / "tuned", vae_path=str(tiny_decoder_ft), **kw))
    assert plain[1].read_bytes() != tuned[1].read_bytes()  # same latents, another decoder
    # A link written before latent hashes: the fine-tune's own record names its source.
    legacy = dict(record, vae={k: v for k, v in record["vae"].items() if k != "latent_sha256"})
    vae, _ = checkpoint.find_vae(tiny_pair, legacy, str(tiny_decoder_ft))
    assert checkpoint.content_hash(vae.state_dict()) != legacy["vae"]["sha256"]
    # Any change on the encoder side breaks the fit, whatever the record claims.
    changed = checkpoint.load(tiny_decoder_ft, checkpoint.KIND_VAE)
    changed["state_dict"]["encoder.stem.weight"] = changed["state_dict"]["encoder.stem.weight"] + 1
    resave(tmp_path / "changed.pt", checkpoint.KIND_VAE, changed)
    for link_record in (record, legacy):
        with pytest.raises(CatdogError, match="does not match diffusion checkpoint"):
            checkpoint.find_vae(tiny_pair, link_record, str(tmp_path / "changed.pt"))


def test_unwritable_output_is_a_clear_error(tiny_pair, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("I am a file, not a folder")
    with pytest.raises(CatdogError, match="cannot write to output folder"):
        generate(cfg_for(tiny_pair, blocker / "sub"))


def test_moved_pair_finds_its_vae_beside_it(tiny_pair, tiny_vae, tmp_path):
    (tmp_path / tiny_vae.name).write_bytes(tiny_vae.read_bytes())
    moved = tmp_path / "model.pt"
    record = torch.load(tiny_pair, weights_only=True)
    record["vae"]["path"] = "/nonexistent/elsewhere/" + tiny_vae.name
    torch.save(record, moved)
    assert len(generate(cfg_for(moved, tmp_path / "o", num_samples=1, steps=2))) == 2
    (tmp_path / tiny_vae.name).unlink()
    with pytest.raises(CatdogError, match="pass it with --vae_path"):
        generate(cfg_for(moved, tmp_path / "o2", num_samples=1, steps=2))


def test_original_scripts_end_to_end(tiny_data, tmp_path):
    """main.py --mode vae, then --mode diffusion, then generate.py, as a user runs them: each
    stage in its own process. The diffusion stage is given no data folder: it trains on the one
    its VAE was trained on."""
    results = tmp_path / "results"
    vae = run_cli("main.py", "--mode", "vae", "--preset", "tiny", "--epochs", "1", "--lr", "1e-3",
                  "--lambda_vgg", "0", "--save_dir", str(results), "--data-dir", str(tiny_data),
                  "--no-progress")  # fmt: skip
    assert vae.returncode == 0, vae.stderr
    diffusion = run_cli("main.py", "--mode", "diffusion", "--preset", "tiny",
                        "--vae_path", str(results / "vae_gan_best.pt"), "--epochs", "2",
                        "--lr", "1e-3", "--save_dir", str(results), "--no-progress")  # fmt: skip
    assert diffusion.returncode == 0, diffusion.stderr
    saved = json.loads((results / "config.json").read_text())
    assert saved["data"]["data_dir"] == str(tiny_data)
    out = tmp_path / "samples"
    model = str(results / "conditional_diffusion_final.pt")
    gen = run_cli("generate.py", "--class_name", "cat", "--num_samples", "4", "--model_path",
                  model, "--steps", "5", "--output", str(out), "--no-progress")  # fmt: skip
    assert gen.returncode == 0, gen.stderr
    assert len(list(out.glob("cat_0*.png"))) == 4 and (out / "cat_grid.png").is_file()
    # The two refusals share one interpreter: each is still run as `python ARGS` runs it.
    bad, packaged = run_cli_batch(
        ("generate.py", "--class_name", "horse", "--model_path", model),
        ("-m", "catdog", "generate", "--class-name", "dog", "--num-samples", "0",
         "--model-path", model),
    )  # fmt: skip
    assert_one_line_error(bad, "unknown class 'horse'", "cat, dog")
    assert_one_line_error(packaged, "--num_samples must be at least 1")


def _images(paths):
    return torch.stack([torch.from_numpy(np.array(Image.open(p))).float() for p in paths[1:]])


def test_a_guide_model_changes_the_samples_and_none_is_classifier_free(tiny_pair, tiny_guide,
                                                                       tmp_path):  # fmt: skip
    kw = {"num_samples": 2, "steps": 4, "guidance": 3.0}
    auto = _images(generate(cfg_for(tiny_pair, tmp_path / "a", guide_path=str(tiny_guide), **kw)))
    cfg_default = _images(generate(cfg_for(tiny_pair, tmp_path / "c", **kw)))
    cfg_none = _images(generate(cfg_for(tiny_pair, tmp_path / "n", guide_path="none", **kw)))
    assert torch.equal(cfg_default, cfg_none)  # no guide recorded with tiny_pair: CFG either way
    assert not torch.equal(auto, cfg_none)


def test_a_guide_narrower_than_the_model_is_accepted_and_used(tiny_data, tiny_vae, tiny_pair,
                                                              tmp_path):  # fmt: skip
    # A guide need only share the VAE, schedule, latent shape and classes: a smaller UNet (the
    # faster option in docs/design.md, "A smaller guide") works as one.
    from catdog.train_diffusion import FINAL, train

    cfg = tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path / "narrow", epochs=1, seed=1)
    cfg.unet.channels = (4, 8)
    train(cfg)
    narrow = tmp_path / "narrow" / FINAL
    unet, schedule, record = checkpoint.load_diffusion(str(tiny_pair))
    guide, link = checkpoint.find_guide(tiny_pair, record, str(narrow))
    assert guide.cfg.channels != unet.cfg.channels and link == {"file": str(narrow)}
    latents = {w: sample_latents(unet, schedule, torch.tensor([0, 1]), [0, 1], steps=4,
                                 guidance=w, guide=guide)
               for w in (1.0, 3.0)}  # fmt: skip
    assert not torch.allclose(latents[1.0], latents[3.0])
    paths = generate(cfg_for(tiny_pair, tmp_path / "g", guide_path=str(narrow), num_samples=2,
                             steps=4, guidance=3.0))  # fmt: skip
    assert _images(paths).shape == (2, 16, 16, 3)


def test_class_guidance_changes_autoguided_samples_and_needs_a_guide(tiny_pair, tiny_guide,
                                                                     tmp_path):  # fmt: skip
    kw = {"num_samples": 2, "steps": 4, "guidance": 3.0, "guide_path": str(tiny_guide)}
    auto = _images(generate(cfg_for(tiny_pair, tmp_path / "a", **kw)))
    one = _images(generate(cfg_for(tiny_pair, tmp_path / "o", class_guidance=1.0, **kw)))
    assert torch.equal(one, auto)
    pushed = generate(cfg_for(tiny_pair, tmp_path / "p", class_guidance=3.0, **kw))
    assert len(pushed) == 3
    # The tiny model's labels barely move its images' pixels, so compare latents.
    unet, schedule, _ = checkpoint.load_diffusion(str(tiny_pair))
    guide, _, _ = checkpoint.load_diffusion(str(tiny_guide))
    latents = {w: sample_latents(unet, schedule, torch.tensor([0, 1]), [0, 1], steps=4,
                                 guidance=3.0, guide=guide, class_guidance=w)
               for w in (1.0, 3.0)}  # fmt: skip
    assert not torch.allclose(latents[1.0], latents[3.0])
    with pytest.raises(CatdogError, match="no guide"):
        generate(cfg_for(tiny_pair, tmp_path / "n", guide_path="none", class_guidance=3.0))
    with pytest.raises(CatdogError, match="--class-guidance must be a finite number >= 0"):
        generate(cfg_for(tiny_pair, tmp_path / "m", class_guidance=-1.0, **kw))
    assert not (tmp_path / "n").exists() and not (tmp_path / "m").exists()


def test_find_guide_checks_that_the_guide_belongs_with_the_model(tiny_pair, tiny_guide, tiny_vae,
                                                                 tmp_path):  # fmt: skip
    record = checkpoint.load(tiny_pair, checkpoint.KIND_DIFFUSION)
    guide, link = checkpoint.find_guide(tiny_pair, record, str(tiny_guide))
    assert guide is not None and not guide.training and link == {"file": str(tiny_guide)}
    assert checkpoint.resolve_guidance(None, link) == DEFAULT_GUIDANCE
    assert checkpoint.resolve_guidance(1.5, {"guidance": 3.0}) == 1.5
    assert checkpoint.resolve_guidance(None, {"guidance": 3.0}) == 3.0
    assert checkpoint.find_guide(tiny_pair, record, "none") == (None, {})
    assert checkpoint.find_guide(tiny_pair, record) == (None, {})  # none recorded
    with pytest.raises(CatdogError, match="guide model not found"):
        checkpoint.find_guide(tiny_pair, record, str(tmp_path / "missing.pt"))
    with pytest.raises(CatdogError, match="is a VAE checkpoint"):
        checkpoint.find_guide(tiny_pair, record, str(tiny_vae))
    guide_record = checkpoint.load(tiny_guide, checkpoint.KIND_DIFFUSION)
    for field, change, message in (
        ("vae", {"sha256": "0" * 64, "latent_sha256": "0" * 64}, "different VAE"),
        ("schedule_config", {"num_timesteps": 50}, "different noise schedule"),
    ):
        other = tmp_path / f"other_{field}.pt"
        resave(other, checkpoint.KIND_DIFFUSION,
               {**guide_record, field: {**guide_record[field], **change}})  # fmt: skip
        with pytest.raises(CatdogError, match=message):
            checkpoint.find_guide(tiny_pair, record, str(other))
    # A guide trained on a decoder fine-tune of the same VAE shares its latent space.
    tuned = tmp_path / "tuned_decoder_guide.pt"
    resave(tuned, checkpoint.KIND_DIFFUSION,
           {**guide_record, "vae": {**guide_record["vae"], "sha256": "1" * 64}})  # fmt: skip
    assert checkpoint.find_guide(tiny_pair, record, str(tuned))[0] is not None


def test_recorded_guide_is_used_by_default_and_checked(tiny_pair, tiny_guide, tmp_path):
    payload = checkpoint.load(tiny_pair, checkpoint.KIND_DIFFUSION)
    guide, _, _ = checkpoint.load_diffusion(tiny_guide)
    payload["guide"] = {"path": str(tiny_guide), "guidance": 3.0,
                        "sha256": checkpoint.content_hash(guide.state_dict())}  # fmt: skip
    linked = tmp_path / "linked.pt"
    resave(linked, checkpoint.KIND_DIFFUSION, payload)
    kw = {"num_samples": 2, "steps": 4}
    default = _images(generate(cfg_for(linked, tmp_path / "d", **kw)))
    explicit = _images(generate(cfg_for(tiny_pair, tmp_path / "e", guidance=3.0,
                                        guide_path=str(tiny_guide), **kw)))  # fmt: skip
    assert torch.equal(default, explicit)  # the recorded guide, at the recorded scale
    payload["guide"]["sha256"] = "0" * 64
    resave(linked, checkpoint.KIND_DIFFUSION, payload)
    with pytest.raises(CatdogError, match="is not the one recorded"):
        generate(cfg_for(linked, tmp_path / "x", **kw))


def test_guide_flag_on_the_original_script(tiny_pair, tiny_guide, tiny_vae, tmp_path):
    script = ("generate.py", "--model_path", str(tiny_pair))
    # One interpreter for all three commands, each run as `python ARGS...` would run it.
    ok, bad, no_guide = run_cli_batch(
        (*script, "--guide_path", str(tiny_guide), "--num_samples", "2", "--steps", "3",
         "--output", str(tmp_path / "ok")),
        (*script, "--guide_path", str(tiny_vae), "--output", str(tmp_path / "bad")),
        (*script, "--guide_path", "none", "--class_guidance", "3", "--output",
         str(tmp_path / "ng")),
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert len(list((tmp_path / "ok").glob("cat_*.png"))) == 3
    assert_one_line_error(bad, "is a VAE checkpoint")
    assert not (tmp_path / "bad").exists()
    assert_one_line_error(no_guide, "--class-guidance adds a classifier-free term")
    assert not (tmp_path / "ng").exists()


def test_decoding_runs_on_the_vae_device_whatever_the_latents_device():
    """A VAE on another device (here "meta", which computes shapes only; CUDA in use) decodes
    CPU latents there: the only failure left is the copy back of meta's data-less result."""
    from catdog.config import VAEConfig
    from catdog.generate import decode_latents

    vae = VAE(VAEConfig(image_size=16, channels=(8, 16), latent_channels=2, norm_groups=4))
    with pytest.raises(NotImplementedError, match="Cannot copy out of meta tensor"):
        decode_latents(vae.to("meta"), torch.zeros(3, 2, 8, 8))
