"""Prompt sets: the project's curated lists and loaders for text, CSV and JSON prompt files.

A *prompt source* is what a study file writes under ``prompts.train`` / ``prompts.validation``:

* the name of a built-in list (``curated``, ``curated-heldout``, ``tiny``, ``tiny-heldout``;
  see :func:`builtin_prompt_lists`);
* a file path: ``.txt`` (one prompt per line, the HPS test split's format), ``.csv`` (a
  ``prompt`` column and, for the target-image protocol, an ``image`` column), or ``.json``
  (a list of strings, a list of ``{"prompt": ..., "image": ...}`` objects, or
  ``{"prompts": [...]}``);
* an inline list of prompts (or of ``{prompt, image}`` mappings);
* a mapping that adds a selection and column names to one of the above::

      {file: ../shared/data/hps_test_prompts.txt, offset: 0, limit: 16}
      {file: pairs.csv, column: caption, image_column: target, images_dir: /data/targets}
      {file: prompts.txt, sample: 8, seed: 0}       # 8 prompts drawn at random, file order kept

Relative paths are resolved against the folder of the study file that names them (the working
directory for command-line flags). Image paths in a CSV/JSON are resolved against ``images_dir``
when given, else against the prompt file's folder. Every problem is a one-line
:class:`~fabric.errors.ConfigError`.
"""

from __future__ import annotations

import csv
import importlib.resources
import json
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fabric.checks import check_int
from fabric.errors import ConfigError

__all__ = [
    "PromptSet",
    "PROMPTS_DIR",
    "builtin_prompt_lists",
    "load_prompts",
    "resolve_source",
]

logger = logging.getLogger(__name__)

PROMPTS_DIR = Path(str(importlib.resources.files("studies"))) / "prompts"  # built-in prompt lists (data)
_SUFFIXES = (".txt", ".csv", ".json")
_SELECTION_KEYS = {"offset", "limit", "sample", "seed"}
_SOURCE_KEYS = {"file", "list", "column", "image_column", "images_dir"} | _SELECTION_KEYS
_PROMPT_COLUMNS = ("prompt", "caption", "text")
_IMAGE_COLUMNS = ("image", "image_path", "target", "file", "filename")


