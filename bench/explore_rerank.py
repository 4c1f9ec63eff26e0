"""Exploration of sample selection (rejection by a classifier), sampler-side only: draw K
candidates per requested image with the shipped sampler and keep the n per class that a
selector ranks highest. No training; no network used in the evaluation is used to select.

Selectors (each ranks the K*n candidates of a class and keeps the top n):

- ``none``: the first n candidates of each class (the plain sampler, the control);
- ``vgg``: p(asked class) of a logistic probe on VGG16 features (relu4_3 and relu5_3, globally
  average-pooled, images upsampled 2x: ``selector.ClassSelector.features``), fitted on the
  training split and its flips;
- ``latent``: p(asked class) of the VAE's own latent classifier (trained with the VAE);
- ``real`` and ``vgg*real`` (with ``--realism N``): p(real) of a linear probe that tells the
  training photos from N fresh samples per class in the same VGG16 features, alone and times
  ``vgg``'s p(asked class);
- ``knn``: realism, the mean distance to the 3 nearest training images in the same VGG16
  feature space (smallest kept); a copy detector would rank copies first, so the memorisation
  rate is the check on it.

``NAME/each`` keeps the best of each image's own K candidates instead of the top n of the
class's pool (what a per-seed sampler option does).

Every selected set is scored like ``evaluate`` (Inception pool3 against the whole test split):
KID x1000, FID, precision, recall, the Inception probe's class accuracy (fitted on the training
split), memorisation. The pool's Inception features are computed once; K = 1 .. K_max reuse
the first K*n candidates of each class.

    python bench/explore_rerank.py --num-per-class 800 --pool 4
"""

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, "src")
sys.path.insert(0, "bench")
from common import append_record, record_header  # noqa: E402

from catdog.config import DataConfig, EvaluateConfig  # noqa: E402
from catdog.data import load_split, to_float  # noqa: E402
from catdog.evaluate import (  # noqa: E402
    _load_model,
    generate_images,
    memorisation_rate,
    memorisation_threshold,
    score,
)
from catdog.features import cached_extract, extract, load_inception  # noqa: E402
from catdog.losses import load_vgg16_features  # noqa: E402
from catdog.metrics import fit_probe  # noqa: E402
from catdog.selector import ClassSelector  # noqa: E402

INCEPTION = "../shared/weights/weights-inception-2015-12-05-6726825d.pth"
VGG = "../shared/weights/vgg16_features_imagenet1k_v1.pth"

p = argparse.ArgumentParser()
p.add_argument("--model-path", default="src/catdog/weights/catdog_diffusion.safetensors")
p.add_argument("--num-per-class", type=int, default=800)
p.add_argument("--pool", type=int, default=4, help="K_max: candidates per kept image")
p.add_argument("--selectors", default="none,vgg,vgg/each,latent,knn")
p.add_argument("--label", default="shipped weights")
p.add_argument(
    "--realism",
    type=int,
    default=0,
    help="N > 0: fit a real-vs-generated probe on N fresh samples per class (seeds "
    "from 10^7) against the training photos, for the real and vgg*real selectors",
)
p.add_argument(
    "--reuse",
    default=None,
    help="pool.pt of an earlier run on the same pool: reuse its images and Inception features",
)
a = p.parse_args()
n, k_max = a.num_per_class, a.pool

# ---------------------------------------------------------------- the candidate pool
cfg = EvaluateConfig(model_path=a.model_path, num_per_class=k_max * n, progress=True)
unet, schedule, vae, _, guide, _, _ = _load_model(cfg)
earlier = torch.load(a.reuse) if a.reuse else None
start = time.monotonic()
if earlier is None or "images" not in earlier:
    pool = generate_images(unet, schedule, vae, cfg, guide)  # cats first, then dogs
    sampling_s = round(time.monotonic() - start, 1)
else:  # as drawn then (same seeds and sampler); only the VGG ranks are recomputed and checked
    pool = SimpleNamespace(images=earlier["images"], labels=earlier["labels"])
    sampling_s = None  # recorded with the earlier run
print(f"pool of {len(pool.labels)}, sampled in {sampling_s} s", flush=True)

data = DataConfig(data_dir="../shared/data/catdog96", image_size=48)
train, test = load_split(data, "train"), load_split(data, "test")


# ---------------------------------------------------------------- selector features
def vgg_features(features: ClassSelector, images: torch.Tensor) -> torch.Tensor:
    """The selector's pooled VGG16 features (catdog.selector) of uint8 images."""
    return features.features(to_float(images))


