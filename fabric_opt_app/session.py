"""A person's FABRIC session: rounds of images, likes and dislikes, undo, reset, export.

:class:`RoundsSession` is what the web app shows, without the web: tests and scripts drive it
directly. Each round is generated with the references marked so far (every liked and disliked
image of earlier rounds, and uploaded images, in the order they were marked; the generator uses
the most recent ``params.max_references`` of each). Every action (a round, a mark, an upload, a
reset) can be undone: the session keeps a snapshot of its state before each one. Everything is
logged to one MLflow run (:class:`optimize.tracking.AppRun`), and the session can be exported as
a preset plus its reference images in any export format (:mod:`optimize.export`); the JSON
preset replays the next round with ``fabric-opt generate --preset``.
"""

from __future__ import annotations

import copy
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fabric.checks import check_int
from fabric.errors import ConfigError, InvalidParameterError
from fabric.params import FabricParams

if TYPE_CHECKING:
    from PIL import Image

    from optimize.export import Export
    from optimize.tracking import AppRun

__all__ = ["Mark", "RoundSettings", "Round", "Reference", "RoundsSession", "ExportedSession", "marked_grid"]

logger = logging.getLogger(__name__)

Mark = Literal["liked", "disliked"]
_MARKS = ("liked", "disliked")
_MAX_UNDO = 50


@dataclass(frozen=True)
class RoundSettings:
    """What the person chose for the next round. Validated on construction.

    Attributes:
        prompt: the prompt (not empty).
        negative_prompt: the negative prompt.
        n_images: images per round (1..16).
        params: the FABRIC parameters.
        preset: the label of the preset the parameters came from (``"paper"``, a file name, ...).
        seed: the first image's seed; image ``i`` gets ``seed + i``.
    """

    prompt: str
    negative_prompt: str = ""
    n_images: int = 4
    params: FabricParams = field(default_factory=FabricParams)
    preset: str = "paper"
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InvalidParameterError("the prompt is empty; write what the images should show")
        if not isinstance(self.negative_prompt, str):
            raise InvalidParameterError("the negative prompt must be text")
        check_int("n_images", self.n_images, minimum=1)
        if self.n_images > 16:
            raise InvalidParameterError(f"n_images must be at most 16 per round, got {self.n_images}")
        check_int("seed", self.seed, minimum=0)
        if self.seed + self.n_images > 2**63:
            raise InvalidParameterError(f"seed must be below 2**63 - n_images, got {self.seed}")
        if not isinstance(self.params, FabricParams):
            raise InvalidParameterError(f"params must be FabricParams, got {type(self.params).__name__}")

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.n_images)]


@dataclass(frozen=True)
class Reference:
    """A marked image: ``(round, image)`` of a round of this session, or an upload (``round = -1``).

    Attributes:
        round: the round's number, ``-1`` for an uploaded image.
        image: the image's position in its round (or in the uploads).
        mark: ``"liked"`` or ``"disliked"``.
        label: how the page names it (``"round 1 image 3"``, ``"upload 1 (cat.png)"``).
    """

    round: int
    image: int
    mark: Mark
    label: str


@dataclass
class Round:
    """One generated round.

    Attributes:
        number: 1, 2, ... in the order rounds were generated in this session (never reused, so
            MLflow artifacts of an undone round are not overwritten).
        settings: prompt, parameters, seeds.
        images: the images, in seed order.
        liked, disliked: the references this round was generated with (labels).
        model: the model that made it.
        seconds: how long it took.
    """

    number: int
    settings: RoundSettings
    images: list[Image.Image]
    liked: tuple[str, ...]
    disliked: tuple[str, ...]
    model: str
    seconds: float = 0.0

    def describe(self) -> dict[str, Any]:
        """JSON for the page, ``session.json`` and MLflow."""
        s = self.settings
        return {
            "round": self.number,
            "model": self.model,
            "prompt": s.prompt,
            "negative_prompt": s.negative_prompt,
            "preset": s.preset,
            "seeds": s.seeds,
            "params": s.params.to_dict(),
            "liked": list(self.liked),
            "disliked": list(self.disliked),
            "seconds": round(self.seconds, 2),
        }


