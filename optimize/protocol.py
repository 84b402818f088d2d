"""Trial evaluation: the FABRIC paper's feedback protocols as an Optuna objective.

One trial runs, per prompt, ``rounds`` rounds of ``n_images`` images. After each round a
simulated user likes one image and dislikes another (the feedback for the next round):

* ``feedback="preference"``: the user's taste is a reward model (``feedback_objective``, by
  default the scored objective);
* ``feedback="target"``: the user's taste is similarity to a per-prompt target image
  (``objective.with_target(image)``).

With ``temperature=0`` the user likes the best image and dislikes the worst; with
``temperature>0`` the user is noisy: a Bradley-Terry (softmax) choice over the scores,
``P(like i) ∝ exp(s_i / T)``, then ``P(dislike j) ∝ exp(-s_j / T)`` among the others, with ``T``
in the score's units and the choices seeded per (prompt, round).

Common random numbers: the seed of image ``i`` of round ``r`` of prompt ``p`` is a stable hash of
``(protocol seed, split, replicate, p, r, i)``, so two trials differ only by their parameters,
and the same parameters give the same value.

Trial value (per objective, averaged over prompts): ``"improvement"`` (default) is the final
round's mean score minus the no-feedback baseline's on the same seeds; ``"final"`` is the
final round's mean score; ``"mean"`` the mean over the rounds that received feedback (rounds
1..R-1). The baseline (base parameters, no liked/disliked images) is computed once per evaluator
and split, cached in memory and, with ``baseline_cache``, in a JSON file keyed by a fingerprint
of everything it depends on.

Guard (optional, :class:`Guard`): a second objective, e.g. prompt adherence, that the tuned
parameters may not lose. It is scored every round; its *floor* is the final round's mean guard
score of reference parameters (the no-feedback baseline, or e.g. the paper's defaults with
feedback) on the same prompts, seeds and user. With ``drop`` the mean over prompts of
``floor - final guard score``, the trial value becomes ``value - penalty * max(0, drop -
tolerance)``: a constraint enforced by penalty, which every sampler can optimise (no
sampler-side constraint support needed). Per prompt, the penalty is split as
``penalty * (drop_p - tolerance)`` when it applies, so per-prompt values still average to the
trial value. ``drop - tolerance`` is recorded as the trial's ``constraint`` user attribute
(feasible when <= 0).

Held-out ``validation_prompts`` are never scored inside a trial; :meth:`TrialEvaluator.evaluate`
with ``split="validation"`` scores them for the final recommendation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fabric.checks import check_int
from fabric.errors import ConfigError
from fabric.files import write_text_atomic
from fabric.images import ImageLike, ReferenceImage, image_key, load_image
from fabric.params import FabricParams
from fabric.seeds import stable_seed
from optimize.space import SearchSpace

if TYPE_CHECKING:
    import optuna

    from objectives.base import Direction, Objective

__all__ = [
    "DEFAULT_NEGATIVE_PROMPT",
    "Guard",
    "Protocol",
    "TrialEvaluator",
    "TrialResult",
    "PromptResult",
    "NonFiniteScoreError",
    "RoundCallback",
    "choose_feedback",
    "evaluate",
]

logger = logging.getLogger(__name__)

# The FABRIC paper's negative prompt for its evaluation (DESIGN section 4).
DEFAULT_NEGATIVE_PROMPT = "lowres, bad anatomy, bad hands, cropped, worst quality"

FeedbackKind = Literal["preference", "target"]
ValueKind = Literal["improvement", "final", "mean"]
Split = Literal["train", "validation"]
# on_round(prompt_index, round, images, scores, choice): round counts from 0; scores maps objective name ->
# per-image scores; choice is the simulated user's (liked index, disliked index) after this round, None when
# the round gets no feedback (the last round, the baseline).
RoundCallback = Callable[[int, int, list, Mapping[str, list[float]], "tuple[int, int] | None"], None]

_CACHE_VERSION = 1
_MEMO_SIZE = 4096  # remembered (parameters, split, replicate, prompts) runs: a few floats each


def choose_feedback(scores: Sequence[float], temperature: float, *, seed: int) -> tuple[int, int]:
    """The simulated user's choice: indices of the liked and the disliked image.

    Args:
        scores: per-image scores, higher is better.
        temperature: 0 likes the best and dislikes the worst; > 0 is a Bradley-Terry (softmax)
            user, ``P(like i) ∝ exp(s_i / T)`` and then ``P(dislike j) ∝ exp(-s_j / T)`` among the
            other images.
        seed: seeds the noisy user's draws.
    """
    n = len(scores)
    if n < 2:
        raise ConfigError(f"the user needs at least 2 images to like one and dislike another, got {n}")
    if temperature == 0:
        like = max(range(n), key=lambda i: scores[i])
        dislike = min((i for i in range(n) if i != like), key=lambda i: scores[i])
        return like, dislike
    import numpy as np

    rng = np.random.default_rng(seed)
    s = np.asarray(scores, dtype=np.float64) / temperature
    like_p = np.exp(s - s.max())
    like = int(rng.choice(n, p=like_p / like_p.sum()))
    others = np.array([i for i in range(n) if i != like])
    dislike_p = np.exp(-(s[others] - s[others].min()))
    dislike = int(others[rng.choice(len(others), p=dislike_p / dislike_p.sum())])
    return like, dislike


class NonFiniteScoreError(RuntimeError):
    """An objective returned NaN or infinity; the trial fails instead of feeding it to a sampler."""


@dataclass(frozen=True)
class Protocol:
    """How one trial is evaluated (see module docs). Validated on construction.

    Args:
        prompts: prompts the sampler sees (train split).
        validation_prompts: held-out prompts, scored only for the final recommendation.
        rounds: feedback rounds per prompt (the paper: 3).
        n_images: images per round (the paper: 4); at least 2 when there is feedback.
        feedback: ``"preference"`` (reward-model user) or ``"target"`` (similarity to a target).
        targets: one target image (PIL or path) per prompt, for ``feedback="target"``.
        validation_targets: one target image per validation prompt.
        temperature: 0 for the greedy user; > 0 for the noisy Bradley-Terry user (score units).
        value: ``"improvement"``, ``"final"`` or ``"mean"`` (see module docs).
        negative_prompt: negative prompt of every generation.
        seed: the study seed every image and user seed derives from.
        height, width: image size; the generator's default when ``None``.
        prune: report the running mean over prompts after each prompt (``step`` = prompt
            index) and stop the trial when the study's pruner says so (single objective only).
            Median-style pruners compare these running means directly; ``WilcoxonPruner`` pairs
            them by step, which is a heuristic there (it was designed for per-instance values).
        prompt_batch: prompts generated together, round by round, in one pipeline call each
            (generators with ``generate_many``); 1 runs them one after another. Images equal
            the one-by-one ones up to the float rounding of larger batches, which can re-draw a
            reference's noise in later rounds (it is keyed by the image's content), so values
            change like another noise draw, not systematically. The pruner hears after each
            batch. Out-of-memory splits a batch instead of failing.
    """

    prompts: tuple[str, ...]
    validation_prompts: tuple[str, ...] = ()
    rounds: int = 3
    n_images: int = 4
    feedback: FeedbackKind = "preference"
    targets: tuple[ImageLike, ...] = ()
    validation_targets: tuple[ImageLike, ...] = ()
    temperature: float = 0.0
    value: ValueKind = "improvement"
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    seed: int = 0
    height: int | None = None
    width: int | None = None
    prune: bool = True
    prompt_batch: int = 1

    def __post_init__(self) -> None:
        for name in ("prompts", "validation_prompts", "targets", "validation_targets"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)):
                value = (value,)
            object.__setattr__(self, name, tuple(value))
        if not self.prompts:
            raise ConfigError("the protocol needs at least one prompt")
        for prompt in (*self.prompts, *self.validation_prompts):
            if not isinstance(prompt, str) or not prompt.strip():
                raise ConfigError(f"prompts must be non-empty strings, got {prompt!r}")
        for name, minimum in (("rounds", 1), ("n_images", None), ("seed", None), ("prompt_batch", 1)):
            check_int(f"protocol {name}", getattr(self, name), minimum=minimum, error=ConfigError)
        if self.n_images < (2 if self.rounds > 1 else 1):
            raise ConfigError(
                f"protocol n_images must be >= 2 to like one image and dislike another, got {self.n_images}"
            )
        if self.feedback not in ("preference", "target"):
            raise ConfigError(f"protocol feedback must be 'preference' or 'target', got {self.feedback!r}")
        if self.value not in ("improvement", "final", "mean"):
            raise ConfigError(f"protocol value must be 'improvement', 'final' or 'mean', got {self.value!r}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)):
            raise ConfigError(f"protocol temperature must be a number, got {self.temperature!r}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ConfigError(f"protocol temperature must be finite and >= 0, got {self.temperature}")
        if self.feedback == "target":
            if len(self.targets) != len(self.prompts):
                raise ConfigError(
                    f"target feedback needs one target per prompt: {len(self.prompts)} prompts, "
                    f"{len(self.targets)} targets"
                )
            if len(self.validation_targets) != len(self.validation_prompts):
                raise ConfigError(
                    f"target feedback needs one target per validation prompt: {len(self.validation_prompts)} prompts, "
                    f"{len(self.validation_targets)} targets"
                )
        elif self.targets or self.validation_targets:
            raise ConfigError("targets are only used with feedback='target'")
        for name in ("height", "width"):
            if getattr(self, name) is not None:
                check_int(f"protocol {name}", getattr(self, name), minimum=8, error=ConfigError)

    def split(self, split: Split) -> tuple[tuple[str, ...], tuple[ImageLike, ...]]:
        """Prompts and targets of ``split``."""
        if split == "train":
            return self.prompts, self.targets
        if split == "validation":
            if not self.validation_prompts:
                raise ConfigError("the protocol has no validation prompts")
            return self.validation_prompts, self.validation_targets
        raise ConfigError(f"split must be 'train' or 'validation', got {split!r}")


@dataclass(frozen=True, eq=False)
class Guard:
    """A constraint by penalty on a second objective (see module docs).

    Args:
        objective: the guarded objective (one score column), scored every round; ``"minimize"``
            objectives are negated, so a drop is always a loss.
        reference: parameters whose final-round guard score is the floor, run with feedback on
            the same prompts, seeds and user; ``None`` for the no-feedback baseline.
        label: the reference's name in messages and records (``"no feedback"``, ``"paper"``).
        tolerance: how far (guard units) the mean final guard score may fall below the floor
            before the penalty starts.
        penalty: value lost per unit of drop beyond the tolerance (the objective's value units
            per guard unit); large enough that losing the guard never pays.
    """

    objective: Objective
    reference: FabricParams | None = None
    label: str = "no feedback"
    tolerance: float = 0.0
    penalty: float = 3.0

    def __post_init__(self) -> None:
        directions = getattr(self.objective, "directions", None)
        if directions is None or len(directions) != 1:
            raise ConfigError("the guard needs an objective with one score per image")
        if self.reference is not None and not isinstance(self.reference, FabricParams):
            raise ConfigError(
                f"the guard's reference must be FabricParams or None, got {type(self.reference).__name__}"
            )
        for name in ("tolerance", "penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"guard {name} must be a finite number, got {value!r}")
        if self.penalty < 0:
            raise ConfigError(f"guard penalty must be >= 0, got {self.penalty}")

    @property
    def name(self) -> str:
        return self.objective.name

    @property
    def sign(self) -> float:
        return -1.0 if self.objective.directions[0] == "minimize" else 1.0


@dataclass(frozen=True)
class PromptResult:
    """One prompt of one evaluation.

    Attributes:
        index: position of the prompt in its split.
        prompt: the prompt.
        round_scores: ``[round][objective]`` mean score of the round's images.
        value: ``[objective]`` this prompt's contribution to the trial value (after the guard's
            penalty, when there is a guard).
        metrics: extra metric name -> per-round value (e.g. in-batch diversity).
        guard: per-round mean guard score (empty without a guard).
        guard_floor: the guard reference's final-round mean guard score on this prompt.
        unguarded: ``[objective]`` the value before the guard's penalty (``value`` without a guard).
    """

    index: int
    prompt: str
    round_scores: tuple[tuple[float, ...], ...]
    value: tuple[float, ...]
    metrics: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    guard: tuple[float, ...] = ()
    guard_floor: float | None = None
    unguarded: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.unguarded:
            object.__setattr__(self, "unguarded", tuple(self.value))


@dataclass(frozen=True)
class TrialResult:
    """Everything one evaluation measured; the tracking layer logs it.

    Attributes:
        params: the evaluated parameters.
        split: ``"train"`` or ``"validation"``.
        replicate: 0 for the study's seeds, k > 0 for the k-th set of extra seeds.
        objective_names: names of the scored objectives.
        prompts: per-prompt results, in prompt order (fewer than the split has if pruned).
        values: ``[objective]`` mean over prompts of the per-prompt values.
        sem: ``[objective]`` standard error of that mean (0 with one prompt).
        baseline_round_scores: ``[prompt][round][objective]`` of the no-feedback baseline, when
            the value is an improvement.
        guard: with a guard, its summary: ``objective``, ``reference``, ``floor`` and ``final``
            (means over prompts), ``drop``, ``tolerance``, ``penalty``, ``penalty_applied`` and
            ``unguarded`` (the value before the penalty).
    """

    params: FabricParams
    split: str
    replicate: int
    objective_names: tuple[str, ...]
    prompts: tuple[PromptResult, ...]
    values: tuple[float, ...]
    sem: tuple[float, ...]
    baseline_round_scores: tuple[tuple[tuple[float, ...], ...], ...] | None = None
    guard: Mapping[str, Any] | None = None

    @property
    def value(self) -> float:
        """The value of the first (or only) objective."""
        return self.values[0]

    def per_prompt(self, objective: int = 0) -> list[float]:
        """Per-prompt values of one objective."""
        return [p.value[objective] for p in self.prompts]

    def round_metrics(self) -> dict[str, list[float]]:
        """``metric -> per-round mean over prompts``: ``score/<objective>`` and extra metrics."""
        out: dict[str, list[float]] = {}
        if not self.prompts:
            return out
        n_rounds = len(self.prompts[0].round_scores)
        for j, name in enumerate(self.objective_names):
            out[f"score/{name}"] = [_mean([p.round_scores[r][j] for p in self.prompts]) for r in range(n_rounds)]
        for name in self.prompts[0].metrics:
            out[name] = [_mean([p.metrics[name][r] for p in self.prompts]) for r in range(n_rounds)]
        if self.guard is not None:
            out[f"guard/{self.guard['objective']}"] = [
                _mean([p.guard[r] for p in self.prompts]) for r in range(n_rounds)
            ]
        return out

    def user_attrs(self) -> dict[str, Any]:
        """JSON-serialisable summary for ``trial.set_user_attr`` (one key per entry)."""
        single = len(self.objective_names) == 1
        per_prompt = [list(p.value) for p in self.prompts]
        attrs = {
            "per_prompt": [v[0] for v in per_prompt] if single else per_prompt,
            "mean": self.values[0] if single else list(self.values),
            "sem": self.sem[0] if single else list(self.sem),
            "n_prompts": len(self.prompts),
            "round_metrics": self.round_metrics(),
            "fabric_params": self.params.to_dict(),
        }
        if self.guard is not None:
            attrs["guard"] = dict(self.guard)
            # Optuna's convention for constraints_func: feasible when <= 0
            attrs["constraint"] = self.guard["drop"] - self.guard["tolerance"]
        return attrs


@dataclass
class _Session:
    """One prompt's feedback session inside a trial: its objectives, the user's picks so far and
    the per-round scores."""

    index: int
    prompt: str
    feedback_objective: Objective
    scored: tuple[Objective, ...]
    metrics: dict[str, list[float]]  # metric name -> per-round means
    liked: list[Any] = field(default_factory=list)
    disliked: list[Any] = field(default_factory=list)
    round_scores: list[tuple[float, ...]] = field(default_factory=list)
    guard: list[float] = field(default_factory=list)  # per-round mean guard score


class TrialEvaluator:
    """Evaluates FABRIC parameters under a :class:`Protocol`; an Optuna objective when called.

    Args:
        generator: has ``generate(prompt, negative_prompt, liked, disliked, params, n_images,
            seed, height, width) -> list[PIL.Image]`` (e.g. :class:`fabric.FabricGenerator`).
        objective: the scored :class:`~objectives.base.Objective`; a multi-objective (several
            ``directions``) makes trials return one value per objective.
        protocol: the evaluation protocol.
        space: the search space trials sample (``SearchSpace.default()`` if omitted); its base
            parameters also generate the no-feedback baseline.
        feedback_objective: the simulated user's reward model; defaults to ``objective`` (its
            first objective when it is a multi-objective).
        metrics: extra objectives averaged per round for logging only (e.g. diversity).
        guard: a constraint by penalty on a second objective (:class:`Guard`); single-objective
            studies only.
        on_round: called after every generated round of a trial as
            ``on_round(prompt_index, round, images, scores, choice)`` (not for baseline rounds),
            ``choice`` the user's ``(liked, disliked)`` image indices or ``None`` (the last
            round); keep the images there if you need them, the evaluator does not.
        baseline_cache: JSON file that stores baselines across processes and runs.
        cache_key: text identifying model weights and anything else the fingerprint cannot see
            (e.g. the checkpoint path); part of the baseline fingerprint.
    """

    def __init__(
        self,
        generator: Any,
        objective: Objective,
        protocol: Protocol,
        space: SearchSpace | None = None,
        *,
        feedback_objective: Objective | None = None,
        metrics: Mapping[str, Objective] | None = None,
        on_round: RoundCallback | None = None,
        baseline_cache: str | Path | None = None,
        cache_key: str = "",
        guard: Guard | None = None,
    ) -> None:
        if not isinstance(protocol, Protocol):
            raise ConfigError(f"protocol must be a Protocol, got {type(protocol).__name__}")
        self.generator = generator
        self.protocol = protocol
        self.space = space if space is not None else SearchSpace.default()
        self.objectives: tuple[Objective, ...] = tuple(objective.objectives)
        self.directions: tuple[Direction, ...] = tuple(objective.directions)
        if len(self.directions) != len(self.objectives):
            raise ConfigError("a multi-objective needs one direction per objective")
        self.feedback_objective: Objective = (
            feedback_objective if feedback_objective is not None else self.objectives[0]
        )
        if len(self.feedback_objective.directions) != 1:
            raise ConfigError(
                f"the simulated user needs one score per image; {self.feedback_objective.name!r} gives several"
            )
        self.metrics = dict(metrics or {})
        if guard is not None and not isinstance(guard, Guard):
            raise ConfigError(f"guard must be an optimize.protocol.Guard, got {type(guard).__name__}")
        if guard is not None and len(self.objectives) > 1:
            raise ConfigError(
                "a guard needs a single objective; for a Pareto front, add the guarded objective to the spec instead"
            )
        self.guard = guard
        self.on_round = on_round
        # called with no arguments after every generated round of any kind (trials, baselines, showcase rounds),
        # for progress displays
        self.on_progress: Callable[[], None] | None = None
        self.baseline_cache = baseline_cache
        self.cache_key = cache_key
        self.baseline_runs = 0  # baselines generated (not read from a cache) by this evaluator
        self._baselines: dict[str, tuple] = {}
        self._floors: dict[str, tuple[float, ...]] = {}
        self._memo: dict[tuple, list] = {}  # scores of runs nobody watched (see _run_prompts)
        self._bound: dict[tuple[str, int], tuple[Any, tuple[Any, ...]]] = {}
        self._target_keys: dict[tuple[str, int], str] = {}

    @property
    def baseline_cache(self) -> Path | None:
        """JSON file of stored baselines (``None``: memory only); may be set after construction."""
        return self._baseline_cache

    @baseline_cache.setter
    def baseline_cache(self, path: str | Path | None) -> None:
        self._baseline_cache = Path(path) if path is not None else None

    # ---- Optuna objective ----------------------------------------------------------------
    @property
    def objective_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.objectives)

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        """The Optuna objective: :meth:`run_trial` without hooks."""
        return self.run_trial(trial)

    def run_trial(
        self,
        trial: optuna.Trial,
        *,
        on_start: Callable[[optuna.Trial, dict[str, Any], FabricParams], None] | None = None,
        on_round: RoundCallback | None = None,
    ) -> float | tuple[float, ...]:
        """Sample parameters from the space, evaluate the train split, record, return the value.

        Args:
            trial: the Optuna trial.
            on_start: called with the trial, its search values and parameters before any image
                is generated (tracking starts the trial's run there).
            on_round: overrides the evaluator's ``on_round`` for this trial.

        Returns:
            The trial value, or one value per objective.
        """
        values = self.space.suggest(trial)
        params = self.space.to_params(values)
        if on_start is not None:
            on_start(trial, values, params)
        result = self.evaluate(params, trial=trial, on_round=on_round)
        for key, value in result.user_attrs().items():
            trial.set_user_attr(key, value)
        return result.values if self.multi_objective else result.value

    # ---- evaluation ----------------------------------------------------------------------
    def evaluate(
        self,
        params: FabricParams,
        *,
        split: Split = "train",
        replicate: int = 0,
        trial: optuna.Trial | None = None,
        on_round: RoundCallback | None = None,
    ) -> TrialResult:
        """Evaluate ``params`` on a split (see module docs).

        Args:
            params: the parameters to evaluate.
            split: ``"train"`` (the sampler's prompts) or ``"validation"`` (held out).
            replicate: 0 for the study's seeds; k > 0 draws the k-th set of fresh seeds (for
                re-evaluating candidates).
            trial: when given (single objective, ``protocol.prune``), the running mean is
                reported after each prompt and ``optuna.TrialPruned`` raised when the study's
                pruner asks for it.
            on_round: overrides the evaluator's ``on_round`` for this call.

        Raises:
            NonFiniteScoreError: an objective returned NaN or infinity.
            optuna.TrialPruned: the pruner stopped the trial.
        """
        if not isinstance(params, FabricParams):
            raise ConfigError(f"params must be FabricParams, got {type(params).__name__}")
        prompts, _ = self.protocol.split(split)
        callback = on_round if on_round is not None else self.on_round
        baseline = self.baseline(split, replicate) if self.protocol.value == "improvement" else None
        floors = self.guard_floor(split, replicate) if self.guard is not None else None
        unguarded: list[PromptResult] = []
        results: list[PromptResult] = []
        for batch in self._prompt_batches(len(prompts)):
            for p, (round_scores, metrics, guard) in zip(
                batch, self._run_prompts(params, split, replicate, batch, feedback=True, on_round=callback)
            ):
                value = self._prompt_value(round_scores, baseline[p] if baseline is not None else None)
                floor = floors[p] if floors is not None else None
                unguarded.append(PromptResult(p, prompts[p], round_scores, value, metrics, guard, floor))
                results = self._apply_guard(unguarded)
                if trial is not None and self.protocol.prune and not self.multi_objective:
                    trial.report(_mean([r.value[0] for r in results]), step=p)
            done = len(results)
            if (
                trial is not None
                and self.protocol.prune
                and not self.multi_objective
                and done < len(prompts)
                and trial.should_prune()
            ):
                running = _mean([r.value[0] for r in results])
                partial = self._result(params, split, replicate, results, baseline)
                for key, val in partial.user_attrs().items():
                    trial.set_user_attr(key, val)
                import optuna

                raise optuna.TrialPruned(f"pruned after {done} of {len(prompts)} prompts (running mean {running:.4g})")
        return self._result(params, split, replicate, results, baseline)

    def run_prompt(
        self,
        params: FabricParams,
        prompt_index: int,
        *,
        split: Split = "validation",
        replicate: int = 0,
        feedback: bool = True,
        on_round: RoundCallback | None = None,
    ) -> tuple[tuple[float, ...], ...]:
        """All rounds of one prompt, on the seeds :meth:`evaluate` uses; ``feedback=False`` is
        the baseline's (no liked or disliked images). Returns ``[round][objective]`` mean scores."""
        prompts, _ = self.protocol.split(split)
        if not 0 <= prompt_index < len(prompts):
            raise ConfigError(
                f"prompt index {prompt_index} is out of range: the {split} split has {len(prompts)} prompts"
            )
        return self._run_prompts(params, split, replicate, [prompt_index], feedback=feedback, on_round=on_round)[0][0]

    def round_seeds(self, split: Split, replicate: int, prompt_index: int, round_index: int) -> list[int]:
        """The image seeds of one round (round from 0), the same for every parameter set."""
        proto = self.protocol
        return [stable_seed(proto.seed, split, replicate, prompt_index, round_index, i) for i in range(proto.n_images)]

    def guard_floor(self, split: Split = "train", replicate: int = 0) -> tuple[float, ...]:
        """The guard's floor per prompt: the reference's final-round mean guard score (oriented,
        higher is better), cached like the baseline."""
        if self.guard is None:
            raise ConfigError("the evaluator has no guard")
        key = self.guard_fingerprint(split, replicate)
        if key in self._floors:
            return self._floors[key]
        stored = self._read_cache().get(key)
        if stored is not None:
            floors = tuple(float(v) for v in stored)
        else:
            prompts, _ = self.protocol.split(split)
            ref = self.guard.reference
            logger.info("computing the guard's floor (%s) on %d %s prompts", self.guard.label, len(prompts), split)
            floors = tuple(
                guard[-1]
                for batch in self._prompt_batches(len(prompts))
                for _, _, guard in self._run_prompts(
                    ref if ref is not None else self.space.base,
                    split,
                    replicate,
                    batch,
                    feedback=ref is not None,
                    on_round=None,
                )
            )
            self._write_cache(key, floors)
        self._floors[key] = floors
        return floors

    def guard_fingerprint(self, split: Split = "train", replicate: int = 0) -> str:
        """A hash of everything the guard's floor depends on."""
        assert self.guard is not None
        ref = self.guard.reference
        data = {
            "kind": "guard-floor",
            "baseline": self.baseline_fingerprint(split, replicate),
            "guard": _identity(self.guard.objective),
            "reference": ref.to_dict() if ref is not None else None,
            "temperature": self.protocol.temperature if ref is not None else None,
            "feedback_objective": _identity(self.feedback_objective) if ref is not None else None,
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:32]

    def baseline(self, split: Split = "train", replicate: int = 0) -> tuple[tuple[tuple[float, ...], ...], ...]:
        """The no-feedback baseline, ``[prompt][round][objective]`` mean scores (cached)."""
        key = self.baseline_fingerprint(split, replicate)
        if key in self._baselines:
            return self._baselines[key]
        stored = self._read_cache().get(key)
        if stored is not None:
            logger.info("baseline %s/%d read from %s", split, replicate, self.baseline_cache)
            baseline = tuple(tuple(tuple(float(v) for v in r) for r in p) for p in stored)
        else:
            prompts, _ = self.protocol.split(split)
            logger.info("computing the no-feedback baseline on %d %s prompts", len(prompts), split)
            baseline = tuple(
                scores
                for batch in self._prompt_batches(len(prompts))
                for scores, _, _ in self._run_prompts(
                    self.space.base, split, replicate, batch, feedback=False, on_round=None
                )
            )
            self.baseline_runs += 1
            self._write_cache(key, baseline)
        self._baselines[key] = baseline
        return baseline

    def baseline_fingerprint(self, split: Split = "train", replicate: int = 0) -> str:
        """A hash of everything the baseline depends on (prompts, seeds, models, base params)."""
        prompts, targets = self.protocol.split(split)
        p = self.protocol
        data = {
            "version": _CACHE_VERSION,
            "split": split,
            "replicate": replicate,
            "prompts": list(prompts),
            "targets": [self._target_key(split, i) for i in range(len(targets))],
            "rounds": p.rounds,
            "n_images": p.n_images,
            "negative_prompt": p.negative_prompt,
            "seed": p.seed,
            "size": [p.height, p.width],
            "feedback": p.feedback,
            "params": self.space.base.to_dict(),
            "generator": _identity(self.generator),
            "objectives": [_identity(o) for o in self.objectives],
            "cache_key": self.cache_key,
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:32]

    # ---- internals -----------------------------------------------------------------------
    def _prompt_batches(self, n: int) -> list[list[int]]:
        size = self.protocol.prompt_batch
        return [list(range(i, min(i + size, n))) for i in range(0, n, size)]

    def _run_prompts(
        self,
        params: FabricParams,
        split: Split,
        replicate: int,
        batch: Sequence[int],
        *,
        feedback: bool,
        on_round: RoundCallback | None,
    ) -> list[tuple[tuple[tuple[float, ...], ...], dict[str, tuple[float, ...]], tuple[float, ...]]]:
        """All rounds of the prompts in ``batch``, round by round; per prompt ``(round scores, metrics,
        per-round guard scores)`` (the last empty without a guard).

        Without ``on_round`` (nobody needs the images) the scores are remembered: the same
        parameters on the same prompts and seeds give the same images (README, reproducibility
        contract), so a held-out comparison evaluates the recommendation once for all references,
        and the guard's floor shares the reference's or the baseline's run."""
        memo_key = None
        if on_round is None:
            memo_key = (params.to_json(), split, replicate, tuple(batch), feedback)
            if memo_key in self._memo:
                return self._memo[memo_key]
        out = self._generate_and_score(params, split, replicate, batch, feedback=feedback, on_round=on_round)
        if memo_key is not None:
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.pop(next(iter(self._memo)))
            self._memo[memo_key] = out
        return out

    def _generate_and_score(
        self,
        params: FabricParams,
        split: Split,
        replicate: int,
        batch: Sequence[int],
        *,
        feedback: bool,
        on_round: RoundCallback | None,
    ) -> list[tuple[tuple[tuple[float, ...], ...], dict[str, tuple[float, ...]], tuple[float, ...]]]:
        proto = self.protocol
        prompts, _ = proto.split(split)
        sessions = [
            _Session(p, prompts[p], *self._objectives_for(split, p), {name: [] for name in self.metrics}) for p in batch
        ]
        for r in range(proto.rounds):
            seeds = [self.round_seeds(split, replicate, s.index, r) for s in sessions]
            for s, seeds_of, images in zip(sessions, seeds, self._generate(params, sessions, seeds)):
                p, prompt = s.index, s.prompt
                scores = {
                    name: self._score(obj, images, prompt, where=(split, p, r))
                    for name, obj in zip(self.objective_names, s.scored)
                }
                s.round_scores.append(tuple(_mean(v) for v in scores.values()))
                if self.guard is not None:
                    guarded = self._score(self.guard.objective, images, prompt, where=(split, p, r))
                    s.guard.append(self.guard.sign * _mean(guarded))
                    scores = {**scores, self.guard.name: guarded}  # shown beside the objective on grids
                choice = None
                if feedback:
                    for name, obj in self.metrics.items():
                        s.metrics[name].append(_mean(self._score(obj, images, prompt, where=(split, p, r))))
                    if r + 1 < proto.rounds:
                        same = s.feedback_objective is s.scored[0]
                        fb = (
                            scores[self.objective_names[0]]
                            if same
                            else self._score(s.feedback_objective, images, prompt, where=(split, p, r))
                        )
                        if s.feedback_objective.directions[0] == "minimize":
                            fb = [-v for v in fb]
                        user_seed = stable_seed(proto.seed, "user", split, replicate, p, r)
                        choice = like, dislike = choose_feedback(fb, proto.temperature, seed=user_seed)
                        # keyed by the image's seed: a pixel that rounds the other way (prompt
                        # batching) must not redraw the reference's noise in every later round
                        s.liked.append(ReferenceImage(images[like], key=f"seed:{seeds_of[like]}"))
                        s.disliked.append(ReferenceImage(images[dislike], key=f"seed:{seeds_of[dislike]}"))
                if on_round is not None:
                    on_round(p, r, images, scores, choice)
                if self.on_progress is not None:
                    self.on_progress()
        return [(tuple(s.round_scores), {k: tuple(v) for k, v in s.metrics.items()}, tuple(s.guard)) for s in sessions]

    def _generate(self, params: FabricParams, sessions: list[_Session], seeds: list[list[int]]) -> list[list]:
        """One round's images for every session: one ``generate_many`` call when the generator has
        it and there are several prompts, else one ``generate`` call per prompt."""
        proto = self.protocol
        many = getattr(self.generator, "generate_many", None)
        if len(sessions) > 1 and many is not None:
            from fabric.fabric_generator import GenerationRequest

            requests = [
                GenerationRequest(s.prompt, tuple(ss), proto.negative_prompt, tuple(s.liked), tuple(s.disliked))
                for s, ss in zip(sessions, seeds)
            ]
            return many(requests, params=params, height=proto.height, width=proto.width)
        return [
            self.generator.generate(
                s.prompt,
                negative_prompt=proto.negative_prompt,
                liked=list(s.liked),
                disliked=list(s.disliked),
                params=params,
                n_images=proto.n_images,
                seed=ss,
                height=proto.height,
                width=proto.width,
            )
            for s, ss in zip(sessions, seeds)
        ]

    def _prompt_value(
        self, round_scores: tuple[tuple[float, ...], ...], baseline: tuple[tuple[float, ...], ...] | None
    ) -> tuple[float, ...]:
        kind = self.protocol.value
        final = round_scores[-1]
        if kind == "final":
            return final
        if kind == "mean":
            rounds = round_scores[1:] or round_scores
            return tuple(_mean([r[j] for r in rounds]) for j in range(len(final)))
        assert baseline is not None
        return tuple(f - b for f, b in zip(final, baseline[-1]))

    def _apply_guard(self, results: list[PromptResult]) -> list[PromptResult]:
        """``results`` with the guard's penalty (see module docs) on their unguarded values."""
        import dataclasses

        if self.guard is None or not results:
            return list(results)
        tol, penalty = self.guard.tolerance, self.guard.penalty
        drops = [r.guard_floor - r.guard[-1] for r in results]  # type: ignore[operator]
        active = _mean(drops) - tol > 0
        return [
            dataclasses.replace(r, value=tuple(v - (penalty * (d - tol) if active else 0.0) for v in r.unguarded))
            for r, d in zip(results, drops)
        ]

    def _guard_summary(self, results: list[PromptResult]) -> dict[str, Any] | None:
        if self.guard is None or not results:
            return None
        floor = _mean([r.guard_floor for r in results])  # type: ignore[misc]
        final = _mean([r.guard[-1] for r in results])
        drop = floor - final
        return {
            "objective": self.guard.name,
            "reference": self.guard.label,
            "floor": floor,
            "final": final,
            "drop": drop,
            "tolerance": self.guard.tolerance,
            "penalty": self.guard.penalty,
            "penalty_applied": self.guard.penalty * max(0.0, drop - self.guard.tolerance),
            "unguarded": _mean([r.unguarded[0] for r in results]),
        }

    def _result(
        self, params: FabricParams, split: str, replicate: int, results: list[PromptResult], baseline: tuple | None
    ) -> TrialResult:
        m = len(self.objectives)
        values, sems = [], []
        for j in range(m):
            per_prompt = [r.value[j] for r in results]
            values.append(_mean(per_prompt))
            sems.append(_sem(per_prompt))
        return TrialResult(
            params=params,
            split=split,
            replicate=replicate,
            objective_names=self.objective_names,
            prompts=tuple(results),
            values=tuple(values),
            sem=tuple(sems),
            baseline_round_scores=baseline,
            guard=self._guard_summary(results),
        )

    def _score(self, objective: Objective, images: list, prompt: str, where: tuple) -> list[float]:
        scores = objective.score(images, prompt)
        values = [float(v) for v in _as_list(scores)]
        bad = [v for v in values if not math.isfinite(v)]
        if bad:
            split, p, r = where
            raise NonFiniteScoreError(
                f"objective '{objective.name}' returned {bad[0]} for {split} prompt {p + 1}, round {r + 1}; "
                "the trial fails rather than feed it to the sampler"
            )
        return values

    def _objectives_for(self, split: Split, p: int) -> tuple[Objective, tuple[Objective, ...]]:
        """The feedback objective and the scored objectives for one prompt (target-bound)."""
        if self.protocol.feedback != "target":
            return self.feedback_objective, self.objectives
        key = (split, p)
        if key not in self._bound:
            _, targets = self.protocol.split(split)
            target = load_image(targets[p])
            feedback = self.feedback_objective.with_target(target)
            scored = []
            for obj in self.objectives:
                # Objectives that measure similarity to a target are scored against this one.
                if obj is self.feedback_objective:
                    scored.append(feedback)
                else:
                    scored.append(obj.with_target(target) if obj.takes_target else obj)
            self._bound[key] = (feedback, tuple(scored))
        return self._bound[key]

    def _target_key(self, split: Split, i: int) -> str:
        key = (split, i)
        if key not in self._target_keys:
            _, targets = self.protocol.split(split)
            self._target_keys[key] = image_key(load_image(targets[i]))
        return self._target_keys[key]

    def _read_cache(self) -> dict[str, Any]:
        if self.baseline_cache is None or not self.baseline_cache.exists():
            return {}
        try:
            data = json.loads(self.baseline_cache.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            logger.warning(
                "ignoring unreadable baseline cache %s (%s); delete it to silence this", self.baseline_cache, exc
            )
            return {}
        return data if isinstance(data, dict) else {}

    def _write_cache(self, key: str, baseline: tuple) -> None:
        if self.baseline_cache is None:
            return
        data = self._read_cache()
        data[key] = baseline
        write_text_atomic(self.baseline_cache, json.dumps(data))  # a concurrent reader never sees half


def evaluate(
    generator: Any,
    objective: Objective,
    params: FabricParams,
    protocol: Protocol,
    *,
    split: Split = "train",
    **evaluator_options: Any,
) -> TrialResult:
    """One-shot evaluation of ``params``: ``TrialEvaluator(...).evaluate(params, split=split)``."""
    return TrialEvaluator(generator, objective, protocol, **evaluator_options).evaluate(params, split=split)


def _identity(obj: Any) -> str:
    """What identifies a model for the baseline fingerprint (its ``fingerprint`` if it has one)."""
    fingerprint = getattr(obj, "fingerprint", None)
    if callable(fingerprint):
        fingerprint = fingerprint()
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}:{getattr(obj, 'name', '')}:{fingerprint or ''}"


def _as_list(scores: Any) -> list:
    if hasattr(scores, "detach"):
        return scores.detach().float().cpu().reshape(-1).tolist()
    if isinstance(scores, (int, float)):
        return [scores]
    return list(scores)


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values))


def _sem(values: Sequence[float]) -> float:
    n = len(values)
    if n < 2:
        return 0.0
    mu = _mean(values)
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (n - 1) / n)
