"""Sliding-window attention (MAG's and MAL's SW-Attn, SW-Attn*): the mask and the layer against plain
loops, streaming in pieces == one call, errors."""

import math

import pytest
import torch
from torch.testing import assert_close

from mac_minimal.persistent import causal_mask_with_prefix, sliding_window_mask_with_prefix
from mac_minimal.rotary import apply_rotary
from mac_minimal.sliding_window import SlidingWindowAttention, SlidingWindowState

DT = torch.float64
TIGHT = dict(rtol=1e-10, atol=1e-12)
B, D, H = 2, 16, 2


def make(window: int = 3, seed: int = 0) -> SlidingWindowAttention:
    torch.manual_seed(seed)
    return SlidingWindowAttention(D, H, window).to(DT)


def inputs(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(B, n, D, dtype=DT, generator=torch.Generator().manual_seed(seed))


# --- the mask ------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_q, n_p, window, n_k", [(1, 0, 1, None), (6, 0, 2, None), (4, 3, 3, None),
                                                    (3, 2, 4, 7), (5, 1, 1, 9), (6, 2, 10, 6)])
def test_sliding_window_mask_matches_a_loop(n_q, n_p, window, n_k):
    mask = sliding_window_mask_with_prefix(n_q, n_p, window, n_k)
    n_k = n_q if n_k is None else n_k
    assert mask.shape == (n_q, n_p + n_k) and mask.dtype == torch.bool
    for i in range(n_q):
        s = n_k - n_q + i                                    # the query's index in the sequence
        for j in range(n_p + n_k):
            allowed = j < n_p or s - window < j - n_p <= s    # the prefix, itself and the window - 1 before it
            assert bool(mask[i, j]) == allowed, (i, j)


def test_a_window_as_long_as_the_keys_is_the_causal_mask():
    assert torch.equal(sliding_window_mask_with_prefix(4, 2, 7, 7), causal_mask_with_prefix(4, 2, 7))


def test_sliding_window_mask_errors():
    with pytest.raises(ValueError, match=r"window must be an int >= 1, got 0"):
        sliding_window_mask_with_prefix(3, 1, 0)
    with pytest.raises(ValueError, match=r"n_keys >= n_queries"):
        sliding_window_mask_with_prefix(4, 1, 2, 3)


# --- the layer -----------------------------------------------------------------------------------

def loop_reference(attn: SlidingWindowAttention, x: torch.Tensor, start: int, prefix: torch.Tensor | None):
    """One query at a time: softmax over the prefix (positions 0 .. P-1) and the keys of tokens
    t - window + 1 .. t of x, x's tokens at positions start, start + 1, ..."""
    b, n, d = x.shape
    e = d // attn.heads
    heads = lambda t: t.view(b, -1, attn.heads, e).transpose(1, 2)                # (b, H, m, e)
    positions = torch.arange(start, start + n)
    q = apply_rotary(heads(attn.to_q(x)), positions)
    k, v = (heads(t) for t in attn.to_kv(x).split(d, dim=-1))
    k = apply_rotary(k, positions)
    pk = pv = x.new_zeros(b, attn.heads, 0, e)
    if prefix is not None:
        p = prefix.expand(b, -1, -1)
        pk, pv = (heads(t) for t in attn.to_kv(p).split(d, dim=-1))
        pk = apply_rotary(pk, torch.arange(prefix.shape[0]))
    out = torch.zeros(b, attn.heads, n, e, dtype=x.dtype)
    for t in range(n):
        first = max(0, t - attn.window + 1)
        keys = torch.cat((pk, k[:, :, first:t + 1]), dim=2)
        values = torch.cat((pv, v[:, :, first:t + 1]), dim=2)
        w = torch.softmax(torch.einsum("bhe,bhje->bhj", q[:, :, t], keys) / math.sqrt(e), dim=-1)
        out[:, :, t] = torch.einsum("bhj,bhje->bhe", w, values)
    return attn.to_out(out.transpose(1, 2).reshape(b, n, d))


@pytest.mark.parametrize("window", [1, 3, 20])
@pytest.mark.parametrize("with_prefix", [False, True])
def test_layer_matches_a_loop(window, with_prefix):
    attn = make(window)
    x = inputs(9)
    prefix = torch.randn(3, D, dtype=DT) if with_prefix else None
    start = 3 if with_prefix else 0
    y, state = attn(x, attn.init_state(B, position=start), prefix=prefix)
    assert_close(y, loop_reference(attn, x, start, prefix), **TIGHT)
    assert state.position == start + 9 and state.keys.shape == (B, H, min(window - 1, 9), D // H)


@pytest.mark.parametrize("cuts", [[0, 3, 8, 9, 16], list(range(17)), [0, 16]])
def test_pieces_equal_one_call(cuts):
    attn = make(window=4)
    x, prefix = inputs(16), torch.randn(2, D, dtype=DT)
    whole, end = attn(x, attn.init_state(B, position=2), prefix=prefix)
    state, pieces = attn.init_state(B, position=2), []
    for a, b in zip(cuts, cuts[1:]):
        y, state = attn(x[:, a:b], state, prefix=prefix)
        pieces.append(y)
    assert_close(torch.cat(pieces, dim=1), whole, **TIGHT)
    assert_close(state.keys, end.keys, **TIGHT)
    assert state.position == end.position == 18
    remembered = attn.remember(x[:, :9], attn.init_state(B, position=2))       # the cache, no outputs
    assert_close(remembered.keys, attn(x[:, :9], attn.init_state(B, position=2), prefix=prefix)[1].keys, **TIGHT)


def test_layer_errors():
    attn = make()
    with pytest.raises(ValueError, match=r"x must have shape \(b, n >= 1, d=16\), got \(2, 5\)"):
        attn(torch.zeros(2, 5, dtype=DT))
    with pytest.raises(ValueError, match=r"x must have shape \(b, n >= 1, d=16\), got \(2, 0, 16\)"):
        attn(torch.zeros(2, 0, D, dtype=DT))
    with pytest.raises(ValueError, match=r"x has batch size 3 but the state holds 2"):
        attn(inputs(2)[:1].expand(3, -1, -1), attn.init_state(B))
    with pytest.raises(TypeError, match=r"SlidingWindowState or None, got tuple"):
        attn(inputs(2), (1, 2))
    with pytest.raises(ValueError, match=r"window must be an int >= 1, got 0"):
        SlidingWindowAttention(D, H, 0)
    with pytest.raises(ValueError, match=r"position must be an int >= 0, got -1"):
        attn.init_state(B, position=-1)
    assert isinstance(attn.init_state(B), SlidingWindowState)
