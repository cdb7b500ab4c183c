"""The Memory-As-Context transformer: a causal language model built from MAC blocks.

Titans MAC (Behrouz et al. 2024, section 4.1): the sequence is cut into segments of
``segment_len`` tokens; every block attends inside one segment over ``[persistent | h | S]``
(eqs. 21-25, :mod:`mac_minimal.mac_attention`) and hands what is older to its neural memory.

    tokens (b, n) -> embedding (b, n, d)
      -> depth x MACBlock:  x = x + MAC(LN(x)) segment by segment;  x = x + FFN(LN(x))
      -> LN -> LM head -> logits (b, n, vocab)

Positions: rotary inside attention only, at positions within the segment (chapter 6). There is
no absolute position embedding: attention never looks past its segment, so absolute positions
would add nothing a token can use that the segment-relative ones and the memory do not already
give, and they would cap the length a model can stream (a learned table has a last row).

Memory per layer: every block owns its neural memory (the MAC design notes: "if we share those storage units
across layers, they might be storing information in different vector spaces").

``forward(tokens, state=None) -> (logits, state)`` is exact under any split of the input: feed the
tokens whole, segment by segment, or one at a time, passing the state on, and the logits agree.
:meth:`MACTransformer.generate` streams with that state, whose size does not grow with the text.

Shapes: b batch, n sequence, d model width, c segment length, V vocabulary.
"""

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from mac_minimal.checks import require_int, require_positive_int, require_tokens
from mac_minimal.layers import FeedForward, num_parameters
from mac_minimal.mac_attention import MACAttention, MACAttentionConfig, MACAttentionState
from mac_minimal.segmentation import fold_segments, scan_segments, unfold_segments

__all__ = ["MACConfig", "MACState", "MACBlock", "MACTransformer", "state_nbytes"]


@dataclass
class MACConfig(MACAttentionConfig):
    """Hyper-parameters of :class:`MACTransformer`: every block's :class:`MACAttentionConfig`
    (chapter 6: ``dim``, ``heads``, ``num_persistent``, ``segment_len``, ``combine``,
    ``use_memory``, ``rotary_base``, ``memory_scale_init``, ``memory``) plus

    vocab_size: V; depth: number of MAC blocks; ffn_mult: FFN hidden width = ``ffn_mult * dim``.

    The defaults are a small model for a CPU; the trainer (``python -m mac_minimal``) takes its
    model defaults from them.
    ``use_memory=False`` is the same model without neural memory (segment-local attention +
    persistent slots; fewer parameters, see :func:`mac_minimal.layers.num_parameters`).
    """

    vocab_size: int = 64
    depth: int = 2
    ffn_mult: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("vocab_size", "depth", "ffn_mult"):
            require_positive_int(f"MACConfig.{name}", getattr(self, name))


class MACState(NamedTuple):
    """The model's state between calls: one :class:`MACAttentionState` per block, and ``position``,
    the number of tokens seen so far (the absolute position of the next token)."""

    layers: tuple[MACAttentionState, ...]
    position: int


def state_nbytes(state: MACState) -> int:
    """Bytes a state holds: every tensor in it counted at its full logical size."""
    def count(item: object) -> int:
        if isinstance(item, Tensor):
            return item.numel() * item.element_size()
        if isinstance(item, tuple):
            return sum(count(i) for i in item)
        return 0
    return count(state.layers)


