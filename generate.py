"""The original generation script, kept working:

    python generate.py --class_name cat --num_samples 10 \
        --model_path ./results/conditional_diffusion_final.pt

It takes every ``catdog generate`` flag (``--steps``, ``--sampler``, ``--guidance``, ``--seed``,
``--batch_size``, ``--output``, ...).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))  # works without installing

from catdog import cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate cats or dogs from a trained model pair.")
    cli.add_generate_args(parser)
    return cli.run(cli.cmd_generate, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
