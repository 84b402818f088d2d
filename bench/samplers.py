"""Sample efficiency of the samplers: noisy test problems, and the real task (a study per sampler).

**Test problems** (``python -m bench.samplers``). Each (problem, sampler, seed) run is an Optuna
study of ``--trials`` trials on a function observed with Gaussian noise; all problems are
minimised. The noise of trial ``n`` of seed ``s`` is the same for every sampler (common random
numbers), and so is the initial design of ``botorch`` and ``gp-matched``, so runs are paired per
seed. After ``t`` trials two incumbents are scored by the **noiseless** simple regret
``f(incumbent) - f*``:

* ``recommended`` (the headline): the complete trial with the best GP posterior mean
  (:func:`optimize.recommend.posterior_at_points`, the model ``fabric-opt`` recommends with),
  applied alike to every sampler's trials;
* ``observed``: the complete trial with the best observed (noisy) value.

Problems. *Development* problems were used while designing the samplers; *held-out* problems
were fixed before the design of issue #16 and run once it was frozen:

    branin          dev       2-D, noise sd 0.5, f* = 0.397887
    hartmann6       dev       6-D on [0, 1]^6, noise sd 0.1, f* = -3.32237
    hartmann6i      dev       Hartmann-6 with x5, x6 integers k/10 (4 float + 2 int), noise sd 0.1
    styblinski5     held-out  Styblinski-Tang 5-D on [-5, 5]^5, noise sd 10 (range ~450), f* = -195.83
    levy-mixed      held-out  Levy 5-D, 3 floats on [-10, 10] + 2 integers in -10..10, and a
                              categorical that shifts the optimum (a: x = 1, b: x = 3 and +0.5,
                              c: x = -2 and +1); noise sd 1, f* = 0
    rosenbrock-fail held-out  log(1 + Rosenbrock-4) on [-2, 2]^4, noise sd 0.2, f* = 0; trials with
                              x1 + x2 > 2.3 fail (9 % of the box, next to the optimum (1, 1, 1, 1)),
                              and 10 % of all trials fail at random (NaN), seeded per seed and trial
    hartmann6-noisy noise     Hartmann-6 with noise sd 0.5 (15 % of its range), only for
                              --experiment noise: added after fabric-noisy proved too hard for any
                              sampler to tell the ways of spending a budget apart
    fabric-noisy    held-out  over SearchSpace.default() (8 floats + max_references 1..8): minus a
                              smooth bump exp(-q(u - c)) in unit coordinates, three parameters
                              dominant, the optimum on two bounds; noise sd 0.3, i.e. 30 % of the
                              range; f* = -1

Samplers: the registry's ``botorch``, ``gp`` (Optuna's GPSampler, its default of 10 random
startup trials), ``tpe``, ``random``; ``gp-matched``: GPSampler starting from exactly our Sobol
design (:class:`optimize.samplers.design.SobolDesignSampler`, as many startup trials as
``botorch``); ``botorch-full``: ``botorch`` without its cost savings (hyperparameters fitted at
every ask, 8 restarts, 200 L-BFGS iterations), to show what the savings cost in regret;
``botorch-refit`` undoes only the first saving (hyperparameters fitted at every ask) and
``botorch-wide`` only the second (8 restarts, 200 iterations), to tell which one costs;
``botorch-warm`` fits hyperparameters at every ask, each fit starting from the previous one's.

Ask cost: CPU time (``time.process_time``, not wall time: the machine is shared) of each
model-based ask, from the sampler's own record for ``botorch`` and the gap between trials for
the others.

**Noise experiment** (``--experiment noise``): ``botorch`` on one budget of 40 evaluations
spent four ways: 40 trials; 34 trials and the top 3 by posterior mean re-evaluated twice on
fresh noise (``recommend(extra_seeds=2, top_k=3)``); 20 trials of 2 "prompts" each (noise sd
divided by sqrt 2); 10 trials of 4 (sd / 2).

**Real task** (``--task STUDY``): each sampler runs the study (its config; ``--set`` overrides)
for each seed (the study seed: image seeds, simulated user and sampler), then the recommendation
after the first ``t`` trials (``--checkpoints``) is replayed on the held-out prompts and compared
with the paper's and the A1111 defaults, paired per prompt (what ``fabric-opt report`` prints).
One JSON file per (sampler, seed) under ``--runs-dir``; finished runs are skipped on a rerun.

Usage::

    python -m bench.samplers --seeds 10 --trials 40 --workers 2 --out runs/bench_samplers.json
    python -m bench.samplers --experiment noise --problems fabric-noisy hartmann6 --seeds 10
    python -m bench.samplers --task toy --seeds 5 --trials 40 --checkpoints 20 40 \\
        --samplers botorch gp gp-matched tpe random --out runs/bench_samplers_toy.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from bench.results import write_json

logger = logging.getLogger(__name__)

__all__ = ["PROBLEMS", "Problem", "make_bench_sampler", "run_one", "run_task", "summarize", "main"]

# ---- test functions (minimised) -------------------------------------------------------------

_H6_A = np.array(
    [[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14], [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]]
)
_H6_P = 1e-4 * np.array(
    [
        [1312, 1696, 5569, 124, 8283, 5886],
        [2329, 4135, 8307, 3736, 1004, 9991],
        [2348, 1451, 3522, 2883, 3047, 6650],
        [4047, 8828, 8732, 5743, 1091, 381],
    ]
)
_H6_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])


def branin(x: np.ndarray) -> float:
    x1, x2 = x
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return float((x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10)


def hartmann6(x: np.ndarray) -> float:
    inner = (_H6_A * (np.asarray(x)[None, :] - _H6_P) ** 2).sum(axis=1)
    return float(-(_H6_ALPHA * np.exp(-inner)).sum())


def styblinski_tang(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=float)
    return float(0.5 * (x**4 - 16 * x**2 + 5 * x).sum())


def levy(x: np.ndarray) -> float:
    w = 1 + (np.asarray(x, dtype=float) - 1) / 4
    head = math.sin(math.pi * w[0]) ** 2
    body = ((w[:-1] - 1) ** 2 * (1 + 10 * np.sin(math.pi * w[:-1] + 1) ** 2)).sum()
    tail = (w[-1] - 1) ** 2 * (1 + math.sin(2 * math.pi * w[-1]) ** 2)
    return float(head + body + tail)


def rosenbrock(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=float)
    return float((100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum())


# Computed by h6i_optimum() (about a minute on 2 cores); `--check-optimum` recomputes it.
H6I_OPTIMUM = -3.269546604915493
# 5 x the minimum of 0.5 (x^4 - 16 x^2 + 5 x), at x = -2.9035340286 (scipy, xatol 1e-12).
ST5_OPTIMUM = -195.83082851885706


@cache
def h6i_optimum() -> float:
    """Exhaustive search over the 121 integer settings, L-BFGS-B on the four floats."""
    from scipy.optimize import minimize

    best = math.inf
    starts = np.vstack([_H6_P[:, :4], [[0.20169, 0.150011, 0.476874, 0.275332]]])
    for k5 in range(11):
        for k6 in range(11):
            tail = np.array([k5 / 10, k6 / 10])
            for x0 in starts:
                res = minimize(
                    lambda c: hartmann6(np.concatenate([c, tail])), x0, bounds=[(0, 1)] * 4, method="L-BFGS-B"
                )
                best = min(best, float(res.fun))
    return best


# ---- problems ---------------------------------------------------------------------------------


def _floats(names: Sequence[str], low: float, high: float) -> dict:
    from optuna.distributions import FloatDistribution

    return {n: FloatDistribution(low, high) for n in names}


def _ints(names: Sequence[str], low: int, high: int) -> dict:
    from optuna.distributions import IntDistribution

    return {n: IntDistribution(low, high) for n in names}


_LEVY_SHIFT = {"a": (0.0, 0.0), "b": (2.0, 0.5), "c": (-3.0, 1.0)}  # choice -> (optimum shift, offset)

# fabric-noisy: the bump's centre and curvature in unit coordinates of SearchSpace.default().
_FABRIC_CENTRE = {
    "feedback_start": 0.1,
    "feedback_span": 0.9,
    "max_weight": 0.95,
    "min_weight_ratio": 0.8,
    "neg_scale": 0.5,
    "pos_bottleneck_scale": 0.85,
    "neg_bottleneck_scale": 0.4,
    "max_references": 5 / 7,  # 6 references
    "prompt_dropout": 1.0,  # the upper bound, 0.5
}
_FABRIC_CURVATURE = {
    "max_weight": 6.0,
    "feedback_span": 4.0,
    "feedback_start": 3.0,
    "prompt_dropout": 2.0,
    "max_references": 1.5,
    "min_weight_ratio": 0.5,
    "neg_scale": 0.5,
    "pos_bottleneck_scale": 0.5,
    "neg_bottleneck_scale": 0.5,
}


def _fabric_space():
    from optimize.space import SearchSpace

    return SearchSpace.default()


def _fabric_value(params: Mapping[str, Any]) -> float:
    space = _fabric_space()
    u = space.to_unit(dict(params))[0].tolist()
    d = {name: u[i] - _FABRIC_CENTRE[name] for i, name in enumerate(space.names)}
    q = sum(_FABRIC_CURVATURE[n] * d[n] ** 2 for n in d) + 2.0 * d["max_weight"] * d["feedback_span"]
    return -math.exp(-q)


@dataclass(frozen=True)
class Problem:
    """A benchmark problem: what a trial suggests, its noiseless value (minimised), and failures.

    Attributes:
        name: the problem's name.
        group: ``"development"`` (used while designing the samplers) or ``"held-out"``.
        distributions: ``() -> {name: optuna distribution}``, the search space.
        value: noiseless value of a parameter mapping.
        optimum: the minimum of ``value``.
        noise_sd: standard deviation of the Gaussian observation noise.
        fails: parameters whose trial always fails (a failing region), or ``None``.
        nan_rate: probability that a trial fails at random (seeded per seed and trial).
    """

    name: str
    group: str
    distributions: Callable[[], dict]
    value: Callable[[Mapping[str, Any]], float]
    optimum: float
    noise_sd: float
    fails: Callable[[Mapping[str, Any]], bool] | None = None
    nan_rate: float = 0.0


def _vec(params: Mapping[str, Any], names: Sequence[str], scale: float = 1.0) -> np.ndarray:
    return np.array([params[n] * scale for n in names], dtype=float)


PROBLEMS: dict[str, Problem] = {
    p.name: p
    for p in (
        Problem(
            "branin",
            "development",
            lambda: {**_floats(["x1"], -5.0, 10.0), **_floats(["x2"], 0.0, 15.0)},
            lambda p: branin(_vec(p, ["x1", "x2"])),
            0.397887357729739,
            0.5,
        ),
        Problem(
            "hartmann6",
            "development",
            lambda: _floats([f"x{i}" for i in range(1, 7)], 0.0, 1.0),
            lambda p: hartmann6(_vec(p, [f"x{i}" for i in range(1, 7)])),
            -3.322368011391339,
            0.1,
        ),
        Problem(
            "hartmann6i",
            "development",
            lambda: {**_floats([f"x{i}" for i in range(1, 5)], 0.0, 1.0), **_ints(["k5", "k6"], 0, 10)},
            lambda p: hartmann6(np.concatenate([_vec(p, [f"x{i}" for i in range(1, 5)]), _vec(p, ["k5", "k6"], 0.1)])),
            H6I_OPTIMUM,
            0.1,
        ),
        Problem(
            "hartmann6-noisy",
            "noise study",
            lambda: _floats([f"x{i}" for i in range(1, 7)], 0.0, 1.0),
            lambda p: hartmann6(_vec(p, [f"x{i}" for i in range(1, 7)])),
            -3.322368011391339,
            0.5,
        ),
        Problem(
            "styblinski5",
            "held-out",
            lambda: _floats([f"x{i}" for i in range(1, 6)], -5.0, 5.0),
            lambda p: styblinski_tang(_vec(p, [f"x{i}" for i in range(1, 6)])),
            ST5_OPTIMUM,
            10.0,
        ),
        Problem(
            "levy-mixed",
            "held-out",
            lambda: {
                **_floats(["x1", "x2", "x3"], -10.0, 10.0),
                **_ints(["k4", "k5"], -10, 10),
                "c": __import__("optuna").distributions.CategoricalDistribution(("a", "b", "c")),
            },
            lambda p: levy(_vec(p, ["x1", "x2", "x3", "k4", "k5"]) - _LEVY_SHIFT[p["c"]][0]) + _LEVY_SHIFT[p["c"]][1],
            0.0,
            1.0,
        ),
        Problem(
            "rosenbrock-fail",
            "held-out",
            lambda: _floats([f"x{i}" for i in range(1, 5)], -2.0, 2.0),
            lambda p: math.log1p(rosenbrock(_vec(p, [f"x{i}" for i in range(1, 5)]))),
            0.0,
            0.2,
            fails=lambda p: p["x1"] + p["x2"] > 2.3,
            nan_rate=0.1,
        ),
        Problem(
            "fabric-noisy",
            "held-out",
            lambda: _fabric_space().distributions(),
            _fabric_value,
            -1.0,
            0.3,
        ),
    )
}

SAMPLERS = (
    "botorch",
    "gp",
    "gp-matched",
    "tpe",
    "random",
    "botorch-full",
    "botorch-refit",
    "botorch-wide",
    "botorch-warm",
)

# The two cost savings of ``botorch`` (module docs), each undone alone or both together.
_BOTORCH_VARIANTS: dict[str, dict[str, Any]] = {
    "botorch-full": {"reuse_hyperparameters": False, "num_restarts": 8, "maxiter": 200},
    "botorch-refit": {"reuse_hyperparameters": False},
    "botorch-wide": {"num_restarts": 8, "maxiter": 200},
    "botorch-warm": {"reuse_hyperparameters": False, "warm_start": True},
}
CHECKPOINTS = (20, 40)


def _seed_of(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest(), "little")


def make_bench_sampler(name: str, seed: int, distributions: Mapping[str, Any], **options: Any):
    """A sampler of :data:`SAMPLERS` (module docs) over ``distributions``, seeded."""
    import optuna

    from optimize.samplers import make_sampler
    from optimize.samplers.botorch import default_startup_trials

    if name == "botorch":
        return make_sampler("botorch", seed=seed, search_space=dict(distributions), **options)
    if name in _BOTORCH_VARIANTS:
        variant = {**_BOTORCH_VARIANTS[name], **options}
        return make_sampler("botorch", seed=seed, search_space=dict(distributions), **variant)
    if name == "gp-matched":
        from optimize.samplers.design import SobolDesignSampler

        n_startup = options.pop("n_startup_trials", default_startup_trials(len(distributions)))
        return optuna.samplers.GPSampler(
            seed=seed,
            n_startup_trials=n_startup,
            independent_sampler=SobolDesignSampler(distributions, seed),
            **options,
        )
    return make_sampler(name, seed=seed, **options)


class _Failed(Exception):
    """A benchmark trial in a failing region or drawn to fail at random."""


def _suggest(trial, distributions: Mapping[str, Any]) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    out = {}
    for name, d in distributions.items():
        if isinstance(d, CategoricalDistribution):
            out[name] = trial.suggest_categorical(name, d.choices)
        elif isinstance(d, FloatDistribution):
            out[name] = trial.suggest_float(name, d.low, d.high, log=d.log, step=d.step)
        else:
            out[name] = trial.suggest_int(name, d.low, d.high, log=d.log, step=d.step)
    return out


def run_one(
    problem: str,
    sampler: str,
    seed: int,
    n_trials: int,
    options: dict | None = None,
    *,
    noise_scale: float = 1.0,
    reevaluate: tuple[int, int] | None = None,
) -> dict:
    """One study of ``n_trials`` trials of ``problem`` with ``sampler``.

    Args:
        problem, sampler, seed, n_trials: what to run.
        options: sampler options.
        noise_scale: multiplies the problem's noise sd (``1/sqrt(k)``: ``k`` prompts per trial).
        reevaluate: ``(top_k, extra)``: after the trials, re-evaluate the ``top_k`` complete
            trials by posterior mean ``extra`` times each on fresh noise (noise experiment).

    Returns:
        ``{"trials": [{"state", "observed", "true", "cpu_s", "kind", "params"}], ...}`` plus
        the re-evaluations.
    """
    import warnings

    import optuna
    import torch

    from optimize.samplers.botorch import ASK_ATTR

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    prob = PROBLEMS[problem]
    distributions = prob.distributions()
    records: dict[int, dict] = {}
    clock = {"last": time.process_time()}

    def noise(number: int, replicate: int = 0) -> float:
        sd = prob.noise_sd * noise_scale
        return float(np.random.default_rng(_seed_of(problem, seed, number, replicate)).normal(0.0, sd))

    def objective(trial) -> float:
        params = _suggest(trial, distributions)
        start = time.process_time()
        overhead = start - clock["last"]
        true = prob.value(params)
        rec = {"params": params, "true": true, "cpu_s": overhead, "cause": None}
        records[trial.number] = rec
        try:
            if prob.fails is not None and prob.fails(params):
                rec["cause"] = "region"
                raise _Failed("failing region")
            if prob.nan_rate and np.random.default_rng(_seed_of(problem, seed, trial.number, "nan")).random() < (
                prob.nan_rate
            ):
                rec["cause"] = "random"
                raise _Failed("random failure")
            return true + noise(trial.number)
        finally:
            clock["last"] = time.process_time()

    study = optuna.create_study(
        direction="minimize", sampler=make_bench_sampler(sampler, seed, distributions, **(options or {}))
    )
    clock["last"] = time.process_time()
    study.optimize(objective, n_trials=n_trials, catch=(_Failed,))
    trials: list[dict[str, Any]] = []
    for t in study.trials:
        rec = records.get(t.number, {})
        ask = t.system_attrs.get(ASK_ATTR) or {}
        trials.append(
            {
                "state": t.state.name,
                "observed": t.value if t.state.name == "COMPLETE" else None,
                "true": rec.get("true"),
                "cause": rec.get("cause"),
                "cpu_s": ask.get("cpu_s", rec.get("cpu_s")),
                "kind": ask.get("kind"),
                "params": rec.get("params"),
            }
        )
    run: dict[str, Any] = {
        "problem": problem,
        "sampler": sampler,
        "seed": seed,
        "noise_scale": noise_scale,
        "trials": trials,
    }
    run["regret"] = {
        rule: {str(t): regret(run, t, rule) for t in sorted({*CHECKPOINTS, n_trials}) if t <= n_trials}
        for rule in ("recommended", "observed")
    }
    if reevaluate is not None:
        top_k, extra = reevaluate
        ranked = _ranked(trials, distributions, seed)
        run["reevaluated"] = [
            {"index": i, "values": [trials[i]["true"] + noise(i, r) for r in range(1, extra + 1)]}
            for i in ranked[:top_k]
        ]
    return run


def _ranked(trials: Sequence[dict], distributions: Mapping[str, Any], seed: int) -> list[int]:
    """Indices of the complete trials, best GP posterior mean first (best observed if no GP)."""
    from optimize.recommend import posterior_at_points
    from optimize.samplers.botorch import is_model_failure

    done = [i for i, t in enumerate(trials) if t["state"] == "COMPLETE"]
    if not done:
        return []
    score = {i: trials[i]["observed"] for i in done}
    try:
        fitted = posterior_at_points(
            distributions, [trials[i]["params"] for i in done], [trials[i]["observed"] for i in done], seed=seed
        )
    except Exception as exc:  # noqa: BLE001 - model failures only
        if not is_model_failure(exc):
            raise
        fitted = None
    if fitted is not None:
        score = dict(zip(done, fitted[0]))
    return sorted(done, key=lambda i: score[i])


def regret(run: dict, t: int, rule: str = "recommended") -> float:
    """Noiseless regret of the incumbent after the first ``t`` trials (``inf`` if none completed)."""
    prob = PROBLEMS[run["problem"]]
    trials = run["trials"][:t]
    done = [i for i, x in enumerate(trials) if x["state"] == "COMPLETE"]
    if not done:
        return math.inf
    if rule == "observed":
        best = min(done, key=lambda i: trials[i]["observed"])
    elif rule == "recommended":
        best = _ranked(trials, prob.distributions(), run["seed"])[0]
    elif rule == "reevaluated":  # recommend(extra_seeds=...): best mean over all evaluations of the top k
        means = {i: trials[i]["observed"] for i in done}
        for r in run.get("reevaluated", []):
            i = r["index"]
            means[i] = (trials[i]["observed"] + sum(r["values"])) / (1 + len(r["values"]))
        top = [r["index"] for r in run.get("reevaluated", [])] or done
        best = min(top, key=lambda i: means[i])
    else:
        raise ValueError(rule)
    return trials[best]["true"] - prob.optimum


def _model_ask_costs(run: dict) -> list[float]:
    """CPU seconds of the model-based asks (after the startup trials) of a run."""
    from optimize.samplers.botorch import default_startup_trials

    if run["sampler"].startswith("botorch"):
        return [t["cpu_s"] for t in run["trials"] if t["kind"] == "gp"]
    dim = len(PROBLEMS[run["problem"]].distributions())
    n_startup = default_startup_trials(dim) if run["sampler"] == "gp-matched" else 10  # Optuna's GP and TPE: 10
    return [t["cpu_s"] for t in run["trials"][n_startup:] if t["cpu_s"] is not None]


def summarize(runs: list[dict], checkpoints: Sequence[int], reference: str = "gp-matched") -> dict:
    """Per problem and sampler: regret median/IQR per checkpoint and rule, paired wins, costs."""
    out: dict = {}
    for problem in sorted({r["problem"] for r in runs}, key=list(PROBLEMS).index):
        prob = PROBLEMS[problem]
        by_sampler: dict[str, list[dict]] = {}
        for r in runs:
            if r["problem"] == problem:
                by_sampler.setdefault(r["sampler"], []).append(r)
        ref = {r["seed"]: r for r in by_sampler.get(reference, [])}
        rows = {}
        for sampler, group in by_sampler.items():
            group = sorted(group, key=lambda r: r["seed"])
            row: dict[str, Any] = {"n_seeds": len(group), "group": prob.group}
            costs = [c for r in group for c in _model_ask_costs(r)]
            row["ask_cpu_median_s"] = float(np.median(costs)) if costs else None
            row["fails_median"] = float(np.median([sum(t["state"] == "FAIL" for t in r["trials"]) for r in group]))
            row["region_fails_median"] = float(
                np.median([sum(t["cause"] == "region" for t in r["trials"]) for r in group])
            )
            for t in checkpoints:
                for rule in ("recommended", "observed"):
                    regrets = [r["regret"][rule][str(t)] for r in group]
                    q1, med, q3 = np.percentile(regrets, [25, 50, 75])
                    cell = {"median": float(med), "q1": float(q1), "q3": float(q3), "per_seed": regrets}
                    if ref and sampler != reference:
                        pairs = [
                            (r["regret"][rule][str(t)], ref[r["seed"]]["regret"][rule][str(t)])
                            for r in group
                            if r["seed"] in ref
                        ]
                        cell["wins_vs_ref"] = sum(a < b for a, b in pairs)
                        cell["ties_vs_ref"] = sum(a == b for a, b in pairs)
                        cell["pairs"] = len(pairs)
                    row[f"{rule}@{t}"] = cell
            rows[sampler] = row
        out[problem] = rows
    return out


def markdown(summary: dict, checkpoints: Sequence[int], reference: str = "gp-matched") -> str:
    """The summary as a Markdown table (headline rule first)."""
    head = ["problem", "sampler"]
    for rule in ("recommended", "observed"):
        head += [f"{rule} @{t} median [IQR]" for t in checkpoints]
    head += [f"wins vs {reference} @{checkpoints[-1]} (rec.)", "fails (region)", "ask CPU"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = [s for s in SAMPLERS]
    for problem, rows in summary.items():
        for sampler in sorted(rows, key=lambda s: order.index(s) if s in order else 99):
            row = rows[sampler]
            cells = [
                problem + {"held-out": "", "development": " (dev)"}.get(row["group"], f" ({row['group']})"),
                sampler,
            ]
            for rule in ("recommended", "observed"):
                for t in checkpoints:
                    c = row[f"{rule}@{t}"]
                    cells.append(f"{c['median']:.3g} [{c['q1']:.3g}, {c['q3']:.3g}]")
            last = row[f"recommended@{checkpoints[-1]}"]
            cells.append(f"{last['wins_vs_ref']}/{last['pairs']}" if "wins_vs_ref" in last else "-")
            cells.append(f"{row['fails_median']:.0f} ({row['region_fails_median']:.0f})")
            cost = row["ask_cpu_median_s"]
            cells.append(f"{1000 * cost:.0f} ms" if cost is not None else "-")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- the noise experiment ---------------------------------------------------------------------

NOISE_ARMS = {
    # arm -> (trials, noise scale, re-evaluation (top_k, extra) or None); 40 evaluations each
    "40 trials": (40, 1.0, None),
    "34 trials + top-3 x 2 re-evaluated": (34, 1.0, (3, 2)),
    "20 trials x 2 prompts": (20, 1 / math.sqrt(2), None),
    "10 trials x 4 prompts": (10, 0.5, None),
}


def run_noise_arm(problem: str, arm: str, seed: int) -> dict:
    trials, scale, reeval = NOISE_ARMS[arm]
    run = run_one(problem, "botorch", seed, trials, noise_scale=scale, reevaluate=reeval)
    run["arm"] = arm
    rule = "reevaluated" if reeval else "recommended"
    run["regret"] = regret(run, trials, rule)
    run["regret_observed"] = regret(run, trials, "observed")
    return run


def noise_markdown(runs: list[dict]) -> str:
    lines = [
        "| problem | budget of 40 evaluations | regret median [IQR] | better than '40 trials' (seeds) |",
        "|---|---|---|---|",
    ]
    for problem in sorted({r["problem"] for r in runs}):
        base = {r["seed"]: r["regret"] for r in runs if r["problem"] == problem and r["arm"] == "40 trials"}
        for arm in NOISE_ARMS:
            group = [r for r in runs if r["problem"] == problem and r["arm"] == arm]
            if not group:
                continue
            q1, med, q3 = np.percentile([r["regret"] for r in group], [25, 50, 75])
            wins = sum(r["regret"] < base[r["seed"]] for r in group if r["seed"] in base)
            lines.append(f"| {problem} | {arm} | {med:.3g} [{q1:.3g}, {q3:.3g}] | {wins}/{len(group)} |")
    return "\n".join(lines)


# ---- ask cost -----------------------------------------------------------------------------------


def ask_cost(sampler: str, seed: int, n_trials: int = 40) -> dict:
    """CPU seconds of every ask of ``sampler`` on ``fabric-noisy`` (9-D, SearchSpace.default()).

    Uses only ``make_sampler`` and ``SearchSpace``, so this function also runs on older versions
    of the code (copy this file into a checkout of an earlier commit): how "before" was measured.
    """
    import warnings

    import optuna
    import torch

    from optimize.samplers import make_sampler

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore")
    space = _fabric_space()
    options = {"search_space": space.distributions()} if sampler.startswith("botorch") else {}
    obj = make_sampler(sampler, seed=seed, **options)
    inner = obj.sample_relative
    asks: list[tuple[int, float]] = []

    def timed(study, trial, search_space):
        complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        start = time.process_time()
        out = inner(study, trial, search_space)
        asks.append((complete, time.process_time() - start))
        return out

    obj.sample_relative = timed  # type: ignore[method-assign]  # timing every ask
    study = optuna.create_study(sampler=obj)

    def objective(trial) -> float:
        params = space.suggest(trial)
        noise = np.random.default_rng(_seed_of("fabric-noisy", seed, trial.number, 0)).normal(0.0, 0.3)
        return _fabric_value(params) + float(noise)

    study.optimize(objective, n_trials=n_trials)
    return {"sampler": sampler, "seed": seed, "asks": asks}


def ask_cost_markdown(results: list[dict], n_startup: int) -> str:
    lines = [
        "| sampler | median CPU per model-based ask | mean | median, asks at 20-29 trials | at 30-39 trials | max |",
        "|---|---|---|---|---|---|",
    ]
    for sampler in dict.fromkeys(r["sampler"] for r in results):
        asks = [(n, c) for r in results if r["sampler"] == sampler for n, c in r["asks"] if n >= n_startup]
        if not asks:
            continue

        def med(lo: int, hi: int) -> str:
            sel = [c for n, c in asks if lo <= n < hi]
            return f"{np.median(sel):.3f} s" if sel else "-"

        lines.append(
            f"| {sampler} | {np.median([c for _, c in asks]):.3f} s | {np.mean([c for _, c in asks]):.3f} s | "
            f"{med(20, 30)} | {med(30, 40)} | "
            f"{max(c for _, c in asks):.3f} s |"
        )
    return "\n".join(lines)


# ---- the real task: a study per sampler and seed ----------------------------------------------


def _nested(assignments: Sequence[str]) -> dict:
    """``["protocol.steps=4", "prompts.train={\\"file\\": \\"toy\\", \\"limit\\": 1}"]`` -> nested overrides."""
    out: dict = {}
    for item in assignments:
        key, _, raw = item.partition("=")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def run_task(
    study: str,
    samplers: Sequence[str],
    seeds: Sequence[int],
    trials: int,
    checkpoints: Sequence[int],
    runs_dir: Path,
    overrides: Mapping[str, Any] | None = None,
    references: Sequence[str] = ("paper", "a1111"),
) -> list[dict]:
    """Run ``study`` once per sampler and seed, then replay each recommendation on held-out prompts.

    The models are loaded once. Each (sampler, seed) writes ``runs_dir/<study>-<sampler>-s<seed>.json``
    (skipped when present) with, per checkpoint ``t``, the recommendation after the first ``t``
    finished trials and its held-out comparison with each reference (mean of the per-prompt
    differences, bootstrap CI).
    """
    import optuna
    import torch

    from optimize.config import load_study_config
    from optimize.recommend import recommend
    from optimize.samplers.botorch import ASK_ATTR
    from optimize.study import load_components, make_evaluator, run_study

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    runs_dir.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    components = None
    # one evaluator per seed: it remembers its runs, so each reference is replayed once per seed
    evaluators: dict[int, Any] = {}
    for seed in seeds:
        for sampler in samplers:
            out = runs_dir / f"{study}-{sampler}-s{seed}.json"
            if out.is_file():
                results.append(json.loads(out.read_text()))
                logger.info("%s exists: skipped", out)
                continue
            config = load_study_config(study, overrides={**(overrides or {}), "trials": trials, "seed": seed})
            if components is None:
                components = load_components(config)
            sampler_obj = make_bench_sampler(
                sampler, seed, config.space.distributions(), **_task_options(config, sampler)
            )
            name = f"{study}-{sampler}-s{seed}"
            cpu, wall = time.process_time(), time.perf_counter()
            outcome = run_study(
                config,
                name=name,
                storage=str(runs_dir / f"{name}.journal"),
                runs_dir=runs_dir,
                components=components,
                export=False,
                sampler=sampler_obj,
            )
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            if seed not in evaluators:
                evaluators[seed] = make_evaluator(outcome.config, components)
            evaluator = evaluators[seed]
            finished = sorted((t for t in outcome.study.trials if t.state.is_finished()), key=lambda t: t.number)
            record: dict[str, Any] = {
                "study": study,
                "sampler": sampler,
                "seed": seed,
                "trials": [
                    {
                        "number": t.number,
                        "state": t.state.name,
                        "value": t.value if t.state.name == "COMPLETE" else None,
                        "kind": (t.system_attrs.get(ASK_ATTR) or {}).get("kind"),
                    }
                    for t in finished
                ],
                "cpu_s": cpu,
                "wall_s": wall,
                "checkpoints": {},
            }
            for t in checkpoints:
                sub = optuna.create_study(directions=outcome.study.directions)
                sub.add_trials(finished[:t])
                try:
                    rec = recommend(
                        sub, outcome.config.space, evaluator=evaluator,
                        references=list(references),
                        split="validation", seed=seed,
                    )  # fmt: skip
                except Exception as exc:  # noqa: BLE001 - recorded, the benchmark goes on
                    record["checkpoints"][str(t)] = {"error": f"{type(exc).__name__}: {exc}"}
                    continue
                record["checkpoints"][str(t)] = {
                    "trial": rec.best.trial_number,
                    "estimate": rec.best.estimate,
                    "params": rec.params.to_dict(),
                    "heldout": {
                        c.reference: {"mean": c.mean_difference, "ci": [c.ci_low, c.ci_high]} for c in rec.comparisons
                    },
                }
            write_json(out, record)
            results.append(record)
            logger.info("%s: %s", name, {t: c.get("heldout", c) for t, c in record["checkpoints"].items()})
    return results


def _task_options(config: Any, sampler: str) -> dict:
    """Sampler options for the real task: ``botorch`` keeps the study's own options; ``gp-matched``
    gets the same number of startup trials."""
    options = dict(config.sampler_options) if config.sampler == "botorch" else {}
    if sampler == "botorch" or sampler in _BOTORCH_VARIANTS:
        return {k: v for k, v in options.items() if k != "search_space"}
    if sampler == "gp-matched" and "n_startup_trials" in options:
        return {"n_startup_trials": options["n_startup_trials"]}
    return {}


def _task_gains(results: list[dict], sampler: str, checkpoint: int, reference: str) -> dict[int, float]:
    """``seed -> held-out gain over reference`` of ``sampler``'s recommendation after ``checkpoint`` trials."""
    gains = {}
    for r in results:
        if r["sampler"] == sampler:
            mean = r.get("checkpoints", {}).get(str(checkpoint), {}).get("heldout", {}).get(reference, {}).get("mean")
            if mean is not None:
                gains[r["seed"]] = mean
    return gains


