"""Reward models of the toy world: an attribute classifier and a tiny contrastive model.

* :class:`AttributeClassifier` -- a small CNN with one head per attribute: which shape colours
  are present (multi-label), which shape kinds, which sizes, the background (one of six) and the
  number of shapes. Simulated user tastes (:data:`TASTES`: "likes warm colours", "likes stars",
  "dislikes clutter", ...) are read off its probabilities.
* :class:`ToyClip` -- a CLIP-like pair of encoders trained contrastively on (scene, caption)
  pairs. ``100 * cos(image, text)`` is a PickScore-like prompt-adherence score;
  ``100 * cos(image, image)`` serves target similarity and in-batch diversity.

Both see 64x64 images in ``[-1, 1]`` and are trained with blur and noise augmentation so that
they also read the (softer) images of the toy diffusion model. Weights ship in
``toyworld/weights/`` (``python -m toyworld.train --only rewards`` reproduces them).
The registry entries (``toy-clip``, ``toy-taste``, ...) live in ``objectives/toy.py``.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from fabric.errors import InvalidParameterError, ModelLoadError, WeightsNotFoundError
from toyworld.scenes import BACKGROUNDS, COLOURS, COOL_COLOURS, IMAGE_SIZE, SHAPES, SIZES, WARM_COLOURS, Scene

if TYPE_CHECKING:
    from PIL import Image

    from toyworld.data import TrainConfig

__all__ = [
    "HEADS",
    "TASTES",
    "Taste",
    "VOCAB",
    "AttributeClassifier",
    "ToyClip",
    "classifier_accuracy",
    "images_to_tensor",
    "scene_targets",
    "tokenize_words",
    "load_attribute_classifier",
    "load_toy_clip",
    "taste_names",
    "get_taste",
    "train_rewards",
]

logger = logging.getLogger(__name__)

_WEIGHTS_DIR = Path(__file__).with_name("weights")

# head name -> class names; "multi" heads are presence (sigmoid), the others one-of (softmax)
HEADS: dict[str, tuple[tuple[str, ...], bool]] = {
    "colour": (tuple(COLOURS), True),
    "shape": (SHAPES, True),
    "size": (tuple(SIZES), True),
    "background": (tuple(BACKGROUNDS), False),
    "count": (("one", "two"), False),
}

# Word-level vocabulary: toy captions use only these words; anything else maps to <unk>.
VOCAB: tuple[str, ...] = tuple(
    dict.fromkeys(
        ["<pad>", "<unk>", "a", "an", "and", "on", "background", "with", *COLOURS, *BACKGROUNDS, *SHAPES, *SIZES]
    )
)
_MAX_WORDS = 16
_WORD = re.compile(r"[a-z]+")


# --- preprocessing -------------------------------------------------------------------------


def images_to_tensor(images: Sequence[Image.Image], size: int = IMAGE_SIZE) -> torch.Tensor:
    """PIL images (any size/mode) -> ``n x 3 x size x size`` float32 in ``[-1, 1]``."""
    import numpy as np
    from PIL import Image

    arrays = []
    for image in images:
        image = image.convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        arrays.append(np.asarray(image))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def tokenize_words(texts: Sequence[str]) -> torch.Tensor:
    """Captions -> ``n x 16`` int64 word ids (0 = padding, 1 = unknown word)."""
    index = {w: i for i, w in enumerate(VOCAB)}
    out = torch.zeros(len(texts), _MAX_WORDS, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [index.get(w, 1) for w in _WORD.findall(text.lower())][:_MAX_WORDS]
        out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def scene_targets(scenes: Sequence[Scene]) -> dict[str, torch.Tensor]:
    """Training targets per head: ``n x C`` 0/1 floats (multi-label) or ``n`` class indices."""
    presence = {"colour": lambda s: s.colours, "shape": lambda s: s.kinds, "size": lambda s: s.sizes}
    out: dict[str, torch.Tensor] = {}
    for head, (classes, multi) in HEADS.items():
        if multi:
            out[head] = torch.tensor([[float(c in presence[head](s)) for c in classes] for s in scenes])
        elif head == "background":
            out[head] = torch.tensor([classes.index(s.background) for s in scenes])
        else:
            out[head] = torch.tensor([s.count - 1 for s in scenes])
    return out


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random blur, noise and small brightness shifts: generated images are softer than renders."""
    n = x.shape[0]
    # per-image blur: mix each image with a 3x3 box-blurred copy
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    mix = torch.rand(n, 1, 1, 1, generator=generator)
    x = torch.lerp(x, blurred, mix)
    x = x + torch.rand(n, 1, 1, 1, generator=generator) * 0.1 * torch.randn(x.shape, generator=generator)
    x = x + 0.1 * (torch.rand(n, 3, 1, 1, generator=generator) - 0.5)
    return x.clamp(-1, 1)


