"""Multi-head softmax attention: the pieces every attention layer of the book shares.

A layer (chapters 5, 6, 8) projects its input to queries, keys and values of width d, cuts each
into h heads of width e = d / h (:func:`split_heads`), rotates queries and keys
(:mod:`mac_minimal.rotary`), attends, and puts the heads side by side again
(:func:`merge_heads`) before its output projection. Per head (Vaswani et al. 2017, eq. 1):

    Attn(q, k, v) = softmax(q k^T / sqrt(e) + mask) v,   mask 0 where allowed, -inf elsewhere

:func:`masked_attention` takes an explicit boolean mask, for layers whose keys are more than
the sequence (persistent slots, retrieved memory); :func:`causal_attention` is the plain causal
case, which a GPU runs with flash attention; :func:`attention_weights` writes the softmax out,
for plots and to show what SDPA computes. Masks follow SDPA's convention: True = may attend.

Shapes: b batch, h heads, n queries, m keys, e head width, d = h * e model width.
"""

import math

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

__all__ = ["split_heads", "merge_heads", "masked_attention", "causal_attention", "attention_weights"]


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(b, n, d) -> (b, h, n, e): the width cut into ``heads`` heads of width e = d / h."""
    return rearrange(x, "b n (h e) -> b h n e", h=heads)


def merge_heads(x: Tensor) -> Tensor:
    """(b, h, n, e) -> (b, n, d): the heads side by side again, the inverse of :func:`split_heads`."""
    return rearrange(x, "b h n e -> b n (h e)")


def masked_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """``softmax(q k^T / sqrt(e) + mask) v``: q (b, h, n, e), k and v (b, h, m, e), a boolean mask
    (n, m), True = may attend -> (b, h, n, e). One call to ``scaled_dot_product_attention``."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal attention, (b, h, n, e) x3 -> (b, h, n, e): query i sees keys 0 .. i.

    ``is_causal=True`` instead of a mask: on a GPU, SDPA then runs flash attention and never
    materialises the (n, n) score matrix; on a CPU it is the plain formula.
    """
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def attention_weights(q: Tensor, k: Tensor, mask: Tensor) -> Tensor:
    """The weights :func:`masked_attention` uses, written out: ``softmax(q k^T / sqrt(e) + mask)``,
    (b, h, n, m). A masked key gets weight exactly 0; ``attention_weights(q, k, mask) @ v`` is
    ``masked_attention(q, k, v, mask)``.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])        # (b, h, n, m)
    return scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
