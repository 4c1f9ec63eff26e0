import pytest
import torch
from PIL import Image

from catdog import CLASS_NAMES, checkpoint, viz
from catdog.config import ScheduleConfig, UNetConfig
from catdog.diffusion import NoiseSchedule, guided_output
from catdog.errors import CatdogError
from catdog.generate import sample_latents
from catdog.models.unet import UNet
from catdog.visualize import (
    comparison_rows,
    load_gif_frames,
    make_figures,
    panel_title,
    reverse_trajectory,
    shown_steps,
)


def test_reverse_trajectory_records_every_step(tiny_pair):
    unet, schedule, _ = checkpoint.load_diffusion(tiny_pair)
    ts, xs, x0s = reverse_trajectory(unet, schedule, label=1, seed=3, steps=6)
    assert ts[0] == 100 and ts[-1] == 0 and len(ts) == 7
    assert xs.shape == (7, 2, 8, 8) and x0s.shape == (6, 2, 8, 8)
    torch_equal = (xs[-1] - x0s[-1]).abs().max().item()
    assert torch_equal < 1e-5  # the last step lands on its own x0 prediction


def test_each_panel_names_the_timestep_it_shows(tiny_pair):
    unet, schedule, _ = checkpoint.load_diffusion(tiny_pair)
    ts, xs, x0s = reverse_trajectory(unet, schedule, label=0, seed=1, steps=4, guidance=1.0)
    for i in range(4):
        # The predicted x0 of step i is the model's prediction from the latent at ts[i] ...
        t = torch.tensor([ts[i]])
        output = guided_output(unet, xs[i][None], t, torch.tensor([0]), 1.0, unet.null_label)
        torch.testing.assert_close(schedule.predict_x0_eps(output, xs[i][None], t)[0][0], x0s[i])
        assert panel_title("cat", "x0", i, ts).endswith(f"step {i + 1}, from t={ts[i]}")
        # ... and the step leaves the latent at ts[i + 1].
        assert panel_title("cat", "xt", i, ts).endswith(f"step {i + 1}, t={ts[i + 1]}")
    assert ts[0] == schedule.num_timesteps  # the first prediction is from pure noise


def test_bad_figure_requests_are_clear_errors_and_write_nothing(tiny_pair, tmp_path):
    out = tmp_path / "figures"
    for kwargs, message in (({"steps": 0}, "--steps must be at least 1"),
                            ({"steps": 101}, "--steps must be in 1..100"),
                            ({"guidance": float("nan")}, "--guidance must be a finite number"),
                            ({"seed": -1}, "--seed must be in 0..")):  # fmt: skip
        with pytest.raises(CatdogError, match=message):
            make_figures(str(tiny_pair), out, real_images=False, **kwargs)
    assert not out.exists()
    out.write_text("a file")
    with pytest.raises(CatdogError, match="is a file"):
        make_figures(str(tiny_pair), out, real_images=False)


def test_a_trajectory_of_a_subclass_model_is_the_sample_of_its_seed():
    torch.manual_seed(0)
    unet = UNet(UNetConfig(latent_channels=2, latent_size=8, channels=(8, 16), heads=2,
                           norm_groups=4, subclasses=3)).eval()  # fmt: skip
    torch.nn.init.normal_(unet.head.weight, std=0.1)  # the head starts at zero
    unet.class_embedder.subclass_prior.copy_(torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2]]))
    schedule = NoiseSchedule(ScheduleConfig(num_timesteps=100))
    for seed in range(4):  # the sub-class drawn differs across these seeds
        _, xs, _ = reverse_trajectory(unet, schedule, label=1, seed=seed, steps=5)
        sample = sample_latents(unet, schedule, torch.tensor([1]), [seed], steps=5, guidance=2.0)
        torch.testing.assert_close(xs[-1:], sample)


def test_all_figures_are_written(tiny_pair, tiny_data, tmp_path):
    paths = make_figures(str(tiny_pair), tmp_path, data_dir=str(tiny_data), steps=5, comparisons=2)
    names = sorted(p.name for p in paths)
    assert names == sorted([
        "denoising_path.png", "denoising_cat.gif", "denoising_dog.gif", "samples_cat.png",
        "samples_dog.png", "comparison.png",
    ])  # fmt: skip
    for p in paths:
        with Image.open(p) as im:
            im.verify()
    frames = load_gif_frames(tmp_path / "denoising_cat.gif")
    assert len(frames) == 1 + 5  # the starting noise, then one per step
    assert frames[0].shape[:2] == (16 * 4, (16 + 2 + 16) * 4)  # x_t | predicted x0, shown 4x
    first_prediction = frames[0][:, (16 + 2) * 4 :]
    assert first_prediction.max() - first_prediction.min() <= 2  # no prediction yet: flat grey
    assert frames[1][:, (16 + 2) * 4 :].std() > 1  # then a prediction at every step
    with Image.open(tmp_path / "denoising_cat.gif") as im:
        im.seek(5)
        assert im.info["duration"] == 1500  # the final image is held


@pytest.mark.parametrize("steps", [1, 3, 7, 50])
def test_the_denoising_path_shows_distinct_steps_from_first_to_last(steps):
    picks = shown_steps(steps, shown=6)
    assert len(set(picks)) == len(picks) == min(6, steps)  # no panel drawn twice
    assert picks[0] == 0 and picks[-1] == steps - 1


def test_each_comparison_row_is_named_after_its_own_image():
    labels = torch.tensor([1, 1, 0, 1, 1])  # one cat among dogs: fewer cat rows than asked
    index, names = comparison_rows(labels, per_class=2)
    assert len(names) == len(index) == 3
    for position, name in zip(index.tolist(), names, strict=True):
        _, class_name, k = name.split()
        assert class_name == CLASS_NAMES[labels[position]]
        # "#k": the k-th image of its class, in file order
        assert position == torch.nonzero(labels == labels[position]).flatten()[int(k[1:])]


def test_tsne_of_a_tiny_held_out_set_is_drawn(tmp_path):
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 2, 3, 3, generator=generator)  # a 1 + 1 image held-out split
    viz.save_tsne(tmp_path / "tsne.png", latents, torch.tensor([0, 1]))
    with Image.open(tmp_path / "tsne.png") as im:
        im.verify()
