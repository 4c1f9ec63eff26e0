"""What every training loop shares: starting or resuming a run folder, and per-epoch metrics."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from . import checkpoint, viz
from .config import from_dict
from .errors import CatdogError

T = TypeVar("T")
# Fields a resumed run takes from the command line; everything else comes from the saved run.
# save_dir is among them: a copied or moved run folder resumes where it is now.
# cooldown_epochs (diffusion) too: the end of the learning-rate schedule is set with the end of
# the run.
RUN_CONTROL_FIELDS = ("save_dir", "epochs", "cooldown_epochs", "max_minutes", "stop_at_epoch",
                      "progress", "runtime")  # fmt: skip


def prepare_run(
    cfg: T, *, resume: bool, state_name: str, final_name: str, state_kind: str, what: str
) -> tuple[T, dict[str, Any] | None]:
    """The config to run with and, when resuming, the saved training state.

    A new run refuses a folder that already holds one (nothing is overwritten); a resumed run
    uses its saved config, except for the run-control fields given now. Fields the saved
    config lacks take the config class's ``SAVED_BEFORE`` values, else today's defaults.
    """
    save_dir = Path(cfg.save_dir)  # type: ignore[attr-defined]
    state_path = save_dir / state_name
    if resume:
        if not state_path.is_file():
            raise CatdogError(f"nothing to resume: {state_path} does not exist")
        state = checkpoint.load(state_path, state_kind)
        # A field added since the run was saved takes the value the run was trained with.
        earlier = getattr(type(cfg), "SAVED_BEFORE", {})
        saved = from_dict(type(cfg), {**earlier, **state["train_config"]})
        given = {name: getattr(cfg, name) for name in RUN_CONTROL_FIELDS if hasattr(cfg, name)}
        return replace(saved, **given), state
    if state_path.exists() or (save_dir / final_name).exists():
        raise CatdogError(
            f"{save_dir} already holds a {what} run; pass --resume to continue it, or choose "
            "another --save_dir"
        )
    return cfg, None


def write_metrics(
    save_dir: Path, history: list[dict], curve_keys: list[str], *, curves: bool = True
) -> None:
    """Rewrite metrics.jsonl (atomically) from the run's history and, with ``curves``, the
    loss-curve figure. Drawing the figure takes about 0.5 s on a CPU, a tenth of a diffusion
    epoch there and more than a whole one on a GPU, so runs redraw it at checkpoints only."""
    lines = "".join(json.dumps(record) + "\n" for record in history)
    checkpoint.atomic_write_bytes(save_dir / "metrics.jsonl", lines.encode())
    if curves:
        viz.save_loss_curves(save_dir / "loss_curves.png", history, curve_keys)
