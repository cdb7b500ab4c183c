"""The dual form of the neural memory's chunked write-and-read (chapter 4, the section 'The dual form').

Chapter 4's chunk-parallel write (eqs. 16-18) builds the fast weights ``M_t`` of EVERY token of a
chunk, ``(b, c, P)`` numbers with ``P = 2 d f + 2 d``, only to apply each of them to one query.
The dual form (the name comes from the TTT papers, Sun et al. 2024) never builds them. It rests on
three facts:

1. **Each token's gradient is a sum of outer products.** For ``M(x) = x + LN(W2 gelu(W1 x)) * g + b``
   at the chunk's weights (eq. 16), token s's gradient of eq. (12) is, layer by layer,
   ``grad W1 = da_s k_s^T``, ``grad W2 = do_s z_s^T``, ``grad g = e_s * n_s``, ``grad b = e_s``
   (:func:`mlp_gradient_factors`): a few vectors per token instead of P numbers.
2. **Momentum and forgetting are linear.** Inside a chunk, eqs. (13)-(14) give every weight as
   ``W_t = D_t W_prev + B_t S_prev + sum_{s<=t} C_ts G_s``, with scalar coefficients built from
   the rates (:func:`chunk_coefficients`): ``C = L_(1-alpha) L_eta diag(-theta u)``, a product of
   two *decay matrices* (:func:`decay_matrix`), the matrix form of chapter 3's recurrence.
3. **Then every read is attention-like.** ``W1_t q_t = D_t W1_prev q_t + B_t S1_prev q_t +
   sum_s C_ts (k_s . q_t) da_s``: a ``c x c`` matrix ``C * (Q K^T)`` applied to the rows ``da_s``,
   and the same again for ``W2`` with the hidden vectors (:func:`dual_chunk`).

Only the chunk-end weights and momentum (the state) are built. Cost per chunk ``O(c d f + c^2 (d + f))``
and memory ``O(c (d + f))`` instead of ``O(c d f)``. The result is the same numbers as the
materialised form, up to rounding: ``tests/test_dual_form.py`` checks values and gradients in float64.

Shapes: b batch, c tokens of the chunk (or of the piece of it this call sees), d width, f hidden.
"""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

Weights = tuple[Tensor, ...]
"""Fast weights ``(W1 (b, f, d), W2 (b, d, f), ln_gain (b, d), ln_bias (b, d))``."""


def gelu_derivative(a: Tensor) -> Tensor:
    """``d gelu(a) / da = Phi(a) + a phi(a)`` for the exact (erf) GELU of ``F.gelu``."""
    return 0.5 * (1 + torch.erf(a / math.sqrt(2))) + a * torch.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)


def apply_weights(w: Tensor, x: Tensor) -> Tensor:
    """``W x_s`` for every row s of x: w (b, o, i), x (b, c, i) -> (b, c, o), the same numbers as ``x @ w.mT``.

    Computed as ``(W x^T)^T`` (then copied into the usual row layout, a chunk-sized copy), so that
    backward forms W's gradient ``dY^T x`` directly in W's own layout. Written ``x @ w.mT``,
    autograd hands W's gradient back transposed (a non-contiguous view), and every weight-sized
    operation of backward after it (the chunk end's ``D W + B S``, the momentum, the gradients of
    the coefficients) pairs a transposed tensor with a contiguous one, several times slower per
    operation on a CPU (``benchmarks/bench_weight_layout.py`` measures it). :func:`dual_chunk`'s
    read uses it; :func:`mlp_gradient_factors` keeps ``x @ w.mT`` (see there).
    """
    return (w @ x.mT).mT.contiguous()


class GradientFactors(NamedTuple):
    """Token s's gradient of eq. (12) at weights W, in factored form (every field ``(b, c, .)``).

    ``grad W1 = delta_hidden_s keys_s^T``, ``grad W2 = delta_out_s hidden_s^T``,
    ``grad ln_gain = grad_gain_s``, ``grad ln_bias = grad_bias_s``; ``scale_s`` is the per-token
    clip factor ``bound / max(||G_s||, bound)`` (chapter 4), ``(b, c)``.
    """

    keys: Tensor          # k_s                      (b, c, d)
    hidden: Tensor        # z_s = gelu(W1 k_s)       (b, c, f)
    delta_hidden: Tensor  # da_s = dl / d(W1 k_s)    (b, c, f)
    delta_out: Tensor     # do_s = dl / d(W2 z_s)    (b, c, d)
    grad_gain: Tensor     # e_s * n_s                (b, c, d)
    grad_bias: Tensor     # e_s                      (b, c, d)
    scale: Tensor         # u_s                      (b, c)


