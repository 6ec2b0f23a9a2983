"""CLI for the `distill` capability (filled in by its owner)."""

from __future__ import annotations

import typer


def register(root: typer.Typer) -> None:
    """Attach this capability's commands to the root app."""
