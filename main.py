"""The original entry point, kept working: ``python main.py --mode vae|diffusion [options]``.

``--mode vae`` takes every ``catdog train-vae`` flag (``--epochs``, ``--lr``, ``--lambda_vgg``,
``--save_dir``, ...). It is a thin layer over the packaged CLI in ``src/catdog/cli.py``.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))  # works without installing

from catdog import cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a stage of the cat/dog generator.")
    parser.add_argument(
        "--mode", choices=["vae", "diffusion"], required=True, help="stage to train"
    )
    cli.add_vae_train_args(parser)
    args, unknown = parser.parse_known_args(argv)
    if args.mode == "diffusion":
        print("error: the diffusion stage is not implemented yet (see issue 3)", file=sys.stderr)
        return 2
    if unknown:
        parser.error(f"unrecognised arguments: {' '.join(unknown)}")
    return cli.run(cli.cmd_train_vae, args)


if __name__ == "__main__":
    sys.exit(main())
