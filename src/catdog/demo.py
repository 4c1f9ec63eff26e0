"""The main job: cats and dogs from the shipped weights, on the CPU, with the pictures that
explain them. No data, no download, no GPU needed.

    python -m catdog.demo [--output demo]

Writes a grid of cats and a grid of dogs (plus one PNG per image), a denoising GIF per class and
the denoising-path figure (over the map of real latents shipped with the weights), and prints
where they are. With ``--data-dir`` (real cat/dog photos) it also draws the original /
reconstruction / noised-and-denoised comparison.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import CLASS_NAMES
from .config import GenerateConfig
from .errors import CatdogError

REPO = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    summary = " ".join(__doc__.split("\n\n")[0].split())  # the first paragraph, on one line
    parser = argparse.ArgumentParser(prog="python -m catdog.demo", description=summary)
    parser.add_argument("--output", default=str(REPO / "demo"), help="folder for the pictures")
    parser.add_argument("--num-samples", type=int, default=16, help="images per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data-dir", default=None,
        help="real photos (STL-10 root or cat/dog folder) for the comparison figure (optional)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    from .generate import check_seed, generate
    from .visualize import make_figures

    out = Path(args.output)
    start = time.monotonic()
    try:
        if args.num_samples < 1:
            raise CatdogError(f"--num-samples must be at least 1, got {args.num_samples}")
        check_seed(args.seed, args.num_samples)
        # The figures first: they read --data-dir, so a bad one stops the demo before it writes.
        figures = make_figures(
            None,
            out / "figures",
            data_dir=args.data_dir,
            seed=args.seed,
            samples_per_class=0,
            real_images=args.data_dir is not None,
        )
        written = {}
        for name in CLASS_NAMES:
            cfg = GenerateConfig(class_name=name, num_samples=args.num_samples, seed=args.seed,
                                 output=str(out / name), progress=False)  # fmt: skip
            written[name] = generate(cfg)[0]
    except CatdogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"Done in {time.monotonic() - start:.0f} s, from the shipped weights:")
    for name, grid in written.items():
        print(f"  {name}s:  {grid}  (and {args.num_samples} single 48x48 PNGs beside it)")
    for path in figures:
        print(f"  {path.stem.replace('_', ' ')}:  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