def _sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test of ``wins`` against ``losses`` (ties left out), p under 50:50."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def task_ranking(results: list[dict], checkpoints: Sequence[int], reference: str = "paper") -> list[str]:
    """Samplers from best to worst on the real task, by issue #16's rule as fixed before the runs:
    the median held-out gain over seeds after the last checkpoint (the budget a study runs),
    medians equal to three decimals tied; ties broken by the median after the first checkpoint, then by
    the mean over all checkpoints and seeds."""
    first, last = checkpoints[0], checkpoints[-1]

    def key(sampler: str) -> tuple[float, float, float]:
        at = {t: list(_task_gains(results, sampler, t, reference).values()) for t in checkpoints}
        every = [g for t in checkpoints for g in at[t]]
        if not at[last]:
            return (-math.inf, -math.inf, -math.inf)
        return (
            round(float(np.median(at[last])), 3),
            float(np.median(at[first])) if at[first] else -math.inf,
            float(np.mean(every)),
        )

    samplers = sorted(
        {r["sampler"] for r in results}, key=lambda s: SAMPLERS.index(s) if s in SAMPLERS else len(SAMPLERS)
    )
    return sorted(samplers, key=key, reverse=True)


def task_markdown(results: list[dict], checkpoints: Sequence[int], reference: str = "paper") -> str:
    """Held-out gain over ``reference`` per sampler and checkpoint: median over seeds, and per seed."""
    seeds = sorted({r["seed"] for r in results})
    lines = [
        f"| sampler | checkpoint | held-out gain vs {reference}, median | per seed ({', '.join(map(str, seeds))}) |",
        "|---|---|---|---|",
    ]
    for sampler in [s for s in SAMPLERS if any(r["sampler"] == s for r in results)]:
        for t in checkpoints:
            gains = _task_gains(results, sampler, t, reference)
            per_seed = [gains.get(seed) for seed in seeds]
            known = list(gains.values())
            med = f"{np.median(known):+.3f}" if known else "n/a"
            lines.append(
                f"| {sampler} | {t} | {med} | "
                + ", ".join("n/a" if v is None else f"{v:+.3f}" for v in per_seed)
                + " |"
            )
    ranking = task_ranking(results, checkpoints, reference)
    lines += [
        "",
        f"Ranking (median gain after {checkpoints[-1]} trials, ties by {checkpoints[0]}): " + " > ".join(ranking),
    ]
    # paired per seed against our sampler (the default until issue #16's rule chose by this table)
    base = "botorch"
    for t in checkpoints:
        ours = _task_gains(results, base, t, reference)
        cells = []
        for sampler in ranking:
            if sampler == base:
                continue
            theirs = _task_gains(results, sampler, t, reference)
            seeds_both = sorted(set(ours) & set(theirs))
            diffs = [theirs[s] - ours[s] for s in seeds_both]
            ahead = sum(d > 0 for d in diffs)
            behind = sum(d < 0 for d in diffs)
            cells.append(f"{sampler} ahead on {ahead}/{len(diffs)} (sign test p = {_sign_test(ahead, behind):.2g})")
        lines.append(f"After {t} trials, paired per seed against {base}: " + "; ".join(cells))
    return "\n".join(lines)


