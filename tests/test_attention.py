"""The shared attention pieces: fused attention equals the plain formula, the written-out weights
are the ones SDPA uses, and the head split is undone by the merge."""

import math

import torch
from torch.testing import assert_close

from mac_minimal.attention import (attention_weights, causal_attention, masked_attention, merge_heads,
                                   split_heads)
from mac_minimal.persistent import causal_mask_with_prefix

DT = torch.float64
TIGHT = dict(rtol=1e-12, atol=1e-12)


def reference_attention(q, k, v):
    """softmax(q k^T / sqrt(e) with future keys masked) v, one query row at a time."""
    rows = []
    for i in range(q.shape[2]):
        scores = q[:, :, i : i + 1] @ k[:, :, : i + 1].transpose(-1, -2) / math.sqrt(q.shape[-1])
        rows.append(scores.softmax(-1) @ v[:, :, : i + 1])
    return torch.cat(rows, dim=2)


def test_causal_attention_equals_row_by_row_reference_with_gradients():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 4, dtype=DT, requires_grad=True) for _ in range(3))
    out, ref = causal_attention(q, k, v), reference_attention(q, k, v)
    assert_close(out, ref, **TIGHT)
    weights = torch.randn_like(out)
    grads = torch.autograd.grad((out * weights).sum(), (q, k, v))
    grads_ref = torch.autograd.grad((ref * weights).sum(), (q, k, v))
    for g, g_ref in zip(grads, grads_ref):
        assert_close(g, g_ref, **TIGHT)


def test_masked_attention_with_the_causal_mask_is_causal_attention():
    q, k, v = (torch.randn(2, 3, 6, 4, dtype=DT) for _ in range(3))
    assert_close(masked_attention(q, k, v, causal_mask_with_prefix(6, 0)), causal_attention(q, k, v), **TIGHT)


def test_written_out_weights_are_the_ones_masked_attention_uses():
    q = torch.randn(2, 3, 5, 4, dtype=DT)
    k, v = torch.randn(2, 3, 8, 4, dtype=DT), torch.randn(2, 3, 8, 4, dtype=DT)
    mask = causal_mask_with_prefix(5, 3)                              # (5, 3 + 5)
    w = attention_weights(q, k, mask)
    assert w.shape == (2, 3, 5, 8)
    assert_close(w.sum(-1), torch.ones(2, 3, 5, dtype=DT), **TIGHT)
    assert torch.all(w[..., ~mask] == 0)
    assert_close(w @ v, masked_attention(q, k, v, mask), **TIGHT)


def test_merge_heads_undoes_split_heads():
    x = torch.randn(2, 7, 12)
    heads = split_heads(x, 3)
    assert heads.shape == (2, 3, 7, 4)
    assert torch.equal(heads[:, 1], x[..., 4:8])                     # head 1 = features 4 .. 7
    assert torch.equal(merge_heads(heads), x)
