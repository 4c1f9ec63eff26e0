import re

import numpy as np
import pytest
import torch
from PIL import Image

from catdog import checkpoint
from catdog.config import DataConfig, DistillConfig, GenerateConfig
from catdog.data import to_uint8
from catdog.diffusion import guided_output
from catdog.distill import FINAL, STATE, distill
from catdog.errors import CatdogError
from catdog.generate import decode_latents, generate, sample_latents
from tests.conftest import assert_one_line_error, run_cli, run_cli_batch


def distill_cfg(pair, guide, data, save_dir, **kw):
    defaults = dict(model_path=str(pair), guide_path=str(guide), guidance=3.0,
                    data=DataConfig(data_dir=str(data)), generated=8, steps=40, batch_size=16,
                    lr=2e-3, ema_decay=0.0, checkpoint_every=20, save_dir=str(save_dir),
                    device="cpu", progress=False)  # fmt: skip
    return DistillConfig(**{**defaults, **kw})


def guided_error(model, teacher, guide, schedule, seed=0):
    """Mean squared distance of ``model``'s output from the teacher's guided output (scale 3),
    on fixed noised inputs at every noise level."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(64, *teacher_shape(teacher), generator=generator)
    t = torch.randint(1, schedule.num_timesteps + 1, (64,), generator=generator)
    labels = torch.randint(0, 3, (64,), generator=generator)  # cats, dogs and the null label
    with torch.no_grad():
        target = guided_output(teacher, x, t, labels, 3.0, teacher.null_label, guide)
        return float(((model(x, t, labels) - target) ** 2).mean())


def teacher_shape(unet):
    return unet.cfg.latent_channels, unet.cfg.latent_size, unet.cfg.latent_size


def test_the_student_learns_the_guided_output_and_samples_it_in_one_pass(
    tiny_pair, tiny_guide, tiny_data, tmp_path
):
    record = distill(distill_cfg(tiny_pair, tiny_guide, tiny_data, tmp_path / "run"))
    assert record["step"] == 40
    student_path = tmp_path / "run" / FINAL
    teacher, schedule, _ = checkpoint.load_diffusion(tiny_pair)
    guide, _, _ = checkpoint.load_diffusion(tiny_guide)
    student, _, student_record = checkpoint.load_diffusion(student_path)
    before, after = (guided_error(m, teacher, guide, schedule) for m in (teacher, student))
    assert after < 0.7 * before, (before, after)  # it started as the teacher itself
    distilled = student_record["distilled"]
    assert distilled["guidance"] == 3.0 and distilled["steps"] == 40
    assert distilled["teacher"]["sha256"] == checkpoint.content_hash(teacher.state_dict())
    assert distilled["guide_sha256"] == checkpoint.content_hash(guide.state_dict())
    # By default it samples alone at guidance 1: one pass a step, no guide.
    assert checkpoint.find_guide(student_path, student_record) == (None, {"guidance": 1.0})
    paths = generate(GenerateConfig(model_path=str(student_path), output=str(tmp_path / "g"),
                                    num_samples=2, steps=4, progress=False))  # fmt: skip
    alone = sample_latents(student, schedule, torch.zeros(2, dtype=torch.long), [0, 1], steps=4,
                           sampler="dpmpp", guidance=1.0)  # fmt: skip
    vae, _ = checkpoint.find_vae(student_path, student_record)
    expected = to_uint8(decode_latents(vae, alone)).permute(0, 2, 3, 1).numpy()
    got = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths[1:]])
    assert np.array_equal(got, expected)
    with pytest.raises(CatdogError, match="distilled into it and takes no guide"):
        checkpoint.find_guide(student_path, student_record, str(tiny_guide))
    with pytest.raises(CatdogError, match="has its guidance distilled into it; use a model"):
        generate(GenerateConfig(model_path=str(student_path), output=str(tmp_path / "c"),
                                class_guidance=3.0, progress=False))  # fmt: skip
    assert not (tmp_path / "c").exists()
    with pytest.raises(CatdogError, match="already guidance-distilled"):
        distill(distill_cfg(student_path, tiny_guide, tiny_data, tmp_path / "again"))


def test_resume_continues_exactly(tiny_pair, tiny_guide, tiny_data, tmp_path):
    straight = tmp_path / "straight"
    distill(distill_cfg(tiny_pair, tiny_guide, tiny_data, straight, steps=40))
    split = tmp_path / "split"
    distill(distill_cfg(tiny_pair, tiny_guide, tiny_data, split, steps=20))
    record = distill(distill_cfg(tiny_pair, tiny_guide, tiny_data, split, steps=40), resume=True)
    assert record["step"] == 40
    a = checkpoint.load(straight / FINAL, checkpoint.KIND_DIFFUSION)["state_dict"]
    b = checkpoint.load(split / FINAL, checkpoint.KIND_DIFFUSION)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics = (split / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2 and (split / "loss_curves.png").is_file()
    with pytest.raises(CatdogError, match="already holds a distillation run"):
        distill(distill_cfg(tiny_pair, tiny_guide, tiny_data, split))
    with pytest.raises(CatdogError, match="below the 40 steps this run has done"):
        distill(distill_cfg(tiny_pair, tiny_guide, tiny_data, split, steps=30), resume=True)
    # Another teacher (here the guide), or another guide, cannot continue the run.
    with pytest.raises(CatdogError, match="the guide is not the one this distillation run"):
        distill(distill_cfg(tiny_pair, "none", tiny_data, split, steps=60), resume=True,
                given={"guide_path": "none", "steps": 60})  # fmt: skip
    with pytest.raises(CatdogError, match="not the teacher this distillation run started from"):
        distill(distill_cfg(tiny_guide, tiny_guide, tiny_data, split, steps=60), resume=True,
                given={"model_path": str(tiny_guide), "steps": 60})  # fmt: skip


def test_only_real_latents_or_only_generated_ones(tiny_pair, tiny_guide, tiny_data, tmp_path):
    for fraction in (0.0, 1.0):
        out = tmp_path / f"f{fraction}"
        distill(distill_cfg(tiny_pair, tiny_guide, tiny_data, out, generated_fraction=fraction,
                            generated=0 if fraction == 0 else 8, steps=2))  # fmt: skip
        state = checkpoint.load(out / STATE, checkpoint.KIND_DIFFUSION_TRAIN_STATE)
        assert len(state["pool"]) == (0 if fraction == 0 else 8)


def test_classifier_free_guidance_distils_too(tiny_pair, tiny_data, tmp_path):
    distill(distill_cfg(tiny_pair, "none", tiny_data, tmp_path / "cfg", guidance=2.0, steps=2))
    record = checkpoint.load(tmp_path / "cfg" / FINAL, checkpoint.KIND_DIFFUSION)
    assert record["distilled"]["guide_sha256"] is None and record["distilled"]["guidance"] == 2.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"guidance": 1.0}, "no guidance to distil"),
        ({"steps": 0}, "--steps, --batch-size and --checkpoint-every must be at least 1"),
        ({"generated": 0}, "--generated must be at least 1"),
        ({"generated_fraction": 1.5}, "--generated-fraction must be in [0, 1]"),
        ({"lr": 0.0}, "--lr must be positive"),
        ({"ema_decay": 1.0}, "--ema-decay must be in [0, 1)"),
        ({"max_minutes": 0.0}, "--max-minutes must be positive"),
        ({"guidance": float("nan")}, "--guidance must be a finite number >= 0"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_written(
    tiny_pair, tiny_guide, tiny_data, tmp_path, overrides, message
):
    with pytest.raises(CatdogError, match=re.escape(message)):
        distill(distill_cfg(tiny_pair, tiny_guide, tiny_data, tmp_path / "x", **overrides))
    assert not (tmp_path / "x").exists()


def test_distill_generate_and_export_from_the_command_line(tiny_pair, tiny_guide, tiny_data,
                                                           tmp_path):  # fmt: skip
    run = tmp_path / "run"
    done = run_cli("-m", "catdog", "distill", "--model-path", str(tiny_pair), "--guide-path",
                   str(tiny_guide), "--guidance", "3", "--generated", "8", "--steps", "4",
                   "--batch-size", "8", "--save-dir", str(run), "--no-progress")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "the data the teacher was trained on" in done.stderr  # tiny_pair's recorded folder
    student = run / FINAL
    gen, with_guide, again, export, weights = run_cli_batch(
        ("generate.py", "--model_path", str(student), "--num_samples", "2", "--steps", "3",
         "--output", str(tmp_path / "g")),
        ("generate.py", "--model_path", str(student), "--guide_path", str(tiny_guide),
         "--output", str(tmp_path / "bad")),
        ("-m", "catdog", "distill", "--model-path", str(tiny_pair), "--guide-path",
         str(tiny_guide), "--save-dir", str(run)),
        ("-m", "catdog", "export", "--model-path", str(student), "--output",
         str(tmp_path / "shipped"), "--data-dir", str(tiny_data)),
        ("-m", "catdog", "distill", "--model-path", str(tiny_pair), "--member", str(tiny_pair),
         "--member-weights", "half,half", "--save-dir", str(tmp_path / "w")),
    )  # fmt: skip
    assert_one_line_error(weights, "--member-weights must be numbers separated by commas")
    assert not (tmp_path / "w").exists()
    assert gen.returncode == 0, gen.stderr
    assert len(list((tmp_path / "g").glob("cat_0*.png"))) == 2
    assert_one_line_error(with_guide, "takes no guide")
    assert not (tmp_path / "bad").exists()
    assert_one_line_error(again, "already holds a distillation run", "--resume")
    assert export.returncode == 0, export.stderr
    shipped = sorted(p.name for p in (tmp_path / "shipped").iterdir())
    assert shipped == ["catdog_diffusion_distilled.safetensors", "catdog_vae.safetensors"]
    record = checkpoint.load(tmp_path / "shipped" / shipped[0], checkpoint.KIND_DIFFUSION)
    assert record["distilled"]["guidance"] == 3.0


def test_the_default_teacher_is_the_shipped_pair_not_the_distilled_default(tmp_path):
    from catdog.generate import SHIPPED_TEACHER

    distill(DistillConfig(generated=2, generated_fraction=1.0, steps=1, batch_size=2,
                          save_dir=str(tmp_path), device="cpu", progress=False))  # fmt: skip
    record = checkpoint.load(tmp_path / FINAL, checkpoint.KIND_DIFFUSION)
    teacher, _, teacher_record = checkpoint.load_diffusion(SHIPPED_TEACHER)
    assert record["distilled"]["teacher"]["sha256"] == checkpoint.content_hash(teacher.state_dict())
    assert record["distilled"]["guidance"] == teacher_record["guide"]["guidance"]


def test_no_teacher_given_and_no_shipped_pair_is_a_clear_error(monkeypatch, tmp_path):
    import catdog.distill

    monkeypatch.setattr(catdog.distill, "SHIPPED_TEACHER", tmp_path / "missing.safetensors")
    with pytest.raises(CatdogError, match="no --model-path given and no shipped teacher at"):
        distill(DistillConfig(save_dir=str(tmp_path / "run"), device="cpu", progress=False))
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def tiny_member(tiny_data, tiny_vae, tiny_guide, tmp_path_factory):
    """A second tiny model on the same VAE (another seed), with ``tiny_guide`` as its recorded
    guide: an ensemble member."""
    from catdog.train_diffusion import FINAL as DIFFUSION_FINAL
    from catdog.train_diffusion import train
    from tests.conftest import resave, tiny_diffusion_cfg

    save_dir = tmp_path_factory.mktemp("member_run")
    train(tiny_diffusion_cfg(tiny_data, tiny_vae, save_dir, epochs=2, seed=3))
    record = checkpoint.load(save_dir / DIFFUSION_FINAL, checkpoint.KIND_DIFFUSION)
    guide = checkpoint.load(tiny_guide, checkpoint.KIND_DIFFUSION)
    record["guide"] = {"path": str(tiny_guide), "sha256": checkpoint.content_hash(
        checkpoint.load_diffusion(tiny_guide)[0].state_dict()), "guidance": 3.0}  # fmt: skip
    assert guide["vae"] == record["vae"]
    resave(save_dir / DIFFUSION_FINAL, checkpoint.KIND_DIFFUSION, record)
    return save_dir / DIFFUSION_FINAL


def test_an_ensemble_teacher_is_distilled_into_one_student(
    tiny_pair, tiny_guide, tiny_member, tiny_data, tmp_path
):
    import shutil

    from catdog.models.ensemble import Ensemble
    from tests.conftest import resave

    run, copy = tmp_path / "run", tmp_path / "member.pt"
    shutil.copy(tiny_member, copy)
    distill(distill_cfg(tiny_pair, tiny_guide, tiny_data, run, members=(str(copy),),
                        member_weights=(0.25, 0.75)))  # fmt: skip
    teacher, schedule, _ = checkpoint.load_diffusion(tiny_pair)
    guide, _, _ = checkpoint.load_diffusion(tiny_guide)
    member, _, _ = checkpoint.load_diffusion(tiny_member)
    student, _, record = checkpoint.load_diffusion(run / FINAL)
    both = Ensemble([teacher, member], [0.25, 0.75])
    guides = Ensemble([guide, guide], [0.25, 0.75])
    # The ensemble's target is the weighted mean of the members' own guided outputs ...
    x, t, labels = torch.randn(4, *teacher_shape(teacher)), torch.tensor([1, 300, 600, 1000]), \
        torch.tensor([0, 1, 2, 0])  # fmt: skip
    with torch.no_grad():
        mean = sum(w * guided_output(m, x, t, labels, 3.0, teacher.null_label, guide)
                   for w, m in ((0.25, teacher), (0.75, member)))  # fmt: skip
        assert torch.allclose(guided_output(both, x, t, labels, 3.0, teacher.null_label, guides),
                              mean, atol=1e-5)  # fmt: skip
    # ... and the student learns it, not the first teacher's alone.
    before = guided_error(teacher, both, guides, schedule)  # an Ensemble is a teacher too
    after = guided_error(student, both, guides, schedule)
    assert after < 0.7 * before, (before, after)
    distilled = record["distilled"]
    assert distilled["weights"] == [0.25, 0.75]
    assert distilled["members"][0]["sha256"] == checkpoint.content_hash(member.state_dict())
    assert distilled["members"][0]["guide_sha256"] == checkpoint.content_hash(guide.state_dict())
    assert distilled["teacher"]["sha256"] == checkpoint.content_hash(teacher.state_dict())
    # A resumed run needs the same members, not just the same paths.
    changed = checkpoint.load(copy, checkpoint.KIND_DIFFUSION)
    changed["state_dict"] = {k: v + 0.01 if v.is_floating_point() else v
                             for k, v in changed["state_dict"].items()}  # fmt: skip
    resave(copy, checkpoint.KIND_DIFFUSION, changed)
    with pytest.raises(CatdogError, match="--member models are not the ones this distillation"):
        distill(distill_cfg(tiny_pair, tiny_guide, tiny_data, run, steps=60, members=(str(copy),),
                            member_weights=(0.25, 0.75)),
                resume=True, given={"steps": 60})  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"member_weights": (0.5, 0.5)}, "--member-weights needs 1 values"),
        ({"members": ("M",), "member_weights": (0.5, 0.6)}, "numbers >= 0 summing to 1"),
        ({"members": ("M",), "member_weights": (1.5, -0.5)}, "numbers >= 0 summing to 1"),
    ],
)
def test_bad_ensemble_weights_are_refused(tiny_pair, tiny_guide, tiny_data, tmp_path, overrides,
                                          message):  # fmt: skip
    with pytest.raises(CatdogError, match=re.escape(message)):
        distill(distill_cfg(tiny_pair, tiny_guide, tiny_data, tmp_path / "x", **overrides))
    assert not (tmp_path / "x").exists()


def test_bad_members_are_refused_before_anything_is_written(
    tiny_pair, tiny_guide, tiny_data, tmp_path
):
    student = tmp_path / "student"
    distill(distill_cfg(tiny_pair, tiny_guide, tiny_data, student, steps=1))
    cases = [
        (str(tiny_guide), "has no recorded guide"),  # tiny_guide links no guide of its own
        (str(student / FINAL), "is guidance-distilled"),
        (str(tmp_path / "missing.pt"), "not found"),
    ]
    for member, message in cases:
        with pytest.raises(CatdogError, match=message):
            distill(distill_cfg(tiny_pair, tiny_guide, tiny_data, tmp_path / "x",
                                members=(member,)))  # fmt: skip
        assert not (tmp_path / "x").exists()
