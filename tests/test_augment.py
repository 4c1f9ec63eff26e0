import torch

from catdog import augment


def test_identity_is_untouched_and_reads_as_zeros():
    x = torch.randn(3, 2, 6, 6)
    params = torch.zeros(3, 4, dtype=torch.long)
    assert torch.equal(augment.apply(x, params), x)
    assert torch.equal(augment.labels(params), torch.zeros(3, augment.LABEL_DIM))


def test_each_transform_is_the_one_its_label_names():
    x = torch.arange(2 * 6 * 6, dtype=torch.float32).reshape(1, 2, 6, 6)
    flip = augment.apply(x, torch.tensor([[1, 0, 0, 0]]))
    assert torch.equal(flip, x.flip(-2))
    turned = augment.apply(x, torch.tensor([[0, 1, 0, 0]]))
    assert torch.equal(turned, torch.rot90(x, 1, dims=(-2, -1)))
    # A shift of +1 in x and -2 in y: content moves right by 1 and up by 2, edges reflected.
    shifted = augment.apply(x, torch.tensor([[0, 0, 1, -2]]))[0]
    assert torch.equal(shifted[:, :4, 1:], x[0, :, 2:, :5])
    assert torch.equal(shifted[:, :4, 0], x[0, :, 2:, 1])  # reflect padding, not wrap-around
    assert torch.equal(shifted[:, 4:, 1:], x[0, :, [4, 3], :5])  # rows 6 and 7 reflect to 4, 3
    # Transforms compose in order: flip, turn, shift.
    both = augment.apply(x, torch.tensor([[1, 3, 0, 0]]))
    assert torch.equal(both, torch.rot90(x.flip(-2), 3, dims=(-2, -1)))
    # Labels: flip, sin and cos - 1 of the angle, the shifts as fractions of the largest.
    got = augment.labels(torch.tensor([[1, 1, 2, -1], [0, 2, 0, 0]]))
    torch.testing.assert_close(got, torch.tensor([[1.0, 1.0, -1.0, 1.0, -0.5],
                                                  [0.0, 0.0, -2.0, 0.0, 0.0]]))  # fmt: skip


def test_draws_follow_the_probability_and_the_stream():
    never = augment.draw(500, 0.0, torch.Generator().manual_seed(0))
    assert not never.any()
    drawn = augment.draw(4000, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(drawn, augment.draw(4000, 0.3, torch.Generator().manual_seed(0)))
    changed = drawn.any(1).float().mean().item()
    # 30 % are drawn; of those, 1 in 2 * 4 * 5 * 5 = 200 draws the identity.
    assert 0.27 < changed < 0.33
    assert drawn[:, 0].max() == 1 and drawn[:, 1].max() == 3
    assert drawn[:, 2:].abs().max() == augment.MAX_SHIFT
    x = torch.randn(len(drawn), 2, 12, 12)
    out = augment.apply(x, drawn)
    assert out.shape == x.shape
    untouched = ~drawn.any(1)
    assert torch.equal(out[untouched], x[untouched])
