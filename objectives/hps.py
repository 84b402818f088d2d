"""Human Preference Score v1 and v2 / v2.1 (Wu et al., 2023).

* ``hps`` (v1): OpenAI CLIP ViT-L/14 fine-tuned on human choices; ``hpc.pth`` holds the whole
  model (OpenAI key layout) under ``"state_dict"``. Score ``100 * cos(image, prompt)`` as in
  FABRIC's evaluation code (typically 20 +/- 1). The authors publish ``hpc.pth`` outside the
  Hugging Face hub, so there is no automatic download.
* ``hpsv2`` / ``hpsv21``: open_clip ViT-H-14 fine-tuned on HPD v2; ``HPS_v2_compressed.pt`` /
  ``HPS_v2.1_compressed.pt`` (hub ``xswu/HPSv2``) hold the whole model under
  ``"state_dict"``. Score: plain ``cos(image, prompt)``, as the reference ``hpsv2.score``
  returns (v2 about 0.27 +/- 0.015, v2.1 about 0.27 +/- 0.025: the two scales differ).
  Preprocessing letterboxes the whole image (longest side 224, black padding, no crop).

The ``hpsv2`` PyPI package is not used: it pins old dependencies and downloads at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from objectives.clip import ClipBackbone, load_open_clip
from objectives.clipscore import PromptSimilarity
from objectives.registry import register_objective
from objectives.weights import ResolvedWeights, WeightSource

if TYPE_CHECKING:
    import torch

__all__ = ["HPSv1", "HPSv2", "HPSv21"]


@register_objective("hps")
class HPSv1(PromptSimilarity):
    """HPS v1: ``100 * cos`` of a preference-tuned OpenAI CLIP ViT-L/14."""

    typical = (20.0, 1.0)
    arch = "vit-l-14"
    scale = 100.0
    checkpoint_key = "state_dict"
    source = WeightSource(
        "hps", "hps", "HPS v1", filenames=("hpc.pth",),
        hint="hpc.pth is published by the HPS v1 authors, github.com/tgxs002/align_sd",
    )  # fmt: skip


@register_objective("hpsv2")
class HPSv2(PromptSimilarity):
    """HPS v2: ``cos`` of a preference-tuned open_clip ViT-H-14, whole image letterboxed."""

    typical = (0.27, 0.015)
    scale = 1.0
    checkpoint_key = "state_dict"
    source = WeightSource("hpsv2", "hpsv2", "HPS v2", repo_id="xswu/HPSv2", filenames=("HPS_v2_compressed.pt",))

    @classmethod
    def load_backbone(cls, resolved: ResolvedWeights, device: torch.device, dtype: torch.dtype) -> ClipBackbone:
        return load_open_clip(resolved, "ViT-H-14", device=device, dtype=dtype, checkpoint_key=cls.checkpoint_key)


@register_objective("hpsv21")
class HPSv21(HPSv2):
    """HPS v2.1: the v2 model retrained on more data; same architecture, different scale."""

    typical = (0.27, 0.025)
    source = WeightSource("hpsv21", "hpsv21", "HPS v2.1", repo_id="xswu/HPSv2", filenames=("HPS_v2.1_compressed.pt",))
