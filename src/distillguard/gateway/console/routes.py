"""``/console``: the operator console's pages (server-rendered, autoescaped Jinja2).

Every route but the login form needs the signed session cookie; every POST that changes state
needs the session's CSRF token. Errors render as a page with a sentence, never a stack trace
(``ConsoleRoute``). Database work runs in FastAPI's thread pool (plain ``def`` handlers).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from importlib import resources
from typing import Annotated, Any

import anyio.from_thread
from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy import select

from distillguard.errors import DistillGuardError, InputError
from distillguard.gateway.console import charts, queries
from distillguard.gateway.console.clusters import KIND_WORDS, ClusterCache, ClusterConfig, Snapshot
from distillguard.gateway.console.session import (
    COOKIE_NAME,
    ConsoleSession,
    SessionError,
    csrf_matches,
    issue,
    token_matches,
    verify,
)
from distillguard.store import accounts as store_accounts
from distillguard.store import actions as store_actions
from distillguard.store.db import session_scope
from distillguard.store.schema import Account

log = logging.getLogger("distillguard.gateway.console")

TEMPLATES = Environment(
    loader=PackageLoader("distillguard.gateway.console", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
)
TEMPLATES.filters["utc"] = lambda ts: (
    "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))
)
STATIC_TYPES = {".css": "text/css; charset=utf-8"}
# The overview's windows (hours) and bars per window: whole minutes per bar, so the charts
# read the per-minute rollup (1 h: 1 min bars, 6 h: 5 min, 24 h: 30 min, 7 d: 2 h).
BARS = {1: 60, 6: 72, 24: 48, 168: 84}
WINDOWS_H = tuple(BARS)


def minute_end(ts: float | None) -> float:
    """The minute boundary at or after ``ts`` (now without one): where a chart ends."""
    return math.ceil((time.time() if ts is None else ts) / 60.0) * 60.0


@dataclass(frozen=True)
class ConsoleConfig:
    session_ttl_s: float = 8 * 3600.0  # one working day; after it the analyst signs in again
    page_size: int = 20  # prompts/actions per page: a screenful, and a cheap LIMIT query
    significance: float = 1e-3  # watermark p-value under which the evidence page names a match
    clusters: ClusterConfig = field(default_factory=ClusterConfig)  # linking over the log

    def __post_init__(self) -> None:
        if self.session_ttl_s <= 0:
            raise ValueError("session_ttl_s must be > 0")
        if not 1 <= self.page_size <= 500:
            raise ValueError("page_size must be in [1, 500]")
        if not 0 < self.significance < 1:
            raise ValueError("significance must be in (0, 1)")


class LoginRequired(Exception):
    def __init__(self, message: str) -> None:
        self.message = message


class ConsolePage(Exception):
    """A page with a message and a status (the console's error answer)."""

    def __init__(self, status: int, title: str, message: str) -> None:
        self.status, self.title, self.message = status, title, message


def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("csrf", getattr(request.state, "console_csrf", None))
    html = TEMPLATES.get_template(name).render(request=request, **context)
    response = HTMLResponse(html, status_code=status)
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


class ConsoleRoute(APIRoute):
    """Turns every failure of a console handler into a page: sign-in redirect, a message
    with its status, or (unexpected) a generic 500 page with the details only in the log."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except LoginRequired as exc:
                return render(request, "login.html", status=401, error=exc.message, csrf=None)
            except ConsolePage as exc:
                return render(
                    request, "message.html", status=exc.status, title=exc.title, message=exc.message
                )
            except DistillGuardError as exc:
                return render(
                    request,
                    "message.html",
                    status=exc.status_code,
                    title=type(exc).__name__,
                    message=exc.message,
                )
            except Exception:
                log.exception("console page failed: %s", request.url.path)
                return render(
                    request,
                    "message.html",
                    status=500,
                    title="Something went wrong",
                    message="The page could not be built; the details are in the gateway's log.",
                )

        return run


router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)


def _state(request: Request) -> Any:
    return request.app.state.gateway


def _config(request: Request) -> ConsoleConfig:
    return request.app.state.console_config


def _clusters(request: Request) -> ClusterCache:
    return request.app.state.console_clusters


def _admin_token(request: Request) -> str:
    token = _state(request).admin_token
    if not token:
        raise ConsolePage(
            403, "Console off", "No admin token is configured (DISTILLGUARD_ADMIN_TOKEN)."
        )
    return token


def require_session(request: Request) -> ConsoleSession:
    token = _admin_token(request)
    try:
        session = verify(token, request.cookies.get(COOKIE_NAME))
    except SessionError as exc:
        raise LoginRequired(exc.message) from None
    request.state.console_csrf = session.csrf
    return session


def require_csrf(request: Request, submitted: str | None) -> ConsoleSession:
    session = require_session(request)
    if not csrf_matches(session, submitted):
        raise ConsolePage(
            403,
            "Form refused",
            "The form's security token does not match your session; reload the page and retry.",
        )
    return session


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


# --- sign in / out --------------------------------------------------------------------------


@router.get("/login")
def login_form(request: Request) -> HTMLResponse:
    return render(request, "login.html", csrf=None)


@router.post("/login")
async def login(request: Request, token: Annotated[str, Form()] = "") -> Response:
    """Sign in. Failures count against the admin credential's per-IP budget, the one the
    admin API counts against (with Redis, across every replica): /console is not a second
    door with a budget of its own. Async: the guard talks to Redis on the loop."""
    admin = _admin_token(request)
    ip = _client_ip(request)
    state = _state(request)
    guard = state.login_guard
    now = time.monotonic()
    wait = await guard.retry_after(ip, now)
    if wait is not None:
        state.metrics.admin_logins.labels("rate_limited").inc()
        response = render(
            request,
            "login.html",
            status=429,
            csrf=None,
            error=f"Too many failed sign-ins from {ip}; try again in {math.ceil(wait)} s.",
        )
        response.headers["Retry-After"] = str(math.ceil(wait))
        return response
    if not token or not token_matches(admin, token):
        await guard.failed(ip, now)
        state.metrics.admin_logins.labels("rejected").inc()
        log.warning("console: failed sign-in from %s", ip)
        return render(request, "login.html", status=401, csrf=None, error="Wrong admin token.")
    config = _config(request)
    _clusters(request).get(state.engine, wait=False)  # the overview's clusters, computing
    cookie, _ = issue(admin, config.session_ttl_s)
    redirect = RedirectResponse("/console", status_code=303)
    redirect.set_cookie(
        COOKIE_NAME,
        cookie,
        max_age=int(config.session_ttl_s),
        path="/console",
        secure=True,
        httponly=True,
        samesite="strict",
    )
    return redirect


@router.post("/logout")
def logout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    require_csrf(request, csrf)
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(COOKIE_NAME, path="/console", secure=True, httponly=True)
    return response


@router.get("/static/{name}")
def static(request: Request, name: str) -> Response:
    require_session(request)
    suffix = name[name.rfind(".") :] if "." in name else ""
    files = resources.files("distillguard.gateway.console") / "static"
    if suffix not in STATIC_TYPES or "/" in name or name.startswith("."):
        raise ConsolePage(404, "Not found", "No such file.")
    path = files / name
    if not path.is_file():
        raise ConsolePage(404, "Not found", "No such file.")
    return Response(path.read_bytes(), media_type=STATIC_TYPES[suffix])


# --- overview ------------------------------------------------------------------------------


def _risk_bands(flags: list[dict[str, Any]]) -> list[tuple[str, int]]:
    bands = {"high (score >= 0.8)": 0, "medium (0.5-0.8)": 0, "low (< 0.5)": 0}
    for flag in flags:
        score = float(flag.get("score", 0.0))
        key = "high (score >= 0.8)" if score >= 0.8 else "medium (0.5-0.8)"
        bands[key if score >= 0.5 else "low (< 0.5)"] += 1
    return list(bands.items())


@dataclass(frozen=True)
class ClusterSummary:
    cluster_id: str
    size: int  # members linked together
    acted: tuple[str, ...]  # member ids with an action in force
    p_value: float | None  # the coordination test's family-wise p-value (None: not tested)
    evidence: tuple[str, ...]  # the kinds of link that tie it, in words


def largest_clusters(
    snapshot: Snapshot | None, acted: set[str], limit: int = 5
) -> list[ClusterSummary] | None:
    """The largest linked clusters of the log (None: the first computation is running)."""
    if snapshot is None:
        return None
    out = []
    for c in snapshot.clusters[:limit]:
        test = snapshot.tests.get(c.cluster_id)
        out.append(
            ClusterSummary(
                cluster_id=c.cluster_id,
                size=len(c.members),
                acted=tuple(m for m in c.members if m in acted),
                p_value=None if test is None else test.p_value,
                evidence=tuple(KIND_WORDS.get(k, k) for k in c.evidence),
            )
        )
    return out


@router.get("")
def overview(request: Request, hours: Annotated[int, Query()] = 24) -> HTMLResponse:
    require_session(request)
    if hours not in WINDOWS_H:
        raise InputError(f"the window must be one of {WINDOWS_H} hours, got {hours}")
    state = _state(request)
    with session_scope(state.engine) as session:
        end = minute_end(queries.latest_ts(session))
        series = queries.traffic_series(
            session, end=end, span_s=hours * 3600.0, num_buckets=BARS[hours]
        )
        top = queries.top_accounts(session, since=series.start)
        acted = queries.acted_on(session)
        recent = queries.recent_actions(session, limit=15)
    flags = state.monitor.flags() if state.monitor is not None else None
    starts = [b.start for b in series.buckets]
    return render(
        request,
        "overview.html",
        hours=hours,
        windows=WINDOWS_H,
        end=end,
        requests_chart=charts.bar_chart(
            "Requests", starts, [b.requests for b in series.buckets], series.width_s
        ),
        tokens_chart=charts.bar_chart(
            "Tokens", starts, [b.tokens for b in series.buckets], series.width_s
        ),
        top=top,
        acted=acted,
        recent=recent,
        flags=flags,
        risk_bands=_risk_bands(flags or []),
        clusters=largest_clusters(
            _clusters(request).get(state.engine, wait=False),
            {action.account_id for action, _ in acted},
        ),
    )


# --- account -------------------------------------------------------------------------------


def _load_account(session: Any, account: str) -> Account:
    row = session.get(Account, account) or session.scalar(
        select(Account).where(Account.name == account)
    )
    if row is None:
        raise ConsolePage(404, "Unknown account", f"No account has the id or name {account!r}.")
    return row


NOTICES = {"applied": "Action applied.", "lifted": "Action lifted.", "extended": "Action extended."}
EXTEND_DAYS = (1, 7, 30, 90)  # the new lifetimes the account page offers, from now


def cluster_of(request: Request, account_id: str) -> tuple[str, int] | None:
    """(cluster id, size) of the account's cluster in the current snapshot, if any (never
    waits: the account page must not pay for a first computation)."""
    snapshot = _clusters(request).get(_state(request).engine, wait=False)
    if snapshot is None or account_id not in snapshot.member_of:
        return None
    found = snapshot.cluster(snapshot.member_of[account_id])
    return (found.cluster_id, len(found.members)) if found else None


def _account_page(
    request: Request,
    account: str,
    *,
    page: int = 0,
    show_prompts: bool = False,
    notice: str | None = None,
    error: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    state = _state(request)
    size = _config(request).page_size
    with session_scope(state.engine) as session:
        row = _load_account(session, account)
        info = store_accounts.get_account(session, account=row.id)
        end = minute_end(queries.latest_ts(session, row.id))
        series = queries.traffic_series(session, end=end, span_s=24 * 3600.0, account_id=row.id)
        prompts = queries.account_prompts(
            session, account_id=row.id, limit=size + 1, offset=page * size
        )
        linked = queries.linked_accounts(session, account=row)
        actions = queries.recent_actions(session, account_id=row.id, limit=100)
        keys = store_accounts.list_keys(session, account=row.id)
        in_force = [a for a in store_actions.active_actions(session) if a.account_id == row.id]
        blocked = any(a.action == "block" for a in in_force)
    flag = None
    if state.monitor is not None:
        flag = next((f for f in state.monitor.flags() if f.get("account_id") == row.id), None)
    latest = actions[0][0] if actions else None
    return render(
        request,
        "account.html",
        status=status,
        account=info,
        keys=keys,
        chart=charts.bar_chart(
            "Requests (24 h to its latest request)",
            [b.start for b in series.buckets],
            [b.requests for b in series.buckets],
            series.width_s,
        ),
        total_requests=series.total_requests,
        prompts=prompts[:size],
        page=page,
        has_next=len(prompts) > size,
        show_prompts=show_prompts,
        linked=linked,
        cluster=cluster_of(request, row.id),
        actions=actions,
        in_force={a.id for a in in_force},
        extend_days=EXTEND_DAYS,
        blocked=blocked,
        latest=latest,
        flag=flag,
        notice=NOTICES.get(notice or ""),
        error=error,
    )


@router.get("/accounts/{account}")
def account_page(
    request: Request,
    account: str,
    page: Annotated[int, Query(ge=0, le=100_000)] = 0,
    show: Annotated[int, Query(ge=0, le=1)] = 0,
    notice: Annotated[str | None, Query()] = None,
) -> HTMLResponse:
    require_session(request)
    return _account_page(request, account, page=page, show_prompts=bool(show), notice=notice)


CONSOLE_BLOCK_TTL_S = 30 * 24 * 3600.0  # a console block lasts 30 days unless lifted sooner


def _apply_status(request: Request, account: str, *, lift: bool, reason: str) -> str:
    """Block the account, or lift every action in force on it, through the audited actions
    path the admin API uses (``store.actions``: actor, reason, expiry, audit row), then have
    every replica reload (this one before the page returns)."""
    state = _state(request)
    actor = f"console:{_client_ip(request)}"
    with session_scope(state.engine) as session:
        row = _load_account(session, account)
        if lift:
            for action in store_actions.active_actions(session):
                if action.account_id == row.id:
                    store_actions.lift_action(
                        session, action_id=action.id, reason=reason, actor=actor
                    )
        else:
            store_actions.apply_action(
                session,
                account=row.id,
                action="block",
                reason=reason,
                ttl_s=CONSOLE_BLOCK_TTL_S,
                actor=actor,
            )
        account_id = row.id
    # handlers run on anyio's worker threads: hop back to the loop to publish the change
    anyio.from_thread.run(state.enforcement.publish_change)
    log.info("console: %s %s (%s)", "lift" if lift else "block", account_id, reason)
    return account_id


def _change(request: Request, account: str, csrf: str, reason: str, lift: bool) -> Response:
    require_csrf(request, csrf)
    reason = reason.strip()
    if not reason:
        return _account_page(
            request, account, error="A reason is required: say why, for the audit.", status=400
        )
    if len(reason) > 2000:
        return _account_page(
            request, account, error="The reason is too long (2000 characters at most).", status=400
        )
    account_id = _apply_status(request, account, lift=lift, reason=reason)
    notice = "lifted" if lift else "applied"
    return RedirectResponse(f"/console/accounts/{account_id}?notice={notice}", status_code=303)


@router.post("/accounts/{account}/actions")
def apply_action(
    request: Request,
    account: str,
    csrf: Annotated[str, Form()] = "",
    reason: Annotated[str, Form()] = "",
) -> Response:
    return _change(request, account, csrf, reason, lift=False)


@router.post("/accounts/{account}/lift")
def lift_action(
    request: Request,
    account: str,
    csrf: Annotated[str, Form()] = "",
    reason: Annotated[str, Form()] = "",
) -> Response:
    return _change(request, account, csrf, reason, lift=True)


@router.post("/actions/{action_id}/extend")
def extend_action(
    request: Request,
    action_id: int,
    csrf: Annotated[str, Form()] = "",
    reason: Annotated[str, Form()] = "",
    days: Annotated[int, Form()] = 0,
) -> Response:
    """A new expiry for an action in force, ``days`` from now, through ``store.actions``
    (audited like apply and lift)."""
    require_csrf(request, csrf)
    state = _state(request)
    with session_scope(state.engine) as session:
        action = store_actions.get_action(session, action_id=action_id)  # NotFound: 404 page
    if not reason.strip():
        return _account_page(
            request,
            action.account_id,
            error="A reason is required to extend an action: say why, for the audit.",
            status=400,
        )
    if days not in EXTEND_DAYS:
        raise InputError(f"the new lifetime must be one of {EXTEND_DAYS} days, got {days}")
    with session_scope(state.engine) as session:
        store_actions.extend_action(
            session,
            action_id=action_id,
            ttl_s=days * 86_400.0,
            reason=reason,
            actor=f"console:{_client_ip(request)}",
        )
    anyio.from_thread.run(state.enforcement.publish_change)
    log.info("console: extend action %d by %d days (%s)", action_id, days, reason.strip())
    return RedirectResponse(
        f"/console/accounts/{action.account_id}?notice=extended", status_code=303
    )


# --- search --------------------------------------------------------------------------------


@router.get("/search")
def search(request: Request, q: Annotated[str, Query(max_length=200)] = "") -> HTMLResponse:
    require_session(request)
    with session_scope(_state(request).engine) as session:
        hits = queries.search(session, q)
    return render(request, "search.html", q=q, hits=hits)


__all__ = ["ConsoleConfig", "router"]
