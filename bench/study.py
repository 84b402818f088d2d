"""Study-level speed: calls without feedback generated once, and prompts batched per call.

What a study saves by generating each call without feedback once, and by generating several
prompts per pipeline call.

``python -m bench.study`` runs one study twice on the same generator weights, in one process,
interleaved: once with :class:`fabric.caches.PlainCallCache` off and once on (as
:func:`optimize.study.load_components` sets it). With ``--prompt-batch N`` the two arms are
instead ``protocol.prompt_batch`` 1 and N, both with the cache on. Everything else is identical
(a journal in a temp folder, tracking off, the same seed). It reports wall-clock and CPU time,
U-Net calls, the cache's hits, and compares the trial values: the cache may only remove work,
never change a result (identical values). Batching changes images by float rounding; a
reference whose pixels moved by one level draws other reference noise (it is keyed by the
image's content), so later rounds, and trial values, differ like another noise draw would.

A trial's first round has no liked or disliked images; it is the same as the baseline's first
round whenever the trial's prompt dropout dropped no word (always at dropout 0; often for short
prompts at small dropout), and the same across trials that share their dropped prompts.

Usage::

    python -m bench.study                      # the toy-demo study (toy model, CPU, ~2 min)
    python -m bench.study --study toy --trials 12
    python -m bench.study --prompt-batch 2     # prompts one by one vs two per call
    python -m bench.study --prompt-batch 2 --fuse on    # the same with the (opt-in) fused reference pass
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.results import write_json

__all__ = ["run_once", "main"]

logger = logging.getLogger(__name__)


def run_once(
    study: str,
    trials: int,
    cache: bool,
    prompt_batch: int = 1,
    seed: int = 0,
    sampler: str | None = None,
    fuse: bool = False,
) -> dict:
    """Run ``study`` with ``trials`` trials into a fresh temp folder; time it and count U-Net calls."""
    import torch

    from fabric.fabric_generator import FabricGenerator
    from optimize.config import load_study_config
    from optimize.study import load_components, run_study

    overrides = {"trials": trials, "seed": seed, "protocol": {"prompt_batch": prompt_batch}}
    if sampler is not None:
        overrides["sampler"] = {"name": sampler}
    config = load_study_config(study, overrides=overrides)
    components = load_components(config)
    generator: FabricGenerator = components.generator
    generator.fuse_reference_pass = fuse
    if not cache:
        generator.plain_cache.max_entries = 0
    calls = []
    handle = generator.pipeline.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            wall, cpu = time.perf_counter(), time.process_time()
            outcome = run_study(config, runs_dir=Path(tmp), components=components, export=False)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            trials_run = sorted(outcome.study.trials, key=lambda t: t.number)
    finally:
        handle.remove()
    return {
        "cache": cache,
        "prompt batch": prompt_batch,
        "fuse": fuse,
        "seconds": round(wall, 2),
        "cpu seconds": round(cpu, 2),
        "unet calls": len(calls),
        "hits": generator.plain_cache.hits,
        "misses": generator.plain_cache.misses,
        "values": [t.value for t in trials_run],
        "params": [t.params for t in trials_run],
        "threads": torch.get_num_threads(),
    }


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.study", description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="toy-demo")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1, help="pairs of runs, interleaved")
    parser.add_argument(
        "--prompt-batch",
        type=int,
        default=1,
        help="N > 1: compare prompt_batch 1 with N (cache on) instead of the cache",
    )
    parser.add_argument(
        "--sampler", default=None, help="override the study's sampler (e.g. random: the same trials in both arms)"
    )
    parser.add_argument(
        "--fuse", choices=("on", "off"), default="off", help="the generator's fuse_reference_pass in both arms"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    fuse = args.fuse == "on"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.prompt_batch > 1:
        arms = {
            "batch 1": dict(cache=True, prompt_batch=1),
            f"batch {args.prompt_batch}": dict(cache=True, prompt_batch=args.prompt_batch),
        }
    else:
        arms = {"cache off": dict(cache=False), "cache on": dict(cache=True)}
    runs: dict[str, list[dict]] = {label: [] for label in arms}
    for _ in range(args.repeats):
        for label, arm in arms.items():
            runs[label].append(run_once(args.study, args.trials, sampler=args.sampler, fuse=fuse, **arm))
            logger.info("%s: %s", label, {k: v for k, v in runs[label][-1].items() if k not in ("values", "params")})
    (a, first), (b, second) = runs.items()
    # compare trials with equal parameters (a model-based sampler may diverge after a tiny difference)
    reference = first[0]

    def differences(arm: list[dict]) -> list[float]:
        return [
            x - y
            for r in arm
            for x, y, px, py in zip(r["values"], reference["values"], r["params"], reference["params"])
            if px == py
        ]

    within, between = differences(first), differences(second)
    pairs = within + between
    diff = max(abs(d) for d in pairs)
    summary = {
        "study": args.study,
        "trials": args.trials,
        "arms": f"{b} / {a}",
        "unet calls": round(second[0]["unet calls"] / first[0]["unet calls"], 3),
        "cpu time": round(sum(r["cpu seconds"] for r in second) / sum(r["cpu seconds"] for r in first), 3),
        "wall time": round(sum(r["seconds"] for r in second) / sum(r["seconds"] for r in first), 3),
        "trials compared (equal parameters)": len(pairs),
        "same trial values": diff == 0,
        "max trial value difference": diff,
        "mean trial value difference (second arm - first)": sum(between) / len(between) if between else None,
        "runs": runs,
    }
    logger.info("%s", {k: v for k, v in summary.items() if k != "runs"})
    if diff and args.prompt_batch == 1:
        logger.error("the cache changed trial values by up to %g", diff)
    if args.json is not None:
        write_json(args.json, summary)
    return summary


if __name__ == "__main__":
    main()
