"""CLI for proofs of distillation: ``prove radioactivity``, ``prove attribute``, ``prove report``.

Each command parses its options, calls ``distillguard.forensics`` and prints a summary with
rich; ``--out`` writes the result as JSON (the input of ``prove report``), with the exact
command line that produced it.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from distillguard.errors import InputError

prove_app = typer.Typer(
    help="Prove distillation: radioactivity of a suspect model, teacher attribution, report.",
    no_args_is_help=True,
)
console = Console()


def register(root: typer.Typer) -> None:
    """Attach this capability's commands to the root app."""
    root.add_typer(prove_app, name="prove")


def _command_line() -> str:
    return "distillguard " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _write_json(out: Path | None, data: dict) -> None:
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {**data, "command": _command_line()}
    out.write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
    console.print(f"evidence written to [bold]{out}[/bold]")


def _fmt_p(p: float) -> str:
    return f"{p:.2e}" if p < 1e-3 else f"{p:.4f}"


@prove_app.command("attribute")
def attribute_cmd(
    suspect: Annotated[Path, typer.Option(help="JSONL of the suspect's answers "
                                          "({instruction, output} per line).")],
    candidates: Annotated[Path, typer.Option(help="Directory of candidate teachers' answer "
                                             "files, one *.jsonl each (named by file stem).")],
    out: Annotated[Path | None, typer.Option(help="Write the result as JSON here.")] = None,
    alpha: Annotated[float, typer.Option(help="Family-wise level across candidates.")] = 0.05,
    permutations: Annotated[int, typer.Option(help="Monte-Carlo permutations.")] = 9_999,
    min_prompts: Annotated[int, typer.Option(help="Refuse below this many shared prompts.")] = 50,
    seed: Annotated[int, typer.Option(help="Seed of the permutation draws.")] = 0,
) -> None:
    """Which candidate teacher's answers do the suspect's answers come from (watermark-free)?"""
    from distillguard.forensics.attribution import (
        AttributionConfig,
        attribute,
        read_answers,
        read_candidates,
    )

    config = AttributionConfig(alpha=alpha, permutations=permutations,
                               min_matched_prompts=min_prompts, seed=seed)
    suspect_set = read_answers(suspect)
    cands = read_candidates(candidates, exclude=(suspect.stem,))
    skipped = suspect_set.skipped_lines + sum(c.skipped_lines for c in cands)
    with console.status(f"comparing {suspect_set.name} with {len(cands)} candidates..."):
        result = attribute(suspect_set, cands, config)
    table = Table(title=f"attribution of {result.suspect} "
                        f"({result.matched_prompts} of {result.suspect_prompts} prompts matched)")
    for col in ("rank", "candidate", "effect", "z", "p (Holm)", "p (prompt perm.)", "attributed"):
        table.add_column(col)
    for c in result.candidates:
        table.add_row(str(c.rank), c.name, f"{c.effect:.4f}", f"{c.z:.2f}",
                      _fmt_p(c.p_model_holm), _fmt_p(c.p_prompt), "YES" if c.attributed else "")
    console.print(table)
    if skipped:
        console.print(f"[yellow]{skipped} malformed input lines skipped[/yellow]")
    verdict = result.verdict or "none of these"
    console.print(f"verdict: [bold]{verdict}[/bold] (alpha={alpha:g}, Holm over "
                  f"{len(result.candidates)} candidates)")
    _write_json(out, result.to_dict() | {"skipped_lines": skipped})


def _check_exclusive(**named: object) -> None:
    given = [k for k, v in named.items() if v]
    if len(given) != 1:
        raise InputError(f"give exactly one of {', '.join('--' + k for k in named)}")
