"""Memory As a Gate (MAG): Titans eqs. (26)-(28), sliding-window attention gated by the neural memory.

Behrouz, Zhong, Mirrokni 2024 (arXiv 2501.00663 v1), section 4.2. Two branches read the same
input, the persistent tokens first:

    x~ = [p_1 .. p_Np] || x           (26)
    y  = SW-Attn*(x~)                 (27)  short-term: the last ``window`` tokens and the prefix p
    o  = y (x) M(x~)                  (28)  long-term: the neural memory, as a layer of its own

Choices the paper leaves open, and the ones made here:

* **The gate (x).** "We normalize the outputs y and M(x~) using learnable vector-valued weights,
  followed by a non-linearity": ``o = LN_y(y) * sigmoid(LN_m(m))`` (:class:`Gate`), each LN with a
  learned gain and bias per feature; the memory opens or closes each feature of the attention
  output (titans-pytorch gates its attention output by ``sigmoid`` of the retrieved memory, too).
* **What the memory reads.** Token t's output reads ``m_t = M_{t-1}(q_t)``, the memory before
  x_t is written (:func:`read_before_write`): the prediction at t never has x_t's own key and
  value stored (MAC's eq. 25 reads after the write, ``M_t(y_t)``; chapter 6). With chunked writes
  (eq. 16, chunk c), ``M_{t-1}`` is the memory of chapter 4's chunked write after tokens
  ``.. t-1``: their gradients are taken where their chunk began, and tokens of t's own chunk
  before t are included. Chunk boundaries sit at multiples of c from the start of ``x~``.
* **The persistent tokens in the stream.** ``p`` is one set of model-space vectors (N_p, d) for
  both branches (eq. 26 has one ``x~``). The attention sees them in every window, at positions
  ``0 .. N_p-1``, the text at ``N_p + t`` (chapter 5's "tokens" form); the memory writes them once,
  at the start of every text (:meth:`MAGLayer.init_state`), as the first N_p tokens of ``x~``.

``use_memory=False`` leaves eq. (27) alone: sliding-window attention with the persistent prefix
(the trainer's ``swa``). Shapes: b batch, n tokens, d model width, P = N_p.
"""

from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch
from torch import Tensor, nn

from mac_minimal.checks import require_positive_int
from mac_minimal.layer_stack import LayerStack, StackFields
from mac_minimal.mac_attention import MACAttentionConfig
from mac_minimal.neural_memory import NeuralMemory, NeuralMemoryConfig, NeuralMemoryState, full_precision
from mac_minimal.persistent import PersistentMemoryConfig, PrependedPersistentTokens
from mac_minimal.sliding_window import SlidingWindowAttention, SlidingWindowState

__all__ = ["WindowMemoryConfig", "read_before_write", "Gate", "MAGLayerConfig", "MAGLayerState", "MAGLayer",
           "MAGConfig", "MAGTransformer"]


