"""Segment bookkeeping: boundaries, the sequential loop, folding segments into the batch."""

import pytest
import torch

from mac_minimal.segmentation import (
    fold_segments,
    scan_segments,
    segment_bounds,
    split_segments,
    unfold_segments,
)


def test_bounds_multiple_and_remainder():
    assert segment_bounds(8, 4) == [(0, 4), (4, 8)]
    assert segment_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]  # last segment shorter, not dropped
    assert segment_bounds(3, 4) == [(0, 3)]
    assert segment_bounds(0, 4) == []


def test_bounds_start_inside_a_segment():
    assert segment_bounds(5, 4, start=3) == [(0, 1), (1, 5)]
    assert segment_bounds(2, 4, start=1) == [(0, 2)]
    assert segment_bounds(6, 4, start=4) == [(0, 4), (4, 6)]


@pytest.mark.parametrize("n,c,start", [(1, 1, 0), (17, 5, 0), (17, 5, 3), (9, 3, 7), (4, 10, 9)])
def test_bounds_cover_and_respect_boundaries(n, c, start):
    bounds = segment_bounds(n, c, start)
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    for (b0, e0), (b1, _) in zip(bounds, bounds[1:]):
        assert e0 == b1
        assert (start + e0) % c == 0  # every inner cut sits on an absolute boundary
    for b, e in bounds:
        assert 1 <= e - b <= c
        assert (start + b) // c == (start + e - 1) // c  # no piece straddles a boundary


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_bad_segment_len(bad):
    with pytest.raises(ValueError, match="segment_len must be an int >= 1"):
        segment_bounds(4, bad)
    with pytest.raises(ValueError, match="segment_len must be an int >= 1"):
        split_segments(torch.zeros(1, 4, 2), bad)


def test_split_concatenates_back():
    x = torch.randn(2, 11, 3)
    pieces = split_segments(x, 4, start=2)
    assert [p.shape[1] for p in pieces] == [2, 4, 4, 1]
    torch.testing.assert_close(torch.cat(pieces, dim=1), x, rtol=0, atol=0)


def test_split_needs_sequence_dim():
    with pytest.raises(ValueError, match=r"shape \(b, n, ...\)"):
        split_segments(torch.zeros(5), 2)


def test_scan_segments_carries_state():
    """A running sum carried across segments equals the cumulative sum of the whole sequence."""
    x = torch.randn(2, 10, 3, dtype=torch.float64)

    def step(piece, total):
        y = total[:, None] + piece.cumsum(dim=1)
        return y, y[:, -1]

    y, total = scan_segments(step, x, torch.zeros(2, 3, dtype=torch.float64), segment_len=4)
    torch.testing.assert_close(y, x.cumsum(dim=1))
    torch.testing.assert_close(total, x.sum(dim=1))
    seen = []
    scan_segments(lambda p, s: (p, seen.append(p.shape[1])), x, None, segment_len=4, start=1)
    assert seen == [3, 4, 3]


def test_fold_unfold_roundtrip_and_layout():
    x = torch.arange(2 * 6 * 1).reshape(2, 6, 1)
    folded = fold_segments(x, 3)
    assert folded.shape == (4, 3, 1)
    torch.testing.assert_close(folded[1, :, 0], x[0, 3:6, 0])  # batch 0, segment 1
    torch.testing.assert_close(folded[2, :, 0], x[1, 0:3, 0])  # batch 1, segment 0
    torch.testing.assert_close(unfold_segments(folded, 2), x)


def test_fold_errors():
    with pytest.raises(ValueError, match="multiple of segment_len=4"):
        fold_segments(torch.zeros(1, 6, 2), 4)
    with pytest.raises(ValueError, match="divisible by batch_size=3"):
        unfold_segments(torch.zeros(4, 2, 1), 3)
