"""Atomic file replacement, safe when several processes write the same file.

Study workers finish by writing the same presets, plots and tables. Each writer gets its own
temporary file beside the target (a shared ``name.tmp`` lets one worker rename another's file
away mid-write), then renames it over the target: readers see the old file or the new one,
never half of one, and the last writer wins.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["replacing", "write_text_atomic", "copy_atomic"]


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a private temporary path beside ``path``; on success it replaces ``path``.

    The target's folder is created. If the body raises, the temporary file is removed and
    ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name rather than mkstemp: the file is then created with the umask's permissions
    # (mkstemp's 0600 would make shared presets unreadable to the rest of a team).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def copy_atomic(source: str | Path, path: str | Path) -> Path:
    """Copy file ``source`` to ``path`` atomically; returns ``path``."""
    with replacing(path) as tmp:
        shutil.copyfile(source, tmp)
    return Path(path)