def _rotate_or_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One of the 8 rotations/reflections of the square for the whole batch: no attribute of a
    scene changes under them, and the shapes' few training rotations (+-30 degrees) are widened."""
    k = int(torch.randint(4, (1,), generator=generator))
    x = torch.rot90(x, k, (2, 3))
    return x.flip(3) if bool(torch.rand(1, generator=generator) < 0.5) else x


# --- networks ------------------------------------------------------------------------------


class _ConvEncoder(nn.Module):
    """64x64 image -> ``width * 4 * 2`` features (average and max pooled, position-free).

    ``deep=False``: four convolutions, three of stride 2 (64 -> 32 -> 16 -> 8 -> 8).
    ``deep=True``: six, alternating stride 1 and 2 (64 -> 64 -> 32 -> 32 -> 16 -> 16 -> 8). The
    stride-1 layers see a small star's arms and a cross's notches at full resolution, which the
    shallow encoder blurs away (held-out shape accuracy 0.79 shallow, 0.99 deep, on renders).
    """

    def __init__(self, width: int = 32, deep: bool = False):
        super().__init__()
        if deep:
            chans = [3, width, width * 2, width * 2, width * 4, width * 4, width * 4]
            strides = [1, 2, 1, 2, 1, 2]
        else:
            chans = [3, width, width * 2, width * 4, width * 4]
            strides = [2, 2, 2, 1]
        layers: list[nn.Module] = []
        for cin, cout, stride in zip(chans[:-1], chans[1:], strides):
            layers += [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(8, cout), nn.SiLU()]
        self.net = nn.Sequential(*layers)
        self.out_dim = chans[-1] * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net(x)  # (B, C, 8, 8)
        return torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)  # (B, 2C)


