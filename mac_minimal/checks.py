"""The input checks modules share, each with one message format: a positive whole number, a rotary head width."""


def require_positive_int(name: str, value: object) -> None:
    """Raise ``ValueError("<name> must be an int >= 1, got <value>")`` unless ``value`` is an
    ``int >= 1`` (``bool`` is refused: ``True`` is not a size)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def require_rotary_heads(dim: int, heads: int) -> None:
    """Raise ``ValueError`` unless ``dim`` splits into ``heads`` heads of an even width (rotary turns
    pairs of features)."""
    if dim % heads != 0 or (dim // heads) % 2 != 0:
        raise ValueError(f"dim / heads must be an even integer (rotary), got dim={dim}, heads={heads}")
