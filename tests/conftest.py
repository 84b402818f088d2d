"""Shared fixtures: the tiny generator, solid-colour images, offline environment."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# helpers shared by test packages (tests/servers.py) import as top-level modules
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Hubs are unreachable in CI; fail fast instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# ../shared beside the project (or $FABRIC_OPT_SHARED_DIR): DESIGN data and real-weight fixtures
SHARED = Path(os.environ.get("FABRIC_OPT_SHARED_DIR") or Path(__file__).resolve().parents[2] / "shared")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the project (DESIGN data and fixtures).

    A clean clone elsewhere may lack it: the test skips there. CI always has it (``CI`` is set by
    ``.ci/run``), so under CI a missing folder fails the test instead of hiding it.
    """
    if not SHARED.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{SHARED} is missing under CI, where the shared data must be present")
        pytest.skip(f"{SHARED} is not present (tests that read the shared data skip outside CI)")
    return SHARED


@pytest.fixture(scope="session")
def tiny_generator():
    """One tiny FabricGenerator for the session (read-only use: do not change its modules)."""
    import torch

    from fabric.fabric_generator import FabricGenerator

    torch.set_num_threads(min(2, torch.get_num_threads()))
    return FabricGenerator.from_pretrained("tiny", device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def solid_images():
    """Distinct solid-colour 64x64 images (random CLIPs and VAEs tell colours apart; noise looks alike)."""
    from PIL import Image

    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
    return {name: Image.new("RGB", (64, 64), c) for name, c in colours.items()}
