"""CLI for proofs of distillation: ``prove radioactivity``, ``attribute``, ``report``,
``keygen`` (the evidence signing key pair) and ``verify`` (a signed report and its inputs).

Each command parses its options, calls ``distillguard.forensics`` and prints a summary with
rich; ``--out`` writes the result as JSON (the input of ``prove report``), with the exact
command line that produced it.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from distillguard.errors import InputError
from distillguard.progress import ProgressFn, progress_bar

if TYPE_CHECKING:
    from distillguard.forensics.radioactivity import RadioactivityReport

prove_app = typer.Typer(
    help="Prove distillation: radioactivity of a suspect model, teacher attribution, report.",
    no_args_is_help=True,
)
console = Console()


def register(root: typer.Typer) -> None:
    """Attach this capability's commands to the root app."""
    root.add_typer(prove_app, name="prove")


def _command_line(ctx: typer.Context) -> str:
    """The command with every option spelled out (defaults included): reproduces the run."""
    parts = ["distillguard", "prove", str(ctx.info_name)]
    for name, value in ctx.params.items():
        flag = "--" + name.replace("_", "-")
        if value is None or name == "api_key":  # never write a secret into evidence
            continue
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list | tuple):
            for item in value:
                parts += [flag, shlex.quote(str(item))]
        else:
            parts += [flag, shlex.quote(str(value))]
    return " ".join(parts)


def _write_json(ctx: typer.Context, out: Path | None, data: dict) -> None:
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {**data, "command": _command_line(ctx)}
    out.write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
    console.print(f"evidence written to [bold]{out}[/bold]")


def _fmt_p(p: float) -> str:
    return f"{p:.2e}" if p < 1e-3 else f"{p:.4f}"


@prove_app.command("attribute")
def prove_attribute(
    ctx: typer.Context,
    suspect: Annotated[
        Path, typer.Option(help="JSONL of the suspect's answers ({instruction, output} per line).")
    ],
    candidates: Annotated[
        Path,
        typer.Option(
            help="Directory of candidate teachers' answer "
            "files, one *.jsonl each (named by file stem)."
        ),
    ],
    out: Annotated[Path | None, typer.Option(help="Write the result as JSON here.")] = None,
    families: Annotated[
        Path | None,
        typer.Option(
            help='JSON {"candidate": "family"}: siblings are not each other\'s null, and a '
            "family is named when siblings cannot be told apart."
        ),
    ] = None,
    alpha: Annotated[float, typer.Option(help="Family-wise level across candidates.")] = 0.01,
    min_prompts: Annotated[int, typer.Option(help="Refuse below this many suspect answers.")] = 50,
) -> None:
    """Which candidate teacher's answers do the suspect's answers come from (watermark-free)?"""
    from distillguard.forensics.attribution import (
        AttributionConfig,
        attribute,
        read_answers,
        read_candidates,
        read_families,
    )

    config = AttributionConfig(
        alpha=alpha,
        min_prompts=min_prompts,
        families=read_families(families) if families is not None else {},
    )
    suspect_set = read_answers(suspect)
    cands = read_candidates(candidates, exclude=(suspect.stem,))
    skipped = suspect_set.skipped_lines + sum(c.skipped_lines for c in cands)
    with console.status(f"learning {len(cands)} candidates' habits (leave-one-out null)..."):
        result = attribute(suspect_set, cands, config)
    mode = "same prompts as the suspect" if result.same_prompts else "other prompts"
    table = Table(
        title=f"attribution of {result.suspect} "
        f"({result.suspect_prompts} answers; candidates trained on {mode})"
    )
    for col in ("rank", "candidate", "family", "share", "null mean", "z", "p (Holm)", "attributed"):
        table.add_column(col)
    for c in result.candidates:
        table.add_row(
            str(c.rank),
            c.name,
            c.family,
            f"{c.share:.3f}",
            f"{c.null_mean:.3f}",
            f"{c.z:.2f}",
            _fmt_p(c.p_holm),
            "YES" if c.attributed else "",
        )
    console.print(table)
    if skipped:
        console.print(f"[yellow]{skipped} malformed input lines skipped[/yellow]")
    verdict = result.verdict or "none of these"
    console.print(
        f"verdict: [bold]{verdict}[/bold] (alpha={alpha:g}, Holm over "
        f"{len(result.candidates)} candidates)"
    )
    console.print(result.meaning)
    if result.sibling_note:
        console.print(f"[yellow]{result.sibling_note}[/yellow]")
    _write_json(ctx, out, result.to_dict() | {"skipped_lines": skipped})


def _check_exclusive(**named: object) -> None:
    given = [k for k, v in named.items() if v]
    if len(given) != 1:
        raise InputError(f"give exactly one of {', '.join('--' + k for k in named)}")


