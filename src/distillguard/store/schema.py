"""The database schema: five tables, typed SQLAlchemy 2 declarative models.

The Alembic migrations in ``migrations/versions`` create exactly these tables; a test asks
Alembic's autogenerate to compare the two and fails on any difference, so a change here
without a migration (or the reverse) cannot land.

Times are Unix seconds in double precision (the traffic log's ``ts`` is one), the same on
SQLite and PostgreSQL, so rows compare and export without time-zone conversions.

``exchanges`` and ``actions`` carry no foreign keys on purpose: the log is append-only
evidence. It must accept a row for an unauthenticated attempt (no account), keep rows of an
account that is later deleted, and never fail an insert on the hot path because of a
constraint check on another table.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deterministic constraint names, so migrations name what autogenerate would name.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSON on SQLite (a TEXT column), JSONB on PostgreSQL (indexable, compact).
JsonDocument = JSON().with_variant(JSONB(), "postgresql")

ACCOUNT_STATUSES = ("active", "suspended")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Account(Base):
    """A customer of the API; several keys may belong to one account."""

    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    org: Mapped[str | None] = mapped_column(String(200))
    # Opaque id of the payment method: accounts sharing one are a signal for the monitor.
    payment_fingerprint: Mapped[str | None] = mapped_column(String(200), index=True)
    status: Mapped[str] = mapped_column(String(20), default="active")
    created_at: Mapped[float] = mapped_column(Double)


class ApiKey(Base):
    """An API key: only the SHA-256 of its secret is stored (see ``accounts.hash_secret``)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # public key id
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64))  # hex SHA-256 of the whole secret
    created_at: Mapped[float] = mapped_column(Double)
    revoked_at: Mapped[float | None] = mapped_column(Double)
    rpm: Mapped[int | None] = mapped_column(Integer)  # None: the server's default limit
    tpm: Mapped[int | None] = mapped_column(Integer)
    # --- key management (migration 0003): what LiteLLM-style key management offers ---------
    alias: Mapped[str | None] = mapped_column(String(200))  # human name ("ci-bot", "prod")
    expires_at: Mapped[float | None] = mapped_column(Double)  # None: never; after it: 401
    # Free-form JSON object the provider attaches (team, plan, ticket); attribute renamed
    # because `metadata` is the declarative base's own.
    key_metadata: Mapped[Any] = mapped_column("metadata", JsonDocument, nullable=True)
    token_budget: Mapped[int | None] = mapped_column(BigInteger)  # lifetime tokens; None: none
    tokens_used: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    spend_budget_usd: Mapped[float | None] = mapped_column(Double)  # lifetime spend; None: none
    spend_used_usd: Mapped[float] = mapped_column(Double, server_default=text("0"))


class Exchange(Base):
    """One API exchange: the traffic log of the spec (§1) plus serving details."""

    __tablename__ = "exchanges"
    __table_args__ = (
        Index("ix_exchanges_account_id_ts", "account_id", "ts"),
        Index("ix_exchanges_ts", "ts"),
        Index("ix_exchanges_ip_account", "ip", "account_id"),  # IP-prefix ranges (0006)
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    ts: Mapped[float] = mapped_column(Double)  # arrival time, Unix seconds
    account_id: Mapped[str | None] = mapped_column(String(40))  # None: auth failed
    key_id: Mapped[str | None] = mapped_column(String(40))
    ip: Mapped[str] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(Text)
    payment_fingerprint: Mapped[str | None] = mapped_column(String(200))
    endpoint: Mapped[str] = mapped_column(String(200))
    request: Mapped[Any] = mapped_column(JsonDocument)  # body as sent (any JSON value)
    response_text: Mapped[str | None] = mapped_column(Text)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[float | None] = mapped_column(Double)
    model: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    watermark_scheme: Mapped[str | None] = mapped_column(String(40))
    watermark_key_id: Mapped[int | None] = mapped_column(Integer)
    # --- the complete answer (migration 0005; docs/traffic-log-extensions.md) -------------
    # Every choice: [{"index", "text", "finish_reason", "tool_calls", "refusal"}].
    choices: Mapped[Any] = mapped_column(JsonDocument, nullable=True)
    # /v1/responses outputs; /v1/embeddings count and dims (never the vectors).
    response: Mapped[Any] = mapped_column(JsonDocument, nullable=True)


class Action(Base):
    """An enforcement action on an account: the one source of truth of enforcement.

    Active while ``lifted_at`` is NULL and ``expires_at`` is in the future; the gateway's
    caches (per process, Redis) only mirror these rows. Names and params come from the
    registry in ``distillguard.actions``. ``evidence_fingerprint`` names the evidence a policy
    acted on, so that a lifted action is not re-applied for the same evidence.
    """

    __tablename__ = "actions"
    __table_args__ = (
        Index("ix_actions_account_id_ts", "account_id", "ts"),
        Index("ix_actions_expires_at", "expires_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[float] = mapped_column(Double)
    account_id: Mapped[str] = mapped_column(String(40))
    cluster_id: Mapped[str | None] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(20))
    score: Mapped[float | None] = mapped_column(Double)  # None: applied by a person
    reasons: Mapped[list[str]] = mapped_column(JsonDocument)  # the detector's words
    params: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    actor: Mapped[str] = mapped_column(String(200))  # admin:<name>, cli:<user>, policy:<rule>
    reason: Mapped[str] = mapped_column(Text)  # why, in the actor's words
    evidence: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument)
    evidence_fingerprint: Mapped[str | None] = mapped_column(String(64))
    expires_at: Mapped[float] = mapped_column(Double)
    lifted_at: Mapped[float | None] = mapped_column(Double)
    lifted_by: Mapped[str | None] = mapped_column(String(200))
    lift_reason: Mapped[str | None] = mapped_column(Text)


class AuditEvent(Base):
    """Who did what to which account or key, when and why: actions applied and lifted,
    account status changes, keys created and revoked, failed admin logins (never a token)."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_ts", "ts"),
        Index("ix_audit_events_account_id_ts", "account_id", "ts"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[float] = mapped_column(Double)
    actor: Mapped[str] = mapped_column(String(200))
    event: Mapped[str] = mapped_column(String(40))  # e.g. action.apply, key.revoke
    account_id: Mapped[str | None] = mapped_column(String(40))
    target: Mapped[str | None] = mapped_column(String(100))  # action id, key id
    reason: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    ip: Mapped[str | None] = mapped_column(String(64))


# --- traffic rollups (migration 0006): kept by a trigger on every insert into exchanges ---


class TrafficMinute(Base):
    """Requests and tokens per account and minute; account ``*`` is all traffic (the
    unauthenticated included). Read by the console's charts; written only by the trigger."""

    __tablename__ = "traffic_minutes"

    account_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    minute: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # floor(ts / 60)
    requests: Mapped[int] = mapped_column(BigInteger)
    tokens: Mapped[int] = mapped_column(BigInteger)


class TrafficHour(Base):
    """Requests and tokens per hour and account: the console's busiest accounts of a window."""

    __tablename__ = "traffic_hours"

    hour: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # floor(ts / 3600)
    account_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger)
    tokens: Mapped[int] = mapped_column(BigInteger)
