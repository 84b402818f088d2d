"""Declarative search spaces over FABRIC's action space.

A :class:`SearchSpace` names the parameters a study searches, their ranges and scales, the ones it
fixes, and a base :class:`~fabric.params.FabricParams` that supplies everything left out. It maps
a point of the space three ways:

* to Optuna distributions (:meth:`SearchSpace.distributions`, :meth:`SearchSpace.suggest`), so any
  Optuna sampler can search it;
* to the unit-cube tensors a GP works on and back (:meth:`SearchSpace.to_unit`,
  :meth:`SearchSpace.from_unit`, through :class:`CubeEncoding`);
* to :class:`~fabric.params.FabricParams` and back (:meth:`SearchSpace.to_params`,
  :meth:`SearchSpace.from_params`).

FABRIC's two order constraints (``feedback_end >= feedback_start`` and
``min_weight <= max_weight``) are removed by reparameterisation, so every point of the default
space is feasible and samplers need no constraint handling::

    feedback_end = feedback_start + (1 - feedback_start) * feedback_span
    min_weight   = max_weight * min_weight_ratio

A *frontend-compatible* space (``frontend="a1111"`` or ``"comfyui"``, :mod:`optimize.frontends`)
tunes only what that frontend can carry: the fields it cannot carry are fixed at their neutral
values (no depth profile, no prompt dropout, every reference; ComfyUI: no minimum weight) and
every point becomes the parameters the frontend applies (A1111: weights on its 0.05 slider step),
so each trial runs, and the exported preset holds, exactly what the frontend will do.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from fabric.errors import ConfigError, FabricOptError
from fabric.params import FabricParams
from optimize.frontends import check_frontend, fixed_values, frontend_params

if TYPE_CHECKING:
    import optuna
    import torch
    from optuna.distributions import BaseDistribution

__all__ = [
    "FloatParam",
    "IntParam",
    "CategoricalParam",
    "Param",
    "SearchSpace",
    "CubeEncoding",
    "DERIVED_PARAMS",
]

logger = logging.getLogger(__name__)

# Search-only names that replace a constrained FabricParams field: name -> the field it sets.
DERIVED_PARAMS: Mapping[str, str] = types.MappingProxyType(
    {"feedback_span": "feedback_end", "min_weight_ratio": "min_weight"}
)
_FIELDS = tuple(f.name for f in dataclasses.fields(FabricParams))
_INT_FIELDS = ("steps", "max_references")
_KNOWN = tuple(sorted((*_FIELDS, *DERIVED_PARAMS)))


def _check_range(param: FloatParam | IntParam, cast: type) -> None:
    """Validate and normalise ``low``/``high`` of a numeric parameter in place."""
    bounds = []
    for key in ("low", "high"):
        value = getattr(param, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"parameter '{param.name}': {key} must be a finite number, got {value!r}")
        if cast is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"parameter '{param.name}': {key} must be an integer, got {value!r}")
        bounds.append(cast(value))
    low, high = bounds
    if not low < high:
        raise ConfigError(
            f"parameter '{param.name}': low ({low}) must be below high ({high}); use `fixed` for a constant"
        )
    if param.log and low <= 0:
        raise ConfigError(f"parameter '{param.name}': a log scale needs low > 0, got {low}")
    object.__setattr__(param, "low", low)
    object.__setattr__(param, "high", high)


@dataclass(frozen=True)
class FloatParam:
    """A real parameter on ``[low, high]``, searched on a linear or a log scale."""

    name: str
    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        _check_range(self, float)

    @property
    def extremes(self) -> tuple[float, float]:
        return (self.low, self.high)

    def distribution(self) -> BaseDistribution:
        from optuna.distributions import FloatDistribution

        return FloatDistribution(self.low, self.high, log=self.log)

    def suggest(self, trial: optuna.Trial) -> float:
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "float", "low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class IntParam:
    """An integer parameter on ``[low, high]`` (both included), linear or log scale."""

    name: str
    low: int
    high: int
    log: bool = False

    def __post_init__(self) -> None:
        _check_range(self, int)

    @property
    def extremes(self) -> tuple[int, int]:
        return (self.low, self.high)

    def distribution(self) -> BaseDistribution:
        from optuna.distributions import IntDistribution

        return IntDistribution(self.low, self.high, log=self.log)

    def suggest(self, trial: optuna.Trial) -> int:
        return trial.suggest_int(self.name, self.low, self.high, log=self.log)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "int", "low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class CategoricalParam:
    """A parameter that takes one of a few listed values (numbers, strings, ``None``)."""

    name: str
    choices: tuple[Any, ...]

    def __post_init__(self) -> None:
        if isinstance(self.choices, (str, bytes)) or not isinstance(self.choices, Iterable):
            raise ConfigError(f"parameter '{self.name}': choices must be a list, got {self.choices!r}")
        choices = tuple(self.choices)
        if not choices:
            raise ConfigError(f"parameter '{self.name}': choices must not be empty")
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"parameter '{self.name}': choices must be distinct, got {list(choices)}")
        for choice in choices:
            if choice is not None and not isinstance(choice, (bool, int, float, str)):
                raise ConfigError(f"parameter '{self.name}': choices must be numbers, strings or null, got {choice!r}")
        object.__setattr__(self, "choices", choices)

    @property
    def extremes(self) -> tuple[Any, ...]:
        return self.choices

    def distribution(self) -> BaseDistribution:
        from optuna.distributions import CategoricalDistribution

        return CategoricalDistribution(self.choices)

    def suggest(self, trial: optuna.Trial) -> Any:
        return trial.suggest_categorical(self.name, self.choices)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "categorical", "choices": list(self.choices)}


Param = Union[FloatParam, IntParam, CategoricalParam]


@dataclass(frozen=True)
class SearchSpace:
    """The parameters a study searches, the ones it fixes, and the base for the rest.

    Args:
        params: the searched parameters. Names are :class:`~fabric.params.FabricParams` fields
            or the reparameterised ``feedback_span`` / ``min_weight_ratio`` (see module docs).
        fixed: parameter values that every point uses (same names as ``params``).
        base: supplies every FabricParams field that is neither searched nor fixed.
        frontend: ``"a1111"`` or ``"comfyui"``: only what that frontend can carry (module docs);
            the fields it cannot carry must not be searched, and are fixed at their neutral values.

    Raises:
        ConfigError: on unknown names, a name given twice, both a constrained field and its
            reparameterisation, a range that admits invalid FABRIC parameters, or an order
            constraint (``feedback_end >= feedback_start``, ``min_weight <= max_weight``) the
            ranges could break.
    """

    params: tuple[Param, ...]
    fixed: Mapping[str, Any] = field(default_factory=dict)
    base: FabricParams = field(default_factory=FabricParams)
    frontend: str | None = None

    def __post_init__(self) -> None:
        params = tuple(self.params)
        fixed = dict(self.fixed)
        frontend = check_frontend(self.frontend)
        if frontend is not None:
            for name, value in fixed_values(frontend).items():
                derived = next((d for d, t in DERIVED_PARAMS.items() if t == name), None)
                searched = [n for n in (name, derived) if n is not None and any(p.name == n for p in params)]
                if searched:
                    raise ConfigError(
                        f"search space for the {self.frontend} frontend searches {searched[0]}, which {self.frontend} "
                        f"cannot carry; leave it out (it is fixed at {value})"
                    )
                if name in fixed and fixed[name] != value:
                    raise ConfigError(
                        f"search space for the {self.frontend} frontend fixes {name} at {fixed[name]}, which "
                        f"{self.frontend} cannot carry; it must be {value}"
                    )
                if derived is not None and derived in fixed:
                    raise ConfigError(f"search space for the {self.frontend} frontend cannot fix {derived}")
                fixed[name] = value
        if not isinstance(self.base, FabricParams):
            raise ConfigError(f"search space base must be FabricParams, got {type(self.base).__name__}")
        for p in params:
            if not isinstance(p, (FloatParam, IntParam, CategoricalParam)):
                raise ConfigError(f"search space entries must be FloatParam, IntParam or CategoricalParam, got {p!r}")
        names = [p.name for p in params]
        for name in (*names, *fixed):
            if name not in _KNOWN:
                raise ConfigError(f"unknown parameter '{name}' in search space; known: {', '.join(_KNOWN)}")
        twice = sorted({n for n in names if names.count(n) > 1} | (set(names) & set(fixed)))
        if twice:
            raise ConfigError(f"parameter(s) {', '.join(twice)} given more than once (searched and/or fixed)")
        used = set(names) | set(fixed)
        for derived, target in DERIVED_PARAMS.items():
            if derived in used and target in used:
                raise ConfigError(f"search space sets both '{derived}' and '{target}'; keep one")
        for p in params:
            if p.name in _INT_FIELDS and isinstance(p, FloatParam):
                raise ConfigError(f"parameter '{p.name}' is an integer; declare it with type: int")
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "fixed", fixed)  # a private copy: the caller's dict may change
        self._check_order("feedback_start", "feedback_end")
        self._check_order("min_weight", "max_weight")
        self._check_extremes()

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def default(cls, *, guidance_scale: bool = False, base: FabricParams | None = None) -> SearchSpace:
        """FABRIC's action space (DESIGN section 3), reparameterised so every point is feasible.

        Args:
            guidance_scale: also search the classifier-free guidance scale on ``[2, 12]``.
            base: values of the fields left out (``steps``, and ``guidance_scale`` unless
                searched); the paper's settings by default.
        """
        params: list[Param] = [
            FloatParam("feedback_start", 0.0, 1.0),
            FloatParam("feedback_span", 0.0, 1.0),
            FloatParam("max_weight", 0.0, 1.0),
            FloatParam("min_weight_ratio", 0.0, 1.0),
            FloatParam("neg_scale", 0.0, 1.0),
            FloatParam("pos_bottleneck_scale", 0.0, 2.0),
            FloatParam("neg_bottleneck_scale", 0.0, 2.0),
            IntParam("max_references", 1, 8),
            FloatParam("prompt_dropout", 0.0, 0.5),
        ]
        if guidance_scale:
            params.append(FloatParam("guidance_scale", 2.0, 12.0))
        return cls(tuple(params), base=base or FabricParams.paper())

    def for_frontend(self, frontend: str | None) -> SearchSpace:
        """This space restricted to what ``frontend`` can carry: the parameters it cannot carry (and
        their reparameterisations) are dropped, then fixed (see module docs)."""
        name = check_frontend(frontend)
        if name is None:
            return dataclasses.replace(self, frontend=None)
        drop = set(fixed_values(name))
        drop |= {d for d, t in DERIVED_PARAMS.items() if t in drop}
        fixed = {k: v for k, v in self.fixed.items() if k not in drop}
        return SearchSpace(tuple(p for p in self.params if p.name not in drop), fixed, self.base, frontend)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpace:
        """Build a space from plain data (the YAML layout)::

            extends: default          # optional: start from SearchSpace.default()
            base: paper               # paper | a1111 | {FabricParams fields}
            parameters:
              max_weight: {low: 0.05, high: 1.0, log: true}
              max_references: {low: 1, high: 8}       # int: integer bounds on an int field
              guidance_scale: [2.0, 12.0]             # [low, high] shorthand
              neg_scale: {choices: [0.25, 0.5, 1.0]}
            fixed: {prompt_dropout: 0.0}
            exclude: [neg_bottleneck_scale]           # left out: the base value applies
            frontend: a1111                           # or comfyui: only what that frontend can carry

        A parameter gets ``type: int`` when it says so or when both bounds are integers on an
        integer field; ``choices`` makes it categorical; otherwise it is a float.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"a search space must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - {"extends", "base", "parameters", "fixed", "exclude", "frontend"})
        if unknown:
            raise ConfigError(
                f"unknown search space key(s) {', '.join(unknown)}; known: base, exclude, extends, fixed, frontend, "
                "parameters"
            )
        frontend = check_frontend(data.get("frontend"))
        base = _parse_base(data.get("base"))
        extends = data.get("extends")
        if extends not in (None, "default", "default+guidance"):
            raise ConfigError(f"search space 'extends' must be 'default' or 'default+guidance', got {extends!r}")
        parameters = data.get("parameters") or {}
        fixed = data.get("fixed") or {}
        exclude = data.get("exclude") or []
        for key, value, kind in (
            ("parameters", parameters, Mapping),
            ("fixed", fixed, Mapping),
            ("exclude", exclude, list),
        ):
            if not isinstance(value, kind):
                raise ConfigError(f"search space '{key}' must be a {'list' if kind is list else 'mapping'}")
        merged: dict[str, Param] = {}
        if extends is not None:
            start = cls.default(guidance_scale=extends == "default+guidance")
            merged = {p.name: p for p in start.params}
        for name in exclude:
            if name not in merged and name not in parameters:
                raise ConfigError(f"cannot exclude '{name}': it is not a searched parameter")
            merged.pop(name, None)
        for name, spec in parameters.items():
            merged[str(name)] = _parse_param(str(name), spec)
        for name in fixed:
            merged.pop(name, None)
        for derived, target in DERIVED_PARAMS.items():
            # Searching or fixing the raw field of a default space replaces its reparameterisation.
            if extends is not None and (target in parameters or target in fixed) and derived not in parameters:
                merged.pop(derived, None)
        if frontend is not None:
            # what the frontend cannot carry leaves the default space; naming it explicitly is an error
            explicit = set(parameters)
            carried = set(fixed_values(frontend))
            carried |= {d for d, t in DERIVED_PARAMS.items() if t in carried}
            for name in list(merged):
                if name in carried and name not in explicit:
                    merged.pop(name)
        space = cls(tuple(p for n, p in merged.items() if n not in exclude), fixed=dict(fixed), base=base)
        return dataclasses.replace(space, frontend=frontend) if frontend is not None else space

    @classmethod
    def from_yaml(cls, path: str | Path) -> SearchSpace:
        """Read a space from a YAML file in the layout of :meth:`from_dict`."""
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"search space file not found: {path}") from None
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read search space {path}: {' '.join(str(exc).split())}") from None
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain data that :meth:`from_dict` reads back into an equal space."""
        out: dict[str, Any] = {
            "base": self.base.to_dict(),
            "parameters": {p.name: p.to_dict() for p in self.params},
            "fixed": dict(self.fixed),
        }
        if self.frontend is not None:
            out["frontend"] = self.frontend
        return out

    # ---- views ---------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        """Names of the searched parameters, in declaration order."""
        return tuple(p.name for p in self.params)

    def __len__(self) -> int:
        return len(self.params)

    def distributions(self) -> dict[str, BaseDistribution]:
        """The searched parameters as Optuna distributions (``name -> distribution``)."""
        return {p.name: p.distribution() for p in self.params}

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Ask an Optuna trial for a value of every searched parameter."""
        return {p.name: p.suggest(trial) for p in self.params}

    @property
    def encoding(self) -> CubeEncoding:
        """The :class:`CubeEncoding` of the searched parameters."""
        return CubeEncoding(self.distributions())

    def to_unit(self, values: Mapping[str, Any] | Sequence[Mapping[str, Any]], **tensor_kwargs: Any) -> torch.Tensor:
        """Points of the space as unit-cube rows (one value mapping or a list of them).

        Returns:
            A ``n x d``-dim Tensor in ``[0, 1]`` (float64 unless ``dtype`` is given), columns in
            the order of :attr:`names`.
        """
        rows = [values] if isinstance(values, Mapping) else list(values)
        for row in rows:
            self._check_values(row)
        encoding = self.encoding
        return encoding.to_unit(encoding.encode(rows, **tensor_kwargs))

    def from_unit(self, unit: torch.Tensor) -> list[dict[str, Any]]:
        """Unit-cube rows (``n x d`` or ``d``) back to value mappings; ints stay ints."""
        encoding = self.encoding
        return encoding.decode(encoding.from_unit(unit))

    # ---- FabricParams --------------------------------------------------------------------
    def to_params(self, values: Mapping[str, Any]) -> FabricParams:
        """Search values -> :class:`~fabric.params.FabricParams` (fixed values and base applied).

        Raises:
            ConfigError: when ``values`` misses a searched parameter or names an unknown one.
        """
        self._check_values(values)
        return self._build({**self.fixed, **values})

    def from_params(self, params: FabricParams, *, clip: bool = False) -> dict[str, Any]:
        """The search values that give ``params`` (inverse of :meth:`to_params`).

        Fixed and left-out fields are ignored. ``max_references=None`` ("all references") maps
        to the upper bound of an integer range, which is the same as long as a session never
        collects more references than that.

        Args:
            params: the parameters to express in this space.
            clip: move values outside a numeric range onto its bound (with a log message)
                instead of raising.

        Raises:
            ConfigError: a value lies outside its range (and ``clip`` is false) or is not
                among a categorical's choices.
        """
        values: dict[str, Any] = {}
        for p in self.params:
            if p.name == "feedback_span":
                start = params.feedback_start
                value: Any = (params.feedback_end - start) / (1.0 - start) if start < 1.0 else 0.0
            elif p.name == "min_weight_ratio":
                value = params.min_weight / params.max_weight if params.max_weight > 0 else 0.0
            else:
                value = getattr(params, p.name)
            if value is None and isinstance(p, IntParam):
                value = p.high
            values[p.name] = _into_range(p, value, clip)
        return values

    # ---- checks --------------------------------------------------------------------------
    def _check_values(self, values: Mapping[str, Any]) -> None:
        if not isinstance(values, Mapping):
            raise ConfigError(f"search values must be a mapping, got {type(values).__name__}")
        missing = [n for n in self.names if n not in values]
        unknown = sorted(set(values) - set(self.names))
        if missing or unknown:
            what = "; ".join(
                s
                for s in (
                    f"missing {', '.join(missing)}" if missing else "",
                    f"not searched: {', '.join(unknown)}" if unknown else "",
                )
                if s
            )
            raise ConfigError(f"search values do not match the space ({what})")

    def _build(self, merged: Mapping[str, Any]) -> FabricParams:
        fields = self.base.to_dict()
        fields.update({k: v for k, v in merged.items() if k not in DERIVED_PARAMS})
        if "feedback_span" in merged:
            start = fields["feedback_start"]
            fields["feedback_end"] = min(1.0, start + (1.0 - start) * merged["feedback_span"])
        if "min_weight_ratio" in merged:
            fields["min_weight"] = min(fields["max_weight"], fields["max_weight"] * merged["min_weight_ratio"])
        return frontend_params(FabricParams(**fields), self.frontend)

    def _range(self, name: str) -> tuple[float, float] | None:
        """Smallest and largest value a field can take in this space (None if non-numeric)."""
        for p in self.params:
            if p.name == name:
                numbers = [v for v in p.extremes if isinstance(v, (int, float)) and not isinstance(v, bool)]
                return (min(numbers), max(numbers)) if len(numbers) == len(p.extremes) else None
        value = self.fixed.get(name, getattr(self.base, name, None))
        return (value, value) if isinstance(value, (int, float)) else None

    def _check_order(self, lower: str, upper: str) -> None:
        derived = next(d for d, t in DERIVED_PARAMS.items() if t in (lower, upper))
        if derived in self.names or derived in self.fixed:
            return
        lo, hi = self._range(lower), self._range(upper)
        if lo is None or hi is None:
            return
        if lo[1] > hi[0]:
            raise ConfigError(
                f"{lower} can exceed {upper} in this space ({lower} up to {lo[1]}, {upper} from {hi[0]}); "
                f"search '{derived}' instead"
            )

    def _check_extremes(self) -> None:
        for p in self.params:
            if p.name in DERIVED_PARAMS and (min(p.extremes) < 0 or max(p.extremes) > 1):
                raise ConfigError(f"parameter '{p.name}' is a fraction: its range must lie in [0, 1]")
        corner = {p.name: p.extremes[0] for p in self.params}
        for p in self.params:
            for extreme in p.extremes:
                try:
                    self._build({**self.fixed, **corner, p.name: extreme})
                except FabricOptError as exc:
                    raise ConfigError(f"search space admits invalid FABRIC parameters: {exc}") from None


