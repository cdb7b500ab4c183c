"""The tuned scan kernel: ``h_t = a_t * h_{t-1} + b_t`` fast, in place, with a scan for backward.

:mod:`mac_minimal.scan` is the readable version of chapter 3 (the loop and recursive doubling);
this module is what the package runs (chapter 4's memory, chapter 3's hybrid block). Same
shapes and results, tested equal to both:

* :func:`associative_scan` -- the work-efficient Blelloch scan (up-sweep + down-sweep,
  ``2 log2 n`` levels), exact for any real ``a`` (zeros and negatives too: no log-space).
  As Blelloch does with fewer processors than elements, blocks of ``leaf_size``
  positions can be scanned by a loop run for all blocks at once, the tree running over
  the blocks; ``leaf_size=1`` is the textbook scan (the default for small tensors).
* :func:`chunked_scan` -- the same two levels with long chunks (``sqrt(n)`` positions) and
  a plain loop over the chunk ends instead of the tree.

Both use a custom :class:`torch.autograd.Function` whose backward is itself a reverse scan
(``dL/db_t = dL/dh_t + a_{t+1} dL/db_{t+1}``, ``dL/da_t = dL/db_t h_{t-1}``), so autograd
never stores the intermediate levels; the backward is built from differentiable operations,
so higher derivatives work too. Apart from their outputs they allocate only tensors
``leaf_size`` (or ``c``) times smaller than the sequence: on a CPU, the first touch of freshly
allocated memory can cost more than a pass over it.
"""

import math
from typing import Callable, Optional

import torch
from torch import Tensor

from mac_minimal.checks import require_positive_int
from mac_minimal.scan import check_scan_inputs

__all__ = ["associative_scan", "chunked_scan", "default_leaf_size"]


def _positions(end: int, start: int, count: int, step: int, reverse: bool) -> slice:
    """Slice of dim 1 holding scan positions ``start, start+step, ...`` (``count >= 1`` of them).

    In a forward scan, scan position ``s`` is stored at index ``s``; in a reverse scan at
    ``end - s``. The slice always runs upwards in storage, so in reverse mode it lists the
    positions in reverse order -- consistently for every operand of one operation.
    """
    if not reverse:
        return slice(start, start + (count - 1) * step + 1, step)
    return slice(end - start - (count - 1) * step, end - start + 1, step)


