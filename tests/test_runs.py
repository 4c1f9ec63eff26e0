"""Starting and resuming run folders: which settings a resumed run takes from the command line."""

from dataclasses import replace

import pytest

from catdog.config import DiffusionTrainConfig, RuntimeConfig, VAETrainConfig
from catdog.errors import CatdogError
from catdog.runs import resumed_config

SAVED = DiffusionTrainConfig(
    vae_path="old/vae.pt", epochs=300, cooldown_epochs=50, lr=1e-3, save_dir="old_run"
)


def test_a_whole_config_from_python_sets_every_run_control_field():
    cfg = replace(DiffusionTrainConfig(), epochs=700, cooldown_epochs=0, lr=5e-3, save_dir="here")
    resumed = resumed_config(SAVED, cfg, given=None)
    assert (resumed.epochs, resumed.cooldown_epochs, resumed.save_dir) == (700, 0, "here")
    assert resumed.lr == 1e-3 and resumed.vae_path == "old/vae.pt"  # the rest is the saved run


def test_a_plain_resume_keeps_the_saved_schedule_not_the_presets():
    cfg = replace(DiffusionTrainConfig(), save_dir="moved", max_minutes=5.0, progress=False,
                  runtime=RuntimeConfig(device="cpu"))  # fmt: skip
    given = {"save_dir": "moved", "max_minutes": 5.0, "progress": False,
             "runtime": {"device": "cpu"}}  # fmt: skip
    resumed = resumed_config(SAVED, cfg, given)
    assert cfg.epochs != 300 and cfg.cooldown_epochs != 50  # what the preset would have said
    assert (resumed.epochs, resumed.cooldown_epochs) == (300, 50)
    assert (resumed.save_dir, resumed.max_minutes, resumed.progress) == ("moved", 5.0, False)
    assert resumed.runtime.device == "cpu"


def test_given_epochs_and_cooldown_extend_the_run():
    cfg = replace(DiffusionTrainConfig(), epochs=600, cooldown_epochs=100)
    resumed = resumed_config(SAVED, cfg, {"epochs": 600, "cooldown_epochs": 100})
    assert (resumed.epochs, resumed.cooldown_epochs) == (600, 100)


def test_a_changed_setting_is_refused_not_dropped():
    cfg = replace(DiffusionTrainConfig(), lr=2e-3)
    with pytest.raises(CatdogError, match=r"lr 0\.002 \(the run's: 0\.001\)"):
        resumed_config(SAVED, cfg, {"lr": 2e-3, "unet": {"channels": tuple(SAVED.unet.channels)}})
    with pytest.raises(CatdogError, match=r"unet\.channels"):
        resumed_config(SAVED, cfg, {"unet": {"channels": (8, 16)}})
    # Repeating the run's own settings (the original command plus --resume) is fine.
    same = {"lr": 1e-3, "vae_path": "old/vae.pt", "unet": {"channels": SAVED.unet.channels}}
    assert resumed_config(SAVED, cfg, same).lr == 1e-3


def test_moved_inputs_can_be_pointed_at_again():
    given = {"vae_path": "new/vae.pt", "vgg_weights": "new/vgg.pth", "data": {"data_dir": "d2"}}
    resumed = resumed_config(SAVED, DiffusionTrainConfig(), given)
    assert (resumed.vae_path, resumed.vgg_weights, resumed.data.data_dir) == (
        "new/vae.pt", "new/vgg.pth", "d2"
    )  # fmt: skip
    assert resumed.data.train_split == SAVED.data.train_split


def test_the_vae_loss_schedule_is_fixed_on_resume():
    saved = VAETrainConfig(epochs=20)
    kept = resumed_config(saved, VAETrainConfig(epochs=80), {"losses": {"kl": {}}})
    assert kept.epochs == 20  # nested empty overrides change nothing
    with pytest.raises(CatdogError, match=r"losses\.vgg\.weight"):
        resumed_config(saved, saved, {"losses": {"vgg": {"weight": 0.25}}})


def test_a_state_from_a_newer_version_is_a_one_line_error(tmp_path):
    from catdog import checkpoint
    from catdog.config import to_dict
    from catdog.runs import prepare_run

    saved = to_dict(SAVED) | {"a_field_from_the_future": 1}
    path = tmp_path / "state.pt"
    checkpoint.save(path, checkpoint.KIND_DIFFUSION_TRAIN_STATE, {"train_config": saved})
    with pytest.raises(CatdogError, match="cannot read .*a_field_from_the_future"):
        prepare_run(replace(SAVED, save_dir=str(tmp_path)), resume=True, state_name="state.pt",
                    final_name="final.pt", state_kind=checkpoint.KIND_DIFFUSION_TRAIN_STATE,
                    what="diffusion")  # fmt: skip


def test_a_plain_resume_keeps_the_runs_learning_rate_scaling():
    saved = replace(SAVED, runtime=RuntimeConfig(lr_scaling="linear", lr_base_batch=2))
    cfg = replace(DiffusionTrainConfig(), runtime=RuntimeConfig(device="cpu"))
    resumed = resumed_config(saved, cfg, {"runtime": {"device": "cpu"}})
    assert (resumed.runtime.lr_scaling, resumed.runtime.lr_base_batch) == ("linear", 2)
    assert resumed.runtime.device == "cpu"  # where this session runs: from the command line
    given = {"runtime": {"lr_scaling": "sqrt", "lr_base_batch": 64}}
    cfg = replace(cfg, runtime=RuntimeConfig(lr_scaling="sqrt", lr_base_batch=64))
    resumed = resumed_config(saved, cfg, given)
    assert (resumed.runtime.lr_scaling, resumed.runtime.lr_base_batch) == ("sqrt", 64)


def test_resuming_with_fewer_epochs_than_done_is_refused(tmp_path):
    from catdog import checkpoint
    from catdog.config import to_dict
    from catdog.runs import prepare_run

    checkpoint.save(tmp_path / "state.pt", checkpoint.KIND_DIFFUSION_TRAIN_STATE,
                    {"train_config": to_dict(SAVED), "epoch": 5})  # fmt: skip
    kw = dict(resume=True, state_name="state.pt", final_name="final.pt",
              state_kind=checkpoint.KIND_DIFFUSION_TRAIN_STATE, what="diffusion")  # fmt: skip
    cfg = replace(SAVED, save_dir=str(tmp_path), epochs=4)
    with pytest.raises(CatdogError, match="--epochs 4 is below the 5 epochs"):
        prepare_run(cfg, given={"epochs": 4}, **kw)
    resumed, state = prepare_run(replace(cfg, epochs=5), given={"epochs": 5}, **kw)
    assert resumed.epochs == 5 and state["epoch"] == 5
