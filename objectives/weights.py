"""Where reward-model weights come from, and reading checkpoints safely.

Every objective names its weight *sources* (:class:`WeightSource`): the published hub location,
the file expected inside it, and the environment variable that overrides it. A user's choice
is resolved in this order:

1. ``weights=`` (the CLI's ``--objective-weights NAME=PATH`` passes it through),
2. the environment variable ``FABRIC_OPT_<NAME>_WEIGHTS`` (see :func:`env_var`),
3. the published hub location (downloaded into the Hugging Face cache).

A value may be ``"tiny"`` (random tiny model, offline, for tests), ``"random"`` (random weights
at the real size, for speed and memory benchmarks), a checkpoint file, a local folder (a
transformers model folder, or a folder holding the expected checkpoint file) or a hub id.

Environment variables and default sources:

==============================  ==================================================================
variable                        default when unset
==============================  ==================================================================
``FABRIC_OPT_PICKSCORE_WEIGHTS``  hub ``yuvalkirstain/PickScore_v1`` (transformers CLIP ViT-H/14)
``FABRIC_OPT_HPS_WEIGHTS``        none: HPS v1's ``hpc.pth`` is not on the hub; point at it
``FABRIC_OPT_HPSV2_WEIGHTS``      hub ``xswu/HPSv2``, file ``HPS_v2_compressed.pt``
``FABRIC_OPT_HPSV21_WEIGHTS``     hub ``xswu/HPSv2``, file ``HPS_v2.1_compressed.pt``
``FABRIC_OPT_AESTHETIC_WEIGHTS``  hub ``trl-lib/ddpo-aesthetic-predictor``, ``aesthetic-model.pth``
                                  (MLP head; the linear head has no hub copy)
``FABRIC_OPT_CLIP_WEIGHTS``       hub ``openai/clip-vit-large-patch14`` (the aesthetic head's CLIP;
                                  CLI key ``clip``)
``FABRIC_OPT_CLIPSCORE_WEIGHTS``  hub ``openai/clip-vit-large-patch14``
``FABRIC_OPT_TARGET_WEIGHTS``     hub ``openai/clip-vit-large-patch14-336`` (``encoder="dino"``:
                                  ``facebook/dinov2-base``)
``FABRIC_OPT_DIVERSITY_WEIGHTS``  hub ``openai/clip-vit-large-patch14`` (or DINOv2 as above)
==============================  ==================================================================

When nothing is found, one :class:`~fabric.errors.WeightsNotFoundError` names the objective,
what was looked for, and the flag and variable that point at a local copy. Pickles are read
with ``torch.load(weights_only=True)``; unreadable files raise a one-line
:class:`~fabric.errors.ModelLoadError`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fabric.errors import ModelLoadError, WeightsNotFoundError

if TYPE_CHECKING:
    import torch

__all__ = [
    "WeightSource",
    "ResolvedWeights",
    "env_var",
    "resolve_weights",
    "hub_offline",
    "load_state_dict",
    "check_fits",
]

logger = logging.getLogger(__name__)

SPECIAL = ("tiny", "random")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def env_var(key: str) -> str:
    """``"pickscore"`` -> ``"FABRIC_OPT_PICKSCORE_WEIGHTS"``; ``"hpsv2.1"`` -> ``..._HPSV2_1_...``."""
    return "FABRIC_OPT_" + re.sub(r"[^A-Za-z0-9]+", "_", key).upper() + "_WEIGHTS"


@dataclass(frozen=True)
class WeightSource:
    """What one model component needs, for resolution and for error messages.

    Attributes:
        objective: the objective the component belongs to (first word of every error).
        key: the name users give on the command line (``--objective-weights KEY=PATH``) and the
            base of the environment variable; usually the objective name.
        what: a short description, e.g. ``"PickScore CLIP ViT-H/14"``.
        repo_id: published hub repository, or ``None`` when there is no public hub copy.
        filenames: accepted checkpoint file names inside a folder or repo (first is downloaded);
            empty for a transformers model folder (``config.json`` + weights).
        hint: where to get the weights when ``repo_id`` is ``None``.
    """

    objective: str
    key: str
    what: str
    repo_id: str | None = None
    filenames: tuple[str, ...] = ()
    hint: str = ""

    @property
    def env_var(self) -> str:
        return env_var(self.key)

    def fix(self) -> str:
        return f"give their path as the weights of {self.key!r} or set {self.env_var}=PATH"

    def not_found(self, looked_for: str) -> WeightsNotFoundError:
        hint = f" ({self.hint})" if self.hint else ""
        return WeightsNotFoundError(
            f"{self.objective}: {self.what} weights not found: {looked_for}{hint}; download them and {self.fix()}",
            option="objective_weights",
            example=f"{self.key}=PATH",
        )


@dataclass(frozen=True)
class ResolvedWeights:
    """A resolved choice. ``location`` is a local path, a hub id or ``""`` for tiny/random."""

    kind: Literal["tiny", "random", "file", "folder", "hub"]
    location: str
    source: WeightSource

    @property
    def cache_key(self) -> str:
        return f"{self.kind}:{self.location}"


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (read at call time, not import)."""
    truthy = {"1", "true", "yes", "on"}
    if any(os.environ.get(v, "").strip().lower() in truthy for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _one_line(err: BaseException, limit: int = 160) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def resolve_weights(
    source: WeightSource, weights: str | os.PathLike | None = None, *, fetch: bool = True
) -> ResolvedWeights:
    """Resolves ``weights`` (or the environment variable, or the hub default) for ``source``.

    Args:
        source: the component's description.
        weights: the user's choice; ``None`` reads ``source.env_var``, then ``source.repo_id``.
        fetch: download hub files into the cache. ``False`` only checks that they are cached or
            reachable (:func:`~objectives.check_available` uses it).

    Returns:
        ``kind="file"`` for checkpoint files (hub files are downloaded to a local path),
        ``"folder"`` for a local transformers folder, ``"hub"`` for a transformers hub id, or
        ``"tiny"``/``"random"``.

    Raises:
        WeightsNotFoundError: the path does not exist, the folder lacks the expected file, or
            the hub copy is neither cached nor reachable.
    """
    origin = "weights="
    if weights is not None and not os.fspath(weights).strip():
        weights = None  # an empty CLI value means "not given"
    if weights is None and os.environ.get(source.env_var):
        weights, origin = os.environ[source.env_var], source.env_var
    if weights is None:
        if source.repo_id is None:
            raise source.not_found("no local copy given and no public hub copy to download")
        return _resolve_hub(source, source.repo_id, fetch)
    value = os.fspath(weights).strip()
    if value.lower() in SPECIAL:
        return ResolvedWeights(value.lower(), "", source)  # type: ignore[arg-type]  # "tiny" or "random"

    path = Path(value).expanduser()
    if path.is_file():
        return ResolvedWeights("file", str(path), source)
    if path.is_dir():
        if not source.filenames:
            if not (path / "config.json").is_file():
                raise source.not_found(f"folder {path} has no config.json (expected a transformers model folder)")
            return ResolvedWeights("folder", str(path), source)
        for name in source.filenames:
            if (path / name).is_file():
                return ResolvedWeights("file", str(path / name), source)
        raise source.not_found(f"folder {path} contains none of {', '.join(source.filenames)}")
    looks_like_path = value.startswith(("/", ".", "~")) or value.endswith(_CHECKPOINT_SUFFIXES)
    if looks_like_path or not _HUB_ID.match(value):
        raise source.not_found(f"{value!r} (from {origin}) is not an existing file or folder, nor a hub id")
    return _resolve_hub(source, value, fetch)


def _resolve_hub(source: WeightSource, repo_id: str, fetch: bool) -> ResolvedWeights:
    import huggingface_hub

    probe = source.filenames[0] if source.filenames else "config.json"
    cached = huggingface_hub.try_to_load_from_cache(repo_id, probe)
    if not isinstance(cached, str):
        if hub_offline():
            raise source.not_found(f"hub {'file' if source.filenames else 'model'} {repo_id}/{probe} is not in the "
                                   "Hugging Face cache and the hub is offline (HF_HUB_OFFLINE)")  # fmt: skip
        # one HEAD request without retries: fails in milliseconds when there is no network,
        # where a download would retry for half a minute
        try:
            exists = huggingface_hub.file_exists(repo_id, probe)
        except Exception as err:  # httpx/requests/hub errors differ across versions
            raise source.not_found(f"hub {repo_id}/{probe} is unreachable ({_one_line(err, 80)})") from err
        if not exists:
            raise source.not_found(f"hub repository {repo_id} has no file {probe}")
    if not source.filenames:
        return ResolvedWeights("hub", repo_id, source)
    if not fetch:
        return ResolvedWeights("file", cached if isinstance(cached, str) else f"hub:{repo_id}/{probe}", source)
    try:
        local = huggingface_hub.hf_hub_download(repo_id, probe, local_files_only=isinstance(cached, str))
    except Exception as err:
        raise source.not_found(f"download of {repo_id}/{probe} failed ({_one_line(err, 80)})") from err
    return ResolvedWeights("file", local, source)


def load_state_dict(path: str | os.PathLike, *, objective: str, key: str | None = None) -> dict[str, torch.Tensor]:
    """Reads a checkpoint file into a CPU state dict, safely.

    Args:
        path: a ``.safetensors`` file or a PyTorch pickle (read with ``weights_only=True``,
            mapped to CPU: published heads were saved from CUDA).
        objective: for error messages.
        key: unwrap ``checkpoint[key]`` when present (e.g. ``"state_dict"`` for HPS files).

    Returns:
        ``{name: tensor}`` with a DistributedDataParallel ``module.`` prefix removed.

    Raises:
        ModelLoadError: unreadable, corrupt, not a tensor dict, or holding Python objects that
            ``weights_only`` refuses to unpickle.
    """
    import torch

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            checkpoint: Any = load_file(str(path), device="cpu")
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip, safetensors and OS errors all mean "unusable file"
        if "weights only load failed" in str(err).lower() or "weights_only" in str(err):
            raise ModelLoadError(
                f"{objective}: {path} holds Python objects besides tensors and is not loaded "
                "(weights_only=True); re-save it as a plain state dict"
            ) from err
        raise ModelLoadError(
            f"{objective}: {path} is not a readable checkpoint ({_one_line(err, 100)}); re-download it"
        ) from err
    if isinstance(checkpoint, dict) and key is not None and isinstance(checkpoint.get(key), dict):
        checkpoint = checkpoint[key]
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise ModelLoadError(f"{objective}: {path} is not a state dict (found {type(checkpoint).__name__})")
    tensors = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelLoadError(f"{objective}: {path} contains no tensors")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    return tensors


def check_fits(
    expected: Mapping[str, torch.Tensor], state_dict: dict[str, torch.Tensor], *, objective: str, path: str
) -> dict[str, torch.Tensor]:
    """The entries of ``state_dict`` that a model with ``expected`` tensors needs.

    Args:
        expected: the model's ``state_dict()`` (a meta-device skeleton's is enough: only names
            and shapes are read).
        state_dict: the checkpoint's tensors.
        objective: for error messages.
        path: for error messages.

    Raises:
        ModelLoadError: a tensor is missing or has the wrong shape (extra tensors are ignored).
    """
    missing = [k for k in expected if k not in state_dict]
    if missing:
        raise ModelLoadError(
            f"{objective}: {path} does not fit the model: {len(missing)} of {len(expected)} tensors missing "
            f"(e.g. {', '.join(missing[:3])}); is it the right checkpoint?"
        )
    for k, tensor in expected.items():
        if state_dict[k].shape != tensor.shape:
            raise ModelLoadError(
                f"{objective}: {path} does not fit the model: {k} has shape {tuple(state_dict[k].shape)}, "
                f"expected {tuple(tensor.shape)}"
            )
    extra = [k for k in state_dict if k not in expected and not k.endswith(("position_ids", "attn_mask"))]
    if extra:
        logger.warning("%s: ignoring %d unexpected tensors in %s (e.g. %s)", objective, len(extra), path, extra[0])
    return {k: state_dict[k] for k in expected}
