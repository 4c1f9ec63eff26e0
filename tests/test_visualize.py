from PIL import Image

from catdog import checkpoint
from catdog.visualize import load_gif_frames, make_figures, reverse_trajectory


def test_reverse_trajectory_records_every_step(tiny_pair):
    unet, schedule, _ = checkpoint.load_diffusion(tiny_pair)
    ts, xs, x0s = reverse_trajectory(unet, schedule, label=1, seed=3, steps=6)
    assert ts[0] == 100 and ts[-1] == 0 and len(ts) == 7
    assert xs.shape == (7, 2, 8, 8) and x0s.shape == (6, 2, 8, 8)
    torch_equal = (xs[-1] - x0s[-1]).abs().max().item()
    assert torch_equal < 1e-5  # the last step lands on its own x0 prediction


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
    assert len(frames) == 5  # one per step
    assert frames[0].shape[:2] == (16 * 4, (16 + 2 + 16) * 4)  # x_t | predicted x0, shown 4x
    with Image.open(tmp_path / "denoising_cat.gif") as im:
        im.seek(4)
        assert im.info["duration"] == 1500  # the final image is held
