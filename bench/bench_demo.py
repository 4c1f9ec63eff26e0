"""Time the main job (`python -m catdog.demo`, the shipped weights on CPU), end to end in a
fresh process: imports, loading, generating both classes, GIFs and the denoising-path figure.

    python bench/bench_demo.py

Appends one record to bench/results/demo.jsonl.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import append_record, record_header  # noqa: E402


def main() -> None:
    # no options, but --help (or a mistyped flag) must not run and record the benchmark
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "catdog.demo", "--output", out], check=True,
                       capture_output=True)  # fmt: skip
        seconds = time.perf_counter() - start
    print(f"main job: {seconds:.1f} s")
    append_record("demo.jsonl", {**record_header(), "seconds": round(seconds, 1)})


if __name__ == "__main__":
    main()
