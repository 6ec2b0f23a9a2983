"""``distillguard prevent``: problems print with their solutions, bad input is one line."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from distillguard.cli import app
from distillguard.prevent.task import generate, solution


def test_problems_prints_held_out_problems_with_their_solutions() -> None:
    result = CliRunner().invoke(app, ["prevent", "problems", "--count", "2", "--seed", "4"])
    assert result.exit_code == 0, result.output
    for problem in generate(2, split="held_out", seed=4):
        assert problem.text in result.output
        assert solution(problem) in result.output


def test_bad_split_and_bad_teacher_settings_are_one_line_errors(tmp_path) -> None:
    for argv in (
        ["prevent", "problems", "--split", "test"],
        ["prevent", "build-teacher", "--out", str(tmp_path / "t"), "--steps", "0"],
        ["prevent", "grade", str(tmp_path / "missing")],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "distillguard", *argv],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode not in (0, 1), (argv, result.stderr)
        assert "error:" in result.stderr and "Traceback" not in result.stderr
