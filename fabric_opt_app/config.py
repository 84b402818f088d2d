"""The web app's settings: what to serve, where, and where sessions and answers are kept."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from fabric.checks import check_int
from fabric.errors import ConfigError

__all__ = ["AppConfig", "is_loopback"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class AppConfig:
    """Settings of ``fabric-opt app``. Validated on construction.

    Args:
        model: the model preselected in the page (``"toy"``, ``"tiny"``, a hub id, a path).
        device, dtype: where models run (``None``: CUDA/fp16 when available, else CPU/fp32).
        host: the address to bind; only loopback addresses are allowed without a password.
        port: the port (0: a free one).
        password: required to serve on a non-loopback address; the login page asks for
            ``user`` and it.
        user: the login name that goes with ``password``.
        runs_dir: where sessions export and tuners keep reference images (``runs/``).
        storage: Optuna storage of the preference tuners (default ``<runs_dir>/optuna.journal``).
        tracking_uri: MLflow tracking URI for sessions and tuners (``None``: no logging).
        preset_dirs: extra folders whose ``*.json`` presets the preset menu lists (it lists
            ``<runs_dir>/*/presets/*.json`` and ``<runs_dir>/app/*/export/*.json`` always).
        tuner: the default name of the preference tuner in the Tune tab.
        n_images: images per round preselected in the page.
    """

    model: str = "tiny"
    device: str | None = None
    dtype: str | None = None
    host: str = "127.0.0.1"
    port: int = 7860
    password: str | None = None
    user: str = "fabric"
    runs_dir: Path = Path("runs")
    storage: str | None = None
    tracking_uri: str | None = "sqlite:///mlflow.db"
    preset_dirs: tuple[Path, ...] = field(default_factory=tuple)
    tuner: str = "app-tune"
    n_images: int = 4

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError("model must be a model name or path", option="model")
        check_int("port", self.port, minimum=0, error=ConfigError)
        if self.port > 65535:
            raise ConfigError(f"port must be at most 65535, got {self.port}", option="port")
        if not isinstance(self.host, str) or not self.host.strip():
            raise ConfigError("host must be an address, e.g. 127.0.0.1", option="host")
        if self.password is not None and not self.password:
            raise ConfigError("the password must not be empty", option="password")
        if not is_loopback(self.host) and self.password is None:
            raise ConfigError(
                f"serving on {self.host} lets other machines in: set a password (or bind 127.0.0.1, the default)",
                option="password",
                example="SECRET",
            )
        if not isinstance(self.user, str) or not self.user.strip():
            raise ConfigError("user must not be empty", option="user")
        check_int("n_images", self.n_images, minimum=1, error=ConfigError)
        if not isinstance(self.tuner, str) or not self.tuner.strip():
            raise ConfigError("the tuner needs a name", option="tuner")
        object.__setattr__(self, "runs_dir", Path(self.runs_dir))
        object.__setattr__(self, "preset_dirs", tuple(Path(p) for p in self.preset_dirs))

    @property
    def needs_login(self) -> bool:
        return self.password is not None
