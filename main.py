"""The original entry point, kept working: ``python main.py --mode vae|diffusion [options]``.

``--mode vae`` takes every ``catdog train-vae`` flag (``--epochs``, ``--lr``, ``--lambda_vgg``,
``--save_dir``, ...) and ``--mode diffusion`` every ``catdog train-diffusion`` flag
(``--vae_path``, ``--epochs``, ``--lr``, ``--save_dir``, ...). A thin layer over the packaged
CLI in ``src/catdog/cli.py``.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))  # works without installing

from catdog import cli  # noqa: E402

MODES = {
    "vae": (cli.add_vae_train_args, cli.cmd_train_vae, "Train the VAE stage."),
    "diffusion": (
        cli.add_diffusion_train_args,
        cli.cmd_train_diffusion,
        "Train the diffusion stage.",
    ),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--mode", choices=sorted(MODES))
    known, _ = first.parse_known_args(argv)
    parser = argparse.ArgumentParser(
        description="Train a stage of the cat/dog generator: --mode vae, then --mode diffusion. "
        "`--mode vae --help` and `--mode diffusion --help` list each stage's flags."
    )
    parser.add_argument("--mode", choices=sorted(MODES), required=True, help="stage to train")
    if known.mode is not None:
        add_args, command, parser.description = MODES[known.mode]
        add_args(parser)
    args = parser.parse_args(argv)
    return cli.run(command, args)


if __name__ == "__main__":
    sys.exit(main())
