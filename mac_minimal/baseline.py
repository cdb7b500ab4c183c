"""The O(n^2) reference of chapter 8: a plain causal transformer with full attention.

Every token attends to every earlier token of the whole sequence, so it needs no memory to
recall a fact from far back: it is the accuracy MAC should approach, at a cost that grows with
``n^2`` where MAC's grows with ``n * segment_len``. Nothing here is new; it is the standard
pre-norm decoder (Vaswani et al. 2017, with the norm moved before each sublayer as in GPT-2),
written small and plain so the comparison is about memory, not about tricks:

* token embedding, then ``depth`` blocks ``x = x + Attn(LN(x))``, ``x = x + MLP(LN(x))``,
  then a final LayerNorm and a linear head to ``vocab_size`` logits;
* positions by rotary embedding on queries and keys (:mod:`mac_minimal.rotary`, the same one
  the MAC model uses) or by a learned absolute position table;
* attention by :func:`mac_minimal.attention.causal_attention` (SDPA with ``is_causal=True``),
  which dispatches to a fused (flash / memory-efficient) kernel on a GPU.

``forward(tokens, state=None) -> (logits, None)`` has the signature of ``MACTransformer`` so the
trainer can treat all models alike; full attention carries no state between calls.
Shapes: ``b`` batch, ``n`` sequence, ``d`` model dim, ``h`` heads, ``e`` head dim (d / h).
"""

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mac_minimal.attention import causal_attention, merge_heads, split_heads
from mac_minimal.checks import require_int, require_positive_int, require_rotary_heads, require_tokens
from mac_minimal.layers import FeedForward
from mac_minimal.rotary import ROTARY_BASE, rotary_table, rotate_pairs

__all__ = ["FullAttentionConfig", "FullAttentionTransformer"]

POSITIONS = ("rotary", "learned")


@dataclass
class FullAttentionConfig:
    """Size of the full-attention reference.

    ``mlp_hidden`` is the width of each block's MLP (0 means ``4 * dim``; the trainer keeps 0 and
    matches parameter counts by the width ``dim``). ``max_seq_len`` bounds the learned position
    table and is unused with rotary positions.
    """

    vocab_size: int = 256
    dim: int = 32
    depth: int = 2
    heads: int = 4
    mlp_hidden: int = 0
    positions: str = "rotary"
    max_seq_len: int = 1024

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "depth", "heads", "max_seq_len"):
            require_positive_int(f"FullAttentionConfig.{name}", getattr(self, name))
        require_int("FullAttentionConfig.mlp_hidden (0 means 4 * dim)", self.mlp_hidden, minimum=0)
        if self.dim % self.heads != 0:
            raise ValueError(f"dim must be divisible by heads, got dim={self.dim}, heads={self.heads}")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.positions == "rotary":
            require_rotary_heads(self.dim, self.heads, ROTARY_BASE)

    @property
    def hidden(self) -> int:
        """The MLP width actually used."""
        return self.mlp_hidden or 4 * self.dim


class Block(nn.Module):
    """One pre-norm block: ``x + Attn(LN(x))`` then ``+ MLP(LN(x))``; (b, n, d) -> (b, n, d)."""

    def __init__(self, config: FullAttentionConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.rotary = config.positions == "rotary"
        self.norm_attn = nn.LayerNorm(config.dim)
        self.to_qkv = nn.Linear(config.dim, 3 * config.dim, bias=False)
        self.to_out = nn.Linear(config.dim, config.dim, bias=False)
        self.norm_mlp = nn.LayerNorm(config.dim)
        self.mlp = FeedForward(config.dim, config.hidden)

    def forward(self, x: Tensor, rotation: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """x (b, n, d); ``rotation``: the cos and sin (n, e / 2) of the rotary angles at positions
        0 .. n - 1 (:func:`~mac_minimal.rotary.rotary_table`), required with rotary positions."""
        qkv = self.to_qkv(self.norm_attn(x))                               # (b, n, 3d)
        q, k, v = (split_heads(t, self.heads) for t in qkv.chunk(3, dim=-1))   # (b, h, n, e) each
        if self.rotary:
            if rotation is None:
                raise ValueError("a block with rotary positions needs rotation=(cos, sin), each (n, head_dim / 2)")
            q, k = rotate_pairs(q, *rotation), rotate_pairs(k, *rotation)
        x = x + self.to_out(merge_heads(causal_attention(q, k, v)))
        return x + self.mlp(self.norm_mlp(x))


class FullAttentionTransformer(nn.Module):
    """Causal language model with full attention; ``forward(tokens) -> (logits, None)``.

    tokens: int64 (b, n) with values in ``[0, vocab_size)``; logits: (b, n, vocab_size), where
    ``logits[:, i]`` predicts token ``i + 1`` from tokens ``0 .. i`` only.
    """

    def __init__(self, config: FullAttentionConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.pos_embed = (nn.Embedding(config.max_seq_len, config.dim)
                          if config.positions == "learned" else None)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, config.vocab_size, bias=False)

    def forward(self, tokens: Tensor, state: None = None) -> tuple[Tensor, None]:
        """tokens (b, n) int64 -> logits (b, n, vocab); ``state`` must be None."""
        require_tokens(tokens, self.config.vocab_size)
        if state is not None:
            raise ValueError("full attention carries no state between calls: state must be None "
                             "(pass the whole sequence at once)")
        if self.pos_embed is not None and tokens.shape[1] > self.config.max_seq_len:
            raise ValueError(f"learned positions cover n <= max_seq_len={self.config.max_seq_len}, "
                             f"got n={tokens.shape[1]}")
        x = self.embed(tokens)                                             # (b, n, d)
        rotation = None
        if self.pos_embed is not None:
            x = x + self.pos_embed(torch.arange(tokens.shape[1], device=tokens.device))
        else:   # the rotary table once per call, outside the blocks (which torch.compile may compile)
            rotation = tuple(t.to(device=x.device, dtype=x.dtype)
                             for t in rotary_table(tokens.shape[1], self.config.dim // self.config.heads))
        for block in self.blocks:
            x = block(x, rotation)
        return self.head(self.norm(x)), None                               # (b, n, vocab)
