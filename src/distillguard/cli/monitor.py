"""CLI for traffic simulation, detection and its evaluation.

distillguard simulate --accounts N --campaigns K --seed S --out TRAFFIC --labels LABELS
distillguard monitor score TRAFFIC --out VERDICTS      (or --db URL: the gateway's log)
distillguard eval detection TRAFFIC LABELS VERDICTS
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from distillguard.errors import InputError
from distillguard.progress import progress_bar

monitor_app = typer.Typer(help="Score accounts for distillation campaigns.", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate detectors against ground truth.", no_args_is_help=True)


def monitor_simulate(
    out: Annotated[Path, typer.Option(help="Traffic log to write (JSON Lines).")],
    labels: Annotated[Path, typer.Option(help="Ground-truth labels to write.")],
    accounts: Annotated[int, typer.Option(help="Honest accounts (people and apps).")] = 1000,
    campaigns: Annotated[int, typer.Option(help="Distillation campaigns.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the whole simulation.")] = 0,
    split: Annotated[str, typer.Option(help="Prompt split: train or test.")] = "train",
    days: Annotated[int, typer.Option(help="Simulated days.")] = 7,
    data_dir: Annotated[
        Path | None, typer.Option(help="The shared data sets (default: DISTILLGUARD_DATA_DIR).")
    ] = None,
    live: Annotated[str | None, typer.Option(help="Drive a real gateway at this URL.")] = None,
    api_key: Annotated[
        list[str] | None, typer.Option(help="Keys to use (live; repeatable).")
    ] = None,
    admin_token: Annotated[str | None, typer.Option(help="Create accounts/keys (live).")] = None,
    max_requests: Annotated[int, typer.Option(help="Live: requests to send.")] = 300,
    concurrency: Annotated[int, typer.Option(help="Live: requests in flight.")] = 4,
) -> None:
    """Write simulated traffic (people, legitimate apps, campaigns) and its labels."""
    from rich.console import Console

    from distillguard.config import get_settings
    from distillguard.sim.simulate import SimConfig, simulate

    console = Console()
    data = data_dir or get_settings().require_data_dir()
    config = SimConfig(accounts=accounts, campaigns=campaigns, seed=seed, split=split, days=days)
    if live:
        from distillguard.sim.live import LiveConfig, run_live

        sent = run_live(
            config,
            LiveConfig(
                base_url=live,
                api_keys=tuple(api_key or ()),
                admin_token=admin_token,
                max_requests=max_requests,
                concurrency=concurrency,
            ),
            data_dir=data,
            out=out,
            labels=labels,
        )
        console.print(
            f"sent {sent.sent:,} requests to {live}: {sent.ok:,} served, "
            f"{sent.refused:,} refused (429/403), {sent.failed:,} failed; "
            f"traffic -> {out}, labels -> {labels}"
        )
        return
    with progress_bar(console=console, transient=True) as prog:
        task = prog.add_task("simulating", total=None)
        res = simulate(
            config, data_dir=data, out=out, labels=labels, progress=lambda k: prog.advance(task, k)
        )
    console.print(
        f"wrote {res.exchanges:,} exchanges of {res.accounts:,} accounts "
        f"({res.campaign_accounts:,} in {campaigns} campaigns) to {out}; "
        f"labels -> {labels}"
    )
    console.print("accounts per persona: " + ", ".join(f"{k} {v}" for k, v in res.personas.items()))


@monitor_app.command("score")
def monitor_score(
    out: Annotated[Path, typer.Option(help="Verdicts to write (one per account).")],
    traffic: Annotated[
        Path | None, typer.Argument(help="Traffic log (JSON Lines, plain or gzip).")
    ] = None,
    db: Annotated[
        str | None, typer.Option(help="Score the gateway's own log at this DB URL.")
    ] = None,
    model: Annotated[
        Path | None, typer.Option(help="Score model JSON (default: built-in).")
    ] = None,
    workers: Annotated[int, typer.Option(help="Processes (0: one per core for big logs).")] = 0,
    accounts: Annotated[
        Path | None,
        typer.Option("--accounts", help="Accounts file (spec 1b): age, org, verification."),
    ] = None,
    trust: Annotated[
        Path | None,
        typer.Option("--trust", help="Trust tiers / allow-list (YAML or JSON)."),
    ] = None,
    engine: Annotated[
        str | None,
        typer.Option(
            help="stream, duckdb or spark (default: duckdb for a Parquet log, else stream)."
        ),
    ] = None,
    master: Annotated[
        str | None,
        typer.Option(help="Spark master: local[N] (default local[2]) or spark://host:port."),
    ] = None,
) -> None:
    """Score every account of a traffic log (JSON Lines or Parquet) or of the gateway's
    database; verdicts go to --out as JSON Lines, or Parquet when it ends in .parquet."""
    from rich.console import Console

    from distillguard.monitor.offline import score_records
    from distillguard.monitor.score import ScoreModel
    from distillguard.monitor.trust import load_trust, read_accounts
    from distillguard.traffic import JsonlWriter

    console = Console()
    if (traffic is None) == (db is None):
        raise InputError("give either a TRAFFIC file or --db URL (not both)")
    if db is not None and (engine is not None or master is not None):
        raise InputError("--engine/--master score a TRAFFIC log, not --db")
    m = ScoreModel.load(model)
    tiers = load_trust(trust)
    infos = read_accounts(accounts) if accounts is not None else None
    if traffic is not None:
        from distillguard.monitor.engines import default_engine, score_log

        chosen = engine or default_engine(traffic)
        with console.status(f"scoring {traffic} with {chosen} (signals, links, clusters, scores)"):
            rep = score_log(
                traffic,
                out,
                model=m,
                engine=chosen,
                master=master,
                workers=workers or None,
                trust=tiers,
                accounts=infos,
            )
        assert rep.read is not None
        console.print(rep.read.describe())
    else:
        with progress_bar(console=console, transient=True) as prog:
            task = prog.add_task("scoring", total=None)
            from distillguard.store.dbsource import read_exchanges_db

            assert db is not None  # exactly one of traffic / db, checked above
            source = read_exchanges_db(db)
            rep = score_records(
                source,
                model=m,
                progress=lambda k: prog.advance(task, k),
                trust=tiers,
                accounts=infos,
            )
        console.print(source.describe())
        if rep.exchanges == 0:
            raise InputError(f"no attributed exchanges in the database at {db}")

        with JsonlWriter(out) as w:
            for v in rep.verdicts:
                w.write(v)
    flagged = [v for v in rep.verdicts if v.flagged]
    rate = rep.exchanges / rep.seconds if rep.seconds else 0.0
    console.print(
        f"scored {len(rep.verdicts):,} accounts from {rep.exchanges:,} exchanges in "
        f"{rep.seconds:.1f} s ({rate:,.0f}/s); {len(flagged):,} flagged, "
        f"{len(rep.clusters):,} clusters of linked accounts -> {out}"
    )
    if rep.out_of_order:
        console.print(
            f"[yellow]{rep.out_of_order:,} records arrived earlier than one already "
            "seen for their account: counted, but kept out of inter-arrival "
            "timing[/yellow]"
        )
    for v in sorted(flagged, key=lambda v: -v.score)[:10]:
        console.print(
            f"  {v.account_id}  {v.score:.3f}  {v.cluster_id or '-'}  {'; '.join(v.reasons[:3])}"
        )


@monitor_app.command("fit")
def monitor_fit(
    traffic: Annotated[Path, typer.Argument(help="Traffic log to fit on (JSON Lines).")],
    labels: Annotated[Path, typer.Argument(help="Its ground-truth labels (spec 2).")],
    out: Annotated[Path, typer.Option("--out", help="Score model JSON to write.")],
    generator: Annotated[
        str, typer.Option("--generator", help="Where the traffic came from (provenance).")
    ] = "unknown",
    split: Annotated[str, typer.Option("--split", help="Which split it is (provenance).")] = (
        "train"
    ),
    target_fpr: Annotated[
        float, typer.Option("--target-fpr", help="Honest FPR the operating point allows.")
    ] = 1e-3,
) -> None:
    """Fit the content model and its operating point on labelled traffic."""
    from rich.console import Console

    from distillguard.monitor.offline import fit_on_traffic
    from distillguard.monitor.score import SCORE_FEATURES

    console = Console()
    with console.status(f"fitting on {traffic}"):
        model = fit_on_traffic(
            traffic, labels, generator=generator, split=split, target_fpr=target_fpr
        )
    model.save(out)
    weights = ", ".join(f"{f} {w:+.2f}" for f, w in zip(SCORE_FEATURES, model.weights, strict=True))
    console.print(
        f"fitted on {model.fitted_on}: threshold {model.threshold:.4f}; {weights} -> {out}"
    )


@eval_app.command("detection")
def eval_detection(
    traffic: Annotated[Path, typer.Argument(help="Traffic log (in time order for the replay).")],
    labels: Annotated[Path, typer.Argument(help="Ground-truth labels.")],
    verdicts: Annotated[Path, typer.Argument(help="Verdicts of a detector.")],
    replay: Annotated[
        bool, typer.Option(help="Replay through the online monitor for time-to-flag.")
    ] = True,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the report as JSON.")
    ] = None,
) -> None:
    """AUROC, TPR at low FPR, legit-app false positives, ARI, requests until flagged."""
    import dataclasses
    import json

    from rich.console import Console
    from rich.table import Table

    from distillguard.monitor.evaluate import evaluate, time_to_flag, with_time_to_flag
    from distillguard.traffic import read_labels, read_traffic, read_verdicts

    console = Console()
    lab_reader, ver_reader = read_labels(labels), read_verdicts(verdicts)
    labs, vers = list(lab_reader), list(ver_reader)
    for r in (lab_reader, ver_reader):
        if r.skipped:
            console.print(f"[yellow]{r.summary().describe()}[/yellow]")
    report = evaluate(labs, vers)
    if replay:
        from distillguard.monitor.online import OnlineMonitor
        from distillguard.monitor.policy import load_policy

        reader = read_traffic(traffic)
        with progress_bar(console=console, transient=True) as prog:
            task = prog.add_task("replaying through the online monitor", total=None)
            ttf = time_to_flag(
                reader, labs, OnlineMonitor(load_policy()), progress=lambda k: prog.advance(task, k)
            )
        if reader.skipped:
            console.print(f"[yellow]{reader.summary().describe()}[/yellow]")
        report = with_time_to_flag(report, ttf)
    t = Table(title="detection per persona")
    for col in ("persona", "label", "accounts", "flagged", "score min", "median", "max"):
        t.add_column(col)
    for p in report.personas:
        t.add_row(
            p.persona,
            p.label,
            str(p.accounts),
            str(p.flagged),
            f"{p.score_min:.3f}",
            f"{p.score_median:.3f}",
            f"{p.score_max:.3f}",
        )
    console.print(t)
    console.print(
        f"accounts {report.accounts:,} ({report.campaign_accounts:,} campaign); "
        f"AUROC {report.auroc:.4f}; TPR@FPR1e-3 {report.tpr_at_fpr_1e3:.3f}; "
        f"TPR@FPR1e-2 {report.tpr_at_fpr_1e2:.3f}"
    )
    console.print(
        f"operating point: TPR {report.flagged_tpr:.3f}, FPR {report.flagged_fpr:.4f}; "
        f"legitimate apps flagged {report.legit_apps_flagged}/{report.legit_apps}"
    )
    hydra = "n/a" if report.ari_hydra is None else f"{report.ari_hydra:.3f}"
    console.print(
        f"cluster recovery ARI: all accounts {report.ari_all:.3f}, multi-account campaigns {hydra}"
    )
    if report.time_to_flag:
        console.print(
            f"requests until flagged (online replay): median {report.ttf_median}, "
            f"p90 {report.ttf_p90}, never flagged {report.ttf_missed}"
        )
    if report.missing_verdicts:
        console.print(
            f"[yellow]{report.missing_verdicts} labelled accounts had no verdict "
            "(scored 0, not flagged)[/yellow]"
        )
    if json_out is not None:
        json_out.write_text(json.dumps(dataclasses.asdict(report), indent=1, default=str))


def register(root: typer.Typer) -> None:
    """Attach this capability's commands to the root app."""
    root.command("simulate")(monitor_simulate)
    root.add_typer(monitor_app, name="monitor")
    root.add_typer(eval_app, name="eval")
