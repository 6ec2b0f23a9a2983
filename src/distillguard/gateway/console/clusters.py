"""The console's clusters: the monitor's linking and coordination test over keys the database
aggregates from the exchange log, cached per process.

What an account exposes for linking (``monitor.links.LinkKeys``) is read with GROUP BY queries,
never row by row in Python: its payment fingerprints, IP /24 (IPv6 /48) prefixes and user
agents (the ``max_keys`` most used of each, as the monitor's sketch keeps), the 5-second
buckets it was active in (folded into the monitor's bottom-k MinHash), and an account-creation
burst from the accounts table. Templates need the prompts' text, which no aggregate gives:
they are left out of the population's linking and shown only between the members of one
cluster (``template_links``, from their latest prompts). ``find_clusters`` and
``coordination_tests`` then run unchanged.

A computation costs a pass over the window (seconds on a million exchanges), so a snapshot is
reused for ``ttl_s``; past it the stale snapshot is served while one background thread
computes the next (stale-while-revalidate), so only the first page after start waits.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import Integer, cast, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from distillguard.monitor.coordination import ClusterTest, coordination_tests
from distillguard.monitor.links import (
    KINDS,
    Cluster,
    LinkConfig,
    LinkKeys,
    find_clusters,
    link_weight,
    pair_evidence,
)
from distillguard.monitor.signals import MinHasher, SignalConfig, frame_shingles, ip_prefix
from distillguard.monitor.trust import TrustPolicy
from distillguard.store.db import session_scope
from distillguard.store.schema import Account, Exchange

log = logging.getLogger("distillguard.gateway.console")

KIND_WORDS = {  # how each kind of link reads on the page
    "payment": "same payment fingerprint",
    "ip_prefix": "shared IP prefix",
    "user_agent": "same uncommon user agent",
    "template": "same prompt template",
    "timing": "synchronized timing",
    "created": "creation burst",
}


@dataclass(frozen=True)
class ClusterConfig:
    window_s: float = 7 * 86_400.0  # log span linked, up to the latest request: a campaign week
    # A snapshot's lifetime: clusters move over hours, and a computation over a large log
    # costs seconds to minutes of one core in the gateway process (see docs/benchmarks.md).
    ttl_s: float = 600.0
    max_keys: int = 8  # keys of each kind kept per account, as the monitor's sketch keeps
    template_prompts: int = 200  # latest prompts per member read for the template links
    signals: SignalConfig = field(default_factory=SignalConfig)  # buckets, MinHash, shingles
    links: LinkConfig = field(default_factory=LinkConfig)  # weights and threshold (monitor's)

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.ttl_s <= 0:
            raise ValueError("window_s and ttl_s must be > 0")
        if self.max_keys < 1 or self.template_prompts < 1:
            raise ValueError("max_keys and template_prompts must be >= 1")


@dataclass(frozen=True)
class Edge:
    a: str
    b: str
    kinds: tuple[str, ...]  # the kinds that count for the pair (monitor.links.link_weight)
    weight: float


@dataclass(frozen=True)
class Snapshot:
    computed_at: float  # Unix seconds (wall clock)
    seconds: float  # how long the computation took
    since: float  # the window's start
    accounts: int  # accounts active in the window
    clusters: tuple[Cluster, ...]  # largest first (find_clusters' order)
    tests: Mapping[str, ClusterTest]  # cluster id -> coordination test
    edges: Mapping[str, tuple[Edge, ...]]  # cluster id -> the linked pairs inside it
    member_of: Mapping[str, str]  # account id -> cluster id

    def cluster(self, cluster_id: str) -> Cluster | None:
        return next((c for c in self.clusters if c.cluster_id == cluster_id), None)


def _top(rows: Iterable[Sequence[Any]], cap: int) -> dict[str, frozenset[str]]:
    """(account, key, count) rows -> each account's ``cap`` most used keys."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for account_id, key, n in rows:
        if account_id and key:
            counts[str(account_id)][str(key)] += int(n)
    return {a: frozenset(k for k, _ in c.most_common(cap)) for a, c in counts.items()}


def _prefix(trimmed: str) -> str:
    """The network of an address whose last group's digits SQL's ``rtrim`` removed: a /24 or
    /48 depends only on the groups before the last, so any digit put back gives it."""
    return ip_prefix(trimmed + "0")


