"""The forensic reports the evidence page lists: each signed report under the reports folder
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

from distillguard.errors import DistillGuardError
from distillguard.forensics.custody import PUBLIC_KEY_NAME, verify_document

MAX_REPORTS = 200  # newest listed; an archive beyond it is read with `prove verify`
MAX_REPORT_BYTES = 50 * 1024 * 1024  # a report's JSON (plots are in the HTML, not here)


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


def list_reports(folder: Path, public_key: Path | None) -> list[ReportEntry]:
    """The newest ``MAX_REPORTS`` report JSONs in ``folder``, each checked (once per version)."""
    if not folder.is_dir():
        return []
    files = sorted(
        (p for p in folder.glob("*.json") if p.is_file()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )[:MAX_REPORTS]
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
    return out


def trusted_key(signing_key_file: Path | None) -> Path | None:
    """The provider's public key, beside the signing key (``prove keygen`` writes both)."""
    public = Path(signing_key_file).with_name(PUBLIC_KEY_NAME) if signing_key_file else None
    return public if public is not None and public.is_file() else None
