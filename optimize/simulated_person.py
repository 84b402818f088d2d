"""A person simulated by a reward model, answering preference queries through a Bradley-Terry model.

Scripts, tests and ``bench/prefer.py`` drive a :class:`~optimize.preference.PreferenceTuner` with
it instead of a person in a browser (``fabric-opt prefer`` does). For a query on prompt ``p``:

1. a first round without feedback (the space's base parameters) on seeds fixed per prompt; the
   person likes the image their taste scores highest and dislikes the lowest: the references;
2. each option's round on the same prompt, the query's seeds and those references
   (:func:`optimize.preference.query_rounds`); with ``rounds > 1`` the person goes on with each
   option as in a FABRIC session: likes the best and dislikes the worst image of every round but
   the last (by their taste), and the next round (fresh seeds, the same for every option) uses
   all references so far;
3. the option's utility ``u_i`` is its last round's mean score under the taste (``objective``);
4. the answer is option ``i`` with probability ``exp(u_i / T) / sum_j exp(u_j / T)`` (Bradley-Terry;
   for two options ``sigmoid((u_0 - u_1) / T)``), drawn from a generator seeded by the person's seed
   and the query's index. ``temperature=0`` always picks the best option.

The same person scores presets on held-out prompts (:meth:`SimulatedPerson.utilities`), which is
how a recommendation is checked against the paper's defaults.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fabric.checks import check_int
from fabric.errors import ConfigError
from fabric.params import FabricParams
from fabric.seeds import stable_seed
from optimize.preference import Query, query_rounds

__all__ = ["SimulatedPerson", "preference_probability"]


def preference_probability(utilities: Sequence[float], temperature: float) -> list[float]:
    """Bradley-Terry choice probabilities of options with ``utilities`` (softmax at ``temperature``;
    ``0``: all mass on the best, ties split)."""
    if temperature == 0:
        best = max(utilities)
        winners = [u == best for u in utilities]
        return [w / sum(winners) for w in winners]
    top = max(utilities)
    weights = [math.exp((u - top) / temperature) for u in utilities]
    total = sum(weights)
    return [w / total for w in weights]


@dataclass
class SimulatedPerson:
    """Answers queries the way a person with the taste ``objective`` would, with noise.

    Args:
        generator: a :class:`~fabric.fabric_generator.FabricGenerator`.
        objective: the person's taste, an objective with one direction (e.g. ``toy-taste``).
        prompts: prompts the queries cycle through.
        base: parameters of the first round (no feedback there: only ``steps``,
            ``guidance_scale`` and ``prompt_dropout`` matter).
        n_images: images per round.
        negative_prompt: the negative prompt of every round.
        temperature: Bradley-Terry temperature in the taste's units (0: noiseless).
        rounds: feedback rounds per option (the person judges the last).
        seed: seeds the query seeds and the person's draws.
        height, width: image size (the model's default when ``None``).
    """

    generator: Any
    objective: Any
    prompts: Sequence[str]
    base: FabricParams = field(default_factory=FabricParams)
    n_images: int = 4
    negative_prompt: str = ""
    temperature: float = 0.05
    rounds: int = 1
    seed: int = 0
    height: int | None = None
    width: int | None = None

    def __post_init__(self) -> None:
        self.prompts = tuple(self.prompts)
        if not self.prompts or not all(isinstance(p, str) and p.strip() for p in self.prompts):
            raise ConfigError("the simulated person needs at least one non-empty prompt")
        check_int("n_images", self.n_images, minimum=2, error=ConfigError)
        check_int("rounds", self.rounds, minimum=1, error=ConfigError)
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)):
            raise ConfigError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if len(getattr(self.objective, "directions", ("maximize",))) != 1:
            raise ConfigError("the simulated person's taste must be one objective (one score per image)")
        self._sign = -1.0 if tuple(getattr(self.objective, "directions", ("maximize",)))[0] == "minimize" else 1.0
        self._references: dict[tuple, tuple[Any, Any]] = {}
        self._utilities: dict[str, float] = {}
        self.rounds_generated = 0  # rounds with feedback generated (not read from the cache)

    # ---- contexts ------------------------------------------------------------------------
    def context(self, index: int) -> dict[str, Any]:
        """The context of query ``index`` (a :meth:`PreferenceTuner.ask` context function):
        the prompt (cycling), the first round's seeds (fixed per prompt) and the query's seeds."""
        prompt = self.prompts[index % len(self.prompts)]
        return self.context_for(prompt, stable_seed("query", self.seed, index))

    def context_for(self, prompt: str, key: object) -> dict[str, Any]:
        """A context on ``prompt`` whose query seeds derive from ``key`` (e.g. a held-out index)."""
        return {
            "prompt": prompt,
            "first_seeds": [stable_seed("first", prompt, i) % 2**31 for i in range(self.n_images)],
            "seeds": [stable_seed("seeds", key, i) % 2**31 for i in range(self.n_images)],
        }

    # ---- answering -----------------------------------------------------------------------
    def __call__(self, query: Query, params: list[FabricParams]) -> int:
        """The preferred option of ``query`` (an :data:`optimize.preference.Answer`)."""
        context = query.context or self.context(query.index)
        probabilities = preference_probability(self.utilities(params, context), self.temperature)
        import numpy as np

        rng = np.random.default_rng(stable_seed("answer", self.seed, query.index) % 2**32)
        return int(rng.choice(len(probabilities), p=np.asarray(probabilities) / sum(probabilities)))

    def utilities(self, params: Sequence[FabricParams], context: Mapping[str, Any]) -> list[float]:
        """Each preset's utility on ``context``: the mean taste of its round (cached)."""
        keys = [self._key(p, context) for p in params]
        for i, key in enumerate(keys):
            if key in self._utilities:
                continue
            first_liked, first_disliked = self.references(context["prompt"], context["first_seeds"])
            liked, disliked = [first_liked], [first_disliked]
            for r in range(self.rounds):
                seeds = [s if r == 0 else stable_seed(s, "round", r) % 2**31 for s in context["seeds"]]
                (images,) = query_rounds(
                    self.generator,
                    [params[i]],
                    prompt=context["prompt"],
                    seeds=seeds,
                    negative_prompt=self.negative_prompt,
                    liked=liked,
                    disliked=disliked,
                    height=self.height,
                    width=self.width,
                )
                self.rounds_generated += 1
                scores = self._scores(images, context["prompt"])
                best = max(range(len(scores)), key=scores.__getitem__)
                worst = min((j for j in range(len(scores)) if j != best), key=scores.__getitem__)
                liked.append(images[best])
                disliked.append(images[worst])
            self._utilities[key] = sum(scores) / len(scores)
        return [self._utilities[k] for k in keys]

    def references(self, prompt: str, first_seeds: Sequence[int]) -> tuple[Any, Any]:
        """The liked and the disliked image of the first round on ``prompt`` (cached)."""
        key = (prompt, tuple(first_seeds))
        if key not in self._references:
            images = self.generator.generate(
                prompt,
                negative_prompt=self.negative_prompt,
                params=self.base,
                n_images=len(first_seeds),
                seed=list(first_seeds),
                height=self.height,
                width=self.width,
            )
            scores = self._scores(images, prompt)
            best = max(range(len(scores)), key=scores.__getitem__)
            worst = min((i for i in range(len(scores)) if i != best), key=scores.__getitem__)
            self._references[key] = (images[best], images[worst])
        return self._references[key]

    def _scores(self, images: list, prompt: str) -> list[float]:
        raw = self.objective.score(images, prompt)
        values = raw.detach().float().cpu().reshape(-1).tolist() if hasattr(raw, "detach") else list(raw)
        return [self._sign * float(v) for v in values]

    def _key(self, params: FabricParams, context: Mapping[str, Any]) -> str:
        return json.dumps(
            [params.to_dict(), context["prompt"], list(context["first_seeds"]), list(context["seeds"])], sort_keys=True
        )
