"""Persistent memory: learned, input-independent slots that every query can attend to.

Titans eq. (19) prepends ``N_p`` learned vectors to the sequence, ``x_new = [p_1 .. p_Np] || x``
(Behrouz et al. 2024; persistent memory after Sukhbaatar et al. 2019). Two ways to store them:

``"tokens"`` -- :class:`PrependedPersistentTokens`: ``N_p`` vectors in *model space* (b, n, d)
    prepended to the layer input. They go through W_Q, W_K, W_V and rotary like any token and
    sit at positions ``0 .. N_p-1``; the sequence's tokens move to ``N_p + positions``.

``"kv"`` -- :class:`PersistentKV`: ``N_p`` keys and values per head stored directly in
    *attention space* (h, N_p, head_dim) and concatenated to the keys and values AFTER rotary,
    so they are never rotated (the MAC design notes' "attention sinks"). Under RoPE an un-rotated key is
    exactly a key at position 0: a query at position m scores it as ``(R_m q) . p = q . (R_{-m} p)``.

:class:`PersistentAttention` is a small causal self-attention layer that uses either one, with
:func:`mac_minimal.attention.masked_attention` (one SDPA call) and the boolean mask of
:func:`causal_mask_with_prefix`: every query sees all persistent slots plus the keys at or
before its own position. :func:`sliding_window_mask_with_prefix` is the same mask cut to the
last ``window`` keys (the sliding-window attention of Titans' MAG and MAL, sections 4.2-4.3).
"""

from dataclasses import dataclass

import torch
from einops import repeat
from torch import Tensor, nn

from mac_minimal.attention import attention_weights, masked_attention, merge_heads, split_heads
from mac_minimal.checks import require_int, require_positive_int, require_rotary_heads
from mac_minimal.rotary import ROTARY_BASE, apply_rotary

__all__ = [
    "PersistentMemoryConfig",
    "PersistentAttentionConfig",
    "PersistentKV",
    "PrependedPersistentTokens",
    "PersistentAttention",
    "causal_mask_with_prefix",
    "sliding_window_mask_with_prefix",
]

MODES = ("kv", "tokens")


@dataclass
class PersistentMemoryConfig:
    """An attention layer with a persistent memory: model width ``dim``, ``heads`` (``dim / heads``
    even, for rotary), ``num_persistent`` slots per head, and the ``rotary_base`` of its positions.

    :class:`PersistentAttentionConfig` adds how the slots are stored; chapter 6's
    :class:`~mac_minimal.mac_attention.MACAttentionConfig` adds the segment and the neural memory.
    """

    dim: int = 32
    heads: int = 4
    num_persistent: int = 4
    rotary_base: float = ROTARY_BASE

    def __post_init__(self) -> None:
        name = type(self).__name__                  # also the configs built on this one
        require_positive_int(f"{name}.dim", self.dim)
        require_positive_int(f"{name}.heads", self.heads)
        require_int(f"{name}.num_persistent", self.num_persistent, minimum=0)
        require_rotary_heads(self.dim, self.heads, self.rotary_base)

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


@dataclass
class PersistentAttentionConfig(PersistentMemoryConfig):
    """A :class:`PersistentMemoryConfig` plus how the slots are stored.

    mode: ``"kv"`` (keys/values in attention space, not rotated) or ``"tokens"`` (prepended
    model-space tokens at positions 0 .. N_p-1).
    """

    mode: str = "kv"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")


