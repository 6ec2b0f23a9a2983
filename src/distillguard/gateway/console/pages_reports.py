"""``/console/reports/{name}``: a forensic report's page or JSON, behind the session."""

from __future__ import annotations

from pathlib import Path

from fastapi import Request, Response

from distillguard.gateway.console.routes import ConsolePage, _state, require_session, router

REPORT_TYPES = {".html": "text/html; charset=utf-8", ".json": "application/json"}
# A report page is the forensics module's own self-contained HTML (inline CSS, base64 plots):
# sandboxed, no script, nothing fetched.
REPORT_CSP = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:"


@router.get("/reports/{name}")
def open_report(request: Request, name: str) -> Response:
    """A report's HTML or JSON, by file name, from the reports folder only."""
    require_session(request)
    suffix = Path(name).suffix
    folder = Path(_state(request).settings.resolved_reports_dir)
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