def _blelloch_(decay: Tensor, h: Tensor, reverse: bool) -> None:
    """In place: turn ``h`` ``(b, n, ...)``, holding ``b``-values, into their scan along dim 1.

    ``decay`` ``(b, n - 1, ...)`` holds the decays of scan positions ``1 .. n-1`` (position 0
    has none: fold ``h0`` into it first), in storage order: ``h_t = decay[t-1] h_{t-1} + b_t``
    forward, ``h_t = decay[t] h_{t+1} + b_t`` in a reverse scan.

    Up-sweep: level ``j`` combines pairs of blocks of ``2^(j-1)`` positions into blocks of
    ``2^j``; a block's ``b``-part lives in ``h`` at its last position, the decays (products)
    of blocks 1, 2, ... in a scratch buffer (block 0 never needs one). Down-sweep: from the
    top level down, every block not starting at position 0 gets its left neighbour's
    (already complete) prefix folded in. ``2 log2 n`` element-wise operations on strided
    views, ``O(n)`` work.
    """
    n = h.shape[1]
    last = n - 1
    work = torch.empty_like(decay, memory_format=torch.contiguous_format)
    levels = [decay]  # decays of blocks 1, 2, ... of size 1
    offset, d = 0, 1
    while 2 * d <= n:  # up-sweep: blocks of size d -> 2d
        cur, count = levels[-1], n // (2 * d)
        end_c = cur.shape[1] - 1
        h[:, _positions(last, 2 * d - 1, count, 2 * d, reverse)].addcmul_(
            cur[:, _positions(end_c, 0, count, 2, reverse)],  # right half of block m: block 2m+1
            h[:, _positions(last, d - 1, count, 2 * d, reverse)])
        nxt = work[:, offset: offset + count - 1]  # blocks 1 .. count-1 of size 2d
        if count > 1:
            torch.mul(cur[:, _positions(end_c, 1, count - 1, 2, reverse)],
                      cur[:, _positions(end_c, 2, count - 1, 2, reverse)], out=nxt)
        levels.append(nxt)
        offset, d = offset + count - 1, 2 * d
    for j in range(len(levels) - 1, -1, -1):  # down-sweep: blocks m = 2, 4, ... of size 2^j
        d, lvl = 2 ** j, levels[j]
        count = (n // d - 1) // 2
        if count == 0:
            continue
        h[:, _positions(last, 3 * d - 1, count, 2 * d, reverse)].addcmul_(
            lvl[:, _positions(lvl.shape[1] - 1, 1, count, 2, reverse)],  # blocks 2, 4, ...
            h[:, _positions(last, 2 * d - 1, count, 2 * d, reverse)])


def _loop_(decay: Tensor, h: Tensor, reverse: bool) -> None:
    """In place, the plain loop with :func:`_blelloch_`'s arguments (for few, small steps)."""
    n = h.shape[1]
    if reverse:
        for t in range(n - 2, -1, -1):
            h[:, t].addcmul_(decay[:, t], h[:, t + 1])
    else:
        for t in range(1, n):
            h[:, t].addcmul_(decay[:, t - 1], h[:, t - 1])


def _two_level(a: Tensor, b: Tensor, h0: Optional[Tensor], reverse: bool, out: Tensor,
               chunk_size: int, carries: Callable[[Tensor, Tensor, bool], None]) -> None:
    """Write the scan of ``(a, b)`` along dim 1 into ``out``: chunks, then their ends.

    Forward: ``h_t = a_t h_{t-1} + b_t`` (``h_{-1} = h0``); reverse: ``h_t = a_{t+1} h_{t+1} + b_t``
    (``h_n = 0``, the scan of the backward pass). With the sequence viewed as ``(b, nc, c, ...)``:

    1. the loop over the ``c`` positions of a chunk, run for all chunks at once from a zero
       state, also multiplies up each chunk's decay (a ``(b, nc - 1, ...)`` tensor);
    2. ``carries`` scans the chunk ends with those decays (:func:`_blelloch_` or :func:`_loop_`);
    3. the loop of step 1 again, started from the true state: re-reading ``b`` is cheaper
       than correcting with a cumulative product, and needs no buffer of the sequence's size.

    The ``n mod c`` positions after the chunks continue the loop.
    """
    n = out.shape[1]
    c = min(chunk_size, n)
    nc = n // c
    main = nc * c
    region = slice(n - main, n) if reverse else slice(0, main)
    hv = out[:, region].unflatten(1, (nc, c))  # (b, nc, c, ...)
    av = a[:, region].unflatten(1, (nc, c))
    bv = b[:, region].unflatten(1, (nc, c))
    if not reverse:  # h[k, j] = a[k, j] h[k, j-1] + b[k, j]
        hv[:, :, 0] = bv[:, :, 0]
        if h0 is not None:
            hv[:, 0, 0].addcmul_(a[:, 0], h0)
        decay = av[:, 1:, 0].clone()  # (b, nc - 1, ...): decays of chunks 1 .. nc-1
        for j in range(1, c):
            torch.addcmul(bv[:, :, j], av[:, :, j], hv[:, :, j - 1], out=hv[:, :, j])
            decay.mul_(av[:, 1:, j])
        carries(decay, hv[:, :, c - 1], False)
        if c > 1:
            torch.addcmul(bv[:, 1:, 0], av[:, 1:, 0], hv[:, :-1, c - 1], out=hv[:, 1:, 0])
        for j in range(1, c - 1):
            torch.addcmul(bv[:, 1:, j], av[:, 1:, j], hv[:, 1:, j - 1], out=hv[:, 1:, j])
        for t in range(main, n):
            torch.addcmul(b[:, t], a[:, t], out[:, t - 1], out=out[:, t])
    else:  # h[k, j] = a[k, j+1] h[k, j+1] + b[k, j]; h[k, c-1] reads a[k+1, 0] and h[k+1, 0]
        hv[:, :, c - 1] = bv[:, :, c - 1]
        decay = av[:, 1:, 0].clone()  # (b, nc - 1, ...): decays of chunks 0 .. nc-2
        for j in range(c - 2, -1, -1):
            torch.addcmul(bv[:, :, j], av[:, :, j + 1], hv[:, :, j + 1], out=hv[:, :, j])
            decay.mul_(av[:, :-1, j + 1])
        carries(decay, hv[:, :, 0], True)
        if c > 1:
            torch.addcmul(bv[:, :-1, c - 1], av[:, 1:, 0], hv[:, 1:, 0], out=hv[:, :-1, c - 1])
        for j in range(c - 2, 0, -1):
            torch.addcmul(bv[:, :-1, j], av[:, :-1, j + 1], hv[:, :-1, j + 1], out=hv[:, :-1, j])
        for t in range(n - main - 1, -1, -1):
            torch.addcmul(b[:, t], a[:, t + 1], out[:, t + 1], out=out[:, t])


class _LinearScan(torch.autograd.Function):
    """Forward scan ``h_t = a_t h_{t-1} + b_t`` (``h_{-1} = h0``) or, when ``reverse``, the scan
    ``h_t = a_{t+1} h_{t+1} + b_t`` (``h_n = 0``) that its backward needs, and whose own
    backward is a forward scan again. ``kernel(a, b, h0, reverse, out)`` writes the scan
    into ``out``."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Optional[Tensor], reverse: bool,
                kernel: Callable[..., None]) -> Tensor:
        h = torch.empty_like(b, memory_format=torch.contiguous_format)
        kernel(a, b, h0, reverse, h)
        ctx.save_for_backward(a, h, h0)
        ctx.reverse, ctx.kernel = reverse, kernel
        return h

    @staticmethod
    def backward(ctx, dh: Tensor):
        a, h, h0 = ctx.saved_tensors
        reverse = ctx.reverse
        # dL/db = g with g_t = dh_t + a_{t+1} g_{t+1} (forward scan) or g_t = dh_t + a_t g_{t-1}
        # (reverse scan): the scan in the other direction. dL/da_t = g_t h_{t-1} (forward),
        # dL/da_{t+1} = g_t h_{t+1} (reverse), dL/da_0 = g_0 h0 (zero without h0).
        g = _LinearScan.apply(a, dh, None, not reverse, ctx.kernel)
        grad_a = grad_h0 = None
        if ctx.needs_input_grad[0]:
            src, other = (g[:, :-1], h[:, 1:]) if reverse else (g[:, 1:], h[:, :-1])
            first = torch.zeros_like(g[:, :1]) if h0 is None else g[:, :1] * h0.unsqueeze(1)
            if torch.is_grad_enabled():  # create_graph=True: differentiable operations only
                grad_a = torch.cat([first, src * other], 1)
            else:  # one fresh buffer, no concatenated copy
                grad_a = torch.empty_like(g)
                grad_a[:, :1] = first
                torch.mul(src, other, out=grad_a[:, 1:])
            grad_a = grad_a.sum_to_size(a.shape)
        if h0 is not None and ctx.needs_input_grad[2]:
            grad_h0 = a[:, 0] * g[:, 0]
        return grad_a, g, grad_h0, None, None


def default_leaf_size(b: Tensor) -> int:
    """``leaf_size`` that :func:`associative_scan` uses when given None: 1 below 2**20 elements
    of ``b``, where a few large operations matter most, 16 from there on, where scratch
    memory and strided passes do (the crossover measured in ``benchmarks/bench_scan.py``)."""
    return 1 if b.numel() < 2**20 else 16


def associative_scan(a: Tensor, b: Tensor, h0: Optional[Tensor] = None,
                     leaf_size: Optional[int] = None) -> Tensor:
    """``h_t = a_t * h_{t-1} + b_t`` by a work-efficient (Blelloch) parallel scan.

    ``O(n)`` work; depth ``2 * leaf_size + 2 log2(n / leaf_size)`` element-wise operations:
    blocks of ``leaf_size`` positions are scanned by a loop run for all blocks at once, the
    Blelloch tree runs over the blocks (``leaf_size=1``: over single positions, the textbook
    scan). Exact for any real ``a`` (zeros and negatives too; no logarithms). Used for
    momentum and forgetting in Titans' chunk-parallel memory (arXiv 2501.00663 v1, eqs. 16-18).

    Args:
        a: ``(b, n, ...)`` decays; may have size 1 in any dim except the sequence dim 1.
        b: ``(b, n, ...)`` inputs, any number of trailing dims.
        h0: ``(b, ...)`` initial state, or None for zeros.
        leaf_size: positions per leaf block (an int >= 1); None: :func:`default_leaf_size`.

    Returns:
        ``h``: ``(b, n, ...)``, equal to :func:`mac_minimal.scan.scan_sequential` (values and gradients).
    """
    check_scan_inputs(a, b, h0)
    leaf = default_leaf_size(b) if leaf_size is None else leaf_size
    require_positive_int("leaf_size", leaf)

    def kernel(a_: Tensor, b_: Tensor, h0_: Optional[Tensor], reverse: bool, out: Tensor) -> None:
        _two_level(a_, b_, h0_, reverse, out, leaf, _blelloch_)

    return _LinearScan.apply(a, b, h0, False, kernel)


def chunked_scan(a: Tensor, b: Tensor, h0: Optional[Tensor] = None,
                 chunk_size: Optional[int] = None) -> Tensor:
    """``h_t = a_t * h_{t-1} + b_t`` by a loop inside chunks run for all chunks at once.

    Two loops of ``c`` steps (``chunk_size``, default ``ceil(sqrt(n))``) over all chunks, and
    one loop over the ``n / c`` chunk ends, instead of one loop of ``n`` steps; same
    arguments and result as :func:`associative_scan`. (These chunks are the scan's own; the
    neural memory's chunk of eq. 16 is ``NeuralMemoryConfig.chunk_size``, a different thing.)
    """
    check_scan_inputs(a, b, h0)
    if chunk_size is None:
        chunk_size = math.isqrt(b.shape[1] - 1) + 1
    require_positive_int("chunk_size", chunk_size)

    def kernel(a_: Tensor, b_: Tensor, h0_: Optional[Tensor], reverse: bool, out: Tensor) -> None:
        _two_level(a_, b_, h0_, reverse, out, chunk_size, _loop_)

    return _LinearScan.apply(a, b, h0, False, kernel)
