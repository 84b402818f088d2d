"""Sample efficiency of the registered samplers on standard noisy test functions.

Each (function, sampler, seed) run is an Optuna study of ``--trials`` trials on a function
observed with Gaussian noise. After ``t`` trials the *incumbent* is the trial with the best
**observed** (noisy) value, the point a user of any sampler would pick from the study table;
its simple regret is ``f(incumbent) - f*`` of the **noiseless** function (all functions are
minimised). Reported: median and interquartile range over seeds at 10/20/40 trials, and the
sampler's overhead per trial (wall time of the study minus the function evaluations, which are
negligible here).

Functions:
    branin     2-D, noise sd 0.5, f* = 0.397887
    hartmann6  6-D on [0, 1]^6, noise sd 0.1, f* = -3.32237
    hartmann6i the same with x5, x6 integers k/10, k in 0..10 (4 float + 2 int), noise sd 0.1;
               f* computed by exhaustive integer search plus L-BFGS-B on the continuous part

Usage::

    python -m bench.samplers --seeds 10 --trials 40 --workers 2 --out runs/bench_samplers.json
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
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class TestFunction:
    name: str
    noise_sd: float
    suggest: Callable  # (trial) -> np.ndarray, the point in the function's own coordinates
    f: Callable[[np.ndarray], float]
    optimum: Callable[[], float]


def _suggest_branin(trial) -> np.ndarray:
    return np.array([trial.suggest_float("x1", -5.0, 10.0), trial.suggest_float("x2", 0.0, 15.0)])


def _suggest_h6(trial) -> np.ndarray:
    return np.array([trial.suggest_float(f"x{i}", 0.0, 1.0) for i in range(1, 7)])


def _suggest_h6i(trial) -> np.ndarray:
    cont = [trial.suggest_float(f"x{i}", 0.0, 1.0) for i in range(1, 5)]
    ints = [trial.suggest_int(f"k{i}", 0, 10) / 10 for i in (5, 6)]
    return np.array(cont + ints)


# Computed by h6i_optimum() (about a minute on 2 cores); `--check-optimum` recomputes it.
H6I_OPTIMUM = -3.269546604915493


@cache
def h6i_optimum() -> float:
    """Exhaustive search over the 121 integer settings, L-BFGS-B on the four floats."""
    from scipy.optimize import minimize

    best = math.inf
    # The four basins of Hartmann-6 are centred near the rows of P; start from each.
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


FUNCTIONS = {
    "branin": TestFunction("branin", 0.5, _suggest_branin, branin, lambda: 0.397887357729739),
    "hartmann6": TestFunction("hartmann6", 0.1, _suggest_h6, hartmann6, lambda: -3.322368011391339),
    "hartmann6i": TestFunction("hartmann6i", 0.1, _suggest_h6i, hartmann6, lambda: H6I_OPTIMUM),
}

# Settings per sampler; everything else is the registry's default.
SAMPLER_OPTIONS: dict[str, dict] = {}


def _noise_seed(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest(), "little")


def run_one(function: str, sampler: str, seed: int, n_trials: int, options: dict | None = None) -> dict:
    """One study; returns per-trial noiseless values and the sampler overhead."""
    import optuna
    import torch

    from optimize.samplers import make_sampler

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    fn = FUNCTIONS[function]
    true_values: list[float] = []
    eval_time = 0.0

    def objective(trial) -> float:
        nonlocal eval_time
        x = fn.suggest(trial)
        t0 = time.perf_counter()
        true = fn.f(x)
        noise = np.random.default_rng(_noise_seed(function, seed, trial.number)).normal(0.0, fn.noise_sd)
        true_values.append(true)
        eval_time += time.perf_counter() - t0
        return true + float(noise)

    options = {**SAMPLER_OPTIONS.get(sampler, {}), **(options or {})}
    study = optuna.create_study(sampler=make_sampler(sampler, seed=seed, **options))
    start = time.perf_counter()
    study.optimize(objective, n_trials=n_trials)
    total = time.perf_counter() - start
    observed = [t.value for t in study.trials]
    return {
        "function": function,
        "sampler": sampler,
        "seed": seed,
        "observed": observed,
        "true": true_values,
        "overhead_s": (total - eval_time) / n_trials,
    }


def regret_at(run: dict, t: int, optimum: float) -> float:
    observed = run["observed"][:t]
    best = int(np.argmin(observed))
    return run["true"][best] - optimum


def summarize(runs: list[dict], checkpoints: tuple[int, ...]) -> dict:
    out: dict = {}
    for function in sorted({r["function"] for r in runs}):
        optimum = FUNCTIONS[function].optimum()
        for sampler in sorted({r["sampler"] for r in runs if r["function"] == function}):
            group = [r for r in runs if r["function"] == function and r["sampler"] == sampler]
            row = {"n_seeds": len(group), "overhead_ms": 1000 * float(np.mean([r["overhead_s"] for r in group]))}
            for t in checkpoints:
                if all(len(r["observed"]) >= t for r in group):
                    regrets = np.array([regret_at(r, t, optimum) for r in group])
                    q1, med, q3 = np.percentile(regrets, [25, 50, 75])
                    row[t] = {"median": float(med), "q1": float(q1), "q3": float(q3)}
            out.setdefault(function, {})[sampler] = row
    return out


def markdown(summary: dict, checkpoints: tuple[int, ...]) -> str:
    lines = []
    header = (
        "| function | sampler | " + " | ".join(f"regret @{t} median [IQR]" for t in checkpoints) + " | overhead/trial |"
    )
    lines += [header, "|" + "---|" * (len(checkpoints) + 3)]
    for function, rows in summary.items():
        for sampler, row in rows.items():
            cells = []
            for t in checkpoints:
                c = row.get(t) or row.get(str(t))
                cells.append(f"{c['median']:.3g} [{c['q1']:.3g}, {c['q3']:.3g}]" if c else "n/a")
            lines.append(f"| {function} | {sampler} | " + " | ".join(cells) + f" | {row['overhead_ms']:.0f} ms |")
    return "\n".join(lines)


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "?")
    except OSError:
        model = platform.processor() or "?"
    return f"{model}, {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--functions", nargs="+", default=list(FUNCTIONS), choices=list(FUNCTIONS))
    parser.add_argument("--samplers", nargs="+", default=["botorch", "gp", "tpe", "random"])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_samplers.json"))
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="SAMPLER.KEY=VALUE",
        help="sampler option, e.g. botorch.n_startup_trials=5 (value parsed as JSON)",
    )
    parser.add_argument("--check-optimum", action="store_true", help="recompute the optimum of hartmann6i and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.check_optimum:
        logger.info("hartmann6i optimum: computed %.12f, stored %.12f", h6i_optimum(), H6I_OPTIMUM)
        return

    options: dict[str, dict] = {}
    for item in args.option:
        key, _, value = item.partition("=")
        name, _, option = key.partition(".")
        options.setdefault(name, {})[option] = json.loads(value)
    checkpoints = tuple(t for t in (10, 20, 40) if t <= args.trials)
    jobs = [
        (f, s, seed, args.trials, options.get(s, {}))
        for f in args.functions
        for s in args.samplers
        for seed in range(args.seeds)
    ]
    # The slow samplers first, so the pool does not end on one long job.
    jobs.sort(key=lambda j: j[1] not in ("botorch", "gp"))
    start = time.perf_counter()
    runs = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for run in pool.map(run_one, *zip(*jobs)):
            runs.append(run)
            logger.info(
                "done %s/%s seed %d (%d/%d)", run["function"], run["sampler"], run["seed"], len(runs), len(jobs)
            )
    summary = summarize(runs, checkpoints)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": machine(),
                "wall_s": time.perf_counter() - start,
                "args": vars(args) | {"out": str(args.out)},
                "summary": summary,
                "runs": runs,
            },
            indent=1,
        )
    )
    print(markdown(summary, checkpoints))  # noqa: T201 - the report is this script's output
    logger.info("wrote %s in %.0f s on %s", args.out, time.perf_counter() - start, machine())


if __name__ == "__main__":
    main()
