"""Write a diffusion run's live (non-EMA) UNet weights as a generation checkpoint.

The run's ``conditional_diffusion_final.pt`` holds the EMA weights. This copies it with the live
weights of the same step (from ``diffusion_train_state.pt``) in their place, keeping the
schedule, VAE link and guide link, so ``bench_quality.py --model-path OUT`` scores the live
weights against the EMA on the same protocol (docs/design.md, "Learning rate 2e-3, the live
weights, and discriminator guidance").

    python bench/live_weights.py runs/diff_c8_w80 runs/raw_w80/conditional_diffusion_final.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

from catdog import checkpoint
from catdog.train_diffusion import FINAL, STATE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished diffusion run's save_dir")
    parser.add_argument("out", type=Path, help="where to write the live-weights checkpoint")
    args = parser.parse_args()
    final = checkpoint.load(args.run / FINAL, checkpoint.KIND_DIFFUSION)
    state = checkpoint.load(args.run / STATE, checkpoint.KIND_DIFFUSION_TRAIN_STATE)
    if state["epoch"] != final["epoch"]:
        raise SystemExit(f"{args.run}: the train state (epoch {state['epoch']}) is not the "
                         f"final checkpoint's (epoch {final['epoch']})")  # fmt: skip
    final["state_dict"] = {k: v.clone() for k, v in state["unet"].items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.save(args.out, checkpoint.KIND_DIFFUSION, final)
    print(f"wrote the live weights of {args.run} at epoch {state['epoch']} to {args.out}")


if __name__ == "__main__":
    main()
