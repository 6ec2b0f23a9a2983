"""``/admin``: accounts, keys, recent exchanges, enforcement actions and flags (admin token).

Thin routes: parse, call the store, return. Database work runs in FastAPI's thread pool (the
handlers are plain ``def``), never on the event loop that serves the API.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from distillguard.gateway.auth import AdminAuth
from distillguard.gateway.routes_watermark import router as watermark_router
from distillguard.store import accounts as store_accounts
from distillguard.store import exchanges as store_exchanges
from distillguard.store.db import session_scope

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


def _engine(request: Request):
    return request.app.state.gateway.engine


@router.post("/accounts", status_code=201)
def create_account(body: NewAccount, request: Request, _: AdminAuth) -> dict[str, Any]:
    with session_scope(_engine(request)) as session:
        info = store_accounts.create_account(
            session, name=body.name, org=body.org, payment_fingerprint=body.payment_fingerprint
        )
    return asdict(info)


@router.get("/accounts")
def list_accounts(request: Request, _: AdminAuth) -> dict[str, Any]:
    with session_scope(_engine(request)) as session:
        return {"data": [asdict(a) for a in store_accounts.list_accounts(session)]}


@router.post("/accounts/{account}/status")
def set_account_status(
    account: str, body: AccountStatus, request: Request, _: AdminAuth
) -> dict[str, Any]:
    with session_scope(_engine(request)) as session:
        info = store_accounts.set_account_status(session, account=account, status=body.status)
    return asdict(info)


@router.post("/keys", status_code=201)
def create_key(body: NewKey, request: Request, _: AdminAuth) -> dict[str, Any]:
    settings = request.app.state.gateway.settings
    expires_at = store_accounts.expiry_time(body.expires_at, body.expires_in_s)
    if body.spend_budget_usd is not None:
        store_accounts.require_prices(settings.prices_set)
    with session_scope(_engine(request)) as session:
        info, secret = store_accounts.create_key(
            session,
            account=body.account,
            rpm=body.rpm,
            tpm=body.tpm,
            alias=body.alias,
            expires_at=expires_at,
            metadata=body.metadata,
            token_budget=body.token_budget,
            spend_budget_usd=body.spend_budget_usd,
        )
    return {"key": asdict(info), "secret": secret}


@router.get("/keys")
def list_keys(
    request: Request, _: AdminAuth, account: Annotated[str | None, Query()] = None
) -> dict[str, Any]:
    with session_scope(_engine(request)) as session:
        return {"data": [asdict(k) for k in store_accounts.list_keys(session, account=account)]}


@router.post("/keys/{key_id}/revoke")
def revoke_key(key_id: str, request: Request, _: AdminAuth) -> dict[str, Any]:
    # Takes effect on the next request in every replica: keys are checked in the database.
    with session_scope(_engine(request)) as session:
        return asdict(store_accounts.revoke_key(session, key_id=key_id))


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
            account_id = store_accounts.get_account(session, account=account).id
        rows = store_exchanges.recent_exchanges(session, limit=limit, account_id=account_id)
    return {"data": [asdict(r) for r in rows]}


@router.get("/actions")
def list_actions(
    request: Request,
    _: AdminAuth,
    account: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    with session_scope(_engine(request)) as session:
        account_id = None
        if account is not None:
            account_id = store_accounts.get_account(session, account=account).id
        rows = store_exchanges.list_actions(session, account_id=account_id, limit=limit)
    return {"data": [asdict(r) for r in rows]}


@router.get("/flags")
def flags(request: Request, _: AdminAuth) -> dict[str, Any]:
    monitor = request.app.state.gateway.monitor
    return {"monitor": monitor is not None, "data": monitor.flags() if monitor is not None else []}
