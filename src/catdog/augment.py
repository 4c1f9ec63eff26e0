"""Non-leaking geometric augmentation of training latents, with augmentation labels.

EDM (Karras et al. 2022, appendix) trains a diffusion model on augmented images *and tells it
which augmentation was applied*: the network is conditioned on a label describing the
transform, and sampling asks for the label of no augmentation (zeros). The transforms then
cannot leak into the samples, while the network still learns from every transformed copy,
which is what a data-limited run needs. Here the transforms act on the normalised latent grid
itself, so nothing is re-encoded: a vertical flip, a rotation by a multiple of 90 degrees and
an integer translation (reflect-padded). The decoder never sees a transformed latent.

Hand-written rather than taken from a library: torchvision's transforms draw their own random
parameters and return no description of them, and the label must encode exactly the transform
drawn from the run's shared random stream (so data-parallel ranks agree).

``draw`` gives per-sample transform parameters (zeros = identity), ``apply`` transforms a batch
by them, and ``labels`` turns them into the network's conditioning vector (zeros for the
identity, so an unaugmented sample reads exactly as sampling does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LABEL_DIM = 5  # vertical flip, sin and cos - 1 of the rotation, x and y shift (as fractions)
MAX_SHIFT = 2  # latent pixels (1/6 of a 12x12 latent)
# sin and cos - 1 of 0, 1, 2 and 3 quarter turns, exactly (so the identity reads as zeros)
_SIN, _COS_M1 = torch.tensor([0.0, 1.0, 0.0, -1.0]), torch.tensor([0.0, -1.0, -2.0, -1.0])


def draw(n: int, prob: float, generator: torch.Generator) -> torch.Tensor:
    """Transform parameters (n, 4) as integers: vertical flip (0/1), quarter turns (0..3), x and
    y shift (-MAX_SHIFT..MAX_SHIFT). Each sample is augmented with probability ``prob`` (then
    every part is drawn uniformly, the identity included) and otherwise left as it is."""
    augmented = torch.rand(n, generator=generator) < prob
    params = torch.stack([
        torch.randint(0, 2, (n,), generator=generator),
        torch.randint(0, 4, (n,), generator=generator),
        torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (n,), generator=generator),
        torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (n,), generator=generator),
    ], dim=1)  # fmt: skip
    return params * augmented[:, None]


def labels(params: torch.Tensor) -> torch.Tensor:
    """The conditioning vector (n, LABEL_DIM) of each transform; zeros for the identity."""
    flip, quarter, dx, dy = params.cpu().unbind(1)
    shift = torch.stack([dx, dy], dim=1) / MAX_SHIFT
    return torch.cat([torch.stack([flip.float(), _SIN[quarter], _COS_M1[quarter]], dim=1), shift],
                     dim=1)  # fmt: skip


def apply(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """``x`` (n, C, H, W) with each sample transformed by its row of ``params``: vertical flip,
    then rotation (counter-clockwise quarter turns), then the shift (reflect padding)."""
    out = x.clone()
    for i in params.any(dim=1).nonzero().flatten().tolist():
        flip, quarter, dx, dy = params[i].tolist()
        z = x[i]
        if flip:
            z = z.flip(-2)
        z = torch.rot90(z, quarter, dims=(-2, -1))
        if dx or dy:
            h, w = z.shape[-2:]
            padded = F.pad(z[None], (MAX_SHIFT,) * 4, mode="reflect")[0]
            top, left = MAX_SHIFT - dy, MAX_SHIFT - dx
            z = padded[..., top : top + h, left : left + w]
        out[i] = z
    return out
