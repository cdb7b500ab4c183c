"""A causal language model from a stack of streaming layers: the frame of MAG and MAL.

The frame of chapter 7's :class:`~mac_minimal.model.MACTransformer`, for any layer with
``init_state(batch_size)`` and ``forward(x, state) -> (o, state)`` (:mod:`mac_minimal.mag`,
:mod:`mac_minimal.mal`):

    tokens (b, n) -> embedding (b, n, d)
      -> depth x ResidualBlock:  x = x + layer(LN(x));  x = x + FFN(LN(x))
      -> LN -> LM head -> logits (b, n, vocab)

No absolute position embedding: the layers rotate their queries and keys. The parameter names
are MAC's (``embed``, ``blocks.i.norm_attn``, ``blocks.i.attn``, ...), ``generate`` is MAC's.

Shapes: b batch, n sequence, d model width, V vocabulary.
"""

from dataclasses import dataclass
from typing import Any, NamedTuple

from torch import Tensor, nn

from mac_minimal.checks import require_positive_int, require_tokens
from mac_minimal.layers import FeedForward, num_parameters
from mac_minimal.model import MACTransformer

__all__ = ["LayerStackState", "ResidualBlock", "LayerStack"]


@dataclass
class StackFields:
    """The language model around the layers, as :class:`~mac_minimal.model.MACConfig` has it:
    ``vocab_size``, ``depth`` (blocks) and ``ffn_mult`` (FFN hidden width = ``ffn_mult * dim``).

    A mixin listed before a layer's config (``class MAGConfig(StackFields, MAGLayerConfig)``):
    its fields follow the layer's, and it checks them after the layer's own checks.
    """

    vocab_size: int = 64
    depth: int = 2
    ffn_mult: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("vocab_size", "depth", "ffn_mult"):
            require_positive_int(f"{type(self).__name__}.{name}", getattr(self, name))


class LayerStackState(NamedTuple):
    """The model's state between calls: one state per block's layer, and ``position``, the number
    of tokens seen so far."""

    layers: tuple[Any, ...]
    position: int


class ResidualBlock(nn.Module):
    """Pre-norm residual block: ``x + layer(LN(x))``, then ``x + FFN(LN(x))``; x (b, n, d)."""

    def __init__(self, layer: nn.Module, dim: int, ffn_mult: int) -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim)
        self.attn = layer
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_mult * dim)

    def forward(self, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        o, state = self.attn(self.norm_attn(x), state)
        x = x + o
        return x + self.ffn(self.norm_ffn(x)), state


class LayerStack(nn.Module):
    """Causal language model: ``forward(tokens, state=None) -> (logits, state)``.

    A subclass names its ``config_type`` (a layer config with ``vocab_size``, ``depth``,
    ``ffn_mult``) and its ``layer_type``, built from that config, whose states carry their
    sliding-window attention's as ``attention`` (the batch size is read there). tokens: int64 (b, n), ids in
    ``[0, vocab_size)``; logits (b, n, vocab_size). Passing the state on makes any split of a text
    give the logits of one call.
    """

    config_type: type
    layer_type: type[nn.Module]

    def __init__(self, config: Any = None) -> None:
        super().__init__()
        config = self.config_type() if config is None else config
        if not isinstance(config, self.config_type):
            raise TypeError(f"config must be a {self.config_type.__name__}, got {type(config).__name__}")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.blocks = nn.ModuleList(ResidualBlock(self.layer_type(config), config.dim, config.ffn_mult)
                                    for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, config.vocab_size, bias=False)

    def num_parameters(self) -> int:
        """Number of learned scalars (:func:`mac_minimal.layers.num_parameters`)."""
        return num_parameters(self)

    def init_state(self, batch_size: int) -> LayerStackState:
        """The state at the start of a text: every layer's, position 0."""
        return LayerStackState(layers=tuple(block.attn.init_state(batch_size) for block in self.blocks), position=0)

    def _check_state(self, state: LayerStackState, batch_size: int) -> None:
        if not isinstance(state, LayerStackState) or len(state.layers) != len(self.blocks):
            raise ValueError(f"state must be a LayerStackState with {len(self.blocks)} layer states "
                             "(from forward or init_state)")
        held = state.layers[0].attention.batch_size
        if held != batch_size:
            raise ValueError(f"tokens have batch size {batch_size} but the state was built for batch size {held}")

    def forward(self, tokens: Tensor, state: LayerStackState | None = None) -> tuple[Tensor, LayerStackState]:
        """tokens (b, n) int64 -> logits (b, n, V) and the state after the last token."""
        require_tokens(tokens, self.config.vocab_size)
        if state is None:
            state = self.init_state(tokens.shape[0])
        else:
            self._check_state(state, tokens.shape[0])
        x = self.embed(tokens)                                         # (b, n, d)
        layers = []
        for block, layer_state in zip(self.blocks, state.layers):
            x, layer_state = block(x, layer_state)
            layers.append(layer_state)
        logits = self.head(self.norm(x))                               # (b, n, V)
        return logits, LayerStackState(layers=tuple(layers), position=state.position + tokens.shape[1])

    generate = MACTransformer.generate
