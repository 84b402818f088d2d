"""CLIP backbones: transformers ``CLIPModel`` and open_clip ``CLIP`` behind one interface.

Most reward models in this package are a CLIP plus a scoring rule. :class:`ClipBackbone` gives
them unit-norm image and text embeddings in batches; the two subclasses hide the library
differences (transformers 5 returns output objects from ``get_*_features``; open_clip pads
token ids with 0). Text is tokenised offline with open_clip's bundled BPE vocabulary
(:func:`fabric.tokenizer.offline_clip_tokenizer`), whose ids equal those of every CLIP tokenizer
up to the end-of-text token; positions after it never influence the pooled text feature
(causal attention, pooled at the end-of-text token).

Architectures (``ARCHS``) are spelled out so that bare state-dict files, ``weights="random"``
benchmarks and ``weights="tiny"`` tests build the right network without a download.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from objectives.backbone import TINY_SEED, ImageEncoder, load_hf_model, output_tensor, seeded, shared
from objectives.preprocess import ImagePreprocess, hps_v2, openai_clip
from objectives.weights import ResolvedWeights, check_fits, load_state_dict

if TYPE_CHECKING:
    import torch

__all__ = [
    "ARCHS",
    "ClipBackbone",
    "HFClipBackbone",
    "OpenClipBackbone",
    "clip_config",
    "load_hf_clip",
    "load_open_clip",
    "openai_to_hf_state_dict",
    "clip_tokenizer",
]

logger = logging.getLogger(__name__)

CONTEXT_LENGTH = 77
BOS_ID, EOS_ID = 49406, 49407

# (width, layers, heads, mlp) per tower, in transformers' CLIPConfig terms.
ARCHS: dict[str, dict[str, Any]] = {
    # OpenAI CLIP ViT-L/14 (openai/clip-vit-large-patch14): HPS v1, aesthetic, CLIP score
    "vit-l-14": dict(
        text=(768, 12, 12, 3072), vision=(1024, 24, 16, 4096), patch=14, image=224, proj=768, act="quick_gelu"
    ),
    # ... at 336 px (openai/clip-vit-large-patch14-336): FABRIC's target similarity
    "vit-l-14-336": dict(
        text=(768, 12, 12, 3072), vision=(1024, 24, 16, 4096), patch=14, image=336, proj=768, act="quick_gelu"
    ),
    # OpenCLIP ViT-H/14 (laion/CLIP-ViT-H-14-laion2B-s32B-b79K): PickScore's backbone
    "vit-h-14": dict(
        text=(1024, 24, 16, 4096), vision=(1280, 32, 16, 5120), patch=14, image=224, proj=1024, act="gelu"
    ),
    # a few hundred kB plus the 49,408-token embedding table; for tests
    "tiny": dict(text=(32, 2, 2, 64), vision=(32, 2, 2, 64), patch=8, image=32, proj=32, act="quick_gelu"),
}  # fmt: skip


@functools.lru_cache(maxsize=1)
def clip_tokenizer():
    """The offline CLIP tokenizer, built once (it takes a few seconds)."""
    from fabric.tokenizer import offline_clip_tokenizer

    return offline_clip_tokenizer(model_max_length=CONTEXT_LENGTH)


def clip_config(arch: str):
    """A transformers ``CLIPConfig`` for one of :data:`ARCHS`."""
    from transformers import CLIPConfig

    a = ARCHS[arch]

    def tower(width, layers, heads, mlp):
        return dict(
            hidden_size=width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=mlp,
            hidden_act=a["act"],
        )

    text = tower(*a["text"]) | dict(
        vocab_size=49408,
        max_position_embeddings=CONTEXT_LENGTH,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
    )
    vision = tower(*a["vision"]) | dict(image_size=a["image"], patch_size=a["patch"])
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=a["proj"])


class ClipBackbone(ImageEncoder):
    """A CLIP model with its preprocessing and tokenizer.

    Attributes:
        model: the wrapped ``torch.nn.Module`` (eval mode, no gradients).
        preprocess: the image recipe (size taken from the model).
        logit_scale: the learned temperature, ``exp(logit_scale)`` (100 for trained CLIPs).
    """

    def __init__(self, model: Any, preprocess: ImagePreprocess, device: torch.device, dtype: torch.dtype):
        # Any: a transformers CLIPModel or an open_clip CLIP, whose attributes torch's typing cannot see
        self.model: Any = model
        self.preprocess, self.device, self.dtype = preprocess, device, dtype
        self.logit_scale = float(model.logit_scale.detach().float().exp())

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``[m, 77]`` token ids and attention mask (start, text, end, then end-token padding)."""
        encoded = clip_tokenizer()(
            list(prompts), padding="max_length", truncation=True, max_length=CONTEXT_LENGTH, return_tensors="pt"
        )
        return encoded["input_ids"], encoded["attention_mask"]

    def _text_features(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def embed_texts(self, prompts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Unit-norm text embeddings, each distinct prompt encoded once.

        Returns:
            A float32 tensor of shape ``[len(prompts), d]`` on ``self.device``.
        """
        import torch

        unique = list(dict.fromkeys(prompts))
        chunks = []
        for start in range(0, len(unique), batch_size):
            ids, mask = self.tokenize(unique[start : start + batch_size])
            with torch.inference_mode():
                chunks.append(self._text_features(ids.to(self.device), mask.to(self.device)).float())
        features = torch.nn.functional.normalize(torch.cat(chunks), dim=-1)
        index = {p: i for i, p in enumerate(unique)}
        return features[torch.tensor([index[p] for p in prompts], device=features.device)]


class HFClipBackbone(ClipBackbone):
    """transformers ``CLIPModel`` (PickScore, HPS v1, aesthetic, CLIP score, target)."""

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return output_tensor(self.model.get_image_features(pixel_values=pixels))

    def _text_features(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return output_tensor(self.model.get_text_features(input_ids=ids, attention_mask=mask))


class OpenClipBackbone(ClipBackbone):
    """open_clip ``CLIP`` (HPS v2 / v2.1)."""

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = super().tokenize(prompts)
        # open_clip's own tokenizer pads with 0 after the end token
        after_end = (ids == EOS_ID).int().cumsum(-1) > 1
        return ids.masked_fill(after_end, 0), mask

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def _text_features(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(ids)


def load_hf_clip(
    resolved: ResolvedWeights, arch: str, *, device: torch.device, dtype: torch.dtype, checkpoint_key: str | None = None
) -> HFClipBackbone:
    """A transformers CLIP from resolved weights (shared with other objectives while alive).

    Args:
        resolved: tiny / random / file / folder / hub weights.
        arch: the architecture of :data:`ARCHS` that random weights and bare state-dict files
            (HF or OpenAI key layout) are built with; ignored for folders and hub ids.
        device: target device.
        dtype: model dtype.
        checkpoint_key: key of the state dict inside a checkpoint file (HPS v1: ``"state_dict"``).
    """
    arch = "tiny" if resolved.kind == "tiny" else arch

    def build() -> HFClipBackbone:
        from transformers import CLIPModel

        model = load_hf_model(
            CLIPModel,
            lambda: clip_config(arch),
            resolved,
            device=device,
            dtype=dtype,
            convert=openai_to_hf_state_dict,
            checkpoint_key=checkpoint_key,
        )
        preprocess = openai_clip().with_size(model.config.vision_config.image_size)
        return HFClipBackbone(model, preprocess, device, dtype)

    key = checkpoint_key if resolved.kind == "file" else None
    return shared(("hf-clip", arch, resolved.cache_key, key, str(device), dtype), build)


def load_open_clip(
    resolved: ResolvedWeights,
    arch: str = "ViT-H-14",
    *,
    device: torch.device,
    dtype: torch.dtype,
    checkpoint_key: str = "state_dict",
) -> OpenClipBackbone:
    """An open_clip CLIP with HPS v2's letterbox preprocessing.

    Args:
        resolved: tiny / random / file weights (HPS checkpoints are full-model state dicts,
            possibly under ``checkpoint_key``).
        arch: open_clip model name (or ``"tiny"``), used unless ``resolved`` is tiny.
        device: target device.
        dtype: model dtype.
        checkpoint_key: key of the state dict inside the checkpoint file.
    """
    arch = "tiny" if resolved.kind == "tiny" else arch

    def make():
        import open_clip
        from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

        if arch == "tiny":
            return CLIP(
                embed_dim=32,
                vision_cfg=CLIPVisionCfg(layers=2, width=32, head_width=16, mlp_ratio=2.0, patch_size=8, image_size=32),
                text_cfg=CLIPTextCfg(
                    context_length=CONTEXT_LENGTH, vocab_size=49408, width=32, heads=2, layers=2, mlp_ratio=2.0
                ),
            )
        return CLIP(**open_clip.get_model_config(arch))

    def build() -> OpenClipBackbone:
        import torch

        if resolved.kind == "file":
            objective = resolved.source.objective
            state_dict = load_state_dict(resolved.location, objective=objective, key=checkpoint_key)
            with torch.device("meta"):  # skips a 30 s random initialisation of ViT-H-14
                model = make()
            state_dict = check_fits(model.state_dict(), state_dict, objective=objective, path=resolved.location)
            model.load_state_dict(state_dict, assign=True)
            # the causal text mask is the one tensor that checkpoints do not store
            model.attn_mask = torch.full((CONTEXT_LENGTH, CONTEXT_LENGTH), float("-inf")).triu_(1)
            if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):  # another open_clip layout
                with seeded(TINY_SEED):
                    model = make()
                model.load_state_dict(state_dict)
        else:
            with seeded(TINY_SEED):
                model = make()
        model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        size = model.visual.image_size
        preprocess = hps_v2().with_size(size[0] if isinstance(size, (tuple, list)) else size)
        return OpenClipBackbone(model, preprocess, device, dtype)

    key = checkpoint_key if resolved.kind == "file" else None
    return shared(("open-clip", arch, resolved.cache_key, key, str(device), dtype), build)


def openai_to_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames an OpenAI-layout CLIP state dict (``clip`` package, open_clip) to transformers'.

    HPS v1's ``hpc.pth`` is a fine-tuned OpenAI ViT-L/14 in this layout. Fused attention
    projections are split into q/k/v and ``x @ proj`` matrices are transposed into
    ``nn.Linear`` weights. Dicts already in transformers' layout are returned unchanged.
    """
    if "visual.conv1.weight" not in state_dict:
        return state_dict
    out: dict[str, torch.Tensor] = {}

    def block(src: str, dst: str) -> None:
        for name, tensor in state_dict.items():
            if not name.startswith(src):
                continue
            layer, rest = name[len(src) :].split(".", 1)
            prefix = f"{dst}.{layer}."
            if rest.startswith("attn.in_proj_"):
                kind = rest.rsplit("_", 1)[1]  # weight | bias
                for part, chunk in zip("qkv", tensor.chunk(3, dim=0)):
                    out[f"{prefix}self_attn.{part}_proj.{kind}"] = chunk
                continue
            for old, new in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                             ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):  # fmt: skip
                if rest.startswith(old):
                    out[prefix + new + rest[len(old) :]] = tensor

    block("visual.transformer.resblocks.", "vision_model.encoder.layers")
    block("transformer.resblocks.", "text_model.encoder.layers")
    renames = {
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",  # sic, transformers' name
        "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "visual.ln_post.weight": "vision_model.post_layernorm.weight",
        "visual.ln_post.bias": "vision_model.post_layernorm.bias",
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight",
        "ln_final.bias": "text_model.final_layer_norm.bias",
        "logit_scale": "logit_scale",
    }
    for old, new in renames.items():
        if old in state_dict:
            out[new] = state_dict[old]
    for old, new in (("visual.proj", "visual_projection.weight"), ("text_projection", "text_projection.weight")):
        if old in state_dict:
            out[new] = state_dict[old].t().contiguous()
    return out
