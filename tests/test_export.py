"""The shipped-weights format: fp16 safetensors pairs that load, link and sample like the
training checkpoints they came from."""

import pytest
import torch

from catdog import checkpoint, visualize
from catdog.config import GenerateConfig
from catdog.errors import CatdogError
from catdog.export import DIFFUSION_FILE, GUIDE_FILE, VAE_FILE, export_pair
from catdog.generate import generate, sample_latents
from tests.conftest import assert_one_line_error, run_cli, run_cli_batch


@pytest.fixture(scope="module")
def exported(tiny_pair, tmp_path_factory):
    return export_pair(tiny_pair, tmp_path_factory.mktemp("shipped"))


def _images(model_path):
    unet, schedule, record = checkpoint.load_diffusion(model_path)
    vae, _ = checkpoint.find_vae(model_path, record)
    z = sample_latents(unet, schedule, torch.tensor([0, 1]), [3, 4], sampler="ddim", steps=5)
    with torch.no_grad():
        return vae.decode(vae.denormalize_latent(z))


def test_export_writes_fp16_safetensors_that_sample_like_the_original(tiny_pair, exported):
    vae_file, diffusion_file = exported
    assert (vae_file.name, diffusion_file.name) == (VAE_FILE, DIFFUSION_FILE)
    from safetensors import safe_open

    with safe_open(str(diffusion_file), framework="pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys() if not k.startswith("latent_map/")}  # noqa: SIM118
    assert dtypes == {torch.float16}
    original, shipped = _images(tiny_pair), _images(diffusion_file)
    assert (original - shipped).abs().mean() < 0.02  # fp16 rounding only


def test_exported_pair_keeps_its_link_and_refuses_another_vae(exported, tmp_path):
    vae_file, diffusion_file = exported
    record = checkpoint.load(diffusion_file, checkpoint.KIND_DIFFUSION)
    vae, found = checkpoint.find_vae(diffusion_file, record)
    assert found == vae_file
    payload = checkpoint.load(vae_file, checkpoint.KIND_VAE)
    payload["state_dict"]["latent_mean"] = payload["state_dict"]["latent_mean"] + 1
    other = tmp_path / "other.safetensors"
    checkpoint.save_safetensors(other, checkpoint.KIND_VAE, checkpoint.payload_of(payload))
    with pytest.raises(CatdogError, match="does not match"):
        checkpoint.find_vae(diffusion_file, record, str(other))
    result = run_cli("generate.py", "--model_path", str(vae_file), "--output", str(tmp_path))
    assert_one_line_error(result, "is a VAE checkpoint, but a diffusion checkpoint is needed")


def test_export_ships_a_decoder_finetune_in_place_of_the_recorded_vae(
    tiny_pair, tiny_decoder_ft, tmp_path
):
    vae_file, diffusion_file = export_pair(tiny_pair, tmp_path, vae_path=str(tiny_decoder_ft))
    shipped, _ = checkpoint.load_vae(vae_file)
    tuned, _ = checkpoint.load_vae(tiny_decoder_ft)
    for key, value in tuned.state_dict().items():  # the fine-tune, in fp16
        torch.testing.assert_close(shipped.state_dict()[key], value, atol=2e-3, rtol=2e-3)
    record = checkpoint.load(diffusion_file, checkpoint.KIND_DIFFUSION)
    assert record["vae"]["latent_sha256"] == checkpoint.latent_hash(shipped.state_dict())
    assert checkpoint.find_vae(diffusion_file, record)[1] == vae_file
    other = tmp_path / "other.pt"
    payload = checkpoint.load(tiny_decoder_ft, checkpoint.KIND_VAE)
    payload["state_dict"]["latent_std"] = payload["state_dict"]["latent_std"] * 2
    checkpoint.save(other, checkpoint.KIND_VAE, checkpoint.payload_of(payload))
    with pytest.raises(CatdogError, match="does not match"):
        export_pair(tiny_pair, tmp_path / "refused", vae_path=str(other))
    assert not (tmp_path / "refused").exists()


def test_denoising_path_uses_the_shipped_latent_map_where_no_images_are(exported, tmp_path,
                                                                        monkeypatch):  # fmt: skip
    import catdog.data

    def no_data(*args, **kwargs):
        raise CatdogError("data directory not found: ./data")

    monkeypatch.setattr(catdog.data, "load_split", no_data)
    written = visualize.make_figures(str(exported[1]), tmp_path / "fig", steps=4)
    names = sorted(p.name for p in written)
    assert names == ["denoising_cat.gif", "denoising_dog.gif", "denoising_path.png",
                     "samples_cat.png", "samples_dog.png"]  # fmt: skip
    assert all(p.stat().st_size > 0 for p in written)


def test_export_with_a_guide_ships_it_and_generation_uses_it(tiny_pair, tiny_guide, tmp_path):
    written = export_pair(tiny_pair, tmp_path / "shipped", guide_path=str(tiny_guide),
                          guidance=2.5)  # fmt: skip
    assert [p.name for p in written] == [VAE_FILE, DIFFUSION_FILE, GUIDE_FILE]
    diffusion_file = written[1]
    record = checkpoint.load(diffusion_file, checkpoint.KIND_DIFFUSION)
    guide, link = checkpoint.find_guide(diffusion_file, record)
    assert guide is not None and link["guidance"] == 2.5 and link["shipped"]
    original, _, _ = checkpoint.load_diffusion(tiny_guide)
    for name, value in original.state_dict().items():  # fp16 rounding only
        torch.testing.assert_close(guide.state_dict()[name], value, atol=2e-3, rtol=1e-2)
    kw = {"num_samples": 2, "steps": 3, "progress": False}
    by_default = generate(GenerateConfig(model_path=str(diffusion_file),
                                         output=str(tmp_path / "d"), **kw))  # fmt: skip
    explicit = generate(GenerateConfig(model_path=str(diffusion_file), guidance=2.5,
                                       guide_path=str(written[2]), output=str(tmp_path / "e"),
                                       **kw))  # fmt: skip
    assert [p.read_bytes() for p in by_default] == [p.read_bytes() for p in explicit]
    unguided = generate(
        GenerateConfig(
            model_path=str(diffusion_file),
            guidance=2.5,
            guide_path="none",
            output=str(tmp_path / "n"),
            **kw,
        )
    )
    assert [p.read_bytes() for p in by_default] != [p.read_bytes() for p in unguided]


def test_export_refuses_a_guide_that_does_not_belong(tiny_pair, tiny_vae, tmp_path):
    export = ("-m", "catdog", "export", "--model-path", str(tiny_pair), "--output")
    other_kind, unguided = run_cli_batch(
        (*export, str(tmp_path / "x"), "--guide-path", str(tiny_vae)),
        (*export, str(tmp_path / "y"), "--guidance", "3"),
    )
    assert_one_line_error(other_kind, "is a VAE checkpoint")
    assert_one_line_error(unguided, "a guidance scale is recorded with a guide")
    assert not (tmp_path / "y").exists()


def test_export_refuses_a_bad_scale_and_an_output_that_is_a_file(tiny_pair, tmp_path):
    for bad in (float("nan"), -3.0):
        with pytest.raises(CatdogError, match="--guidance must be a finite number >= 0"):
            export_pair(tiny_pair, tmp_path / "x", guidance=bad)
    assert not (tmp_path / "x").exists()
    taken = tmp_path / "notes.md"
    taken.write_text("x")
    with pytest.raises(CatdogError, match="notes.md is a file"):
        export_pair(tiny_pair, taken)
    assert taken.read_text() == "x"


def test_weights_beyond_fp16_leave_an_earlier_export_whole(tiny_pair, tmp_path):
    """The diffusion weights are checked before the VAE file (written first) is touched."""
    out = tmp_path / "weights"
    export_pair(tiny_pair, out)
    before = {p.name: (p.stat().st_ino, p.read_bytes()) for p in out.iterdir()}
    record = checkpoint.load(tiny_pair, checkpoint.KIND_DIFFUSION)
    name = next(k for k, v in record["state_dict"].items() if v.is_floating_point())
    record["state_dict"][name].view(-1)[0] = 1e5
    huge = tmp_path / "run" / tiny_pair.name
    huge.parent.mkdir()
    checkpoint.save(huge, checkpoint.KIND_DIFFUSION, checkpoint.payload_of(record))
    with pytest.raises(CatdogError, match=f"catdog_diffusion.safetensors in fp16: {name}"):
        export_pair(huge, out, vae_path=str(checkpoint.find_vae(tiny_pair, record)[1]))
    assert {p.name: (p.stat().st_ino, p.read_bytes()) for p in out.iterdir()} == before


def test_a_missing_data_folder_leaves_an_earlier_export_whole(tiny_pair, tmp_path):
    out = tmp_path / "weights"
    export_pair(tiny_pair, out)
    before = {p.name: (p.stat().st_ino, p.read_bytes()) for p in out.iterdir()}
    with pytest.raises(CatdogError, match="data directory not found"):
        export_pair(tiny_pair, out, data_dir=str(tmp_path / "moved"))
    # Not rewritten at all (an atomic write would give the file a new inode).
    assert {p.name: (p.stat().st_ino, p.read_bytes()) for p in out.iterdir()} == before


def test_export_ships_the_guide_training_recorded(tiny_data, tiny_vae, tmp_path):
    from catdog.train_diffusion import FINAL, train
    from tests.conftest import tiny_diffusion_cfg

    train(tiny_diffusion_cfg(tiny_data, tiny_vae, tmp_path / "run", epochs=2, guide_step=2))
    model = tmp_path / "run" / FINAL
    written = export_pair(model, tmp_path / "shipped")
    assert [p.name for p in written] == [VAE_FILE, DIFFUSION_FILE, GUIDE_FILE]
    record = checkpoint.load(written[1], checkpoint.KIND_DIFFUSION)
    assert record["guide"]["guidance"] == 3.0  # the training default, carried over
    assert checkpoint.find_guide(written[1], record)[0] is not None
    # The same guide named by its path is still the recorded one, with its tuned scale.
    named = export_pair(model, tmp_path / "named", guide_path=str(tmp_path / "run" / "guide.pt"))
    assert checkpoint.load(named[1], checkpoint.KIND_DIFFUSION)["guide"]["guidance"] == 3.0
    bare = export_pair(model, tmp_path / "bare", guide_path="none")
    assert [p.name for p in bare] == [VAE_FILE, DIFFUSION_FILE]
    assert "guide" not in checkpoint.load(bare[1], checkpoint.KIND_DIFFUSION)
