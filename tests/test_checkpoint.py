import pytest
import torch

from catdog import checkpoint
from catdog.config import VAEConfig
from catdog.errors import CatdogError
from catdog.generate import SHIPPED_TEACHER, decode_latents, sample_latents
from catdog.models.vae import VAE

TINY = VAEConfig(image_size=16, channels=(8, 16), latent_channels=2, norm_groups=4)


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    checkpoint.atomic_write_bytes(target, b"hello")
    assert target.read_bytes() == b"hello"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")

    def explode(f):
        f.write(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        checkpoint.atomic_write(target, explode)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_vae_saved_is_vae_loaded_output_for_output(tmp_path):
    torch.manual_seed(0)
    vae = VAE(TINY).eval()
    vae.set_latent_stats(torch.randn(10, 2, 8, 8) * 3)
    path = tmp_path / "vae.pt"
    checkpoint.save(path, checkpoint.KIND_VAE, checkpoint.vae_payload(vae, {"note": 1}, epoch=3))
    loaded, record = checkpoint.load_vae(path)
    assert record["epoch"] == 3 and record["train_config"] == {"note": 1}
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in vae.state_dict().items())
    vae.to(memory_format=checkpoint.INFERENCE_MEMORY_FORMAT)  # the same arithmetic as loaded
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(vae.encode(x)[0], loaded.encode(x)[0])
        assert torch.equal(vae.decode(vae.encode(x)[0]), loaded.decode(loaded.encode(x)[0]))
    assert torch.equal(loaded.latent_std, vae.latent_std) and bool(loaded.has_latent_stats)
    # Data, not code: loads with weights_only=True.
    assert torch.load(path, weights_only=True)["kind"] == checkpoint.KIND_VAE


def test_missing_corrupt_truncated_and_wrong_kind(tmp_path):
    with pytest.raises(CatdogError, match="not found"):
        checkpoint.load(tmp_path / "none.pt", checkpoint.KIND_VAE)
    with pytest.raises(CatdogError, match="is a folder; give the file itself"):
        checkpoint.load(tmp_path, checkpoint.KIND_VAE)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CatdogError, match="corrupt or truncated"):
        checkpoint.load(junk, checkpoint.KIND_VAE)
    good = tmp_path / "good.pt"
    checkpoint.save(good, checkpoint.KIND_VAE, checkpoint.vae_payload(VAE(TINY), {}))
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CatdogError, match="corrupt or truncated"):
        checkpoint.load(cut, checkpoint.KIND_VAE)
    with pytest.raises(CatdogError, match="is a VAE checkpoint, but a VAE training state"):
        checkpoint.load(good, checkpoint.KIND_VAE_TRAIN_STATE)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CatdogError, match="not a catdog checkpoint"):
        checkpoint.load(other, checkpoint.KIND_VAE)
    # Weights that do not fit their own config: one line naming the first mismatch.
    record = checkpoint.load(good, checkpoint.KIND_VAE)
    record["config"]["latent_channels"] += 1
    mismatched = tmp_path / "mismatched.pt"
    checkpoint.save(mismatched, checkpoint.KIND_VAE, record)
    with pytest.raises(CatdogError, match="does not match its own config") as caught:
        checkpoint.load_vae(mismatched)
    assert "\n" not in str(caught.value) and "size mismatch" in str(caught.value)


def test_loaded_networks_are_channels_last_and_draw_what_contiguous_ones_draw():
    unet, schedule, record = checkpoint.load_diffusion(SHIPPED_TEACHER)
    vae, _ = checkpoint.find_vae(SHIPPED_TEACHER, record)  # checks the VAE's hash: unchanged
    guide, _ = checkpoint.find_guide(SHIPPED_TEACHER, record)  # likewise the guide's
    kernels = [m.weight for net in (unet, vae, guide) for m in net.modules()
               if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]  # fmt: skip
    assert kernels
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in kernels)
    assert not any(w.is_contiguous() for w in kernels)

    def draw() -> torch.Tensor:
        z = sample_latents(unet, schedule, torch.tensor([0, 1]), [0, 1], sampler="dpmpp",
                           steps=4, guidance=2.0, guide=guide)  # fmt: skip
        return decode_latents(vae, z)

    nhwc = draw()
    for net in (unet, vae, guide):
        net.to(memory_format=torch.contiguous_format)
    assert torch.allclose(draw(), nhwc, atol=1e-3)  # the format is speed only


def test_fp16_files_refuse_weights_fp16_cannot_hold_and_foreign_files_are_named(tmp_path):
    payload = checkpoint.vae_payload(VAE(TINY), {})
    name = next(k for k, v in payload["state_dict"].items() if v.is_floating_point())
    for bad, message in ((7e4, "magnitude 7e\\+04, beyond fp16's 65504"),
                         (float("nan"), "inf or NaN")):  # fmt: skip
        payload["state_dict"][name].view(-1)[0] = bad
        path = tmp_path / "big.safetensors"
        with pytest.raises(CatdogError, match=f"{name} holds .*{message}"):
            checkpoint.save_safetensors(path, checkpoint.KIND_VAE, payload)
        assert not path.exists()
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CatdogError, match="is not a catdog checkpoint"):
        checkpoint.load(foreign, checkpoint.KIND_VAE)
    upper = tmp_path / "VAE.SAFETENSORS"  # the suffix in capitals is the same format
    checkpoint.save_safetensors(upper, checkpoint.KIND_VAE, checkpoint.vae_payload(VAE(TINY), {}))
    assert checkpoint.load_vae(upper)[1]["kind"] == checkpoint.KIND_VAE


def test_an_output_folder_that_is_a_file_is_named_as_such(tmp_path):
    taken = tmp_path / "README.md"
    taken.write_text("x")
    with pytest.raises(CatdogError, match="README.md is a file, and a folder is needed here"):
        checkpoint.check_writable(taken)
    with pytest.raises(CatdogError, match="is a file"):
        checkpoint.check_output_file(taken / "out.json")
    assert taken.read_text() == "x"
    with pytest.raises(CatdogError, match="cannot write to output folder .*README.md is a file"):
        checkpoint.check_writable(taken / "sub")
    checkpoint.check_writable(tmp_path / "new" / "deeper")  # creatable: fine, and not created
    assert not (tmp_path / "new").exists()
