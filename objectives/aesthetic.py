"""LAION aesthetic predictors: a small head on unit-norm CLIP ViT-L/14 image embeddings.

Two published heads (both read the L2-normalised OpenAI CLIP ViT-L/14 image embedding):

* ``head="mlp"`` (default), the "improved aesthetic predictor"
  ``sac+logos+ava1-l14-linearMSE.pth`` (hub mirror ``trl-lib/ddpo-aesthetic-predictor``,
  ``aesthetic-model.pth``, as used by DDPO): 768 -> 1024 -> 128 -> 64 -> 16 -> 1. Its layers
  have no activations between them (the published model was trained that way, dropout only),
  so the head is affine; it is kept layer by layer so the published files load unchanged.
  Typical scores: 5.5 +/- 0.5 on Stable Diffusion images (range about 1-10).
* ``head="linear"``, LAION's first predictor ``sa_0_4_vit_l_14_linear.pth``: one
  ``nn.Linear(768, 1)``. It is not on the hub; point at a local copy. Typical: 5 +/- 1.5.

Weights: ``weights=`` is the head (a file, or a folder holding one of the published file
names); the CLIP backbone comes from ``backbone=`` or ``FABRIC_OPT_CLIP_WEIGHTS`` (the CLI key
``clip``), else ``openai/clip-vit-large-patch14``. ``weights="tiny"``/``"random"`` also pick a
tiny/random backbone unless ``backbone=`` says otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from fabric.errors import InvalidParameterError, ModelLoadError
from objectives.backbone import TINY_SEED, seeded
from objectives.base import RewardModel, check_batch_size, placement
from objectives.clip import ClipBackbone, load_hf_clip
from objectives.registry import register_objective
from objectives.weights import SPECIAL, ResolvedWeights, WeightSource, load_state_dict, resolve_weights

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["AestheticScore", "MLPHead", "load_head", "HEAD_SOURCES", "CLIP_SOURCE"]

HEAD_SOURCES = {
    "mlp": WeightSource(
        "aesthetic", "aesthetic", "LAION improved aesthetic head (MLP)", repo_id="trl-lib/ddpo-aesthetic-predictor",
        filenames=("aesthetic-model.pth", "sac+logos+ava1-l14-linearMSE.pth"),
    ),
    "linear": WeightSource(
        "aesthetic", "aesthetic", "LAION aesthetic head v1 (linear)", filenames=("sa_0_4_vit_l_14_linear.pth",),
        hint="sa_0_4_vit_l_14_linear.pth is in github.com/LAION-AI/aesthetic-predictor",
    ),
}  # fmt: skip
CLIP_SOURCE = WeightSource("aesthetic", "clip", "CLIP ViT-L/14", repo_id="openai/clip-vit-large-patch14")

_MLP_WIDTHS = (1024, 128, 64, 16)
_TINY_MLP_WIDTHS = (16, 8, 8, 4)


class MLPHead(nn.Module):
    """The improved predictor's layer stack; ``layers.{0,2,4,6,7}`` match the published keys."""

    def __init__(self, dim: int = 768, widths: tuple[int, ...] = _MLP_WIDTHS):
        super().__init__()
        w1, w2, w3, w4 = widths
        self.layers = nn.Sequential(
            nn.Linear(dim, w1), nn.Dropout(0.2), nn.Linear(w1, w2), nn.Dropout(0.2),
            nn.Linear(w2, w3), nn.Dropout(0.1), nn.Linear(w3, w4), nn.Linear(w4, 1),
        )  # fmt: skip

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings)


def _head_from_state_dict(state_dict: dict[str, torch.Tensor], kind: str, path: str) -> nn.Module:
    """Builds the head the file describes (widths read from its tensors) and loads it."""
    if kind == "linear":
        if set(state_dict) != {"weight", "bias"} or state_dict["weight"].shape[0] != 1:
            raise ModelLoadError(
                f"aesthetic: {path} is not a linear head (keys {sorted(state_dict)[:3]}); for the MLP head use "
                "head='mlp'"
            )
        head: nn.Module = nn.Linear(state_dict["weight"].shape[1], 1)
    else:
        keys = [f"layers.{i}.weight" for i in (0, 2, 4, 6, 7)]
        if not all(k in state_dict for k in keys):
            raise ModelLoadError(
                f"aesthetic: {path} is not the MLP head (expected {keys[0]}, ...); for the linear head use "
                "head='linear'"
            )
        head = MLPHead(state_dict[keys[0]].shape[1], tuple(state_dict[k].shape[0] for k in keys[:4]))
    head.load_state_dict(state_dict)
    return head


