"""Who is calling: API keys on the OpenAI routes, the admin token on ``/admin``.

API keys are checked against the database on every request (see ``KeyAuthenticator``): no
cache sits between a revocation and the next request, so ``keys revoke`` - from the admin
API, the CLI, or another replica - refuses the key at once. The lookups run on connections the
event loop keeps open; their read transactions end after every check so that the next one
sees new commits.

Admin routes use FastAPI dependencies (``AdminAuth``): the token is compared in constant time,
a missing header is 401, a wrong token (or no admin token configured) 403. Every refused
attempt is written to the audit log (client IP, path, what was wrong; never the token) and
counted per client IP (``gateway.state.AdminLoginGuard``): past ``admin_login_max_failures``
in ``admin_login_window_s`` seconds, every admin call from that IP - right token or not, so
that a guesser cannot tell a hit - is answered 429 with ``Retry-After`` and is not audited
again (the audit log cannot be flooded through it). With Redis the count is shared by every
replica; without it each process counts alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from sqlalchemy import Connection, Engine, bindparam, select
from sqlalchemy.exc import SQLAlchemyError

from distillguard.errors import AuthError, PermissionDenied, RateLimited, StoreError
from distillguard.store.accounts import KeyIdentity, authenticate
from distillguard.store.schema import Account, ApiKey


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


# What a cached identity must still satisfy, read on every request: the key is not revoked
# and its account not suspended. Built from the store's schema, compiled once per dialect.
_STILL_VALID = (
    select(ApiKey.revoked_at, Account.status)
    .join(Account, Account.id == ApiKey.account_id)
    .where(ApiKey.id == bindparam("key_id"))
)
T = TypeVar("T")
_CACHE_SIZE = 10_000  # identities kept; the oldest goes first when full
log = logging.getLogger("distillguard.gateway.auth")


class KeyAuthenticator:
    """Key checks for the hot path: ``store.authenticate`` once per secret, then a
    primary-key revocation check on every request.

    The first request with a secret runs the store's full check (hash, constant-time compare,
    revoked, suspended) on a SQLAlchemy connection. Its identity is then kept in memory keyed
    by the exact secret (a dict hit needs the whole secret; Python's randomized string hashing
    leaks nothing usable through timing), and every later request re-reads only the key's
    ``revoked_at`` and the account's status: one indexed lookup on a raw DBAPI cursor (~5 µs
    on SQLite instead of ~30 µs through the ORM layer). A revocation or suspension, made by
    any process, is therefore seen by the very next request; it then falls back to the full
    check, which raises the proper error.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Connection | None = None  # SQLAlchemy connection for the full check
        self._raw: Any = None  # DBAPI connection for the revocation check (driver's type)
        self._autocommit = False
        self._cache: dict[str, KeyIdentity] = {}
        compiled = _STILL_VALID.compile(dialect=engine.dialect)
        self._sql = str(compiled)
        self._positional = compiled.positiontup  # None for named parameter styles

    def authenticate(self, authorization: bytes | str | None) -> KeyIdentity:
        secret = bearer_secret(authorization)
        identity = self._cache.get(secret)
        if identity is not None:
            if self._still_valid(identity.key_id):
                return identity
            del self._cache[secret]  # revoked or suspended: the full check says which
        identity = self._full_check(secret)
        if len(self._cache) >= _CACHE_SIZE:
            del self._cache[next(iter(self._cache))]
        self._cache[secret] = identity
        return identity

    def _reconnecting(
        self, query: Callable[[], T], drop: Callable[[], None], errors: type[Exception]
    ) -> T:
        """Run ``query``; on a database error drop the connection and run it once more (a
        database restart kills every open connection); a second failure is a StoreError."""
        for attempt in (0, 1):
            try:
                return query()
            except errors as exc:
                drop()
                if attempt:
                    raise StoreError(
                        f"database error during key check: {type(exc).__name__}"
                    ) from exc
        raise AssertionError("unreachable: the loop returns or raises")

    def _still_valid(self, key_id: str) -> bool:
        params: object = {"key_id": key_id}
        if self._positional is not None:
            params = (key_id,)

        def query() -> bool:
            if self._raw is None:
                self._raw = self._open_raw()
            cursor = self._raw.cursor()
            try:
                cursor.execute(self._sql, params)
                row = cursor.fetchone()
            finally:
                cursor.close()
            if not self._autocommit:
                self._raw.rollback()  # end the read snapshot: see the next revocation
            return row is not None and row[0] is None and row[1] == "active"

        # DBAPI errors differ by driver: any exception reconnects once.
        return self._reconnecting(query, self._close_raw, Exception)

    def _full_check(self, secret: str) -> KeyIdentity:
        def query() -> KeyIdentity:
            if self._conn is None:
                try:
                    self._conn = self._engine.connect()
                except SQLAlchemyError as exc:
                    raise StoreError(f"database unreachable: {type(exc).__name__}") from exc
            try:
                return authenticate(self._conn, secret=secret)
            finally:
                if self._conn is not None:
                    try:
                        self._conn.rollback()  # end the read snapshot: see the next revocation
                    except SQLAlchemyError:
                        self._close_conn()

        return self._reconnecting(query, self._close_conn, SQLAlchemyError)

    def _close_conn(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._conn.close()
            self._conn = None

    def _open_raw(self):
        """A DBAPI connection of our own. On PostgreSQL it is taken out of the pool and put
        in autocommit: the check is then one round trip (no BEGIN/ROLLBACK) and always sees
        the newest commit. SQLite's driver opens no transaction for a SELECT anyway."""
        raw = self._engine.raw_connection()
        self._autocommit = False
        if self._engine.dialect.name == "postgresql":
            driver = raw.driver_connection
            raw.detach()  # autocommit must not leak back into the pool
            driver.autocommit = True
            self._autocommit = True
        return raw

    def _close_raw(self) -> None:
        if self._raw is not None:
            with contextlib.suppress(Exception):
                self._raw.close()
            self._raw = None

    def close(self) -> None:
        self._close_conn()
        self._close_raw()
        self._cache.clear()


@dataclass(frozen=True)
class AdminIdentity:
    """Who is calling the admin API: the audit log's actor."""

    name: str

    @property
    def actor(self) -> str:
        return f"admin:{self.name}"


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


async def _require_admin(request: Request) -> AdminIdentity:  # async: runs on the loop
    state = request.app.state.gateway
    ip = request.client.host if request.client else "unknown"
    now = time.monotonic()
    wait = await state.login_guard.retry_after(ip, now)
    if wait is not None:
        state.metrics.admin_logins.labels("rate_limited").inc()
        raise RateLimited(
            "too many failed admin logins from this address; retry later",
            retry_after=wait,
            code="admin_login_rate_limited",
        )
    try:
        check_admin_token(state.admin_token, request.headers.get("authorization"))
    except (AuthError, PermissionDenied) as exc:
        await state.login_guard.failed(ip, now)
        state.metrics.admin_logins.labels("rejected").inc()
        await _audit_failed_login(state, ip, request.url.path, exc.message)
        raise
    return AdminIdentity(state.settings.admin_token_name)


async def _audit_failed_login(state, ip: str, path: str, what: str) -> None:
    """One audit row per refused attempt (bounded per IP by the guard); never the token."""
    from distillguard.store.actions import record_audit
    from distillguard.store.db import session_scope

    def write() -> None:
        with session_scope(state.engine) as session:
            record_audit(
                session,
                actor="anonymous",
                event="admin.login_failed",
                ip=ip,
                details={"path": path[:200], "refused": what},
            )

    try:
        await asyncio.to_thread(write)
    except Exception:  # the refusal stands; the lost audit row is logged and counted
        log.exception("could not audit a failed admin login from %s", ip)
        state.metrics.state_errors.labels("database").inc()


async def _require_key(request: Request) -> KeyIdentity:  # async: the loop's connection
    state = request.app.state.gateway
    return state.auth.authenticate(request.headers.get("authorization"))


AdminAuth = Annotated[AdminIdentity, Depends(_require_admin)]
ApiKeyAuth = Annotated[KeyIdentity, Depends(_require_key)]