def _parse_base(spec: Any) -> FabricParams:
    if spec is None or spec == "paper":
        return FabricParams.paper()
    if spec == "a1111":
        return FabricParams.a1111()
    if isinstance(spec, Mapping):
        try:
            return FabricParams.from_dict(spec)
        except FabricOptError as exc:
            raise ConfigError(f"search space base: {exc}") from None
    raise ConfigError(f"search space base must be 'paper', 'a1111' or a mapping of FABRIC parameters, got {spec!r}")


def _parse_param(name: str, spec: Any) -> Param:
    if isinstance(spec, (list, tuple)):
        if len(spec) != 2:
            raise ConfigError(f"parameter '{name}': the list form is [low, high], got {list(spec)}")
        spec = {"low": spec[0], "high": spec[1]}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"parameter '{name}' must be a mapping with low/high or choices, got {spec!r}")
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind is None:
        if "choices" in spec:
            kind = "categorical"
        elif name in _INT_FIELDS and all(
            isinstance(spec.get(k), int) and not isinstance(spec.get(k), bool) for k in ("low", "high")
        ):
            kind = "int"
        else:
            kind = "float"
    allowed = {"categorical": {"choices"}, "int": {"low", "high", "log"}, "float": {"low", "high", "log"}}
    if kind not in allowed:
        raise ConfigError(f"parameter '{name}': type must be float, int or categorical, got {kind!r}")
    extra = sorted(set(spec) - allowed[kind])
    missing = sorted(allowed[kind] - {"log"} - set(spec))
    if extra or missing:
        problem = f"unknown key(s) {', '.join(extra)}" if extra else f"missing {', '.join(missing)}"
        raise ConfigError(f"parameter '{name}' ({kind}): {problem}")
    if kind == "categorical":
        return CategoricalParam(name, spec["choices"])
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"parameter '{name}': log must be true or false, got {log!r}")
    cls = IntParam if kind == "int" else FloatParam
    return cls(name, spec["low"], spec["high"], log=log)


