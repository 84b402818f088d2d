"""Study-level reuse: how much a study saves by generating each call without feedback once.

``python -m bench.study`` runs one study twice on the same generator weights, in one process,
interleaved: once with :class:`fabric.generator.PlainCallCache` off and once on (as
:func:`optimize.study.load_components` sets it). Everything else is identical (a journal in a
temp folder, tracking off, the same seed). It reports wall-clock and CPU
time, U-Net calls, the cache's hits, and checks that both runs produced the same trial values:
the cache may only remove work, never change a result.

A trial's first round has no liked or disliked images; it is the same as the baseline's first
round whenever the trial's prompt dropout dropped no word (always at dropout 0; often for short
prompts at small dropout), and the same across trials that share their dropped prompts.

Usage::

    python -m bench.study                      # the toy-demo study (toy model, CPU, ~2 min)
    python -m bench.study --study toy --trials 12
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Sequence

__all__ = ["run_once", "main"]

logger = logging.getLogger(__name__)


def run_once(study: str, trials: int, cache: bool, seed: int = 0) -> dict:
    """Run ``study`` with ``trials`` trials into a fresh temp folder; time it and count U-Net calls."""
    import torch

    from fabric.generator import FabricGenerator
    from optimize.study import load_components, run_study
    from studies import load_study_config

    config = load_study_config(study, overrides={"trials": trials, "seed": seed})
    components = load_components(config)
    generator: FabricGenerator = components.generator
    if not cache:
        generator.plain_cache.max_entries = 0
    calls = []
    handle = generator.pipeline.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            wall, cpu = time.perf_counter(), time.process_time()
            outcome = run_study(config, runs_dir=Path(tmp), components=components, export=False)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            values = [t.value for t in sorted(outcome.study.trials, key=lambda t: t.number)]
    finally:
        handle.remove()
    return {
        "cache": cache,
        "seconds": round(wall, 2),
        "cpu seconds": round(cpu, 2),
        "unet calls": len(calls),
        "hits": generator.plain_cache.hits,
        "misses": generator.plain_cache.misses,
        "values": values,
        "threads": torch.get_num_threads(),
    }


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.study", description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="toy-demo")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1, help="off/on pairs, interleaved")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    runs = []
    for _ in range(args.repeats):
        for cache in (False, True):
            runs.append(run_once(args.study, args.trials, cache))
            logger.info("cache %s: %s", "on " if cache else "off", {k: v for k, v in runs[-1].items() if k != "values"})
    off = [r for r in runs if not r["cache"]]
    on = [r for r in runs if r["cache"]]
    same = all(r["values"] == off[0]["values"] for r in runs)
    summary = {
        "study": args.study,
        "trials": args.trials,
        "unet calls, on / off": round(on[0]["unet calls"] / off[0]["unet calls"], 3),
        "cpu time, on / off": round(sum(r["cpu seconds"] for r in on) / sum(r["cpu seconds"] for r in off), 3),
        "wall time, on / off": round(sum(r["seconds"] for r in on) / sum(r["seconds"] for r in off), 3),
        "same trial values": same,
        "runs": runs,
    }
    logger.info("%s", {k: v for k, v in summary.items() if k != "runs"})
    if not same:
        logger.error("the cache changed trial values: %s vs %s", off[0]["values"], on[0]["values"])
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return summary


if __name__ == "__main__":
    main()
