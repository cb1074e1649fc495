import math

import pytest
import torch

from videodiff.models.masking import (build_mask, center_block_size, center_masking, gather_tokens,
                                      merge_tokens, num_visible, random_masking, tube_masking)


def assert_is_partition(m, n):
    b = m.mask.shape[0]
    both = torch.cat([m.ids_keep, m.ids_masked], dim=1).sort(dim=1).values
    assert torch.equal(both, torch.arange(n).expand(b, n))
    assert bool((m.ids_keep[:, 1:] > m.ids_keep[:, :-1]).all())
    assert bool((m.ids_masked[:, 1:] > m.ids_masked[:, :-1]).all())
    assert m.mask.dtype == torch.bool and m.mask.shape == (b, n)
    assert not m.mask.gather(1, m.ids_keep).any() and m.mask.gather(1, m.ids_masked).all()


@pytest.mark.parametrize("grid, ratio, n_keep", [
    ((8, 14, 14), 0.9, 157),   # 0.1 * 1568 = 156.8
    ((1, 14, 14), 0.75, 49),
    ((1, 16, 16), 0.5, 128),
    ((2, 3, 5), 0.5, 15),
    ((1, 2, 2), 0.99, 1),      # at least one visible
    ((1, 2, 2), 0.01, 3),      # at least one masked
])
@pytest.mark.parametrize("kind", ["random", "tube"])
def test_kept_token_count_is_exact_and_keep_plus_masked_is_a_permutation(grid, ratio, n_keep, kind):
    n = math.prod(grid)
    m = build_mask(kind, 3, grid, ratio, "cpu", torch.Generator().manual_seed(0))
    if kind == "tube":
        n_keep = grid[0] * num_visible(grid[1] * grid[2], ratio)
    assert m.ids_keep.shape == (3, n_keep) and m.ids_masked.shape == (3, n - n_keep)
    assert_is_partition(m, n)


def test_num_visible_rounds_half_up():
    assert num_visible(1568, 0.9) == 157
    assert num_visible(10, 0.25) == 8      # 7.5 -> 8 (Python's round would give 8 too)
    assert num_visible(6, 0.75) == 2       # 1.5 -> 2
    assert num_visible(10, 0.75) == 3      # 2.5 -> 3, where round-half-even gives 2


def test_random_masks_differ_across_samples():
    m = random_masking(4, (8, 14, 14), 0.9)
    assert len({tuple(row.tolist()) for row in m.ids_keep}) == 4


def test_tube_mask_is_identical_across_time_and_differs_across_samples():
    t, h, w = 8, 14, 14
    m = tube_masking(4, (t, h, w), 0.9, generator=torch.Generator().manual_seed(0))
    assert m.ids_keep.shape == (4, t * round(0.1 * h * w))
    grid = m.mask.view(4, t, h * w)
    assert torch.equal(grid, grid[:, :1].expand_as(grid))
    assert len({tuple(row.tolist()) for row in grid[:, 0]}) == 4
    assert_is_partition(m, t * h * w)


def test_center_mask_is_centred_block_of_expected_size():
    m = center_masking(2, (1, 16, 16), 0.25)
    want = torch.zeros(16, 16, dtype=torch.bool)
    want[4:12, 4:12] = True  # centre 128x128 of a 256x256 image with 16 px patches
    assert torch.equal(m.mask[0].view(16, 16), want) and torch.equal(m.mask[1], m.mask[0])
    assert m.ids_masked.shape == (2, 64)
    assert_is_partition(m, 256)

    v = center_masking(1, (4, 14, 14), 0.5)
    bh, bw = center_block_size((4, 14, 14), 0.5)
    assert (bh, bw) == (10, 10)  # round(sqrt(0.5) * 14) = round(9.9)
    block = v.mask.view(4, 14, 14)
    assert torch.equal(block, block[:1].expand_as(block))
    assert block[0, 2:12, 2:12].all() and block[0].sum() == 100


def test_same_generator_seed_gives_same_masks():
    for kind in ("random", "tube"):
        a = build_mask(kind, 2, (2, 7, 7), 0.75, generator=torch.Generator().manual_seed(5))
        b = build_mask(kind, 2, (2, 7, 7), 0.75, generator=torch.Generator().manual_seed(5))
        c = build_mask(kind, 2, (2, 7, 7), 0.75, generator=torch.Generator().manual_seed(6))
        assert torch.equal(a.mask, b.mask) and torch.equal(a.ids_keep, b.ids_keep)
        assert not torch.equal(a.mask, c.mask)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5, float("nan")])
@pytest.mark.parametrize("kind", ["random", "tube", "center"])
def test_bad_ratio_raises_naming_the_value(kind, ratio):
    with pytest.raises(ValueError, match=f"got {ratio!r}".replace(".", r"\.")):
        build_mask(kind, 2, (1, 14, 14), ratio)


def test_unknown_kind_and_bad_grid_raise_with_messages():
    with pytest.raises(ValueError, match="'block'"):
        build_mask("block", 2, (1, 14, 14), 0.5)
    with pytest.raises(ValueError, match=r"\(14, 14\)"):
        build_mask("random", 2, (14, 14), 0.5)
    with pytest.raises(ValueError, match="whole"):
        center_masking(1, (1, 4, 4), 0.99)


def test_gather_and_merge_tokens_round_trip():
    x = torch.randn(3, 2 * 4 * 4, 5)
    m = random_masking(3, (2, 4, 4), 0.75, generator=torch.Generator().manual_seed(0))
    visible = gather_tokens(x, m.ids_keep)
    assert visible.shape == (3, 8, 5)
    assert torch.equal(visible[1, 2], x[1, m.ids_keep[1, 2]])
    hidden = gather_tokens(x, m.ids_masked)
    assert torch.equal(merge_tokens(visible, hidden, m.ids_keep, m.ids_masked), x)
