"""The console's session: a signed cookie and its CSRF token.

The cookie holds ``{"exp": ..., "csrf": ...}`` signed with HMAC-SHA256 under a key derived
from the admin token, so every replica verifies it without shared state, and changing the
admin token ends every session. The CSRF token lives inside the signed cookie and must come
back in each state-changing form (the synchronizer-token pattern; SameSite=Strict is the
second fence). Failed sign-ins count against the admin credential's budget per client IP
(``gateway.state.AdminLoginGuard``: shared by every replica through Redis when configured).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

COOKIE_NAME = "dg_console"


@dataclass(frozen=True)
class ConsoleSession:
    expires_at: float  # Unix seconds
    csrf: str  # the token every state-changing form must echo


class SessionError(Exception):
    """A cookie that is missing, forged, malformed or expired (``expired`` says which)."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.expired = expired


def _signing_key(admin_token: str) -> bytes:
    return hmac.new(admin_token.encode(), b"distillguard-console-session-v1", "sha256").digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue(admin_token: str, ttl_s: float, now: float | None = None) -> tuple[str, ConsoleSession]:
    """A new session and its cookie value."""
    session = ConsoleSession(
        expires_at=(time.time() if now is None else now) + ttl_s, csrf=secrets.token_urlsafe(24)
    )
    payload = _b64(json.dumps({"exp": session.expires_at, "csrf": session.csrf}).encode())
    signature = _b64(hmac.new(_signing_key(admin_token), payload.encode(), "sha256").digest())
    return f"{payload}.{signature}", session


def verify(admin_token: str, cookie: str | None, now: float | None = None) -> ConsoleSession:
    """The session a cookie carries; SessionError when there is none or it is not ours."""
    if not cookie:
        raise SessionError("please sign in")
    payload, _, signature = cookie.partition(".")
    expected = _b64(hmac.new(_signing_key(admin_token), payload.encode(), "sha256").digest())
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        raise SessionError("your session is not valid; please sign in again")
    try:
        data = json.loads(_unb64(payload))
        session = ConsoleSession(expires_at=float(data["exp"]), csrf=str(data["csrf"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise SessionError("your session is not valid; please sign in again") from exc
    if session.expires_at <= (time.time() if now is None else now):
        raise SessionError("your session has expired; please sign in again", expired=True)
    return session


def csrf_matches(session: ConsoleSession, submitted: str | None) -> bool:
    if not submitted:
        return False
    return hmac.compare_digest(session.csrf.encode(), submitted.encode())


def token_matches(admin_token: str, submitted: str) -> bool:
    # Compare digests: constant time whatever the submitted length.
    return hmac.compare_digest(
        hashlib.sha256(admin_token.encode()).digest(), hashlib.sha256(submitted.encode()).digest()
    )
