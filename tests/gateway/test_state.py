"""The enforcement state in one process, on a real SQLite database (and a Redis that is not
there): failures are counted and each path fails the way the module says."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from sqlalchemy import text

from distillguard.gateway.process import free_port
from distillguard.gateway.state import EnforcementConfig, EnforcementState
from distillguard.monitor.online import OnlineMonitor
from distillguard.monitor.policy import parse_policy
from distillguard.store import apply_action, create_account, make_engine, migrate, session_scope
from distillguard.store.actions import list_actions

_NOT_AN_OBJECT = ["a list, not a request object"]
BLOCK_AT_ONCE = "min_requests: 1\nrules:\n  - action: block\n    name: all\n    when: {}\n"


def _engine(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'state.db'}"
    migrate(url)
    engine = make_engine(url)
    with session_scope(engine) as s:
        for name in ("a", "b"):
            create_account(s, name=name)
    return engine


def _request(state: EnforcementState, account: str, ts: float, body: object = None):
    return state.check(
        account_id=account,
        key_id="k",
        payment_fingerprint=None,
        ip="203.0.113.9",
        user_agent="ua",
        endpoint="/v1/chat/completions",
        request={"messages": [{"role": "user", "content": "hi"}]} if body is None else body,
        ts=ts,
    )


def _id(engine, name: str) -> str:
    with engine.connect() as c:
        return c.execute(text("SELECT id FROM accounts WHERE name = :n"), {"n": name}).scalar_one()


def test_policy_decisions_are_persisted_and_a_monitor_failure_is_counted(tmp_path) -> None:
    engine = _engine(tmp_path)
    errors: Counter[str] = Counter()
    a = _id(engine, "a")

    async def run() -> None:
        state = EnforcementState(
            engine,
            monitor=OnlineMonitor(parse_policy(BLOCK_AT_ONCE)),
            count_error=lambda component: errors.update([component]),
        )
        await state.start()
        try:
            first = await _request(state, a, 1000.0)
            assert first.action == "block" and first.action_id is not None
            # A monitor that raises (here on a body that is not an object): counted, and the
            # block already in force still holds.
            broken = await _request(state, a, 1001.0, body=_NOT_AN_OBJECT)
            assert broken.action == "block" and errors["monitor"] == 1
        finally:
            await state.close()

    asyncio.run(run())
    with session_scope(engine) as s:
        (row,) = list_actions(s, account_id=a)
    assert (row.action, row.actor, row.evidence["rule"]) == ("block", "policy:all", "all")


def test_an_unwritable_decision_is_enforced_here_counted_and_written_later(tmp_path) -> None:
    engine = _engine(tmp_path)
    errors: Counter[str] = Counter()
    b = _id(engine, "b")

    async def run() -> None:
        state = EnforcementState(
            engine,
            monitor=OnlineMonitor(parse_policy(BLOCK_AT_ONCE)),
            count_error=lambda component: errors.update([component]),
        )
        await state.start()
        with engine.begin() as c:  # the audit table is away: every action write fails
            c.execute(text("ALTER TABLE audit_events RENAME TO audit_events_away"))
        try:
            verdict = await _request(state, b, 1000.0)
            assert verdict.action == "block" and verdict.action_id is None  # here only
            assert errors["database"] == 1
            with session_scope(engine) as s:
                assert list_actions(s) == []  # nothing half-written
            with engine.begin() as c:  # the database is back
                c.execute(text("ALTER TABLE audit_events_away RENAME TO audit_events"))
            again = await _request(state, b, 1001.0)
            assert again.action == "block" and again.action_id is not None
        finally:
            await state.close()

    asyncio.run(run())
    with session_scope(engine) as s:
        (row,) = list_actions(s, account_id=b)
    assert row.actor == "policy:all"


def test_without_redis_changes_arrive_by_polling_and_redis_errors_are_counted(tmp_path) -> None:
    engine = _engine(tmp_path)
    errors: Counter[str] = Counter()
    a = _id(engine, "a")

    async def run() -> None:
        state = EnforcementState(
            engine,
            redis_url=f"redis://127.0.0.1:{free_port()}/0",
            config=EnforcementConfig(refresh_s=0.2),
            count_error=lambda component: errors.update([component]),
        )
        await state.start()
        try:
            assert (await _request(state, a, 1000.0)).action == "allow"
            with session_scope(engine) as s:  # applied elsewhere (the CLI, another replica)
                apply_action(s, account="a", action="block", reason="r", ttl_s=600, actor="cli:ops")
            for _ in range(100):
                if state.verdict(a, 1001.0).action == "block":
                    break
                await asyncio.sleep(0.05)
            assert state.verdict(a, 1001.0).action == "block"
            await state.publish_change()  # the announcement cannot go out: counted
            assert errors["redis"] >= 1
        finally:
            await state.close()

    asyncio.run(run())


def test_throttle_keeps_its_budget_then_refuses(tmp_path) -> None:
    engine = _engine(tmp_path)
    a = _id(engine, "a")
    with session_scope(engine) as s:
        apply_action(
            s,
            account="a",
            action="throttle",
            reason="r",
            ttl_s=600,
            actor="admin:x",
            params={"rpm": 2},
        )

    async def run() -> list[str]:
        state = EnforcementState(engine)
        await state.start()
        try:
            import time

            now = time.time()
            out = [state.verdict(a, now + i).action for i in range(3)]
            out.append(state.verdict(a, now + 70).action)  # a minute on: budget back
            return out
        finally:
            await state.close()

    assert asyncio.run(run()) == ["flag", "flag", "throttle", "flag"]


def test_the_login_guard_counts_locally_when_redis_is_down() -> None:
    from distillguard.gateway.state import AdminLoginGuard

    errors: Counter[str] = Counter()

    async def run() -> list[float | None]:
        guard = AdminLoginGuard(
            max_failures=2,
            window_s=30,
            redis_url=f"redis://127.0.0.1:{free_port()}/0",
            count_error=lambda component: errors.update([component]),
        )
        try:
            waits = [await guard.retry_after("203.0.113.5", 0.0)]
            for t in (1.0, 2.0):
                await guard.failed("203.0.113.5", t)
            waits.append(await guard.retry_after("203.0.113.5", 3.0))
            waits.append(await guard.retry_after("203.0.113.5", 31.5))  # window passed
            return waits
        finally:
            await guard.close()

    assert asyncio.run(run()) == [None, 28.0, None]
    assert errors["redis"] >= 2  # each failed Redis call is counted, none is swallowed
