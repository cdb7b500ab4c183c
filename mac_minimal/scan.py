"""Linear recurrences ``h_t = a_t * h_{t-1} + b_t`` as an associative scan (chapter 3), readably.

The recurrence is a prefix "sum" under the associative operator on pairs

    (a1, b1) o (a2, b2) = (a1 * a2, a2 * b1 + b2),

(first apply step 1, then step 2; :func:`combine`), so it can be evaluated in ``O(log n)``
parallel steps instead of ``n`` sequential ones (Blelloch 1990; Hillis & Steele 1986; Martin &
Cundy 2018). Titans uses exactly this for momentum and forgetting in its chunk-parallel memory
update (arXiv 2501.00663 v1, eqs. 16-18).

Shapes: ``a`` and ``b`` are ``(b, n, ...)`` (batch, sequence, any number of trailing feature
dims); ``h0`` is ``(b, ...)``. The scan runs along dim 1. ``a`` may have size 1 in any dim other
than the sequence dim (e.g. ``(b, n, 1, 1)`` for one decay per token applied to a
``(b, n, d1, d2)`` matrix state); it broadcasts against ``b``.

This module is the chapter's teaching version:

* :func:`scan_sequential` -- the plain loop, the reference;
* :func:`scan_doubling` -- the Hillis-Steele scan: ``log2 n`` rounds of :func:`combine`, each
  position with the one ``2^k`` before it; ``O(n log n)`` work, plain autograd.

The package runs the tuned kernel beside it, :mod:`mac_minimal.scan_kernel` (Blelloch's
work-efficient scan, in place, with a backward that is itself a scan); all three are tested
equal, values and gradients, in ``tests/test_scan.py``.
"""

from typing import Optional

import torch
from torch import Tensor

__all__ = ["check_scan_inputs", "combine", "scan_sequential", "scan_doubling"]


def check_scan_inputs(a: Tensor, b: Tensor, h0: Optional[Tensor]) -> None:
    """Raise a clear TypeError/ValueError unless ``a``, ``b``, ``h0`` fit ``(b, n, ...)``."""
    for name, t in (("a", a), ("b", b), ("h0", h0)):
        if t is not None and not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if b.dim() < 2:
        raise ValueError(f"b must have shape (batch, seq, ...) with at least 2 dims, got {tuple(b.shape)}")
    if b.shape[1] < 1:
        raise ValueError(f"the sequence (dim 1) must have length >= 1, got shape {tuple(b.shape)}")
    if (a.dim() != b.dim() or a.shape[1] != b.shape[1]
            or any(sa not in (1, sb) for sa, sb in zip(a.shape, b.shape))):
        raise ValueError(
            f"a must have the shape of b {tuple(b.shape)}, or size 1 in dims other than the "
            f"sequence dim 1, got {tuple(a.shape)}")
    if not b.is_floating_point() or a.dtype != b.dtype:
        raise TypeError(f"a and b must share one floating dtype, got a {a.dtype} and b {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"a and b must be on one device, got {a.device} and {b.device}")
    if h0 is not None:
        expected = (b.shape[0],) + tuple(b.shape[2:])
        if tuple(h0.shape) != expected:
            raise ValueError(f"h0 must have shape (batch, ...) = {expected}, got {tuple(h0.shape)}")
        if h0.dtype != b.dtype or h0.device != b.device:
            raise TypeError(f"h0 must have b's dtype {b.dtype} and device {b.device}, "
                            f"got {h0.dtype} on {h0.device}")


def scan_sequential(a: Tensor, b: Tensor, h0: Optional[Tensor] = None) -> Tensor:
    """Reference loop for ``h_t = a_t * h_{t-1} + b_t``, ``h_{-1} = h0`` (zeros if None).

    Args:
        a: ``(b, n, ...)`` decays (broadcastable to ``b``, same sequence length).
        b: ``(b, n, ...)`` inputs.
        h0: ``(b, ...)`` initial state, or None for zeros.

    Returns:
        ``h``: ``(b, n, ...)``, same shape as ``b``.

    The outputs are collected in a list and stacked once: writing ``h[:, t] = ...`` into a
    preallocated tensor instead makes every write an autograd node whose backward handles
    the gradient of the whole tensor, an ``O(n^2)`` backward (chapter 3 shows it).
    """
    check_scan_inputs(a, b, h0)
    h = torch.zeros_like(b[:, 0]) if h0 is None else h0
    out = []
    for a_t, b_t in zip(a.unbind(1), b.unbind(1)):
        h = a_t * h + b_t
        out.append(h)
    return torch.stack(out, dim=1)


def combine(first: tuple[Tensor, Tensor], second: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """The scan's operator: apply step ``first = (a1, b1)``, then ``second = (a2, b2)``.

    ``h -> a2 (a1 h + b1) + b2 = (a1 a2) h + (a2 b1 + b2)``, so the pair of the two steps is
    ``(a1 * a2, a2 * b1 + b2)``. Associative: ``combine(combine(x, y), z) == combine(x, combine(y, z))``.
    """
    (a1, b1), (a2, b2) = first, second
    return a1 * a2, a2 * b1 + b2


def scan_doubling(a: Tensor, b: Tensor, h0: Optional[Tensor] = None) -> Tensor:
    """``h_t = a_t * h_{t-1} + b_t`` by recursive doubling (Hillis & Steele 1986).

    After round ``k`` position ``t`` holds the pair of steps ``t - 2^k + 1 .. t`` combined; a
    round combines every position with the one ``2^k`` before it, all at once. ``ceil(log2 n)``
    rounds, ``O(n log n)`` work. The initial state is folded into step 0 first
    (``h_0 = a_0 h0 + b_0``), so every later pair applies to a zero start and ``h_t`` is the
    ``b``-part of pair ``t``. Same arguments and result as :func:`scan_sequential`.
    """
    check_scan_inputs(a, b, h0)
    a = a.expand_as(b)
    h0 = torch.zeros_like(b[:, 0]) if h0 is None else h0
    b = torch.cat([a[:, :1] * h0.unsqueeze(1) + b[:, :1], b[:, 1:]], dim=1)   # fold h0 into step 0
    shift = 1
    while shift < b.shape[1]:                               # position t <- (position t - shift) o t
        earlier = (a[:, :-shift], b[:, :-shift])
        a_new, b_new = combine(earlier, (a[:, shift:], b[:, shift:]))
        a = torch.cat([a[:, :shift], a_new], dim=1)
        b = torch.cat([b[:, :shift], b_new], dim=1)
        shift *= 2
    return b
