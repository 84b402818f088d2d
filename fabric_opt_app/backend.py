"""What the web page calls: models, presets, sessions and tuners, without any web code.

One :class:`AppBackend` serves every browser tab of one ``fabric-opt app`` process. Generation
is serialised by one lock (one model in memory at a time; a different model replaces it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fabric.errors import ConfigError, FabricOptError
from fabric.params import FabricParams
from fabric_opt_app.config import AppConfig
from fabric_opt_app.session import RoundsSession

__all__ = ["AppBackend", "PresetChoice", "BUILTIN_PRESETS"]

logger = logging.getLogger(__name__)

#: label -> parameters of the presets every page offers
BUILTIN_PRESETS: dict[str, FabricParams] = {
    "paper (FABRIC paper's evaluation defaults)": FabricParams.paper(),
    "a1111 (sd-webui-fabric defaults)": FabricParams.a1111(),
}


@dataclass(frozen=True)
class PresetChoice:
    """An entry of the preset menu: a built-in preset or a preset file."""

    label: str
    params: FabricParams | None = None  # built-in
    path: Path | None = None  # a fabric-opt preset file


class AppBackend:
    """Models, presets, sessions and tuners of one app process.

    Args:
        config: the app's settings.
    """

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        self.lock = threading.RLock()
        self._generator: Any = None
        self._generator_model: str | None = None
        self.sessions: dict[str, RoundsSession] = {}
        self._tuners: dict[tuple[str, str], Any] = {}

    # ---- models --------------------------------------------------------------------------
    def generator(self, model: str, progress: Callable[[str], None] | None = None) -> Any:
        """The generator of ``model`` (loaded on first use; a new model replaces the old one).

        Raises:
            ModelLoadError: an unknown model name, a missing folder or an unreadable checkpoint.
        """
        model = model.strip()
        if not model:
            raise ConfigError("no model: give a model name (toy, tiny), a hub id or a path")
        with self.lock:
            if self._generator is not None and self._generator_model == model:
                return self._generator
            if progress is not None:
                progress(f"loading model {model}")
            from fabric.devices import default_placement
            from fabric.fabric_generator import FabricGenerator

            device, dtype = default_placement(self.config.device, self.config.dtype)
            self._generator = None  # free the old model before loading the new one
            self._generator = FabricGenerator.from_pretrained(model, device=device, dtype=dtype, plain_cache_size=16)
            self._generator_model = model
            logger.info("loaded model %s on %s", model, device)
            return self._generator

    # ---- presets -------------------------------------------------------------------------
    def preset_choices(self) -> list[PresetChoice]:
        """The built-in presets, then preset files under the runs folder and ``preset_dirs``."""
        choices = [PresetChoice(label, params=params) for label, params in BUILTIN_PRESETS.items()]
        runs = self.config.runs_dir
        patterns = [(runs, "*/presets/*.json"), (runs, "app/*/export/*.json")]
        patterns += [(d, "*.json") for d in self.config.preset_dirs]
        seen: set[Path] = set()
        for folder, pattern in patterns:
            if not folder.is_dir():
                continue
            for path in sorted(folder.glob(pattern)):
                path = path.resolve()
                if path in seen or not _looks_like_preset(path):
                    continue
                seen.add(path)
                try:
                    label = str(path.relative_to(Path.cwd()))
                except ValueError:
                    label = str(path)
                choices.append(PresetChoice(label, path=path))
        return choices

    def load_preset(self, label_or_path: str | Path) -> tuple[FabricParams, dict[str, Any], str]:
        """The parameters of a menu entry or a preset file, the file's other fields (prompt,
        negative prompt, ...) and a short label.

        Raises:
            ConfigError: not a menu entry, a missing file, or not a valid fabric-opt preset.
        """
        from fabric.preset import read_preset

        for choice in self.preset_choices():
            if choice.label == str(label_or_path):
                if choice.params is not None:
                    return choice.params, {}, choice.label.split(" ")[0]
                label_or_path = choice.path  # type: ignore[assignment]
                break
        path = Path(label_or_path)
        if not path.suffix.lower() == ".json":
            raise ConfigError(f"{path.name}: a preset is a fabric-opt .json file (fabric-opt export --format json)")
        data = read_preset(path)
        params = data.pop("params")
        return params, data, path.name

    # ---- sessions ------------------------------------------------------------------------
    def new_session(self, model: str) -> RoundsSession:
        from optimize.tracking import AppRun

        session = RoundsSession(model, export_dir=self.config.runs_dir / "app")
        session.export_dir = self.config.runs_dir / "app" / session.id
        session.run = AppRun(
            self.config.tracking_uri,
            "fabric-opt-app",
            f"session-{session.id}",
            tags={"kind": "rounds", "session": session.id},
        )
        self.sessions[session.id] = session
        return session

    def session(self, session_id: str | None, model: str) -> RoundsSession:
        """The session of a browser tab, created on first use."""
        if session_id and session_id in self.sessions:
            return self.sessions[session_id]
        return self.new_session(model)

    # ---- tuners --------------------------------------------------------------------------
    def tuner(self, name: str, *, options: int, base: FabricParams) -> Any:
        """The :class:`~fabric_opt_app.tune.AppTuner` called ``name`` (created or resumed).

        Args:
            name: the tuner's name in the Optuna storage.
            options: presets per query, for a new tuner.
            base: steps and guidance of a new tuner's presets (the page's current ones).
        """
        from fabric_opt_app.tune import AppTuner

        name = name.strip()
        if not name:
            raise ConfigError("give the tuner a name")
        key = (name, str(self.config.storage))
        with self.lock:
            if key not in self._tuners:
                self._tuners[key] = AppTuner.open(self, name, options=options, base=base)
            return self._tuners[key]

    def forget_tuner(self, name: str) -> None:
        """Drop a tuner from memory (the next use reopens it from the storage, as after a restart)."""
        self._tuners.pop((name.strip(), str(self.config.storage)), None)


def _looks_like_preset(path: Path) -> bool:
    try:
        head = path.read_text(encoding="utf-8", errors="replace")[:4000]
    except OSError:
        return False
    return '"fabric-opt.preset"' in head


def user_message(exc: BaseException) -> str:
    """One line for the page: the library's message for user errors, the type and first line otherwise."""
    if isinstance(exc, FabricOptError):
        return str(exc)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"internal error ({type(exc).__name__}: {first[:200]}); details are in the server's log"
