"""What FABRIC keeps between calls: recorded reference tokens and calls without feedback.

:class:`ReferenceStateCache` holds the tokens a reference left at every ``attn1`` layer per
denoising step, so a reference seen in an earlier round never runs through the U-Net again.
:class:`PlainCallCache` holds whole calls without feedback (a study's first rounds).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

import torch

__all__ = ["ReferenceStateCache", "PlainCallCache", "copy_images"]


class ReferenceStateCache:
    """LRU store of recorded reference tokens, bounded in bytes.

    Key: ``(image key, timestep, latent height, latent width)``. Value: layer name ->
    ``(M, C)`` tokens of that image at that layer. Entries stay on the device they were
    recorded on. One SD 1.5 reference at 512x512 is about 23 MB per step in fp16, so the
    default 1 GiB holds roughly two references over a 20-step schedule; older entries are
    evicted first.

    While a call runs, its references are *held* (:meth:`hold`): their entries are never
    evicted, and an entry that would need that is not stored. A call visits its references
    step by step, so plain LRU would evict exactly the entries the next round asks for first
    (a 3-round session at SD 1.5 512x512 scale got 14 of 102 possible hits); holding keeps
    what fits for the next round.
    """

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[tuple, dict[str, torch.Tensor]] = OrderedDict()
        self._held: frozenset[str] = frozenset()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self.rejected = 0  # entries not stored: no room without evicting a held image
        self.last_entry_bytes = 0  # size of the latest entry offered, stored or not

    @staticmethod
    def _size(states: dict[str, torch.Tensor]) -> int:
        return sum(t.numel() * t.element_size() for t in states.values())

    def get(self, key: tuple) -> dict[str, torch.Tensor] | None:
        states = self._entries.get(key)
        if states is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return states

    def put(self, key: tuple, states: dict[str, torch.Tensor]) -> None:
        size = self._size(states)
        self.last_entry_bytes = size
        if size > self.max_bytes:
            self.rejected += 1
            return
        if key in self._entries:
            self.nbytes -= self._size(self._entries.pop(key))
        if self.nbytes + size > self.max_bytes:
            for old_key in [k for k in self._entries if k[0] not in self._held]:  # least recent first
                self.nbytes -= self._size(self._entries.pop(old_key))
                if self.nbytes + size <= self.max_bytes:
                    break
        if self.nbytes + size > self.max_bytes:
            self.rejected += 1
            return
        self._entries[key] = states
        self.nbytes += size

    @contextlib.contextmanager
    def hold(self, image_keys: Iterable[str]) -> Iterator[None]:
        """Keep the entries of ``image_keys`` (the running call's references) from eviction."""
        previous, self._held = self._held, frozenset(image_keys)
        try:
            yield
        finally:
            self._held = previous

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)


class PlainCallCache:
    """LRU store of the outputs of calls without feedback (``max_entries`` calls; 0 disables).

    A study's first round has no liked or disliked images, so it is the same for every trial
    whose prompts (after dropout), seeds and guidance match, and the same as the no-feedback
    baseline's first round. Outputs are returned as copies; the weights are assumed fixed
    (:meth:`FabricGenerator.clear_caches` after changing them).
    """

    def __init__(self, max_entries: int = 0) -> None:
        self.max_entries = int(max_entries)
        self._entries: OrderedDict[tuple, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple | None) -> Any:
        if self.max_entries == 0 or key is None:
            return None
        value = self._entries.get(key)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return value

    def put(self, key: tuple, value: Any) -> None:
        """Store a copy of ``value``: one call's images (or latents), or a list of them per request."""
        if self.max_entries == 0:
            return
        self._entries[key] = copy_images(value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def copy_images(images: Any) -> Any:
    """Copies of PIL images or latent tensors, also in (nested) lists, so a cached value is never shared."""
    if isinstance(images, torch.Tensor):
        return images.clone()
    if isinstance(images, list):
        return [copy_images(item) for item in images]
    return images.copy()
