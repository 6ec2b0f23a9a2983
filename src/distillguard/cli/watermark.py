"""CLI for the watermark: ``watermark detect FILE|-`` and ``watermark keys``.

``detect`` prints one JSON line per input on stdout (a result, or an error for that input) and
a summary with the number of skipped inputs on stderr, so it composes with ``jq``. ``keys``
lists key ids with public fingerprints; secrets are never printed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from distillguard.errors import NotFound

watermark_app = typer.Typer(
    help="Watermark: detect the provider's mark in text; key ids.", no_args_is_help=True
)
err_console = Console(stderr=True)


def register(root: typer.Typer) -> None:
    """Attach this capability's commands to the root app."""
    root.add_typer(watermark_app, name="watermark")


@watermark_app.command("detect")
def watermark_detect(
    file: Annotated[str, typer.Argument(help="Input file, or - for stdin.")],
    field: Annotated[str, typer.Option(help="JSONL field holding the text.")] = "text",
    prompt_field: Annotated[
        str | None,
        typer.Option(help="JSONL field holding the prompt (its copied tokens are not scored)."),
    ] = None,
    scheme: Annotated[
        str | None,
        typer.Option(help="kgw | gumbel | synthid (default: DISTILLGUARD_WATERMARK_SCHEME)."),
    ] = None,
    tokenizer: Annotated[
        Path | None,
        typer.Option(help="Tokenizer/model directory (default: the served model or the teacher)."),
    ] = None,
    key_id: Annotated[
        list[int] | None,
        typer.Option(
            "--key-id", help="Key id to try (repeatable; default: all up to the current)."
        ),
    ] = None,
    accounts: Annotated[
        str | None, typer.Option(help="Comma-separated account ids to test for attribution.")
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="auto | jsonl | text (whole input is one text) | lines.")
    ] = "auto",
    alpha: Annotated[float, typer.Option(help="Level at which a text counts as marked.")] = 1e-3,
) -> None:
    """Detect the watermark in texts: one JSON line per input on stdout."""
    from distillguard.config import get_settings
    from distillguard.watermark.detect import TextDetector, detect_stream, read_inputs

    detector = TextDetector.from_settings(
        get_settings(), scheme=scheme, key_ids=key_id or None, tokenizer_dir=tokenizer
    )
    account_list = [a.strip() for a in (accounts or "").split(",") if a.strip()]
    if file == "-":
        stream = sys.stdin
    else:
        path = Path(file)
        if not path.is_file():
            raise NotFound(f"no such file: {path}")
        stream = path.open(encoding="utf-8", errors="replace")
    total = skipped = marked = 0
    with stream, err_console.status("detecting...") as status:
        items = read_inputs(stream, fmt=fmt, field=field, prompt_field=prompt_field)
        for rec in detect_stream(detector, items, accounts=account_list):
            total += 1
            if "error" in rec:
                skipped += 1
            elif rec["p_value"] < alpha:
                marked += 1
            typer.echo(json.dumps(rec))
            if total % 500 == 0:
                status.update(f"detecting... {total} inputs")
    err_console.print(
        f"{total} inputs: {marked} marked at alpha={alpha:g}, "
        f"{total - skipped - marked} not marked, {skipped} skipped (errors)"
    )


@watermark_app.command("keys")
def watermark_keys() -> None:
    """List watermark key ids with public fingerprints (never the secret)."""
    from rich.table import Table

    from distillguard.config import get_settings
    from distillguard.watermark.keys import KeyRing

    ring = KeyRing.from_settings(get_settings())
    table = Table("key id", "fingerprint", "current")
    for info in ring.info():
        table.add_row(str(info.key_id), info.fingerprint, "yes" if info.current else "")
    Console().print(table)
