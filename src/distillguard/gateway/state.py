"""Enforcement state shared by every gateway replica: the one module where it lives.

The database's ``actions`` table is the truth (``store.actions``). Each replica holds a
snapshot of the active actions in memory, so that the hot path's check is a dict lookup:

- **Expiry** needs no invalidation: every cached action carries its ``expires_at`` and the
  check compares it with the clock, so an expired action is gone on every replica at once.
- **Lifts and new actions** reach the other replicas through a reload of the snapshot: with
  Redis, a message on one pub/sub channel (``<prefix>:changed``) makes every replica reload
  at once; with or without Redis, every replica also reloads every ``refresh_s`` seconds, the
  bound when Redis is absent, down, or a message was missed. Redis holds no enforcement state
  at all: nothing there can go stale or outlive a restart.
- **Restarts**: the snapshot is loaded from the database before the gateway serves, so a
  block survives a restart with and without Redis.

Every Redis call goes through ``redis.asyncio`` (never blocking the event loop); database
work runs in threads. Failures are logged and counted in
``distillguard_enforcement_state_errors{component}``, never swallowed. What each failure
does (fail-open or fail-closed) is decided per path:

- database unreachable at start-up: the gateway does not start (it cannot know who is
  blocked);
- database unreachable on a reload: the last snapshot stays in force (closed for every
  account acted on; its expiries still apply) until a reload succeeds;
- a policy decision that cannot be written: enforced on this replica for its lifetime (closed
  here), but not shared; counted so an operator sees it; the monitor proposes it again at the
  account's next scoring, so it is written once the database is back;
- Redis unreachable: lifts and new actions reach replicas by polling, within ``refresh_s``
  (the subscriber reconnects with back-off);
- the monitor raising: the request is served under the actions already in force (existing
  blocks hold; only the monitor's new decision is missing), and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from distillguard.actions import SEVERITY
from distillguard.errors import ConfigError, DistillGuardError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from distillguard.monitor.online import OnlineMonitor, Proposal
    from distillguard.store.actions import ActionRecord

log = logging.getLogger("distillguard.gateway.state")


@dataclass(frozen=True)
class EnforcementConfig:
    """How each replica keeps its copy of the enforcement state fresh."""

    # Seconds between reloads of the active actions: how long a lift or an action made on
    # another replica (or by the CLI) takes to apply here when Redis is absent or down. One
    # indexed query of the few active rows, so a short period costs little.
    refresh_s: float = 2.0
    # Requests a minute a throttled account keeps when its action names no rpm.
    throttle_rpm: int = 2
    # Redis key prefix of the change channel (several deployments may share one Redis).
    redis_prefix: str = "distillguard:enforcement"
    # Longest wait between two attempts to (re)subscribe to Redis after a failure.
    max_backoff_s: float = 30.0
    # (account, evidence) pairs remembered as "lifted before" without asking the database
    # again; the set is cleared when full (the database still answers correctly).
    suppressed_cap: int = 100_000

    def __post_init__(self) -> None:
        if not 0 < self.refresh_s <= 3600 or not math.isfinite(self.refresh_s):
            raise ConfigError("enforcement refresh_s must be in (0, 3600] seconds")
        if self.throttle_rpm < 0 or self.max_backoff_s <= 0 or self.suppressed_cap < 1:
            raise ConfigError("enforcement throttle_rpm >= 0, max_backoff_s > 0, cap >= 1")
        if not self.redis_prefix:
            raise ConfigError("enforcement redis_prefix must not be empty")


@dataclass(frozen=True)
class Standing:
    """One action in force on one account, as cached by a replica."""

    action_id: int | None  # None: decided here but not yet in the database (see module doc)
    action: str
    params: dict[str, Any]
    expires_at: float


@dataclass(frozen=True)
class Verdict:
    """What the hot path does with one request."""

    action: str  # allow | flag | cap_logprobs | degrade | ... | throttle (refused) | block
    params: dict[str, Any]
    retry_after: float | None
    action_id: int | None
    # The attributes the hot path reads from a monitor Decision (reasons are never sent).
    score: float = 0.0
    reasons: tuple[str, ...] = ()
    cluster_id: str | None = None


ALLOW = Verdict("allow", {}, None, None)


@dataclass
class _Counters:
    reloads: int = 0
    applied: int = 0
    lifted_before: int = 0
    already_active: int = 0


def _snapshot(records: list[ActionRecord]) -> dict[str, tuple[Standing, ...]]:
    out: dict[str, list[Standing]] = {}
    for r in records:
        out.setdefault(r.account_id, []).append(
            Standing(r.id, r.action, dict(r.params), r.expires_at)
        )
    return {k: tuple(v) for k, v in out.items()}


@dataclass
class EnforcementState:
    """The replica's view of who is acted on, and the path from the policy to the table."""

    engine: Engine
    monitor: OnlineMonitor | None = None
    redis_url: str | None = None
    config: EnforcementConfig = field(default_factory=EnforcementConfig)
    count_error: Callable[[str], None] = lambda component: None  # metrics hook
    clock: Callable[[], float] = time.time
    _standing: dict[str, tuple[Standing, ...]] = field(default_factory=dict)
    _local: dict[str, tuple[Standing, ...]] = field(default_factory=dict)  # not persisted
    _windows: dict[str, deque[float]] = field(default_factory=dict)  # throttle budgets
    _suppressed: set[tuple[str, str]] = field(default_factory=set)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _dirty: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task] = field(default_factory=list)
    _redis: Any = None
    counters: _Counters = field(default_factory=_Counters)

    @property
    def channel(self) -> str:
        return f"{self.config.redis_prefix}:changed"

    # ---- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the active actions (StoreError if the database cannot say), then keep them
        fresh in the background."""
        await self.reload()
        if self.redis_url:
            import redis.asyncio as aioredis

            self._redis = aioredis.Redis.from_url(
                self.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0
            )
            self._tasks.append(asyncio.create_task(self._listen(), name="enforcement-redis"))
        self._tasks.append(asyncio.create_task(self._refresh_loop(), name="enforcement-reload"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
            self._redis = None

    # ---- the hot path -----------------------------------------------------------------------
    async def check(
        self,
        *,
        account_id: str,
        key_id: str,
        payment_fingerprint: str | None,
        ip: str,
        user_agent: str | None,
        endpoint: str,
        request: dict[str, Any],
        ts: float,
    ) -> Verdict:
        """Let the monitor see the request, persist what its policy decided, and say what
        the actions in force on the account make of this request."""
        if self.monitor is not None:
            proposals: list[Proposal] = []
            try:
                self.monitor.check(
                    account_id=account_id,
                    key_id=key_id,
                    payment_fingerprint=payment_fingerprint,
                    ip=ip,
                    user_agent=user_agent,
                    endpoint=endpoint,
                    request=request,
                    ts=ts,
                )
                proposals = self.monitor.take_proposals()
            except Exception:
                log.exception("online monitor failed; serving under the actions in force")
                self.count_error("monitor")
            if proposals:
                await self._persist(proposals)
        return self.verdict(account_id, ts)

    def verdict(self, account_id: str, now: float) -> Verdict:
        """The most severe action in force on the account at ``now`` (throttle: refused only
        beyond the account's budget of requests a minute)."""
        standing = self._standing.get(account_id, ()) + self._local.get(account_id, ())
        live = [s for s in standing if s.expires_at > now]
        if not live:
            return ALLOW
        top = max(live, key=lambda s: SEVERITY.get(s.action, 0))
        if top.action != "throttle":
            return Verdict(top.action, top.params, None, top.action_id)
        rpm = top.params.get("rpm")
        budget = self.config.throttle_rpm if rpm is None else int(rpm)
        window = self._windows.setdefault(account_id, deque(maxlen=max(1, budget)))
        while window and now - window[0] > 60.0:
            window.popleft()
        if len(window) < budget:
            window.append(now)
            return Verdict("flag", top.params, None, top.action_id)  # inside the budget
        wait = top.params.get("retry_after_s") or max(1.0, 60.0 - (now - window[0]))
        return Verdict("throttle", top.params, float(wait), top.action_id)

    # ---- from the policy to the table -------------------------------------------------------
    async def _persist(self, proposals: list[Proposal]) -> None:
        from distillguard.store.actions import apply_policy_action
        from distillguard.store.db import session_scope

        todo = [
            p for p in proposals if (p.account_id, p.evidence_fingerprint) not in self._suppressed
        ]
        for p in proposals:
            if p not in todo and self.monitor is not None:
                self.monitor.forget(p.account_id)
        if not todo:
            return

        def write() -> list[tuple[Proposal, str, ActionRecord | None]]:
            with session_scope(self.engine) as session:
                return [
                    (
                        p,
                        *apply_policy_action(
                            session,
                            account_id=p.account_id,
                            action=p.action,
                            rule=p.rule,
                            ttl_s=p.ttl_s,
                            evidence_fingerprint=p.evidence_fingerprint,
                            params=p.params,
                            cluster_id=p.cluster_id,
                            score=p.score,
                            reasons=p.reasons,
                            evidence=p.evidence,
                            now=self.clock(),
                        ),
                    )
                    for p in todo
                ]

        async with self._lock:
            try:
                outcomes = await asyncio.to_thread(write)
            except Exception:
                log.exception(
                    "could not persist %d policy action(s); enforcing them on this replica only",
                    len(todo),
                )
                self.count_error("database")
                now = self.clock()
                for p in todo:
                    entry = Standing(None, p.action, dict(p.params), now + p.ttl_s)
                    kept = tuple(
                        e for e in self._local.get(p.account_id, ()) if e.action != p.action
                    )
                    self._local[p.account_id] = (*kept, entry)
                    if self.monitor is not None:  # proposed again at its next scoring: a retry
                        self.monitor.forget(p.account_id)
                return
            changed = False
            for p, outcome, record in outcomes:
                if outcome == "applied" and record is not None:
                    self.counters.applied += 1
                    entry = Standing(record.id, record.action, record.params, record.expires_at)
                    standing = self._standing.get(p.account_id, ())
                    self._standing = {**self._standing, p.account_id: (*standing, entry)}
                    self._local.pop(p.account_id, None)  # written now: the table has it
                    changed = True
                elif outcome == "lifted_before":
                    self.counters.lifted_before += 1
                    if len(self._suppressed) >= self.config.suppressed_cap:
                        self._suppressed.clear()
                    self._suppressed.add((p.account_id, p.evidence_fingerprint))
                    if self.monitor is not None:
                        self.monitor.forget(p.account_id)
                else:
                    self.counters.already_active += 1
        if changed:
            await self.publish_change()

    # ---- keeping the snapshot fresh ---------------------------------------------------------
    async def reload(self) -> None:
        """Re-read the active actions; accounts whose actions ended are forgotten by the
        monitor (its policy may decide again, on new evidence)."""
        from distillguard.store.actions import active_actions
        from distillguard.store.db import session_scope

        def read() -> list[ActionRecord]:
            with session_scope(self.engine) as session:
                return active_actions(session, now=self.clock())

        async with self._lock:
            records = await asyncio.to_thread(read)
            fresh = _snapshot(records)
            ended = set(self._standing) - set(fresh)
            self._standing = fresh
            self.counters.reloads += 1
            now = self.clock()
            self._local = {
                a: kept
                for a, entries in self._local.items()
                if (kept := tuple(s for s in entries if s.expires_at > now))
            }
        for account_id in ended:
            self._windows.pop(account_id, None)
            if self.monitor is not None:
                self.monitor.forget(account_id)

    async def publish_change(self) -> None:
        """Reload here, and tell every other replica to reload now (after an apply or a
        lift). Without Redis, or when the message cannot be sent, they reload within
        ``refresh_s`` anyway."""
        try:
            await self.reload()  # this replica: before the admin's call returns
        except Exception:
            log.exception("enforcement reload failed; retrying in the background")
            self.count_error("database")
            self._dirty.set()
        if self._redis is None:
            return
        try:
            await self._redis.publish(self.channel, b"changed")
        except Exception as exc:
            log.warning(
                "could not announce an enforcement change on Redis: %s; replicas "
                "reload within %.1f s",
                type(exc).__name__,
                self.config.refresh_s,
            )
            self.count_error("redis")

    async def _refresh_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), timeout=self.config.refresh_s)
            self._dirty.clear()
            try:
                await self.reload()
            except DistillGuardError as exc:
                log.warning(
                    "enforcement reload failed (%s); the last snapshot stays in force", exc.message
                )
                self.count_error("database")
            except Exception:
                log.exception("enforcement reload failed; the last snapshot stays in force")
                self.count_error("database")

    async def _listen(self) -> None:
        backoff = 0.5
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                self._dirty.set()  # (re)subscribed: catch up on what may have been missed
                backoff = 0.5
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=30.0)
                    if message is not None:
                        self._dirty.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "enforcement change channel on Redis failed (%s); polling every "
                    "%.1f s until it is back",
                    type(exc).__name__,
                    self.config.refresh_s,
                )
                self.count_error("redis")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.config.max_backoff_s)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()


