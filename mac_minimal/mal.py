"""Memory As a Layer (MAL): Titans eqs. (29)-(31), the neural memory under sliding-window attention.

Behrouz, Zhong, Mirrokni 2024 (arXiv 2501.00663 v1), section 4.3. The memory is a layer of its
own, and the attention reads what it returns:

    x~ = [p_1 .. p_Np] || x           (29)
    y  = M(x~)                        (30)  the neural memory, read and written token by token
    o  = SW-Attn(y)                   (31)  the last ``window`` outputs of the memory, no prefix

Choices the paper leaves open, and the ones made here:

* **What the memory reads.** As in MAG (:func:`~mac_minimal.mag.read_before_write`):
  ``y_t = M_{t-1}(q_t)``, the memory before x_t is written; with chunked writes (chunk c) the
  per-token memory of chapter 4's chunked write after the tokens before t, chunks counted from
  the start of ``x~``.
* **The persistent tokens in the stream.** They are the first N_p tokens of every text's ``x~``:
  :meth:`MALLayer.init_state` writes them into the memory (reading before each write, like any
  token) and caches the memory's outputs at their positions ``0 .. N_p-1`` in the attention's
  window, the text following at ``N_p + t``. Eq. (31) is SW-Attn, not MAG's SW-Attn* (eq. 27):
  no prefix, so ``M(p)`` leaves the window once ``window`` later tokens have come, and the
  persistent tokens act on the rest of the text through the memory they shaped.

Shapes: b batch, n tokens, d model width.
"""

from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor, nn

from mac_minimal.layer_stack import LayerStack, StackFields
from mac_minimal.mag import WindowMemoryConfig, read_before_write
from mac_minimal.neural_memory import NeuralMemory, NeuralMemoryState
from mac_minimal.persistent import PrependedPersistentTokens
from mac_minimal.sliding_window import SlidingWindowAttention, SlidingWindowState

__all__ = ["MALLayerConfig", "MALLayerState", "MALLayer", "MALConfig", "MALTransformer"]


@dataclass
class MALLayerConfig(WindowMemoryConfig):
    """One MAL layer: :class:`~mac_minimal.mag.WindowMemoryConfig`'s ``dim``, ``heads``,
    ``num_persistent``, ``rotary_base``, ``window`` and ``memory``. The memory is the layer, so
    there is no ``use_memory``: without it, MAL is sliding-window attention (the trainer's ``swa``)."""


class MALLayerState(NamedTuple):
    """One MAL layer between calls: the memory after the tokens so far, and the attention's
    window cache (of the memory's outputs) and position."""

    memory: NeuralMemoryState
    attention: SlidingWindowState


class MALLayer(nn.Module):
    """One MAL layer, eqs. (29)-(31): ``forward(x, state=None) -> (o, state)``, x, o (b, n, d).

    Learned parameters: the persistent tokens p (N_p, d), the memory's slow weights, the
    attention's ``to_q``, ``to_kv``, ``to_out``.
    """

    def __init__(self, config: MALLayerConfig) -> None:
        super().__init__()
        if not isinstance(config, MALLayerConfig):
            raise TypeError(f"config must be a MALLayerConfig, got {type(config).__name__}")
        self.config = config
        self.persistent = PrependedPersistentTokens(config.num_persistent, config.dim)
        self.memory = NeuralMemory(config.memory_config)
        self.attention = SlidingWindowAttention(config.dim, config.heads, config.window, config.rotary_base)

    def init_state(self, batch_size: int) -> MALLayerState:
        """The state at the start of a text, after ``p_1 .. p_Np`` (eq. 29): the memory that wrote
        them, and the window holding the memory's outputs for them (positions ``0 .. N_p-1``)."""
        memory = self.memory.init_state(batch_size)
        attention = self.attention.init_state(batch_size)
        if self.config.num_persistent > 0:
            y, memory = read_before_write(self.memory, self.persistent.tokens.expand(batch_size, -1, -1), memory)
            attention = self.attention.remember(y, attention)
        return MALLayerState(memory=memory, attention=attention)

    def _prepare(self, x: Tensor, state: MALLayerState | None) -> MALLayerState:
        """Check x (b, n, d); a fresh state if None."""
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[1] < 1 or x.shape[-1] != self.config.dim:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (b, n >= 1, d={self.config.dim}), got {shape}")
        state = self.init_state(x.shape[0]) if state is None else state
        if not isinstance(state, MALLayerState):
            raise TypeError(f"state must be a MALLayerState or None, got {type(state).__name__}")
        if x.shape[0] != state.attention.batch_size:
            raise ValueError(f"x has batch size {x.shape[0]} but the state holds {state.attention.batch_size}")
        return state

    def forward(self, x: Tensor, state: MALLayerState | None = None) -> tuple[Tensor, MALLayerState]:
        """Eqs. (29)-(31) for the tokens x (b, n, d) -> o (b, n, d), and the state after them."""
        state = self._prepare(x, state)
        y, memory = read_before_write(self.memory, x, state.memory)         # (30), y_t = M_{t-1}(q_t)
        o, attention = self.attention(y, state.attention)                   # (31)
        return o, MALLayerState(memory=memory, attention=attention)


@dataclass
class MALConfig(StackFields, MALLayerConfig):
    """:class:`MALTransformer`: every block's :class:`MALLayerConfig` plus ``vocab_size``,
    ``depth`` (blocks) and ``ffn_mult`` (FFN hidden width = ``ffn_mult * dim``), as in MAC."""


class MALTransformer(LayerStack):
    """Causal MAL language model (:class:`~mac_minimal.layer_stack.LayerStack` of :class:`MALLayer`):
    ``forward(tokens, state=None) -> (logits, state)``, exact under any split of a text."""

    config_type = MALConfig
    layer_type = MALLayer
