"""Key expiry and budgets on the hot path: checked before serving, charged after answering.

Separate from the rate limiter on purpose: limits are per minute and live in memory or Redis;
budgets are per key lifetime and live in the database with the key (``store.accounts``), so
every replica sees one running total. Keys without a budget cost nothing here beyond one
comparison (expiry is fixed at creation and travels in the cached ``KeyIdentity``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from distillguard.store.accounts import (
    KeyIdentity,
    KeyUsage,
    charge_usage,
    check_budgets,
    check_expiry,
    key_usage,
)
from distillguard.store.db import session_scope

if TYPE_CHECKING:
    from distillguard.gateway.runtime import GatewayState

log = logging.getLogger("distillguard.gateway")


def _read_usage(engine, key_id: str) -> KeyUsage:
    with session_scope(engine) as session:
        return key_usage(session, key_id=key_id)


def _charge(engine, key_id: str, tokens: int, spend_usd: float) -> None:
    with session_scope(engine) as session:
        charge_usage(session, key_id=key_id, tokens=tokens, spend_usd=spend_usd)


async def take_budget_turn(state: GatewayState, identity: KeyIdentity) -> asyncio.Lock | None:
    """Make a budgeted key's requests take turns in this process from the budget check to the
    charge, and return the held lock (None for a key without a budget: nothing to wait for).

    The charge lands after the answer is out, so without turns a client that sends its next
    request as soon as it has an answer is checked against usage that misses that answer, and
    gets one answer past its budget. With turns the next check sees the previous charge: a
    budget is exact within a replica. Across replicas the requests in flight at once may
    still overrun it (the total lives in the database, not in a shared lock)."""
    if not identity.budgeted:
        return None
    lock = state.budget_locks.setdefault(identity.key_id, asyncio.Lock())
    await lock.acquire()
    return lock


async def check_key(state: GatewayState, identity: KeyIdentity) -> None:
    """AuthError for an expired key, QuotaExceeded for a key whose budget is used up."""
    check_expiry(identity)
    if identity.budgeted:
        usage = await asyncio.to_thread(_read_usage, state.engine, identity.key_id)
        check_budgets(identity, usage)


async def charge_key(
    state: GatewayState, identity: KeyIdentity, prompt_tokens: int, completion_tokens: int
) -> None:
    """Charge one answer to the key's budgets (keys without a budget: nothing to do). The
    answer is already out: a failed charge is logged, never turned into an error."""
    if not identity.budgeted:
        return
    spend = state.settings.spend_usd(prompt_tokens, completion_tokens)
    try:
        await asyncio.to_thread(
            _charge, state.engine, identity.key_id, prompt_tokens + completion_tokens, spend
        )
    except Exception:
        log.exception("could not charge key %s for its usage", identity.key_id)
