"""The console's reads: aggregation and paging done by the database (GROUP BY, LIMIT/OFFSET),
so a page costs the same on a log of a thousand exchanges or a million.

Plain functions over a SQLAlchemy session that return frozen records; the routes render them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, and_, cast, func, or_, select
from sqlalchemy.orm import Session

from distillguard.store.schema import Account, Action, ApiKey, Exchange

ENDED_ACTIONS = ("allow", "reinstate")  # an account whose latest action is one of these is clear


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
    """Requests and tokens per interval over ``[end - span_s, end]``: one GROUP BY query."""
    start = end - span_s
    width = span_s / num_buckets
    index = _bucket_index(session, start, width).label("bucket")
    tokens = func.sum(
        func.coalesce(Exchange.prompt_tokens, 0) + func.coalesce(Exchange.completion_tokens, 0)
    )
    query = select(index, func.count(), tokens).where(Exchange.ts >= start, Exchange.ts <= end)
    if account_id is not None:
        query = query.where(Exchange.account_id == account_id)
    counts = {int(i): (int(n), int(t or 0)) for i, n, t in session.execute(query.group_by(index))}
    overflow = counts.pop(num_buckets, (0, 0))  # ts == end: it belongs to the last interval
    last = counts.get(num_buckets - 1, (0, 0))
    counts[num_buckets - 1] = (last[0] + overflow[0], last[1] + overflow[1])
    return Series(
        start=start,
        width_s=width,
        buckets=tuple(
            Bucket(start + i * width, *counts.get(i, (0, 0))) for i in range(num_buckets)
        ),
    )


def top_accounts(session: Session, *, since: float, limit: int = 10) -> list[AccountCount]:
    n = func.count().label("n")
    query = (
        select(Exchange.account_id, Account.name, n)
        .join(Account, Account.id == Exchange.account_id)
        .where(Exchange.ts >= since)
        .group_by(Exchange.account_id, Account.name)
        .order_by(n.desc())
        .limit(limit)
    )
    return [AccountCount(a, name, int(c)) for a, name, c in session.execute(query)]


def acted_on(session: Session, *, limit: int = 50) -> list[tuple[Action, str | None]]:
    """Each account's latest action when it still stands (not allow/reinstate), worst first."""
    latest = select(func.max(Action.id)).group_by(Action.account_id).scalar_subquery()
    query = (
        select(Action, Account.name)
        .outerjoin(Account, Account.id == Action.account_id)
        .where(Action.id.in_(latest), Action.action.not_in(ENDED_ACTIONS))
        .order_by(Action.score.desc(), Action.ts.desc())
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


def linked_accounts(
    session: Session, *, account: Account, max_prefixes: int = 20, limit: int = 50
) -> list[LinkedAccount]:
    """Accounts sharing the payment fingerprint or a network the account's traffic came from."""
    links: dict[str, LinkedAccount] = {}
    if account.payment_fingerprint:
        same = select(Account.id, Account.name).where(
            Account.payment_fingerprint == account.payment_fingerprint, Account.id != account.id
        )
        for other_id, name in session.execute(same.limit(limit)):
            links[other_id] = LinkedAccount(other_id, name, "same payment fingerprint")
    ips = session.scalars(
        select(Exchange.ip).where(Exchange.account_id == account.id).distinct().limit(500)
    ).all()
    prefixes = sorted({ip_prefix(ip) for ip in ips if ip})[:max_prefixes]
    if prefixes:
        shared = (
            select(Exchange.account_id, Account.name, Exchange.ip)
            .join(Account, Account.id == Exchange.account_id)
            .where(
                Exchange.account_id != account.id,
                or_(*(Exchange.ip.startswith(p, autoescape=True) for p in prefixes)),
            )
            .group_by(Exchange.account_id, Account.name, Exchange.ip)
            .limit(limit * 4)
        )
        for other_id, name, ip in session.execute(shared):
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
        by_ip = (
            select(Exchange.account_id, Account.name, func.count())
            .join(Account, Account.id == Exchange.account_id)
            .where(and_(Exchange.ip.startswith(q, autoescape=True)))
            .group_by(Exchange.account_id, Account.name)
            .order_by(func.count().desc())
            .limit(limit)
        )
        for account_id, name, n in session.execute(by_ip):
            hits.setdefault(
                account_id, SearchHit(account_id, name, f"{n} requests from IPs starting {q}")
            )
    return list(hits.values())[:limit]
