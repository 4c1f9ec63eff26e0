import pytest
import torch
import torch.nn.functional as F

from catdog import subclasses
from catdog.errors import CatdogError


def _blobs(centres: torch.Tensor, per: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    points = centres.repeat_interleave(per, 0)
    return F.normalize(points + 0.05 * torch.randn(points.shape, generator=generator), dim=1)


def test_clusters_are_found_within_each_class_with_their_frequencies():
    centres = F.normalize(torch.eye(4, 6), dim=1)
    # Class 0: 30 points near centre 0 and 10 near centre 1; class 1: 20 near 2, 20 near 3.
    x = torch.cat([_blobs(centres[:1], 30), _blobs(centres[1:2], 10), _blobs(centres[2:], 20)])
    labels = torch.tensor([0] * 40 + [1] * 40)
    split = subclasses.fit(x, labels, 2, seed=0)
    assert split.centroids.shape == (2, 2, 6)
    fine = split.assign(x, labels)
    prior = subclasses.frequencies(fine, 2, 2)
    assert sorted(prior[0].tolist()) == [0.25, 0.75] and prior[1].tolist() == [0.5, 0.5]
    assert (fine // 2 == labels).all()  # a sub-class always lies within the row's class
    for block in (fine[:30], fine[30:40], fine[40:60], fine[60:]):
        assert len(block.unique()) == 1  # each blob is one cluster
    assert len(fine.unique()) == 4
    # A new point goes to the nearest cluster of its own class, whatever is nearer elsewhere.
    near_2 = F.normalize(centres[2:3] + 0.01, dim=1)
    assert split.assign(near_2, torch.tensor([1])).item() == fine[40].item()
    assert split.assign(near_2, torch.tensor([0])).item() // 2 == 0
    with pytest.raises(CatdogError, match="5 sub-classes need at least 5 images of class 0"):
        subclasses.fit(x[:4], labels[:4], 5, seed=0)


def test_an_image_and_its_mirror_share_pooled_features():
    maps = torch.rand(2 * 2 * 3, 5, 2, 2)  # 2 copies of 3 images, each block then its mirror
    rows = subclasses.mirror_pooled(maps, 3)
    assert rows.shape == (6, 5)
    torch.testing.assert_close(rows.norm(dim=1), torch.ones(6))
    means = maps.mean((2, 3))
    expected = F.normalize(F.normalize(means[7], dim=0) + F.normalize(means[10], dim=0), dim=0)
    torch.testing.assert_close(rows[3 + 1], expected)  # copy 1, image 1: rows 7 and 10


def test_frequencies_count_each_class_apart_and_an_empty_class_is_uniform():
    fine = torch.tensor([0, 0, 2, 1, 2, 2])  # K = 3: class 0 has sub-classes 0, 0, 2, 1, 2, 2
    prior = subclasses.frequencies(fine, num_classes=2, k=3)
    torch.testing.assert_close(prior[0], torch.tensor([2.0, 1.0, 3.0]) / 6)
    torch.testing.assert_close(prior[1], torch.full((3,), 1 / 3))  # no rows of class 1
