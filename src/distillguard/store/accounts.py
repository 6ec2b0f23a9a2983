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

Keys may carry an alias, an expiry time (after it: 401 ``expired_api_key``), a JSON metadata
object, and lifetime budgets of tokens and of spend in USD (spend = usage x the provider's
prices, ``Settings.price_*_per_mtok``). A key whose usage reached a budget gets OpenAI's 429
``insufficient_quota``. Usage is charged after each answer with one atomic ``UPDATE`` (only keys
that have a budget pay for it); concurrent requests admitted before the charge can overshoot
a budget by their own size, as with any post-paid quota.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from distillguard.errors import (
    AuthError,
    InputError,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
)
from distillguard.store.schema import ACCOUNT_STATUSES, Account, ApiKey

SECRET_PREFIX = "dg"
_KEY_ID_HEX = 16  # 64-bit key ids: collisions are retried, guessing one gains nothing
_SECRET_BYTES = 32  # 256 bits of randomness in every secret
_SECRET_RE = re.compile(r"^dg-([0-9a-f]{16})-([A-Za-z0-9_-]{43})$")
_MAX_SECRET_CHARS = 200  # longer Authorization values are refused before any parsing
_INVALID_KEY = "invalid API key"  # one message for unknown key id and wrong secret
_MAX_METADATA_BYTES = 16_384  # a key's metadata is a label set, not a document store


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
    alias: str | None = None
    expires_at: float | None = None  # Unix seconds; None: never
    metadata: dict[str, Any] | None = None
    token_budget: int | None = None  # lifetime tokens; None: unlimited
    tokens_used: int = 0
    spend_budget_usd: float | None = None  # lifetime spend; None: unlimited
    spend_used_usd: float = 0.0

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at


@dataclass(frozen=True)
class KeyIdentity:
    """Who is calling: what the gateway needs for limits, policy and the log."""

    key_id: str
    account_id: str
    account_name: str
    rpm: int | None  # None: the server's default limit
    tpm: int | None
    payment_fingerprint: str | None
    alias: str | None = None
    expires_at: float | None = None  # fixed at creation: checked without the database
    token_budget: int | None = None
    spend_budget_usd: float | None = None

    @property
    def budgeted(self) -> bool:
        """True when usage must be read before and charged after each request."""
        return self.token_budget is not None or self.spend_budget_usd is not None


@dataclass(frozen=True)
class KeyUsage:
    """A key's running usage against its budgets."""

    tokens_used: int
    spend_used_usd: float


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
        alias=key.alias,
        expires_at=key.expires_at,
        metadata=key.key_metadata,
        token_budget=key.token_budget,
        tokens_used=key.tokens_used or 0,
        spend_budget_usd=key.spend_budget_usd,
        spend_used_usd=key.spend_used_usd or 0.0,
    )


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _check_alias(alias: str | None) -> str | None:
    if alias is None:
        return None
    alias = alias.strip()
    if not alias or len(alias) > 200:
        raise InputError("alias must be 1-200 characters", param="alias")
    return alias


def _check_expiry(expires_at: float | None, now: float) -> float | None:
    if expires_at is None:
        return None
    if isinstance(expires_at, bool) or not math.isfinite(expires_at):
        raise InputError(f"expires_at must be Unix seconds, got {expires_at!r}", param="expires_at")
    if expires_at <= now:
        raise InputError(
            f"expires_at {_utc(expires_at)} is not in the future (now {_utc(now)})",
            param="expires_at",
        )
    return float(expires_at)


def _check_metadata(metadata: Any) -> dict[str, Any] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise InputError("metadata must be a JSON object", param="metadata")
    try:
        size = len(orjson.dumps(metadata))
    except TypeError as exc:
        raise InputError(f"metadata is not JSON: {exc}", param="metadata") from None
    if size > _MAX_METADATA_BYTES:
        raise InputError(
            f"metadata is {size} bytes of JSON; the limit is {_MAX_METADATA_BYTES}",
            param="metadata",
        )
    return metadata


def _check_spend_budget(value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise InputError(
            f"spend_budget_usd must be a positive amount, got {value!r}", param="spend_budget_usd"
        )
    return float(value)


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
    alias: str | None = None,
    expires_at: float | None = None,
    metadata: dict[str, Any] | None = None,
    token_budget: int | None = None,
    spend_budget_usd: float | None = None,
) -> tuple[KeyInfo, str]:
    """A new key for ``account`` (id or name); the secret is returned here and never again.

    InputError for a limit or budget that is not positive, an expiry not in the future, an
    empty or over-long alias, metadata that is not a JSON object (or over 16 KiB).
    """
    now = time.time()
    _check_limit("rpm", rpm)
    _check_limit("tpm", tpm)
    _check_limit("token_budget", token_budget)
    alias = _check_alias(alias)
    expires_at = _check_expiry(expires_at, now)
    metadata = _check_metadata(metadata)
    spend_budget_usd = _check_spend_budget(spend_budget_usd)
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
        created_at=now,
        revoked_at=None,
        rpm=rpm,
        tpm=tpm,
        alias=alias,
        expires_at=expires_at,
        key_metadata=metadata,
        token_budget=token_budget,
        tokens_used=0,
        spend_budget_usd=spend_budget_usd,
        spend_used_usd=0.0,
    )
    session.add(key)
    session.flush()
    return _key_info(key, owner.name), secret


