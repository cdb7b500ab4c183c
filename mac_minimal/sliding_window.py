"""Sliding-window attention over a stream: the short-term memory of Titans' MAG and MAL.

Behrouz, Zhong, Mirrokni 2024 (arXiv 2501.00663 v1), sections 4.2-4.3. Token t attends to
itself and the ``window - 1`` tokens before it (:func:`~mac_minimal.persistent.sliding_window_mask_with_prefix`):

    SW-Attn(x)_t  = Attn(q_t; k_{t-w+1} .. k_t)                     (31)  MAL
    SW-Attn*(x)_t = Attn(q_t; k_p1 .. k_pNp, k_{t-w+1} .. k_t)      (27)  MAG: a prefix every query sees

Unlike MAC's segments (chapter 6), the window slides with the token: every token sees the same
number of recent tokens, and nothing older. The layer streams: :class:`SlidingWindowState` holds
the rotated keys and values of the last ``window - 1`` tokens and the position of the next one,
so a text fed in any pieces gives the outputs of one call. Rotary positions are positions in the
stream; a prefix is rotated at positions ``0 .. P-1``, and its owner starts the stream at ``P``.

The attention itself is :func:`mac_minimal.attention.masked_attention` (one SDPA call). A call
with n tokens builds an (n, P + f + n) mask, so one long call costs O(n^2), not O(n w): short
calls (or streaming) keep it at O(n w).

Shapes: b batch, n tokens of this call, f cached tokens (``<= window - 1``), d model width,
H heads, e head width, P prefix tokens.
"""

from typing import NamedTuple

import torch
from torch import Tensor, nn

from mac_minimal.attention import masked_attention, merge_heads, split_heads
from mac_minimal.checks import require_int, require_positive_int, require_rotary_heads
from mac_minimal.persistent import sliding_window_mask_with_prefix
from mac_minimal.rotary import ROTARY_BASE, apply_rotary

__all__ = ["SlidingWindowState", "SlidingWindowAttention"]


class SlidingWindowState(NamedTuple):
    """What the layer carries between calls (per batch element).

    keys, values: rotated keys and values of the last ``f <= window - 1`` tokens, (b, H, f, e).
    position: the rotary position of the next token.
    """

    keys: Tensor
    values: Tensor
    position: int

    @property
    def batch_size(self) -> int:
        return self.keys.shape[0]


class SlidingWindowAttention(nn.Module):
    """Multi-head causal attention over the last ``window`` tokens, with rotary positions.

    ``forward(x, state=None, prefix=None) -> (y, state)``: x (b, n, d) -> y (b, n, d). ``prefix``
    (P, d): model-space tokens every query also sees (SW-Attn*), projected by the same W_K, W_V
    and rotated at positions ``0 .. P-1``. Learned parameters: ``to_q``, ``to_kv``, ``to_out``.
    """

    def __init__(self, dim: int, heads: int, window: int, rotary_base: float = ROTARY_BASE) -> None:
        super().__init__()
        require_positive_int("dim", dim)
        require_positive_int("heads", heads)
        require_positive_int("window", window)
        require_rotary_heads(dim, heads, rotary_base)
        self.dim, self.heads, self.window, self.rotary_base = dim, heads, window, rotary_base
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def init_state(self, batch_size: int, position: int = 0) -> SlidingWindowState:
        """Empty caches (b, H, 0, e); the next token sits at ``position``."""
        require_positive_int("batch_size", batch_size)
        require_int("position", position, minimum=0)
        empty = self.to_q.weight.new_zeros(batch_size, self.heads, 0, self.dim // self.heads)
        return SlidingWindowState(keys=empty, values=empty, position=position)

    def _prepare(self, x: Tensor, state: SlidingWindowState | None) -> SlidingWindowState:
        """Check x (b, n >= 1, d) against the state; a fresh state if None."""
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[1] < 1 or x.shape[-1] != self.dim:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (b, n >= 1, d={self.dim}), got {shape}")
        state = self.init_state(x.shape[0]) if state is None else state
        if not isinstance(state, SlidingWindowState):
            raise TypeError(f"state must be a SlidingWindowState or None, got {type(state).__name__}")
        if x.shape[0] != state.batch_size:
            raise ValueError(f"x has batch size {x.shape[0]} but the state holds {state.batch_size}")
        return state

    def _positions(self, x: Tensor, start: int) -> Tensor:
        return torch.arange(start, start + x.shape[1], device=x.device)

    def keys_values(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """x (b, n, d) at positions (n,) -> rotated keys and values, (b, H, n, e) each."""
        k, v = (split_heads(t, self.heads) for t in self.to_kv(x).chunk(2, dim=-1))
        return apply_rotary(k, positions, self.rotary_base), v

    def _advance(self, keys: Tensor, values: Tensor, position: int) -> SlidingWindowState:
        """The state that keeps the last ``window - 1`` of ``keys``, ``values`` (b, H, f + n, e)."""
        first = keys.shape[2] - (self.window - 1)
        return SlidingWindowState(keys=keys[:, :, max(first, 0):], values=values[:, :, max(first, 0):],
                                  position=position)

    def remember(self, x: Tensor, state: SlidingWindowState | None = None) -> SlidingWindowState:
        """Cache the tokens x (b, n, d) as :meth:`forward` would, without computing their outputs."""
        state = self._prepare(x, state)
        k, v = self.keys_values(x, self._positions(x, state.position))
        return self._advance(torch.cat((state.keys, k), dim=2), torch.cat((state.values, v), dim=2),
                             state.position + x.shape[1])

    def forward(self, x: Tensor, state: SlidingWindowState | None = None, prefix: Tensor | None = None
                ) -> tuple[Tensor, SlidingWindowState]:
        """x (b, n, d) -> y (b, n, d) and the state after its last token; ``prefix`` (P, d) or None."""
        state = self._prepare(x, state)
        positions = self._positions(x, state.position)
        q = apply_rotary(split_heads(self.to_q(x), self.heads), positions, self.rotary_base)
        k, v = self.keys_values(x, positions)
        keys, values = torch.cat((state.keys, k), dim=2), torch.cat((state.values, v), dim=2)   # (b, H, f + n, e)
        all_k, all_v, num_prefix = keys, values, 0
        if prefix is not None:
            num_prefix = prefix.shape[0]
            pk, pv = self.keys_values(prefix[None].to(x.dtype), self._positions(prefix[None], 0))  # (1, H, P, e)
            all_k = torch.cat((pk.expand(x.shape[0], -1, -1, -1), keys), dim=2)
            all_v = torch.cat((pv.expand(x.shape[0], -1, -1, -1), values), dim=2)
        mask = sliding_window_mask_with_prefix(x.shape[1], num_prefix, self.window, keys.shape[2], device=x.device)
        y = self.to_out(merge_heads(masked_attention(q, all_k, all_v, mask)))
        return y, self._advance(keys, values, state.position + x.shape[1])

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}, window={self.window}"