@dataclass(frozen=True)
class PromptSet:
    """Prompts of one split, with one target image per prompt when the source has them.

    Attributes:
        prompts: the prompts, in source order.
        images: absolute image paths, one per prompt, or empty when the source has none.
        source: where they came from, for messages and the study record.
    """

    prompts: tuple[str, ...]
    images: tuple[str, ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        if self.images and len(self.images) != len(self.prompts):
            raise ConfigError(
                f"{self.source or 'prompt set'}: {len(self.prompts)} prompts but {len(self.images)} images"
            )

    def __len__(self) -> int:
        return len(self.prompts)


def builtin_prompt_lists() -> list[str]:
    """Names of the curated prompt lists shipped in ``studies/prompts/``."""
    return sorted(p.stem for p in PROMPTS_DIR.glob("*.txt"))


def resolve_source(source: Any, base_dir: Path | None) -> Any:
    """``source`` with relative file paths made absolute against ``base_dir``.

    Built-in list names and inline lists pass through; used when a study file is read, so a
    study that extends another keeps each file's paths relative to its own folder.
    """
    if isinstance(source, str):
        return source if _is_builtin(source) else str(_absolute(source, base_dir))
    if isinstance(source, Mapping):
        out = dict(source)
        if isinstance(out.get("file"), str) and not _is_builtin(out["file"]):
            out["file"] = str(_absolute(out["file"], base_dir))
        if isinstance(out.get("images_dir"), str):
            out["images_dir"] = str(_absolute(out["images_dir"], base_dir))
        return out
    if isinstance(source, (list, tuple)):
        return [resolve_source_item(item, base_dir) for item in source]
    return source


def resolve_source_item(item: Any, base_dir: Path | None) -> Any:
    if isinstance(item, Mapping) and isinstance(item.get("image"), str):
        return {**item, "image": str(_absolute(item["image"], base_dir))}
    return item


def load_prompts(
    source: Any, *, base_dir: str | Path | None = None, images: bool = False, what: str = "prompts"
) -> PromptSet:
    """Read a prompt source (see module docs).

    Args:
        source: a built-in list name, a path, an inline list, or a mapping with a selection.
        base_dir: folder that relative paths are resolved against (default: the working directory).
        images: require one target image per prompt (the target-image protocol); images are
            checked to exist and to be readable image files.
        what: how messages name this source (e.g. ``"train prompts"``).

    Raises:
        ConfigError: unknown list, missing or unreadable file, an empty set, missing columns or
            images, or an invalid selection.
    """
    base = Path(base_dir) if base_dir is not None else None
    options: dict[str, Any] = {}
    if isinstance(source, Mapping):
        unknown = sorted(set(source) - _SOURCE_KEYS)
        if unknown:
            raise ConfigError(
                f"{what}: unknown key(s) {', '.join(map(str, unknown))}; known: {', '.join(sorted(_SOURCE_KEYS))}"
            )
        options = dict(source)
        if ("file" in options) == ("list" in options):
            raise ConfigError(
                f"{what}: give exactly one of 'file' (a path or built-in list name) or 'list' (inline prompts)"
            )
        source = options.pop("file") if "file" in options else options.pop("list")
    if source is None:
        raise ConfigError(f"{what}: no prompt source given")
    if isinstance(source, str):
        rows, label = _read_named(source, base, options, what)
    elif isinstance(source, (list, tuple)):
        rows, label = _inline_rows(source, base, what), "inline list"
        _no_column_options(options, what)
    else:
        raise ConfigError(
            f"{what}: expected a list name, a file path, a list or a mapping, got {type(source).__name__}"
        )
    rows = _select(rows, options, f"{what} ({label})")
    if not rows:
        raise ConfigError(f"{what}: {label} has no prompts")
    prompts = tuple(prompt for prompt, _ in rows)
    if not images:
        return PromptSet(prompts, (), label)
    missing_col = [i for i, (_, image) in enumerate(rows) if not image]
    if missing_col:
        raise ConfigError(
            f"{what}: the target-image protocol needs an image for every prompt; {label} has none for "
            f"{len(missing_col)} of {len(rows)} (use a CSV with prompt,image columns)"
        )
    paths = tuple(_check_image(image, label, what, len(rows), [r[1] for r in rows]) for _, image in rows)
    return PromptSet(prompts, paths, label)


# ---- sources ------------------------------------------------------------------------------


def _is_builtin(name: str) -> bool:
    return (
        "/" not in name
        and "\\" not in name
        and not name.endswith(_SUFFIXES)
        and (PROMPTS_DIR / f"{name}.txt").is_file()
    )


def _absolute(path: str, base: Path | None) -> Path:
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = (base if base is not None else Path.cwd()) / p
    return p.resolve()


def _read_named(
    source: str, base: Path | None, options: dict[str, Any], what: str
) -> tuple[list[tuple[str, str]], str]:
    if _is_builtin(source):
        _no_column_options(options, what)
        return _read_txt(PROMPTS_DIR / f"{source}.txt", what), source
    path = _absolute(source, base)
    if path.suffix.lower() not in _SUFFIXES:
        known = ", ".join(builtin_prompt_lists())
        raise ConfigError(f"{what}: {source!r} is neither a built-in list ({known}) nor a .txt, .csv or .json file")
    if not path.is_file():
        raise ConfigError(f"{what}: prompt file not found: {path}")
    images_dir = _absolute(options["images_dir"], base) if options.get("images_dir") else path.parent
    suffix = path.suffix.lower()
    if suffix == ".txt":
        _no_column_options(options, what)
        rows = _read_txt(path, what)
    elif suffix == ".csv":
        rows = _read_csv(path, options.get("column"), options.get("image_column"), images_dir, what)
    else:
        if options.get("column") or options.get("image_column"):
            raise ConfigError(f"{what}: 'column' and 'image_column' apply to CSV files only")
        rows = _read_json(path, images_dir, what)
    return rows, str(path)


def _no_column_options(options: Mapping[str, Any], what: str) -> None:
    extra = sorted(k for k in ("column", "image_column", "images_dir") if options.get(k))
    if extra:
        raise ConfigError(f"{what}: {', '.join(extra)} apply to CSV/JSON files only")


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what}: cannot read {path}: {type(exc).__name__}") from None


def _read_txt(path: Path, what: str) -> list[tuple[str, str]]:
    # One prompt per line, verbatim (the HPS split has no comments and '#' may start a prompt).
    return [(line.strip(), "") for line in _read_text(path, what).splitlines() if line.strip()]


def _pick_column(
    fields: Sequence[str], wanted: str | None, candidates: Sequence[str], path: Path, what: str, kind: str
) -> str | None:
    by_lower = {f.strip().lower(): f for f in fields if f}
    if wanted:
        if wanted.strip().lower() not in by_lower:
            raise ConfigError(f"{what}: {path.name} has no {kind} column {wanted!r}; columns: {', '.join(fields)}")
        return by_lower[wanted.strip().lower()]
    for name in candidates:
        if name in by_lower:
            return by_lower[name]
    return None


