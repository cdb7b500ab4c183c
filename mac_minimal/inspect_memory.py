"""Looking inside a trained MACTransformer on one stream (chapter 8): what its memory writes, and
what the answer attends to.

* :func:`memory_rates`: the neural memory's data-dependent rates at every token, eqs. (13)-(14)'s
  step ``theta_t``, momentum ``eta_t`` and forgetting ``alpha_t``, computed from what each layer's
  memory really receives: eq. (24) writes the attention output ``y``, not the token.
* :func:`answer_attention`: at the stream's last position (where the recall task's answer is
  predicted), the share of eq. (23)'s attention weight on the persistent slots ``p``, on the
  retrieved memory ``h`` (eq. 21) and on the segment ``S`` itself.

Both run the model once under ``torch.no_grad()`` with forward pre-hooks that record the inputs
of each layer's MAC attention and of its memory, and remove the hooks afterwards (also on error).

* :func:`momentum_capped`: an intervention, not a measurement: while inside, the memories of the
  given layers clip their momentum ``eta_t`` at a cap (chapter 8, 'Momentum that never lets go').

Shapes: b batch, n stream length, d model width, H heads, P persistent slots.
"""

import contextlib
from typing import Iterator

import torch
from torch import Tensor

from mac_minimal.checks import require_number
from mac_minimal.model import MACTransformer

__all__ = ["recorded", "memory_rates", "answer_attention", "momentum_capped"]


def _check(model: MACTransformer, tokens: Tensor) -> None:
    if not isinstance(model, MACTransformer):
        raise ValueError(f"model must be a MACTransformer, got {type(model).__name__}")
    if not model.config.use_memory:
        raise ValueError("model has no neural memory (use_memory=False): nothing to inspect")
    if not isinstance(tokens, Tensor) or tokens.dtype != torch.int64 or tokens.dim() != 2 or tokens.numel() == 0:
        given = (f"shape {tuple(tokens.shape)}, dtype {tokens.dtype}" if isinstance(tokens, Tensor)
                 else type(tokens).__name__)
        raise ValueError(f"tokens must be an int64 tensor (b, n) with b, n >= 1, got {given}")


@contextlib.contextmanager
def recorded(model: MACTransformer) -> Iterator[dict[str, list[list]]]:
    """Per layer, every call's ``(x, state)`` of MAC attention (``"attn"``) and the input ``y`` of
    its memory (``"y"``, (b, c, d) per segment); the hooks are removed on leaving."""
    calls: dict[str, list[list]] = {"attn": [[] for _ in model.blocks], "y": [[] for _ in model.blocks]}
    handles = []
    try:
        for i, block in enumerate(model.blocks):
            handles.append(block.attn.register_forward_pre_hook(
                lambda _m, args, i=i: calls["attn"][i].append((args[0].detach(), args[1]))))
            handles.append(block.attn.memory.register_forward_pre_hook(
                lambda _m, args, i=i: calls["y"][i].append(args[0].detach())))
        yield calls
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def memory_rates(model: MACTransformer, tokens: Tensor) -> list[dict[str, Tensor]]:
    """The memory's rates at every token of ``tokens`` (b, n), one dict per layer:
    ``{"theta": (b, n), "eta": (b, n), "alpha": (b, n)}``, eqs. (13)-(14)'s step in (0, max_lr),
    momentum in (0, 1) and forgetting in (0, 1), from ``NeuralMemory.rates(y)`` with ``y`` (b, n, d)
    the attention outputs the layer wrote into its memory (eq. 24), segment after segment."""
    _check(model, tokens)
    with recorded(model) as calls:
        model(tokens)
    out = []
    for block, pieces in zip(model.blocks, calls["y"]):
        y = torch.cat(pieces, dim=1)                                   # (b, n, d)
        theta, eta, alpha = block.attn.memory.rates(y)                # each (b, n)
        out.append({"theta": theta, "eta": eta, "alpha": alpha})
    return out


@torch.no_grad()
def answer_attention(model: MACTransformer, tokens: Tensor) -> list[dict[str, float]]:
    """Where the last position of ``tokens`` (b, n) looks, one dict per layer:
    ``{"persistent": share, "retrieved": share, "segment": share}``, the sums of eq. (23)'s
    attention weights (mean over heads and batch) on the P persistent slots, on the retrieved
    tokens ``h`` and on the segment's tokens; the three add up to 1.

    The weights are :meth:`MACAttention.attention_weights` of the layer's last call (the last
    segment, (b, H, c, P + [f + c] + f + c), columns ``[P | h | S]``), at its last query."""
    _check(model, tokens)
    with recorded(model) as calls:
        model(tokens)
    P = model.config.num_persistent
    out = []
    for block, attn_calls in zip(model.blocks, calls["attn"]):
        x, state = attn_calls[-1]                                      # x (b, c, d): the last segment
        weights = block.attn.attention_weights(x, state)               # (b, H, c, P + 2 (f + c))
        row = weights[:, :, -1].double().mean(dim=(0, 1))               # (P + 2 (f + c),): the last query
        seen = (row.shape[0] - P) // 2                                  # f + c: h block, then S block
        out.append({"persistent": float(row[:P].sum()), "retrieved": float(row[P:P + seen].sum()),
                    "segment": float(row[P + seen:].sum())})
    return out


@contextlib.contextmanager
def momentum_capped(model: MACTransformer, cap: float, layers: list[int] | None = None) -> Iterator[None]:
    """While inside, ``eta_t = min(eta_t, cap)`` in the memories of ``layers`` (indices into
    ``model.blocks``; None: every layer); the model is as before on exit (also on error).

    Raises ``ValueError`` unless ``cap`` is in (0, 1] and every layer index exists.
    """
    if not isinstance(model, MACTransformer) or not model.config.use_memory:
        raise ValueError("model must be a MACTransformer with neural memory (use_memory=True)")
    require_number("cap", cap, low=0.0, high=1.0)
    layers = list(range(len(model.blocks))) if layers is None else list(layers)
    if not all(isinstance(i, int) and 0 <= i < len(model.blocks) for i in layers):
        raise ValueError(f"layers must be indices in [0, {len(model.blocks)}), got {layers}")

    def capped(memory):
        def rates(y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            theta, eta, alpha = type(memory).rates(memory, y)                 # each (b, n)
            return theta, eta.clamp(max=cap), alpha
        return rates

    memories = [model.blocks[i].attn.memory for i in layers]
    for memory in memories:
        memory.rates = capped(memory)
    try:
        yield
    finally:
        for memory in memories:
            del memory.rates