def link_keys_from_log(
    session: Session, *, since: float, cfg: ClusterConfig
) -> tuple[dict[str, LinkKeys], dict[str, float]]:
    """Every account active since ``since``: its link keys, and its first request's time."""
    window = [Exchange.ts >= since, Exchange.account_id.is_not(None)]
    n = func.count()
    first: dict[str, float] = {
        str(a): float(t)
        for a, t in session.execute(
            select(Exchange.account_id, func.min(Exchange.ts))
            .where(*window)
            .group_by(Exchange.account_id)
        )
    }
    trimmed = func.rtrim(Exchange.ip, "0123456789")
    prefixes = _top(
        (
            (a, _prefix(t), c)
            for a, t, c in session.execute(
                select(Exchange.account_id, trimmed, n)
                .where(*window)
                .group_by(Exchange.account_id, trimmed)
            )
        ),
        cfg.max_keys,
    )
    agents = _top(
        session.execute(
            select(Exchange.account_id, Exchange.user_agent, n)
            .where(*window, Exchange.user_agent.is_not(None))
            .group_by(Exchange.account_id, Exchange.user_agent)
        ),
        cfg.max_keys,
    )
    logged_payments: list[Sequence[Any]] = session.execute(
        select(Exchange.account_id, Exchange.payment_fingerprint, n)
        .where(*window, Exchange.payment_fingerprint.is_not(None))
        .group_by(Exchange.account_id, Exchange.payment_fingerprint)
    ).all()  # type: ignore[assignment]
    accounts: dict[str, tuple[str | None, float | None]] = {
        a: (p, created)
        for a, p, created in session.execute(
            select(Account.id, Account.payment_fingerprint, Account.created_at)
        )
        if a in first
    }
    on_file = [(a, p, 1) for a, (p, _) in accounts.items() if p]
    payments = _top([*logged_payments, *on_file], cfg.max_keys)
    minhash = _timing(session, window, cfg)
    young = TrustPolicy().young_days
    keys = {}
    for a in first:
        created = accounts.get(a, (None, None))[1]
        burst: frozenset[str] = frozenset()
        if created is not None and (first[a] - created) / 86_400.0 <= young:
            burst = frozenset({f"day:{int(created // 86_400)}"})
        keys[a] = LinkKeys(
            payments=payments.get(a, frozenset()),
            prefixes=prefixes.get(a, frozenset()),
            user_agents=agents.get(a, frozenset()),
            minhash=minhash.get(a),
            created=burst,
        )
    return keys, first


def _timing(session: Session, window: list[Any], cfg: ClusterConfig) -> dict[str, tuple[int, ...]]:
    """Each account's bottom-k MinHash of its active 5 s buckets (None-free: accounts active
    in fewer than ``min_sync_buckets`` buckets have no timing signature)."""
    sig = cfg.signals
    offset = Exchange.ts / sig.sync_bucket_s
    if session.get_bind().dialect.name == "sqlite":
        bucket = cast(offset, Integer)  # truncates: floor for the positive times of a log
    else:
        bucket = cast(func.floor(offset), Integer)  # PostgreSQL's CAST rounds
    hasher = MinHasher(sig.minhash_k, sig.seed)
    hashes: dict[str, list[int]] = defaultdict(list)
    query = select(Exchange.account_id, bucket).where(*window).group_by(Exchange.account_id, bucket)
    for a, b in session.execute(query):
        hashes[str(a)].append(hasher.hash(int(b)))
    out = {}
    for a, values in hashes.items():
        if len(values) >= cfg.links.min_sync_buckets:
            out[a] = tuple(sorted(values)[: sig.minhash_k])
    return out


def compute(engine: Engine, cfg: ClusterConfig) -> Snapshot:
    """Link the window's accounts, test every cluster, keep each cluster's linked pairs."""
    t0 = time.perf_counter()
    with session_scope(engine) as session:
        latest = session.scalar(select(func.max(Exchange.ts))) or time.time()
        since = latest - cfg.window_s
        keys, _ = link_keys_from_log(session, since=since, cfg=cfg)
    clusters = find_clusters(keys, cfg.links)
    tests = coordination_tests(keys, clusters, cfg.links)
    member_of = {m: c.cluster_id for c in clusters for m in c.members}
    edges: dict[str, list[Edge]] = defaultdict(list)
    for (a, b), shared in pair_evidence(keys, cfg.links).items():
        cid = member_of.get(a)
        if cid is None or member_of.get(b) != cid:
            continue
        weight, kinds = link_weight(shared, cfg.links)
        if weight >= cfg.links.link_threshold:
            edges[cid].append(Edge(a, b, kinds, weight))
    return Snapshot(
        computed_at=time.time(),
        seconds=time.perf_counter() - t0,
        since=since,
        accounts=len(keys),
        clusters=tuple(clusters),
        tests=tests,
        edges={cid: tuple(sorted(e, key=lambda x: (x.a, x.b))) for cid, e in edges.items()},
        member_of=member_of,
    )


