"""The input checks modules share, each with one message format: a whole number, a real number in
a range, a rotary head width, a batch of token ids. Each names what was expected and what was given."""

import math

import torch
from torch import Tensor


def require_int(name: str, value: object, minimum: int) -> None:
    """Raise ``ValueError("<name> must be an int >= <minimum>, got <value>")`` unless ``value`` is
    an ``int >= minimum`` (``bool`` is refused: ``True`` is not a size)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def require_positive_int(name: str, value: object) -> None:
    """:func:`require_int` with ``minimum=1``: a size, a count, a length."""
    require_int(name, value, minimum=1)


def require_number(name: str, value: float, low: float | None = None, high: float | None = None,
                   closed: bool = False) -> None:
    """Raise ``ValueError("<name> must be <bound>, got <value>")`` unless ``value`` is a finite number
    above ``low`` (at least ``low`` if ``closed``) and at most ``high``; no bounds: any finite number."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    too_low = is_number and low is not None and (value < low if closed else value <= low)
    if not is_number or not math.isfinite(value) or too_low or (high is not None and value > high):
        bound = "any finite number" if low is None else (
            f"{'>=' if closed else '>'} {low:g}" + ("" if high is None else f" and <= {high:g}"))
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def require_rotary_heads(dim: int, heads: int, base: float) -> None:
    """Raise ``ValueError`` unless ``dim`` splits into ``heads`` heads of an even width (rotary turns
    pairs of features) and the rotary ``base`` is > 1 (so the angles slow down along the pairs)."""
    if dim % heads != 0 or (dim // heads) % 2 != 0:
        raise ValueError(f"dim / heads must be an even integer (rotary), got dim={dim}, heads={heads}")
    if not base > 1:
        raise ValueError(f"rotary base must be > 1, got {base!r}")


def require_tokens(tokens: object, vocab_size: int) -> None:
    """Raise unless ``tokens`` is an int64 tensor (b, n), b, n >= 1, with ids in ``[0, vocab_size)``.

    The ids are checked on the CPU only: on a GPU, reading ``min``/``max`` back would stall every
    call, and the embedding checks the ids there itself.
    """
    if not isinstance(tokens, Tensor) or tokens.dtype != torch.int64:
        given = tokens.dtype if isinstance(tokens, Tensor) else type(tokens).__name__
        raise TypeError(f"tokens must be a torch.Tensor of dtype torch.int64, got {given}")
    if tokens.dim() != 2 or tokens.numel() == 0:
        raise ValueError(f"tokens must have shape (b, n) with b, n >= 1, got {tuple(tokens.shape)}")
    if tokens.device.type == "cpu":
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= vocab_size:
            raise IndexError(f"token ids must lie in [0, vocab_size={vocab_size}), "
                             f"got ids in [{low}, {high}]")
