"""Accounts and API keys: creation, listing, revocation, and the per-request key check.

A key's secret is ``dg-<key_id>-<43 url-safe base64 chars>``: the key id (public, logged with
every exchange) lets ``authenticate`` load one row by primary key, and the random part carries
256 bits. Only ``sha256(secret)`` is stored.

Why a plain SHA-256 and not bcrypt/argon2 or a peppered HMAC: slow password hashes exist to
make guessing *low-entropy* passwords expensive. A 256-bit random secret cannot be guessed
whatever the hash, so a slow hash would only add tens of milliseconds to every request on the
gateway's hot path, buying nothing. A pepper would add a second secret to manage (and rotate)
for the same reason. What the hash does buy: a leaked database (or backup, or log export)
yields no usable key.

Every check reads the database (one primary-key lookup): no cache stands between a revocation
and the next request, so ``keys revoke`` takes effect at once, in every replica.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import bindparam, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from distillguard.errors import AuthError, InputError, NotFound, PermissionDenied
from distillguard.store.schema import ACCOUNT_STATUSES, Account, ApiKey

SECRET_PREFIX = "dg"
_KEY_ID_HEX = 16  # 64-bit key ids: collisions are retried, guessing one gains nothing
_SECRET_BYTES = 32  # 256 bits of randomness in every secret
_SECRET_RE = re.compile(r"^dg-([0-9a-f]{16})-([A-Za-z0-9_-]{43})$")
_MAX_SECRET_CHARS = 200  # longer Authorization values are refused before any parsing
_INVALID_KEY = "invalid API key"  # one message for unknown key id and wrong secret


@dataclass(frozen=True)
class AccountInfo:
    id: str
    name: str
    org: str | None
    payment_fingerprint: str | None
    status: str
    created_at: float
    active_keys: int = 0


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    account_id: str
    account_name: str
    created_at: float
    revoked_at: float | None
    rpm: int | None
    tpm: int | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True)
class KeyIdentity:
    """Who is calling: what the gateway needs for limits, policy and the log."""

    key_id: str
    account_id: str
    account_name: str
    rpm: int | None  # None: the server's default limit
    tpm: int | None
    payment_fingerprint: str | None


def hash_secret(secret: str) -> str:
    """Hex SHA-256 of a key secret (see the module docstring for why this suffices)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def parse_key_id(secret: str) -> str:
    """The key id inside a secret; AuthError if it has not the shape of a distillguard key."""
    if len(secret) > _MAX_SECRET_CHARS:
        raise AuthError("malformed API key", code="invalid_api_key")
    match = _SECRET_RE.match(secret)
    if match is None:
        raise AuthError("malformed API key", code="invalid_api_key")
    return match.group(1)


def _new_secret(key_id: str) -> str:
    random_part = base64.urlsafe_b64encode(secrets.token_bytes(_SECRET_BYTES)).rstrip(b"=")
    return f"{SECRET_PREFIX}-{key_id}-{random_part.decode('ascii')}"


def _check_limit(name: str, value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or value <= 0):
        raise InputError(f"{name} must be a positive integer, got {value!r}", param=name)
    return value


def _account_info(account: Account, active_keys: int = 0) -> AccountInfo:
    return AccountInfo(
        id=account.id,
        name=account.name,
        org=account.org,
        payment_fingerprint=account.payment_fingerprint,
        status=account.status,
        created_at=account.created_at,
        active_keys=active_keys,
    )


def _key_info(key: ApiKey, account_name: str) -> KeyInfo:
    return KeyInfo(
        key_id=key.id,
        account_id=key.account_id,
        account_name=account_name,
        created_at=key.created_at,
        revoked_at=key.revoked_at,
        rpm=key.rpm,
        tpm=key.tpm,
    )


# --- accounts -----------------------------------------------------------------------------


def create_account(
    session: Session,
    *,
    name: str,
    org: str | None = None,
    payment_fingerprint: str | None = None,
) -> AccountInfo:
    """A new active account; InputError for an empty or already used name."""
    name = name.strip()
    if not name or len(name) > 200:
        raise InputError("account name must be 1-200 characters", param="name")
    if session.scalar(select(Account.id).where(Account.name == name)) is not None:
        raise InputError(f"an account named {name!r} already exists", param="name")
    account = Account(
        id=f"acct_{secrets.token_hex(6)}",
        name=name,
        org=org or None,
        payment_fingerprint=payment_fingerprint or None,
        status="active",
        created_at=time.time(),
    )
    session.add(account)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent create of the same name won the race
        session.rollback()
        raise InputError(f"an account named {name!r} already exists", param="name") from exc
    return _account_info(account)


def get_account(session: Session, *, account: str) -> AccountInfo:
    """An account by id or by name; NotFound otherwise."""
    return _account_info(_load_account(session, account))