def template_links(
    session: Session, members: tuple[str, ...], cfg: ClusterConfig
) -> list[tuple[str, str, int]]:
    """(a, b, frequent shingles shared) for member pairs sharing at least the monitor's
    ``min_shared_shingles``: their latest ``template_prompts`` prompts each (the
    (account_id, ts) index), frequent shingles as the monitor's sketch defines them."""
    from distillguard.gateway.console.queries import prompt_text

    sig = cfg.signals
    frequent: dict[str, frozenset[int]] = {}
    for a in members:
        rows = session.scalars(
            select(Exchange.request)
            .where(Exchange.account_id == a)
            .order_by(Exchange.ts.desc())
            .limit(cfg.template_prompts)
        ).all()
        counts: Counter[int] = Counter()
        for request in rows:
            counts.update(set(frame_shingles(prompt_text(request), sig)))
        floor = max(2, math.ceil(sig.frequent_share * len(rows)))
        frequent[a] = frozenset(s for s, c in counts.items() if c >= floor)
    out = []
    ordered = sorted(members)
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            shared = len(frequent[a] & frequent[b])
            if shared >= cfg.links.min_shared_shingles:
                out.append((a, b, shared))
    return out


class ClusterCache:
    """One snapshot per process: computed on first use, then refreshed in the background."""

    def __init__(
        self, cfg: ClusterConfig | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.cfg = cfg or ClusterConfig()
        self._clock = clock
        self._snapshot: Snapshot | None = None
        self._taken_at = -math.inf
        self._lock = threading.Lock()  # one computation at a time
        self._refreshing = False
        self.refresher: threading.Thread | None = None  # the latest background computation

    def _compute(self, engine: Engine) -> Snapshot:
        snapshot = compute(engine, self.cfg)
        self._snapshot, self._taken_at = snapshot, self._clock()
        log.info(
            "console: %d clusters over %d accounts in %.2f s",
            len(snapshot.clusters),
            snapshot.accounts,
            snapshot.seconds,
        )
        return snapshot

    def _refresh_in_background(self, engine: Engine) -> None:
        def run() -> None:
            try:
                with self._lock:
                    self._compute(engine)
            except Exception:
                log.exception("console: cluster refresh failed (the last snapshot stays)")
            finally:
                self._refreshing = False

        if not self._refreshing:
            self._refreshing = True
            self.refresher = threading.Thread(target=run, name="console-clusters", daemon=True)
            self.refresher.start()

    def get(self, engine: Engine, *, wait: bool = True) -> Snapshot | None:
        """The current snapshot. None only when there is none yet and ``wait`` is False (a
        computation then starts in the background)."""
        snapshot = self._snapshot
        if snapshot is not None:
            if self._clock() - self._taken_at > self.cfg.ttl_s:
                self._refresh_in_background(engine)
            return snapshot
        if not wait:
            self._refresh_in_background(engine)
            return None
        with self._lock:
            return self._snapshot or self._compute(engine)

    def invalidate(self) -> None:
        self._snapshot, self._taken_at = None, -math.inf


def with_templates(edges: tuple[Edge, ...], templates: list[tuple[str, str, int]]) -> list[Edge]:
    """The cluster's edges with ``template`` added where the members share a template (a
    template-only pair becomes an edge of its own)."""
    by_pair = {(e.a, e.b): e for e in edges}
    for a, b, _shared in templates:
        edge = by_pair.get((a, b))
        if edge is None:
            by_pair[(a, b)] = Edge(a, b, ("template",), 1.0)
        elif "template" not in edge.kinds:
            kinds = tuple(k for k in KINDS if k in {*edge.kinds, "template"})
            by_pair[(a, b)] = replace(edge, kinds=kinds)
    return sorted(by_pair.values(), key=lambda e: (e.a, e.b))
