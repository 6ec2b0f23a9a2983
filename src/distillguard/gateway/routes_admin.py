"""``/admin``: accounts, keys, recent exchanges, enforcement actions, audit and flags.

Thin routes: parse, call the store, return. Database work runs in threads (FastAPI's pool
for plain ``def`` handlers, ``asyncio.to_thread`` in the async ones), never on the event
loop that serves the API. Every change - an action applied or lifted, an account's status,
a key created or revoked - is written with an audit event naming the admin who made it, in
the same transaction.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from distillguard.gateway.auth import AdminAuth
from distillguard.gateway.routes_watermark import router as watermark_router
from distillguard.store import accounts as store_accounts
from distillguard.store import actions as store_actions
from distillguard.store import exchanges as store_exchanges
from distillguard.store.db import clean_text, session_scope

router = APIRouter(prefix="/admin", tags=["admin"])
router.include_router(watermark_router)  # /admin/watermark/detect, its own AdminAuth


class NewAccount(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    org: str | None = None
    payment_fingerprint: str | None = None


class NewKey(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    account: str = Field(min_length=1)  # id or name
    # The columns are 32-bit INTEGERs: a larger limit would fail the insert (a 500 before).
    rpm: int | None = Field(default=None, ge=1, le=2**31 - 1)
    tpm: int | None = Field(default=None, ge=1, le=2**31 - 1)
    alias: str | None = Field(default=None, min_length=1, max_length=200)
    expires_at: float | None = None  # Unix seconds
    expires_in_s: float | None = Field(default=None, gt=0)  # or: this long from now
    metadata: dict[str, Any] | None = None
    token_budget: int | None = Field(default=None, ge=1)  # lifetime tokens
    spend_budget_usd: float | None = Field(default=None, gt=0)  # lifetime spend at the prices


class AccountStatus(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    status: str
    reason: str | None = Field(default=None, max_length=2000)  # kept in the audit log


class NewAction(BaseModel):
    # Names, params, reason and ttl are checked by the store (one set of rules and messages
    # for the API and the CLI); here only the shape.
    model_config = ConfigDict(extra="forbid")
    account: str = Field(min_length=1, max_length=200)  # id or name
    action: str = Field(min_length=1, max_length=40)
    reason: str
    ttl_s: float
    params: dict[str, Any] | None = None


class Lift(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str


class Extend(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ttl_s: float  # the new lifetime, counted from now
    reason: str


def _engine(request: Request):
    return request.app.state.gateway.engine


def _ip(request: Request) -> str | None:
    return request.client.host if request.client else None


@router.post("/accounts", status_code=201)
def create_account(body: NewAccount, request: Request, admin: AdminAuth) -> dict[str, Any]:
    with session_scope(_engine(request)) as session:
        info = store_accounts.create_account(
            session, name=body.name, org=body.org, payment_fingerprint=body.payment_fingerprint
        )
        store_actions.record_audit(
            session, actor=admin.actor, event="account.create", account_id=info.id, ip=_ip(request)
        )
    return asdict(info)


@router.get("/accounts")
def list_accounts(request: Request, _: AdminAuth) -> dict[str, Any]:
    with session_scope(_engine(request)) as session:
        return {"data": [asdict(a) for a in store_accounts.list_accounts(session)]}


@router.post("/accounts/{account}/status")
def set_account_status(
    account: str, body: AccountStatus, request: Request, admin: AdminAuth
) -> dict[str, Any]:
    with session_scope(_engine(request)) as session:
        account = clean_text(account)  # a NUL from the URL is an unknown account, not a 5xx
        before = store_accounts.get_account(session, account=account).status
        info = store_accounts.set_account_status(session, account=account, status=body.status)
        store_actions.record_audit(
            session,
            actor=admin.actor,
            event="account.status",
            account_id=info.id,
            reason=body.reason,
            ip=_ip(request),
            details={"from": before, "to": info.status},
        )
    return asdict(info)


@router.post("/keys", status_code=201)
def create_key(body: NewKey, request: Request, admin: AdminAuth) -> dict[str, Any]:
    settings = request.app.state.gateway.settings
    expires_at = store_accounts.expiry_time(body.expires_at, body.expires_in_s)
    if body.spend_budget_usd is not None:
        store_accounts.require_prices(settings.prices_set)
    with session_scope(_engine(request)) as session:
        info, secret = store_accounts.create_key(
            session,
            account=clean_text(body.account),
            rpm=body.rpm,
            tpm=body.tpm,
            alias=body.alias,
            expires_at=expires_at,
            metadata=body.metadata,
            token_budget=body.token_budget,
            spend_budget_usd=body.spend_budget_usd,
        )
        store_actions.record_audit(
            session,
            actor=admin.actor,
            event="key.create",
            account_id=info.account_id,
            target=info.key_id,
            ip=_ip(request),
            details={
                "rpm": info.rpm,
                "tpm": info.tpm,
                "alias": info.alias,
                "expires_at": info.expires_at,
                "token_budget": info.token_budget,
                "spend_budget_usd": info.spend_budget_usd,
            },
        )
    return {"key": asdict(info), "secret": secret}


@router.get("/keys")
def list_keys(
    request: Request, _: AdminAuth, account: Annotated[str | None, Query()] = None
) -> dict[str, Any]:
    with session_scope(_engine(request)) as session:
        return {
            "data": [
                asdict(k)
                for k in store_accounts.list_keys(
                    session, account=None if account is None else clean_text(account)
                )
            ]
        }


@router.post("/keys/{key_id}/revoke")
def revoke_key(key_id: str, request: Request, admin: AdminAuth) -> dict[str, Any]:
    # Takes effect on the next request in every replica: keys are checked in the database.
    with session_scope(_engine(request)) as session:
        info = store_accounts.revoke_key(session, key_id=clean_text(key_id))
        store_actions.record_audit(
            session,
            actor=admin.actor,
            event="key.revoke",
            account_id=info.account_id,
            target=info.key_id,
            ip=_ip(request),
        )
    return asdict(info)


@router.get("/exchanges")
def list_exchanges(
    request: Request,
    _: AdminAuth,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    account: Annotated[str | None, Query()] = None,
) -> dict[str, Any]:
    with session_scope(_engine(request)) as session:
        account_id = None
        if account is not None:
            account_id = store_accounts.get_account(session, account=clean_text(account)).id
        rows = store_exchanges.recent_exchanges(session, limit=limit, account_id=account_id)
    return {"data": [asdict(r) for r in rows]}


@router.post("/actions", status_code=201)
async def apply_action(body: NewAction, request: Request, admin: AdminAuth) -> dict[str, Any]:
    """Apply an action with a reason and a lifetime; every replica enforces it within
    seconds (at once with Redis)."""

    def work() -> store_actions.ActionRecord:
        with session_scope(_engine(request)) as session:
            return store_actions.apply_action(
                session,
                account=body.account,
                action=body.action,
                reason=body.reason,
                ttl_s=body.ttl_s,
                params=body.params,
                actor=admin.actor,
            )

    record = await asyncio.to_thread(work)
    await request.app.state.gateway.enforcement.publish_change()
    return record.as_dict(time.time())


@router.post("/actions/{action_id}/lift")
async def lift_action(
    action_id: Annotated[int, Path(ge=1, le=store_actions.MAX_ACTION_ID)],
    body: Lift,
    request: Request,
    admin: AdminAuth,
) -> dict[str, Any]:
    """Lift an active action with a reason (404 unknown, 409 already lifted or expired)."""

    def work() -> store_actions.ActionRecord:
        with session_scope(_engine(request)) as session:
            return store_actions.lift_action(
                session, action_id=action_id, reason=body.reason, actor=admin.actor
            )

    record = await asyncio.to_thread(work)
    await request.app.state.gateway.enforcement.publish_change()
    return record.as_dict(time.time())


@router.post("/actions/{action_id}/extend")
async def extend_action(
    action_id: Annotated[int, Path(ge=1, le=store_actions.MAX_ACTION_ID)],
    body: Extend,
    request: Request,
    admin: AdminAuth,
) -> dict[str, Any]:
    """Give an active action a new expiry, ``ttl_s`` from now, with a reason (400 ttl_s not
    in (0, a year], 404 unknown, 409 lifted or expired)."""

    def work() -> store_actions.ActionRecord:
        with session_scope(_engine(request)) as session:
            return store_actions.extend_action(
                session,
                action_id=action_id,
                ttl_s=body.ttl_s,
                reason=body.reason,
                actor=admin.actor,
            )

    record = await asyncio.to_thread(work)
    await request.app.state.gateway.enforcement.publish_change()
    return record.as_dict(time.time())


@router.get("/actions")
def list_actions(
    request: Request,
    _: AdminAuth,
    account: Annotated[str | None, Query()] = None,
    state: Annotated[Literal["all", "active"], Query()] = "all",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    now = time.time()
    with session_scope(_engine(request)) as session:
        account_id = None
        if account is not None:
            account_id = store_accounts.get_account(session, account=clean_text(account)).id
        if state == "active":
            active = store_actions.active_actions(session, now=now)
            rows = [r for r in active if account_id is None or r.account_id == account_id]
            rows = rows[-limit:]
        else:
            rows = store_actions.list_actions(session, account_id=account_id, limit=limit)
    return {"data": [r.as_dict(now) for r in rows]}


@router.get("/audit")
def list_audit(
    request: Request,
    _: AdminAuth,
    account: Annotated[str | None, Query()] = None,
    event: Annotated[str | None, Query(max_length=40)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    with session_scope(_engine(request)) as session:
        account_id = None
        if account is not None:
            account_id = store_accounts.get_account(session, account=clean_text(account)).id
        rows = store_actions.list_audit(session, account_id=account_id, event=event, limit=limit)
    return {"data": [asdict(r) for r in rows]}


@router.get("/flags")
def flags(request: Request, _: AdminAuth) -> dict[str, Any]:
    monitor = request.app.state.gateway.monitor
    return {"monitor": monitor is not None, "data": monitor.flags() if monitor is not None else []}
