"""Record a finished (or stopped) training run: epochs and the training wall-clock time summed
from the run's own per-epoch `metrics.jsonl`, and its last figures.

    python bench/record_run.py RUN_DIR --stage vae|diffusion|distill --label "..."

Appends one record to bench/results/training_runs.jsonl. The time is the sum of the epochs'
measured seconds (evaluation and picture time between epochs is not included), so it is the
training time of the run even when it was spread over several resumed sessions. A
distillation run (`catdog distill`) logs every --checkpoint-every steps instead of every epoch;
its intervals count as its "epochs" here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import append_record, record_header  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir")
    parser.add_argument("--stage", choices=["vae", "diffusion", "distill"], required=True)
    parser.add_argument("--label", required=True)
    parser.add_argument(
        "--last-epoch", type=int, default=None,
        help="count epochs up to this one (the checkpoint kept, when the run went on past it)",
    )  # fmt: skip
    args = parser.parse_args()
    rows = [json.loads(x) for x in (Path(args.run_dir) / "metrics.jsonl").read_text().splitlines()]
    if args.stage == "distill":  # logged by interval of steps; each interval's own seconds
        batch = json.loads((Path(args.run_dir) / "config.json").read_text())["batch_size"]
        for previous, row in zip([{"step": 0}, *rows], rows, strict=False):
            # runs logged before "seconds" existed: the interval's latents at its logged rate
            seconds = row.get("seconds", (row["step"] - previous["step"]) * batch
                              / row["latents_per_s"])  # fmt: skip
            row.update(epoch=row["step"], epoch_seconds=seconds)
    if args.last_epoch is not None:
        rows = [r for r in rows if r["epoch"] <= args.last_epoch]
    speed_key = "images_per_s" if args.stage == "vae" else "latents_per_s"
    last = rows[-1]
    if args.stage == "vae":
        scored = [r for r in rows if "val_psnr" in r]
        result = (f"held-out PSNR {scored[-1]['val_psnr']:.2f} dB, probe accuracy "
                  f"{scored[-1]['probe_acc']:.3f}")  # fmt: skip
    else:
        result = f"final loss {last['loss']:.4f}"
    record = {
        **record_header(),
        "stage": args.stage,
        "label": args.label,
        "run_dir": args.run_dir,
        "epochs": None if args.stage == "distill" else last["epoch"],
        "steps": last["step"],
        "wall_minutes": round(sum(r["epoch_seconds"] for r in rows) / 60, 1),
        # Epochs slowed by other jobs on the same cores inflate the sum; the median epoch
        # times the epoch count is what the run takes on a quiet machine.
        "quiet_minutes": round(
            len(rows) * statistics.median(r["epoch_seconds"] for r in rows) / 60, 1
        ),  # fmt: skip
        f"median_{speed_key}": round(statistics.median(r[speed_key] for r in rows), 1),
        "result": result,
    }
    print(json.dumps(record, indent=2))
    append_record("training_runs.jsonl", record)


if __name__ == "__main__":
    main()
