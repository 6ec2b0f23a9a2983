"""Enforcement actions and the audit log: the one source of truth of who is acted on.

An action row is active while it is neither lifted nor past ``expires_at``; nothing else (no
Redis hash, no process memory) decides whether an account is blocked: those are caches of
``active_actions`` (see ``gateway.state``). Every apply and lift writes an audit event in the
same transaction, so there is no action without its record of who, when and why.

The policy's proposals go through ``apply_policy_action``, which refuses to re-apply what an
admin lifted for the same evidence (same ``evidence_fingerprint``) and what an equal or more
severe active action already covers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from distillguard.actions import SEVERITY, action_kind, validate_params
from distillguard.errors import Conflict, InputError, NotFound
from distillguard.store.accounts import get_account
from distillguard.store.db import clean_text
from distillguard.store.schema import Action, AuditEvent

MAX_TTL_S = 366 * 86_400.0  # a year and a day: "forever" is what suspension is for
MAX_REASON_CHARS = 2_000
MAX_ACTION_ID = 2**31 - 1  # the id column is a 32-bit INTEGER on PostgreSQL
ActionState = Literal["active", "lifted", "expired"]
PolicyOutcome = Literal["applied", "lifted_before", "already_active"]


@dataclass(frozen=True)
class ActionRecord:
    id: int
    ts: float
    account_id: str
    cluster_id: str | None
    action: str
    params: dict[str, Any]
    actor: str
    reason: str
    score: float | None
    reasons: tuple[str, ...]
    evidence: dict[str, Any] | None
    evidence_fingerprint: str | None
    expires_at: float
    lifted_at: float | None
    lifted_by: str | None
    lift_reason: str | None

    def state(self, now: float) -> ActionState:
        if self.lifted_at is not None:
            return "lifted"
        return "active" if self.expires_at > now else "expired"

    def as_dict(self, now: float) -> dict[str, Any]:
        """The action as the admin API and the CLI show it (with its state at ``now``)."""
        return {**self.__dict__, "reasons": list(self.reasons), "state": self.state(now)}


@dataclass(frozen=True)
class AuditRecord:
    id: int
    ts: float
    actor: str
    event: str
    account_id: str | None
    target: str | None
    reason: str | None
    details: dict[str, Any]
    ip: str | None


def _record(a: Action) -> ActionRecord:
    return ActionRecord(
        id=a.id,
        ts=a.ts,
        account_id=a.account_id,
        cluster_id=a.cluster_id,
        action=a.action,
        params=dict(a.params or {}),
        actor=a.actor,
        reason=a.reason,
        score=a.score,
        reasons=tuple(a.reasons or ()),
        evidence=a.evidence,
        evidence_fingerprint=a.evidence_fingerprint,
        expires_at=a.expires_at,
        lifted_at=a.lifted_at,
        lifted_by=a.lifted_by,
        lift_reason=a.lift_reason,
    )


def check_reason(reason: Any, param: str = "reason") -> str:
    """A non-empty reason of at most MAX_REASON_CHARS characters, stripped."""
    if not isinstance(reason, str) or not reason.strip():
        raise InputError(f"a {param} is required: say why", param=param, code="missing_reason")
    reason = clean_text(reason.strip())  # NUL and lone surrogates: stored, not a 5xx
    if len(reason) > MAX_REASON_CHARS:
        raise InputError(f"{param} is longer than {MAX_REASON_CHARS} characters", param=param)
    return reason


def check_ttl(ttl_s: Any) -> float:
    """A finite lifetime in (0, MAX_TTL_S] seconds."""
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float):
        raise InputError("ttl_s must be a number of seconds", param="ttl_s", code="invalid_ttl")
    if not math.isfinite(ttl_s) or ttl_s <= 0 or ttl_s > MAX_TTL_S:
        raise InputError(
            f"ttl_s must be > 0 and at most {MAX_TTL_S:.0f} seconds, got {ttl_s!r}",
            param="ttl_s",
            code="invalid_ttl",
        )
    return float(ttl_s)


def _check_actor(actor: str) -> str:
    if not actor or len(actor) > 200:
        raise InputError("actor must be 1-200 characters", param="actor")
    return actor


# --- applying and lifting -----------------------------------------------------------------


def apply_action(
    session: Session,
    *,
    account: str,
    action: str,
    reason: str,
    ttl_s: float,
    actor: str,
    params: dict[str, Any] | None = None,
    cluster_id: str | None = None,
    score: float | None = None,
    reasons: tuple[str, ...] | list[str] = (),
    evidence: dict[str, Any] | None = None,
    evidence_fingerprint: str | None = None,
    now: float | None = None,
) -> ActionRecord:
    """Apply ``action`` to ``account`` (id or name) for ``ttl_s`` seconds, audited.

    InputError: unknown action, bad params, missing reason, ttl not in (0, MAX_TTL_S];
    NotFound: no such account.
    """
    kind = action_kind(action)
    clean_params = validate_params(kind.name, params)
    reason = check_reason(reason)
    ttl = check_ttl(ttl_s)
    actor = _check_actor(actor)
    account_id = get_account(session, account=clean_text(account)).id
    ts = time.time() if now is None else now
    row = Action(
        ts=ts,
        account_id=account_id,
        cluster_id=cluster_id,
        action=kind.name,
        score=None if score is None else float(score),
        reasons=[str(r) for r in reasons],
        params=clean_params,
        actor=actor,
        reason=reason,
        evidence=evidence,
        evidence_fingerprint=evidence_fingerprint,
        expires_at=ts + ttl,
        lifted_at=None,
        lifted_by=None,
        lift_reason=None,
    )
    session.add(row)
    session.flush()
    record_audit(
        session,
        actor=actor,
        event="action.apply",
        account_id=account_id,
        target=str(row.id),
        reason=reason,
        details={
            "action": kind.name,
            "params": clean_params,
            "ttl_s": ttl,
            "evidence": evidence,
            "evidence_fingerprint": evidence_fingerprint,
        },
        now=ts,
    )
    return _record(row)


def apply_policy_action(
    session: Session,
    *,
    account_id: str,
    action: str,
    rule: str,
    ttl_s: float,
    evidence_fingerprint: str,
    params: dict[str, Any] | None = None,
    cluster_id: str | None = None,
    score: float | None = None,
    reasons: tuple[str, ...] | list[str] = (),
    evidence: dict[str, Any] | None = None,
    now: float | None = None,
) -> tuple[PolicyOutcome, ActionRecord | None]:
    """The policy's proposal, applied unless an admin lifted an action on the same evidence
    for this account (``lifted_before``) or an active action at least as severe stands
    (``already_active``). The actor is ``policy:<rule>``."""
    ts = time.time() if now is None else now
    lifted = session.scalar(
        select(Action.id)
        .where(Action.account_id == account_id)
        .where(Action.evidence_fingerprint == evidence_fingerprint)
        .where(Action.lifted_at.is_not(None))
        .limit(1)
    )
    if lifted is not None:
        return "lifted_before", None
    standing = session.scalars(
        select(Action.action)
        .where(Action.account_id == account_id)
        .where(Action.lifted_at.is_(None))
        .where(Action.expires_at > ts)
    ).all()
    if any(SEVERITY.get(a, 0) >= SEVERITY[action] for a in standing):
        return "already_active", None
    why = "; ".join(reasons) if reasons else "policy rule matched"
    record = apply_action(
        session,
        account=account_id,
        action=action,
        reason=f"policy rule {rule}: {why}"[:MAX_REASON_CHARS],
        ttl_s=ttl_s,
        actor=f"policy:{rule}"[:200],
        params=params,
        cluster_id=cluster_id,
        score=score,
        reasons=reasons,
        evidence=evidence,
        evidence_fingerprint=evidence_fingerprint,
        now=ts,
    )
    return "applied", record


def _row_for_update(session: Session, action_id: int) -> Action:
    """The action's row, locked for the change; NotFound for an id that names none."""
    if isinstance(action_id, bool) or not isinstance(action_id, int):
        raise NotFound(f"no action with id {action_id!r}", param="action_id")
    if not 1 <= action_id <= MAX_ACTION_ID:
        raise NotFound(f"no action with id {action_id!r}", param="action_id")
    row = session.scalar(select(Action).where(Action.id == action_id).with_for_update())
    if row is None:
        raise NotFound(f"no action with id {action_id}", param="action_id")
    return row


