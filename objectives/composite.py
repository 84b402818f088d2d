"""Objective specs: weighted sums (``pickscore+0.5*aesthetic``) and tuples (``pickscore,diversity``).

Grammar (whitespace ignored)::

    spec  := sum ("," sum)*          several sums -> a MultiObjective (a Pareto problem)
    sum   := ["+"|"-"] term (("+"|"-") term)*
    term  := [number "*"] name       e.g. 0.5*aesthetic, -2*diversity, hpsv2.1

Weighted sums, how terms are combined (:class:`CompositeObjective`):

1. **standardised** (default, ``normalize=True``): each term's raw score ``s`` becomes
   ``(s - location) / scale`` with the objective's documented typical ``(location, scale)``
   over Stable Diffusion images (``RewardModel.typical``; e.g. PickScore (21, 1), aesthetic
   (5.5, 0.5), HPS v2 (0.27, 0.015), diversity (80, 5)). A weight of 1 then means "one typical
   spread", so ``pickscore+0.5*aesthetic`` values PickScore twice as much as aesthetics whatever
   their raw units. ``normalize=False`` adds raw scores instead.
2. **oriented**: a term whose direction is ``minimize`` (diversity) is negated, so every term
   counts "higher is better" and the sum is maximised. ``pickscore+0.5*diversity`` therefore
   rewards diverse batches; a negative weight reverses a term.
3. ``value = sum(weight * oriented term)``; direction ``maximize``.

A spec with one plain name (``"pickscore"``) returns that objective itself.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fabric.errors import ConfigError, InvalidParameterError, WeightsNotFoundError
from objectives.base import Direction, RewardModel, check_images, expand_prompts
from objectives.registry import (
    available_objectives,
    canonical_name,
    check_weights,
    load_objective,
    objective_components,
)

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = ["CompositeObjective", "MultiObjective", "parse_objective", "parse_spec", "check_available"]

logger = logging.getLogger(__name__)

_TERM = re.compile(
    r"\s*(?P<sign>[+-])?\s*"
    r"(?:(?P<weight>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*\*\s*)?"
    r"(?P<name>[A-Za-z][\w.]*(?:-[A-Za-z][\w.]*)*)\s*"
)
_EXAMPLE = "write e.g. 'pickscore', 'pickscore+0.5*aesthetic' or 'pickscore,diversity'"


def parse_spec(spec: str) -> list[list[tuple[float, str]]]:
    """Parses a spec into sums of ``(weight, canonical name)`` terms (no model is loaded).

    Raises:
        ConfigError: syntax errors and unknown names (one line, listing known names).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"empty objective spec; {_EXAMPLE}")
    sums: list[list[tuple[float, str]]] = []
    for part in spec.split(","):
        terms: list[tuple[float, str]] = []
        pos = 0
        while pos < len(part):
            match = _TERM.match(part, pos)
            if match is None or match.end() == pos or (terms and not match["sign"]):
                raise ConfigError(f"cannot parse objective spec {spec!r} at {part[pos:].strip()!r}; {_EXAMPLE}")
            weight = float(match["weight"] or 1.0) * (-1.0 if match["sign"] == "-" else 1.0)
            if not math.isfinite(weight):
                raise ConfigError(f"objective spec {spec!r}: weight {match['weight']} is not finite")
            terms.append((weight, _name(match["name"])))
            pos = match.end()
        if not terms:
            raise ConfigError(f"objective spec {spec!r} has an empty part; {_EXAMPLE}")
        sums.append(terms)
    return sums


def _name(name: str) -> str:
    try:
        return canonical_name(name)
    except ConfigError:
        parts = name.split("-")
        if len(parts) > 1 and all(_known(p) for p in parts):
            raise ConfigError(
                f"unknown objective {name!r}; to subtract, give a weight: {parts[0]}-1*{'-1*'.join(parts[1:])}"
            ) from None
        raise


def _known(name: str) -> bool:
    try:
        canonical_name(name)
    except ConfigError:
        return False
    return True