vgg = ClassSelector(load_vgg16_features(VGG))  # its features only; the head is unused here
v_train = vgg_features(vgg, torch.cat([train.images, train.images.flip(-1)]))
v_labels = torch.cat([train.labels, train.labels])
v_probe = fit_probe(v_train, v_labels, 0)
v_test_predicted = torch.from_numpy(
    v_probe.predict(vgg_features(vgg, test.images).double().numpy())
)
v_test_acc = float((v_test_predicted == test.labels).float().mean())
print(f"VGG probe accuracy on the test split: {v_test_acc:.3f}", flush=True)
v_pool = vgg_features(vgg, pool.images)
p_vgg = torch.from_numpy(v_probe.predict_proba(v_pool.double().numpy()))
p_vgg = p_vgg.gather(1, pool.labels[:, None]).squeeze(1)


@torch.no_grad()
def latent_probability() -> torch.Tensor:
    z = torch.cat([vae.encode(to_float(c))[0] for c in pool.images.split(256)])
    logits = vae.classifier(z.flatten(1))
    return logits.softmax(1).gather(1, pool.labels[:, None]).squeeze(1)


p_latent = latent_probability()
knn = torch.cdist(v_pool, v_train).topk(3, largest=False).values.mean(1)
ranks = {"vgg": p_vgg, "latent": p_latent, "knn": -knn}
if a.realism:
    # Discriminator rejection sampling in spirit (Azadi et al. 2019): a linear probe tells the
    # training photos (and flips) from fresh samples; candidates are ranked by p(real).
    fake_cfg = EvaluateConfig(model_path=a.model_path, num_per_class=a.realism, seed=10**7,
                              guidance=cfg.guidance, progress=True)  # fmt: skip
    fake = generate_images(unet, schedule, vae, fake_cfg, guide)
    v_fake = vgg_features(vgg, fake.images)
    real_probe = fit_probe(torch.cat([v_train, v_fake]),
                           torch.cat([torch.ones(len(v_train)), torch.zeros(len(v_fake))]).long(),
                           0)  # fmt: skip
    p_real = torch.from_numpy(real_probe.predict_proba(v_pool.double().numpy())[:, 1]).float()
    ranks["real"], ranks["vgg*real"] = p_real, p_vgg * p_real

# ---------------------------------------------------------------- scoring
extractor = load_inception(INCEPTION)
cache = "runs/feature_cache"
f_ref = cached_extract(extractor, test.images, cache, progress=False)
f_train = cached_extract(extractor, train.images, cache, progress=False)
i_probe = fit_probe(f_train, train.labels, 0)
threshold = memorisation_threshold(f_ref[0::2], f_train, 0.05)
if earlier is not None:
    assert torch.equal(earlier["labels"], pool.labels)
    torch.testing.assert_close(earlier["ranks"]["vgg"], ranks["vgg"])  # the same images
    f_pool = earlier["f_pool"]
else:
    f_pool = extract(extractor, pool.images, progress=True)
Path("runs/rerank").mkdir(parents=True, exist_ok=True)
torch.save({"labels": pool.labels, "f_pool": f_pool, "ranks": ranks, "images": pool.images,
            "v_pool": v_pool}, "runs/rerank/pool.pt")  # fmt: skip


def select(name: str, k: int) -> torch.Tensor:
    """Top n of the class's first k*n candidates, or with ``/each`` the best of each image's
    own k candidates (image i of a class: candidates i, i + n, .., i + (k-1) n), which keeps
    every kept image a function of its own seeds."""
    keep = []
    for c in (0, 1):
        candidates = torch.arange(c * k_max * n, c * k_max * n + k * n)
        if name == "none":
            keep.append(candidates[:n])
        elif name.endswith("/each"):
            groups = candidates.view(k, n)  # column i: image i's candidates
            best = ranks[name[: -len("/each")]][groups].argmax(0)
            keep.append(groups.gather(0, best[None]).squeeze(0))
        else:
            keep.append(candidates[ranks[name][candidates].topk(n).indices.sort().values])
    return torch.cat(keep)


labels = torch.arange(2).repeat_interleave(n)
for name in a.selectors.split(","):
    for k in [1] if name == "none" else range(2, k_max + 1):
        idx = select(name, k)
        f = f_pool[idx]
        s = score(f, labels, f_ref, test.labels)
        predicted = torch.from_numpy(i_probe.predict(f.double().numpy()))
        row = {
            "selector": name, "pool": k, "num_per_class": n,
            "kid_x1000": round(1000 * s["kid"], 2), "fid": round(s["fid"], 2),
            "precision": round(s["precision"], 3), "recall": round(s["recall"], 3),
            "class_accuracy": round(float((predicted == labels).float().mean()), 3),
            "memorisation": round(memorisation_rate(f, f_train, threshold), 3),
        }  # fmt: skip
        print(json.dumps(row), flush=True)
        append_record("rerank_explore.jsonl", {**record_header(), "label": a.label,
                      "vgg_probe_test_accuracy": round(v_test_acc, 3),
                      "pool_sampling_seconds": sampling_s, **row})  # fmt: skip
