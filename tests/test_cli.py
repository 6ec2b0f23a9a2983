"""The root CLI: every command and sub-command answers --help, and errors become exit codes."""

from __future__ import annotations

import subprocess
import sys

import typer
from typer.testing import CliRunner

from distillguard.cli import app


def _command_paths() -> list[list[str]]:
    """Every command path of the Typer app, e.g. ['keys', 'revoke']."""
    root = typer.main.get_command(app)
    paths: list[list[str]] = []

    def walk(command, prefix: list[str]) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            paths.append([*prefix, name])
            walk(sub, [*prefix, name])

    walk(root, [])
    return paths


def test_every_command_answers_help() -> None:
    runner = CliRunner()
    paths = _command_paths()
    # one sub-app per capability, each with its commands
    for group in ("model", "accounts", "keys", "log", "watermark", "monitor", "distill", "prove"):
        assert [group] in paths
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output


def test_a_distillguard_error_is_a_message_and_an_exit_code(tmp_path) -> None:
    missing = tmp_path / "nope"
    result = subprocess.run(
        [sys.executable, "-m", "distillguard", "model", "info", str(missing)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode not in (0, 1)  # a DistillGuardError's own exit code, not a crash
    assert "error:" in result.stderr
    assert "Traceback" not in result.stderr
