"""Seeds derived from their parts, the same in every process and on every machine.

Python's ``hash()`` is salted per process, so anything reproducible derives its seeds here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["stable_seed", "cpu_generators"]


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from ``parts`` (joined by their ``str``), the same in every process.

    Every derived seed of the project comes from here: image seeds and the simulated user's
    choices in studies, reference noise and prompt dropout in the generator, sampler seeds.
    """
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def cpu_generators(seed: int | Sequence[int]) -> torch.Generator | list[torch.Generator]:
    """CPU ``torch.Generator``\\ s (the same draws on every device): one for ``seed``, or one per seed."""
    import torch

    if isinstance(seed, int):
        return torch.Generator("cpu").manual_seed(seed)
    return [torch.Generator("cpu").manual_seed(s) for s in seed]
