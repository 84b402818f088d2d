"""User-facing errors.

Anything the user can fix (a bad path, an invalid value, missing weights) raises a subclass of
:class:`FabricOptError`. The CLI prints ``error: <message>`` on one line and exits with code 2;
library users catch it like any ``ValueError``.
"""

from __future__ import annotations

__all__ = [
    "FabricOptError",
    "InvalidParameterError",
    "ImageError",
    "ModelLoadError",
    "WeightsNotFoundError",
    "ConfigError",
    "ErrorGroup",
]


class FabricOptError(ValueError):
    """Base class of every error caused by user input. Messages are one line.

    Messages speak the library's language (argument names, files). When the fix is to give a
    different value of one argument, ``option`` names it and ``example`` shows a value, so a
    front end can point to its own spelling of it (the CLI adds ``--name NEW``).

    Args:
        message: what went wrong and how to fix it, one line.
        option: the library argument the fix concerns, e.g. ``"name"``, ``"objective_weights"``.
        example: an example value for ``option``, e.g. ``"pickscore=PATH"``.
    """

    exit_code = 2

    def __init__(self, message: str = "", *, option: str | None = None, example: str | None = None) -> None:
        super().__init__(message)
        self.option = option
        self.example = example


class InvalidParameterError(FabricOptError):
    """A parameter value is out of range or inconsistent with another one."""


class ImageError(FabricOptError):
    """A reference or target image is missing, unreadable or in an unsupported format."""


class ModelLoadError(FabricOptError):
    """A model id, folder or checkpoint file could not be loaded."""


class WeightsNotFoundError(ModelLoadError):
    """Reward-model weights are neither local nor reachable on the hub."""


class ConfigError(FabricOptError):
    """A study file, search-space file, preset or prompt file is invalid."""


class ErrorGroup(FabricOptError):
    """Several user errors found by one check (e.g. every missing weight and the model), raised together
    so one run shows them all. ``errors`` holds them, each with its own ``option``/``example``."""

    def __init__(self, errors: list[FabricOptError] | tuple[FabricOptError, ...]) -> None:
        self.errors = tuple(errors)
        super().__init__(f"{len(self.errors)} problems: " + "; ".join(str(e) for e in self.errors))
