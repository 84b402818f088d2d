"""Checks of user-given values shared by every layer, so each rule is written once."""

from __future__ import annotations

from fabric.errors import FabricOptError, InvalidParameterError

__all__ = ["check_int"]


def check_int(
    name: str, value: object, *, minimum: int | None = None, error: type[FabricOptError] = InvalidParameterError
) -> int:
    """``value`` if it is an integer (not a bool) of at least ``minimum``; else a one-line ``error``.

    Args:
        name: how the message names the value, e.g. ``"n_images"``.
        value: the value to check.
        minimum: the smallest allowed value (``None``: any integer).
        error: the :class:`~fabric.errors.FabricOptError` subclass to raise (config files raise
            :class:`~fabric.errors.ConfigError`).
    """
    kind = {None: "an integer", 0: "a non-negative integer", 1: "a positive integer"}.get(
        minimum, f"an integer >= {minimum}"
    )
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        raise error(f"{name} must be {kind}, got {value!r}")
    return value
