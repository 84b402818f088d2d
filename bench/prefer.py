"""Does preferential tuning find presets a person prefers? ``python -m bench.prefer``.

A simulated person (:class:`optimize.simulated_person.SimulatedPerson`) with the toy world's
``toy-taste`` (likes warm colours) answers queries through a Bradley-Terry model with noise
(temperature ``--temperature`` on the round's mean taste). Each query: a first round without
feedback on a training prompt (studies/prompts/toy.txt), whose best and worst images become the
references, then one round per option on the same prompt, seeds and references.

Per run ``r`` (``--runs``), two arms share everything but how queries are chosen: the tuner's
seed, the person's seed (so the same query gets the same draw), the first queries (the paper's
defaults against a Sobol point, then Sobol points):

* ``eubo``: later queries maximise the expected utility of the best option (PairwiseGP + EUBO);
* ``random``: later queries are Sobol points (comparisons chosen at random), the same model.

After ``--budget`` answered queries each arm recommends a preset (the best posterior mean among
those shown). On the held-out prompts (studies/prompts/toy-heldout.txt), with seeds fixed per
prompt and the same references, the person compares it with the paper's defaults: per prompt
the probability that they prefer the recommendation, ``sigmoid((u_rec - u_paper) / T)``, and
whether ``u_rec > u_paper``. A run's *preference rate* is that probability averaged over the
held-out prompts (0.5: no better than the paper's defaults).

Reported: each arm's preference rate and win share (mean over runs, 95 % t-interval), and the
paired difference eubo - random per run (mean, 95 % t-interval, runs where eubo is ahead).
Results go to ``--out`` (JSON, rewritten after every run, so an interrupted benchmark keeps its
finished runs and ``--resume`` continues it).

Usage::

    python -m bench.prefer --runs 8 --budget 20 --out runs/bench_prefer.json
    python -m bench.prefer --quick          # 1 run, 3 queries, 2 held-out prompts: a smoke test
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.results import write_json

__all__ = ["BenchConfig", "run_arm", "summarise", "main"]

logger = logging.getLogger(__name__)

ARMS = ("eubo", "random")


@dataclass(frozen=True)
class BenchConfig:
    """What the benchmark runs (defaults: the numbers in docs/BENCHMARKS.md)."""

    runs: int = 8
    budget: int = 20  # answered queries per arm and run
    initial_queries: int = 2  # shared space-filling queries (the first pits the paper's defaults)
    taste: str = "warm"
    temperature: float = 0.05  # Bradley-Terry temperature on the round's mean taste (in [0, 1])
    n_images: int = 4
    steps: int = 10
    guidance_scale: float = 6.0
    heldout: int = 16  # held-out prompts (of studies/prompts/toy-heldout.txt)
    space: str = "default"  # "default": all of FABRIC (9 knobs); "frontend": the 5 knobs frontends share
    rounds: int = 1  # feedback rounds per option; the person judges the last
    threads: int = 1


def _machine() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ci95(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95 % t-interval of ``values``."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def run_arm(cfg: BenchConfig, run: int, arm: str, person: Any, space: Any, heldout: list[dict]) -> dict:
    """One arm of one run: tune, recommend, compare with the paper's defaults on held-out prompts."""
    from fabric.params import FabricParams
    from optimize.preference import PreferenceConfig, PreferenceTuner, run_queries
    from optimize.simulated_person import preference_probability

    person.seed = run
    tuner = PreferenceTuner(
        PreferenceConfig(space=space, acquisition=arm, initial_queries=cfg.initial_queries, seed=run),  # type: ignore[arg-type]
        name=f"bench-{arm}-{run}",
    )
    t0 = time.perf_counter()
    rec = run_queries(tuner, person, cfg.budget, context=person.context)
    tune_s = time.perf_counter() - t0
    paper = space.to_params(space.from_params(FabricParams.paper().replace(steps=cfg.steps), clip=True))
    probabilities, wins, differences = [], [], []
    for context in heldout:
        u_rec, u_paper = person.utilities([rec.params, paper], context)
        probabilities.append(preference_probability([u_rec, u_paper], cfg.temperature)[0])
        wins.append(float(u_rec > u_paper))
        differences.append(u_rec - u_paper)
    n = len(heldout)
    return {
        "run": run,
        "arm": arm,
        "preference_rate": sum(probabilities) / n,
        "win_share": sum(wins) / n,
        "mean_difference": sum(differences) / n,
        "recommended": rec.params.to_dict(),
        "recommended_utility": rec.best.utility,
        "sources": [q.source for q in tuner.queries],
        "answers": [q.winner for q in tuner.queries],
        "tune_seconds": round(tune_s, 1),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def summarise(results: list[dict]) -> dict:
    """Per-arm means with 95 % CIs and the paired difference eubo - random over complete runs."""
    by_run: dict[int, dict[str, dict]] = {}
    for r in results:
        by_run.setdefault(r["run"], {})[r["arm"]] = r
    complete = sorted(run for run, arms in by_run.items() if all(a in arms for a in ARMS))
    out: dict[str, Any] = {"runs": len(complete)}
    if not complete:
        return out
    for arm in ARMS:
        for key in ("preference_rate", "win_share", "mean_difference"):
            mean, lo, hi = _ci95([by_run[r][arm][key] for r in complete])
            out[f"{arm}/{key}"] = {"mean": mean, "ci95": [lo, hi]}
        out[f"{arm}/runs_preferred_over_paper"] = sum(by_run[r][arm]["preference_rate"] > 0.5 for r in complete)
    for key in ("preference_rate", "win_share", "mean_difference"):
        diffs = [by_run[r]["eubo"][key] - by_run[r]["random"][key] for r in complete]
        mean, lo, hi = _ci95(diffs)
        out[f"difference/{key}"] = {
            "mean": mean,
            "ci95": [lo, hi],
            "eubo_ahead": sum(d > 0 for d in diffs),
            "ties": sum(d == 0 for d in diffs),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.prefer", description=__doc__.splitlines()[0])
    defaults = BenchConfig()
    for f in BenchConfig.__dataclass_fields__.values():
        value = getattr(defaults, f.name)
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_prefer.json"))
    parser.add_argument("--resume", action="store_true", help="keep the finished runs in --out and add the rest")
    parser.add_argument("--quick", action="store_true", help="1 run, 3 queries, 2 held-out prompts (smoke test)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    fields = {f: getattr(args, f) for f in BenchConfig.__dataclass_fields__}
    if args.quick:
        fields.update(runs=1, budget=3, heldout=2, n_images=2, steps=4)
    cfg = BenchConfig(**fields)
    os.environ.setdefault("OMP_NUM_THREADS", str(cfg.threads))

    import torch

    torch.set_num_threads(cfg.threads)
    from fabric import FabricGenerator
    from fabric.params import FabricParams
    from objectives.registry import load_objective
    from optimize.preference import frontend_space
    from optimize.prompts import load_prompts
    from optimize.simulated_person import SimulatedPerson
    from optimize.space import SearchSpace

    train = list(load_prompts("toy").prompts)
    heldout_prompts = list(load_prompts("toy-heldout").prompts)[: cfg.heldout]
    base = FabricParams.paper().replace(steps=cfg.steps, guidance_scale=cfg.guidance_scale)
    if cfg.space not in ("default", "frontend"):
        raise SystemExit(f"--space must be default or frontend, got {cfg.space!r}")
    space = SearchSpace.default(base=base) if cfg.space == "default" else frontend_space(base)
    gen = FabricGenerator.from_pretrained("toy", plain_cache_size=64)
    taste = load_objective("toy-taste", taste=cfg.taste)
    person = SimulatedPerson(
        gen, taste, train, base=base, n_images=cfg.n_images, temperature=cfg.temperature, rounds=cfg.rounds, seed=0
    )
    heldout = [person.context_for(p, ("heldout", j)) for j, p in enumerate(heldout_prompts)]

    results: list[dict] = []
    if args.resume and args.out.is_file():
        old = json.loads(args.out.read_text())
        if old.get("config") != asdict(cfg):
            raise SystemExit(f"{args.out} was written with another config; drop --resume or change --out")
        results = old["results"]
    done = {(r["run"], r["arm"]) for r in results}
    started = time.time()
    command = "python -m bench.prefer " + " ".join(argv if argv is not None else sys.argv[1:])
    for run in range(cfg.runs):
        for arm in ARMS:
            if (run, arm) in done:
                continue
            result = run_arm(cfg, run, arm, person, space, heldout)
            results.append(result)
            logger.info(
                "run %d %s: preference rate %.3f, win share %.3f (%.0f s)",
                run, arm, result["preference_rate"], result["win_share"], result["seconds"],
            )  # fmt: skip
            report = {
                "command": command.strip(),
                "machine": _machine(),
                "date": time.strftime("%Y-%m-%d"),
                "torch": torch.__version__,
                "config": asdict(cfg),
                "summary": summarise(results),
                "rounds_generated": person.rounds_generated,
                "wall_seconds": round(time.time() - started, 1),
                "results": results,
            }
            write_json(args.out, report, indent=2)
    logger.info("summary (%s): %s", args.out, json.dumps(summarise(results), indent=2))


if __name__ == "__main__":
    main()