def expiry_time(expires_at: float | None, expires_in_s: float | None) -> float | None:
    """One expiry from "at this time" or "this long from now"; InputError for both."""
    if expires_at is not None and expires_in_s is not None:
        raise InputError("give expires_at or expires_in_s, not both", param="expires_at")
    if expires_in_s is not None:
        if not math.isfinite(expires_in_s) or expires_in_s <= 0:
            raise InputError("expires_in_s must be a positive duration", param="expires_in_s")
        return time.time() + expires_in_s
    return expires_at


def require_prices(prices_set: bool) -> None:
    """InputError unless the provider priced its tokens: a spend budget that nothing is
    charged against would never stop anyone."""
    if not prices_set:
        raise InputError(
            "a spend budget needs token prices: set price_prompt_per_mtok and/or "
            "price_completion_per_mtok (DISTILLGUARD_PRICE_*_PER_MTOK or the config file)",
            param="spend_budget_usd",
        )


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
        ApiKey.alias,
        ApiKey.expires_at,
        ApiKey.token_budget,
        ApiKey.tokens_used,
        ApiKey.spend_budget_usd,
        ApiKey.spend_used_usd,
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
    identity = KeyIdentity(
        key_id=key_id,
        account_id=row.id,
        account_name=row.name,
        rpm=row.rpm,
        tpm=row.tpm,
        payment_fingerprint=row.payment_fingerprint,
        alias=row.alias,
        expires_at=row.expires_at,
        token_budget=row.token_budget,
        spend_budget_usd=row.spend_budget_usd,
    )
    check_expiry(identity)
    check_budgets(identity, KeyUsage(row.tokens_used or 0, row.spend_used_usd or 0.0))
    return identity


# --- expiry and budgets (the gateway calls these on every request of a key that has them) ---


def check_expiry(identity: KeyIdentity, now: float | None = None) -> None:
    """AuthError (401 ``expired_api_key``) once the key's expiry time has passed."""
    if identity.expires_at is not None and (now or time.time()) >= identity.expires_at:
        raise AuthError(
            f"API key expired at {_utc(identity.expires_at)}; ask for a new key",
            code="expired_api_key",
        )


def check_budgets(identity: KeyIdentity, usage: KeyUsage) -> None:
    """QuotaExceeded (429 ``insufficient_quota``, as OpenAI) once a budget is used up."""
    if identity.token_budget is not None and usage.tokens_used >= identity.token_budget:
        raise QuotaExceeded(
            f"You exceeded your current quota: this key's budget of {identity.token_budget} "
            f"tokens is used up ({usage.tokens_used} used). Ask the provider to raise it."
        )
    spend_budget = identity.spend_budget_usd
    if spend_budget is not None and usage.spend_used_usd >= spend_budget:
        raise QuotaExceeded(
            f"You exceeded your current quota: this key's budget of ${spend_budget:.2f} is "
            f"used up (${usage.spend_used_usd:.4f} spent). Ask the provider to raise it."
        )


_USAGE_QUERY = select(ApiKey.tokens_used, ApiKey.spend_used_usd).where(
    ApiKey.id == bindparam("key_id")
)


def key_usage(session: Session | Connection, *, key_id: str) -> KeyUsage:
    """The key's running usage; NotFound for an unknown key."""
    row = session.execute(_USAGE_QUERY, {"key_id": key_id}).first()
    if row is None:
        raise NotFound(f"no API key with id {key_id!r}", param="key_id")
    return KeyUsage(row.tokens_used or 0, row.spend_used_usd or 0.0)


def charge_usage(
    session: Session | Connection, *, key_id: str, tokens: int, spend_usd: float
) -> None:
    """Add one answer's tokens and spend to the key's usage (one atomic UPDATE: replicas
    charging the same key at once never lose an increment)."""
    if tokens <= 0 and spend_usd <= 0:
        return
    session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id)
        .values(
            tokens_used=ApiKey.tokens_used + max(tokens, 0),
            spend_used_usd=ApiKey.spend_used_usd + max(spend_usd, 0.0),
        )
    )
