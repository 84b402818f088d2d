"""Objectives of the toy world (``toyworld``): rewards that mean something on a CPU.

The toy diffusion model draws 64x64 scenes of coloured shapes; these objectives are trained on
the same world (see :mod:`toyworld.rewards`), so a study on the toy model optimises something
real in seconds, without any downloaded checkpoint:

* ``toy-clip`` -- prompt adherence, ``100 * cos`` between toy-clip image and caption embeddings
  (PickScore's role). Maximise.
* ``toy-target`` -- ``100 * cos`` of toy-clip image embeddings to target image(s); takes a target
  (``target=`` or :meth:`ToyTargetSimilarity.with_target`). Maximise.
* ``toy-diversity`` -- mean ``100 * cos`` of each image to the rest of its batch. Minimise.
* ``toy-taste`` -- a simulated user's taste from the attribute classifier, a probability in
  ``[0, 1]``: ``taste="warm"`` (likes warm colours), ``"stars"``, ``"uncluttered"`` (dislikes
  two-shape scenes), any colour (``"red"``), shape (``"circles"``), size or
  ``"<colour>-background"``. Maximise.
* ``toy-adherence`` -- prompt adherence read by the attribute classifier: the share of the
  attributes the prompt names (each shape's size, colour and kind, the number of shapes, the
  background; :func:`named_attributes`) that the image shows, in ``[0, 1]``; 1 when the prompt
  names nothing. By default the *expected* share under the classifier's probabilities
  (smoother, for studies); ``hard=True`` counts the classifier's decisions (presence > 0.5,
  the most likely background and count). Unlike ``toy-clip`` it reads partial prompts ("a
  large shape on a gray background") as they are meant. The adherence guard of the toy
  studies (``guard:`` in ``studies/toy.yaml``). Maximise.

``weights``: ``None``, ``"toy"`` or ``"tiny"`` use the weights packaged in ``toyworld/weights``;
a folder path uses the files written there by ``python -m toyworld.train --only rewards``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fabric.errors import InvalidParameterError, WeightsNotFoundError
from objectives.base import RewardModel, check_batch_size, placement
from objectives.registry import register_objective

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from toyworld.rewards import AttributeClassifier, ToyClip

__all__ = ["ToyClipScore", "ToyTargetSimilarity", "ToyDiversity", "ToyTaste", "ToyAdherence", "named_attributes"]

_PACKAGED = (None, "toy", "tiny", "default")


def _weights_dir(weights: Any) -> Path | None:
    if weights in _PACKAGED:
        return None
    return Path(weights).expanduser()


def _check(weights: Any, stem: str) -> None:
    from toyworld.model import DEFAULT_WEIGHTS_DIR

    root = _weights_dir(weights) or DEFAULT_WEIGHTS_DIR
    if not (root / f"{stem}.safetensors").is_file():
        raise WeightsNotFoundError(
            f"no toy {stem} weights in {root}; run `python -m toyworld.train --only rewards --out {root}`"
        )


def _batched_embed(fn, items: list, batch_size: int) -> torch.Tensor:
    import torch

    return torch.cat([fn(items[i : i + batch_size]) for i in range(0, len(items), batch_size)])


class _ToyClipObjective(RewardModel):
    """Shared loading for the toy-clip family."""

    def __init__(self, model: ToyClip, *, batch_size: int = 64):
        self.model = model
        self.batch_size = check_batch_size(batch_size)

    @classmethod
    def load(cls, weights: str | None = None, device: Any = "cpu", dtype: Any = None, *, batch_size: int = 64, **kw):
        from toyworld.rewards import load_toy_clip

        device, dtype = placement(device, dtype)
        return cls(load_toy_clip(_weights_dir(weights), device=device, dtype=dtype), batch_size=batch_size, **kw)

    @classmethod
    def check_weights(cls, weights: str | None = None, **options: Any) -> None:
        _check(weights, "toyclip")

    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        """``n`` images -> ``n x 64`` unit embeddings (float32, CPU)."""
        return _batched_embed(self.model.embed_images, images, self.batch_size)


@register_objective("toy-clip")
class ToyClipScore(_ToyClipObjective):
    """``100 * cos(image, prompt)`` under toy-clip: does the image show what the prompt says?"""

    typical = (30.0, 15.0)

    @classmethod  # narrower than the base on purpose: an unknown option is an error
    def load(cls, weights: str | None = None, device: Any = "cpu", dtype: Any = None, *, batch_size: int = 64):  # type: ignore[override]
        return super().load(weights, device, dtype, batch_size=batch_size)

    def _score(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        unique = sorted(set(prompts))
        text = self.model.embed_texts(unique)  # (u, 64)
        rows = text[[unique.index(p) for p in prompts]]  # (n, 64)
        return 100.0 * (self.embed_images(images) * rows).sum(-1)


@register_objective("toy-target")
class ToyTargetSimilarity(_ToyClipObjective):
    """``100 * cos`` of each image to the target image(s) under toy-clip, averaged over targets."""

    uses_prompt = False
    takes_target = True
    typical = (60.0, 20.0)

    def __init__(self, model: ToyClip, target: Any = None, *, batch_size: int = 64):
        super().__init__(model, batch_size=batch_size)
        self.target_embeddings = None  # (t, 64)
        if target is not None:
            from objectives.target import load_target_images

            self.target_embeddings = self.embed_images(load_target_images(target))

    @classmethod  # narrower than the base on purpose: an unknown option is an error
    def load(  # type: ignore[override]
        cls,
        weights: str | None = None,
        device: Any = "cpu",
        dtype: Any = None,
        *,
        target: Any = None,
        batch_size: int = 64,
    ):
        return super().load(weights, device, dtype, batch_size=batch_size, target=target)

    def with_target(self, target: Any) -> ToyTargetSimilarity:
        """A new objective for ``target`` sharing this one's model."""
        return type(self)(self.model, target, batch_size=self.batch_size)

    def _score(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        if self.target_embeddings is None:
            raise InvalidParameterError("toy-target: no target image; pass target=... or use .with_target(image)")
        return 100.0 * (self.embed_images(images) @ self.target_embeddings.T).mean(-1)


@register_objective("toy-diversity")
class ToyDiversity(_ToyClipObjective):
    """Mean ``100 * cos`` of each image to the other images of its batch (lower = more diverse)."""

    direction = "minimize"
    uses_prompt = False
    typical = (60.0, 20.0)

    @classmethod  # narrower than the base on purpose: an unknown option is an error
    def load(cls, weights: str | None = None, device: Any = "cpu", dtype: Any = None, *, batch_size: int = 64):  # type: ignore[override]
        return super().load(weights, device, dtype, batch_size=batch_size)

    def _score(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        from objectives.diversity import pairwise_similarity

        if len(images) < 2:
            raise InvalidParameterError("toy-diversity needs at least 2 images scored together (it compares them)")
        return pairwise_similarity(self.embed_images(images))


@register_objective("toy-taste")
class ToyTaste(RewardModel):
    """A simulated user: the attribute classifier's probability that the image has what they like."""

    uses_prompt = False
    typical = (0.5, 0.3)

    def __init__(self, classifier: AttributeClassifier, taste: str = "warm", *, batch_size: int = 64):
        from toyworld.rewards import get_taste

        self.classifier = classifier
        self.taste = get_taste(taste)
        self.batch_size = check_batch_size(batch_size)

    @classmethod
    def load(
        cls,
        weights: str | None = None,
        device: Any = "cpu",
        dtype: Any = None,
        *,
        taste: str = "warm",
        batch_size: int = 64,
    ) -> ToyTaste:
        from toyworld.rewards import get_taste, load_attribute_classifier

        get_taste(taste)  # an unknown taste fails before the model loads
        device, dtype = placement(device, dtype)
        return cls(
            load_attribute_classifier(_weights_dir(weights), device=device, dtype=dtype), taste, batch_size=batch_size
        )

    @classmethod
    def check_weights(cls, weights: str | None = None, **options: Any) -> None:
        _check(weights, "classifier")

    def _score(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        import torch

        scores = [
            self.taste(self.classifier.probabilities(images[i : i + self.batch_size]))
            for i in range(0, len(images), self.batch_size)
        ]
        return torch.cat(scores)

    @property
    def description(self) -> str:
        """What the simulated user likes, in words (``"likes warm colours (red, orange, ...)"``)."""
        return self.taste.description

    def __repr__(self) -> str:
        return f"ToyTaste(taste={self.taste.name!r})"


def named_attributes(prompt: str) -> dict[str, tuple[str, ...]]:
    """What a toy prompt asks for: classifier head -> the classes it names, in prompt order.

    The toy grammar is ``"a [size] [colour] (kind | shape) [and a ...] [on a <bg> background]"``
    (:func:`toyworld.scenes.caption` and its partial captions). Each shape phrase names its size,
    colour and kind when it says them (``"shape"`` names no kind); the number of phrases names
    the count (``"one"`` or ``"two"``); ``"on a blue background"`` names the background. Words
    outside the grammar are ignored, so any prompt parses (perhaps to nothing).

    Example:
        >>> named_attributes("a small red star and a shape on a blue background")
        {'size': ('small',), 'colour': ('red',), 'shape': ('star',), 'count': ('two',), 'background': ('blue',)}
    """
    import re

    from toyworld.scenes import BACKGROUNDS, COLOURS, SHAPES, SIZES

    text = " ".join(re.findall(r"[a-z]+", str(prompt).lower()))
    things, _, rest = text.partition(" on a ")
    if things.startswith("on a "):  # "on a blue background": no shape phrase
        things, rest = "", things[len("on a ") :]
    named: dict[str, list[str]] = {"size": [], "colour": [], "shape": [], "count": [], "background": []}
    phrases = 0
    for phrase in things.split(" and "):
        words = phrase.split()
        if not any(w in SHAPES or w == "shape" for w in words):
            continue
        phrases += 1
        for word in words:
            head = "size" if word in SIZES else "colour" if word in COLOURS else "shape" if word in SHAPES else None
            if head is not None and word not in named[head]:
                named[head].append(word)
    if phrases:
        named["count"].append("one" if phrases == 1 else "two")
    background = rest.removesuffix(" background").strip() if rest.endswith("background") else ""
    if background in BACKGROUNDS:
        named["background"].append(background)
    return {head: tuple(classes) for head, classes in named.items() if classes}


@register_objective("toy-adherence")
class ToyAdherence(RewardModel):
    """The share of the attributes the prompt names that the image shows (attribute classifier).

    Args:
        classifier: the toy attribute classifier.
        hard: count the classifier's decisions (presence > 0.5; the most likely background and
            count) instead of the expected share under its probabilities.
        batch_size: images per classifier call.
    """

    typical = (0.7, 0.2)

    def __init__(self, classifier: AttributeClassifier, *, hard: bool = False, batch_size: int = 64):
        if not isinstance(hard, bool):
            raise InvalidParameterError(f"toy-adherence: hard must be true or false, got {hard!r}")
        self.classifier = classifier
        self.hard = hard
        self.batch_size = check_batch_size(batch_size)

    @classmethod
    def load(
        cls,
        weights: str | None = None,
        device: Any = "cpu",
        dtype: Any = None,
        *,
        hard: bool = False,
        batch_size: int = 64,
    ) -> ToyAdherence:
        from toyworld.rewards import load_attribute_classifier

        device, dtype = placement(device, dtype)
        return cls(
            load_attribute_classifier(_weights_dir(weights), device=device, dtype=dtype),
            hard=hard,
            batch_size=batch_size,
        )

    @classmethod
    def check_weights(cls, weights: str | None = None, **options: Any) -> None:
        _check(weights, "classifier")

    def shown(self, images: list[Image.Image], prompts: list[str]) -> list[list[tuple[str, str, float]]]:
        """Per image, one ``(head, class, shown)`` per attribute its prompt names; ``shown`` is the
        classifier's probability (``hard``: its 0/1 decision) that the image shows it."""
        import torch

        from toyworld.rewards import HEADS

        chunks = [
            self.classifier.probabilities(images[i : i + self.batch_size])
            for i in range(0, len(images), self.batch_size)
        ]
        probs = {head: torch.cat([c[head] for c in chunks]) for head in HEADS}  # head -> (n, classes)
        out = []
        for row, prompt in enumerate(prompts):
            items = []
            for head, classes in named_attributes(prompt).items():
                names, multi = HEADS[head]
                p = probs[head][row]
                for cls in classes:
                    k = names.index(cls)
                    if not self.hard:
                        value = float(p[k])
                    else:
                        value = float(p[k] > 0.5) if multi else float(int(p.argmax()) == k)
                    items.append((head, cls, value))
            out.append(items)
        return out

    def _score(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        import torch

        # every named class counts once; a prompt that names nothing has nothing to miss
        rows = [sum(v for _, _, v in items) / len(items) if items else 1.0 for items in self.shown(images, prompts)]
        return torch.tensor(rows, dtype=torch.float32)

    def __repr__(self) -> str:
        return f"ToyAdherence(hard={self.hard})"
