"""Cross-account links: which accounts act together, and the clusters they form.

Evidence between two accounts comes from keys they share: a payment fingerprint, an IP /24 (or
IPv6 /48) prefix, an uncommon user agent, frequent frame shingles (a template), synchronized
activity (MinHash bands of the minutes they were active), and, when the provider's accounts
file is given, an account-creation burst (created the same day, young when active). One kind
of evidence is not enough (colleagues share a card, strangers share a carrier NAT, many apps
run in one cloud range): a pair is linked when the weighted kinds add up to
``link_threshold``. Keys shared by more than ``max_key_accounts`` accounts (the SDK's default
user agent, a big NAT) say nothing and are ignored. Linked accounts are merged with union-find
into clusters.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from distillguard.errors import ConfigError

KINDS = ("payment", "ip_prefix", "user_agent", "template", "timing", "created")


@dataclass(frozen=True)
class LinkConfig:
    """Weights of each kind of shared key and the bar a pair must clear to be linked."""

    payment: float = 1.5  # a shared card is strong, but colleagues share one honestly
    ip_prefix: float = 1.0  # a /24 is shared by proxies, but also by NATs and clouds
    user_agent: float = 0.5  # an uncommon agent string; weak on its own
    template: float = 1.0  # frequent frame shingles in common (at least min_shared_shingles)
    timing: float = 1.0  # active in the same minutes (at least min_sync_bands MinHash values)
    # Created on the same day and young when first active (accounts file, optional): a batch
    # signup. Weak alone (strangers sign up on the same day), decisive with one more kind.
    created: float = 1.0
    link_threshold: float = 2.0  # two independent kinds at least
    max_key_accounts: int = 300  # a key shared by more accounts is too common to mean anything
    max_key_share: float = 0.05  # ... or by more than this share of all accounts (SDK agents)
    min_shared_shingles: int = 3  # shared frequent shingles that make a template in common
    # Bottom-64 bucket hashes two accounts share for timing to count as synchronized: a
    # scheduler's waves give ~13, two busy but independent apps ~4.
    min_sync_bands: int = 8
    min_sync_buckets: int = 8  # accounts active in fewer minutes have no timing signature

    def __post_init__(self) -> None:
        for name in KINDS:
            if getattr(self, name) < 0:
                raise ConfigError(f"LinkConfig.{name} must be >= 0")
        if not 0 < self.max_key_share <= 1:
            raise ConfigError("LinkConfig.max_key_share must be within (0, 1]")
        if self.link_threshold <= 0 or self.max_key_accounts < 2:
            raise ConfigError("LinkConfig.link_threshold must be > 0, max_key_accounts >= 2")
        if min(self.min_shared_shingles, self.min_sync_bands, self.min_sync_buckets) < 1:
            raise ConfigError("LinkConfig minimum counts must be at least 1")


@dataclass(frozen=True)
class LinkKeys:
    """What one account exposes for linking (read off its sketch)."""

    payments: frozenset[str] = frozenset()
    prefixes: frozenset[str] = frozenset()
    user_agents: frozenset[str] = frozenset()
    shingles: frozenset[int] = frozenset()
    minhash: tuple[int, ...] | None = None  # bottom-k time-bucket hashes; None: too few
    created: frozenset[str] = frozenset()  # creation-day bucket of a young account


@dataclass(frozen=True)
class Cluster:
    cluster_id: str
    members: tuple[str, ...]
    evidence: tuple[str, ...]  # kinds of shared keys seen on the cluster's links


@dataclass
class UnionFind:
    parent: dict[str, str] = field(default_factory=dict)

    def find(self, x: str) -> str:
        p = self.parent.setdefault(x, x)
        root = x
        while p != root:
            root, p = p, self.parent.setdefault(p, p)
        while self.parent[x] != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        if rb < ra:
            ra, rb = rb, ra
        self.parent[rb] = ra  # the smaller id is the root: deterministic clusters
        return True


def cluster_id_of(members: Iterable[str]) -> str:
    """A stable id from the member set (same accounts -> same id across runs and replicas)."""
    digest = hashlib.sha1("\n".join(sorted(members)).encode()).hexdigest()
    return f"cluster-{digest[:12]}"


def _index(keys: Mapping[str, LinkKeys], cfg: LinkConfig) -> dict[str, dict[object, list[str]]]:
    idx: dict[str, dict[object, list[str]]] = {k: defaultdict(list) for k in KINDS}
    for acct, lk in keys.items():
        for p in lk.payments:
            idx["payment"][p].append(acct)
        for p in lk.prefixes:
            idx["ip_prefix"][p].append(acct)
        for u in lk.user_agents:
            idx["user_agent"][u].append(acct)
        for s in lk.shingles:
            idx["template"][s].append(acct)
        for c in lk.created:
            idx["created"][c].append(acct)
        if lk.minhash is not None:
            for v in lk.minhash:
                idx["timing"][v].append(acct)
    return idx


def pair_evidence(
    keys: Mapping[str, LinkKeys], cfg: LinkConfig
) -> dict[tuple[str, str], dict[str, int]]:
    """For every pair sharing an informative key: how many keys of each kind they share."""
    pairs: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    cap = min(cfg.max_key_accounts, max(60, int(cfg.max_key_share * len(keys))))
    for kind, index in _index(keys, cfg).items():
        for accts in index.values():
            if len(accts) < 2 or len(accts) > cap:
                continue
            accts = sorted(set(accts))
            for i, a in enumerate(accts):
                for b in accts[i + 1 :]:
                    pairs[(a, b)][kind] += 1
    return pairs


def link_weight(shared: Mapping[str, int], cfg: LinkConfig) -> tuple[float, tuple[str, ...]]:
    """Total weight of a pair's shared keys, and the kinds that counted."""
    kinds = []
    if shared.get("payment", 0):
        kinds.append("payment")
    if shared.get("ip_prefix", 0):
        kinds.append("ip_prefix")
    if shared.get("user_agent", 0):
        kinds.append("user_agent")
    if shared.get("template", 0) >= cfg.min_shared_shingles:
        kinds.append("template")
    if shared.get("timing", 0) >= cfg.min_sync_bands:
        kinds.append("timing")
    if shared.get("created", 0):
        kinds.append("created")
    return sum(getattr(cfg, k) for k in kinds), tuple(kinds)


