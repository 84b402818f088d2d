"""``fabric-opt app``: the web app for FABRIC rounds and tune mode (Gradio, imported only here).

Thin: flags become an :class:`fabric_opt_app.AppConfig` (validated before anything starts), then
:func:`fabric_opt_app.serve` serves it until Ctrl-C.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fabric_opt_cli import options

__all__ = ["webapp"]


def webapp(
    model: str = options.MODEL,
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        envvar="FABRIC_OPT_APP_HOST",
        help="Address to bind. Anything but a loopback address (127.0.0.1, ::1, localhost) needs --password.",
    ),
    port: int = typer.Option(7860, "--port", envvar="FABRIC_OPT_APP_PORT", help="Port (0: a free one)."),
    password: Optional[str] = typer.Option(
        None,
        "--password",
        envvar="FABRIC_OPT_APP_PASSWORD",
        help="Ask for this password (with --user) on a login page; required off loopback. Prefer the environment "
        "variable: a flag shows in the process list.",
    ),
    user: str = typer.Option("fabric", "--user", envvar="FABRIC_OPT_APP_USER", help="Login name for --password."),
    n_images: int = typer.Option(4, "--n-images", help="Images per round preselected in the page."),
    tuner: str = typer.Option("app-tune", "--tuner", help="Default name of the preference tuner (Tune tab)."),
    preset_dir: list[Path] = typer.Option(
        [], "--preset-dir", help="Folder of .json presets for the preset menu (repeatable); <runs-dir> is searched too."
    ),
    storage: Optional[str] = options.STORAGE,
    runs_dir: Path = options.RUNS_DIR,
    tracking_uri: str = options.TRACKING_URI,
    device: Optional[str] = options.DEVICE,
    dtype: Optional[str] = options.DTYPE,
) -> None:
    """Serve the web app: generate FABRIC rounds, click images to like or dislike them, undo, reset,
    export the session; and tune a preset from your own choices (Tune tab). Binds 127.0.0.1 by default."""
    from fabric_opt_app import AppConfig, serve
    from fabric_opt_cli.console import get_console, quiet_libraries
    from optimize.study import StorageSpec
    from optimize.tracking import check_tracking_uri

    StorageSpec.parse(storage, runs_dir)  # a malformed storage fails here, not on the first tune
    config = AppConfig(
        model=model, device=device, dtype=dtype, host=host, port=port, password=password, user=user,
        runs_dir=runs_dir, storage=storage, tracking_uri=check_tracking_uri(tracking_uri),
        preset_dirs=tuple(preset_dir), tuner=tuner, n_images=n_images,
    )  # fmt: skip
    options.resolve_device_dtype(device, dtype)  # an unknown device or dtype fails before the server starts
    quiet_libraries()
    shown = f"[{host}]" if ":" in host else host
    login = f" (login: {user} and the password)" if password else ""
    get_console(stderr=True).print(f"fabric-opt app on http://{shown}:{port or '<free port>'}/{login}; Ctrl-C stops it")
    serve(config)
