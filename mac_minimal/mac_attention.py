"""Memory As Context (MAC) attention for one segment: Titans eqs. (21)-(25).

Behrouz, Zhong, Mirrokni 2024 (arXiv 2501.00663 v1), section 4.1. For a segment ``S`` (b, c, d)
and the neural memory ``M_{t-1}`` left by the previous segments:

    h   = M*_{t-1}(q)                  (21)  retrieve, no update; one vector per token of S
    S~  = [p_1 .. p_Np] || h || S      (22)  persistent memory, retrieved memory, the segment
    y   = Attn(S~)                     (23)  outputs at the positions of S only
    M_t = M_{t-1}(y)                   (24)  write y into the memory (chapter 4's chunked write)
    o   = y (x) M*_t(y)                (25)  combine; the paper leaves (x) open, see ``Combine``

Read literally, two steps leak the future into a causal model, and this module does neither:

* ``h_k`` is computed from token k's query, so token j may attend ``h_k`` only for ``k <= j``:
  the ``h`` block of the mask is causal like the ``S`` block (:func:`mac_mask`).
* ``M_t`` absorbed all of ``y``; token j's output must read the memory after ``y_1 .. y_j`` only.
  ``NeuralMemory.forward`` reads ``M_j(y_j)`` with the per-token states of the chunked write.

The layer can take a segment in pieces (streaming): :class:`MACAttentionState` holds the rotated
keys/values of the tokens of the unfinished segment and of their retrieved vectors, the memory as
it stood before the segment (eq. 21 reads it) and the memory after the tokens written so far.
When a piece completes the segment the state rolls over: caches emptied, the memory just written
becomes the next segment's ``M_{t-1}``.

Shapes: b batch, c segment (piece) length, f tokens of the segment already cached, d model width,
H heads, e head width, P ``num_persistent``. (``h`` is always eq. (21)'s retrieved memory, never
the heads axis.)
"""

from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch
from torch import Tensor, nn

from mac_minimal.attention import attention_weights, masked_attention, merge_heads, split_heads
from mac_minimal.checks import require_number, require_positive_int
from mac_minimal.layers import FeedForward
from mac_minimal.neural_memory import NeuralMemory, NeuralMemoryConfig, NeuralMemoryState, moved_on
from mac_minimal.persistent import PersistentKV, PersistentMemoryConfig, causal_mask_with_prefix
from mac_minimal.rotary import rotary_table, rotate_pairs

__all__ = ["COMBINES", "MEMORY_INPUTS", "MACAttentionConfig", "MACAttentionState", "Combine", "MACAttention",
           "mac_mask"]

COMBINES = ("sum", "gate", "mlp")
MEMORY_INPUTS = ("output", "input")


