"""Warm starts: enqueue known FABRIC settings as the first trials of a study."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from fabric.errors import ConfigError
from fabric.params import FabricParams

if TYPE_CHECKING:
    import optuna

    from optimize.space import SearchSpace

__all__ = ["DEFAULT_PRESETS", "enqueue_params", "enqueue_defaults"]

logger = logging.getLogger(__name__)

# The hand-picked settings a tuned preset has to beat (DESIGN section 3).
DEFAULT_PRESETS: Mapping[str, FabricParams] = {"paper": FabricParams.paper(), "a1111": FabricParams.a1111()}


def enqueue_params(study: optuna.Study, space: SearchSpace, params: FabricParams, label: str | None = None) -> dict:
    """Enqueue ``params`` (mapped into ``space``) as a trial of ``study``.

    Parameters the space fixes or leaves out are skipped; values outside a range are moved onto
    its bound. A point already in the study is not enqueued twice.

    Returns:
        The enqueued search values.
    """
    values = space.from_params(params, clip=True)
    user_attrs = {"warm_start": label} if label else None
    study.enqueue_trial(values, user_attrs=user_attrs, skip_if_exists=True)
    logger.info("enqueued %s as a warm start: %s", label or "parameters", values)
    return values


def enqueue_defaults(
    study: optuna.Study, space: SearchSpace, presets: Iterable[str] = ("paper", "a1111")
) -> list[dict]:
    """Enqueue the paper's and the A1111 extension's defaults (or the named ``presets``).

    Presets that map to the same point of ``space`` (e.g. when it fixes ``max_weight``) are
    enqueued once.

    Raises:
        ConfigError: an unknown preset name.
    """
    out: list[dict] = []
    for name in presets:
        if name not in DEFAULT_PRESETS:
            raise ConfigError(f"unknown preset '{name}'; known: {', '.join(DEFAULT_PRESETS)}")
        values = space.from_params(DEFAULT_PRESETS[name], clip=True)
        if values in out:
            continue
        out.append(enqueue_params(study, space, DEFAULT_PRESETS[name], label=name))
    return out