class MACBlock(nn.Module):
    """Pre-norm residual block: ``x + MAC(LN(x))`` over segments, then ``x + FFN(LN(x))``.

    ``forward(x, state) -> (x, state)``: x (b, n, d), any n >= 1; ``state.filled`` says where
    ``x[:, 0]`` falls in its segment.
    """

    def __init__(self, config: MACConfig) -> None:
        super().__init__()
        d = config.dim
        self.segment_len = config.segment_len
        self.norm_attn = nn.LayerNorm(d)
        self.attn = MACAttention(config)
        self.norm_ffn = nn.LayerNorm(d)
        self.ffn = FeedForward(d, config.ffn_mult * d)

    def segments(self, x: Tensor, state: MACAttentionState) -> tuple[Tensor, MACAttentionState]:
        """MAC attention over every segment of x (b, n, d), carrying the state.

        With memory: the sequential segment loop (segment s retrieves from the memory that segment
        s - 1 wrote, and that write needs segment s - 1's attention output). Without memory the
        segments are independent: the whole ones are folded into the batch,
        ``b (s c) d -> (b s) c d``, and run in one call; only an unfinished segment at either end
        runs on its own, with its keys/values cached in the state.
        """
        c, n = self.segment_len, x.shape[1]
        if self.attn.memory is not None:
            return scan_segments(self.attn, x, state, c, start=state.filled)
        outputs, begin = [], 0
        if state.filled > 0:                                   # finish the segment an earlier call began
            begin = min(n, c - state.filled)
            o, state = self.attn(x[:, :begin], state)
            outputs.append(o)
        whole_end = begin + (n - begin) // c * c
        if whole_end > begin:                                  # whole segments: one batched call
            o, _ = self.attn(fold_segments(x[:, begin:whole_end], c))
            outputs.append(unfold_segments(o, x.shape[0]))
        if whole_end < n:                                      # a segment left open for the next call
            o, state = self.attn(x[:, whole_end:], state)
            outputs.append(o)
        return torch.cat(outputs, dim=1), state

    def forward(self, x: Tensor, state: MACAttentionState) -> tuple[Tensor, MACAttentionState]:
        o, state = self.segments(self.norm_attn(x), state)
        x = x + o
        return x + self.ffn(self.norm_ffn(x)), state


class MACTransformer(nn.Module):
    """Causal MAC language model: ``forward(tokens, state=None) -> (logits, state)``.

    tokens: int64 (b, n), ids in ``[0, vocab_size)``, n >= 1. logits: (b, n, vocab_size).
    ``state`` (a :class:`MACState`, None = start of a text) carries per block the neural memory and
    the unfinished segment's keys/values; passing it on makes any split of a text give the logits
    of one call.
    """

    def __init__(self, config: MACConfig | None = None) -> None:
        super().__init__()
        config = MACConfig() if config is None else config
        if not isinstance(config, MACConfig):
            raise TypeError(f"config must be a MACConfig, got {type(config).__name__}")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.blocks = nn.ModuleList(MACBlock(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, config.vocab_size, bias=False)

    def num_parameters(self) -> int:
        """Number of learned scalars (:func:`mac_minimal.layers.num_parameters`)."""
        return num_parameters(self)

    def init_state(self, batch_size: int) -> MACState:
        """The state at the start of a text: fresh memories, empty segment caches, position 0."""
        return MACState(layers=tuple(block.attn.init_state(batch_size) for block in self.blocks), position=0)

    def _check_state(self, state: MACState, batch_size: int) -> None:
        if not isinstance(state, MACState) or len(state.layers) != len(self.blocks):
            raise ValueError(f"state must be a MACState with {len(self.blocks)} layer states "
                             "(from forward or init_state)")
        if state.layers[0].keys.shape[0] != batch_size:
            raise ValueError(f"tokens have batch size {batch_size} but the state was built "
                             f"for batch size {state.layers[0].keys.shape[0]}")

    def forward(self, tokens: Tensor, state: MACState | None = None) -> tuple[Tensor, MACState]:
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
        return logits, MACState(layers=tuple(layers), position=state.position + tokens.shape[1])

    @torch.no_grad()
    def generate(self, tokens: Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Continue ``tokens`` (b, n) by ``max_new_tokens`` sampled tokens -> (b, n + max_new_tokens).

        The prompt runs in one call, then each new token is fed alone with the state, so the work
        and memory per token stay constant however long the text grows. ``temperature == 0``:
        greedy (argmax); ``top_k``: sample among the k most likely tokens only.
        """
        require_int("max_new_tokens", max_new_tokens, minimum=0)
        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {temperature!r}")
        if top_k is not None:
            require_positive_int("top_k", top_k)
        logits, state = self(tokens)
        out = [tokens]
        for _ in range(max_new_tokens):
            last = logits[:, -1].float()                              # (b, V)
            if temperature == 0:
                token = last.argmax(dim=-1, keepdim=True)
            else:
                last = last / temperature
                if top_k is not None and top_k < last.shape[-1]:
                    kth = last.topk(top_k, dim=-1).values[:, -1:]
                    last = last.masked_fill(last < kth, float("-inf"))
                token = torch.multinomial(last.softmax(dim=-1), 1, generator=generator)
            out.append(token)
            logits, state = self(token, state)
        return torch.cat(out, dim=1)
