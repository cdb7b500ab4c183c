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

A window that holds its own fact asks about nothing older, so a carried memory gives training a
reason to forget: the stale facts only get in the way. :class:`RecallEpisodes`
(``--episode-windows E``) asks across windows instead: an episode of one fact lasts 1 to ``E``
windows (uniformly), its fact is written in its first window and asked at the end of every window
of it, so the question comes up to ``E * seq_len`` tokens after the fact while the gradient still
spans one window. A row's memory restarts only where an episode starts (with probability ``P``),
never in the middle of one.
"""

from typing import Any

import torch
from torch import Tensor

from mac_minimal.data import KEY, QUERY, Batch, RecallTask, fact_block
from mac_minimal.model import MACState

__all__ = ["detach_state", "restart_rows", "next_state", "RecallEpisodes", "EPISODE_DISTANCES"]

EPISODE_DISTANCES = ("uniform", "log")  # how RecallEpisodes draws the distance of a fact from its first question


def detach_state(state: MACState) -> MACState:
    """The same state cut from the graph of the batch that produced it (the truncation of TBPTT)."""
    return _zip_map(lambda tensor, _: tensor.detach(), state, state)


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
    """``function(carried_tensor, fresh_tensor)`` over two states of the same structure; ints and None
    pass through from ``carried``."""
    if isinstance(carried, Tensor):
        if carried.shape != fresh.shape:
            raise ValueError(f"a carried state tensor has shape {tuple(carried.shape)} but a fresh one "
                             f"{tuple(fresh.shape)}: windows must end on segment and chunk edges")
        return function(carried, fresh)
    if isinstance(carried, tuple):
        mapped = [_zip_map(function, c, f) for c, f in zip(carried, fresh)]
        return type(carried)(*mapped) if hasattr(carried, "_fields") else tuple(mapped)
    return carried


def next_state(model: Any, state: MACState, restart: Tensor) -> MACState:
    """The state the next batch starts from: ``state`` detached, row ``i`` restarted (a fresh memory)
    where ``restart[i]`` (bool (b,)). ``model`` is a :class:`~mac_minimal.model.MACTransformer`."""
    fresh = model.init_state(restart.shape[0])
    return restart_rows(detach_state(state), fresh, restart.to(fresh.layers[0].keys.device))


class RecallEpisodes:
    """One-fact recall episodes that run across consecutive windows, one episode per batch row.

    ``next(generator)`` returns the next window of every row, a :class:`~mac_minimal.data.Batch` of
    (b, seq_len) tokens, and ``starts`` (bool (b,)): the rows whose episode began in this window.
    A window is filler that ends with the question ``QUERY k VALUE`` (the target of its last token
    is the episode's value ``v``); an episode's first window also holds the fact ``KEY k VALUE v``,
    ``d`` tokens before the question's start, ``d`` in ``[4, seq_len - 3]`` (the range of
    :func:`~mac_minimal.data.recall_distance_range`): uniform, or with ``distances="log"``
    log-uniform (``d = floor(4 * ((seq_len - 2) / 4) ** u)``, ``u`` uniform in [0, 1)), so that
    every scale of distance, 4-8 tokens as often as 64-125, is asked equally often. So in window
    ``w`` of an episode the answer is ``d + w * seq_len`` tokens after the fact. Episodes last 1 to
    ``max_windows`` windows, uniformly.
    """

    def __init__(self, batch_size: int, seq_len: int, max_windows: int, task: RecallTask = RecallTask(),
                 distances: str = "uniform") -> None:
        if distances not in EPISODE_DISTANCES:
            raise ValueError(f"distances must be one of {EPISODE_DISTANCES}, got {distances!r}")
        self.batch_size, self.seq_len, self.max_windows, self.task = batch_size, seq_len, max_windows, task
        self.distances = distances
        self.windows_left = torch.zeros(batch_size, dtype=torch.long)      # 0: the row starts a new episode
        self.keys = torch.zeros(batch_size, dtype=torch.long)
        self.values = torch.zeros(batch_size, dtype=torch.long)

    def next(self, generator: torch.Generator) -> tuple[Batch, Tensor]:
        b, n, task = self.batch_size, self.seq_len, self.task
        starts = self.windows_left == 0
        self.windows_left[starts] = torch.randint(1, self.max_windows + 1, (b,), generator=generator)[starts]
        self.keys[starts] = torch.randint(task.key_start, task.value_start, (b,), generator=generator)[starts]
        self.values[starts] = torch.randint(task.value_start, task.filler_start, (b,), generator=generator)[starts]
        stream = torch.randint(task.filler_start, task.vocab_size, (b, n + 1), generator=generator)
        question = n + 1 - 4                                              # QUERY k VALUE v: the last 4 tokens
        distance = self._distances(generator)                             # (b,) in [4, n - 3]
        rows = starts.nonzero().flatten()
        fact = (question - distance[rows]).unsqueeze(1) + torch.arange(4)  # (r, 4) positions of the fact
        keys, values = self.keys.unsqueeze(1), self.values.unsqueeze(1)          # (b, 1)
        stream[rows.unsqueeze(1), fact] = fact_block(KEY, keys, values)[rows]
        stream[:, question:] = fact_block(QUERY, keys, values)
        mask = torch.zeros(b, n, dtype=torch.bool)
        mask[:, n - 1] = True                                             # inputs[n-1] = VALUE, target = v
        self.windows_left -= 1
        return Batch(stream[:, :-1], stream[:, 1:], mask), starts

    def _distances(self, generator: torch.Generator) -> Tensor:
        """(b,) int64: the distance of each row's fact from its question, in ``[4, seq_len - 3]``."""
        low, high = 4, self.seq_len - 3
        if self.distances == "uniform":
            return torch.randint(low, high + 1, (self.batch_size,), generator=generator)
        u = torch.rand(self.batch_size, generator=generator, dtype=torch.float64)
        return (low * ((high + 1) / low) ** u).floor().long().clamp(low, high)
