"""Rotary position embedding (RoPE, Su et al. 2021), written out.

A query or key vector of even size ``head_dim`` is cut into ``head_dim / 2`` consecutive
pairs ``(x[2i], x[2i+1])``. At integer position ``m`` pair ``i`` is rotated by the angle
``m * theta_i`` with ``theta_i = base ** (-2i / head_dim)``:

    (x[2i], x[2i+1]) -> (x[2i] cos(m theta_i) - x[2i+1] sin(m theta_i),
                         x[2i] sin(m theta_i) + x[2i+1] cos(m theta_i))

Writing the rotation at position ``m`` as the block-diagonal orthogonal matrix ``R_m``,
``R_m^T R_n = R_{n-m}``, so ``(R_m q) . (R_n k) = q . (R_{n-m} k)``: after rotation the
score of a query and a key depends on their positions only through ``n - m``.

Positions are always passed explicitly, so a segment that starts at offset ``s`` of a
stream is rotated with positions ``s .. s+n-1`` and gives the same vectors as the same
rows of the whole stream.

A layer whose positions never pass a fixed bound (MAC: positions inside a segment) computes the
cosines and sines once (:func:`rotary_table`) and rotates with rows of them
(:func:`rotate_pairs`). The values are the same; what changes is what a compiler sees: with the
angles computed inside the compiled region, ``torch.compile`` (inductor, CPU) fuses
``base ** (-2i / head_dim)``, ``cos`` and ``sin`` into the rotation's loop and evaluates them, in
float64, once per element of every query and key (chapter 7 measures what that costs).
"""

import torch
from einops import rearrange
from torch import Tensor, nn

from mac_minimal.checks import require_rotary_heads

__all__ = ["ROTARY_BASE", "rotary_angles", "rotary_table", "rotate_pairs", "apply_rotary", "RotaryEmbedding"]

ROTARY_BASE = 10000.0
"""The usual base (Su et al. 2021): pair i turns by ``base ** (-2i / head_dim)`` per position."""


def rotary_angles(positions: Tensor, head_dim: int, base: float = ROTARY_BASE) -> Tensor:
    """Angles ``m * theta_i`` of shape (n, head_dim / 2), computed in float64.

    positions: (n,). ``theta_i = base ** (-2i / head_dim)``, i = 0 .. head_dim/2 - 1.
    """
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim
    inv_freq = base ** (-exponents)                                  # (head_dim/2,)
    return positions.to(torch.float64)[:, None] * inv_freq[None, :]  # (n, head_dim/2)


def rotary_table(length: int, head_dim: int, base: float = ROTARY_BASE) -> tuple[Tensor, Tensor]:
    """``cos`` and ``sin`` of the angles at positions ``0 .. length - 1``, each (length, head_dim / 2)
    float64: row ``m`` is what :func:`rotate_pairs` needs to rotate position ``m``."""
    angles = rotary_angles(torch.arange(length), head_dim, base)
    return angles.cos(), angles.sin()


def rotate_pairs(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the pairs ``(x[2i], x[2i+1])`` of x (..., n, head_dim) by the angles whose cosines
    and sines are ``cos``, ``sin`` (n, head_dim / 2), cast to x's dtype and device; same shape out."""
    half = (*x.shape[-2:-1], x.shape[-1] // 2)
    if x.dim() < 2 or x.shape[-1] % 2 != 0 or cos.shape != half or sin.shape != half:
        raise ValueError("rotate_pairs needs x of shape (..., n, head_dim) with an even head_dim and cos, sin of "
                         f"shape (n, head_dim / 2), got x {tuple(x.shape)}, cos {tuple(cos.shape)}, "
                         f"sin {tuple(sin.shape)}")
    cos = cos.to(device=x.device, dtype=x.dtype)
    sin = sin.to(device=x.device, dtype=x.dtype)
    pairs = rearrange(x, "... n (i r) -> ... n i r", r=2)           # consecutive pairs (x[2i], x[2i+1])
    x_even, x_odd = pairs[..., 0], pairs[..., 1]                     # (..., n, head_dim/2) each
    rotated = torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1)
    return rearrange(rotated, "... n i r -> ... n (i r)")


def apply_rotary(x: Tensor, positions: Tensor, base: float = ROTARY_BASE) -> Tensor:
    """Rotate ``x`` of shape (..., n, head_dim) at positions (n,); same shape out.

    Typically x is (b, h, n, head_dim): queries or keys after the head split. The angles are
    computed in float64 and cast to ``x.dtype``.
    """
    if x.dim() < 2 or x.shape[-1] % 2 != 0 or positions.shape != x.shape[-2:-1]:
        raise ValueError("rotary needs x of shape (..., n, head_dim) with an even head_dim and positions "
                         f"of shape (n,), got x {tuple(x.shape)} and positions {tuple(positions.shape)}")
    angles = rotary_angles(positions, x.shape[-1], base)             # (n, head_dim/2)
    return rotate_pairs(x, angles.cos(), angles.sin())


class RotaryEmbedding(nn.Module):
    """Rotary position embedding for vectors of size ``head_dim`` (no parameters, no cache): chapter 5's
    module form of :func:`apply_rotary`, which the package's layers call directly.

    ``forward(x, positions)``: x (b, h, n, head_dim) -- or any (..., n, head_dim) -- and
    positions (n,) -> rotated x, same shape. See :func:`apply_rotary`.
    """

    def __init__(self, head_dim: int, base: float = ROTARY_BASE) -> None:
        super().__init__()
        require_rotary_heads(head_dim, heads=1, base=base)   # one head of width head_dim
        self.head_dim = head_dim
        self.base = base

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        if x.shape[-1] != self.head_dim:
            raise ValueError(f"x must have shape (..., n, head_dim={self.head_dim}), got {tuple(x.shape)}")
        return apply_rotary(x, positions, self.base)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}"
