"""What every block here has besides attention: the feed-forward MLP, and one way to count
parameters."""

from torch import nn

__all__ = ["FeedForward", "num_parameters"]


class FeedForward(nn.Sequential):
    """The position-wise MLP of a transformer block (Vaswani et al. 2017, eq. 2, with GELU):
    ``W_2 gelu(W_1 x + b_1) + b_2``, (..., dim) -> (..., out_dim), out_dim = dim unless given.

    A ``nn.Sequential`` of ``Linear, GELU, Linear``, so its parameters are named ``0.weight``,
    ``0.bias``, ``2.weight``, ``2.bias`` and created in that order.
    """

    def __init__(self, dim: int, hidden: int, out_dim: int | None = None) -> None:
        out_dim = dim if out_dim is None else out_dim
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))


def num_parameters(module: nn.Module) -> int:
    """Number of learned scalars in ``module`` (every parameter, trainable or not, counted once)."""
    return sum(p.numel() for p in module.parameters())
