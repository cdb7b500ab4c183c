"""Training on windows of long streams: MAC's state carried from one batch to the next.

A recall batch is ``seq_len`` tokens from a fresh memory, so training never shows the memory the
state it reaches after thousands of writes; on a long stream that state is new, and recall breaks
even a few tokens after the fact (chapter 8). With ``--carry-state P`` row ``i`` of a batch
continues the stream row ``i`` of the previous batch ended: its memory starts where that batch's
left it. This is truncated backpropagation through time (Williams & Peng 1990): the state is
detached between batches, so the gradient still spans one window (``seq_len`` tokens) while the
memory spans many. Each row restarts from a fresh state with probability ``P`` at every step, so a
batch mixes histories of every length (the mean is ``seq_len / P`` tokens) and fresh memories
stay in the training mix.

Every window is an ordinary recall batch (its fact and its question inside it); the windows before
it are, for the current fact, filler holding stale facts. The carried state needs window edges
on segment and chunk edges (``seq_len`` a multiple of both), where the segment cache is empty and
the memory between chunks, so that a restarted row and a carried one have the same shapes.
"""

from typing import Any

import torch
from torch import Tensor

from mac_minimal.model import MACState

__all__ = ["detach_state", "restart_rows", "next_state"]


def _map(function: Any, item: Any) -> Any:
    """Apply ``function`` to every tensor in a (nested) state; ints and None pass through."""
    if isinstance(item, Tensor):
        return function(item)
    if isinstance(item, tuple):
        mapped = [_map(function, i) for i in item]
        return type(item)(*mapped) if hasattr(item, "_fields") else tuple(mapped)
    return item


def detach_state(state: MACState) -> MACState:
    """The same state cut from the graph of the batch that produced it (the truncation of TBPTT)."""
    return _map(Tensor.detach, state)


def restart_rows(state: MACState, fresh: MACState, restart: Tensor) -> MACState:
    """Row ``i`` of ``fresh`` where ``restart[i]``, else row ``i`` of ``state``.

    state, fresh: states of one model for batch size b, with equal shapes (window edges on segment
    and chunk edges); restart: bool (b,). The shared counter ``position`` is kept from ``state``:
    MAC reads no absolute position (rotary positions are inside a segment).
    """
    def pick(carried: Tensor, new: Tensor) -> Tensor:
        return torch.where(restart.view(-1, *[1] * (carried.dim() - 1)), new, carried)

    layers = tuple(_zip_map(pick, c, f) for c, f in zip(state.layers, fresh.layers))
    return MACState(layers=layers, position=state.position)


def _zip_map(function: Any, carried: Any, fresh: Any) -> Any:
    """``function(carried_tensor, fresh_tensor)`` over two states of the same structure."""
    if isinstance(carried, Tensor):
        if carried.shape != fresh.shape:
            raise ValueError(f"a carried state tensor has shape {tuple(carried.shape)} but a fresh one "
                             f"{tuple(fresh.shape)}: windows must end on segment and chunk edges")
        return function(carried, fresh)
    if isinstance(carried, tuple):
        mapped = [_zip_map(function, c, f) for c, f in zip(carried, fresh)]
        return type(carried)(*mapped) if hasattr(carried, "_fields") else tuple(mapped)
    return carried


def next_state(model: Any, state: MACState | None, batch_size: int, restart_probability: float,
               generator: torch.Generator) -> MACState:
    """The state the next batch starts from: ``state`` detached, each row restarted (fresh memory)
    with probability ``restart_probability``, drawn from ``generator``; every row fresh when
    ``state`` is None (the first batch). ``model`` is a :class:`~mac_minimal.model.MACTransformer`."""
    fresh = model.init_state(batch_size)
    if state is None:
        return fresh
    restart = torch.rand(batch_size, generator=generator) < restart_probability
    device = fresh.layers[0].keys.device
    return restart_rows(detach_state(state), fresh, restart.to(device))
