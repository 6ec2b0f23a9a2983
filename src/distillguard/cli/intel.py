"""CLI for shared threat intelligence: campaign indicators as STIX 2.1.

distillguard intel export --verdicts VERDICTS --traffic TRAFFIC --out BUNDLE.json
distillguard intel export --source PARTNER --out BUNDLE.json     (re-export an imported bundle)
distillguard intel import BUNDLE.json [...]
distillguard intel match --traffic TRAFFIC --out MATCHES.jsonl
distillguard intel sources
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from distillguard.errors import ConfigError, InputError

intel_app = typer.Typer(
    help="Share campaign indicators with other providers (STIX 2.1) and match theirs.",
    no_args_is_help=True,
)
console = Console()


def register(root: typer.Typer) -> None:
    """Attach this capability's commands to the root app."""
    root.add_typer(intel_app, name="intel")


def _require_libraries() -> None:
    try:
        import ijson  # noqa: F401
        import stix2  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"intel needs the STIX libraries ({exc.name} is missing): "
            "pip install 'distillguard[intel]'"
        ) from exc


def _key() -> Any:
    from distillguard.config import get_settings
    from distillguard.intel.fingerprints import CommunityKey

    return CommunityKey.from_setting(get_settings().intel_key)


def _counted(records: Iterator[Any], label: str) -> Iterator[Any]:
    """Pass records through while a bar counts them (the total is unknown until the end)."""
    from distillguard.progress import tracked

    with tracked(label, transient=True) as update:
        for i, r in enumerate(records, 1):
            if i % 5000 == 0:
                update(i)
            yield r


def _write_bundle(intel: Any, out: Path) -> int:
    from distillguard.intel.stix import build_bundle

    bundle = build_bundle(intel)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(bundle.serialize(pretty=True), encoding="utf-8")
    tmp.replace(out)
    return len(bundle.objects)


@intel_app.command("export")
def intel_export(
    out: Annotated[Path, typer.Option("--out", help="STIX 2.1 bundle to write (JSON).")],
    verdicts: Annotated[
        Path | None, typer.Option("--verdicts", help="Verdicts of `monitor score`.")
    ] = None,
    traffic: Annotated[
        Path | None, typer.Option("--traffic", help="The traffic log the verdicts scored.")
    ] = None,
    source: Annotated[
        str | None, typer.Option("--source", help="Re-export this imported partner instead.")
    ] = None,
    producer: Annotated[
        str, typer.Option("--producer", help="Our name as partners will see it.")
    ] = "distillguard provider",
    tlp: Annotated[
        str, typer.Option("--tlp", help="Sharing marking: clear, green, amber or red.")
    ] = "amber",
) -> None:
    """Write the indicators of every flagged campaign as a STIX 2.1 bundle (no user content)."""
    _require_libraries()
    from distillguard.intel.indicators import TLP_LEVELS

    if tlp not in TLP_LEVELS:
        raise InputError(f"--tlp must be one of {', '.join(TLP_LEVELS)}, got {tlp!r}")
    key = _key()
    if source is not None:
        if verdicts or traffic:
            raise InputError("give either --source or --verdicts with --traffic, not both")
        from distillguard.config import get_settings
        from distillguard.intel.store import IntelStore

        with IntelStore(get_settings().home) as store:
            intel = store.intel_set(source)
        n = _write_bundle(intel, out)
        console.print(
            f"re-exported {len(intel.indicators)} indicators of {intel.producer} "
            f"({n} objects) -> {out}"
        )
        return
    if verdicts is None or traffic is None:
        raise InputError("export needs --verdicts and --traffic (or --source PARTNER)")
    from distillguard.intel.indicators import extract_intel
    from distillguard.traffic import read_traffic, read_verdicts

    ver_reader, tr_reader = read_verdicts(verdicts), read_traffic(traffic)
    vers = list(ver_reader)
    result = extract_intel(
        vers,
        _counted(iter(tr_reader), "reading traffic"),
        key,
        producer=producer,
        tlp=tlp,
        created=time.time(),
    )
    for reader in (ver_reader, tr_reader):
        if reader.skipped:
            console.print(f"[yellow]{reader.summary().describe()}[/yellow]")
    if result.bad_ips:
        console.print(
            f"[yellow]{result.bad_ips:,} records with an ip that is not an address: "
            "their prefix is not an indicator[/yellow]"
        )
    intel = result.intel
    if not intel.campaigns:
        raise InputError(f"no flagged account of {verdicts} appears in {traffic}: nothing to share")
    n = _write_bundle(intel, out)
    kinds: dict[str, int] = {}
    for i in intel.indicators:
        kinds[i.kind] = kinds.get(i.kind, 0) + 1
    console.print(
        f"{len(intel.campaigns)} campaigns of {result.flagged_accounts} flagged "
        f"accounts, {len(intel.indicators)} indicators "
        f"({', '.join(f'{k} {v}' for k, v in sorted(kinds.items())) or 'none'}); "
        f"{n} STIX objects, TLP:{tlp.upper()} -> {out}"
    )
    if result.dropped:
        console.print(
            "kept back (shared with honest accounts at home): "
            + ", ".join(f"{k} {v}" for k, v in sorted(result.dropped.items()))
        )


