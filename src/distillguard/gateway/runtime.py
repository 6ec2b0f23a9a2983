"""``GatewayState``: the long-lived parts one gateway process serves with (``app.state.gateway``).

Its own module so that the app (which builds it) and the routes (which read it) both import
it, instead of the routes importing the app that imports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from distillguard.config import Settings
from distillguard.gateway.auth import KeyAuthenticator
from distillguard.gateway.backend import Backend
from distillguard.gateway.clientip import ClientResolver
from distillguard.gateway.limits import RateLimiter, UnauthenticatedBudget
from distillguard.gateway.metrics import GatewayMetrics
from distillguard.gateway.state import AdminLoginGuard, EnforcementState


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
    enforcement: EnforcementState  # actions in force (the table's cache) and the policy's path
    login_guard: AdminLoginGuard  # failed admin logins per client IP
    client_resolver: ClientResolver  # who the client is (trusted proxies only)
    unauth_budget: UnauthenticatedBudget  # logged requests without a valid key, per IP
    started_at: float = 0.0
    prevention: Any = None  # gateway.prevention.Prevention, made on first use
    # One asyncio lock per budgeted key (gateway.quota.take_budget_turn): bounded by the keys
    # an admin gave a budget.
    budget_locks: dict[str, Any] = field(default_factory=dict)
