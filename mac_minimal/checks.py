"""The input check every module shares: "a positive whole number", with one message format."""


def require_positive_int(name: str, value: object) -> None:
    """Raise ``ValueError("<name> must be an int >= 1, got <value>")`` unless ``value`` is an
    ``int >= 1`` (``bool`` is refused: ``True`` is not a size)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