def mlp_gradient_factors(weights: Weights, k: Tensor, v: Tensor, bound: float, eps: float,
                         write_norm: bool = True) -> GradientFactors:
    """Eq. (12)'s gradient ``grad l(W; k_s, v_s)`` for every token at the same weights, by hand.

    weights: ``(W1 (b, f, d), W2 (b, d, f), gain (b, d), bias (b, d))``; k, v: (b, c, d).
    The forward ``a = W1 k, z = gelu(a), o = W2 z, n = LN(o), M(k) = k + n * g + b`` and its
    backward from ``e = 2 (M(k) - v)``, written out in torch ops, so autograd can differentiate
    *through* it (training needs these gradients' own gradients).
    """
    w1, w2, gain, bias = weights
    # x @ w.mT, not apply_weights: with apply_weights here, torch.compile's inductor (torch 2.13, CPU)
    # computes wrong gradients through the layer norm's backward below (tests/test_compiled.py)
    a = k @ w1.mT                                               # (b, c, f)
    z = F.gelu(a)
    o = z @ w2.mT                                               # (b, c, d)
    centered = o - o.mean(-1, keepdim=True)
    inv_std = torch.rsqrt(centered.pow(2).mean(-1, keepdim=True) + eps)
    normed = centered * inv_std                                 # n_s
    error = 2 * (k + normed * gain[:, None] + bias[:, None] - v)  # e_s = dl / dM(k_s)
    delta_normed = error * gain[:, None]
    # the layer norm's backward: d o = (dn - mean(dn) - n mean(dn * n)) / std
    delta_out = inv_std * (delta_normed - delta_normed.mean(-1, keepdim=True)
                           - normed * (delta_normed * normed).mean(-1, keepdim=True))
    # (W2^T do) * gelu'(a), by PyTorch's fused GELU backward: one op instead of gelu_derivative's ten
    delta_hidden = torch.ops.aten.gelu_backward(delta_out @ w2, a)  # (b, c, f)
    grad_gain, grad_bias = error * normed, error
    if not write_norm:                                          # only W1 and W2 are written
        grad_gain, grad_bias = torch.zeros_like(grad_gain), torch.zeros_like(grad_bias)
    # ||G_s||^2 over all fast weights; an outer product's norm is the product of the two norms
    def sq(t: Tensor) -> Tensor:                                # |t_s|^2 per token, (b, c)
        return torch.linalg.vecdot(t, t)

    sq_norm = sq(delta_hidden) * sq(k) + sq(delta_out) * sq(z) + sq(grad_gain) + sq(grad_bias)
    scale = bound / sq_norm.clamp(min=bound**2).sqrt()         # the same clip as chapter 4's
    return GradientFactors(k, z, delta_hidden, delta_out, grad_gain, grad_bias, scale)


def decay_matrix(a: Tensor) -> Tensor:
    """The matrix form of ``h_t = a_t h_{t-1} + x_t``: ``L[t, s] = a_{s+1} ... a_t`` for ``s <= t``.

    a: (b, c) -> L: (b, c, c), lower triangular with ones on the diagonal, so that
    ``h = L x`` solves the recurrence from ``h_0 = 0`` (chapter 3's scan, as one matrix).
    Built by a cumulative product down each column: no logarithms, no division, exact at ``a = 0``.
    """
    c = a.shape[-1]
    below = torch.ones(c, c, dtype=torch.bool, device=a.device).tril(-1)  # t > s
    factors = torch.where(below, a[..., :, None], torch.ones((), dtype=a.dtype, device=a.device))
    return factors.cumprod(dim=-2).tril()


class ChunkCoefficients(NamedTuple):
    """``W_t = decay_t W_prev + from_momentum_t S_prev + sum_s mix[t, s] G_s`` and
    ``S_end = momentum_decay S_prev + sum_s momentum_mix[s] G_s`` (every field per batch row)."""

    decay: Tensor          # D_t = prod_{i<=t} (1 - alpha_i)                         (b, c)
    from_momentum: Tensor  # B_t = sum_{r<=t} prod_{i=r+1..t} (1 - alpha_i) E_r    (b, c)
    mix: Tensor            # C = L_(1-alpha) L_eta diag(-theta u)                    (b, c, c)
    momentum_decay: Tensor  # E_c = prod_{i<=c} eta_i                               (b,)
    momentum_mix: Tensor   # last row of L_eta diag(-theta u)                        (b, c)


