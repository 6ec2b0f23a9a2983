"""Actions and the audit log on both backends: applied with an expiry and a reason, lifted with
a reason, audited; the policy does not re-act on evidence an admin lifted; bad input is a
clear error; a database from before revision 0004 keeps its actions as history."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import Engine, text

from distillguard.errors import Conflict, InputError, NotFound
from distillguard.store import create_account, make_engine, migrate, session_scope
from distillguard.store.actions import (
    active_actions,
    apply_action,
    apply_policy_action,
    lift_action,
    list_actions,
    list_audit,
)
from distillguard.store.db import alembic_config


def _account(engine: Engine, name: str = "app") -> str:
    with session_scope(engine) as s:
        return create_account(s, name=name).id


def test_apply_lift_and_expire_with_audit(engine: Engine) -> None:
    acct = _account(engine)
    with session_scope(engine) as s:
        block = apply_action(
            s,
            account="app",
            action="block",
            reason="abuse report",
            ttl_s=60,
            actor="admin:ops",
            now=1000.0,
        )
        flag = apply_action(
            s,
            account=acct,
            action="throttle",
            reason="burst",
            ttl_s=10,
            actor="cli:me",
            params={"rpm": 3},
            now=1000.0,
        )
    assert block.account_id == acct and block.expires_at == 1060.0 and block.score is None
    assert flag.params == {"rpm": 3, "retry_after_s": None}
    with session_scope(engine) as s:
        assert [a.id for a in active_actions(s, now=1005.0)] == [block.id, flag.id]
        assert [a.id for a in active_actions(s, now=1010.0)] == [block.id]  # throttle expired
        lifted = lift_action(
            s, action_id=block.id, reason="false positive", actor="admin:ops", now=1020.0
        )
    assert lifted.state(1020.0) == "lifted" and lifted.lift_reason == "false positive"
    with session_scope(engine) as s:
        assert active_actions(s, now=1021.0) == []
        states = {a.id: a.state(1021.0) for a in list_actions(s, account_id=acct)}
        events = [(e.event, e.actor, e.target, e.reason) for e in list_audit(s, account_id=acct)]
    assert states == {block.id: "lifted", flag.id: "expired"}
    assert events == [
        ("action.apply", "admin:ops", str(block.id), "abuse report"),
        ("action.apply", "cli:me", str(flag.id), "burst"),
        ("action.lift", "admin:ops", str(block.id), "false positive"),
    ]


def test_lifting_what_cannot_be_lifted_is_a_clear_error(engine: Engine) -> None:
    _account(engine)
    with session_scope(engine) as s:
        short = apply_action(
            s, account="app", action="flag", reason="r", ttl_s=5, actor="admin:a", now=100.0
        )
        done = apply_action(
            s, account="app", action="block", reason="r", ttl_s=500, actor="admin:a", now=100.0
        )
        lift_action(s, action_id=done.id, reason="ok", actor="admin:a", now=101.0)
    cases = [
        (NotFound, {"action_id": 9999, "reason": "x"}),
        (Conflict, {"action_id": short.id, "reason": "x"}),  # expired at 105
        (Conflict, {"action_id": done.id, "reason": "x"}),  # lifted already
        (InputError, {"action_id": short.id, "reason": "   "}),
    ]
    for error, kwargs in cases:
        with pytest.raises(error), session_scope(engine) as s:
            lift_action(s, actor="admin:a", now=200.0, **kwargs)
    with session_scope(engine) as s:  # nothing of the failed attempts was written
        assert [e.event for e in list_audit(s)] == ["action.apply"] * 2 + ["action.lift"]


@pytest.mark.parametrize(
    ("error", "kwargs", "param"),
    [
        (NotFound, {"account": "nobody"}, "account"),
        (InputError, {"ttl_s": 0}, "ttl_s"),
        (InputError, {"ttl_s": -5}, "ttl_s"),
        (InputError, {"ttl_s": float("inf")}, "ttl_s"),
        (InputError, {"ttl_s": True}, "ttl_s"),
        (InputError, {"reason": ""}, "reason"),
        (InputError, {"action": "nuke"}, "action"),
        (InputError, {"action": "allow"}, "action"),
        (InputError, {"action": "throttle", "params": {"rpm": -1}}, "params.rpm"),
        (InputError, {"action": "block", "params": {"why": 1}}, "params.why"),
    ],
)
def test_apply_refuses_bad_input(engine: Engine, error, kwargs, param) -> None:
    _account(engine)
    base = {"account": "app", "action": "block", "reason": "r", "ttl_s": 60, "actor": "admin:a"}
    with pytest.raises(error) as caught, session_scope(engine) as s:
        apply_action(s, **{**base, **kwargs})
    assert caught.value.param == param
    with session_scope(engine) as s:
        assert list_actions(s) == [] and list_audit(s) == []


def test_policy_does_not_reapply_lifted_evidence(engine: Engine) -> None:
    acct = _account(engine)
    propose = {
        "account_id": acct,
        "action": "block",
        "rule": "r1",
        "ttl_s": 600,
        "reasons": ("linked to a harvest",),
        "score": 0.99,
    }
    with session_scope(engine) as s:
        outcome, first = apply_policy_action(s, evidence_fingerprint="fp-A", now=10.0, **propose)
        again, _ = apply_policy_action(s, evidence_fingerprint="fp-B", now=11.0, **propose)
    assert outcome == "applied" and first is not None and first.actor == "policy:r1"
    assert again == "already_active"
    with session_scope(engine) as s:
        lift_action(s, action_id=first.id, reason="framed", actor="admin:ops", now=20.0)
        same, _ = apply_policy_action(s, evidence_fingerprint="fp-A", now=30.0, **propose)
        new, record = apply_policy_action(s, evidence_fingerprint="fp-C", now=31.0, **propose)
    assert same == "lifted_before"  # the same evidence: not re-acted on
    assert new == "applied" and record is not None and record.evidence_fingerprint == "fp-C"


def test_actions_from_before_0004_are_kept_as_expired_history(db_url: str) -> None:
    engine = make_engine(db_url)
    with engine.connect() as connection:
        command.upgrade(alembic_config(connection), "0003")
        connection.commit()
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO actions (ts, account_id, cluster_id, action, score, reasons) "
                "VALUES (5.0, 'acct_old', NULL, 'block', 0.9, '[\"old\"]')"
            )
        )
    migrate(engine=engine)
    with session_scope(engine) as s:
        (old,) = list_actions(s)
        assert active_actions(s, now=6.0) == []
    assert (old.action, old.actor, old.expires_at, old.reasons) == (
        "block",
        "legacy",
        5.0,
        ("old",),
    )
    engine.dispose()


def test_hostile_text_and_ids_are_clear_errors_or_stored_cleanly(engine: Engine) -> None:
    """What a fuzzer sends: NUL and lone surrogates (PostgreSQL refuses both in text), ids
    beyond the 32-bit column. Never a database error (a 5xx at the API)."""
    _account(engine)
    with session_scope(engine) as s:
        record = apply_action(
            s, account="app", action="flag", reason="bad\x00 \ud800 bot", ttl_s=60, actor="admin:a"
        )
    assert record.reason == "bad\ufffd ? bot"
    with pytest.raises(NotFound), session_scope(engine) as s:
        apply_action(s, account="app\x00", action="flag", reason="r", ttl_s=60, actor="admin:a")
    for action_id in (2**40, 0, -3):
        with pytest.raises(NotFound), session_scope(engine) as s:
            lift_action(s, action_id=action_id, reason="r", actor="admin:a")
    with session_scope(engine) as s:
        assert list_audit(s, event="action.apply\x00") == []


def test_the_audit_keeps_the_evidence_a_policy_acted_on(engine: Engine) -> None:
    acct = _account(engine)
    evidence = {"rule": "r1", "cluster_size": 3, "link_kinds": ["ip_prefix", "template"]}
    with session_scope(engine) as s:
        apply_policy_action(
            s,
            account_id=acct,
            action="flag",
            rule="r1",
            ttl_s=60,
            evidence_fingerprint="fp",
            evidence=evidence,
            now=5.0,
        )
        (event,) = list_audit(s, event="action.apply")
    assert event.details["evidence"] == evidence and event.details["evidence_fingerprint"] == "fp"
    assert event.actor == "policy:r1"
