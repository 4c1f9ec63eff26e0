"""Run one training stage as one rank (under torchrun) or as a single process, then save this
rank's trained weights to OUT/rank{RANK}.pt, so a test can compare ranks and runs.

    python tests/ddp_worker.py vae|diffusion CONFIG.json OUT_DIR [resume]
"""

import json
import sys
from pathlib import Path

import torch

from catdog import distributed
from catdog.config import DiffusionTrainConfig, VAETrainConfig, from_dict

stage, config_path, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
resume = sys.argv[4:] == ["resume"]
if stage == "vae":
    from catdog.train_vae import train_on

    cfg = from_dict(VAETrainConfig, json.loads(config_path.read_text()))
else:
    from catdog.train_diffusion import train_on

    cfg = from_dict(DiffusionTrainConfig, json.loads(config_path.read_text()))
with distributed.running(cfg.runtime, cfg.batch_size) as rt:
    record, model = train_on(rt, cfg, resume)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, out / f"rank{rt.rank}.pt")
