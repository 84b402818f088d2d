"""What every image/text encoder shares: batching, seeded construction, loading, sharing.

Several objectives use the same network (aesthetic, CLIP score and diversity all run OpenAI's
CLIP ViT-L/14). Loaded encoders are kept in a weak cache keyed by (family, architecture,
weights, device, dtype): while one objective holds an encoder, every other objective asking for
the same one gets the same object instead of a second copy in memory. Nothing is kept alive by
the cache itself.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from fabric.errors import ModelLoadError
from objectives.weights import ResolvedWeights, check_fits, hub_offline, load_state_dict

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from objectives.preprocess import ImagePreprocess

__all__ = ["ImageEncoder", "seeded", "shared", "load_hf_model"]

logger = logging.getLogger(__name__)

TINY_SEED = 0  # tiny and random models are seeded so scores are reproducible across runs

_SHARED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seeds module construction without touching the caller's global RNG state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def shared(key: tuple, build: Callable[[], Any]) -> Any:
    """Returns the live object cached under ``key``, or builds and caches (weakly) a new one."""
    obj = _SHARED.get(key)
    if obj is None:
        obj = build()
        _SHARED[key] = obj
    return obj


class ImageEncoder:
    """An image model turned into unit-norm embeddings, in batches.

    Subclasses set ``model``, ``preprocess``, ``device`` and ``dtype`` and implement
    :meth:`_image_features`.
    """

    model: torch.nn.Module
    preprocess: ImagePreprocess
    device: torch.device
    dtype: torch.dtype

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[b, 3, S, S]`` preprocessed pixels -> ``[b, d]`` features (any norm)."""
        raise NotImplementedError

    def embed_images(
        self, images: Sequence[Image.Image], batch_size: int = 16, preprocess: ImagePreprocess | None = None
    ) -> torch.Tensor:
        """Unit-norm image embeddings.

        Args:
            images: ``n`` PIL images.
            batch_size: images per forward pass; results do not depend on it.
            preprocess: the objective's own recipe, when it differs from the model's default.

        Returns:
            A float32 tensor of shape ``[n, d]`` on ``self.device``.
        """
        import torch

        chunks = []
        for start in range(0, len(images), batch_size):
            pixels = (preprocess or self.preprocess)(images[start : start + batch_size]).to(self.device, self.dtype)
            with torch.inference_mode():
                chunks.append(self._image_features(pixels).float())
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)


def output_tensor(output: Any) -> torch.Tensor:
    """A feature tensor from a transformers call: 4.x returns tensors, 5.x output objects."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        pooled = output[0]
    return pooled


def load_hf_model(
    model_class: Any,
    config_factory: Callable[[], Any],
    resolved: ResolvedWeights,
    *,
    device: torch.device,
    dtype: torch.dtype,
    convert: Callable[[dict], dict] | None = None,
    checkpoint_key: str | None = None,
) -> Any:
    """Builds a transformers model from any kind of resolved weights (a ``PreTrainedModel``).

    Args:
        model_class: e.g. ``transformers.CLIPModel``.
        config_factory: the architecture's config, used for tiny/random models and for bare
            state-dict files (which carry no config).
        resolved: the resolved weights.
        device: target device.
        dtype: target dtype.
        convert: optional state-dict key conversion for files in another layout.
        checkpoint_key: unwrap ``checkpoint[key]`` of a checkpoint file when present.

    Returns:
        The model in eval mode with gradients off.
    """
    import torch
    import transformers

    source = resolved.source
    # transformers 5 renamed torch_dtype to dtype
    dtype_kw = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    if resolved.kind in ("tiny", "random"):
        with seeded(TINY_SEED):
            model = model_class(config_factory())
    elif resolved.kind == "file":
        state_dict = load_state_dict(resolved.location, objective=source.objective, key=checkpoint_key)
        if convert is not None:
            state_dict = convert(state_dict)
        config = config_factory()
        with torch.device("meta"):  # names and shapes only, built in milliseconds
            skeleton = model_class(config)
        state_dict = check_fits(skeleton.state_dict(), state_dict, objective=source.objective, path=resolved.location)
        # from_pretrained with a state dict skips the random initialisation (15 s for ViT-L/14)
        model = model_class.from_pretrained(None, config=config, state_dict=state_dict, **{dtype_kw: dtype})
    else:
        try:
            model = model_class.from_pretrained(resolved.location, local_files_only=hub_offline(), **{dtype_kw: dtype})
        except Exception as err:  # OSError for missing files; safetensors/pickle/config errors otherwise
            reason = " ".join(str(err).split())[:160]
            if resolved.kind == "hub" and isinstance(err, OSError):
                raise source.not_found(f"hub model {resolved.location} could not be downloaded ({reason})") from err
            raise ModelLoadError(f"{source.objective}: cannot load {resolved.location}: {reason}") from err
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