def chunk_coefficients(theta: Tensor, eta: Tensor, alpha: Tensor, scale: Tensor) -> ChunkCoefficients:
    """Eqs. (13)-(14) unrolled over one chunk: rates and clip scales (b, c) -> scalar coefficients.

    ``S_t = eta_t S_{t-1} - theta_t u_t G_t`` gives ``S_t = E_t S_prev + (L_eta diag(-theta u) G)_t``;
    ``M_t = (1 - alpha_t) M_{t-1} + S_t`` gives ``M_t = D_t M_prev + (L_(1-alpha) S)_t``.
    """
    keep = 1 - alpha
    step = -theta * scale                                       # (b, c)
    momentum_of_grads = decay_matrix(eta) * step[:, None, :]    # S_t's coefficient of G_s
    keep_matrix = decay_matrix(keep)
    eta_products = eta.cumprod(-1)                              # E_t
    return ChunkCoefficients(
        decay=keep.cumprod(-1),
        from_momentum=(keep_matrix @ eta_products[..., None])[..., 0],
        mix=keep_matrix @ momentum_of_grads,
        momentum_decay=eta_products[:, -1],
        momentum_mix=momentum_of_grads[:, -1],
    )


def scale_rows(scalar: Tensor, w: Tensor) -> Tensor:
    """``scalar[i] * w[i]`` for every batch row: scalar (b,), w (b, ...) -> (b, ...)."""
    return scalar.reshape(-1, *[1] * (w.dim() - 1)) * w


def chunk_end(coef: ChunkCoefficients, weights: Weights, momentum: Weights, grads: GradientFactors
              ) -> tuple[Weights, Weights]:
    """The state after the chunk's last token: ``M_end = D_c M_prev + B_c S_prev + sum_s C_cs G_s``
    and ``S_end = E_c S_prev + sum_s mu_s G_s`` (the last rows of the coefficients).

    A weighted sum of outer products is one matrix product per layer: ``sum_s w_s da_s k_s^T =
    (da * w)^T K``.
    """
    def outer_sums(w: Tensor) -> Weights:                           # sum_s w_s G_s, w (b, c)
        w = w[..., None]
        return ((grads.delta_hidden * w).mT @ grads.keys,          # (b, f, d)
                (grads.delta_out * w).mT @ grads.hidden,           # (b, d, f)
                (grads.grad_gain * w).sum(1), (grads.grad_bias * w).sum(1))

    new_weights = tuple(delta + scale_rows(coef.decay[:, -1], w) + scale_rows(coef.from_momentum[:, -1], s)
                        for delta, w, s in zip(outer_sums(coef.mix[:, -1]), weights, momentum))
    new_momentum = tuple(delta + scale_rows(coef.momentum_decay, s)
                         for delta, s in zip(outer_sums(coef.momentum_mix), momentum))
    return new_weights, new_momentum


def dual_chunk(weights: Weights, momentum: Weights, chunk_weights: Weights, k: Tensor, v: Tensor,
               theta: Tensor, eta: Tensor, alpha: Tensor, q: Tensor | None, bound: float, eps: float,
               write_norm: bool = True) -> tuple[Weights, Weights, Tensor | None]:
    """Write c tokens that lie in ONE chunk and, if q is given, read ``y_t = M_t(q_t)`` for each.

    weights, momentum: ``M_prev``, ``S_prev`` before the first of these tokens; chunk_weights: the
    weights where the chunk began (eq. 16's gradients are taken there). k, v, q: (b, c, d); rates
    (b, c). ``write_norm=False`` writes W1 and W2 only (:class:`~mac_minimal.neural_memory.NeuralMemoryConfig`).
    Returns the weights and momentum after the last token and y (b, c, d) or None.
    """
    grads = mlp_gradient_factors(chunk_weights, k, v, bound, eps, write_norm)
    coef = chunk_coefficients(theta, eta, alpha, grads.scale)
    y = None
    if q is not None:
        w1, w2, gain, bias = weights
        s1, s2, s_gain, s_bias = momentum
        decay, from_momentum = coef.decay[..., None], coef.from_momentum[..., None]  # (b, c, 1)
        # W1_t q_t, with W1_t = D_t W1_prev + B_t S1_prev + sum_s C_ts da_s k_s^T
        a = (decay * apply_weights(w1, q) + from_momentum * apply_weights(s1, q)
             + (coef.mix * (q @ k.mT)) @ grads.delta_hidden)                        # (b, c, f)
        z = F.gelu(a)
        o = (decay * apply_weights(w2, z) + from_momentum * apply_weights(s2, z)
             + (coef.mix * (z @ grads.hidden.mT)) @ grads.delta_out)                # (b, c, d)
        gain_t = decay * gain[:, None] + from_momentum * s_gain[:, None] + coef.mix @ grads.grad_gain
        bias_t = decay * bias[:, None] + from_momentum * s_bias[:, None] + coef.mix @ grads.grad_bias
        y = q + F.layer_norm(o, o.shape[-1:], eps=eps) * gain_t + bias_t
    return *chunk_end(coef, weights, momentum, grads), y