class AttributeClassifier(nn.Module):
    """Predicts a scene's attributes from its image.

    Args:
        width: channels of the first conv layer.
        deep: the six-layer encoder (see :class:`_ConvEncoder`); saved configs without the key
            are the shallow one.
    """

    def __init__(self, width: int = 32, deep: bool = False):
        super().__init__()
        self.encoder = _ConvEncoder(width, deep=deep)
        self.heads = nn.ModuleDict({h: nn.Linear(self.encoder.out_dim, len(c)) for h, (c, _) in HEADS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``B x 3 x 64 x 64`` in ``[-1, 1]`` -> logits per head (``B x C``)."""
        features = self.encoder(x)
        return {h: head(features) for h, head in self.heads.items()}

    @torch.no_grad()
    def probabilities(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        """Per-head probabilities (presence for multi-label heads, a distribution otherwise)."""
        p = next(self.parameters())
        logits = self(images_to_tensor(images).to(p.device, p.dtype))
        return {h: (z.float().sigmoid() if HEADS[h][1] else z.float().softmax(-1)).cpu() for h, z in logits.items()}


class ToyClip(nn.Module):
    """A CLIP-like image/text pair for the toy world; embeddings are unit vectors of size ``dim``.

    The text side is a 2-layer transformer over word ids (:func:`tokenize_words`). Trained with
    in-batch negatives only, it does not reliably bind colours to shapes in two-shape scenes
    ("a red star and a blue circle" vs "a blue star and a red circle" score alike).
    """

    def __init__(self, width: int = 32, dim: int = 64):
        super().__init__()
        self.image_encoder = _ConvEncoder(width)
        self.image_proj = nn.Linear(self.image_encoder.out_dim, dim)
        self.word_embedding = nn.Embedding(len(VOCAB), dim, padding_idx=0)
        self.position_embedding = nn.Parameter(torch.zeros(_MAX_WORDS, dim))
        layer = nn.TransformerEncoderLayer(dim, nhead=4, dim_feedforward=2 * dim, dropout=0.0, batch_first=True)
        self.text_encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.text_proj = nn.Linear(dim, dim)
        self.logit_scale = nn.Parameter(torch.tensor(2.659))  # log(1 / 0.07), as in CLIP

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """``B x 3 x 64 x 64`` -> ``B x dim`` unit embeddings."""
        return F.normalize(self.image_proj(self.image_encoder(x)), dim=-1)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """``B x 16`` word ids -> ``B x dim`` unit embeddings (mean over non-padding words)."""
        pad = ids == 0
        pad[:, 0] = False  # an empty caption still has one (padding) token to attend to
        h = self.text_encoder(self.word_embedding(ids) + self.position_embedding, src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(h.dtype)  # (B, T, 1)
        return F.normalize(self.text_proj((h * keep).sum(1) / keep.sum(1)), dim=-1)

    @torch.no_grad()
    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        p = next(self.parameters())
        return self.encode_image(images_to_tensor(images).to(p.device, p.dtype)).float().cpu()

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        p = next(self.parameters())
        return self.encode_text(tokenize_words(texts).to(p.device)).float().cpu()


# --- tastes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Taste:
    """A simulated user's taste: a score in ``[0, 1]`` from the classifier's probabilities."""

    name: str
    description: str
    fn: Callable[[dict[str, torch.Tensor]], torch.Tensor]

    def __call__(self, probs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.fn(probs)


def _any_of(head: str, names: Sequence[str]) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    classes = HEADS[head][0]
    cols = [classes.index(n) for n in names]
    # "some shape is one of these": the most confident of the listed presences
    return lambda probs: probs[head][:, cols].amax(dim=-1)


def _class(head: str, name: str) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    col = HEADS[head][0].index(name)
    return lambda probs: probs[head][:, col]


def _build_tastes() -> dict[str, Taste]:
    tastes = {
        "warm": Taste("warm", "likes warm colours (red, orange, yellow, pink)", _any_of("colour", WARM_COLOURS)),
        "cool": Taste("cool", "likes cool colours (green, blue, purple)", _any_of("colour", COOL_COLOURS)),
        "uncluttered": Taste("uncluttered", "dislikes clutter: one shape, not two", _class("count", "one")),
        "cluttered": Taste("cluttered", "likes busy scenes: two shapes", _class("count", "two")),
        "large": Taste("large", "likes large shapes", _class("size", "large")),
        "small": Taste("small", "likes small shapes", _class("size", "small")),
    }
    for shape in SHAPES:
        tastes[f"{shape}s"] = Taste(f"{shape}s", f"likes {shape}s", _class("shape", shape))
    for colour in COLOURS:
        tastes[colour] = Taste(colour, f"likes {colour} shapes", _class("colour", colour))
    for bg in BACKGROUNDS:
        tastes[f"{bg}-background"] = Taste(f"{bg}-background", f"likes {bg} backgrounds", _class("background", bg))
    return tastes


TASTES: dict[str, Taste] = _build_tastes()


def taste_names() -> list[str]:
    """Every taste name accepted by :func:`get_taste`."""
    return sorted(TASTES)


def get_taste(name: str) -> Taste:
    """The taste called ``name`` (``"warm"``, ``"stars"``, ``"uncluttered"``, ``"red"``, ...)."""
    key = str(name).strip().lower()
    if key not in TASTES:
        raise InvalidParameterError(f"unknown taste {name!r}; choose from {', '.join(taste_names())}")
    return TASTES[key]


# --- loading -------------------------------------------------------------------------------


def _load(cls: type[nn.Module], stem: str, weights_dir: str | Path | None, device, dtype) -> nn.Module:
    from safetensors.torch import load_file

    root = Path(weights_dir) if weights_dir is not None else _WEIGHTS_DIR
    path, config_path = root / f"{stem}.safetensors", root / f"{stem}_config.json"
    if not path.is_file() or not config_path.is_file():
        raise WeightsNotFoundError(
            f"no {stem} weights in {root}; run `python -m toyworld.train --only rewards --out {root}`"
        )
    try:
        config = json.loads(config_path.read_text())
        model = cls(**config)
        model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    except (OSError, ValueError, RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"could not load {path}: {exc}".splitlines()[0]) from exc
    return model.eval().requires_grad_(False).to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=4)
def _cached(cls_name: str, weights_dir: str | None, device: str, dtype: torch.dtype) -> nn.Module:
    cls = {"classifier": AttributeClassifier, "toyclip": ToyClip}[cls_name]
    return _load(cls, cls_name, weights_dir, torch.device(device), dtype)


def load_attribute_classifier(
    weights_dir: str | Path | None = None, device="cpu", dtype=torch.float32
) -> AttributeClassifier:
    """The trained attribute classifier (cached per folder, device and dtype; do not train it)."""
    model = _cached("classifier", None if weights_dir is None else str(weights_dir), str(device), dtype)
    return cast(AttributeClassifier, model)


def load_toy_clip(weights_dir: str | Path | None = None, device="cpu", dtype=torch.float32) -> ToyClip:
    """The trained toy-clip model (cached per folder, device and dtype; do not train it)."""
    model = _cached("toyclip", None if weights_dir is None else str(weights_dir), str(device), dtype)
    return cast(ToyClip, model)


# --- training ------------------------------------------------------------------------------


def _save(model: nn.Module, config: dict, stem: str, out: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(out / f"{stem}.safetensors"))
    (out / f"{stem}_config.json").write_text(json.dumps(config) + "\n")


def classifier_accuracy(
    model: AttributeClassifier, x: torch.Tensor, targets: dict[str, torch.Tensor]
) -> dict[str, float]:
    """Per head: exact-match accuracy of the predicted set (multi-label) or class, on ``x``
    (``n x 3 x 64 x 64`` in ``[-1, 1]``) against :func:`scene_targets`."""
    with torch.no_grad():
        logits = model(x)
    out = {}
    for head, (_, multi) in HEADS.items():
        if multi:  # exact match of the predicted set
            out[head] = float(((logits[head] > 0).float() == targets[head]).all(-1).float().mean())
        else:
            out[head] = float((logits[head].argmax(-1) == targets[head]).float().mean())
    return out


def train_rewards(cfg: TrainConfig, out: Path, n_train: int = 8000, n_test: int = 1000) -> dict:
    """Train the attribute classifier and toy-clip on freshly rendered scenes; save both to ``out``.

    Returns:
        Timings and held-out accuracies (rendered test scenes from a different seed).
    """
    from toyworld.data import render_dataset, to_model_range

    if cfg.reward_steps < 50:  # quick mode: keep rendering cheap too
        n_train, n_test = 128, 64
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    images, captions, scenes = render_dataset(n_train, seed=cfg.seed + 1, split="all")
    test_images, test_captions, test_scenes = render_dataset(n_test, seed=cfg.seed + 2, split="all")
    targets, test_targets = scene_targets(scenes), scene_targets(test_scenes)
    word_ids, x_test = tokenize_words(captions), to_model_range(test_images)
    summary: dict = {}

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        classifier, clip = AttributeClassifier(deep=True), ToyClip()
    model: Any  # the classifier, then toy-clip
    for stem, model in (("classifier", classifier), ("toyclip", clip)):
        t0 = time.perf_counter()
        steps = cfg.classifier_steps if stem == "classifier" else cfg.reward_steps
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.reward_lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.reward_lr, total_steps=steps, pct_start=0.1)
        model.train()
        for step in range(steps):
            idx = torch.randint(len(images), (cfg.reward_batch,), generator=generator)
            x = _augment(to_model_range(images[idx]), generator)
            if stem == "classifier":
                x = _rotate_or_flip(x, generator)
                logits = model(x)
                loss = cast(
                    torch.Tensor,
                    sum(
                        F.binary_cross_entropy_with_logits(logits[h], targets[h][idx])
                        if HEADS[h][1]
                        else F.cross_entropy(logits[h], targets[h][idx])
                        for h in HEADS
                    ),
                )
            else:
                img, txt = model.encode_image(x), model.encode_text(word_ids[idx])
                # captions repeat within a batch: every pair with the same caption is a positive
                same = (word_ids[idx][:, None, :] == word_ids[idx][None, :, :]).all(-1).float()
                logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
                target = same / same.sum(-1, keepdim=True)
                loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if (step + 1) % 100 == 0 or step + 1 == steps:
                logger.info("%s step %d/%d loss %.4f", stem, step + 1, steps, loss.item())
        model.eval()
        stats: dict = {"seconds": time.perf_counter() - t0}
        if stem == "classifier":
            stats["test_accuracy"] = classifier_accuracy(model, x_test, test_targets)
            _save(model, {"width": 32, "deep": True}, stem, out)
        else:
            with torch.no_grad():
                img = model.encode_image(x_test)
                unique = sorted(set(test_captions))
                txt = model.encode_text(tokenize_words(unique))
                pred = (img @ txt.T).argmax(-1)
            stats["test_caption_retrieval"] = float(
                sum(unique[p] == c for p, c in zip(pred.tolist(), test_captions)) / len(test_captions)
            )
            stats["n_test_captions"] = len(unique)
            _save(model, {"width": 32, "dim": 64}, stem, out)
        logger.info("%s done: %s", stem, stats)
        summary[stem] = stats
    _cached.cache_clear()
    return summary
