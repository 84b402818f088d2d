"""The ``fabric-opt`` application: assembles the command modules and maps user errors to
one line on stderr and exit code 2."""

from __future__ import annotations

import logging
import os
import sys

import typer

from fabric_opt_cli.export import export
from fabric_opt_cli.generate import generate
from fabric_opt_cli.options import with_flag
from fabric_opt_cli.prefer import prefer
from fabric_opt_cli.report import report
from fabric_opt_cli.study import study
from fabric_opt_cli.webapp import webapp
from fabric_opt_cli.worker import worker

app = typer.Typer(
    name="fabric-opt",
    help="Tune FABRIC feedback for Stable Diffusion with Bayesian optimisation.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# one module per command; each imports its heavy libraries only when it runs
for _command in (generate, study, report, export, worker):
    app.command(_command.__name__)(_command)
# the web app and preferential tuning (issue #21)
app.command("app")(webapp)
app.command("prefer")(prefer)


@app.callback()
def _root() -> None:
    """Tune FABRIC feedback for Stable Diffusion with Bayesian optimisation."""


class _FlagHintFormatter(logging.Formatter):
    """Library warnings name the argument that fixes them (``extra={"option": ...}``); add the flag."""

    def format(self, record: logging.LogRecord) -> str:
        return with_flag(super().format(record), getattr(record, "option", None))


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    from fabric.errors import FabricOptError

    try:  # recent typer vendors click
        from typer._click.exceptions import ClickException
    except ImportError:  # pragma: no cover - typer on top of click
        from click import ClickException  # type: ignore[assignment]

    level = os.environ.get("FABRIC_OPT_LOG_LEVEL", "WARNING").upper()
    if not isinstance(logging.getLevelName(level), int):
        print(f"error: FABRIC_OPT_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {level!r}", file=sys.stderr)
        sys.exit(2)
    handler = logging.StreamHandler()
    handler.setFormatter(_FlagHintFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])  # no-op where logging is already set up
    try:
        code = typer.main.get_command(app).main(args=argv, prog_name="fabric-opt", standalone_mode=False)
    except FabricOptError as exc:
        parts = getattr(exc, "errors", None)  # an ErrorGroup: each part with its own flag
        if parts:
            text = f"{len(parts)} problems: " + "; ".join(with_flag(str(e), e.option, e.example) for e in parts)
        else:
            text = with_flag(str(exc), exc.option, exc.example)
        print(f"error: {text}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except ClickException as exc:  # usage errors: one line, not click's multi-line box
        print(f"error: {exc.format_message()}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