def causal_mask_with_prefix(n_queries: int, n_prefix: int, n_keys: int | None = None,
                            device: torch.device | str | None = None) -> Tensor:
    """Boolean attention mask (n_queries, n_prefix + n_keys), True = may attend (SDPA's convention).

    Keys are ``[prefix (n_prefix) | sequence (n_keys)]``. Every query sees the whole prefix
    (persistent slots). The queries are the last ``n_queries`` of the ``n_keys`` sequence keys
    (``n_keys`` defaults to ``n_queries``), so query ``i`` sits at sequence index
    ``n_keys - n_queries + i`` and sees sequence keys at indices ``<=`` that.
    """
    n_keys = n_queries if n_keys is None else n_keys
    if n_queries < 1 or n_prefix < 0 or n_keys < n_queries:
        raise ValueError("need n_queries >= 1, n_prefix >= 0 and n_keys >= n_queries, got "
                         f"n_queries={n_queries}, n_prefix={n_prefix}, n_keys={n_keys}")
    query_index = torch.arange(n_queries, device=device) + (n_keys - n_queries)   # (n_queries,)
    key_index = torch.arange(n_keys, device=device)                               # (n_keys,)
    sequence = key_index[None, :] <= query_index[:, None]                         # (n_queries, n_keys)
    prefix = torch.ones(n_queries, n_prefix, dtype=torch.bool, device=device)
    return torch.cat((prefix, sequence), dim=1)


def sliding_window_mask_with_prefix(n_queries: int, n_prefix: int, window: int, n_keys: int | None = None,
                                    device: torch.device | str | None = None) -> Tensor:
    """:func:`causal_mask_with_prefix` cut to a sliding window: (n_queries, n_prefix + n_keys), True = may attend.

    Query ``i`` (sequence index ``s = n_keys - n_queries + i``) sees the whole prefix and the
    ``window`` sequence keys ``s - window + 1 .. s``: itself and the ``window - 1`` before it.
    A ``window`` of at least ``n_keys`` gives :func:`causal_mask_with_prefix`.
    """
    require_positive_int("window", window)
    mask = causal_mask_with_prefix(n_queries, n_prefix, n_keys, device=device)
    n_keys = mask.shape[1] - n_prefix
    query_index = torch.arange(n_queries, device=device) + (n_keys - n_queries)   # (n_queries,)
    key_index = torch.arange(n_keys, device=device)                               # (n_keys,)
    mask[:, n_prefix:] &= key_index[None, :] > query_index[:, None] - window
    return mask