def load_head(
    weights: str | None = None,
    head: Literal["mlp", "linear"] = "mlp",
    *,
    device: Any = "cpu",
    dtype: Any = None,
    dim: int = 768,
) -> nn.Module:
    """Loads an aesthetic head alone (embeddings in, score out).

    Args:
        weights: head file, folder holding a published head file, hub id, or ``"tiny"`` /
            ``"random"`` (random head for ``dim``-d embeddings).
        head: ``"mlp"`` (improved predictor) or ``"linear"`` (v1).
        device: target device.
        dtype: head dtype (``None`` = float32).
        dim: embedding width of random heads (tiny: pass the tiny backbone's).

    Returns:
        A module mapping unit-norm ``[n, dim]`` embeddings to ``[n, 1]`` scores.
    """
    device, dtype = placement(device, dtype)
    return _build_head(resolve_weights(_head_source(head), weights), head, dim, device, dtype)


def _head_source(head: str) -> WeightSource:
    if head not in HEAD_SOURCES:
        raise InvalidParameterError(f"aesthetic head must be 'mlp' or 'linear', got {head!r}")
    return HEAD_SOURCES[head]


def _build_head(resolved: ResolvedWeights, head: str, dim: int, device: torch.device, dtype: torch.dtype) -> nn.Module:
    if resolved.kind in SPECIAL:
        with seeded(TINY_SEED):
            widths = _TINY_MLP_WIDTHS if resolved.kind == "tiny" else _MLP_WIDTHS
            module: nn.Module = nn.Linear(dim, 1) if head == "linear" else MLPHead(dim, widths)
    else:
        state_dict = load_state_dict(resolved.location, objective="aesthetic")
        module = _head_from_state_dict(state_dict, head, resolved.location)
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False)


@register_objective("aesthetic")
class AestheticScore(RewardModel):
    """LAION aesthetic score of each image (the prompt is ignored)."""

    uses_prompt = False
    typical = (5.5, 0.5)
    components = {"clip": "backbone"}

    def __init__(self, backbone: ClipBackbone, head: nn.Module, *, batch_size: int = 16):
        self.backbone, self.head = backbone, head
        self.batch_size = check_batch_size(batch_size)
        if isinstance(head, nn.Linear):
            self.typical = (5.0, 1.5)
        dim = next(head.parameters()).shape[1]
        backbone_dim = backbone.model.config.projection_dim if hasattr(backbone.model, "config") else None
        if backbone_dim is not None and backbone_dim != dim:
            raise ModelLoadError(
                f"aesthetic: the head expects {dim}-d CLIP embeddings but the backbone gives {backbone_dim}-d; "
                "use CLIP ViT-L/14 (or weights='tiny' for both)"
            )

    @classmethod
    def load(
        cls,
        weights: str | None = None,
        device: Any = "cpu",
        dtype: Any = None,
        *,
        head: Literal["mlp", "linear"] = "mlp",
        backbone: str | None = None,
        batch_size: int = 16,
    ) -> AestheticScore:
        """Loads head and backbone (``backbone`` defaults to the head's tiny/random choice)."""
        device, dtype = placement(device, dtype)
        head_weights = resolve_weights(_head_source(head), weights)  # the cheap one first: it fails first
        clip = load_hf_clip(
            resolve_weights(CLIP_SOURCE, cls._backbone_choice(weights, backbone)),
            "vit-l-14",
            device=device,
            dtype=dtype,
        )
        module = _build_head(head_weights, head, clip.model.config.projection_dim, device, dtype)
        return cls(clip, module, batch_size=batch_size)

    @staticmethod
    def _backbone_choice(weights: str | None, backbone: str | None) -> str | None:
        if backbone is None and isinstance(weights, str) and weights.lower() in SPECIAL:
            return weights.lower()
        return backbone

    @classmethod
    def check_weights(
        cls, weights: str | None = None, *, head: str = "mlp", backbone: str | None = None, **options: Any
    ) -> None:
        resolve_weights(_head_source(head), weights, fetch=False)
        resolve_weights(CLIP_SOURCE, cls._backbone_choice(weights, backbone), fetch=False)

    def score_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Scores ``[n, d]`` CLIP image embeddings (normalised here) -> ``[n]``."""
        embeddings = nn.functional.normalize(embeddings.float(), dim=-1)
        param = next(self.head.parameters())
        return self.head(embeddings.to(param.device, param.dtype)).squeeze(-1)

    def _score(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        with torch.inference_mode():
            return self.score_embeddings(self.backbone.embed_images(images, self.batch_size))