@intel_app.command("import")
def intel_import(
    bundles: Annotated[list[Path], typer.Argument(help="Partners' STIX 2.1 bundles.")],
) -> None:
    """Store partners' indicators (under DISTILLGUARD_HOME/intel/) for `intel match`."""
    _require_libraries()
    key = _key()
    from distillguard.config import get_settings
    from distillguard.errors import NotFound
    from distillguard.intel.store import IntelStore

    with IntelStore(get_settings().home) as store:
        for path in bundles:
            if not path.is_file():
                raise NotFound(f"bundle not found: {path}")
            with open(path, "rb") as fh:
                rep = store.import_bundle(fh, key)
            console.print(
                f"{path}: {rep.campaigns} campaigns, {rep.indicators} indicators of "
                f"{', '.join(rep.producers) or 'no named producer'} "
                f"({rep.stats.objects} objects)"
            )
            if rep.unevaluable:
                console.print(
                    f"[yellow]  {rep.unevaluable} indicators kept but not evaluable "
                    "(see `intel sources`)[/yellow]"
                )
            if rep.stats.skipped_count:
                shown = min(20, len(rep.stats.skipped))
                console.print(
                    f"[yellow]  {rep.stats.skipped_count} objects skipped (the first "
                    f"{shown} with their ids):[/yellow]"
                )
                for s in rep.stats.skipped[:shown]:
                    console.print(f"    {s.object_id}: {s.reason}")


@intel_app.command("match")
def intel_match(
    traffic: Annotated[Path, typer.Option("--traffic", help="Our traffic log to check.")],
    out: Annotated[Path, typer.Option("--out", help="Matches to write (JSON Lines).")],
    verdicts: Annotated[
        Path | None, typer.Option("--verdicts", help="Our verdicts to raise with the matches.")
    ] = None,
    verdicts_out: Annotated[
        Path | None, typer.Option("--verdicts-out", help="Where the raised verdicts go.")
    ] = None,
    weight: Annotated[
        float, typer.Option("--weight", help="Share of a match's signal added to the score.")
    ] = 0.5,
) -> None:
    """Match imported indicators against our traffic: a signal per account, never a block."""
    if (verdicts is None) != (verdicts_out is None):
        raise InputError("--verdicts and --verdicts-out go together")
    _require_libraries()
    key = _key()
    from distillguard.config import get_settings
    from distillguard.intel.matching import match_traffic
    from distillguard.intel.store import IntelStore
    from distillguard.traffic import read_traffic, write_jsonl

    with IntelStore(get_settings().home) as store:
        shared, unevaluable = store.shared_indicators()
    if not shared:
        raise InputError("no partner indicators imported yet: run `distillguard intel import`")
    reader = read_traffic(traffic)
    res = match_traffic(_counted(iter(reader), "matching"), shared, key)
    if reader.skipped:
        console.print(f"[yellow]{reader.summary().describe()}[/yellow]")
    write_jsonl(out, res.matches)
    strong = sum(a.strong for a in res.accounts)
    console.print(
        f"{res.scanned_accounts:,} accounts, {res.records:,} exchanges against "
        f"{len(shared)} indicators: {len(res.matches)} matches on "
        f"{len(res.accounts)} accounts ({strong} match 2+ kinds of one campaign) "
        f"-> {out}"
    )
    if unevaluable:
        console.print(
            f"[yellow]{len(unevaluable)} imported indicators cannot be evaluated "
            f"(first: {unevaluable[0][0]}: {unevaluable[0][1]})[/yellow]"
        )
    if verdicts is not None and verdicts_out is not None:
        from distillguard.intel.matching import raise_scores
        from distillguard.traffic import read_verdicts

        ver_reader = read_verdicts(verdicts)
        raised = raise_scores(ver_reader, res.accounts, weight=weight)
        if ver_reader.skipped:
            console.print(f"[yellow]{ver_reader.summary().describe()}[/yellow]")
        write_jsonl(verdicts_out, raised)
        matched = {a.account_id for a in res.accounts}
        n = sum(r.account_id in matched for r in raised)
        console.print(
            f"{n} verdicts raised by partners' indicators (flags unchanged) -> {verdicts_out}"
        )
    for a in sorted(res.accounts, key=lambda a: -a.signal)[:10]:
        console.print(f"  {a.account_id}  {a.signal:.2f}  {a.source}  {', '.join(a.kinds)}")


@intel_app.command("sources")
def intel_sources() -> None:
    """List the partners whose indicators are imported."""
    _require_libraries()
    from distillguard.config import get_settings
    from distillguard.intel.store import IntelStore

    with IntelStore(get_settings().home) as store:
        rows = store.sources()
        _, unevaluable = store.shared_indicators()
    if not rows:
        console.print("no partner indicators imported")
    for _pid, name, n, bad in rows:
        console.print(f"{name}: {n} indicators ({bad} not evaluable)")
    for iid, reason in unevaluable[:10]:
        console.print(f"  {iid}: {reason}")
