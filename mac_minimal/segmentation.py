"""Segments: cut a sequence into windows of ``segment_len`` tokens and carry a state across them.

Titans' Memory-As-Context (MAC) model attends inside one segment ``S(t)`` at a time and hands
everything older to the neural memory (Behrouz et al. 2024, section 4.1, eqs. 21-25). This module
holds the bookkeeping that every segmented model needs, independent of what runs inside a segment:

* :func:`segment_bounds` / :func:`split_segments`: where the segment boundaries fall, for a piece
  of text that may start in the middle of a segment (streaming) and whose length need not be a
  multiple of ``segment_len`` (the last segment is shorter; nothing is dropped or padded);
* :func:`scan_segments`: the sequential segment loop ``y_s, state = step(S_s, state)``, the form a
  faithful MAC needs because segment ``s`` reads the memory written by segment ``s - 1``;
* :func:`fold_segments` / :func:`unfold_segments`: the parallel form, segments folded into the batch
  (``b (s c) d -> (b s) c d``), valid only for a model whose segments do not talk to each other.

Shapes: ``b`` batch, ``n`` sequence, ``s`` number of segments, ``c`` segment length, ``d`` features.
"""

from typing import Callable, TypeVar

import torch
from einops import rearrange

from mac_minimal.checks import require_positive_int

State = TypeVar("State")


def segment_bounds(n: int, segment_len: int, start: int = 0) -> list[tuple[int, int]]:
    """Half-open ``(begin, end)`` ranges that cut ``n`` tokens at segment boundaries.

    The tokens sit at absolute positions ``start, ..., start + n - 1``; a boundary falls before every
    absolute position that is a multiple of ``segment_len``. So the first range may be short (it
    finishes a segment begun by an earlier call) and so may the last (a segment still open).
    ``segment_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]``;
    ``segment_bounds(5, 4, start=3) == [(0, 1), (1, 5)]``.
    """
    require_positive_int("segment_len", segment_len)
    if n < 0 or start < 0:
        raise ValueError(f"n and start must be >= 0, got n={n}, start={start}")
    bounds = []
    begin = 0
    while begin < n:
        end = min(n, begin + segment_len - (start + begin) % segment_len)
        bounds.append((begin, end))
        begin = end
    return bounds


def split_segments(x: torch.Tensor, segment_len: int, start: int = 0) -> list[torch.Tensor]:
    """Split ``x`` (b, n, ...) along dim 1 at the segment boundaries of :func:`segment_bounds`.

    Returns views ``x[:, begin:end]``; ``torch.cat(pieces, dim=1)`` gives ``x`` back.
    """
    if x.dim() < 2:
        raise ValueError(f"x must have shape (b, n, ...), got {tuple(x.shape)}")
    return [x[:, begin:end] for begin, end in segment_bounds(x.shape[1], segment_len, start)]


def scan_segments(
    step: Callable[[torch.Tensor, State], tuple[torch.Tensor, State]],
    x: torch.Tensor,
    state: State,
    segment_len: int,
    start: int = 0,
) -> tuple[torch.Tensor, State]:
    """The sequential segment loop: ``y_s, state = step(S_s, state)`` for s = 1, 2, ...

    ``x`` (b, n, d) is cut by :func:`split_segments`; ``step`` maps one piece (b, c, d) and the
    state left by the previous piece to an output (b, c, d') and the next state. Returns the
    outputs concatenated along dim 1, (b, n, d'), and the final state. This loop cannot be
    parallelised across segments when ``step`` reads a state the previous segment wrote.
    """
    outputs = []
    for piece in split_segments(x, segment_len, start):
        y, state = step(piece, state)
        outputs.append(y)
    return torch.cat(outputs, dim=1), state


def fold_segments(x: torch.Tensor, segment_len: int) -> torch.Tensor:
    """Fold whole segments into the batch: (b, s * c, ...) -> (b * s, c, ...), ``c = segment_len``.

    The parallel form for a model whose segments are independent (no memory between them):
    one batched call then processes all segments at once. ``n`` must be a multiple of ``c``.
    """
    require_positive_int("segment_len", segment_len)
    if x.dim() < 2 or x.shape[1] % segment_len != 0:
        raise ValueError(
            f"fold_segments needs x of shape (b, n, ...) with n a multiple of segment_len="
            f"{segment_len}, got {tuple(x.shape)}")
    return rearrange(x, "b (s c) ... -> (b s) c ...", c=segment_len)


def unfold_segments(x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Inverse of :func:`fold_segments`: (b * s, c, ...) -> (b, s * c, ...)."""
    if x.dim() < 2 or batch_size < 1 or x.shape[0] % batch_size != 0:
        raise ValueError(
            f"unfold_segments needs x of shape (b * s, c, ...) with a leading size divisible by "
            f"batch_size={batch_size}, got {tuple(x.shape)}")
    return rearrange(x, "(b s) c ... -> b (s c) ...", b=batch_size)
