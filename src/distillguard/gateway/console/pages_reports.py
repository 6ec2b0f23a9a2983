"""The forensic reports on the evidence page: each signed report under the reports folder
(``Settings.reports_dir``, default ``{home}/reports``), its signature checked with
``forensics.custody``, opened behind the console's session.

A check hashes every input the report lists (logs can be large), so its result is kept per
(file, size, mtime) in this process: a report that changes is checked again.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request, Response

from distillguard.errors import DistillGuardError
from distillguard.forensics.custody import PUBLIC_KEY_NAME, verify_document
from distillguard.gateway.console.routes import ConsolePage, _state, require_session, router

MAX_REPORTS = 200  # newest listed; an archive beyond it is read with `prove verify`
MAX_REPORT_BYTES = 50 * 1024 * 1024  # a report's JSON (plots are in the HTML, not here)
REPORT_TYPES = {".html": "text/html; charset=utf-8", ".json": "application/json"}
# A report page is the forensics module's own self-contained HTML (inline CSS, base64 plots):
# sandboxed, no script, nothing fetched.
REPORT_CSP = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:"


@dataclass(frozen=True)
class ReportEntry:
    name: str  # the JSON file's name
    html: str | None  # the HTML page beside it, when there is one
    title: str
    generated: str
    verdict: str
    status: str  # signed | unsigned | invalid | unreadable
    detail: str  # the key's fingerprint, or what is wrong, in words


_checked: dict[tuple[str, int, int], ReportEntry] = {}
_lock = threading.Lock()


def reports_dir(request: Request) -> Path:
    return Path(_state(request).settings.resolved_reports_dir)


def _trusted_key(request: Request) -> Path | None:
    """The provider's public key, beside the signing key (``prove keygen`` writes both)."""
    key = _state(request).settings.evidence_signing_key_file
    public = Path(key).with_name(PUBLIC_KEY_NAME) if key else None
    return public if public is not None and public.is_file() else None


def _check(path: Path, public_key: Path | None) -> ReportEntry:
    html = path.with_suffix(".html")
    html_name = html.name if html.is_file() else None
    try:
        if path.stat().st_size > MAX_REPORT_BYTES:
            raise ValueError(f"larger than {MAX_REPORT_BYTES // 2**20} MiB")
        document = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return ReportEntry(path.name, html_name, path.stem, "", "", "unreadable", str(exc))
    title, generated = str(document.get("title", path.stem)), str(document.get("generated", ""))
    verdict = str(document.get("verdict", ""))
    if "signature" not in document:
        return ReportEntry(
            path.name, html_name, title, generated, verdict, "unsigned", "no signature"
        )
    try:
        result = verify_document(document, public_key_file=public_key, search_dir=path.parent)
    except DistillGuardError as exc:
        return ReportEntry(path.name, html_name, title, generated, verdict, "invalid", exc.message)
    whose = "the provider's key" if result.trusted_key else "the key it carries"
    detail = f"valid, by {whose} {result.key_fingerprint}"
    if result.inputs_missing:
        detail += f"; inputs not found beside it: {', '.join(result.inputs_missing)}"
    return ReportEntry(path.name, html_name, title, generated, verdict, "signed", detail)


def list_reports(request: Request) -> tuple[Path, list[ReportEntry]]:
    folder = reports_dir(request)
    if not folder.is_dir():
        return folder, []
    files = sorted(
        (p for p in folder.glob("*.json") if p.is_file()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )[:MAX_REPORTS]
    public_key = _trusted_key(request)
    out = []
    for path in files:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with _lock:
            entry = _checked.get(key)
        if entry is None:
            entry = _check(path, public_key)
            with _lock:
                _checked[key] = entry
        out.append(entry)
    return folder, out


@router.get("/reports/{name}")
def open_report(request: Request, name: str) -> Response:
    """A report's HTML or JSON, by file name, from the reports folder only."""
    require_session(request)
    suffix = Path(name).suffix
    folder = reports_dir(request)
    path = folder / name
    if (
        suffix not in REPORT_TYPES
        or "/" in name
        or "\\" in name
        or name.startswith(".")
        or not path.is_file()
        or path.resolve().parent != folder.resolve()
    ):
        raise ConsolePage(404, "Unknown report", f"No report named {name!r} in {folder}.")
    response = Response(path.read_bytes(), media_type=REPORT_TYPES[suffix])
    response.headers["Content-Security-Policy"] = REPORT_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    return response


__all__: list[Any] = ["list_reports"]
