"""The console's reads: aggregation and paging done by the database (GROUP BY, LIMIT/OFFSET),
so a page costs the same on a log of a thousand exchanges or a million.

Plain functions over a SQLAlchemy session that return frozen records; the routes render them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, cast, func, or_, select
from sqlalchemy.orm import Session

from distillguard.store.schema import Account, Action, ApiKey, Exchange, TrafficHour, TrafficMinute

ENDED_ACTIONS = ("allow", "reinstate")  # an account whose latest action is one of these is clear
ALL_TRAFFIC = "*"  # traffic_minutes' account id for all traffic (migration 0006)


@dataclass(frozen=True)
class Bucket:
    start: float  # Unix seconds
    requests: int
    tokens: int


@dataclass(frozen=True)
class Series:
    start: float
    width_s: float
    buckets: tuple[Bucket, ...]  # one per interval, zeros included

    @property
    def total_requests(self) -> int:
        return sum(b.requests for b in self.buckets)

    @property
    def total_tokens(self) -> int:
        return sum(b.tokens for b in self.buckets)


@dataclass(frozen=True)
class AccountCount:
    account_id: str
    name: str | None
    requests: int


@dataclass(frozen=True)
class PromptRow:
    exchange_id: str
    ts: float
    ip: str
    status: int
    prompt: str


@dataclass(frozen=True)
class LinkedAccount:
    account_id: str
    name: str | None
    why: str  # the link in words


@dataclass(frozen=True)
class SearchHit:
    account_id: str
    name: str | None
    matched: str  # what matched, in words


def latest_ts(session: Session, account_id: str | None = None) -> float | None:
    query = select(func.max(Exchange.ts))
    if account_id is not None:
        query = query.where(Exchange.account_id == account_id)
    return session.scalar(query)


def _bucket_index(session: Session, start: float, width_s: float) -> Any:
    offset = (Exchange.ts - start) / width_s
    if session.get_bind().dialect.name == "sqlite":
        return cast(offset, Integer)  # truncates toward zero; offset >= 0 here
    return cast(func.floor(offset), Integer)  # PostgreSQL's CAST rounds


def traffic_series(
    session: Session,
    *,
    end: float,
    span_s: float,
    num_buckets: int = 48,
    account_id: str | None = None,
) -> Series:
    """Requests and tokens per interval over ``[end - span_s, end]``.

    When the intervals are whole minutes on minute boundaries (the console's windows), the
    sums come from the per-minute rollup (``traffic_minutes``: one row per minute for all
    traffic, one per account and minute), whatever the size of the log. Otherwise from the
    exchanges themselves, two GROUP BY queries (requests from the ts index; tokens need the
    rows: when the window holds most of the log one sequential scan beats an index walk that
    fetches every row at random, so the index is then bypassed with ``ts + 0``)."""
    start = end - span_s
    width = span_s / num_buckets
    if width % 60 == 0 and start % 60 == 0:
        return _series_from_rollup(session, start, width, num_buckets, account_id)
    index = _bucket_index(session, start, width).label("bucket")
    where = [Exchange.ts >= start, Exchange.ts <= end]
    if account_id is not None:
        where.append(Exchange.account_id == account_id)
    requests = {
        int(i): int(n)
        for i, n in session.execute(select(index, func.count()).where(*where).group_by(index))
    }
    in_window = sum(requests.values())
    tokens: dict[int, int] = {}
    if in_window:
        total = session.scalar(select(func.count()).select_from(Exchange)) or 1
        if account_id is None and in_window > total // 4:
            where = [(Exchange.ts + 0) >= start, (Exchange.ts + 0) <= end]
        used = func.sum(
            func.coalesce(Exchange.prompt_tokens, 0) + func.coalesce(Exchange.completion_tokens, 0)
        )
        query = select(index, used).where(*where).group_by(index)
        tokens = {int(i): int(t or 0) for i, t in session.execute(query)}
    return _series(start, width, num_buckets, requests, tokens)


def _series(
    start: float, width: float, num_buckets: int, requests: dict[int, int], tokens: dict[int, int]
) -> Series:
    for counts in (requests, tokens):  # the end itself belongs to the last interval
        counts[num_buckets - 1] = counts.get(num_buckets - 1, 0) + counts.pop(num_buckets, 0)
    return Series(
        start=start,
        width_s=width,
        buckets=tuple(
            Bucket(start + i * width, requests.get(i, 0), tokens.get(i, 0))
            for i in range(num_buckets)
        ),
    )


def _series_from_rollup(
    session: Session, start: float, width: float, num_buckets: int, account_id: str | None
) -> Series:
    """Minute rows of the window (at most one per minute): binned in Python."""
    first, per = int(start // 60), int(width // 60)
    query = select(TrafficMinute.minute, TrafficMinute.requests, TrafficMinute.tokens).where(
        TrafficMinute.account_id == (account_id if account_id is not None else ALL_TRAFFIC),
        TrafficMinute.minute >= first,
        TrafficMinute.minute <= first + num_buckets * per,
    )
    requests: dict[int, int] = {}
    tokens: dict[int, int] = {}
    for minute, n, used in session.execute(query):
        i = (int(minute) - first) // per
        requests[i] = requests.get(i, 0) + int(n)
        tokens[i] = tokens.get(i, 0) + int(used)
    return _series(start, width, num_buckets, requests, tokens)


def top_accounts(session: Session, *, since: float, limit: int = 10) -> list[AccountCount]:
    """The busiest accounts since the whole hour ``since`` falls in (the hourly rollup)."""
    n = func.sum(TrafficHour.requests).label("n")
    query = (
        select(TrafficHour.account_id, Account.name, n)
        .join(Account, Account.id == TrafficHour.account_id)
        .where(TrafficHour.hour >= int(since // 3600))
        .group_by(TrafficHour.account_id, Account.name)
        .order_by(n.desc())
        .limit(limit)
    )
    return [AccountCount(str(a), name, int(c)) for a, name, c in session.execute(query)]


def acted_on(session: Session, *, limit: int = 50) -> list[tuple[Action, str | None]]:
    """Each account's latest action when it still stands (not allow/reinstate), worst first."""
    latest = select(func.max(Action.id)).group_by(Action.account_id).scalar_subquery()
    query = (
        select(Action, Account.name)
        .outerjoin(Account, Account.id == Action.account_id)
        .where(
            Action.id.in_(latest),
            Action.action.not_in(ENDED_ACTIONS),
            Action.lifted_at.is_(None),
            Action.expires_at > time.time(),
        )
        .order_by(Action.score.desc().nulls_last(), Action.ts.desc())
        .limit(limit)
    )
    return [(a, name) for a, name in session.execute(query)]


def recent_actions(
    session: Session, *, account_id: str | None = None, limit: int = 20, offset: int = 0
) -> list[tuple[Action, str | None]]:
    query = select(Action, Account.name).outerjoin(Account, Account.id == Action.account_id)
    if account_id is not None:
        query = query.where(Action.account_id == account_id)
    query = query.order_by(Action.ts.desc(), Action.id.desc()).limit(limit).offset(offset)
    return [(a, name) for a, name in session.execute(query)]


def prompt_text(request: Any) -> str:
    """The text a request asked for: the last user message of a chat, or the prompt."""
    if not isinstance(request, dict):
        return "" if request is None else str(request)
    messages = request.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, list):  # content parts
                    return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
                return "" if content is None else str(content)
    prompt = request.get("prompt")
    if isinstance(prompt, list):
        return " ".join(str(p) for p in prompt)
    return "" if prompt is None else str(prompt)