def _weights_for(spec: str, names: set[str], weights: str | Mapping[str, str] | None) -> dict[str, str]:
    """``weights`` as ``{key: value}``: objective names, plus component keys such as ``clip``."""
    if weights is None:
        return {}
    if not isinstance(weights, Mapping):
        if len(names) != 1:
            raise ConfigError(
                f"objective spec {spec!r} uses {len(names)} objectives; give weights per objective, "
                "e.g. --objective-weights pickscore=PATH"
            )
        return {next(iter(names)): weights}
    component_keys = {key for name in available_objectives() for key in objective_components(name)}
    resolved = {}
    for key, value in weights.items():
        key = str(key).strip().lower()
        if key not in component_keys:
            key = canonical_name(key)  # a typo raises here, listing the known names
        resolved[key] = value
    return resolved


def _term_options(
    name: str, weights: dict[str, str], options: Mapping[str, Mapping[str, Any]] | None, common: dict[str, Any]
) -> dict[str, Any]:
    opts = dict(common)
    for key, values in (options or {}).items():
        if canonical_name(key) == name:
            opts.update(values)
    for key, option in objective_components(name).items():
        if key in weights and option not in opts:
            opts[option] = weights[key]
    return opts


def check_available(spec: str, weights: Any = None, options: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Raises :class:`~fabric.errors.WeightsNotFoundError` now if ``spec`` could not be loaded.

    Cheap: it resolves paths, the Hugging Face cache and (when online) one HEAD request per
    file; it loads nothing. Call it before any generation so a missing checkpoint stops a
    study before the GPU work starts. Every term is checked, and all missing weights are
    reported together.

    Args:
        spec: an objective name or a whole spec (``"pickscore+0.5*aesthetic,diversity"``).
        weights: as for :func:`parse_objective`: one value, or ``{name: weights}``.
        options: per-objective options, ``{name: {option: value}}``.
    """
    sums = parse_spec(spec)
    names = {name for terms in sums for _, name in terms}
    table = _weights_for(spec, names, weights)
    missing: list[WeightsNotFoundError] = []
    for name in sorted(names):
        try:
            check_weights(name, table.get(name), **_term_options(name, table, options, {}))
        except WeightsNotFoundError as exc:
            missing.append(exc)
    if len(missing) == 1:
        raise missing[0]
    if missing:
        summary = f"{len(missing)} objectives lack weights: " + "; ".join(map(str, missing))
        raise WeightsNotFoundError(summary, option="objective_weights", example="NAME=PATH")


def parse_objective(
    spec: str,
    weights: str | Mapping[str, str] | None = None,
    device: Any = "cpu",
    dtype: Any = None,
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    normalize: bool = True,
    batch_size: int | None = None,
) -> RewardModel | MultiObjective:
    """Builds the objective a spec string describes.

    Args:
        spec: ``"pickscore"``, ``"pickscore+0.5*aesthetic"``, ``"pickscore,diversity"``, ...
        weights: one value for a single-objective spec, or ``{name: weights}`` (the CLI's
            ``--objective-weights NAME=PATH``); component keys such as ``clip`` (the aesthetic
            head's CLIP backbone) are routed to the objectives that use them. Names the spec does
            not use are ignored, so one table can serve several specs.
        device: where the models run.
        dtype: model dtype (``None`` = float32).
        options: per-objective options, e.g. ``{"aesthetic": {"head": "linear"}}``.
        normalize: standardise the terms of weighted sums (see the module docstring).
        batch_size: forward-pass batch size for every term.

    Returns:
        A :class:`~objectives.base.RewardModel` (a plain one or a :class:`CompositeObjective`),
        or a :class:`MultiObjective` when the spec has commas; each is an
        :class:`~objectives.base.Objective`.
    """
    sums = parse_spec(spec)
    names = {name for terms in sums for _, name in terms}
    table = _weights_for(spec, names, weights)
    common = {} if batch_size is None else {"batch_size": batch_size}
    loaded: dict[str, RewardModel] = {}

    def get(name: str) -> RewardModel:
        if name not in loaded:
            opts = _term_options(name, table, options, common)
            loaded[name] = load_objective(name, weights=table.get(name), device=device, dtype=dtype, **opts)
        return loaded[name]

    built = []
    for terms in sums:
        if len(terms) == 1 and terms[0][0] == 1.0:
            built.append(get(terms[0][1]))
        else:
            built.append(CompositeObjective([(w, get(n)) for w, n in terms], normalize=normalize))
    if len(built) == 1:
        return built[0]
    return MultiObjective(built, name=",".join(o.name for o in built))


def _format_terms(terms: Sequence[tuple[float, RewardModel]]) -> str:
    out = ""
    for weight, objective in terms:
        sign = "-" if weight < 0 else ("+" if out else "")
        magnitude = abs(weight)
        out += sign + (objective.name if magnitude == 1.0 else f"{magnitude:g}*{objective.name}")
    return out


class CompositeObjective(RewardModel):
    """A weighted sum of standardised, direction-oriented objectives (see module docstring).

    Attributes:
        terms: ``((weight, objective), ...)``.
        normalize: whether terms are standardised by their ``typical`` (location, scale).
    """

    direction = "maximize"
    typical = (0.0, 1.0)

    def __init__(self, terms: Sequence[tuple[float, RewardModel]], *, normalize: bool = True, name: str | None = None):
        if not terms:
            raise InvalidParameterError("a composite objective needs at least one term")
        for weight, objective in terms:
            if not isinstance(objective, RewardModel) or not math.isfinite(weight):
                raise InvalidParameterError(
                    f"composite terms must be (finite weight, RewardModel), got ({weight!r}, {objective!r})"
                )
        self.terms = tuple((float(w), o) for w, o in terms)
        self.normalize = bool(normalize)
        self.name = name or _format_terms(self.terms)
        self.uses_prompt = any(o.uses_prompt for _, o in self.terms)
        self.takes_target = any(o.takes_target for _, o in self.terms)

    def term_scores(self, images: Sequence[Image.Image], prompt: str | Sequence[str] = "") -> list[torch.Tensor]:
        """Each term's raw ``[n]`` scores, in term order (for logging the parts of a sum)."""
        return [objective.score(images, prompt) for _, objective in self.terms]

    def combine(self, raw: Sequence[torch.Tensor]) -> torch.Tensor:
        """The weighted sum of raw term scores ``[n]`` each -> ``[n]``."""
        import torch

        total = torch.zeros_like(raw[0])
        for (weight, objective), scores in zip(self.terms, raw):
            if self.normalize:
                location, scale = objective.typical
                scores = (scores - location) / scale
            if objective.direction == "minimize":
                scores = -scores
            total = total + weight * scores
        return total

    def _score(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        return self.combine(self.term_scores(images, prompts))

    def with_target(self, target: Any) -> CompositeObjective:
        if not self.takes_target:
            raise InvalidParameterError(f"objective {self.name!r} does not take a target image")
        terms = [(w, o.with_target(target) if o.takes_target else o) for w, o in self.terms]
        return CompositeObjective(terms, normalize=self.normalize, name=self.name)


class MultiObjective:
    """Several objectives scored together, for Pareto optimisation (an :class:`~objectives.base.Objective`).

    Attributes:
        objectives: the component objectives.
        directions: their directions, e.g. ``("maximize", "minimize")``.
        names: their names.
        name: the spec, e.g. ``"pickscore,diversity"``.
    """

    def __init__(self, objectives: Sequence[RewardModel], *, name: str | None = None):
        if len(objectives) < 2:
            raise InvalidParameterError("a multi-objective needs at least two objectives")
        self.objectives: tuple[RewardModel, ...] = tuple(objectives)
        self.names = tuple(o.name for o in self.objectives)
        self.directions: tuple[Direction, ...] = tuple(o.direction for o in self.objectives)
        self.name = name or ",".join(self.names)
        self.uses_prompt = any(o.uses_prompt for o in self.objectives)
        self.takes_target = any(o.takes_target for o in self.objectives)

    def score(self, images: Sequence[Image.Image], prompt: str | Sequence[str] = "") -> torch.Tensor:
        """Scores with every objective.

        Returns:
            A float32 CPU tensor of shape ``[n, k]`` (column ``j`` is ``objectives[j]``).
        """
        import torch

        images = check_images(images)
        prompts = expand_prompts(prompt, len(images))
        return torch.stack([o.score(images, prompts) for o in self.objectives], dim=-1)

    __call__ = score

    def with_target(self, target: Any) -> MultiObjective:
        """A copy whose target-taking objectives use ``target`` (models shared)."""
        if not self.takes_target:
            raise InvalidParameterError(f"objective {self.name!r} does not take a target image")
        return MultiObjective([o.with_target(target) if o.takes_target else o for o in self.objectives], name=self.name)

    def __repr__(self) -> str:
        return f"MultiObjective(name={self.name!r}, directions={self.directions!r})"
