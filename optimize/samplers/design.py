"""The space-filling initial design of the GP samplers, as a function and as an Optuna sampler.

:func:`sobol_point` is the point :class:`~optimize.samplers.botorch.BoTorchSampler` draws for a
trial before its GP takes over: point ``index`` of a scrambled Sobol sequence seeded by the
sampler's seed, mapped onto the search space so that every integer, stepped or categorical value
gets an equal share (:meth:`~optimize.space.CubeEncoding.from_cells`; plain snapping would draw
the two end values of ``max_references`` 1..8 half as often as the others).

:class:`SobolDesignSampler` hands out the same points through Optuna's independent sampling, so
another sampler can start from exactly our initial design: ``bench.samplers`` gives it to Optuna's
``GPSampler`` as ``independent_sampler`` to compare the two models on equal starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from optuna.samplers import BaseSampler

from optimize.space import CubeEncoding

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.study import Study
    from optuna.trial import FrozenTrial

__all__ = ["SobolDesignSampler", "sobol_point"]


def sobol_point(encoding: CubeEncoding, seed: int, index: int) -> dict[str, Any]:
    """Point ``index`` (0-based) of the seeded, scrambled Sobol design over ``encoding``'s space."""
    import torch
    from torch.quasirandom import SobolEngine

    engine = SobolEngine(encoding.dim, scramble=True, seed=seed)
    if index > 0:
        engine.fast_forward(index)
    unit = engine.draw(1, dtype=torch.float64)  # (1, d)
    return encoding.decode(encoding.from_cells(unit))[0]


class SobolDesignSampler(BaseSampler):
    """Every trial is point ``trial.number`` of :func:`sobol_point` over a fixed search space.

    Parameters outside ``search_space`` are sampled at random (seeded).

    Args:
        search_space: ``name -> distribution`` of the design (single-valued ones are skipped).
        seed: the design's seed; the same as a ``BoTorchSampler``'s seed gives its points.
    """

    def __init__(self, search_space: Mapping[str, BaseDistribution], seed: int) -> None:
        from optuna.samplers import RandomSampler

        self._space = {name: dist for name, dist in search_space.items() if not dist.single()}
        self._encoding = CubeEncoding(self._space)
        self._seed = int(seed)
        self._random = RandomSampler(seed=self._seed)
        self._cache: dict[int, dict[str, Any]] = {}

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict:
        return {}

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        if param_name not in self._space or self._space[param_name] != param_distribution:
            return self._random.sample_independent(study, trial, param_name, param_distribution)
        if trial.number not in self._cache:
            self._cache = {trial.number: sobol_point(self._encoding, self._seed, trial.number)}
        return self._cache[trial.number][param_name]
