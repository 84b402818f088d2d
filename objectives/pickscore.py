"""PickScore (Kirstain et al., 2023): a CLIP ViT-H/14 fine-tuned on Pick-a-Pic preferences.

Score: ``logit_scale.exp() * cos(image, prompt)`` (about ``100 * cos``), as in the reference
code; typical values on Stable Diffusion images are 21 +/- 1. Weights: the transformers model
``yuvalkirstain/PickScore_v1`` (3.9 GB), a local copy of that folder, or a bare state-dict
file in transformers' layout. Preprocessing: shortest edge 224 (bicubic), centre crop, OpenAI
mean/std -- the ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` transformers processor the authors use
(which floors odd crop margins where torchvision rounds them).
"""

from __future__ import annotations

from objectives.clipscore import PromptSimilarity
from objectives.preprocess import pickscore
from objectives.registry import register_objective
from objectives.weights import WeightSource

__all__ = ["PickScore"]


@register_objective("pickscore")
class PickScore(PromptSimilarity):
    """PickScore v1: learned-temperature CLIP similarity of a ViT-H/14 preference model."""

    typical = (21.0, 1.0)
    arch = "vit-h-14"
    scale = None  # the checkpoint's own logit scale (exp = 100)
    recipe = staticmethod(pickscore)
    source = WeightSource("pickscore", "pickscore", "PickScore CLIP ViT-H/14", repo_id="yuvalkirstain/PickScore_v1")
