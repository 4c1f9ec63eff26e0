"""Quality of a model pair with the project's own `evaluate`: the headline figures at one
setting, and quality against sampler and step count (so the default sampler is chosen by numbers).

    # headline: 800 images per class, default sampler, with the real-data reference points
    python bench/bench_quality.py --model-path weights/... --data-dir ../shared/data/catdog96 \
        --inception-weights ../shared/weights/weights-inception-2015-12-05-6726825d.pth

    # quality vs steps: fewer images per setting (KID is the figure to read at small n)
    python bench/bench_quality.py ... --sweep "dpmpp:10,dpmpp:20,ddim:25,ddim:50,ddpm,dpmpp:20:4" \
        --num-per-class 200 --no-reference-points

Appends one JSON record per setting to bench/results/quality.jsonl; real-split features are
cached (runs/feature_cache) so a sweep pays for Inception on generated images only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from common import add_scoring_args, append_record, record_header  # noqa: E402

from catdog.config import DataConfig, EvaluateConfig  # noqa: E402
from catdog.evaluate import evaluate, format_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_scoring_args(parser, num_per_class=800)
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument(
        "--class-guidance", type=float, default=EvaluateConfig.class_guidance,
        help="with autoguidance: the classifier-free term on top (1 = off)",
    )  # fmt: skip
    parser.add_argument(
        "--sweep", default=None,
        help="sampler:steps[:guidance],... (ddpm = all T steps, e.g. ddpm::2)",
    )  # fmt: skip
    parser.add_argument("--no-reference-points", action="store_true")
    parser.add_argument("--select", type=int, default=EvaluateConfig.select,
                        help="best of K with the shipped selector (1 = off)")  # fmt: skip
    parser.add_argument("--vgg-weights", default=None, help="VGG16 features for --select")
    args = parser.parse_args()
    defaults = EvaluateConfig()
    guidance = defaults.guidance if args.guidance is None else args.guidance
    settings = [(defaults.sampler, defaults.steps, guidance)]
    if args.sweep:
        settings = []
        for item in args.sweep.split(","):
            sampler, *rest = item.split(":")
            steps = int(rest[0]) if rest and rest[0] else 1
            settings.append((sampler, steps, float(rest[1]) if len(rest) > 1 else guidance))
    for sampler, steps, scale in settings:
        cfg = EvaluateConfig(
            model_path=args.model_path,
            data=DataConfig(data_dir=args.data_dir),
            num_per_class=args.num_per_class,
            sampler=sampler,
            steps=steps,
            guidance=scale,
            guide_path=args.guide_path,
            class_guidance=args.class_guidance,
            select=args.select,
            vgg_weights=args.vgg_weights,
            vae_path=args.vae_path,
            inception_weights=args.inception_weights,
            cache_dir=args.cache_dir,
            reference_points=not args.no_reference_points,
            output=f"runs/bench_quality/{sampler}-{steps}-g{scale or 'default'}"
            f"-c{args.class_guidance}-s{args.select}.json",
            progress=False,
        )
        start = time.perf_counter()
        report = evaluate(cfg)
        print(f"{sampler}-{steps}, {report['guide']} guidance {cfg.guidance}, class guidance "
              f"{cfg.class_guidance}, best of {cfg.select}:\n"
              f"{format_table(report)}\n", flush=True)  # fmt: skip
        append_record("quality.jsonl", {
            **record_header(), "label": args.label, "sampler": sampler, "steps": steps,
            "guidance": cfg.guidance, "guide": report["guide"],
            "class_guidance": cfg.class_guidance, "select": cfg.select,
            "num_per_class": cfg.num_per_class,
            "seconds": round(time.perf_counter() - start, 1), "report": report,
        })  # fmt: skip


if __name__ == "__main__":
    main()