def account_prompts(
    session: Session, *, account_id: str, limit: int = 20, offset: int = 0
) -> list[PromptRow]:
    """One page of an account's exchanges, newest first (the (account_id, ts) index)."""
    query = (
        select(Exchange.id, Exchange.ts, Exchange.ip, Exchange.status, Exchange.request)
        .where(Exchange.account_id == account_id)
        .order_by(Exchange.ts.desc(), Exchange.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return [
        PromptRow(i, ts, ip, status, prompt_text(request))
        for i, ts, ip, status, request in session.execute(query)
    ]


def ip_prefix(ip: str) -> str:
    """The network an address is in, as a LIKE prefix: /24 for IPv4, /48 for IPv6."""
    if ":" in ip:
        return ":".join(ip.split(":")[:3]) + ":"
    return ".".join(ip.split(".")[:3]) + "."


def ip_startswith(prefix: str) -> Any:
    """``ip`` starts with ``prefix``: a range an index on ``ip`` answers on SQLite and
    PostgreSQL alike (prefix <= ip < prefix'; LIKE alone needs a special index collation),
    and the LIKE itself, so a database collation that is not byte order stays correct."""
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    return (
        (Exchange.ip >= prefix)
        & (Exchange.ip < upper)
        & Exchange.ip.startswith(prefix, autoescape=True)
    )


def linked_accounts(
    session: Session, *, account: Account, max_prefixes: int = 5, limit: int = 50
) -> list[LinkedAccount]:
    """Accounts sharing the payment fingerprint or one of the networks the account's traffic
    came from most (its ``max_prefixes`` busiest /24s: each more costs a pass over the log)."""
    links: dict[str, LinkedAccount] = {}
    if account.payment_fingerprint:
        same = select(Account.id, Account.name).where(
            Account.payment_fingerprint == account.payment_fingerprint, Account.id != account.id
        )
        for other_id, name in session.execute(same.limit(limit)):
            links[other_id] = LinkedAccount(other_id, name, "same payment fingerprint")
    recent_ips = (
        select(Exchange.ip)
        .where(Exchange.account_id == account.id)
        .order_by(Exchange.ts.desc())
        .limit(1000)
    )
    used: dict[str, int] = {}
    for ip in session.scalars(recent_ips):
        if ip:
            used[ip_prefix(ip)] = used.get(ip_prefix(ip), 0) + 1
    prefixes = sorted(used, key=lambda p: -used[p])[:max_prefixes]
    for prefix in prefixes:  # one index range each (an OR of ranges is a scan on SQLite)
        shared = (
            select(Exchange.account_id, func.min(Exchange.ip))
            .where(ip_startswith(prefix), Exchange.account_id != account.id)
            .group_by(Exchange.account_id)
            .limit(limit)
            .subquery()
        )
        query = select(shared.c.account_id, Account.name, shared.c[1]).join(
            Account, Account.id == shared.c.account_id
        )
        for other_id, name, ip in session.execute(query):
            if other_id not in links and len(links) < limit:
                links[other_id] = LinkedAccount(other_id, name, f"shares network {ip_prefix(ip)}*")
    return list(links.values())


def search(session: Session, query: str, *, limit: int = 50) -> list[SearchHit]:
    """Accounts whose id or name contains ``query``, the owner of a key id, and accounts seen
    from an IP address starting with ``query``."""
    q = query.strip()
    if not q:
        return []
    hits: dict[str, SearchHit] = {}
    by_account = (
        select(Account.id, Account.name)
        .where(
            or_(
                Account.id == q,
                Account.name.contains(q, autoescape=True),
                Account.id.contains(q, autoescape=True),
            )
        )
        .order_by(Account.name)
        .limit(limit)
    )
    for account_id, name in session.execute(by_account):
        hits[account_id] = SearchHit(account_id, name, "account name or id")
    by_key = (
        select(ApiKey.account_id, Account.name, ApiKey.id)
        .join(Account, Account.id == ApiKey.account_id)
        .where(ApiKey.id == q)
    )
    for account_id, name, key_id in session.execute(by_key):
        hits.setdefault(account_id, SearchHit(account_id, name, f"owns key {key_id}"))
    if any(c.isdigit() for c in q) and all(c in "0123456789abcdefABCDEF.:" for c in q):
        seen = (
            select(Exchange.account_id, func.count().label("n"))
            .where(ip_startswith(q), Exchange.account_id.is_not(None))
            .group_by(Exchange.account_id)
            .order_by(func.count().desc())
            .limit(limit)
            .subquery()
        )
        by_ip = select(seen.c.account_id, Account.name, seen.c.n).join(
            Account, Account.id == seen.c.account_id
        )
        for account_id, name, n in session.execute(by_ip):
            hits.setdefault(
                account_id, SearchHit(account_id, name, f"{n} requests from IPs starting {q}")
            )
    return list(hits.values())[:limit]
