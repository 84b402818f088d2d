"""Study definitions: one YAML file per experiment, read into a frozen, validated :class:`StudyConfig`.

A study file sets everything one optimisation needs (see ``studies/pickscore.yaml`` for a fully
commented example)::

    name: pickscore                    # Optuna study / MLflow experiment name (default: file stem)
    extends: tiny                      # optional: start from another study (built-in name or path)
    model: dreamlike-art/dreamlike-photoreal-2.0
    scheduler: null                    # the model's own
    objective: pickscore               # spec: 'pickscore', 'pickscore+0.5*aesthetic', 'pickscore,diversity'
    feedback_objective: null           # the simulated user's reward model (default: the first objective)
    metrics: [diversity]               # logged per round, not optimised
    objective_weights: {}              # NAME: tiny | PATH | hub id (as --objective-weights NAME=PATH)
    objective_options: {}              # NAME: {option: value}, e.g. target: {encoder: dino}
    prompts: {train: curated, validation: curated-heldout}   # see optimize.prompts
    protocol: {feedback: preference, rounds: 3, n_images: 4, steps: 20, guidance_scale: 6.0,
               negative_prompt: "...", temperature: 0.0, value: improvement}
    search_space: {extends: default}   # optimize.SearchSpace.from_dict layout
    sampler: gp                        # the default; or {name: botorch, options: {n_startup_trials: 8}}
    pruner: median                     # none | median | wilcoxon, or {name: ..., options: {...}}
    trials: 40                         # total budget of the study (resuming runs up to it)
    seed: 0                            # image seeds, the simulated user and the sampler
    warm_start: [paper, a1111]         # enqueue these defaults as the first trials
    compare_with: [paper, a1111]       # references of the held-out comparison in `report`
    guard: {objective: toy-adherence, reference: no-feedback, tolerance: 0.0, penalty: 3.0}
                                       # optional: a constraint by penalty on a second objective

``protocol.steps`` and ``protocol.guidance_scale`` become the search space's base values (the
no-feedback baseline and every trial use them unless the space searches them).

Loading validates everything that can be checked without loading a model: keys and types,
prompts (files are read, target images checked), the objective spec's syntax and names, the
sampler name, the search space and the protocol. Errors are one-line
:class:`~fabric.errors.ConfigError`\\ s naming the file.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib.resources
import json
import logging
import math
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fabric.checks import check_int
from fabric.errors import ConfigError, FabricOptError
from optimize.prompts import PromptSet, load_prompts, resolve_source
from optimize.protocol import DEFAULT_NEGATIVE_PROMPT, Protocol
from optimize.samplers.registry import DEFAULT_SAMPLER
from optimize.space import SearchSpace

__all__ = [
    "GuardConfig",
    "StudyConfig",
    "STUDIES_DIR",
    "PRUNERS",
    "available_studies",
    "load_study_config",
    "resolve_study",
    "study_file",
    "read_study_data",
    "merge_study_data",
]

logger = logging.getLogger(__name__)

STUDIES_DIR = Path(str(importlib.resources.files("studies")))  # the study YAML files (data)
PRUNERS = ("none", "median", "wilcoxon")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_TOP_KEYS = {
    "name", "description", "extends", "model", "scheduler", "objective", "feedback_objective", "metrics",
    "objective_weights", "objective_options", "prompts", "protocol", "search_space", "sampler", "pruner",
    "trials", "seed", "warm_start", "compare_with", "guard",
}  # fmt: skip
_GUARD_KEYS = {"objective", "reference", "tolerance", "penalty"}
NO_FEEDBACK = "no-feedback"
_PROTOCOL_KEYS = {
    "feedback", "rounds", "n_images", "steps", "guidance_scale", "negative_prompt", "temperature", "value",
    "height", "width", "prune", "prompt_batch",
}  # fmt: skip
# Settings that change what a trial measures: a study may only be resumed when they are equal.
# How many prompts share a pipeline call only re-draws reference noise (float rounding can change a
# liked image's pixels, and its noise is keyed by content), like another GPU would: it may change on resume.
_EXECUTION_PROTOCOL_KEYS = ("prompt_batch",)
_VALUE_KEYS = (
    "model",
    "scheduler",
    "objective",
    "feedback_objective",
    "objective_weights",
    "objective_options",
    "prompts",
    "protocol",
    "search_space",
)
_DEFAULT_TEMPLATE = "pickscore"


@dataclass(frozen=True)
class GuardConfig:
    """The study file's ``guard:``: a second objective the tuned parameters may not lose
    (e.g. prompt adherence), enforced by penalty (:class:`optimize.protocol.Guard`)::

        guard: {objective: toy-adherence, reference: paper, tolerance: 0.0, penalty: 3.0}
        guard: toy-adherence            # the same with the defaults below

    Attributes:
        objective: one objective spec (a weighted sum is fine, no commas).
        reference: whose final-round guard score is the floor: ``"no-feedback"`` (the
            no-feedback baseline) or a default preset (``"paper"``, ``"a1111"``) run with
            feedback on the same prompts, seeds and user.
        tolerance: allowed mean drop below the floor, in the guard objective's units.
        penalty: value lost per unit of drop beyond the tolerance.
    """

    objective: str
    reference: str = NO_FEEDBACK
    tolerance: float = 0.0
    penalty: float = 3.0

    def __post_init__(self) -> None:
        from objectives.composite import parse_spec
        from optimize.samplers import DEFAULT_PRESETS

        if not isinstance(self.objective, str) or not self.objective.strip() or "," in self.objective:
            raise ConfigError(f"guard objective must be one objective spec (no commas), got {self.objective!r}")
        parse_spec(self.objective)
        if self.reference != NO_FEEDBACK and self.reference not in DEFAULT_PRESETS:
            raise ConfigError(
                f"guard reference must be {NO_FEEDBACK} or a preset ({', '.join(DEFAULT_PRESETS)}), got "
                f"{self.reference!r}"
            )
        for name in ("tolerance", "penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"guard {name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.penalty < 0:
            raise ConfigError(f"guard penalty must be >= 0, got {self.penalty}")

    @classmethod
    def from_data(cls, data: Any) -> GuardConfig | None:
        """``None``, a spec string or a mapping of the keys above."""
        if data is None:
            return None
        if isinstance(data, GuardConfig):
            return data
        if isinstance(data, str):
            return cls(data)
        if not isinstance(data, Mapping):
            raise ConfigError(f"guard must be an objective spec or a mapping, got {data!r}")
        unknown = sorted(set(map(str, data)) - _GUARD_KEYS)
        if unknown or "objective" not in data:
            raise ConfigError(
                f"guard needs 'objective' and takes {', '.join(sorted(_GUARD_KEYS))}; got {', '.join(map(str, data))}"
            )
        return cls(**{str(k): v for k, v in data.items()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class StudyConfig:
    """One complete, validated experiment (see module docs for the file layout).

    Attributes:
        name: Optuna study and MLflow experiment name; also the folder under the runs dir.
        model: ``"tiny"``, a hub id, a diffusers folder or a single checkpoint file.
        objective: the objective spec (a comma makes a Pareto study).
        protocol: the feedback protocol, prompts and seeds included.
        space: the search space; its base carries ``steps`` and ``guidance_scale``.
        description: what the study is for.
        scheduler: scheduler name, or ``None`` for the model's own.
        feedback_objective: spec of the simulated user's reward model (``None``: the first
            objective).
        metrics: objective specs logged per round but not optimised (e.g. ``diversity``).
        objective_weights: ``name -> weights`` for every objective the study loads.
        objective_options: ``name -> {option: value}``.
        sampler: a registered sampler name (:func:`optimize.available_samplers`).
        sampler_options: keyword arguments of that sampler.
        pruner: ``"none"``, ``"median"`` or ``"wilcoxon"``.
        pruner_options: keyword arguments of the Optuna pruner.
        trials: total trial budget; a resumed study runs until it has this many finished trials.
        warm_start: default presets enqueued as the first trials of a new study.
        compare_with: default presets the report compares the recommendation with.
        guard: a second objective kept from falling, by penalty (``None``: no guard).
        source: the file the study was read from (empty when built in code).
    """

    name: str
    model: str
    objective: str
    protocol: Protocol
    space: SearchSpace
    description: str = ""
    scheduler: str | None = None
    feedback_objective: str | None = None
    metrics: tuple[str, ...] = ()
    objective_weights: Mapping[str, str] = field(default_factory=dict)
    objective_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    sampler: str = DEFAULT_SAMPLER
    sampler_options: Mapping[str, Any] = field(default_factory=dict)
    pruner: str = "none"
    pruner_options: Mapping[str, Any] = field(default_factory=dict)
    trials: int = 20
    warm_start: tuple[str, ...] = ("paper", "a1111")
    compare_with: tuple[str, ...] = ("paper", "a1111")
    guard: GuardConfig | None = None
    source: str = ""

    def __post_init__(self) -> None:
        from objectives.composite import parse_spec
        from optimize.samplers import DEFAULT_PRESETS, available_samplers

        where = f"study {self.name!r}"
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ConfigError(
                f"study name must be letters, digits and . _ + - (no spaces or slashes), got {self.name!r}"
            )
        for key in ("model", "objective"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{where}: '{key}' must be a non-empty string, got {value!r}")
        if not isinstance(self.protocol, Protocol):
            raise ConfigError(f"{where}: protocol must be an optimize.Protocol")
        if not isinstance(self.space, SearchSpace):
            raise ConfigError(f"{where}: space must be an optimize.SearchSpace")
        if self.scheduler is not None:
            from fabric.schedulers import SCHEDULERS

            if self.scheduler not in SCHEDULERS:
                raise ConfigError(
                    f"{where}: unknown scheduler {self.scheduler!r}; known: {', '.join(SCHEDULERS)} (or null: the "
                    "model's own)"
                )
        parse_spec(self.objective)  # syntax and names; raises a one-line ConfigError
        if self.feedback_objective is not None:
            if not isinstance(self.feedback_objective, str) or "," in self.feedback_objective:
                raise ConfigError(
                    f"{where}: feedback_objective must be one objective spec (no commas), got "
                    f"{self.feedback_objective!r}"
                )
            parse_spec(self.feedback_objective)
        metrics = (self.metrics,) if isinstance(self.metrics, str) else tuple(self.metrics or ())
        for spec in metrics:
            if not isinstance(spec, str) or "," in spec:
                raise ConfigError(f"{where}: each metric must be one objective spec, got {spec!r}")
            parse_spec(spec)
        object.__setattr__(self, "metrics", metrics)
        object.__setattr__(
            self,
            "objective_weights",
            types.MappingProxyType(_str_mapping(self.objective_weights, "objective_weights", where)),
        )
        options = _mapping(self.objective_options, "objective_options", where)
        for key, value in options.items():
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: objective_options.{key} must be a mapping of options, got {value!r}")
        object.__setattr__(
            self, "objective_options", types.MappingProxyType({str(k): dict(v) for k, v in options.items()})
        )
        if self.sampler not in available_samplers():
            raise ConfigError(f"{where}: unknown sampler '{self.sampler}'; known: {', '.join(available_samplers())}")
        object.__setattr__(
            self, "sampler_options", types.MappingProxyType(_mapping(self.sampler_options, "sampler options", where))
        )
        if self.pruner not in PRUNERS:
            raise ConfigError(f"{where}: unknown pruner '{self.pruner}'; known: {', '.join(PRUNERS)}")
        object.__setattr__(
            self, "pruner_options", types.MappingProxyType(_mapping(self.pruner_options, "pruner options", where))
        )
        check_int(f"{where}: trials", self.trials, minimum=1, error=ConfigError)
        for key in ("warm_start", "compare_with"):
            value = getattr(self, key)
            value = (value,) if isinstance(value, str) else tuple(value or ())
            unknown = [v for v in value if v not in DEFAULT_PRESETS]
            if unknown:
                raise ConfigError(
                    f"{where}: {key} names unknown preset(s) {', '.join(map(str, unknown))}; known: "
                    f"{', '.join(DEFAULT_PRESETS)}"
                )
            object.__setattr__(self, key, value)
        object.__setattr__(self, "guard", GuardConfig.from_data(self.guard))
        if self.guard is not None and self.multi_objective:
            raise ConfigError(
                f"{where}: a guard needs a single objective; for a Pareto front, add {self.guard.objective!r} to the "
                "objective spec instead"
            )

    # ---- views ---------------------------------------------------------------------------
    @property
    def seed(self) -> int:
        """The study seed (image seeds, simulated user, sampler)."""
        return self.protocol.seed

    @property
    def steps(self) -> int:
        """Denoising steps of every generation unless the space searches ``steps``."""
        return self.space.base.steps

    @property
    def multi_objective(self) -> bool:
        return "," in self.objective

    @property
    def weights_table(self) -> dict[str, str]:
        """``objective_weights`` as the ``{name: weights}`` table objectives take."""
        return dict(self.objective_weights)

    def replace(self, **changes: Any) -> StudyConfig:
        return dataclasses.replace(self, **changes)

    # ---- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A self-contained record (prompts inline, paths absolute) that :meth:`from_dict` reads back
        into an equal config; stored with the Optuna study so ``report`` and ``export`` need no file."""
        p = self.protocol

        def split(prompts: tuple[str, ...], targets: tuple[Any, ...]) -> list[Any]:
            if not targets:
                return list(prompts)
            return [{"prompt": q, "image": str(t)} for q, t in zip(prompts, targets)]

        return {
            "name": self.name,
            "description": self.description,
            "model": self.model,
            "scheduler": self.scheduler,
            "objective": self.objective,
            "feedback_objective": self.feedback_objective,
            "metrics": list(self.metrics),
            "objective_weights": dict(self.objective_weights),
            "objective_options": {k: dict(v) for k, v in self.objective_options.items()},
            "prompts": {
                "train": split(p.prompts, p.targets),
                "validation": split(p.validation_prompts, p.validation_targets) or None,
            },
            "protocol": {
                "feedback": p.feedback,
                "rounds": p.rounds,
                "n_images": p.n_images,
                "steps": self.space.base.steps,
                "guidance_scale": self.space.base.guidance_scale,
                "negative_prompt": p.negative_prompt,
                "temperature": p.temperature,
                "value": p.value,
                "height": p.height,
                "width": p.width,
                "prune": p.prune,
                "prompt_batch": p.prompt_batch,
            },
            "search_space": self.space.to_dict(),
            "sampler": {"name": self.sampler, "options": dict(self.sampler_options)},
            "pruner": {"name": self.pruner, "options": dict(self.pruner_options)},
            "trials": self.trials,
            "seed": p.seed,
            "warm_start": list(self.warm_start),
            "compare_with": list(self.compare_with),
            "guard": self.guard.to_dict() if self.guard is not None else None,
        }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, base_dir: str | Path | None = None, source: str = "", check_files: bool = True
    ) -> StudyConfig:
        """Build a config from the YAML layout (``extends`` already applied).

        Args:
            data: the study document.
            base_dir: folder relative prompt paths are resolved against.
            source: the file the data came from, for messages.
            check_files: check that target images exist (off when reading a stored record on
                a machine that only exports presets).
        """
        where = f"study {source or data.get('name', '')!r}".replace("''", "(inline)")
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: a study must be a mapping of settings, got {type(data).__name__}")
        unknown = sorted(set(data) - _TOP_KEYS - {"extends"})
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(map(str, unknown))}; known: {', '.join(sorted(_TOP_KEYS))}"
            )
        for key in ("name", "model", "objective"):
            if data.get(key) in (None, ""):
                raise ConfigError(f"{where}: missing '{key}'")
        try:
            return cls._build(data, Path(base_dir) if base_dir else None, source, check_files)
        except FabricOptError as exc:
            message = str(exc)
            if source and source not in message:
                message = f"{source}: {message}"
            raise ConfigError(message) from None

    @classmethod
    def _build(cls, data: Mapping[str, Any], base_dir: Path | None, source: str, check_files: bool) -> StudyConfig:
        protocol_data = _mapping(data.get("protocol"), "protocol", "study")
        unknown = sorted(set(protocol_data) - _PROTOCOL_KEYS)
        if unknown:
            raise ConfigError(
                f"protocol: unknown key(s) {', '.join(map(str, unknown))}; known: {', '.join(sorted(_PROTOCOL_KEYS))}"
            )
        feedback = protocol_data.get("feedback", "preference")
        prompts = _mapping(data.get("prompts"), "prompts", "study")
        unknown = sorted(set(prompts) - {"train", "validation"})
        if unknown:
            raise ConfigError(f"prompts: unknown key(s) {', '.join(map(str, unknown))}; known: train, validation")
        if prompts.get("train") is None:
            hint = (
                " (prompt/image pairs: pass --prompts pairs.csv with prompt,image columns)"
                if feedback == "target"
                else ""
            )
            raise ConfigError(f"prompts: no train prompts given{hint}")
        with_images = feedback == "target"
        train = load_prompts(
            prompts["train"], base_dir=base_dir, images=with_images and check_files, what="train prompts"
        )
        validation = (
            load_prompts(
                prompts["validation"], base_dir=base_dir, images=with_images and check_files, what="validation prompts"
            )
            if prompts.get("validation") is not None
            else PromptSet(())
        )
        if with_images and not check_files:
            train, validation = _unchecked_images(prompts["train"]), _unchecked_images(prompts.get("validation"))
        overlap = set(train.prompts) & set(validation.prompts)
        if overlap:
            logger.warning(
                "%d validation prompt(s) also appear in the train prompts; held-out results will be optimistic",
                len(overlap),
            )
        seed = data.get("seed", 0)
        protocol = Protocol(
            prompts=train.prompts,
            validation_prompts=validation.prompts,
            rounds=protocol_data.get("rounds", 3),
            n_images=protocol_data.get("n_images", 4),
            feedback=feedback,
            targets=train.images,
            validation_targets=validation.images,
            temperature=protocol_data.get("temperature", 0.0),
            value=protocol_data.get("value", "improvement"),
            negative_prompt=_string(
                protocol_data.get("negative_prompt", DEFAULT_NEGATIVE_PROMPT), "protocol.negative_prompt"
            ),
            seed=seed,
            height=protocol_data.get("height"),
            width=protocol_data.get("width"),
            prune=_boolean(protocol_data.get("prune", True), "protocol.prune"),
            prompt_batch=protocol_data.get("prompt_batch", 1),
        )
        space = SearchSpace.from_dict(data.get("search_space") or {"extends": "default"})
        base_changes = {k: protocol_data[k] for k in ("steps", "guidance_scale") if protocol_data.get(k) is not None}
        if base_changes:
            space = dataclasses.replace(space, base=space.base.replace(**base_changes))
        sampler, sampler_options = _named(data.get("sampler", DEFAULT_SAMPLER), "sampler")
        pruner, pruner_options = _named(data.get("pruner", "none"), "pruner")
        trials = data.get("trials", 20)
        return cls(
            name=str(data["name"]),
            model=data["model"],
            objective=data["objective"],
            protocol=protocol,
            space=space,
            description=_string(data.get("description") or "", "description").strip(),
            scheduler=data.get("scheduler"),
            feedback_objective=data.get("feedback_objective"),
            metrics=data.get("metrics") or (),
            objective_weights=data.get("objective_weights") or {},
            objective_options=data.get("objective_options") or {},
            sampler=sampler,
            sampler_options=sampler_options,
            pruner=pruner,
            pruner_options=pruner_options,
            trials=trials,
            warm_start=data.get("warm_start", ("paper", "a1111")) or (),
            compare_with=data.get("compare_with", ("paper", "a1111")) or (),
            guard=GuardConfig.from_data(data.get("guard")),
            source=source,
        )

    def fingerprint(self) -> str:
        """A hash of the settings that change what a trial measures (model, objectives,
        prompts, protocol, space); a study resumes only under an equal fingerprint."""
        record = self._value_record()
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]

    def differences(self, other: StudyConfig) -> list[str]:
        """Names of the trial-value settings in which ``other`` differs from this config."""
        a, b = self._value_record(), other._value_record()
        keys = (*_VALUE_KEYS, "guard")
        return [k for k in keys if json.dumps(a.get(k), sort_keys=True) != json.dumps(b.get(k), sort_keys=True)]

    def _value_record(self) -> dict[str, Any]:
        record = self.to_dict()
        out = {k: record[k] for k in _VALUE_KEYS}
        if record["guard"] is not None:  # absent without one: older studies keep their fingerprint
            out["guard"] = record["guard"]
        out["protocol"] = {k: v for k, v in out["protocol"].items() if k not in _EXECUTION_PROTOCOL_KEYS}
        return out


