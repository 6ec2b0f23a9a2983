"""CLI for prevention: ``prevent build-teacher``, ``prevent grade``, ``prevent problems``.

Parses options and calls ``distillguard.prevent``; torch loads inside the commands so that
``--help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

prevent_app = typer.Typer(
    help="Prevention: the arithmetic task, its teacher and what defences cost a student.",
    no_args_is_help=True,
)
console = Console()


def register(root: typer.Typer) -> None:
    """Attach this capability's commands to the root app."""
    root.add_typer(prevent_app, name="prevent")


@prevent_app.command("build-teacher")
def build_teacher(
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Directory to build into (default: the cached teacher)."),
    ] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Optimizer steps.")] = None,
    tiny: Annotated[bool, typer.Option("--tiny", help="The seconds-long test config.")] = False,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Rebuild a cached teacher.")] = False,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Train the arithmetic teacher (a few CPU minutes) and grade it on held-out problems."""
    from dataclasses import replace

    from distillguard.config import get_settings
    from distillguard.prevent.teacher import (
        TINY_TEACHER,
        ArithTeacherConfig,
        arith_teacher_dir,
        build_arith_teacher,
    )

    config = replace(TINY_TEACHER if tiny else ArithTeacherConfig(), seed=seed)
    if steps is not None:
        config = replace(config, steps=steps)  # __post_init__ checks the value
    if out is None:
        path = arith_teacher_dir(get_settings(), config, rebuild=rebuild, progress=True)
        console.print(f"teacher: {path}")
        return
    result = build_arith_teacher(out, config, progress=True)
    console.print(
        f"[green]saved[/green] {result.out_dir}: {result.parameters:,} parameters, "
        f"{result.train_seconds:.0f} s"
    )
    for acc in result.accuracy:
        console.print(f"  {acc.style:12s} {acc.correct}/{acc.total} = {acc.accuracy:.1%}")


@prevent_app.command("grade")
def grade_model(
    model_dir: Annotated[Path, typer.Argument(help="A model directory (teacher or student).")],
    problems: Annotated[int, typer.Option("--problems", help="Held-out problems.")] = 200,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Greedy accuracy of a model on held-out problems, in every answer style."""
    from distillguard.errors import InputError
    from distillguard.models.engine import GenerationEngine
    from distillguard.prevent.task import STYLES, generate
    from distillguard.prevent.teacher import grade

    if problems < 1:
        raise InputError("--problems must be >= 1")
    engine = GenerationEngine.from_dir(model_dir, num_threads=1, max_batch_size=32)
    held = generate(problems, split="held_out", seed=seed)
    for style in STYLES:
        acc = grade(engine, held, style)
        console.print(f"{style:12s} {acc.correct}/{acc.total} = {acc.accuracy:.1%}")


@prevent_app.command("problems")
def show_problems(
    count: Annotated[int, typer.Option("--count")] = 3,
    split: Annotated[str, typer.Option("--split", help="train | held_out")] = "held_out",
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Print a few generated problems with their reference solutions."""
    from distillguard.prevent.task import generate, prompt_for, solution

    for problem in generate(count, split=split, seed=seed):  # type: ignore[arg-type]
        typer.echo(f"{prompt_for(problem)}\n{solution(problem)}\n")