@prove_app.command("radioactivity")
def prove_radioactivity(
    ctx: typer.Context,
    suspect: Annotated[
        Path | None, typer.Option(help="Suspect model directory (open weights).")
    ] = None,
    suspect_url: Annotated[
        str | None,
        typer.Option(
            help="OpenAI-compatible base URL of the suspect (API-only mode), e.g. http://h/v1."
        ),
    ] = None,
    api_key: Annotated[
        str, typer.Option(envvar="DISTILLGUARD_SUSPECT_API_KEY", help="API key for --suspect-url.")
    ] = "none",
    model: Annotated[str | None, typer.Option(help="Model name at --suspect-url.")] = None,
    harvest: Annotated[
        Path | None,
        typer.Option(
            help="Harvested dataset (JSONL prompt/answer): the text the suspect reads, the served "
            "contexts, and prompts for API mode."
        ),
    ] = None,
    prompts: Annotated[Path | None, typer.Option(help="Prompts to ask the suspect.")] = None,
    text: Annotated[
        Path | None,
        typer.Option(
            help="Any text for the suspect to read (paragraphs separated by blank lines)."
        ),
    ] = None,
    served_filter: Annotated[
        bool, typer.Option(help="Score only contexts that occur in the harvested (served) answers.")
    ] = True,
    accounts: Annotated[
        str | None, typer.Option(help="Comma-separated account ids to test.")
    ] = None,
    verdicts: Annotated[
        Path | None,
        typer.Option(
            help="Monitor verdicts JSONL: its flagged accounts are tested, with their clusters."
        ),
    ] = None,
    tokenizer: Annotated[Path | None, typer.Option(help="Our model/tokenizer directory.")] = None,
    scheme: Annotated[
        str | None, typer.Option(help="Watermark scheme (default: settings).")
    ] = None,
    key_id: Annotated[int | None, typer.Option(help="Watermark key id (default: current).")] = None,
    random_keys: Annotated[int, typer.Option(help="Random keys for the calibration run.")] = 20,
    max_queries: Annotated[int, typer.Option(help="API mode: at most this many prompts.")] = 1000,
    max_tokens: Annotated[int, typer.Option(help="API/generation: tokens per answer.")] = 128,
    max_retries: Annotated[
        int, typer.Option(help="API mode: retries per prompt on 429/5xx, then stop (resumable).")
    ] = 6,
    cache: Annotated[
        Path | None, typer.Option(help="API mode: answers checkpoint (a rerun resumes from it).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write the evidence JSON here.")] = None,
) -> None:
    """Did the suspect learn from our watermarked answers? (Sander et al. 2024)"""
    from distillguard.config import get_settings
    from distillguard.forensics.proof import SuspectApi, gather_inputs, prove_radioactivity
    from distillguard.forensics.radioactivity import RadioactivityConfig
    from distillguard.forensics.suspects import scheme_from_settings
    from distillguard.watermark.detect import load_tokenizer

    _check_exclusive(suspect=suspect, suspect_url=suspect_url)
    settings = get_settings()
    ours = load_tokenizer(tokenizer, settings)
    inputs = gather_inputs(
        harvest=harvest,
        text=text,
        prompts=prompts,
        served_filter=served_filter,
        accounts=(accounts or "").split(","),
        verdicts=verdicts,
        max_queries=max_queries,
    )
    api = None
    if suspect_url is not None:
        api = SuspectApi(suspect_url, api_key, model=model, max_retries=max_retries, cache=cache)
    with progress_bar(console=console) as bar:
        task = bar.add_task("loading the suspect", total=None)

        def stage(label: str) -> ProgressFn:
            bar.update(task, description=label, completed=0, total=None)
            return lambda done, total=None: bar.update(task, completed=done, total=total)

        outcome = prove_radioactivity(
            inputs=inputs,
            tokenizer=ours,
            scheme=scheme_from_settings(
                settings, vocab_size=len(ours), scheme=scheme, key_id=key_id
            ),
            home=settings.home,
            suspect_dir=suspect,
            api=api,
            config=RadioactivityConfig(random_keys=random_keys),
            max_tokens=max_tokens,
            progress=stage,
        )
    for notice in outcome.notices:
        console.print(f"[yellow]{notice}[/yellow]")
    _print_radioactivity(outcome.report)
    from distillguard.forensics.custody import describe_evidence_inputs

    listed = describe_evidence_inputs([harvest, text, prompts, verdicts], suspect)
    _write_json(ctx, out, outcome.report.to_dict() | {"inputs": listed})


def _print_radioactivity(report: RadioactivityReport) -> None:
    table = Table(
        title=f"radioactivity of {report.suspect} ({report.mode}, {report.tokens:,} tokens)"
    )
    for col in ("test", "units", "z", "p-value", "random keys: KS p / FPR@1e-3"):
        table.add_column(col)
    for t in report.tests:
        cal = t.calibration
        cal_s = f"{cal['ks_p']:.2f} / {cal['fpr_0.001']:.3f}" if cal else "-"
        table.add_row(
            t.test,
            f"{t.num_scored:,}",
            f"{t.z_score:.2f}",
            f"10^{t.log10_p_value:.1f}" if t.log10_p_value < -3 else _fmt_p(t.p_value),
            cal_s,
        )
    console.print(table)
    if report.accounts:
        acc = Table(title="accounts (Holm over accounts tested)")
        for col in ("account", "cluster", "z", "p", "p Holm"):
            acc.add_column(col)
        for a in report.accounts:
            acc.add_row(
                a.account,
                a.cluster_id or "",
                f"{a.z_score:.2f}",
                _fmt_p(a.p_value),
                _fmt_p(a.p_holm),
            )
        console.print(acc)