# ---- files --------------------------------------------------------------------------------


def available_studies() -> list[str]:
    """Names of the built-in studies (``studies/*.yaml``)."""
    return sorted(p.stem for p in STUDIES_DIR.glob("*.yaml"))


def study_file(study: str | Path) -> Path:
    """The file of a built-in study name, or ``study`` itself when it is a YAML path."""
    text = str(study)
    if text.endswith((".yaml", ".yml")) or "/" in text or "\\" in text:
        path = Path(text).expanduser()
        if not path.is_file():
            raise ConfigError(f"study file not found: {path}")
        return path.resolve()
    path = STUDIES_DIR / f"{text}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"unknown study {text!r}; built-in studies: {', '.join(available_studies())} (or pass a YAML file)"
        )
    return path


def read_study_data(study: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The raw study document with ``extends`` applied and relative paths made absolute."""
    import yaml

    path = study_file(study)
    if path in _seen:
        raise ConfigError(f"{path}: 'extends' loops back to itself")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read study file {path}: {type(exc).__name__}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"study file {path} is not valid YAML{at}: {problem}") from None
    if data is None:
        raise ConfigError(f"study file {path} is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"study file {path} must be a mapping of settings, got {type(data).__name__}")
    unknown = sorted(set(map(str, data)) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_TOP_KEYS))}")
    data = _absolute_paths(data, path.parent)
    data.setdefault("name", path.stem)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: 'extends' must be a study name or a file path, got {parent!r}")
    if parent.endswith((".yaml", ".yml")) and not Path(parent).is_absolute():
        parent = str(path.parent / parent)
    try:
        base = read_study_data(parent, (*_seen, path))
    except ConfigError as exc:
        if str(path) in str(exc):
            raise
        raise ConfigError(f"{path}: extends: {exc}") from None
    base.pop("name", None)  # a derived study is its own study
    return merge_study_data(base, data)


def merge_study_data(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``: mappings merge key by key, except prompt sources (a split
    is replaced whole) and a sampler or pruner whose name changes (its options do not carry over)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if key in ("sampler", "pruner"):
            old, new = _as_named(out.get(key)), _as_named(value)
            if old is not None and new is not None and new.get("name", old.get("name")) == old.get("name"):
                out[key] = {
                    "name": old.get("name"),
                    "options": {**(old.get("options") or {}), **(new.get("options") or {})},
                }
            else:
                out[key] = copy.deepcopy(value)
        elif key == "prompts" and isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **copy.deepcopy(dict(value))}
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_study_data(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_study_config(study: str | Path, overrides: Mapping[str, Any] | None = None) -> StudyConfig:
    """Read a built-in study (by name) or a study file, apply ``overrides``, validate.

    Args:
        study: a built-in study name (:func:`available_studies`) or a YAML path.
        overrides: settings in the file layout that replace the file's (command-line flags);
            relative paths in them are resolved against the working directory.
    """
    path = study_file(study)
    data = read_study_data(path)
    if overrides:
        data = merge_study_data(data, _absolute_paths(dict(overrides), Path.cwd()))
    return StudyConfig.from_dict(data, base_dir=path.parent, source=str(path))


def resolve_study(
    study: str | Path | None = None, objective: str | None = None, overrides: Mapping[str, Any] | None = None
) -> StudyConfig:
    """The study the command line asks for.

    * ``study`` given: that study, with ``objective`` (if any) replacing its objective.
    * only ``objective``: the built-in study named after it, else the built-in study that
      optimises it (``hpsv2`` -> ``hps``), else the ``pickscore`` study's protocol with this
      objective, named after the objective.

    Raises:
        ConfigError: neither given, an unknown study, or an invalid objective spec.
    """
    overrides = dict(overrides or {})
    if study is None and objective is None:
        raise ConfigError(
            f"give an objective (e.g. pickscore) or a study (one of {', '.join(available_studies())}, or a YAML file)",
            option="study",
        )
    if study is None and objective is not None and objective.strip() in available_studies():
        study, objective = objective.strip(), None  # a built-in study's name: --objective pickscore-diversity
    if objective is not None:
        from objectives.composite import parse_spec

        parse_spec(objective)  # an unknown objective fails here, before any file is read
        overrides["objective"] = objective
    if study is None:
        assert objective is not None
        study = _study_for_objective(objective)
        if study is None:
            study = _DEFAULT_TEMPLATE
            overrides.setdefault("name", re.sub(r"[^A-Za-z0-9._+-]+", "-", objective.strip()).strip("-"))
    return load_study_config(study, overrides)


def _study_for_objective(objective: str) -> str | None:
    import yaml

    from objectives.composite import parse_spec

    wanted = parse_spec(objective)
    names = available_studies()
    if objective.strip() in names:
        return objective.strip()
    for name in names:
        try:
            data = yaml.safe_load((STUDIES_DIR / f"{name}.yaml").read_text(encoding="utf-8")) or {}
            if name != "tiny" and "objective" in data and parse_spec(str(data["objective"])) == wanted:
                return name
        except (FabricOptError, yaml.YAMLError, OSError):
            continue
    return None


# ---- helpers ------------------------------------------------------------------------------


def _absolute_paths(data: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    out = dict(data)
    prompts = out.get("prompts")
    if isinstance(prompts, Mapping):
        out["prompts"] = {k: resolve_source(v, base_dir) for k, v in prompts.items()}
    weights = out.get("objective_weights")
    if isinstance(weights, Mapping):
        # A weights value that names an existing relative path is a local checkpoint.
        out["objective_weights"] = {
            k: str((base_dir / v).resolve())
            if isinstance(v, str) and not Path(v).is_absolute() and (base_dir / v).exists()
            else v
            for k, v in weights.items()
        }
    model = out.get("model")
    if isinstance(model, str) and model.startswith(".") and (base_dir / model).exists():
        out["model"] = str((base_dir / model).resolve())
    return out


def _unchecked_images(source: Any) -> PromptSet:
    """Prompt/image pairs of a stored record, without touching the files."""
    if source is None:
        return PromptSet(())
    items = list(source)
    prompts = tuple(i["prompt"] if isinstance(i, Mapping) else i for i in items)
    images = tuple(i.get("image", "") if isinstance(i, Mapping) else "" for i in items)
    return PromptSet(prompts, images if all(images) else (), "stored record")


def _as_named(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return {"name": value, "options": {}}
    if isinstance(value, Mapping):
        return dict(value)
    return None


def _named(value: Any, what: str) -> tuple[str, dict[str, Any]]:
    if isinstance(value, str):
        return value, {}
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"name", "options"})
        if unknown or not isinstance(value.get("name"), str):
            raise ConfigError(f"{what} must be a name or {{name: ..., options: {{...}}}}, got {dict(value)!r}")
        return value["name"], _mapping(value.get("options"), f"{what} options", "study")
    raise ConfigError(f"{what} must be a name or {{name: ..., options: {{...}}}}, got {value!r}")


def _mapping(value: Any, what: str, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: '{what}' must be a mapping, got {type(value).__name__}")
    return {str(k): v for k, v in value.items()}


def _str_mapping(value: Any, what: str, where: str) -> dict[str, str]:
    out = _mapping(value, what, where)
    for k, v in out.items():
        if not isinstance(v, str) or not v:
            raise ConfigError(f"{where}: {what}.{k} must be a path, hub id or 'tiny', got {v!r}")
    return out


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a string, got {value!r}")
    return value


def _boolean(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{what} must be true or false, got {value!r}")
    return value