def _read_csv(
    path: Path, column: str | None, image_column: str | None, images_dir: Path, what: str
) -> list[tuple[str, str]]:
    text = _read_text(path, what)
    try:
        reader = csv.DictReader(text.splitlines())
        fields = list(reader.fieldnames or [])
        prompt_col = _pick_column(fields, column, _PROMPT_COLUMNS, path, what, "prompt")
        if prompt_col is None:
            raise ConfigError(
                f"{what}: {path.name} needs a 'prompt' column (or pass column: NAME); columns: "
                f"{', '.join(fields) or 'none'}"
            )
        image_col = _pick_column(fields, image_column, _IMAGE_COLUMNS, path, what, "image")
        rows = []
        for row in reader:
            prompt = (row.get(prompt_col) or "").strip()
            if not prompt:
                continue
            image = (row.get(image_col) or "").strip() if image_col else ""
            rows.append((prompt, str(_absolute(image, images_dir)) if image else ""))
    except csv.Error as exc:
        raise ConfigError(f"{what}: {path} is not valid CSV: {exc}") from None
    return rows


def _read_json(path: Path, images_dir: Path, what: str) -> list[tuple[str, str]]:
    try:
        data = json.loads(_read_text(path, what))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what}: {path} is not valid JSON: {exc}") from None
    if isinstance(data, Mapping):
        if "prompts" not in data:
            raise ConfigError(f"{what}: {path.name} must be a list of prompts or an object with a 'prompts' list")
        data = data["prompts"]
    if not isinstance(data, list):
        raise ConfigError(f"{what}: {path.name} must hold a list of prompts, got {type(data).__name__}")
    return _inline_rows(data, images_dir, f"{what} ({path.name})")


def _inline_rows(items: Sequence[Any], base: Path | None, what: str) -> list[tuple[str, str]]:
    rows = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            prompt, image = item, ""
        elif isinstance(item, Mapping):
            unknown = sorted(set(item) - {"prompt", "image"})
            if unknown or not isinstance(item.get("prompt"), str):
                raise ConfigError(
                    f"{what}: entry {i} must be a string or a {{prompt, image}} mapping, got {dict(item)!r}"
                )
            prompt, image = item["prompt"], item.get("image") or ""
            if not isinstance(image, str):
                raise ConfigError(f"{what}: entry {i}: image must be a path, got {image!r}")
        else:
            raise ConfigError(
                f"{what}: entry {i} must be a string or a {{prompt, image}} mapping, got {type(item).__name__}"
            )
        if not prompt.strip():
            raise ConfigError(f"{what}: entry {i} is an empty prompt")
        rows.append((prompt.strip(), str(_absolute(image, base)) if image else ""))
    return rows


def _integer(options: Mapping[str, Any], key: str, low: int, what: str) -> int | None:
    value = options.get(key)
    if value is None:
        return None
    return check_int(f"{what}: {key}", value, minimum=low, error=ConfigError)


def _select(rows: list[tuple[str, str]], options: Mapping[str, Any], what: str) -> list[tuple[str, str]]:
    offset = _integer(options, "offset", 0, what) or 0
    limit = _integer(options, "limit", 1, what)
    sample = _integer(options, "sample", 1, what)
    seed = _integer(options, "seed", 0, what)
    if limit is not None and sample is not None:
        raise ConfigError(f"{what}: give 'limit' (the first N) or 'sample' (N at random), not both")
    if seed is not None and sample is None:
        raise ConfigError(f"{what}: 'seed' only applies with 'sample'")
    if offset and offset >= len(rows):
        raise ConfigError(f"{what}: offset {offset} skips all {len(rows)} prompts")
    rows = rows[offset:]
    if sample is not None:
        if sample > len(rows):
            raise ConfigError(f"{what}: cannot sample {sample} of {len(rows)} prompts")
        keep = sorted(random.Random(seed or 0).sample(range(len(rows)), sample))
        rows = [rows[i] for i in keep]
    if limit is not None:
        rows = rows[:limit]
    return rows


def _check_image(image: str, label: str, what: str, n: int, all_images: Sequence[str]) -> str:
    from PIL import Image, UnidentifiedImageError

    path = Path(image)
    if not path.is_file():
        missing = sum(1 for p in all_images if not Path(p).is_file())
        raise ConfigError(
            f"{what}: target image not found: {path} ({missing} of {n} images of {label} are missing; "
            "set images_dir to the folder that holds them)"
        )
    try:
        with Image.open(path) as img:  # reads the header only
            img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ConfigError(f"{what}: {path} is not a readable image ({type(exc).__name__})") from None
    return str(path)
