"""What every training loop shares: starting or resuming a run folder, and per-epoch metrics."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from . import checkpoint, viz
from .config import from_dict, merge, to_dict
from .errors import CatdogError

T = TypeVar("T")
# Fields a resumed run takes from the command line; everything else comes from the saved run.
# save_dir is among them: a copied or moved run folder resumes where it is now.
# cooldown_epochs (diffusion) too: the end of the learning-rate schedule is set with the end of
# the run. A distillation run's length is in steps, and its device is where this session runs.
RUN_CONTROL_FIELDS = ("save_dir", "epochs", "steps", "cooldown_epochs", "max_minutes",
                      "stop_at_epoch", "progress", "runtime", "device")  # fmt: skip
# Of those, the ones that shape the run itself: when the command line does not give them, a
# resumed run keeps its saved values (the preset's would silently change the schedule). The
# runtime's learning-rate scaling is one of them; the rest of the runtime (device, precision,
# accumulation, compile) is where this session runs.
KEPT_UNLESS_GIVEN = ("epochs", "steps", "cooldown_epochs")
RUNTIME_KEPT_UNLESS_GIVEN = ("lr_scaling", "lr_base_batch")
# Where inputs live now, which a resumed run may be pointed at again (a moved VAE, VGG16 file or
# data folder; a distillation's teacher and guide). The VAE, teacher and guide are checked by
# content on resume, so different networks are still refused.
RELOCATABLE = ("vae_path", "vgg_weights", "data.data_dir", "model_path", "guide_path")


def prepare_run(
    cfg: T,
    *,
    resume: bool,
    state_name: str,
    final_name: str,
    state_kind: str,
    what: str,
    given: dict[str, Any] | None = None,
) -> tuple[T, dict[str, Any] | None]:
    """The config to run with and, when resuming, the saved training state.

    A new run refuses a folder that already holds one (nothing is overwritten); a resumed run
    uses its saved config, except for the run-control fields given now. Fields the saved
    config lacks take the config class's ``SAVED_BEFORE`` values, else today's defaults.

    ``given`` is what the command line set (a nested dict of the fields named by flags; None
    when ``cfg`` is a whole config from Python): then ``epochs`` and ``cooldown_epochs`` keep
    their saved values unless given, the ``RELOCATABLE`` paths may be given anew, and any other
    given setting that differs from the saved run is an error rather than silently dropped.
    """
    save_dir = Path(cfg.save_dir)  # type: ignore[attr-defined]
    state_path = save_dir / state_name
    if resume:
        if not state_path.is_file():
            raise CatdogError(f"nothing to resume: {state_path} does not exist")
        state = checkpoint.load(state_path, state_kind)
        # A field added since the run was saved takes the value the run was trained with.
        earlier = getattr(type(cfg), "SAVED_BEFORE", {})
        try:
            saved = from_dict(type(cfg), {**earlier, **state["train_config"]})
        except (TypeError, ValueError) as exc:  # e.g. a field from a newer version of catdog
            raise CatdogError(
                f"{state_path} holds a config this version cannot read ({exc})"
            ) from None
        resumed = resumed_config(saved, cfg, given)
        unit = "epochs" if hasattr(resumed, "epochs") else "steps"  # a run's length, and done
        length, done = getattr(resumed, unit), state.get(unit[:-1], 0)
        if length < done:
            raise CatdogError(f"--{unit} {length} is below the {done} {unit} this run has done; "
                              "give at least that many to continue it")  # fmt: skip
        return resumed, state
    if state_path.exists() or (save_dir / final_name).exists():
        raise CatdogError(
            f"{save_dir} already holds a {what} run; pass --resume to continue it, or choose "
            "another --save_dir"
        )
    checkpoint.check_writable(save_dir)
    return cfg, None


def resumed_config(saved: T, cfg: T, given: dict[str, Any] | None) -> T:
    """The saved run's config with this invocation's run control (see ``prepare_run``)."""
    control = {name: getattr(cfg, name) for name in RUN_CONTROL_FIELDS if hasattr(cfg, name)}
    if given is None:
        return replace(saved, **control)
    before = _flat(to_dict(saved))
    asked = _flat(to_dict(from_dict(type(saved), merge(to_dict(saved), given))))
    changed = [key for key, value in before.items() if asked[key] != value]
    fixed = [k for k in changed if k.split(".")[0] not in RUN_CONTROL_FIELDS]
    refused = [k for k in fixed if k not in RELOCATABLE]
    if refused:
        listed = ", ".join(f"{k} {asked[k]!r} (the run's: {before[k]!r})" for k in refused)
        raise CatdogError(
            f"--resume continues the run with its saved settings, and these differ: {listed}; "
            "drop them, or start a new run in another --save-dir"
        )
    for name in KEPT_UNLESS_GIVEN:
        if name in control and name not in given:
            control[name] = getattr(saved, name)
    if "runtime" in control:
        saved_runtime = saved.runtime  # type: ignore[attr-defined]
        kept = {name: getattr(saved_runtime, name) for name in RUNTIME_KEPT_UNLESS_GIVEN
                if name not in given.get("runtime", {})}  # fmt: skip
        control["runtime"] = replace(control["runtime"], **kept)
    moved = _nested({k: asked[k] for k in fixed})
    return replace(from_dict(type(saved), merge(to_dict(saved), moved)), **control)


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"data": {"data_dir": x}}`` as ``{"data.data_dir": x}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
    """The inverse of ``_flat``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return out


def write_metrics(
    save_dir: Path, history: list[dict], curve_keys: list[str], *, curves: bool = True,
    x: str = "epoch",
) -> None:  # fmt: skip
    """Rewrite metrics.jsonl (atomically) from the run's history and, with ``curves``, the
    loss-curve figure. Drawing the figure takes about 0.5 s on a CPU, a tenth of a diffusion
    epoch there and more than a whole one on a GPU, so runs redraw it at checkpoints only.
    ``x``: the records' key the curves are drawn against."""
    lines = "".join(json.dumps(record) + "\n" for record in history)
    checkpoint.atomic_write_bytes(save_dir / "metrics.jsonl", lines.encode())
    if curves:
        viz.save_loss_curves(save_dir / "loss_curves.png", history, curve_keys, x=x)
