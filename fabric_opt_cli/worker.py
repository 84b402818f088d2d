"""``fabric-opt worker NAME``: another process working on a running study.

One machine: start ``fabric-opt study`` once, then ``fabric-opt worker NAME --device cuda:1`` per
extra GPU; they share the default journal file. Several machines: give every process the same
``--storage postgresql://...`` (heartbeats fail the trials of a worker that dies, and their
parameters are run again). See docs/RELIABILITY.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fabric_opt_cli import options
from fabric_opt_cli.console import run_with_progress

__all__ = ["worker"]


def worker(
    name: str = typer.Argument(..., help="Study name (created by `fabric-opt study`)."),
    storage: Optional[str] = options.STORAGE,
    runs_dir: Path = options.RUNS_DIR,
    tracking_uri: Optional[str] = options.TRACKING_URI,
    device: Optional[str] = options.DEVICE,
    dtype: Optional[str] = options.DTYPE,
    token_cache_gb: Optional[float] = options.TOKEN_CACHE_GB,
) -> None:
    """Join a study as another worker: read its settings from the storage, load the models, and run
    trials until the study's budget is spent (trials of dead workers on this host are re-run)."""
    from optimize.study import StorageSpec, check_objectives, open_study
    from optimize.tracking import make_tracker

    # everything checked before a model is loaded or a file written
    spec = StorageSpec.parse(storage, runs_dir)
    tracker = make_tracker(options.tracking_uri(tracking_uri, runs_dir))
    dev, dt = options.resolve_device_dtype(device, dtype)
    cache_bytes = options.token_cache_bytes(token_cache_gb)
    _, config = open_study(name, spec)
    check_objectives(config)
    run_with_progress(
        config,
        name=name,
        storage=spec,
        tracker=tracker,
        runs_dir=runs_dir,
        device=dev,
        dtype=dt,
        cache_bytes=cache_bytes,
    )