@dataclass
class AdminLoginGuard:
    """Failed admin logins per client IP in a window: counted in this process, and with
    Redis also across replicas (one counter per IP, ``INCR`` with an expiry of one window, so
    N replicas do not give a guesser N budgets). Redis failing: the local count still holds
    (logged and counted)."""

    max_failures: int = 10  # a person mistyping does not get near it; a guesser does
    window_s: float = 60.0  # failures older than this no longer count
    max_ips: int = 10_000  # IPs tracked in this process; the stalest are dropped when full
    redis_url: str | None = None
    redis_prefix: str = "distillguard:admin-login"  # one key per IP below it
    count_error: Callable[[str], None] = lambda component: None  # metrics hook
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _redis: Any = None

    def __post_init__(self) -> None:
        if self.max_failures < 1 or not self.window_s > 0 or self.max_ips < 1:
            raise ConfigError("admin login guard: max_failures >= 1, window_s > 0, max_ips >= 1")
        if self.redis_url:
            import redis.asyncio as aioredis

            self._redis = aioredis.Redis.from_url(
                self.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0
            )

    def _key(self, ip: str) -> str:
        return f"{self.redis_prefix}:{ip}"

    def _local_wait(self, ip: str, now: float) -> float | None:
        window = self._failures.get(ip)
        if window is None:
            return None
        while window and now - window[0] >= self.window_s:
            window.popleft()
        if not window:
            del self._failures[ip]
            return None
        if len(window) < self.max_failures:
            return None
        return self.window_s - (now - window[0])

    async def retry_after(self, ip: str, now: float) -> float | None:
        """Seconds until ``ip`` may try again, or None when it may now (``now``: a
        monotonic clock)."""
        local = self._local_wait(ip, now)
        if self._redis is None:
            return local
        try:
            count = await self._redis.get(self._key(ip))
            if count is None or int(count) < self.max_failures:
                return local
            ttl_ms = await self._redis.pttl(self._key(ip))
        except Exception as exc:
            log.warning(
                "admin login counter on Redis unavailable (%s); counting locally",
                type(exc).__name__,
            )
            self.count_error("redis")
            return local
        shared = max(ttl_ms, 1000) / 1000.0 if ttl_ms and ttl_ms > 0 else self.window_s
        return max(local or 0.0, shared)

    async def failed(self, ip: str, now: float) -> None:
        window = self._failures.get(ip)
        if window is None:
            if len(self._failures) >= self.max_ips:
                stalest = min(self._failures, key=lambda k: self._failures[k][-1])
                del self._failures[stalest]
            window = self._failures[ip] = deque(maxlen=self.max_failures)
        window.append(now)
        if self._redis is None:
            return
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(self._key(ip))
                pipe.expire(self._key(ip), max(1, math.ceil(self.window_s)), nx=True)
                await pipe.execute()
        except Exception as exc:
            log.warning("could not count a failed admin login on Redis (%s)", type(exc).__name__)
            self.count_error("redis")

    async def close(self) -> None:
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
            self._redis = None
