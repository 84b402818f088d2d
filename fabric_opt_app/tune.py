"""Tune mode: a :class:`~optimize.preference.PreferenceTuner` driven by a person in the page.

A query shows one round per option, made from the person's current FABRIC session: the same
prompt, negative prompt, seeds and references (the images they liked and disliked in the Rounds
tab), each option with its own preset. The references are saved as PNG files under
``<runs_dir>/<tuner>/references/`` and the query's context names them, so a query asked before a
browser was closed or the server crashed is shown again, image for image, when the tuner is
reopened. Each tuner is also one MLflow run (``fabric-opt-app`` experiment, run ``tune-<name>``):
every query's option rounds (``query-<n>/option-<k>.png``) and ``query-<n>/query.json`` with
the answer, the recommendation after each answer (``recommended.json``), and exports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from fabric.errors import ConfigError, InvalidParameterError
from fabric.params import FabricParams
from fabric.seeds import stable_seed

if TYPE_CHECKING:
    from PIL import Image

    from fabric_opt_app.config import AppConfig
    from fabric_opt_app.session import RoundSettings, RoundsSession
    from optimize.preference import PreferenceRecommendation, PreferenceTuner, Query

__all__ = ["AppTuner", "Backend"]

logger = logging.getLogger(__name__)

_RUN_ATTR = "mlflow_run_id"


class Backend(Protocol):
    """What a tuner needs of :class:`fabric_opt_app.backend.AppBackend` (which creates tuners, so
    this module does not import it)."""

    config: AppConfig
    lock: Any

    def generator(self, model: str, progress: Callable[[str], None] | None = None) -> Any: ...


class AppTuner:
    """A preference tuner with the page's way of turning queries into rounds.

    Use :meth:`open`. Attributes: ``tuner`` (the :class:`PreferenceTuner`), ``name``.
    """

    def __init__(self, backend: Backend, tuner: PreferenceTuner, study: Any) -> None:
        from optimize.tracking import AppRun

        self.backend = backend
        self.tuner = tuner
        self.name = tuner.name
        self._study = study
        self._rounds: dict[int, list[list[Image.Image]]] = {}
        config = backend.config
        run_id = study.user_attrs.get(_RUN_ATTR) if study is not None else None
        self.run = AppRun(
            config.tracking_uri, "fabric-opt-app", f"tune-{self.name}", tags={"kind": "tune", "tuner": self.name},
            run_id=run_id,
        )  # fmt: skip

    @classmethod
    def open(cls, backend: Backend, name: str, *, options: int, base: FabricParams) -> AppTuner:
        """Create tuner ``name`` in the app's storage (``options`` per query, presets at ``base``'s
        steps and guidance), or resume it with the settings it was created with."""
        import optuna

        from optimize.preference import PreferenceConfig, PreferenceTuner
        from optimize.space import SearchSpace
        from optimize.study import StorageSpec

        spec = StorageSpec.parse(backend.config.storage, backend.config.runs_dir)
        storage = spec.open()
        exists = name in optuna.get_all_study_names(storage)
        config = None
        if not exists:
            space = SearchSpace.default(
                base=FabricParams.paper().replace(steps=base.steps, guidance_scale=base.guidance_scale)
            )
            config = PreferenceConfig(space=space, options=options)
        tuner = PreferenceTuner.open(name, storage, config)
        study = optuna.load_study(study_name=name, storage=storage)
        return cls(backend, tuner, study)

    # ---- queries -------------------------------------------------------------------------
    def ask(
        self,
        session: RoundsSession | None,
        settings: RoundSettings | None,
        *,
        progress: Callable[[int, int], None] | None = None,
        status: Callable[[str], None] | None = None,
    ) -> tuple[Query, list[list[Image.Image]]]:
        """The current query and its option rounds (the pending query again, if there is one).

        A new query is made from ``session``'s references and ``settings``' prompt; it needs at
        least one liked or disliked image, since without references every preset gives the same
        images.

        Raises:
            InvalidParameterError: a new query is needed and there are no references.
        """
        from fabric.images import image_key

        pending = self.tuner.pending
        if pending is None:
            if session is None or settings is None:
                raise InvalidParameterError("start a session in the Rounds tab first")
            liked, disliked = session.reference_images()
            if not liked and not disliked:
                raise InvalidParameterError(
                    "mark at least one image liked or disliked in the Rounds tab first: without references "
                    "FABRIC's parameters change nothing, so there is nothing to compare"
                )
            folder = (self.backend.config.runs_dir / self.name / "references").resolve()
            folder.mkdir(parents=True, exist_ok=True)

            def save(images: list[Image.Image]) -> list[str]:
                paths = []
                for image in images:
                    path = folder / f"{image_key(image)[:20]}.png"
                    if not path.is_file():
                        image.save(path)
                    paths.append(str(path))
                return paths

            index = len(self.tuner.queries)
            context = {
                "model": session.model,
                "prompt": settings.prompt,
                "negative_prompt": settings.negative_prompt,
                "seeds": [stable_seed("app-tune", self.name, index, i) % 2**31 for i in range(settings.n_images)],
                "liked": save(liked),
                "disliked": save(disliked),
            }
            pending = self.tuner.ask(context)
        return pending, self.rounds(pending, progress=progress, status=status)

    def rounds(
        self,
        query: Query,
        *,
        progress: Callable[[int, int], None] | None = None,
        status: Callable[[str], None] | None = None,
    ) -> list[list[Image.Image]]:
        """``[option][image]`` of a query (generated once per process, then kept)."""
        from fabric.images import load_images
        from optimize.preference import query_rounds

        if query.index not in self._rounds:
            ctx = query.context
            missing = [p for p in (*ctx.get("liked", ()), *ctx.get("disliked", ())) if not Path(p).is_file()]
            if missing:
                raise ConfigError(f"query {query.index + 1}: its reference image {missing[0]} is gone")
            generator = self.backend.generator(ctx["model"], progress=status)
            with self.backend.lock:
                self._rounds[query.index] = query_rounds(
                    generator,
                    query.params(self.tuner.space),
                    prompt=ctx["prompt"],
                    negative_prompt=ctx.get("negative_prompt", ""),
                    seeds=ctx["seeds"],
                    liked=load_images(ctx.get("liked", ())),
                    disliked=load_images(ctx.get("disliked", ())),
                    progress=progress,
                )
            if self.run.ensure_started() and self._study is not None:
                self._study.set_user_attr(_RUN_ATTR, self.run.run_id)
            from fabric.images import make_grid

            self.run.log_images(
                {f"query-{query.index}/option-{k}.png": make_grid(r) for k, r in enumerate(self._rounds[query.index])}
            )
        return self._rounds[query.index]

    def answer(self, query_index: int, winner: int) -> Query:
        """Store the person's answer (before anything else happens) and log it."""
        done = self.tuner.tell(query_index, winner)
        self.run.log_json(f"query-{done.index}/query.json", done.to_dict())
        self.run.log_metrics({"answers": len(self.tuner.answered)}, step=done.index)
        rec = self.recommendation()
        if rec is not None:
            self.run.log_json(
                "recommended.json",
                {"params": rec.params.to_dict(), "utility": rec.best.utility, "answers": rec.answers},
            )
        self._rounds.pop(query_index, None)
        return done

    def recommendation(self) -> PreferenceRecommendation | None:
        return self.tuner.recommend() if self.tuner.answered else None

    def export(self, format: str) -> tuple[list[Path], tuple[str, ...]]:
        """The recommended preset, written under ``<runs_dir>/<tuner>/presets/``.

        The last query's prompt, negative prompt, seeds and references go with it, so the JSON
        preset replays a round like the ones the person compared.
        """
        from optimize.export import DEFAULT_EXTENSIONS, ExportContext

        if not self.tuner.answered:
            raise InvalidParameterError("answer a query first: there is no recommendation yet")
        ctx = self.tuner.answered[-1].context
        context = ExportContext(
            prompt=ctx.get("prompt", ""),
            negative_prompt=ctx.get("negative_prompt", ""),
            seed=list(ctx["seeds"]) if format == "json" else ctx["seeds"][0],  # type: ignore[arg-type]
            model=ctx.get("model", ""),
            n_images=len(ctx["seeds"]),
            liked=tuple(ctx.get("liked", ())),
            disliked=tuple(ctx.get("disliked", ())),
        )
        exported = self.tuner.export(format, context)
        out = (
            self.backend.config.runs_dir
            / self.name
            / "presets"
            / f"{self.name}{DEFAULT_EXTENSIONS.get(format, '.' + format)}"
        )
        files = exported.write(out)
        self.run.log_json(f"exports/{format}.json", {"files": [str(f) for f in files], "notes": list(exported.notes)})
        return files, exported.notes