class PersistentKV(nn.Module):
    """Learned persistent keys and values in attention space, (h, N_p, head_dim) each (eq. 19, "kv" form).

    They are input-independent and never rotated: :meth:`prepend` puts them in front of keys and
    values that were already rotated, the same vectors for every batch element, position and segment.
    """

    def __init__(self, heads: int, num_persistent: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.num_persistent, self.head_dim = heads, num_persistent, head_dim
        self.keys = nn.Parameter(torch.randn(heads, num_persistent, head_dim))
        self.values = nn.Parameter(torch.randn(heads, num_persistent, head_dim))

    def prepend(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """(b, h, n, head_dim) rotated k and v -> (b, h, N_p + n, head_dim) each, persistent slots first."""
        b = k.shape[0]
        pk = repeat(self.keys, "h p e -> b h p e", b=b).to(k.dtype)
        pv = repeat(self.values, "h p e -> b h p e", b=b).to(v.dtype)
        return torch.cat((pk, k), dim=2), torch.cat((pv, v), dim=2)

    forward = prepend

    def extra_repr(self) -> str:
        return f"heads={self.heads}, num_persistent={self.num_persistent}, head_dim={self.head_dim}"


class PrependedPersistentTokens(nn.Module):
    """Learned persistent tokens in model space, (N_p, d): ``[p_1 .. p_Np] || x`` (eq. 19, "tokens" form)."""

    def __init__(self, num_persistent: int, dim: int) -> None:
        super().__init__()
        self.num_persistent, self.dim = num_persistent, dim
        self.tokens = nn.Parameter(torch.randn(num_persistent, dim))

    def forward(self, x: Tensor) -> Tensor:
        """x (b, n, d) -> (b, N_p + n, d), the same learned tokens in front of every sequence."""
        p = repeat(self.tokens, "p d -> b p d", b=x.shape[0]).to(x.dtype)
        return torch.cat((p, x), dim=1)

    def extra_repr(self) -> str:
        return f"num_persistent={self.num_persistent}, dim={self.dim}"


class PersistentAttention(nn.Module):
    """Causal multi-head self-attention with rotary positions and persistent memory (eq. 19).

    ``forward(x, positions=None)``: x (b, n, d), integer positions (n,) (default ``0 .. n-1``)
    -> y (b, n, d). Query i attends all N_p persistent slots and the sequence keys 0 .. i.
    Only the n sequence tokens produce outputs; in ``"tokens"`` mode the prepended tokens are
    keys and values only (a single layer never needs their outputs).
    """

    def __init__(self, config: PersistentAttentionConfig) -> None:
        super().__init__()
        if not isinstance(config, PersistentAttentionConfig):
            raise TypeError(f"config must be a PersistentAttentionConfig, got {type(config).__name__}")
        self.config = config
        self.to_qkv = nn.Linear(config.dim, 3 * config.dim, bias=False)
        self.to_out = nn.Linear(config.dim, config.dim, bias=False)
        self.persistent: PersistentKV | PrependedPersistentTokens
        if config.mode == "kv":
            self.persistent = PersistentKV(config.heads, config.num_persistent, config.head_dim)
        else:
            self.persistent = PrependedPersistentTokens(config.num_persistent, config.dim)

    def _positions(self, x: Tensor, positions: Tensor | None) -> Tensor:
        """Check x (b, n, d) and positions (n,); the default positions are ``0 .. n-1``."""
        if x.dim() != 3 or x.shape[-1] != self.config.dim:
            raise ValueError(f"x must have shape (b, n, d={self.config.dim}), got {tuple(x.shape)}")
        if positions is None:
            return torch.arange(x.shape[1], device=x.device)
        if positions.shape != x.shape[1:2]:
            raise ValueError(f"positions must have shape (n,) = ({x.shape[1]},), "
                             f"got {tuple(positions.shape)}")
        return positions

    def qkv(self, x: Tensor, positions: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Rotated queries (b, h, n, e) and keys, values (b, h, N_p + n, e), persistent slots first."""
        positions = self._positions(x, positions)
        cfg = self.config
        if cfg.mode == "tokens":
            return self._qkv_tokens(x, positions)
        q, k, v = (split_heads(t, cfg.heads) for t in self.to_qkv(x).chunk(3, dim=-1))
        q, k = apply_rotary(q, positions, cfg.rotary_base), apply_rotary(k, positions, cfg.rotary_base)
        k, v = self.persistent.prepend(k, v)   # after rotary: the persistent keys carry no rotation
        return q, k, v

    def _qkv_tokens(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mode "tokens": the prepended tokens are tokens like any other, at positions 0 .. N_p-1."""
        cfg, num_p = self.config, self.config.num_persistent
        xp = self.persistent(x)                                                    # (b, N_p + n, d)
        q, k, v = (split_heads(t, cfg.heads) for t in self.to_qkv(xp).chunk(3, dim=-1))
        key_positions = torch.cat((torch.arange(num_p, device=positions.device), num_p + positions))
        q = apply_rotary(q[:, :, num_p:], num_p + positions, cfg.rotary_base)     # queries only for x
        return q, apply_rotary(k, key_positions, cfg.rotary_base), v

    def _mask(self, q: Tensor) -> Tensor:
        return causal_mask_with_prefix(q.shape[2], self.config.num_persistent, device=q.device)

    def forward(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        """x (b, n, d) -> y (b, n, d); attention by ``scaled_dot_product_attention``."""
        q, k, v = self.qkv(x, positions)
        return self.to_out(merge_heads(masked_attention(q, k, v, self._mask(q))))

    def attention_weights(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        """The weights SDPA uses, written out: softmax(q k^T / sqrt(e) + mask), shape (b, h, n, N_p + n).

        Columns 0 .. N_p-1 are the persistent slots; ``forward`` equals ``to_out(weights @ v)``.
        """
        q, k, _ = self.qkv(x, positions)
        return attention_weights(q, k, self._mask(q))
