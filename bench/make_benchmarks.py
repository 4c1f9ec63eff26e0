"""Regenerate BENCHMARKS.md from the committed records in bench/results/*.jsonl.

    python bench/make_benchmarks.py

Every figure in BENCHMARKS.md is copied from a record that a bench/ script wrote when it ran,
with that record's date, machine and exact command beside it. Nothing here measures anything.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHIPPED = "src/catdog/weights"  # a quality record of a model_path here scored the shipped weights
sys.path.insert(0, str(ROOT / "src"))

from catdog.evaluate import format_table  # noqa: E402


def records(name: str) -> list[dict]:
    path = HERE / "results" / name
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def section(out: list[str], title: str, name: str, empty: str = "No record yet.") -> list[dict]:
    """Start a section titled ``title`` and return the records of ``name``; when there are none,
    say ``empty`` under the title (and return the empty list)."""
    out.append(f"## {title}\n")
    rows = records(name)
    if not rows:
        out.append(f"{empty}\n")
    return rows


def provenance(r: dict) -> str:
    commit = r.get("commit", "?") + (" with uncommitted changes" if r.get("uncommitted") else "")
    return f"{r['date']}, {r['machine']}, commit {commit}:\n`{r['command']}`"


def recorded(r: dict) -> str:
    """When and where a record was measured, for a table cell: speed tables mix machines."""
    return f"{r['date']}, {r['machine'].split(', torch ')[0]}"


def provenances(out: list[str], rows: list[dict], *, per_command: bool = False) -> None:
    """A "- date, machine, commit: command" line for each record, or with ``per_command`` for
    the first record of each command (a sweep writes one record per setting)."""
    if per_command:
        first: dict[str, dict] = {}
        for r in rows:
            first.setdefault(r["command"], r)
        rows = list(first.values())
    out.extend(f"- {provenance(r)}" for r in rows)


def table(out: list[str], head: list[str], body: list[list[str]]) -> None:
    """A Markdown table."""
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    out.extend("| " + " | ".join(cells) + " |" for cells in body)


def class_guidance_text(r: dict) -> str:
    """' + CFG W' when a record used the classifier-free term on top (--class-guidance W)."""
    return f" + CFG {r['class_guidance']}" if r.get("class_guidance", 1.0) != 1.0 else ""


def guidance_text(r: dict) -> str:
    """The guidance of a quality record: classifier-free (CFG) unless a guide model was used,
    and best-of-K selection when the record used it (--select K)."""
    kind = {"autoguidance": "autoguidance", "distilled": "distilled, guidance"}.get(
        r.get("guide"), "CFG"
    )
    select = f", best of {r['select']}" if r.get("select", 1) != 1 else ""
    return f"{kind} {r['guidance']}{class_guidance_text(r)}{select}"


def scores_shipped(r: dict) -> bool:
    """Whether a quality record scored the weights shipped in the package (at that commit)."""
    return (r["report"]["config"].get("model_path") or SHIPPED).startswith(SHIPPED)


def quality_section(out: list[str]) -> None:
    rows = records("quality.jsonl")
    headline = [r for r in rows if "real_train" in r["report"]["rows"] and scores_shipped(r)]
    out.append("## Quality of the shipped models\n")
    if not headline:
        out.append("No quality record yet.\n")
    else:
        r = headline[-1]
        out.append(
            f"{r['num_per_class']} images per class from `{r['report']['scored']}`, sampler "
            f"{r['sampler']} with {r['steps']} steps and {guidance_text(r)}, against the "
            f"real reference split. {r.get('label', '')}\n"
        )
        out.append(format_table(r["report"]) + "\n")
        out.append(provenance(r) + "\n")
    sweep = [r for r in rows if not headline or r is not headline[-1]]
    out.append("## Quality against sampler, step count and training variant\n")
    if not sweep:
        out.append("No sweep record yet.\n")
        return
    out.append("| model | sampler | steps | guidance | n/class | KIDx1000 | FID | precision | "
               "recall | class acc. |")  # fmt: skip
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in sweep:
        s = r["report"]["rows"]["scored"]
        steps = "all T" if r["sampler"] == "ddpm" else r["steps"]
        out.append(
            f"| {r.get('label') or r['report']['scored']} | {r['sampler']} | {steps} | "
            f"{guidance_text(r)} | {r['num_per_class']} | {1000 * s['kid']:.2f} | {s['fid']:.1f} | "
            f"{s['precision']:.3f} | {s['recall']:.3f} | {s['class_accuracy']:.3f} |"
        )
    out.append("")
    provenances(out, sweep, per_command=True)
    out.append(
        '\nSampling speed for each setting is under "Sampling speed against step count" '
        "below (measured alone; these "
        "quality runs shared the CPU with other work, so their times are not reported)."
    )
    out.append("")


def diagnostics_section(out: list[str]) -> None:
    title = "Where the quality is lost (`bench/bench_diagnose.py`)"
    rows = section(out, title, "diagnostics.jsonl", "No diagnostics record yet.")
    if not rows:
        return
    out.append(
        "KIDx1000 (FID) against the whole reference split, on n real reference images per class "
        "and their latents: decoded as they are, decoded with Gaussian noise added (normalised "
        "latent units), noised to step t and restored by the diffusion model (SDEdit, DDIM, "
        "guidance 1), and samples generated from scratch with the same labels. Denoising error: "
        "x0 MSE over fixed noise at t/T = 0.1, 0.25, 0.5, 0.75 on 400 training and 400 held-out "
        "latents; a gap is overfitting.\n"
    )
    names = list(max(rows, key=lambda r: len(r["rows"]))["rows"])  # VAE-only records have fewer
    heads = [n.split(" (")[0] + " (default sampler)" if n.startswith("samples") else n
             for n in names]  # fmt: skip
    out.append("| model | n/class | " + " | ".join(heads) + " | denoising error train / held-out |")
    out.append("|---|---|" + "---|" * len(names) + "---|")
    for r in rows:
        cells = []
        for k in names:
            # the samples row is named after its guidance, which differs between records
            match = [n for n in r["rows"] if n.split(" (")[0] == k.split(" (")[0]]
            v = r["rows"][match[0]] if match else None
            cell = "-" if v is None else f"{v['kid_x1000']:.1f} ({v['fid']:.0f})"
            if v is not None and k.startswith("samples"):  # which guidance: "guidance 2.0" = CFG
                how = match[0].split(", ", 1)[-1].rstrip(")")
                cell += ", " + (how if how.startswith("auto") else how.replace("guidance", "CFG"))
            cells.append(cell)
        e = r.get("denoising_error")  # none for a VAE alone
        model = r.get("label") or r["model_path"] or r["vae_path"]
        errors = f"{e['train']:.3f} / {e['held_out']:.3f}" if e else "-"
        out.append(f"| {model} | {r['num_per_class']} | " + " | ".join(cells) + f" | {errors} |")
    out.append("")
    provenances(out, rows)
    out.append("")


def decoder_section(out: list[str]) -> None:
    title = "Decoder fine-tuning exploration (`bench/explore_decoder.py`)"
    rows = section(out, title, "decoder_explore.jsonl")
    if not rows:
        return
    out.append(
        "Only the shipped VAE's decoder trained on (the latent space fixed), scored by KIDx1000 "
        "against the test split on 100 test photos per class: reconstructions, latents with "
        "0.1 noise, and 200 fixed samples of the shipped model decoded. The packaged result is "
        "`train-vae --finetune-decoder` (the diagnostics above).\n"
    )
    body = []
    for r in rows:
        start, end = r["kid_x1000"][0], r["kid_x1000"][-1]
        steps = end["tag"].rsplit(" ", 1)[-1]
        cells = [f"{start[k]:.1f} → {end[k]:.1f}" for k in ("recon", "noisy0.1", "samples")]
        body.append([r["label"], steps, *cells])
    table(out, ["run", "steps", "reconstruction", "noisy latents", "samples"], body)
    out.append("")
    provenances(out, rows)
    out.append("")


SCORE_HEAD = ["KIDx1000", "FID", "precision", "recall", "class acc.", "memorisation"]


def score_cells(r: dict, memorisation: bool = True) -> list[str]:
    """The scores of a sampler-side exploration record, as table cells (SCORE_HEAD)."""
    cells = [f"{r['kid_x1000']:.1f}", f"{r['fid']:.1f}", f"{r['precision']:.3f}",
             f"{r['recall']:.3f}", f"{r['class_accuracy']:.3f}"]  # fmt: skip
    return [*cells, f"{r['memorisation']:.3f}"] if memorisation else cells


def explore_table(out: list[str], rows: list[dict], head: list[str], cells, **kw) -> None:
    """A table of exploration records (``cells(r)`` the leading cells), then their commands."""
    table(out, [*head, *SCORE_HEAD[: None if kw.get("memorisation", True) else -1]],
          [[*cells(r), *score_cells(r, **kw)] for r in rows])  # fmt: skip
    out.append("")
    provenances(out, rows, per_command=True)
    out.append("")


def guidance_section(out: list[str]) -> None:
    title = "Guidance variants (`bench/explore_guidance.py`)"
    rows = section(out, title, "guidance_explore.jsonl")
    if not rows:
        return
    out.append(
        "Sampler-side only: the same n seeds per class (those of `evaluate`; DPM-Solver++ 20 "
        "unless `sN`), scored against the whole test split. m = model, g = guide, c = class, "
        "0 = null label. `ag W`: m(c) + (W-1)(m(c) - g(c)), the shipped default at W = 3; "
        "`agnull W`: the guide given the null label; `agcfg WA WC`: both the autoguidance and "
        "the classifier-free term; `@LO-HI`: guidance only at timesteps LO..HI (Kynkäänniemi "
        "et al. 2024); `tT`: the starting noise scaled by T.\n"
    )
    explore_table(out, rows, ["model", "variant", "n/class"],
                  lambda r: [r["label"], f"`{r['variant']}`", str(r["num_per_class"])],
                  memorisation=False)  # fmt: skip


def discriminator_guidance_section(out: list[str]) -> None:
    title = "Discriminator guidance (`bench/explore_discriminator_guidance.py`)"
    rows = section(out, title, "discriminator_guidance.jsonl")
    if not rows:
        return
    out.append(
        "Sampler-side, on top of the shipped autoguidance: a small latent discriminator (real "
        "training latents against 1,000 generated per class, noised at t uniform in 1..T) "
        "corrects the score by w grad log(D / (1 - D)) at every step with t <= t_max (Kim et "
        "al. 2023). The same 100 seeds per class as the guidance variants; w = 0 is the "
        "shipped sampler. Held-out accuracy of the discriminator by t: "
        f"{rows[-1]['discriminator']['held_out_accuracy']}.\n"
    )
    explore_table(out, rows, ["model", "w", "t_max"],
                  lambda r: [r["label"], f"{r['weight']:g}", str(r["t_max"])])  # fmt: skip


def rerank_section(out: list[str]) -> None:
    title = "Best-of-K selection (`bench/explore_rerank.py`)"
    rows = section(out, title, "rerank_explore.jsonl")
    if not rows:
        return
    out.append(
        "Sampler-side, on top of the shipped sampler: K candidates per kept image, n = 800 kept "
        "per class, scored against the whole test split. `none`: the plain sampler (the first "
        "n candidates); `vgg`: the top n of the class's K n candidates by p(asked class) of a "
        "logistic probe on VGG16 features fitted on the training split (held-out accuracy "
        f"{rows[-1]['vgg_probe_test_accuracy']:.3f}); `vgg/each`: the best of each image's "
        "own K candidates (what `--select K` does); `latent`: ranked by the VAE's latent "
        "classifier; `knn`: ranked by closeness to the training images in the VGG16 feature "
        "space; `real`: p(real) of a logistic probe telling the training photos from 1,000 "
        "fresh samples per class (other seeds) in the same VGG16 features; `vgg*real`: the "
        "product of the two probabilities. No network of the evaluation selects.\n"
    )
    explore_table(out, rows, ["model", "selector", "K"],
                  lambda r: [r["label"], f"`{r['selector']}`", str(r["pool"])])  # fmt: skip


def gpu_section(out: list[str]) -> None:
    title = "The whole pipeline on one GPU (`bench/gpu_pipeline.py`)"
    rows = section(out, title, "gpu_pipeline.jsonl",
                   empty="No record yet: no session has been lent a GPU since the script was "
                   "written. It is tested on the CPU with `--smoke` (tests/test_gpu_pipeline.py).")  # fmt: skip  # noqa: E501
    for r in rows:
        stages = ", ".join(f"{name} {s['seconds']:.0f} s" for name, s in r["stages"].items())
        out.append(f"- **{r.get('gpu', r['machine'])}**: {r['total_seconds']:.0f} s in all "
                   f"({stages}); weights {r.get('weights_mib', {})}. {provenance(r)}")  # fmt: skip
    if rows:
        out.append("")


def speed_section(out: list[str]) -> None:
    title = "Sampling speed against step count (images/s, decoding included)"
    rows = section(out, title, "diffusion_speed.jsonl")
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r["sampling_images_per_s"]))
    out.append("| recorded | UNet widths x blocks | params | guidance | " + " | ".join(keys) + " |")
    out.append("|---|---|---|---|" + "---|" * len(keys))
    for r in rows:
        u = r["unet_config"]
        speeds = [str(r["sampling_images_per_s"].get(k, "-")) for k in keys]
        guide = (f"autoguidance (guide {r['guide_params'] / 1e6:.2f} M)"
                 if r.get("guide") == "autoguidance"
                 else "distilled (one pass a step)" if r.get("guide") == "distilled"
                 else "CFG")  # fmt: skip
        guide += class_guidance_text(r)
        out.append(
            f"| {recorded(r)} | {tuple(u['channels'])} x {u['blocks_per_level']} | "
            f"{r['unet_params'] / 1e6:.2f} M | {guide} | " + " | ".join(speeds) + " |"
        )
    out.append(
        "\nCFG: two passes of the UNet a step; autoguidance: one of the UNet and one of its "
        "guide; autoguidance + CFG (`--class-guidance`): three. Records:\n"
    )
    provenances(out, rows)
    out.append("")


def variants_section(out: list[str], title: str, name: str, head: list[str], cells,
                     caption: str = "", key: str = "results") -> None:  # fmt: skip
    """A section of an interleaved bench: a table row per variant (``r[key]``'s items) of each
    record, ``cells(r, variant, values)`` its cells, then ``caption`` and the records."""
    rows = section(out, title, name)
    if not rows:
        return
    table(out, head, [cells(r, k, v) for r in rows for k, v in r[key].items()])
    out.append(f"\n{caption + ' ' if caption else ''}Records:\n")
    provenances(out, rows)
    out.append("")


def repa_step_section(out: list[str]) -> None:
    variants_section(
        out, "What representation alignment costs per training step (batch 128, interleaved)",
        "repa_step.jsonl",
        ["recorded", "setting", "projector params", "ms/step (median)", "overhead"],
        lambda r, name, v: [recorded(r), name, f"{v['projector_params'] / 1e6:.2f} M",
                            str(v["median_ms_per_step"]), f"{v['overhead_pct']:+.1f} %"],
    )  # fmt: skip


def diffusion_step_section(out: list[str]) -> None:
    variants_section(
        out, "Memory format and torch.compile for the diffusion training step (interleaved)",
        "diffusion_step.jsonl",
        ["recorded", "UNet widths", "variant", "ms/step (median)", "against eager", "warm-up (s)"],
        lambda r, name, v: [recorded(r), str(tuple(r["unet_config"]["channels"])), name,
                            str(v["median_ms_per_step"]), f"{v['vs_eager_pct']:+.1f} %",
                            str(v["warmup_s"])],
        "The default UNet and batch 128 with REPA, as trained; warm-up is three steps (with "
        "compilation where compiled).",
    )  # fmt: skip


def sampling_format_section(out: list[str]) -> None:
    variants_section(
        out, "Memory format of the loaded networks for sampling (interleaved)",
        "sampling_format.jsonl",
        ["recorded", "model", "format", "images/s", "time against the first",
         "largest pixel difference"],
        lambda r, name, v: [recorded(r), r["model_path"], name, str(v["images_per_s"]),
                            f"{v['vs_first_pct']:+.1f} %", f"{r['max_pixel_diff']:.1e}"],
        "The whole default sampling pipeline (DPM-Solver++ 20 with the model's guide, then the "
        "decoder) for one batch of images (64 unless the command says otherwise), the UNet, "
        "guide and VAE in each memory format; the pixel difference is between the two formats' "
        "images, in [-1, 1] units.",
    )  # fmt: skip


def unet_cost_section(out: list[str]) -> None:
    variants_section(
        out, "What a UNet change costs: training step and sampling pass (interleaved)",
        "unet_cost.jsonl",
        ["recorded", "variant", "params", "train ms/step", "against the first", "forward ms",
         "against the first"],
        lambda r, name, v: [recorded(r), name, f"{v['params'] / 1e6:.2f} M",
                            str(v["train_ms_per_step"]), f"{v['train_vs_first_pct']:+.1f} %",
                            str(v["forward_ms"]), f"{v['forward_vs_first_pct']:+.1f} %"],
        "Variants of the default UNet: the training step at batch 128 with REPA, eager, as "
        "trained; the forward pass without gradients on the sampling batch (a guided step of 64 "
        "images is one such pass).",
        key="unet_variants",
    )  # fmt: skip


def training_section(out: list[str]) -> None:
    out.append("## Training throughput\n")
    out.append("### VAE stage\n")
    out.append("| recorded | run | latent | params | epochs | wall minutes | images/s (median) | "
               "held-out PSNR | probe acc. |\n|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    vae = records("vae.jsonl")
    for r in vae:
        out.append(
            f"| {recorded(r)} | {r['label']} | {'x'.join(map(str, r['latent_shape']))} | "
            f"{r['vae_params'] / 1e6:.2f} M | {r['epochs_done']} | {r['wall_minutes']} | "
            f"{r['train_images_per_s_median']} | {r['val_psnr_last']} | {r['probe_acc_last']} |"
        )
    out.append("")
    provenances(out, vae)
    step = records("vae_step.jsonl")
    if step:
        out.append(f"\nOne training step, batch {step[-1]['batch']} (images/s):\n")
        for name, value in step[-1]["images_per_s"].items():
            out.append(f"- {name}: {value}")
        out.append(f"\n{provenance(step[-1])}")
    out.append("\n### Diffusion stage\n")
    out.append("| recorded | UNet widths x blocks | attention levels | params | latents/s |")
    out.append("|---|---|---|---|---|")
    for r in records("diffusion_speed.jsonl"):
        u = r["unet_config"]
        out.append(
            f"| {recorded(r)} | {tuple(u['channels'])} x {u['blocks_per_level']} | "
            f"{tuple(u['attention_levels'])}"
            f" | {r['unet_params'] / 1e6:.2f} M | {r['train_latents_per_s']} |"
        )
    out.append("\nThe training step of `bench/bench_diffusion.py` (batch 128 unless its command "
               "says otherwise; the commands are under the sampling speed above).")  # fmt: skip
    runs = records("training_runs.jsonl")
    if runs:
        out.append("\n### Full training runs\n")
        out.append("| recorded | stage | run | epochs | minutes (sum of epochs) | minutes on a "
                   "quiet machine (epochs x median) | result |")  # fmt: skip
        out.append("|---|---|---|---|---|---|---|")
        for r in runs:
            length = r["epochs"] if r["epochs"] is not None else f"{r['steps']} steps"
            out.append(f"| {recorded(r)} | {r['stage']} | {r['label']} | {length} | "
                       f"{r['wall_minutes']} | {r.get('quiet_minutes', '-')} | "
                       f"{r['result']} |")  # fmt: skip
        out.append("")
        provenances(out, runs)
    out.append("\n### GPU\n")
    if records("gpu_pipeline.jsonl"):  # the only GPU records (bench/gpu_pipeline.py)
        out.append('Under "The whole pipeline on one GPU" above.\n')
    else:
        out.append(
            "No GPU figures: no session so far has been lent a GPU, and none are estimated here.\n"
        )
    out.append("")


def demo_section(out: list[str]) -> None:
    rows = section(out, "The main job", "demo.jsonl")
    if not rows:
        return
    r = rows[-1]
    out.append(f"`python -m catdog.demo` (shipped weights, both classes, GIFs, denoising path), "
               f"end to end in a fresh process: **{r['seconds']} s**.\n")  # fmt: skip
    out.append(provenance(r) + "\n")


def main() -> None:
    out = [
        "# Benchmarks\n",
        "Generated by `python bench/make_benchmarks.py` from `bench/results/*.jsonl`; every "
        "figure comes from a committed record with its date, machine and command. Quality is "
        "measured with `catdog evaluate` (Inception-v3 pool3 features, torch-fidelity). KID is "
        "the figure to trust at small n; FID is biased upward at small n.\n",
    ]
    quality_section(out)
    diagnostics_section(out)
    decoder_section(out)
    guidance_section(out)
    discriminator_guidance_section(out)
    rerank_section(out)
    gpu_section(out)
    demo_section(out)
    speed_section(out)
    repa_step_section(out)
    diffusion_step_section(out)
    sampling_format_section(out)
    unet_cost_section(out)
    training_section(out)
    (ROOT / "BENCHMARKS.md").write_text("\n".join(out).rstrip() + "\n")
    print(f"wrote {ROOT / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
