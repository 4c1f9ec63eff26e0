"""The protocol the sampler-side explorations share: a denoiser function as a model, sampled on
fixed seeds and scored against the whole test split (``explore_guidance.py``,
``explore_discriminator_guidance.py``)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from catdog.config import DataConfig
from catdog.data import load_split, to_uint8
from catdog.evaluate import memorisation_rate, memorisation_threshold, score
from catdog.features import cached_extract, extract, load_inception
from catdog.generate import decode_latents, sample_latents
from catdog.metrics import fit_probe

INCEPTION = "../shared/weights/weights-inception-2015-12-05-6726825d.pth"


class Guided(torch.nn.Module):
    """A denoiser function ``fn(x, t, labels)`` as a model: ``sample_latents`` reads ``cfg`` and
    ``null_label`` off it, and draws sub-classes with it (those of ``unet``)."""

    def __init__(self, fn: Callable, unet: torch.nn.Module) -> None:
        super().__init__()
        self.fn, self.cfg, self.null_label = fn, unet.cfg, unet.null_label
        self.draw_subclasses = unet.draw_subclasses

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.fn(x, t, c)


class SeedScorer:
    """``num_per_class`` images per class from fixed seeds (cats 0..n-1, dogs n..2n-1, as
    ``evaluate``), DPM-Solver++ with guidance left to the model, decoded by ``vae`` and scored
    against the whole test split (Inception pool3): KID x1000, FID, precision, recall, the
    accuracy of the class probe (fitted on the training split) and ``evaluate``'s memorisation
    rate (5 % quantile)."""

    def __init__(self, vae: torch.nn.Module, num_per_class: int,
                 data_dir: str = "../shared/data/catdog96") -> None:  # fmt: skip
        data = DataConfig(data_dir=data_dir, image_size=48)
        self.train, self.test = load_split(data, "train"), load_split(data, "test")
        self.vae, self.n = vae, num_per_class
        self.extractor = load_inception(INCEPTION)
        cache = "runs/feature_cache"
        self.f_ref = cached_extract(self.extractor, self.test.images, cache, progress=False)
        self.f_train = cached_extract(self.extractor, self.train.images, cache, progress=False)
        self.probe = fit_probe(self.f_train, self.train.labels, 0)
        self.threshold = memorisation_threshold(self.f_ref[0::2], self.f_train, 0.05)
        self.labels = torch.arange(2).repeat_interleave(num_per_class)

    def __call__(self, model: torch.nn.Module, schedule, steps: int = 20) -> dict[str, float]:
        start = time.monotonic()
        z = sample_latents(model, schedule, self.labels, list(range(2 * self.n)),
                           sampler="dpmpp", steps=steps, guidance=1.0, batch_size=100)  # fmt: skip
        seconds = time.monotonic() - start
        f = extract(self.extractor, to_uint8(decode_latents(self.vae, z)), progress=False)
        s = score(f, self.labels, self.f_ref, self.test.labels)
        predicted = torch.from_numpy(self.probe.predict(f.double().numpy()))
        return {
            "kid_x1000": round(1000 * s["kid"], 2),
            "fid": round(s["fid"], 2),
            "precision": round(s["precision"], 3),
            "recall": round(s["recall"], 3),
            "class_accuracy": round(float((predicted == self.labels).float().mean()), 3),
            "memorisation": round(memorisation_rate(f, self.f_train, self.threshold), 3),
            "sampling_seconds": round(seconds, 1),
        }
