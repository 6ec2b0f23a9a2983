"""The ``distillguard`` command: one Typer sub-app per capability, each in its own module.

Sub-app modules only parse arguments and call library functions; they import heavy libraries
(torch, transformers) inside the commands so that ``--help`` stays fast. Errors raised on
purpose (``DistillGuardError``) are translated here, once: a message on stderr and the
error's exit code.
"""

from __future__ import annotations

import sys

import typer

from distillguard.cli import (
    accounts,
    distill,
    gateway,
    intel,
    model,
    monitor,
    prevent,
    prove,
    sim,
    watermark,
)
from distillguard.errors import DistillGuardError

app = typer.Typer(
    name="distillguard",
    help="Detect, prevent and prove unauthorized knowledge distillation through an LLM API.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.command("version")
def show_version() -> None:
    """Print distillguard's version."""
    from distillguard import __version__

    typer.echo(__version__)


for _module in (model, gateway, accounts, watermark, monitor, distill, prove, sim, intel, prevent):
    _module.register(app)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except DistillGuardError as exc:
        typer.secho(f"error: {exc.message}", fg=typer.colors.RED, err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)
