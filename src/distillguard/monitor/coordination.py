"""Coordination as evidence on its own: how unlikely is a linked cluster by chance?

Linking (``links.find_clusters``) joins accounts that share at least two kinds of keys (a
payment fingerprint, an IP prefix, a user agent, a template, synchronized timing). Honest
populations share keys too: a carrier NAT, a cloud range, an SDK's agent string, a family's
card. What they do not do is share *several kinds at once across many accounts*. The null
model is estimated from the population itself:

1. Permute each kind of key independently across accounts (``permutations`` times). Every
   key keeps exactly as many holders as it had (a NAT stays a NAT, a popular agent stays
   popular), but the coincidences *between* kinds are now chance.
2. Re-link each permuted population with the same rule and record the largest chance
   cluster and the number of linked pairs (the chance pair-link rate ``r``), both at the
   link threshold and at a "strong" bar (one more kind of key shared).
3. A cluster of ``m`` accounts gets the family-wise p-value "a coordination-free population
   of this size and these key frequencies holds a linked cluster of at least ``m``
   accounts": the permutation frequency of such a cluster, and beyond the largest chance
   cluster seen, the Erdős-Rényi tail ``1 - exp(-mu)`` with ``mu`` the expected number of
   connected components of size >= m in G(N, r) (Cayley's count of trees on m vertices).
   The same for the cluster's largest strongly linked group; the two are combined with a
   Bonferroni factor of 2.

Under a null population the observed population is exchangeable with its permutations, so
the p-value of its largest cluster is uniform and every other cluster's is larger
(conservative); an injected 30-account cluster gets a p-value far below 1e-6.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from distillguard.errors import ConfigError
from distillguard.monitor.links import (
    KINDS,
    Cluster,
    LinkConfig,
    LinkKeys,
    UnionFind,
    link_weight,
    pair_evidence,
)

_FIELDS = ("payments", "prefixes", "user_agents", "shingles", "minhash", "created")


@dataclass(frozen=True)
class CoordinationConfig:
    """Knobs of the permutation null."""

    # Null populations drawn per null. 1/(permutations + 1) is the smallest purely empirical
    # p-value (beyond it the analytic tail takes over); 9 keeps a null at a few seconds for
    # a thousand accounts on one contended core.
    permutations: int = 9
    # A cluster is "coordinated" below this family-wise p-value: one chance cluster acted on
    # per ~1,000 populations of this size.
    alpha: float = 1e-3
    seed: int = 0  # permutation RNG seed (results are reproducible)
    # Clusters (largest first, 3+ accounts) tested against a null without themselves; each
    # costs one more set of permutations.
    leave_out: int = 16
    # Extra link weight that makes a pair "strong": one more kind than the link threshold
    # needs (LinkConfig weights are ~1 per kind).
    strong_extra: float = 1.0

    def __post_init__(self) -> None:
        if self.permutations < 1 or self.leave_out < 0 or self.strong_extra <= 0:
            raise ConfigError(
                "CoordinationConfig: permutations >= 1, leave_out >= 0, strong_extra > 0"
            )
        if not 0 < self.alpha < 1:
            raise ConfigError("CoordinationConfig.alpha must be within (0, 1)")


@dataclass(frozen=True)
class NullModel:
    """What chance linking looks like in this population, at one link strength."""

    accounts: int  # N
    pair_rate: float  # r: share of account pairs linked in the permuted populations
    max_sizes: tuple[int, ...]  # (B,) largest chance cluster of each permuted population


@dataclass(frozen=True)
class ClusterTest:
    cluster_id: str
    size: int
    strong_size: int  # largest group inside it linked by pairs of strong_weight or more
    p_value: float  # family-wise: a chance cluster this large anywhere in the population
    coordinated: bool  # p_value <= alpha


def permuted(keys: Mapping[str, LinkKeys], rng: random.Random) -> dict[str, LinkKeys]:
    """The population with each kind of key shuffled across accounts independently."""
    ids = sorted(keys)  # order-free: one worker or many give the same null
    cols = {f: [getattr(keys[a], f) for a in ids] for f in _FIELDS}
    for col in cols.values():
        rng.shuffle(col)
    return {a: LinkKeys(**{f: cols[f][i] for f in _FIELDS}) for i, a in enumerate(ids)}


def _weights(keys: Mapping[str, LinkKeys], cfg: LinkConfig) -> dict[tuple[str, str], float]:
    """Link weight of every pair that reaches the link threshold (the others cannot link)."""
    single = max(getattr(cfg, k) for k in KINDS)  # the most one kind of key can weigh
    out = {}
    for pair, shared in pair_evidence(keys, cfg).items():
        if len(shared) < 2 and single < cfg.link_threshold:
            continue  # one kind alone never links: most shared-key pairs stop here
        w = link_weight(shared, cfg)[0]
        if w >= cfg.link_threshold:
            out[pair] = w
    return out


def _components(
    weights: Mapping[tuple[str, str], float], bar: float, within: set[str] | None = None
) -> tuple[int, int]:
    """(pairs at or above ``bar``, largest connected group they form), optionally only
    among the accounts ``within``."""
    uf = UnionFind()
    pairs = 0
    for (a, b), w in weights.items():
        if w >= bar and (within is None or (a in within and b in within)):
            pairs += 1
            uf.union(a, b)
    sizes = Counter(uf.find(a) for a in uf.parent)
    return pairs, max(sizes.values(), default=1)


def null_models(
    keys: Mapping[str, LinkKeys],
    link_cfg: LinkConfig | None = None,
    cfg: CoordinationConfig | None = None,
    *,
    accounts: int | None = None,
) -> tuple[NullModel, NullModel]:
    """Chance linking in ``keys``' population from ``cfg.permutations`` column permutations,
    at the link threshold and at the strong bar; ``accounts`` (default: the population's
    size) is the N the nulls speak for."""
    link_cfg, cfg = link_cfg or LinkConfig(), cfg or CoordinationConfig()
    n = len(keys)
    rng = random.Random(cfg.seed)
    bars = (link_cfg.link_threshold, link_cfg.link_threshold + cfg.strong_extra)
    pairs: list[list[int]] = [[], []]
    sizes: list[list[int]] = [[], []]
    for _ in range(cfg.permutations):
        w = _weights(permuted(keys, rng), link_cfg)
        for lvl, bar in enumerate(bars):
            p, m = _components(w, bar)
            pairs[lvl].append(p)
            sizes[lvl].append(m)
    total_pairs = n * (n - 1) / 2
    out = []
    for lvl in range(2):
        rate = (sum(pairs[lvl]) / len(pairs[lvl])) / total_pairs if total_pairs else 0.0
        out.append(NullModel(accounts or n, rate, tuple(sizes[lvl])))
    return out[0], out[1]


def null_model(
    keys: Mapping[str, LinkKeys],
    link_cfg: LinkConfig | None = None,
    cfg: CoordinationConfig | None = None,
) -> NullModel:
    """The null at the link threshold alone (what ``find_clusters`` links)."""
    return null_models(keys, link_cfg, cfg)[0]


def er_components_at_least(n: int, r: float, m: int, terms: int = 64) -> float:
    """Expected number of tree components of >= m vertices in G(n, r) (log-space sum).

    E[trees of size k] = C(n, k) k^(k-2) r^(k-1) (1-r)^(k(n-k) + C(k,2) - k + 1); denser
    components are rarer still, so this is the leading term for the sparse chance graphs
    the permutations produce."""
    if m < 2:
        return float(n)
    if r <= 0:
        return 0.0
    if r >= 1:
        return 1.0
    total = 0.0
    log_r, log_q = math.log(r), math.log1p(-r)
    for k in range(m, min(n, m + terms) + 1):
        log_term = (
            math.lgamma(n + 1)
            - math.lgamma(k + 1)
            - math.lgamma(n - k + 1)
            + (k - 2) * math.log(k)
            + (k - 1) * log_r
            + (k * (n - k) + k * (k - 1) / 2 - k + 1) * log_q
        )
        term = math.exp(log_term) if log_term > -700 else 0.0
        total += term
        if term < total * 1e-12:
            break
    return total


def cluster_p_value(size: int, null: NullModel) -> float:
    """Family-wise p-value of a linked group of ``size`` accounts under ``null``."""
    b = len(null.max_sizes)
    hits = sum(s >= size for s in null.max_sizes)
    p_emp = (1 + hits) / (b + 1)
    if hits:
        return p_emp  # the permutations themselves saw groups this large
    # Beyond every chance group seen: the analytic tail (floored: a float, not a proof).
    p_er = -math.expm1(-er_components_at_least(null.accounts, null.pair_rate, size))
    return max(min(p_emp, p_er), 1e-300)


def coordination_tests(
    keys: Mapping[str, LinkKeys],
    clusters: Sequence[Cluster],
    link_cfg: LinkConfig | None = None,
    cfg: CoordinationConfig | None = None,
) -> dict[str, ClusterTest]:
    """A p-value per cluster (by cluster id).

    Two statistics, Bonferroni-combined (x2): the cluster's size among pairs linked at the
    link threshold, and the size of its largest group linked by *strong* pairs (sharing
    ``strong_extra`` more weight: three kinds at once). Chance clusters are chains of pairs
    that just clear the bar; an operation's accounts share card, proxy, agent and schedule
    together, so even a group of eight is far beyond chance at the strong bar.

    A coordinated cluster's own keys would pollute the null (50 accounts on one proxy /24
    make that /24 "common" in every permutation and mask themselves), so each of the
    ``cfg.leave_out`` largest clusters of 3+ accounts is tested against nulls estimated
    from the population *without it*. The rest (pairs, mostly) share the nulls of the whole
    population, which is conservative."""
    link_cfg, cfg = link_cfg or LinkConfig(), cfg or CoordinationConfig()
    if not clusters:
        return {}
    observed = _weights(keys, link_cfg)
    strong_bar = link_cfg.link_threshold + cfg.strong_extra
    out = {}
    big = sorted((c for c in clusters if len(c.members) >= 3), key=lambda c: -len(c.members))
    own = {c.cluster_id for c in big[: cfg.leave_out]}
    shared: tuple[NullModel, NullModel] | None = None
    for c in clusters:
        members = set(c.members)
        if c.cluster_id in own:
            rest = {a: k for a, k in keys.items() if a not in members}
            nulls = null_models(rest, link_cfg, cfg, accounts=len(keys))
        else:
            if shared is None:
                shared = null_models(keys, link_cfg, cfg)
            nulls = shared
        strong = _components(observed, strong_bar, within=members)[1]
        p_size = cluster_p_value(len(c.members), nulls[0])
        p_strong = cluster_p_value(strong, nulls[1]) if strong >= 2 else 1.0
        p = min(1.0, 2.0 * min(p_size, p_strong))
        out[c.cluster_id] = ClusterTest(c.cluster_id, len(c.members), strong, p, p <= cfg.alpha)
    return out
