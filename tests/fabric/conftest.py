"""Fixtures of the generator tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a 2-core machine shared with other jobs, OpenMP's busy-waiting
    workers made these small-model tests up to 5x slower with two threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
