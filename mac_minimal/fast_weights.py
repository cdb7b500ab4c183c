"""The neural memory's MLP as a pure function of its fast weights, its loss and its gradients.

Chapter 4's :class:`~mac_minimal.neural_memory.NeuralMemory` writes by gradient descent on the
weights of ``M(x) = x + LN(W2 gelu(W1 x))``. Written as functions of those weights (not as an
``nn.Module``), ``torch.func`` can take one gradient per token and ``vmap`` over tokens and batch.

Shapes: b batch, n tokens, d width, f = expansion * d hidden width.
"""

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import grad, vmap

Weights = tuple[Tensor, ...]
"""Fast weights ``(W1, W2, ln_gain, ln_bias)``; shapes ``(f, d), (d, f), (d,), (d,)``,
each with leading batch dimensions where the memory is batched."""


def memory_mlp(weights: Weights, x: Tensor, eps: float = 1e-5) -> Tensor:
    """The memory ``M(x) = x + LN(W2 gelu(W1 x))`` for ONE set of fast weights.

    weights: ``(W1 (f, d), W2 (d, f), gain (d,), bias (d,))``; the layer norm's affine
    gain and bias are fast weights too. x: ``(..., d)`` -> ``(..., d)``. Batch it with
    ``torch.func.vmap``, or give weights leading batch dims (``W1 (b, f, d)``, x ``(b, n, d)``,
    gain and bias ``(b, 1, d)``).
    """
    w1, w2, gain, bias = weights
    out = F.gelu(x @ w1.mT) @ w2.mT  # (..., f) -> (..., d)
    # layer norm written out: F.layer_norm's double backward under vmap gives wrong
    # gradients w.r.t. its input (torch 2.13; pytorch/functorch#534), and training
    # backpropagates through the gradients of the write
    centered = out - out.mean(-1, keepdim=True)
    return x + centered * torch.rsqrt(centered.pow(2).mean(-1, keepdim=True) + eps) * gain + bias


def associative_loss(weights: Weights, k: Tensor, v: Tensor, eps: float = 1e-5) -> Tensor:
    """Eq. (12): ``l(M; x_t) = ||M(k_t) - v_t||^2`` for one token: k, v ``(d,)`` -> scalar."""
    return (memory_mlp(weights, k, eps) - v).pow(2).sum()


def token_gradients(weights: Weights, k: Tensor, v: Tensor, eps: float = 1e-5) -> Weights:
    """Eq. (16)'s gradients: ``grad l(M; x_t)`` for every token at the SAME weights, at once.

    weights: each ``(b, *shape)``; k, v: ``(b, n, d)``. Returns one tensor per fast weight,
    ``(b, n, *shape)``. Differentiable w.r.t. weights, k and v (training backpropagates
    through the write).
    """
    per_token = vmap(grad(associative_loss), in_dims=(None, 0, 0, None))  # tokens share weights
    return vmap(per_token, in_dims=(0, 0, 0, None))(weights, k, v, eps)  # one memory per batch row


def clip_gradients(grads: Weights, bound: float, lead_dims: int) -> Weights:
    """Scale each token's gradient so that its norm (over all fast weights) is at most ``bound``.

    grads: each ``(*lead, *shape)`` with ``lead_dims`` leading dims (e.g. b, n).
    ``g * bound / max(||g||, bound)``: the identity for small gradients, a bounded step for
    surprising ones. Clamping the squared norm before the square root keeps the
    backward finite at ``g = 0``.
    """
    sq_norm = sum(g.pow(2).flatten(lead_dims).sum(-1) for g in grads)  # (*lead)
    scale = bound / sq_norm.clamp(min=bound**2).sqrt()
    return tuple(g * scale.reshape(*scale.shape, *([1] * (g.dim() - lead_dims))) for g in grads)


def flatten_weights(weights: Weights, lead_dims: int) -> Tensor:
    """Concatenate fast weights, each ``(*lead, *shape)``, into one vector per row ``(*lead, P)``."""
    return torch.cat([w.flatten(lead_dims) for w in weights], dim=-1)


def unflatten_weights(flat: Tensor, shapes: list[torch.Size]) -> Weights:
    """Inverse of ``flatten_weights``: ``(*lead, P)`` -> one tensor ``(*lead, *shape)`` per shape."""
    pieces = flat.split([s.numel() for s in shapes], dim=-1)
    return tuple(p.reshape(*flat.shape[:-1], *s) for p, s in zip(pieces, shapes))