@dataclass
class WindowMemoryConfig(PersistentMemoryConfig):
    """What MAG and MAL layers share: chapter 5's ``dim``, ``heads``, ``num_persistent`` (N_p
    persistent tokens, eqs. 26 and 29) and ``rotary_base``, plus

    window: w, tokens each token attends to (itself and the w - 1 before it). Default: MAC's
        ``segment_len``, so the three variants attend over as many recent tokens (MAC's last
        token of a segment sees the whole segment).
    memory: the neural memory (chapter 4's :class:`NeuralMemoryConfig`, MAC's defaults); its
        ``dim`` is left None (the layer's width).
    """

    window: int = MACAttentionConfig.segment_len
    memory: NeuralMemoryConfig = field(default_factory=NeuralMemoryConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        require_positive_int(f"{name}.window", self.window)
        if not isinstance(self.memory, NeuralMemoryConfig):
            raise TypeError(f"{name}.memory must be a NeuralMemoryConfig, got {self.memory!r}")
        if self.memory.dim not in (None, self.dim):
            raise ValueError(f"{name}.memory.dim must be None (the layer's width) or dim={self.dim}, "
                             f"got {self.memory.dim}")

    @property
    def memory_config(self) -> NeuralMemoryConfig:
        """``memory`` at this layer's width: the config of the layer's :class:`NeuralMemory`."""
        return replace(self.memory, dim=self.dim)


@full_precision
def read_before_write(memory: NeuralMemory, x: Tensor, state: NeuralMemoryState
                      ) -> tuple[Tensor, NeuralMemoryState]:
    """Read, then write, token by token: ``y_t = M_{t-1}(q_t)``, then x_t is written (eqs. 11-18, 15).

    x (b, n, d) -> y (b, n, d) and the memory after writing all of x. Token 0 reads
    ``state.weights``; token t > 0 reads the per-token weights the chunked write reached after
    token t - 1. One chunked write (chapter 4's dual form) whose reads take the queries shifted
    by one token: the read that comes with token t's write, ``M_t(q_{t+1})``, is token t+1's;
    the last token's (its own query, ``M_{n-1}(q_{n-1})``) is dropped. Like the memory's own
    methods, it runs in the memory's precision (:func:`~mac_minimal.neural_memory.full_precision`).
    """
    first = memory.read(x[:, :1], state, recent=state.recent)                  # (b, 1, d)
    q = memory.queries(x, state.recent)
    shifted = torch.cat((q[:, 1:], q[:, -1:]), dim=1)                          # q_{t+1}, the last repeated
    y, state = memory.write_and_read(x, shifted, state)
    return torch.cat((first, y[:, :-1]), dim=1), state


class Gate(nn.Module):
    """Eq. (28)'s (x): ``o = LN_y(y) * sigmoid(LN_m(m))``; y, m (b, n, d) -> o (b, n, d).

    Both outputs normalised with a learned gain and bias per feature (4 d parameters), then
    the memory's through a sigmoid: a gate in (0, 1) on each feature of the attention output.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm_y = nn.LayerNorm(dim)
        self.norm_m = nn.LayerNorm(dim)

    def forward(self, y: Tensor, m: Tensor) -> Tensor:
        return self.norm_y(y) * torch.sigmoid(self.norm_m(m))


@dataclass
class MAGLayerConfig(WindowMemoryConfig):
    """A :class:`WindowMemoryConfig` plus ``use_memory``: False drops the memory and the gate,
    ``o = SW-Attn*(x~)`` (sliding-window attention with the persistent prefix)."""

    use_memory: bool = True


class MAGLayerState(NamedTuple):
    """One MAG layer between calls: the attention's window cache and position, and the memory
    after the tokens so far (None without memory)."""

    attention: SlidingWindowState
    memory: NeuralMemoryState | None


class MAGLayer(nn.Module):
    """One MAG layer, eqs. (26)-(28): ``forward(x, state=None) -> (o, state)``, x, o (b, n, d).

    Learned parameters: the persistent tokens p (N_p, d), the attention's ``to_q``, ``to_kv``,
    ``to_out``, the memory's slow weights and the gate's norms.
    """

    def __init__(self, config: MAGLayerConfig) -> None:
        super().__init__()
        if not isinstance(config, MAGLayerConfig):
            raise TypeError(f"config must be a MAGLayerConfig, got {type(config).__name__}")
        self.config = config
        self.persistent = PrependedPersistentTokens(config.num_persistent, config.dim)
        self.attention = SlidingWindowAttention(config.dim, config.heads, config.window, config.rotary_base)
        self.memory: NeuralMemory | None = None
        self.gate: Gate | None = None
        if config.use_memory:
            self.memory = NeuralMemory(config.memory_config)
            self.gate = Gate(config.dim)

    def init_state(self, batch_size: int) -> MAGLayerState:
        """The state at the start of a text: empty window, next position N_p, and the memory
        ``M_0`` after writing ``p_1 .. p_Np`` (eq. 26: ``x~`` begins with them)."""
        attention = self.attention.init_state(batch_size, position=self.config.num_persistent)
        if self.memory is None:
            return MAGLayerState(attention=attention, memory=None)
        memory = self.memory.init_state(batch_size)
        if self.config.num_persistent > 0:
            memory = self.memory.write(self.persistent.tokens.expand(batch_size, -1, -1), memory)
        return MAGLayerState(attention=attention, memory=memory)

    def _prepare(self, x: Tensor, state: MAGLayerState | None) -> MAGLayerState:
        """Check x (b, n, d); a fresh state if None."""
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[1] < 1 or x.shape[-1] != self.config.dim:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (b, n >= 1, d={self.config.dim}), got {shape}")
        state = self.init_state(x.shape[0]) if state is None else state
        if not isinstance(state, MAGLayerState):
            raise TypeError(f"state must be a MAGLayerState or None, got {type(state).__name__}")
        if x.shape[0] != state.attention.batch_size:
            raise ValueError(f"x has batch size {x.shape[0]} but the state holds {state.attention.batch_size}")
        return state

    def forward(self, x: Tensor, state: MAGLayerState | None = None) -> tuple[Tensor, MAGLayerState]:
        """Eqs. (26)-(28) for the tokens x (b, n, d) -> o (b, n, d), and the state after them."""
        state = self._prepare(x, state)
        y, attention = self.attention(x, state.attention, prefix=self.persistent.tokens)   # (26)-(27)
        if self.memory is None:
            return y, MAGLayerState(attention=attention, memory=None)
        m, memory = read_before_write(self.memory, x, state.memory)                      # M(x~), m_t = M_{t-1}(q_t)
        return self.gate(y, m), MAGLayerState(attention=attention, memory=memory)        # (28)


@dataclass
class MAGConfig(StackFields, MAGLayerConfig):
    """:class:`MAGTransformer`: every block's :class:`MAGLayerConfig` plus ``vocab_size``,
    ``depth`` (blocks) and ``ffn_mult`` (FFN hidden width = ``ffn_mult * dim``), as in MAC."""


class MAGTransformer(LayerStack):
    """Causal MAG language model (:class:`~mac_minimal.layer_stack.LayerStack` of :class:`MAGLayer`):
    ``forward(tokens, state=None) -> (logits, state)``, exact under any split of a text."""

    config_type = MAGConfig
    layer_type = MAGLayer