def lift_action(
    session: Session, *, action_id: int, reason: str, actor: str, now: float | None = None
) -> ActionRecord:
    """Lift an active action, audited. NotFound: no such action; Conflict: it was already
    lifted or has expired (nothing to lift)."""
    reason = check_reason(reason)
    actor = _check_actor(actor)
    ts = time.time() if now is None else now
    row = _row_for_update(session, action_id)
    if row.lifted_at is not None:
        raise Conflict(
            f"action {action_id} was already lifted by {row.lifted_by}", code="already_lifted"
        )
    if row.expires_at <= ts:
        raise Conflict(f"action {action_id} has expired: nothing to lift", code="expired")
    row.lifted_at, row.lifted_by, row.lift_reason = ts, actor, reason
    session.flush()
    record_audit(
        session,
        actor=actor,
        event="action.lift",
        account_id=row.account_id,
        target=str(row.id),
        reason=reason,
        details={"action": row.action, "evidence_fingerprint": row.evidence_fingerprint},
        now=ts,
    )
    return _record(row)


def extend_action(
    session: Session,
    *,
    action_id: int,
    ttl_s: float,
    reason: str,
    actor: str,
    now: float | None = None,
) -> ActionRecord:
    """Give an active action a new expiry, ``ttl_s`` seconds from now (sooner or later than
    the old one), audited with the old and new expiry. NotFound: no such action; Conflict:
    lifted or expired (an ended action is applied anew, not revived)."""
    reason = check_reason(reason)
    ttl = check_ttl(ttl_s)
    actor = _check_actor(actor)
    ts = time.time() if now is None else now
    row = _row_for_update(session, action_id)
    if row.lifted_at is not None:
        raise Conflict(f"action {action_id} was lifted: apply a new one", code="already_lifted")
    if row.expires_at <= ts:
        raise Conflict(f"action {action_id} has expired: apply a new one", code="expired")
    old = row.expires_at
    row.expires_at = ts + ttl
    session.flush()
    record_audit(
        session,
        actor=actor,
        event="action.extend",
        account_id=row.account_id,
        target=str(row.id),
        reason=reason,
        details={
            "action": row.action,
            "ttl_s": ttl,
            "old_expires_at": old,
            "expires_at": row.expires_at,
        },
        now=ts,
    )
    return _record(row)