def _load_account(session: Session, account: str) -> Account:
    row = session.get(Account, account)
    if row is None:
        row = session.scalar(select(Account).where(Account.name == account))
    if row is None:
        raise NotFound(f"no account with id or name {account!r}", param="account")
    return row


def list_accounts(session: Session) -> list[AccountInfo]:
    """Every account, oldest first, with its count of unrevoked keys."""
    accounts = session.scalars(select(Account).order_by(Account.created_at, Account.id)).all()
    counts = (
        select(ApiKey.account_id, func.count())
        .where(ApiKey.revoked_at.is_(None))
        .group_by(ApiKey.account_id)
    )
    active: dict[str, int] = {account_id: n for account_id, n in session.execute(counts).all()}
    return [_account_info(a, active.get(a.id, 0)) for a in accounts]


def set_account_status(session: Session, *, account: str, status: str) -> AccountInfo:
    """Suspend or reinstate an account; a suspended account's keys are refused (403)."""
    if status not in ACCOUNT_STATUSES:
        raise InputError(f"status must be one of {ACCOUNT_STATUSES}, got {status!r}")
    row = _load_account(session, account)
    row.status = status
    session.flush()
    return _account_info(row)


# --- keys ---------------------------------------------------------------------------------


def create_key(
    session: Session,
    *,
    account: str,
    rpm: int | None = None,
    tpm: int | None = None,
) -> tuple[KeyInfo, str]:
    """A new key for ``account`` (id or name); the secret is returned here and never again."""
    _check_limit("rpm", rpm)
    _check_limit("tpm", tpm)
    owner = _load_account(session, account)
    while True:
        key_id = secrets.token_hex(_KEY_ID_HEX // 2)
        if session.get(ApiKey, key_id) is None:
            break
    secret = _new_secret(key_id)
    key = ApiKey(
        id=key_id,
        account_id=owner.id,
        secret_hash=hash_secret(secret),
        created_at=time.time(),
        revoked_at=None,
        rpm=rpm,
        tpm=tpm,
    )
    session.add(key)
    session.flush()
    return _key_info(key, owner.name), secret


def list_keys(session: Session, *, account: str | None = None) -> list[KeyInfo]:
    """Keys (revoked ones included), oldest first; of one account when given."""
    query = select(ApiKey, Account.name).join(Account, Account.id == ApiKey.account_id)
    if account is not None:
        query = query.where(ApiKey.account_id == _load_account(session, account).id)
    query = query.order_by(ApiKey.created_at, ApiKey.id)
    return [_key_info(key, name) for key, name in session.execute(query).all()]


def revoke_key(session: Session, *, key_id: str) -> KeyInfo:
    """Revoke a key (idempotent: a revoked key keeps its first revocation time)."""
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"no API key with id {key_id!r}", param="key_id")
    if key.revoked_at is None:
        key.revoked_at = time.time()
        session.flush()
    owner = session.get(Account, key.account_id)
    return _key_info(key, owner.name if owner else "")


# Built once: the statement is compiled and cached by SQLAlchemy across requests.
_AUTH_QUERY = (
    select(
        ApiKey.secret_hash,
        ApiKey.revoked_at,
        ApiKey.rpm,
        ApiKey.tpm,
        Account.id,
        Account.name,
        Account.status,
        Account.payment_fingerprint,
    )
    .join(Account, Account.id == ApiKey.account_id)
    .where(ApiKey.id == bindparam("key_id"))
)


def authenticate(session: Session | Connection, *, secret: str) -> KeyIdentity:
    """The identity behind a key secret.

    AuthError: malformed, unknown, wrong secret (one message for the last two, so a caller
    cannot tell a real key id from a made-up one), or revoked (said only to a holder of the
    right secret). PermissionDenied: the account is suspended.
    """
    key_id = parse_key_id(secret)
    row = session.execute(_AUTH_QUERY, {"key_id": key_id}).first()
    offered = hash_secret(secret)
    # Compare even for an unknown id, so timing does not tell unknown from wrong.
    stored = row.secret_hash if row is not None else "0" * 64
    if not hmac.compare_digest(offered.encode("ascii"), stored.encode("ascii")) or row is None:
        raise AuthError(_INVALID_KEY, code="invalid_api_key")
    if row.revoked_at is not None:
        raise AuthError("API key has been revoked", code="invalid_api_key")
    if row.status != "active":
        raise PermissionDenied(f"account is {row.status}", code="account_suspended")
    return KeyIdentity(
        key_id=key_id,
        account_id=row.id,
        account_name=row.name,
        rpm=row.rpm,
        tpm=row.tpm,
        payment_fingerprint=row.payment_fingerprint,
    )