def _into_range(p: Param, value: Any, clip: bool) -> Any:
    if isinstance(p, CategoricalParam):
        # Prefer a choice of the same type, so 1 does not match True.
        matches = sorted((type(c) is not type(value), i) for i, c in enumerate(p.choices) if c == value)
        if matches:
            return p.choices[matches[0][1]]
        raise ConfigError(f"value {value!r} of '{p.name}' is not among its choices {list(p.choices)}")
    if value < p.low or value > p.high:
        if not clip:
            raise ConfigError(f"value {value} of '{p.name}' lies outside its range [{p.low}, {p.high}]")
        clipped = min(max(value, p.low), p.high)
        logger.info("moved %s=%s onto the search range [%s, %s]", p.name, value, p.low, p.high)
        value = clipped
    if isinstance(p, IntParam):
        if float(value) != round(value):
            raise ConfigError(f"value {value} of integer parameter '{p.name}' is not an integer")
        return int(round(value))
    return float(value)


class CubeEncoding:
    """Optuna distributions <-> real tensors for a GP: one column per parameter.

    Columns live in a *model space* where a GP's input transform (``Normalize``) finds fixed
    bounds: floats as they are (log scale: their logarithm), integers as they are (log scale:
    logarithm), categoricals as their choice index. Integer and stepped columns are listed in
    :attr:`discrete_dims`, categorical ones in :attr:`cat_dims`, with their allowed values, the
    form ``botorch.optim.optimize_acqf_mixed_alternating`` takes. :meth:`to_unit` /
    :meth:`from_unit` rescale to and from ``[0, 1]^d``.

    Args:
        distributions: ``name -> distribution``; single-valued distributions are not allowed
            (they carry nothing to model).
    """

    def __init__(self, distributions: Mapping[str, BaseDistribution]) -> None:
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        self.names: tuple[str, ...] = tuple(distributions)
        self.distributions = dict(distributions)
        self._lows: list[float] = []
        self._highs: list[float] = []
        self.discrete_dims: dict[int, list[float]] = {}
        self.cat_dims: dict[int, list[float]] = {}
        for i, (name, dist) in enumerate(self.distributions.items()):
            if dist.single():
                raise ValueError(f"parameter '{name}' has a single value; leave it out of the encoding")
            if isinstance(dist, CategoricalDistribution):
                lo, hi = 0.0, float(len(dist.choices) - 1)
                self.cat_dims[i] = [float(k) for k in range(len(dist.choices))]
            elif isinstance(dist, (FloatDistribution, IntDistribution)):
                lo, hi = self._to_model(dist, dist.low), self._to_model(dist, dist.high)
                step = dist.step  # int for IntDistribution, None for a continuous float
                if step is not None:
                    n = int(round((dist.high - dist.low) / step))
                    self.discrete_dims[i] = [self._to_model(dist, dist.low + k * step) for k in range(n + 1)]
            else:
                raise TypeError(f"unsupported distribution for '{name}': {type(dist).__name__}")
            self._lows.append(lo)
            self._highs.append(hi)

    @property
    def dim(self) -> int:
        return len(self.names)

    def bounds(self, **tensor_kwargs: Any) -> torch.Tensor:
        """Model-space bounds, a ``2 x d``-dim Tensor (row 0 lower, row 1 upper)."""
        import torch

        tensor_kwargs.setdefault("dtype", torch.float64)
        return torch.tensor([self._lows, self._highs], **tensor_kwargs)

    @staticmethod
    def _to_model(dist: BaseDistribution, value: float) -> float:
        return math.log(value) if getattr(dist, "log", False) else float(value)

    def encode(self, rows: Sequence[Mapping[str, Any]], **tensor_kwargs: Any) -> torch.Tensor:
        """Parameter mappings -> an ``n x d``-dim model-space Tensor (float64 by default)."""
        import torch
        from optuna.distributions import CategoricalDistribution

        data = []
        for row in rows:
            out = []
            for name, dist in self.distributions.items():
                value = row[name]
                if isinstance(dist, CategoricalDistribution):
                    out.append(float(dist.to_internal_repr(value)))
                else:
                    out.append(self._to_model(dist, value))
            data.append(out)
        tensor_kwargs.setdefault("dtype", torch.float64)
        return torch.tensor(data, **tensor_kwargs).reshape(len(data), self.dim)

    def decode(self, X: torch.Tensor) -> list[dict[str, Any]]:
        """An ``n x d`` (or ``d``) model-space Tensor -> parameter mappings.

        Values are clipped to their bounds and discrete columns snapped to the nearest allowed
        value, so any real row decodes to a valid point; ints come back as ``int``.
        """
        import torch
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        rows = X.detach().to("cpu", torch.float64).reshape(-1, self.dim).tolist()
        out = []
        for row in rows:
            values: dict[str, Any] = {}
            for i, (name, dist) in enumerate(self.distributions.items()):
                x = min(max(row[i], self._lows[i]), self._highs[i])
                allowed = self.cat_dims.get(i) or self.discrete_dims.get(i)
                if allowed is not None:
                    k = min(range(len(allowed)), key=lambda j: abs(allowed[j] - x))
                    if isinstance(dist, CategoricalDistribution):
                        values[name] = dist.choices[k]
                        continue
                    assert isinstance(dist, (FloatDistribution, IntDistribution)) and dist.step is not None
                    step = dist.step
                    value = dist.low + k * step
                    values[name] = int(value) if isinstance(dist, IntDistribution) else min(float(value), dist.high)
                    continue
                assert isinstance(dist, (FloatDistribution, IntDistribution))
                value = math.exp(x) if dist.log else x
                values[name] = min(max(value, dist.low), dist.high)
            out.append(values)
        return out

    def to_unit(self, X: torch.Tensor) -> torch.Tensor:
        """Model space -> ``[0, 1]^d`` (same shape)."""
        bounds = self.bounds(dtype=X.dtype, device=X.device)
        return (X - bounds[0]) / (bounds[1] - bounds[0])

    def from_unit(self, U: torch.Tensor) -> torch.Tensor:
        """``[0, 1]^d`` -> model space (same shape)."""
        bounds = self.bounds(dtype=U.dtype, device=U.device)
        return bounds[0] + U * (bounds[1] - bounds[0])

    def from_cells(self, U: torch.Tensor) -> torch.Tensor:
        """``[0, 1]^d`` -> model space, giving every discrete value an equal share of ``[0, 1]``.

        :meth:`from_unit` followed by snapping to the nearest allowed value gives the two end
        values of an integer range half the share of the others (``1..8``: 1 and 8 drawn at
        1/14 each, the rest at 1/7). Here a column's ``[0, 1]`` is cut into equal cells instead:
        categoricals ``floor(u * k)``; integers and stepped floats by rounding
        ``low - step/2 + u * (high - low + step)`` (on a log scale, the logarithms of those
        bounds), as Optuna's random sampler draws them. A uniform design over ``[0, 1]^d`` (a
        Sobol sequence) therefore stays uniform over the allowed values. Continuous columns are
        mapped as by :meth:`from_unit`.

        Args:
            U: a ``n x d`` (or ``d``) Tensor in ``[0, 1]``.

        Returns:
            A Tensor of the same shape in model space; discrete columns hold allowed values.
        """
        import torch
        from optuna.distributions import FloatDistribution, IntDistribution

        X = self.from_unit(U).clone()
        cols = X.reshape(-1, self.dim)
        u = U.reshape(-1, self.dim).clamp(0.0, 1.0)
        for i, dist in enumerate(self.distributions.values()):
            if i in self.cat_dims:
                k = len(self.cat_dims[i])
                cols[:, i] = torch.clamp(torch.floor(u[:, i] * k), max=k - 1)
            elif i in self.discrete_dims:
                assert isinstance(dist, (FloatDistribution, IntDistribution)) and dist.step is not None
                step = dist.step
                lo, hi = dist.low - step / 2, dist.high + step / 2
                if dist.log:
                    value = torch.exp(math.log(lo) + u[:, i] * (math.log(hi) - math.log(lo)))
                else:
                    value = lo + u[:, i] * (hi - lo)
                index = torch.clamp(torch.round((value - dist.low) / step), 0, len(self.discrete_dims[i]) - 1)
                allowed = torch.tensor(self.discrete_dims[i], dtype=X.dtype, device=X.device)
                cols[:, i] = allowed[index.long()]
        return cols.reshape(X.shape)
