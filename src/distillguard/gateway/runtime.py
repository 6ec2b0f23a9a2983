"""``GatewayState``: the long-lived parts one gateway process serves with (``app.state.gateway``).

Its own module so that the app (which builds it) and the routes (which read it) both import
it, instead of the routes importing the app that imports them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from distillguard.config import Settings
from distillguard.gateway.auth import KeyAuthenticator
from distillguard.gateway.backend import Backend
from distillguard.gateway.clientip import ClientResolver
from distillguard.gateway.limits import RateLimiter, UnauthenticatedBudget
from distillguard.gateway.metrics import GatewayMetrics

log = logging.getLogger("distillguard.gateway")


@dataclass
class GatewayState:
    """The long-lived parts one gateway process serves with (``app.state.gateway``)."""

    settings: Settings
    engine: Engine
    exchange_log: Any  # store.exchanges.ExchangeLog
    auth: KeyAuthenticator
    limiter: RateLimiter
    backend: Backend
    metrics: GatewayMetrics
    monitor: Any | None  # monitor.online.OnlineMonitor, or None when not installed / disabled
    admin_token: str | None
    client_resolver: ClientResolver  # who the client is (trusted proxies only)
    unauth_budget: UnauthenticatedBudget  # logged requests without a valid key, per IP
    started_at: float = 0.0
    recorded_actions: dict[str, str] = field(default_factory=dict)  # account -> last recorded

    async def record_action(self, account_id: str, decision: Any) -> None:
        """Persist an enforcement action when it changes for the account (a blocked account
        sending a thousand requests is one action, not a thousand rows); off the event loop:
        it is a database write."""
        if self.recorded_actions.get(account_id) == decision.action:
            return
        self.recorded_actions[account_id] = decision.action
        from distillguard.store.db import session_scope
        from distillguard.store.exchanges import record_action

        def write() -> None:
            with session_scope(self.engine) as session:
                record_action(
                    session,
                    account_id=account_id,
                    cluster_id=decision.cluster_id,
                    action=decision.action,
                    reasons=list(decision.reasons),
                    score=float(decision.score),
                )

        try:
            await asyncio.to_thread(write)
        except Exception:
            log.exception("could not record enforcement action %s", decision.action)