@prove_app.command("report")
def prove_report(
    evidence: Annotated[list[Path], typer.Option(help="Evidence JSON (repeatable).")],
    out: Annotated[Path, typer.Option(help="HTML file to write (JSON beside it).")],
    verdicts: Annotated[Path | None, typer.Option(help="Monitor verdicts JSONL.")] = None,
    title: Annotated[str | None, typer.Option(help="Report title.")] = None,
    alpha: Annotated[float, typer.Option(help="Level for the headline verdict.")] = 1e-3,
    signing_key: Annotated[
        Path | None,
        typer.Option(
            help="ed25519 private key (PEM) that signs the JSON "
            "(default: setting evidence_signing_key_file)."
        ),
    ] = None,
) -> None:
    """Write one self-contained HTML evidence page and the same data as signed JSON."""
    from distillguard.config import get_settings
    from distillguard.forensics.custody import describe_inputs
    from distillguard.forensics.report import (
        build_report,
        load_evidence,
        load_verdicts,
        write_report,
    )

    key_file = signing_key or get_settings().evidence_signing_key_file
    if key_file is None:
        console.print(
            "[yellow]no evidence signing key (--signing-key or DISTILLGUARD_EVIDENCE_SIGNING_KEY_"
            "FILE; create one with `distillguard prove keygen`): the report is NOT signed and "
            "`prove verify` will reject it[/yellow]"
        )
    items = load_evidence(evidence)
    involved = sorted({a["account"] for ev in items for a in ev.get("accounts") or []})
    inputs = describe_inputs([*evidence, *([verdicts] if verdicts else [])])
    report = build_report(
        items,
        verdicts=load_verdicts(verdicts, involved),
        title=title,
        alpha=alpha,
        inputs=inputs,
    )
    with console.status("rendering plots..."):
        html_path, json_path = write_report(report, out, signing_key_file=key_file)
    signed = "signed" if key_file is not None else "[yellow]unsigned[/yellow]"
    console.print(
        f"{report.verdict}\nreport: [bold]{html_path}[/bold] (data: {json_path}, {signed})"
    )


@prove_app.command("keygen")
def prove_keygen(
    out_dir: Annotated[Path, typer.Option(help="Folder for the key pair.")],
    force: Annotated[bool, typer.Option(help="Overwrite an existing key pair.")] = False,
) -> None:
    """Create an ed25519 key pair for signing evidence reports (private key mode 0600)."""
    from distillguard.forensics.custody import generate_keypair, key_fingerprint, load_public_key

    private, public = generate_keypair(out_dir, overwrite=force)
    fingerprint = key_fingerprint(load_public_key(public))
    console.print(
        f"private key: [bold]{private}[/bold] (keep it secret; point "
        f"DISTILLGUARD_EVIDENCE_SIGNING_KEY_FILE at it)\npublic key: [bold]{public}[/bold] "
        f"(give it to reviewers)\nfingerprint: {fingerprint}"
    )


@prove_app.command("verify")
def prove_verify(
    report: Annotated[Path, typer.Argument(help="The signed report JSON.")],
    public_key: Annotated[
        Path | None,
        typer.Option(
            help="The signer's public key (PEM). Without it only integrity is checked, "
            "against the key the report itself carries."
        ),
    ] = None,
    input_file: Annotated[
        list[Path] | None,
        typer.Option(
            "--input", help="An input file of the report (repeatable; default: beside it)."
        ),
    ] = None,
    require_inputs: Annotated[
        bool, typer.Option(help="Fail when a listed input is neither given nor found.")
    ] = True,
) -> None:
    """Check a report's signature and the SHA-256 of every input it lists."""
    from distillguard.errors import EvidenceTampered
    from distillguard.forensics.custody import verify_document

    if not report.is_file():
        raise InputError(f"report not found: {report}")
    try:
        document = json.loads(report.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvidenceTampered(f"{report} is not JSON (damaged or not a report): {exc}") from exc
    if not isinstance(document, dict):
        raise EvidenceTampered(f"{report} is not a distillguard report (not a JSON object)")
    result = verify_document(
        document,
        public_key_file=public_key,
        input_files=input_file or [],
        search_dir=report.parent,
    )
    if result.inputs_missing and require_inputs:
        raise EvidenceTampered(
            f"signature valid, but listed inputs were not found: {', '.join(result.inputs_missing)}"
            f" (give them with --input, put them beside the report, or --no-require-inputs)"
        )
    whose = (
        f"by the given public key {result.key_fingerprint}"
        if result.trusted_key
        else f"by the key the report carries ({result.key_fingerprint}); pass --public-key to "
        "check who signed it"
    )
    console.print(f"[green]signature valid[/green], signed {whose}")
    console.print(
        f"inputs verified: {len(result.inputs_checked)}"
        + (
            f"; not checked (missing): {', '.join(result.inputs_missing)}"
            if result.inputs_missing
            else ""
        )
    )
