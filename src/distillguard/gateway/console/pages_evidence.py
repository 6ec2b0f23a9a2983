"""``/console/evidence``: test pasted text for the watermark (p-value, the account named when
significant), above the forensic reports list; ``/console/reports/{name}`` opens a report
(its page or its JSON) behind the session."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import Form, Request, Response
from fastapi.responses import HTMLResponse

from distillguard.errors import DistillGuardError
from distillguard.gateway.console import reports
from distillguard.gateway.console.routes import (
    ConsolePage,
    _config,
    _state,
    render,
    require_csrf,
    require_session,
    router,
)
from distillguard.store import accounts as store_accounts
from distillguard.store.db import session_scope

MAX_EVIDENCE_CHARS = 200_000


def render_evidence(request: Request, **context: Any) -> HTMLResponse:
    """The evidence page: the watermark test's form (and result) above the reports list."""
    settings = _state(request).settings
    folder = Path(settings.resolved_reports_dir)
    found = reports.list_reports(folder, reports.trusted_key(settings.evidence_signing_key_file))
    return render(request, "evidence.html", reports=found, reports_dir=folder, **context)


@router.get("/evidence")
def evidence_form(request: Request) -> HTMLResponse:
    require_session(request)
    return render_evidence(request, result=None, text="")


@router.post("/evidence")
def evidence(
    request: Request, csrf: Annotated[str, Form()] = "", text: Annotated[str, Form()] = ""
) -> HTMLResponse:
    require_csrf(request, csrf)
    if not text.strip():
        return render_evidence(
            request,
            status=400,
            result=None,
            text=text,
            error="Paste the text to test.",
        )
    if len(text) > MAX_EVIDENCE_CHARS:
        return render_evidence(
            request,
            status=413,
            result=None,
            text="",
            error=f"The text is too long ({len(text)} characters; {MAX_EVIDENCE_CHARS} at most).",
        )
    from distillguard.gateway.routes_watermark import _detectors

    state = _state(request)
    with session_scope(state.engine) as session:
        account_ids = [a.id for a in store_accounts.list_accounts(session)][:10_000]
    try:
        detector = _detectors(request).get(state, None, None)
        result = detector.detect_batch([text], accounts=account_ids)[0]
    except DistillGuardError as exc:
        return render_evidence(
            request,
            status=exc.status_code,
            result=None,
            text=text,
            error=f"Detection could not run: {exc.message}",
        )
    if isinstance(result, DistillGuardError):
        return render_evidence(request, status=400, result=None, text=text, error=result.message)
    alpha = _config(request).significance
    named = [m for m in result.accounts if m.p_value_corrected < alpha]
    return render_evidence(
        request,
        result=result,
        significant=result.p_value < alpha,
        alpha=alpha,
        named=named,
        text=text,
    )


# --- reports -------------------------------------------------------------------------------

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
