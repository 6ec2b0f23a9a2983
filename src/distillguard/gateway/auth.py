"""Who is calling: API keys on the OpenAI routes, the admin token on ``/admin``.

API keys are checked against the database on every request (``store.authenticate``: one
primary-key lookup plus a constant-time hash compare, ~30 µs on SQLite). No cache sits between
a revocation and the next request, so ``keys revoke`` - from the admin API, the CLI, or another
replica - refuses the key at once. The lookup runs on a connection the event loop keeps open;
its read transaction is ended after every check so that the next one sees new commits.

Admin routes use FastAPI dependencies (``AdminAuth``): the token is compared in constant time,
a missing header is 401, a wrong token (or no admin token configured) 403.
"""

from __future__ import annotations

import contextlib
import hmac
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from distillguard.errors import AuthError, PermissionDenied, StoreError
from distillguard.store.accounts import KeyIdentity, authenticate


def bearer_secret(authorization: bytes | str | None) -> str:
    """The secret of an ``Authorization: Bearer <secret>`` header; AuthError otherwise."""
    if not authorization:
        raise AuthError(
            "missing API key: send it as 'Authorization: Bearer <key>'", code="missing_api_key"
        )
    if isinstance(authorization, bytes):
        authorization = authorization.decode("latin-1")
    scheme, _, secret = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise AuthError("the Authorization header must be 'Bearer <key>'", code="invalid_api_key")
    return secret.strip()


class KeyAuthenticator:
    """``store.authenticate`` on a connection owned by the event loop's thread."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn = None

    def authenticate(self, authorization: bytes | str | None) -> KeyIdentity:
        secret = bearer_secret(authorization)
        for attempt in (0, 1):
            conn = self._conn
            if conn is None:
                try:
                    conn = self._conn = self._engine.connect()
                except SQLAlchemyError as exc:
                    raise StoreError(f"database unreachable: {type(exc).__name__}") from exc
            try:
                return authenticate(conn, secret=secret)
            except SQLAlchemyError as exc:
                # A dropped connection (database restart): reconnect once, then give up.
                self.close()
                if attempt:
                    raise StoreError(
                        f"database error during key check: {type(exc).__name__}"
                    ) from exc
            finally:
                if self._conn is not None:
                    try:
                        self._conn.rollback()  # end the read snapshot: see the next revocation
                    except SQLAlchemyError:
                        self.close()
        raise StoreError("database error during key check")  # pragma: no cover - loop returns

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._conn.close()
            self._conn = None


def check_admin_token(expected: str | None, authorization: str | None) -> None:
    """401 without a bearer token, 403 with a wrong one or when no admin token is configured."""
    if not authorization:
        raise AuthError("the admin API needs 'Authorization: Bearer <admin token>'")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AuthError("the admin API needs 'Authorization: Bearer <admin token>'")
    if expected is None:
        raise PermissionDenied("the admin API is disabled: DISTILLGUARD_ADMIN_TOKEN is not set")
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise PermissionDenied("wrong admin token")


async def _require_admin(request: Request) -> None:  # async: runs on the loop
    state = request.app.state.gateway
    check_admin_token(state.admin_token, request.headers.get("authorization"))


async def _require_key(request: Request) -> KeyIdentity:  # async: the loop's connection
    state = request.app.state.gateway
    return state.auth.authenticate(request.headers.get("authorization"))


AdminAuth = Annotated[None, Depends(_require_admin)]
ApiKeyAuth = Annotated[KeyIdentity, Depends(_require_key)]