# ---- command line -----------------------------------------------------------------------------


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "?")
    except OSError:
        model = platform.processor() or "?"
    return f"{model}, {os.cpu_count()} cores"


def _parse_options(items: Sequence[str]) -> dict[str, dict]:
    options: dict[str, dict] = {}
    for item in items:
        key, _, value = item.partition("=")
        name, _, option = key.partition(".")
        options.setdefault(name, {})[option] = json.loads(value)
    return options


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.samplers", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--problems",
        nargs="+",
        default=[p for p in PROBLEMS if PROBLEMS[p].group != "noise study"],
        choices=list(PROBLEMS),
    )
    parser.add_argument("--samplers", nargs="+", default=["botorch", "gp", "gp-matched", "tpe", "random"])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--checkpoints", type=int, nargs="+", default=None, help="default: 20 40 (up to --trials)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_samplers.json"))
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="SAMPLER.KEY=VALUE",
        help="sampler option, e.g. botorch.n_startup_trials=5 (value parsed as JSON)",
    )
    parser.add_argument("--experiment", choices=("samplers", "noise", "ask-cost"), default="samplers")
    parser.add_argument("--task", default=None, metavar="STUDY", help="the real task: run this study per sampler")
    parser.add_argument("--runs-dir", type=Path, default=None, help="--task: where studies and per-run JSON go")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="--task: study override, e.g. protocol.steps=4"
    )
    parser.add_argument("--check-optimum", action="store_true", help="recompute the optimum of hartmann6i and exit")
    parser.add_argument(
        "--merge", nargs="+", type=Path, default=None, metavar="JSON", help="summarise the runs of earlier --out files"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.check_optimum:
        logger.info("hartmann6i optimum: computed %.12f, stored %.12f", h6i_optimum(), H6I_OPTIMUM)
        return
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    checkpoints = tuple(args.checkpoints or [t for t in CHECKPOINTS if t <= args.trials])
    start = time.perf_counter()
    meta: dict[str, Any] = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "args": vars(args) | {"out": str(args.out)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)

    if args.task is not None:
        runs_dir = args.runs_dir or args.out.with_suffix("")
        results = run_task(args.task, args.samplers, seeds, args.trials, checkpoints, runs_dir, _nested(args.set))
        table = task_markdown(results, checkpoints)
        meta["args"]["runs_dir"] = str(runs_dir)
        write_json(args.out, {**meta, "wall_s": time.perf_counter() - start, "results": results})
        print(table)  # noqa: T201 - the report is this script's output
        return

    if args.merge:
        runs = [r for path in args.merge for r in json.loads(path.read_text())["runs"]]
        runs = [r for r in runs if r["problem"] in args.problems and r["sampler"] in args.samplers]
        summary = summarize(runs, checkpoints)
        write_json(args.out, {**meta, "merged": [str(p) for p in args.merge], "summary": summary})
        print(markdown(summary, checkpoints))  # noqa: T201
        return

    options = _parse_options(args.option)
    if args.experiment == "ask-cost":
        jobs: list[tuple[Any, ...]] = [(s, seed, args.trials) for seed in seeds for s in args.samplers]
        results = _pool(ask_cost, jobs, args.workers)
        # Optuna's GPSampler and ours both ask with a model from 10 / 6 complete trials on; count
        # model-based asks from 10 complete trials for every sampler, so the same asks are compared.
        table = ask_cost_markdown(results, n_startup=10)
        write_json(args.out, {**meta, "wall_s": time.perf_counter() - start, "results": results})
        print(table)  # noqa: T201
        return

    if args.experiment == "noise":
        jobs = [(p, arm, s) for p in args.problems for arm in NOISE_ARMS for s in seeds]  # interleaved
        runs = _pool(run_noise_arm, jobs, args.workers)
        table = noise_markdown(runs)
        write_json(args.out, {**meta, "wall_s": time.perf_counter() - start, "runs": runs})
        print(table)  # noqa: T201
        return

    jobs = [
        (p, s, seed, args.trials, options.get(s, {})) for p in args.problems for s in args.samplers for seed in seeds
    ]
    jobs.sort(key=lambda j: not j[1].startswith(("botorch", "gp")))  # the slow ones first
    runs = _pool(run_one, jobs, args.workers)
    summary = summarize(runs, checkpoints)
    write_json(args.out, {**meta, "wall_s": time.perf_counter() - start, "summary": summary, "runs": runs})
    print(markdown(summary, checkpoints))  # noqa: T201
    logger.info("wrote %s in %.0f s on %s", args.out, time.perf_counter() - start, machine())


def _pool(fn: Callable, jobs: list[tuple], workers: int) -> list[dict]:
    runs = []
    if workers <= 1:
        for job in jobs:
            runs.append(fn(*job))
            logger.info("done %s (%d/%d)", job[:3], len(runs), len(jobs))
        return runs
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for job, run in zip(jobs, pool.map(fn, *zip(*jobs))):
            runs.append(run)
            logger.info("done %s (%d/%d)", job[:3], len(runs), len(jobs))
    return runs


if __name__ == "__main__":
    main()
