"""The web front end of fabric-opt (``fabric-opt app``): FABRIC rounds in the browser and
presets tuned from a person's choices.

Layers: it may import every package below it (``fabric``, ``objectives``, ``optimize``, ...) but
not the command line (``fabric_opt_cli``), which starts it. Web code lives in :mod:`fabric_opt_app.ui`
only; :mod:`fabric_opt_app.session`, :mod:`fabric_opt_app.tune` and :mod:`fabric_opt_app.backend`
are plain Python that tests and scripts drive without a browser. Gradio is imported only when the
page is built, so importing this package stays cheap.
"""

from __future__ import annotations

__all__ = ["AppConfig", "serve"]

from fabric_opt_app.config import AppConfig


def serve(config: AppConfig, *, block: bool = True):
    """Serve the app (see :func:`fabric_opt_app.ui.serve`)."""
    from fabric_opt_app.ui import serve as _serve

    return _serve(config, block=block)
