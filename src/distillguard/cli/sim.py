"""CLI for traffic simulators: ``distillguard sim orgs`` (the organisations world).

distillguard sim orgs --out DIR --accounts N --days D --seed S [--split a|b] [--gzip]
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

sim_app = typer.Typer(help="Simulate API traffic with ground truth.", no_args_is_help=True)


@sim_app.command("orgs")
def sim_orgs(
    out: Annotated[Path, typer.Option("--out", help="Directory for traffic, accounts, labels.")],
    accounts: Annotated[int, typer.Option("--accounts", help="Accounts in all (>= 100).")] = 2000,
    days: Annotated[float, typer.Option("--days", help="Simulated days (1-366).")] = 7.0,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same files.")] = 0,
    split: Annotated[
        str, typer.Option("--split", help="Half of the prompt sources: a (fit) or b (report).")
    ] = "a",
    gzip_traffic: Annotated[
        bool, typer.Option("--gzip/--no-gzip", help="Write traffic.jsonl.gz.")
    ] = False,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="The shared data sets (default: DISTILLGUARD_DATA_DIR)."),
    ] = None,
) -> None:
    """Write an organisations-and-infrastructure world: traffic, accounts and labels."""
    from rich.console import Console

    from distillguard.config import get_settings
    from distillguard.progress import progress_bar
    from distillguard.sim.orgs import OrgsConfig, generate_orgs

    config = OrgsConfig(accounts=accounts, days=days, seed=seed, split=split)
    data = data_dir or get_settings().require_data_dir()
    console = Console()
    with progress_bar(console=console, transient=True) as prog:
        task = prog.add_task("simulating (share of the period)", total=1.0)
        res = generate_orgs(
            config,
            data_dir=data,
            out=out,
            gzip_traffic=gzip_traffic,
            on_progress=lambda f, n: prog.update(
                task, completed=f, description=f"simulating: {n:,} exchanges"
            ),
        )
    console.print(
        f"wrote {res.exchanges:,} exchanges of {res.accounts:,} accounts "
        f"({res.campaign_accounts:,} in campaigns, split {split}) to {res.traffic_path}; "
        f"accounts -> {res.accounts_path}, labels -> {res.labels_path}"
    )
    console.print(
        "accounts per persona: " + ", ".join(f"{k} {v}" for k, v in res.accounts_by_persona.items())
    )


def register(root: typer.Typer) -> None:
    """Attach this capability's commands to the root app."""
    root.add_typer(sim_app, name="sim")