@dataclass
class MACAttentionConfig(PersistentMemoryConfig):
    """Hyper-parameters of one MAC layer: chapter 5's attention with a persistent memory (``dim``,
    ``heads``, ``num_persistent``, P key/value slots per head, eq. 19, and ``rotary_base``) plus

    segment_len: c, tokens per segment (attention never reaches across a segment boundary).
    combine: eq. (25)'s (x): ``"sum"`` ``y + M*(y)`` (default, chosen by the recall experiment of
        ``benchmarks/bench_combine.py``), ``"gate"`` ``y * sigmoid(M*(y))``, ``"mlp"`` ``MLP([y, M*(y)])``.
    use_memory: False drops the neural memory: attention over ``[persistent | S]`` and ``o = y``.
    memory_scale_init: None combines ``y`` with ``m = M*_t(y)`` as eq. (25) writes it; a number
        adds a learned scalar ``s`` (initialised to it) and combines ``y`` with ``s * m``. Default
        0.0: MAC starts as if ``o = y`` and learns how much of the memory term to use (chapter 8).
    memory_input: what the memory writes and eq. (25) reads. ``"output"`` (default, the paper):
        eq. (24) writes the attention output y and eq. (25) reads ``M_t(y_t)``. ``"input"``: the
        layer's input x, ``M_t = M_{t-1}(x_t)`` and ``m_t = M_t(x_t)``, as the public implementation
        (titans-pytorch) writes its memory, the residual stream before attention; eq. (21) is the
        same in both. An ablation (chapter 8, MQAR): x holds the token itself, y only what attention
        took from the segment.
    memory: the neural memory (chapter 4's :class:`NeuralMemoryConfig`, whose defaults are MAC's:
        chunks of 8 tokens, step size capped at 0.03); its ``dim`` is left None (the layer's
        width); its ``chunk_size`` (eq. 16) is independent of ``segment_len``.
    """

    segment_len: int = 16
    combine: str = "sum"
    use_memory: bool = True
    memory_scale_init: float | None = 0.0
    memory_input: str = "output"
    memory: NeuralMemoryConfig = field(default_factory=NeuralMemoryConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive_int("MACAttentionConfig.segment_len", self.segment_len)
        if self.memory_scale_init is not None:
            require_number("MACAttentionConfig.memory_scale_init", self.memory_scale_init)
        if self.memory_input not in MEMORY_INPUTS:
            raise ValueError(f"MACAttentionConfig.memory_input must be one of {MEMORY_INPUTS}, "
                             f"got {self.memory_input!r}")
        if self.combine not in COMBINES:
            raise ValueError(f"MACAttentionConfig.combine must be one of {COMBINES}, got {self.combine!r}")
        if not isinstance(self.memory, NeuralMemoryConfig):
            raise TypeError(f"MACAttentionConfig.memory must be a NeuralMemoryConfig, got {self.memory!r}")
        if self.memory.dim not in (None, self.dim):
            raise ValueError(f"MACAttentionConfig.memory.dim must be None (the layer's width) or "
                             f"dim={self.dim}, got {self.memory.dim}")

    @property
    def memory_config(self) -> NeuralMemoryConfig:
        """``memory`` at this layer's width: the config of the layer's :class:`NeuralMemory`."""
        return replace(self.memory, dim=self.dim)


class MACAttentionState(NamedTuple):
    """What one MAC layer carries between calls (all tensors per batch element).

    memory_before: M_{t-1}, the memory at the start of the current segment (eq. 21 reads it);
        None without memory.
    memory: the memory after writing ``y`` of the current segment's tokens so far (eq. 24);
        equals ``memory_before`` at a segment start; None without memory.
    retrieved_keys, retrieved_values: rotated keys/values of ``h_0 .. h_{f-1}``, (b, H, f, e);
        f = 0 without memory.
    keys, values: rotated keys/values of the segment's tokens ``S_0 .. S_{f-1}``, (b, H, f, e).
    recent_inputs: with a memory convolution of width K (``memory.conv_size``), the last K - 1
        tokens fed to the layer, (b, K - 1, d), across segment edges: eq. (21)'s queries are
        convolved over them (the memory's own ``recent`` holds those of what it writes, y); None
        otherwise.
    """

    memory_before: NeuralMemoryState | None
    memory: NeuralMemoryState | None
    retrieved_keys: Tensor
    retrieved_values: Tensor
    keys: Tensor
    values: Tensor
    recent_inputs: Tensor | None

    @classmethod
    def at_segment_start(cls, memory: NeuralMemoryState | None, empty: Tensor,
                         recent_inputs: Tensor | None = None) -> "MACAttentionState":
        """The state at a segment start: ``memory`` before and after, every cache ``empty`` (b, H, 0, e),
        the layer's ``recent_inputs`` carried over."""
        return cls(memory_before=memory, memory=memory, retrieved_keys=empty, retrieved_values=empty,
                   keys=empty, values=empty, recent_inputs=recent_inputs)

    @property
    def filled(self) -> int:
        """f: tokens of the current segment already seen."""
        return self.keys.shape[2]


def mac_mask(n_queries: int, filled: int, num_persistent: int, retrieved: bool = True,
             device: torch.device | str | None = None) -> Tensor:
    """Boolean SDPA mask (c, P + [f + c] + f + c) over keys ``[persistent | h | S]``, True = attend.

    The c queries are the segment's tokens at indices ``f .. f + c - 1``. Query i sees every
    persistent slot, ``h_k`` for ``k <= f + i`` (eq. 21's retrieval for token k used token k's
    query, so a later ``h_k`` would leak token k) and ``S_k`` for ``k <= f + i``. Both causal
    blocks are chapter 5's :func:`causal_mask_with_prefix`. ``retrieved=False``: no ``h`` block.
    """
    prefix_and_s = causal_mask_with_prefix(n_queries, num_persistent, filled + n_queries, device=device)
    if not retrieved:
        return prefix_and_s
    causal = prefix_and_s[:, num_persistent:]                       # (c, f + c), k <= f + i
    return torch.cat((prefix_and_s[:, :num_persistent], causal, causal), dim=1)


class Combine(nn.Module):
    """Eq. (25): ``o = y (x) m`` with ``m = M*_t(y)``; y, m (b, c, d) -> o (b, c, d).

    ``"sum"``: ``y + m`` (the default); ``"gate"``: ``y * sigmoid(m)`` (the memory scales each
    feature of the attention output); ``"mlp"``: ``W_2 gelu(W_1 [y, m])`` (the MAC design notes' "mlp to mix memory
    output back"), the only variant with parameters (3 d^2 + 2 d).
    """

    def __init__(self, dim: int, kind: str = "sum") -> None:
        super().__init__()
        if kind not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {kind!r}")
        self.kind = kind
        if kind == "mlp":
            self.mlp = FeedForward(2 * dim, hidden=dim, out_dim=dim)

    def forward(self, y: Tensor, m: Tensor) -> Tensor:
        if self.kind == "sum":
            return y + m
        if self.kind == "gate":
            return y * torch.sigmoid(m)
        return self.mlp(torch.cat((y, m), dim=-1))

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


class MACAttention(nn.Module):
    """One MAC layer: eqs. (21)-(25) over a segment, or a piece of one, with its state.

    ``forward(x, state=None) -> (o, state)``: x (b, c, d) is the (normalised) segment input,
    ``c <= segment_len - state.filled``. Learned parameters: ``to_q``, ``to_kv``, ``to_out``
    (shared by ``h`` and ``S``, which are tokens of one sequence ``S~``), the persistent keys and
    values, the neural memory's slow weights and, for ``combine="mlp"``, the combine MLP.
    """

    def __init__(self, config: MACAttentionConfig) -> None:
        super().__init__()
        if not isinstance(config, MACAttentionConfig):
            raise TypeError(f"config must be a MACAttentionConfig, got {type(config).__name__}")
        self.config = config
        d = config.dim
        self.to_q = nn.Linear(d, d, bias=False)
        self.to_kv = nn.Linear(d, 2 * d, bias=False)
        self.to_out = nn.Linear(d, d, bias=False)
        self.persistent = PersistentKV(config.heads, config.num_persistent, config.head_dim)
        # cos and sin of the rotary angles at the positions inside a segment, 0 .. segment_len - 1:
        # computed once (float64, cast at use), not learned, not saved (persistent=False)
        cos, sin = rotary_table(config.segment_len, config.head_dim, config.rotary_base)
        self.register_buffer("rotary_cos", cos, persistent=False)
        self.register_buffer("rotary_sin", sin, persistent=False)
        self.memory: NeuralMemory | None = None
        self.combine: Combine | None = None
        self.memory_scale: nn.Parameter | None = None
        if config.use_memory:
            self.memory = NeuralMemory(config.memory_config)
            self.combine = Combine(d, config.combine)
            if config.memory_scale_init is not None:
                self.memory_scale = nn.Parameter(torch.tensor(float(config.memory_scale_init)))

    # ------------------------------------------------------------------ state
    def init_state(self, batch_size: int) -> MACAttentionState:
        """State at a segment start: empty caches (b, H, 0, e) and a fresh memory ``M_0``."""
        require_positive_int("batch_size", batch_size)
        memory = self.memory.init_state(batch_size) if self.memory is not None else None
        # eq. (21)'s query stream starts like the memory's own: K - 1 zeros before it (None without a
        # conv); a tensor of its own, not the memory's (dynamo would compile another graph for the alias)
        recent = memory.recent.clone() if memory is not None and memory.recent is not None else None
        return self._segment_start(memory, batch_size, like=self.to_q.weight, recent_inputs=recent)

    def _segment_start(self, memory: NeuralMemoryState | None, batch_size: int, like: Tensor,
                       recent_inputs: Tensor | None) -> MACAttentionState:
        """The state at a segment start with ``memory``: caches empty, (b, H, 0, e), of ``like``'s dtype."""
        empty = like.new_zeros(batch_size, self.config.heads, 0, self.config.head_dim)
        return MACAttentionState.at_segment_start(memory=memory, empty=empty, recent_inputs=recent_inputs)

    def _prepare(self, x: Tensor, state: MACAttentionState | None) -> MACAttentionState:
        """Check x (b, c, d) against the config and the state; a fresh state if None."""
        cfg = self.config
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != cfg.dim:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (b, c, d={cfg.dim}), got {shape}")
        state = self.init_state(x.shape[0]) if state is None else state
        if not isinstance(state, MACAttentionState):
            raise TypeError(f"state must be a MACAttentionState or None, got {type(state).__name__}")
        if x.shape[0] != state.keys.shape[0]:
            raise ValueError(f"x has batch size {x.shape[0]} but the state holds {state.keys.shape[0]}")
        room = cfg.segment_len - state.filled
        if not 1 <= x.shape[1] <= room:
            raise ValueError(f"x must hold 1 .. {room} tokens (segment_len={cfg.segment_len}, "
                             f"{state.filled} already in this segment), got {x.shape[1]}")
        return state

    # ------------------------------------------------------------------ eqs. (21)-(23)
    def retrieve(self, x: Tensor, state: MACAttentionState) -> Tensor:
        """Eq. (21): ``h = M*_{t-1}(q)``, x (b, c, d) -> h (b, c, d) from ``state.memory_before``;
        with a memory convolution its queries also read ``state.recent_inputs``."""
        return self.memory.read(x, state.memory_before, recent=state.recent_inputs)

    def qkv(self, x: Tensor, h: Tensor | None, state: MACAttentionState
            ) -> tuple[Tensor, Tensor, Tensor, MACAttentionState]:
        """Eq. (22): rotated queries of S (b, H, c, e) and keys/values of ``[persistent | h | S]``.

        x: the segment's tokens S (b, c, d); h: their retrieved memory (b, c, d), or None without
        memory. Keys/values are (b, H, P + [f + c] + f + c, e) including the cached ones; also
        returns the state with the caches extended by this piece. Rotary positions are positions
        inside the segment, ``f .. f + c - 1``; ``h_k`` shares token k's position; persistent
        slots are prepended after rotary (no position).
        """
        cfg = self.config
        cos, sin = self.rotary(state.filled, x.shape[1])

        def rotated_keys_values(t: Tensor) -> tuple[Tensor, Tensor]:   # (b, c, d) -> (b, H, c, e) x2
            k, v = (split_heads(u, cfg.heads) for u in self.to_kv(t).chunk(2, dim=-1))
            return rotate_pairs(k, cos, sin), v

        q = rotate_pairs(split_heads(self.to_q(x), cfg.heads), cos, sin)
        k, v = rotated_keys_values(x)
        cache = state._replace(keys=torch.cat((state.keys, k), dim=2),
                               values=torch.cat((state.values, v), dim=2))
        if h is not None:                                     # the same W_K, W_V as S: h, S are one sequence
            hk, hv = rotated_keys_values(h)
            cache = cache._replace(retrieved_keys=torch.cat((state.retrieved_keys, hk), dim=2),
                                   retrieved_values=torch.cat((state.retrieved_values, hv), dim=2))
        all_k, all_v = self.persistent.prepend(torch.cat((cache.retrieved_keys, cache.keys), dim=2),
                                               torch.cat((cache.retrieved_values, cache.values), dim=2))
        return q, all_k, all_v, cache

    def rotary(self, start: int, n: int) -> tuple[Tensor, Tensor]:
        """cos and sin (n, e / 2) of the rotary angles at positions ``start .. start + n - 1`` of the
        segment: rows of the layer's table, computed once (chapter 7 shows why not in each call)."""
        return self.rotary_cos[start:start + n], self.rotary_sin[start:start + n]

    def mask(self, n_queries: int, filled: int, device: torch.device | str | None = None) -> Tensor:
        """This layer's :func:`mac_mask` (no ``h`` block without memory)."""
        return mac_mask(n_queries, filled, self.config.num_persistent, self.memory is not None, device)

    def attend(self, x: Tensor, h: Tensor | None, state: MACAttentionState) -> tuple[Tensor, MACAttentionState]:
        """Eqs. (22)-(23): ``y = Attn([persistent | h | S])`` at the positions of S, (b, c, d)."""
        q, k, v, cache = self.qkv(x, h, state)
        y = masked_attention(q, k, v, self.mask(x.shape[1], state.filled, x.device))   # (b, H, c, e)
        return self.to_out(merge_heads(y)), cache

    def attention_weights(self, x: Tensor, state: MACAttentionState | None = None) -> Tensor:
        """The weights of eq. (23) written out, (b, H, c, P + [f + c] + f + c), columns ``[P | h | S]``."""
        state = self._prepare(x, state)
        h = self.retrieve(x, state) if self.memory is not None else None
        q, k, _, _ = self.qkv(x, h, state)
        return attention_weights(q, k, self.mask(x.shape[1], state.filled, x.device))

    # ------------------------------------------------------------------ all of it
    def forward(self, x: Tensor, state: MACAttentionState | None = None) -> tuple[Tensor, MACAttentionState]:
        """Eqs. (21)-(25) for a segment or a piece of one: x (b, c, d) -> o (b, c, d), next state."""
        state = self._prepare(x, state)
        if self.memory is None:
            o, state = self.attend(x, None, state)
        else:
            h = self.retrieve(x, state)                                   # (21)
            if state.recent_inputs is not None:                           # x joins eq. (21)'s conv window
                state = state._replace(recent_inputs=moved_on(state.recent_inputs, x))
            y, state = self.attend(x, h, state)                           # (22)-(23)
            written = y if self.config.memory_input == "output" else x
            m, memory = self.memory(written, state.memory)                # (24), m_j = M_j(y_j) (or M_j(x_j))
            if self.memory_scale is not None:
                m = self.memory_scale * m
            o = self.combine(y, m)                                        # (25)
            state = state._replace(memory=memory)
        if state.filled == self.config.segment_len:                      # segment done: roll over
            state = self._segment_start(state.memory, x.shape[0], like=state.keys,
                                        recent_inputs=state.recent_inputs)
        return o, state