def find_clusters(keys: Mapping[str, LinkKeys], cfg: LinkConfig | None = None) -> list[Cluster]:
    """Clusters of two or more linked accounts (singletons are not listed)."""
    cfg = cfg or LinkConfig()
    uf = UnionFind()
    kinds_seen: dict[tuple[str, str], tuple[str, ...]] = {}
    for pair, shared in pair_evidence(keys, cfg).items():
        w, kinds = link_weight(shared, cfg)
        if w >= cfg.link_threshold:
            uf.union(*pair)
            kinds_seen[pair] = kinds
    groups: dict[str, list[str]] = defaultdict(list)
    for acct in uf.parent:
        groups[uf.find(acct)].append(acct)
    evidence: dict[str, set[str]] = defaultdict(set)
    for (a, _b), kinds in kinds_seen.items():
        evidence[uf.find(a)].update(kinds)
    out = []
    for root, members in groups.items():
        if len(members) > 1:
            out.append(
                Cluster(
                    cluster_id_of(members),
                    tuple(sorted(members)),
                    tuple(k for k in KINDS if k in evidence[root]),
                )
            )
    return sorted(out, key=lambda c: (-len(c.members), c.cluster_id))


def minhash_tuple(
    bottom_k: tuple[int, ...], buckets: int, cfg: LinkConfig
) -> tuple[int, ...] | None:
    if not bottom_k or buckets < cfg.min_sync_buckets:
        return None
    return bottom_k
