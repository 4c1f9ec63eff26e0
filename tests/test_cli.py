"""The command line as a user runs it: flags, end-to-end smoke test, and one-line errors."""

import argparse
import json

import pytest
from PIL import Image

from catdog import checkpoint
from catdog.cli import add_diffusion_train_args, diffusion_config_from_args
from catdog.errors import CatdogError
from tests.conftest import assert_one_line_error, run_cli, run_cli_batch, write_image_folder

TINY = ["--preset", "tiny", "--no-progress"]


def test_help_lists_flags_with_defaults():
    result, original = run_cli_batch(
        ("-m", "catdog", "train-vae", "--help"), ("main.py", "--mode", "vae", "--help")
    )
    assert result.returncode == 0
    for text in (
        "--lambda-vgg",
        "--kl-start",
        "--adv-ramp",
        "--resume",
        "--save-dir",
        "(default: 80)",
    ):
        assert text in result.stdout, text
    assert (
        original.returncode == 0
        and "--mode" in original.stdout
        and "--lambda_vgg" in original.stdout
    )


def test_original_main_py_trains_a_vae_end_to_end(tiny_data, vgg_weights, tmp_path):
    save_dir = tmp_path / "results"
    result = run_cli(
        "main.py", "--mode", "vae", "--epochs", "2", "--lr", "1e-3", "--lambda_vgg", "0.8",
        "--save_dir", str(save_dir), "--data-dir", str(tiny_data),
        "--vgg-weights", str(vgg_weights),
        "--adv-start", "1", *TINY,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "val_psnr" in result.stdout
    cfg = json.loads((save_dir / "config.json").read_text())
    assert cfg["lr"] == 1e-3 and cfg["losses"]["vgg"]["weight"] == 0.8 and cfg["epochs"] == 2
    for name in ("vae_gan_best.pt", "vae_gan_final.pt", "vae_train_state.pt"):
        assert (save_dir / name).is_file()
    for picture in ("loss_curves.png", "reconstructions/epoch_0002.png", "tsne/epoch_0002.png"):
        with Image.open(save_dir / picture) as im:
            assert im.size[0] > 16
    history = [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 2 and "loss_vgg" in history[0] and "loss_adv" in history[1]


def test_packaged_cli_resume_continues_and_extends_a_run(tiny_data, tmp_path):
    base = ["-m", "catdog", "train-vae", *TINY, "--data-dir", str(tiny_data), "--lambda-vgg", "0",
            "--save-dir", str(tmp_path)]  # fmt: skip
    final = tmp_path / "vae_gan_final.pt"
    stopped, result = run_cli_batch(
        (*base, "--epochs", "2", "--stop-at-epoch", "1"),
        # The same command plus --resume finishes the run's own 2 epochs, not the preset's 80.
        (*base, "--resume"),
    )
    assert stopped.returncode == 0, stopped.stderr
    assert result.returncode == 0, result.stderr
    assert checkpoint.load(final, checkpoint.KIND_VAE)["epoch"] == 2
    # A setting the run was not trained with is refused in one line, and nothing changes.
    before = final.read_bytes()
    assert_one_line_error(run_cli(*base, "--epochs", "3", "--lr", "5e-3", "--resume"),
                          "lr 0.005 (the run's: 0.001)")  # fmt: skip
    assert final.read_bytes() == before
    result = run_cli(*base, "--epochs", "3", "--resume")
    assert result.returncode == 0, result.stderr
    assert checkpoint.load(final, checkpoint.KIND_VAE)["epoch"] == 3


def test_missing_data_directory(tmp_path):
    result = run_cli("-m", "catdog", "train-vae", *TINY, "--data-dir", str(tmp_path / "nothing"),
                     "--save-dir", str(tmp_path / "r"))  # fmt: skip
    assert_one_line_error(result, "data directory not found")


def test_folder_without_cat_and_dog(tmp_path):
    (tmp_path / "data" / "horses").mkdir(parents=True)
    result = run_cli("main.py", "--mode", "vae", *TINY, "--data-dir", str(tmp_path / "data"),
                     "--save_dir", str(tmp_path / "r"))  # fmt: skip
    assert_one_line_error(result, "no cat/ and dog/")


def test_unreadable_image_is_named_and_skipped(tmp_path):
    data = write_image_folder(tmp_path / "data", {"train": 6, "test": 4}, size=16)
    (data / "train" / "dog" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = run_cli("-m", "catdog", "train-vae", *TINY, "--data-dir", str(data), "--epochs", "1",
                     "--lambda-vgg", "0", "--save-dir", str(tmp_path / "r"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "corrupt.png" in result.stderr and "Traceback" not in result.stderr


def test_stl10_absent_offline(tmp_path):
    result = run_cli("-m", "catdog", "train-vae", *TINY, "--dataset", "stl10", "--no-download",
                     "--data-dir", str(tmp_path / "stl"),
                     "--save-dir", str(tmp_path / "r"))  # fmt: skip
    assert_one_line_error(result, "STL-10", "--data-dir")


def test_vgg_weights_unavailable(tiny_data, tmp_path):
    result = run_cli("-m", "catdog", "train-vae", *TINY, "--data-dir", str(tiny_data),
                     "--vgg-weights", str(tmp_path / "no_vgg.pth"),
                     "--save-dir", str(tmp_path / "r"))  # fmt: skip
    assert_one_line_error(result, "VGG16 weights file not found")


def test_repa_without_vgg_weights_is_one_line_and_writes_nothing(tiny_data, tiny_vae, tmp_path):
    result = run_cli("-m", "catdog", "train-diffusion", *TINY, "--vae-path", str(tiny_vae),
                     "--data-dir", str(tiny_data), "--repa-weight", "0.5",
                     "--vgg-weights", str(tmp_path / "no_vgg.pth"),
                     "--save-dir", str(tmp_path / "r"))  # fmt: skip
    assert_one_line_error(result, "VGG16 weights file not found")
    assert not (tmp_path / "r" / "latents.pt").exists()  # no half-built cache


def test_missing_and_corrupt_checkpoints_on_resume(tiny_data, tmp_path):
    base = ["-m", "catdog", "train-vae", *TINY, "--data-dir", str(tiny_data), "--lambda-vgg", "0",
            "--resume"]  # fmt: skip
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "vae_train_state.pt").write_bytes(b"PK\x03\x04 truncated zip")
    wrong = tmp_path / "wrong"
    checkpoint.save(wrong / "vae_train_state.pt", checkpoint.KIND_VAE, {"state_dict": {}})
    none, corrupt, other_kind = run_cli_batch(
        *((*base, "--save-dir", str(folder)) for folder in (tmp_path / "none", bad, wrong))
    )
    assert_one_line_error(none, "nothing to resume")
    assert_one_line_error(corrupt, "corrupt or truncated")
    assert_one_line_error(other_kind, "is a VAE checkpoint")
    assert (bad / "vae_train_state.pt").read_bytes() == b"PK\x03\x04 truncated zip"  # nothing lost


def test_bad_option_values(tiny_data, tmp_path):
    base = [
        "-m",
        "catdog",
        "train-vae",
        *TINY,
        "--data-dir",
        str(tiny_data),
        "--save-dir",
        str(tmp_path),
    ]
    epochs, channels, size = run_cli_batch(
        (*base, "--epochs", "0"), (*base, "--channels", "8,x"), (*base, "--image-size", "15")
    )
    assert_one_line_error(epochs, "--epochs must be positive")
    assert_one_line_error(channels, "--channels")
    assert_one_line_error(size, "not divisible")
    # The rest in process: each would crash or mislead deep in training.
    from catdog.cli import add_vae_train_args, vae_config_from_args

    parser = argparse.ArgumentParser()
    add_vae_train_args(parser)
    for flags, message in (
        (["--color-jitter", "1.5"], r"--color-jitter must be in \[0, 1\), got 1.5"),
        (["--color-jitter", "-0.1"], r"--color-jitter must be in \[0, 1\)"),
        (["--val-limit", "1"], "--val-limit must be 0 .all. or at least 2"),
        (["--lr-scaling", "sqrt", "--lr-base-batch", "-32"], "--lr-base-batch must be positive"),
        (["--max-minutes", "-1"], "--max-minutes must be positive"),
        (["--stop-at-epoch", "0"], "--stop-at-epoch must be at least 1"),
        (["--image-size", "0"], "--image-size must be positive"),
    ):
        with pytest.raises(CatdogError, match=message):
            vae_config_from_args(parser.parse_args(flags))
    assert vae_config_from_args(parser.parse_args(["--val-limit", "0"])).data.val_limit == 0


def test_finetune_decoder_takes_the_decoder_preset(tiny_data, tiny_vae, tmp_path):
    base = ["main.py", "--mode", "vae", "--finetune_decoder", str(tiny_vae), "--no-progress",
            "--data-dir", str(tiny_data), "--lambda-vgg", "0", "--batch-size", "8"]  # fmt: skip
    # One interpreter for all four commands, each run as `python ARGS...` would run it.
    result, bad, align, missing = run_cli_batch(
        (*base, "--epochs", "1", "--save_dir", str(tmp_path / "ft")),
        (*base, "--latent-noise", "-1", "--save_dir", str(tmp_path / "bad")),
        (*base, "--lambda-align", "0.5", "--save_dir", str(tmp_path / "align")),
        (*base[:4], str(tmp_path / "none.pt"), *base[5:], "--save_dir", str(tmp_path / "missing")),
    )
    assert result.returncode == 0, result.stderr
    cfg = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert (cfg["lr"], cfg["lr_schedule"], cfg["latent_noise"]) == (1e-4, "constant", 0.1)
    assert cfg["losses"]["adv"]["weight"] == 0 and cfg["finetune_decoder"] == str(tiny_vae)
    assert cfg["model"]["image_size"] == 16  # the source VAE's architecture, not the preset's
    record = checkpoint.load(tmp_path / "ft" / "vae_gan_final.pt", checkpoint.KIND_VAE)
    assert record["decoder_of"]["sha256"] == checkpoint.content_hash(
        checkpoint.load_vae(tiny_vae)[0].state_dict()
    )
    assert_one_line_error(bad, "--latent-noise must be 0 or more")
    assert_one_line_error(align, "decoder fine-tuning keeps the encoder fixed")
    assert not (tmp_path / "align").exists()
    assert_one_line_error(missing, "checkpoint not found")


def test_init_from_and_equiv_flags_reach_the_run(tiny_data, tiny_vae, tmp_path):
    base = ["main.py", "--mode", "vae", "--init_from", str(tiny_vae), "--no-progress",
            "--data-dir", str(tiny_data), "--lambda-vgg", "0", "--batch-size", "8",
            "--epochs", "1"]  # fmt: skip
    # One interpreter for all three commands, each run as `python ARGS...` would run it.
    result, both, missing = run_cli_batch(
        (*base, "--lambda_equiv", "0.5", "--save_dir", str(tmp_path / "eq")),
        (*base, "--finetune-decoder", str(tiny_vae), "--save_dir", str(tmp_path / "x")),
        (*base[:4], str(tmp_path / "none.pt"), *base[5:], "--save_dir", str(tmp_path / "missing")),
    )
    assert result.returncode == 0, result.stderr
    cfg = json.loads((tmp_path / "eq" / "config.json").read_text())
    assert cfg["init_from"] == str(tiny_vae) and cfg["losses"]["equiv"]["weight"] == 0.5
    assert cfg["model"]["image_size"] == 16  # the source VAE's architecture, not the preset's
    history = [json.loads(line) for line in (tmp_path / "eq" / "metrics.jsonl").open()]
    assert history[0]["w_equiv"] == 0.5 and history[0]["loss_equiv"] > 0
    assert_one_line_error(both, "exclusive")
    assert_one_line_error(missing, "checkpoint not found")
    assert not (tmp_path / "x").exists() and not (tmp_path / "missing").exists()


def test_diffusion_flags_reach_the_config():
    parser = argparse.ArgumentParser()
    add_diffusion_train_args(parser)
    flags = ["--crop-copies", "3", "--crop-min-scale", "0.9", "--dropout", "0.2",
             "--schedule", "linear", "--objective", "eps", "--repa_weight", "0.5",
             "--repa-layer", "15", "--repa_hidden", "128", "--vgg-weights", "vgg.pth",
             "--logsnr-shift", "-0.7", "--self-condition", "--augment-prob", "0.3",
             "--subclasses", "4"]  # fmt: skip
    cfg = diffusion_config_from_args(parser.parse_args(flags))
    assert (cfg.repa_weight, cfg.repa_layer, cfg.vgg_weights) == (0.5, 15, "vgg.pth")
    assert cfg.repa_hidden == 128
    assert (cfg.crop_copies, cfg.crop_min_scale, cfg.unet.dropout) == (3, 0.9, 0.2)
    assert (cfg.schedule.kind, cfg.schedule.objective) == ("linear", "eps")
    assert cfg.schedule.logsnr_shift == -0.7 and cfg.unet.self_condition is True
    assert cfg.augment_prob == 0.3 and cfg.unet.subclasses == 4
    default = diffusion_config_from_args(parser.parse_args([]))
    assert (default.crop_copies, default.unet.dropout, default.repa_weight) == (0, 0.0, 0.5)
    assert default.unet.self_condition is False and default.augment_prob == 0.0
    assert default.unet.subclasses == 1
    with pytest.raises(CatdogError, match="--logsnr-shift must be a finite number"):
        diffusion_config_from_args(parser.parse_args(["--logsnr-shift", "nan"]))
    with pytest.raises(CatdogError, match=r"--ema-decay must be in \[0, 1\), got 1.0"):
        diffusion_config_from_args(parser.parse_args(["--ema-decay", "1"]))
    with pytest.raises(CatdogError, match="--lr-base-batch must be positive, got 0"):
        diffusion_config_from_args(parser.parse_args(["--lr-base-batch", "0"]))
    with pytest.raises(CatdogError, match="--objective eps with --schedule cosine"):
        diffusion_config_from_args(parser.parse_args(["--objective", "eps"]))  # cosine: default


def test_select_flags_reach_generate_and_evaluate():
    from catdog.cli import build_parser, evaluate_config_from_args, generate_config_from_args

    flags = ["--select", "4", "--selector-path", "sel.safetensors", "--vgg_weights", "vgg.pth"]
    for command, to_config in (("generate", generate_config_from_args),
                               ("evaluate", evaluate_config_from_args)):  # fmt: skip
        cfg = to_config(build_parser().parse_args([command, *flags]))
        assert (cfg.select, cfg.selector_path, cfg.vgg_weights) == (4, "sel.safetensors", "vgg.pth")
        default = to_config(build_parser().parse_args([command]))
        assert (default.select, default.selector_path, default.vgg_weights) == (1, None, None)


def test_a_new_diffusion_run_without_data_flags_takes_the_vae_runs_data(tiny_vae, tmp_path, capsys):
    from catdog.cli import _data_of_vae_run

    parser = argparse.ArgumentParser()
    add_diffusion_train_args(parser)
    recorded = checkpoint.load(tiny_vae, checkpoint.KIND_VAE)["train_config"]["data"]["data_dir"]

    def data_of(*flags):
        args = parser.parse_args(["--vae-path", str(tiny_vae), *flags])
        cfg = diffusion_config_from_args(args)
        _data_of_vae_run(args, cfg)
        return cfg.data.data_dir, cfg.data.dataset

    assert data_of() == (recorded, "auto")
    assert recorded in capsys.readouterr().err  # said, not silent
    assert data_of("--dataset", "stl10") == ("./data", "stl10")  # a data flag: the user's
    assert data_of("--data-dir", str(tmp_path)) == (str(tmp_path), "auto")
    assert data_of("--resume") == ("./data", "auto")  # a resumed run keeps its own
    missing = tmp_path / "v.pt"  # a VAE whose folder is gone: the default
    record = checkpoint.load(tiny_vae, checkpoint.KIND_VAE)
    record["train_config"]["data"]["data_dir"] = str(tmp_path / "gone")
    checkpoint.save(missing, checkpoint.KIND_VAE, checkpoint.payload_of(record))
    args = parser.parse_args(["--vae-path", str(missing)])
    cfg = diffusion_config_from_args(args)
    _data_of_vae_run(args, cfg)
    assert cfg.data.data_dir == "./data"


def test_model_and_optimiser_values_that_would_crash_or_be_ignored_are_refused():
    # Each of these was accepted: a negative --lr or --disc-lr crashed in AdamW with a traceback
    # (the diffusion run after writing its latent cache), a width or latent of 0 crashed in the
    # first forward pass after config.json was written, and a negative block count or min-SNR
    # gamma, or an attention level the UNet does not have, was silently the same as none.
    from catdog.cli import add_vae_train_args, vae_config_from_args

    vae_parser = argparse.ArgumentParser()
    add_vae_train_args(vae_parser)
    for flags, message in (
        (["--disc-lr", "-1"], "--disc-lr must be positive, got -1"),
        (["--latent-channels", "0"], "--latent-channels must be at least 1, got 0"),
        (["--channels", "0,16"], r"--channels must be positive integers, got \(0, 16\)"),
        (["--blocks-per-level", "-1"], "--blocks-per-level must be 0 or more, got -1"),
    ):
        with pytest.raises(CatdogError, match=message):
            vae_config_from_args(vae_parser.parse_args(flags))
    diffusion_parser = argparse.ArgumentParser()
    add_diffusion_train_args(diffusion_parser)
    for flags, message in (
        (["--lr", "-1"], "--lr must be positive, got -1"),
        (["--lr", "0"], "--lr must be positive, got 0"),
        (["--channels", "0,16"], r"--channels must be positive integers, got \(0, 16\)"),
        (["--blocks-per-level", "0"], "--blocks-per-level must be at least 1, got 0"),
        (["--attention-levels", "2"], r"--attention-levels must be in 0\.\.1 .* got \(2,\)"),
        (["--attention-levels", "-1"], r"--attention-levels must be in 0\.\.1"),
        (["--min-snr-gamma", "-1"], "--min-snr-gamma must be 0 .off. or more, got -1"),
    ):
        with pytest.raises(CatdogError, match=message):
            diffusion_config_from_args(diffusion_parser.parse_args(flags))
    cfg = diffusion_config_from_args(diffusion_parser.parse_args(["--attention-levels", "0,1"]))
    assert cfg.unet.attention_levels == (0, 1)


def test_lr_base_batch_help_shows_each_stages_default():
    from catdog.cli import add_vae_train_args, vae_config_from_args

    stages = ((add_vae_train_args, vae_config_from_args),
              (add_diffusion_train_args, diffusion_config_from_args))  # fmt: skip
    for add_args, to_config in stages:
        parser = argparse.ArgumentParser()
        add_args(parser)
        (action,) = [a for a in parser._actions if "--lr-base-batch" in a.option_strings]
        default = to_config(parser.parse_args([])).runtime.lr_base_batch
        assert action.help.endswith(f"(default: {default})"), (action.help, default)