# --- reading ------------------------------------------------------------------------------


def get_action(session: Session, *, action_id: int) -> ActionRecord:
    row = session.get(Action, action_id) if 1 <= action_id <= MAX_ACTION_ID else None
    if row is None:
        raise NotFound(f"no action with id {action_id}", param="action_id")
    return _record(row)


def active_actions(session: Session, *, now: float | None = None) -> list[ActionRecord]:
    """Every action in force at ``now`` (default: the database reader's clock), oldest first."""
    ts = time.time() if now is None else now
    query = (
        select(Action)
        .where(Action.lifted_at.is_(None))
        .where(Action.expires_at > ts)
        .order_by(Action.ts, Action.id)
    )
    return [_record(a) for a in session.scalars(query)]


def list_actions(
    session: Session,
    *,
    account_id: str | None = None,
    since: float | None = None,
    limit: int | None = None,
) -> list[ActionRecord]:
    """Actions in time order (newest last), optionally for one account and/or since a time;
    with ``limit``, the newest ``limit`` of them (still oldest first)."""
    query = select(Action)
    if account_id is not None:
        query = query.where(Action.account_id == account_id)
    if since is not None:
        query = query.where(Action.ts >= since)
    if limit is not None:
        if limit < 1:
            raise InputError(f"limit must be >= 1, got {limit}", param="limit")
        newest = query.order_by(Action.ts.desc(), Action.id.desc()).limit(limit).subquery()
        query = select(aliased(Action, newest)).order_by(newest.c.ts, newest.c.id)
    else:
        query = query.order_by(Action.ts, Action.id)
    return [_record(a) for a in session.scalars(query)]


# --- audit --------------------------------------------------------------------------------


def record_audit(
    session: Session,
    *,
    actor: str,
    event: str,
    account_id: str | None = None,
    target: str | None = None,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
    ip: str | None = None,
    now: float | None = None,
) -> None:
    """One audit event, in the caller's transaction (it commits with what it records)."""
    session.add(
        AuditEvent(
            ts=time.time() if now is None else now,
            actor=actor[:200],
            event=event[:40],
            account_id=account_id,
            target=None if target is None else target[:100],
            reason=reason,
            details=details or {},
            ip=None if ip is None else ip[:64],
        )
    )
    session.flush()


def list_audit(
    session: Session,
    *,
    account_id: str | None = None,
    event: str | None = None,
    limit: int = 100,
) -> list[AuditRecord]:
    """The newest ``limit`` audit events (oldest first), of one account and/or one event."""
    if limit < 1:
        raise InputError(f"limit must be >= 1, got {limit}", param="limit")
    query = select(AuditEvent)
    if account_id is not None:
        query = query.where(AuditEvent.account_id == account_id)
    if event is not None:
        query = query.where(AuditEvent.event == clean_text(event))
    rows = session.scalars(query.order_by(AuditEvent.id.desc()).limit(limit)).all()
    return [
        AuditRecord(
            id=r.id,
            ts=r.ts,
            actor=r.actor,
            event=r.event,
            account_id=r.account_id,
            target=r.target,
            reason=r.reason,
            details=dict(r.details or {}),
            ip=r.ip,
        )
        for r in reversed(rows)
    ]