@dataclass(frozen=True)
class ExportedSession:
    """What :meth:`RoundsSession.export` wrote."""

    files: tuple[Path, ...]
    notes: tuple[str, ...]
    export: Export


@dataclass
class _State:
    rounds: list[Round] = field(default_factory=list)
    marks: dict[tuple[int, int], Mark] = field(default_factory=dict)  # (round, image) -> mark, in marking order
    uploads: list[Image.Image] = field(default_factory=list)
    upload_names: list[str] = field(default_factory=list)


class RoundsSession:
    """Rounds of FABRIC feedback for one person (see module docs).

    Args:
        model: the model name the rounds are generated with (``"toy"``, a hub id, a path).
        run: where the session is logged (``None``: nowhere).
        export_dir: folder for exports (default ``runs/app/<id>``).
    """

    def __init__(self, model: str, *, run: AppRun | None = None, export_dir: str | Path | None = None) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.model = model
        self.run = run
        self.export_dir = Path(export_dir) if export_dir is not None else Path("runs") / "app" / self.id
        self.state = _State()
        self._generated = 0  # rounds generated, undone ones included: numbers are never reused
        self._undo: list[tuple[str, _State]] = []
        self.events: list[dict[str, Any]] = []

    # ---- views ---------------------------------------------------------------------------
    @property
    def rounds(self) -> list[Round]:
        return self.state.rounds

    @property
    def last(self) -> Round | None:
        return self.state.rounds[-1] if self.state.rounds else None

    def references(self) -> list[Reference]:
        """Every marked image, in marking order."""
        out = []
        for (r, i), mark in self.state.marks.items():
            out.append(Reference(r, i, mark, self._label(r, i)))
        return out

    def reference_images(self) -> tuple[list[Image.Image], list[Image.Image]]:
        """The liked and the disliked images, in marking order (the most recent last)."""
        liked: list[Image.Image] = []
        disliked: list[Image.Image] = []
        for ref in self.references():
            (liked if ref.mark == "liked" else disliked).append(self._image(ref.round, ref.image))
        return liked, disliked

    def mark_of(self, round_number: int, image: int) -> Mark | None:
        return self.state.marks.get((round_number, image))

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    # ---- actions -------------------------------------------------------------------------
    def generate(
        self,
        generator: Any,
        settings: RoundSettings,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> Round:
        """Generate the next round with the references marked so far.

        Args:
            generator: a :class:`~fabric.fabric_generator.FabricGenerator`.
            settings: prompt, parameters, seeds.
            progress: ``progress(step, total)`` after every denoising step.
        """
        if not isinstance(settings, RoundSettings):
            raise ConfigError(f"settings must be RoundSettings, got {type(settings).__name__}")
        liked, disliked = self.reference_images()
        refs = self.references()
        start = time.perf_counter()
        images = generator.generate(
            settings.prompt,
            negative_prompt=settings.negative_prompt,
            liked=liked,
            disliked=disliked,
            params=settings.params,
            n_images=settings.n_images,
            seed=settings.seeds,
            progress=progress,
        )
        self._checkpoint("round")
        self._generated += 1
        number = self._generated
        new = Round(
            number,
            settings,
            list(images),
            tuple(r.label for r in refs if r.mark == "liked"),
            tuple(r.label for r in refs if r.mark == "disliked"),
            self.model,
            time.perf_counter() - start,
        )
        self.state.rounds.append(new)
        self._event("round", round=number)
        if self.run is not None:
            self.run.set_tags({"kind": "rounds", "model": self.model, "prompt": settings.prompt[:500]})
            self.run.log_images({f"round-{number}/image-{k}.png": im for k, im in enumerate(new.images)})
            self._log_state(rounds=[new])
        return new

    def toggle(self, round_number: int, image: int, mark: Mark) -> Mark | None:
        """A click on an image: mark it ``mark``, or clear the mark when it has that one already.

        Returns:
            The image's mark afterwards.
        """
        current = self.mark_of(round_number, image)
        return self.set_mark(round_number, image, None if current == mark else mark)

    def set_mark(self, round_number: int, image: int, mark: Mark | None) -> Mark | None:
        """Mark image ``image`` of round ``round_number`` liked, disliked or nothing (``None``)."""
        if mark is not None and mark not in _MARKS:
            raise InvalidParameterError(f"a mark is 'liked' or 'disliked', got {mark!r}")
        self._image(round_number, image)  # raises on an unknown image
        self._checkpoint("mark")
        self.state.marks.pop((round_number, image), None)
        if mark is not None:
            self.state.marks[(round_number, image)] = mark  # re-marking moves it to the end: most recent
        self._event("mark", round=round_number, image=image, mark=mark)
        self._log_state(rounds=[r for r in self.state.rounds if r.number == round_number])
        return mark

    def add_uploads(self, images: Sequence[Image.Image], names: Sequence[str], mark: Mark) -> list[Reference]:
        """Add the person's own images as references (already loaded and checked)."""
        if mark not in _MARKS:
            raise InvalidParameterError(f"a mark is 'liked' or 'disliked', got {mark!r}")
        if not images:
            raise InvalidParameterError("no images to add")
        self._checkpoint("upload")
        added = []
        for image, name in zip(images, names):
            k = len(self.state.uploads)
            self.state.uploads.append(image)
            self.state.upload_names.append(name)
            self.state.marks[(-1, k)] = mark
            added.append(Reference(-1, k, mark, self._label(-1, k)))
        self._event("upload", names=list(names), mark=mark)
        if self.run is not None:
            self.run.log_images({f"uploads/upload-{r.image}.png": self.state.uploads[r.image] for r in added})
        self._log_state()
        return added

    def reset(self) -> None:
        """Forget every round and reference (undo brings them back)."""
        self._checkpoint("reset")
        self.state = _State()
        self._event("reset")
        self._log_state()

    def undo(self) -> str:
        """Undo the last action; returns what was undone (``"round"``, ``"mark"``, ...).

        Raises:
            InvalidParameterError: nothing to undo.
        """
        if not self._undo:
            raise InvalidParameterError("nothing to undo")
        what, state = self._undo.pop()
        self.state = state
        self._event("undo", undone=what)
        self._log_state()
        return what

    # ---- export --------------------------------------------------------------------------
    def export(self, format: str, settings: RoundSettings, out_dir: str | Path | None = None) -> ExportedSession:
        """The session as a preset for the next round: ``settings`` (parameters, prompt, seeds)
        plus the references marked so far, saved as PNG files beside the preset.

        The ``json`` preset replays the next round exactly: ``fabric-opt generate --preset FILE``
        (it carries the per-image seeds and the reference paths). The other formats carry what
        their frontend can (:mod:`optimize.export` notes the rest).
        """
        from optimize.export import DEFAULT_EXTENSIONS, ExportContext, available_formats, export_params

        if format not in available_formats():
            raise ConfigError(f"unknown export format {format!r}; known: {', '.join(available_formats())}")
        out = Path(out_dir) if out_dir is not None else self.export_dir / "export"
        refs_dir = out / "references"
        refs_dir.mkdir(parents=True, exist_ok=True)
        liked: list[str] = []
        disliked: list[str] = []
        for ref in self.references():
            name = f"{ref.mark}-{'upload' if ref.round < 0 else f'round{ref.round}'}-{ref.image}.png"
            path = (refs_dir / name).resolve()
            self._image(ref.round, ref.image).save(path)
            (liked if ref.mark == "liked" else disliked).append(str(path))
        context = ExportContext(
            prompt=settings.prompt,
            negative_prompt=settings.negative_prompt,
            # per-image seeds for the JSON preset (fabric-opt replays them); the frontends take one
            seed=settings.seeds if format == "json" else settings.seed,  # type: ignore[arg-type]
            model=self.model,
            n_images=settings.n_images,
            liked=tuple(liked),
            disliked=tuple(disliked),
            source={"app_session": self.id, "rounds": len(self.state.rounds), "preset": settings.preset},
        )
        exported = export_params(settings.params, format, context)
        files = exported.write(out / f"session{DEFAULT_EXTENSIONS.get(format, '.' + format)}")
        self._event("export", format=format, files=[str(f) for f in files])
        if self.run is not None:
            self.run.log_json(
                f"exports/session-{format}.json", {"files": [str(f) for f in files], "notes": list(exported.notes)}
            )
        return ExportedSession(tuple(files), exported.notes, exported)

    # ---- records -------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """The session as JSON: rounds (settings, references used, marks) and events."""
        return {
            "session": self.id,
            "model": self.model,
            "rounds": [
                {
                    **r.describe(),
                    "marks": {str(i): m for (n, i), m in self.state.marks.items() if n == r.number},
                }
                for r in self.state.rounds
            ],
            "references": [
                {"round": ref.round, "image": ref.image, "mark": ref.mark, "label": ref.label}
                for ref in self.references()
            ],
            "uploads": list(self.state.upload_names),
            "events": list(self.events),
        }

    def _log_state(self, rounds: Sequence[Round] = ()) -> None:
        if self.run is None or (not self.state.rounds and not self.events):
            return
        if rounds:
            self.run.log_images({f"round-{r.number}/marked.png": self._marked(r) for r in rounds})
        liked, disliked = self.reference_images()
        step = self.state.rounds[-1].number if self.state.rounds else 0
        self.run.log_metrics({"liked": len(liked), "disliked": len(disliked), "rounds": len(self.rounds)}, step=step)
        self.run.log_json("session.json", self.describe())

    def _marked(self, r: Round) -> Image.Image:
        marks = [self.state.marks.get((r.number, i)) for i in range(len(r.images))]
        return marked_grid(r.images, marks)

    def _checkpoint(self, what: str) -> None:
        state = _State(
            rounds=list(self.state.rounds),
            marks=dict(self.state.marks),
            uploads=list(self.state.uploads),
            upload_names=list(self.state.upload_names),
        )
        self._undo.append((what, state))
        del self._undo[:-_MAX_UNDO]

    def _event(self, kind: str, **data: Any) -> None:
        self.events.append({"event": kind, "time": round(time.time(), 3), **copy.deepcopy(data)})

    def _image(self, round_number: int, image: int) -> Image.Image:
        if round_number == -1:
            if not 0 <= image < len(self.state.uploads):
                raise InvalidParameterError(f"no uploaded image {image + 1}")
            return self.state.uploads[image]
        for r in self.state.rounds:
            if r.number == round_number:
                if not 0 <= image < len(r.images):
                    raise InvalidParameterError(f"round {round_number} has no image {image + 1}")
                return r.images[image]
        raise InvalidParameterError(f"no round {round_number} in this session")

    def _label(self, round_number: int, image: int) -> str:
        if round_number == -1:
            return f"upload {image + 1} ({self.state.upload_names[image]})"
        return f"round {round_number} image {image + 1}"


def marked_grid(images: Sequence[Image.Image], marks: Sequence[Mark | None], *, size: int = 160) -> Image.Image:
    """The images side by side, each framed green (liked), red (disliked) or grey.

    Returns:
        An RGB image ``len(images) * (size + 8)`` wide.
    """
    from PIL import Image, ImageDraw

    colours = {"liked": (34, 160, 60), "disliked": (200, 40, 40), None: (200, 200, 200)}
    pad = 4
    grid = Image.new("RGB", (len(images) * (size + 2 * pad), size + 2 * pad), "white")
    draw = ImageDraw.Draw(grid)
    for i, (image, mark) in enumerate(zip(images, marks)):
        x = i * (size + 2 * pad)
        draw.rectangle([x, 0, x + size + 2 * pad - 1, size + 2 * pad - 1], fill=colours[mark])
        tile = image.convert("RGB").resize((size, size), Image.Resampling.NEAREST)
        grid.paste(tile, (x + pad, pad))
    return grid
