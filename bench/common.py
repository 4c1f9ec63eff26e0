"""What every benchmark records: when, where, how it was run, and where the record goes."""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Hashable
from datetime import datetime, timezone
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, {platform.system()}"
    )


def _git(*args: str) -> str:
    """git's output in the repository that holds bench/, or "" without git or a repository."""
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, cwd=BENCH_DIR)
    except OSError:  # no git (a bare device machine)
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def record_header() -> dict:
    """Date, machine, exact command and commit of this run. The command is shell-quoted, so
    that it reruns as it ran (a --label or a variant with spaces stays one argument); the commit
    is the repository's whatever the working directory, and ``uncommitted`` says whether tracked
    files outside bench/results differed from it (the code that ran is then not the commit's)."""
    commit = _git("rev-parse", "--short", "HEAD")
    header = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "command": "python " + shlex.join(sys.argv),
        "commit": commit or "unknown",
    }
    status = _git("status", "--porcelain", "--", ":(top)", ":(top,exclude)bench/results")
    if commit and _git("rev-parse", "--is-inside-work-tree") == "true":
        # changed tracked files, or Python files not in the commit (a new script run before
        # `git add`); other untracked files (notes, data) are not code that ran
        lines = status.splitlines()
        header["uncommitted"] = any(not x.startswith("??") or x.endswith(".py") for x in lines)
    return header


def append_record(name: str, record: dict) -> None:
    """Append one JSON line to bench/results/NAME."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with open(RESULTS_DIR / name, "a") as f:
        f.write(json.dumps(record) + "\n")


def interleaved_median_ms(
    steps: dict[Hashable, Callable[[], None]], rounds: int, per_round: int
) -> dict[Hashable, float]:
    """Median milliseconds per call of each closure, timed ``per_round`` calls at a time and
    interleaved round by round, so that drift in the machine's speed falls on all alike."""
    times: dict[Hashable, list[float]] = {key: [] for key in steps}
    for _ in range(rounds):
        for key, step in steps.items():
            for _ in range(per_round):
                start = time.perf_counter()
                step()
                times[key].append(time.perf_counter() - start)
    return {key: statistics.median(t) * 1000 for key, t in times.items()}


def add_scoring_args(
    parser: argparse.ArgumentParser, num_per_class: int, model_required: bool = True
) -> None:
    """The flags every quality benchmark takes: the model pair, the real images, the Inception
    weights and feature cache, how many images per class, and a label for the record."""
    parser.add_argument("--model-path", required=model_required)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--inception-weights", default=None)
    parser.add_argument("--num-per-class", type=int, default=num_per_class)
    parser.add_argument("--cache-dir", default="runs/feature_cache")
    parser.add_argument("--label", default="", help="free text stored with the record")
    parser.add_argument(
        "--guide-path", default=None,
        help="weaker model for autoguidance; 'none' = classifier-free (default: the recorded one)",
    )  # fmt: skip
    parser.add_argument(
        "--vae-path", default=None,
        help="the VAE to decode with: the recorded one or a decoder fine-tune of it (default: "
        "the recorded one)",
    )  # fmt: skip
