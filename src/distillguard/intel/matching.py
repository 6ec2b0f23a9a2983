"""Partners' indicators against our own traffic: which accounts show a known campaign's keys.

Pure: traffic records and shared indicators in, matches out. Each account's IP prefixes, user
agents and payment fingerprints are hashed under the community key exactly as the exporter
hashed them (``fingerprints``); its frequent frame shingles become a MinHash signature whose
containment of a shared template is estimated; its dominant sampling profile is compared as
is. A match is a *signal*, never a verdict: one partner's IP prefix can be a shared cloud
range. ``AccountMatch.strong`` marks accounts that match at least ``min_kinds`` independent
kinds of one campaign, one of them its infrastructure (the same actor, not only the same kind
of workload), and ``signal`` is
the probability-like combination the detector adds to its score (docs/intel.md).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from distillguard.errors import ConfigError, InputError
from distillguard.intel.fingerprints import (
    HASHED_KINDS,
    KIND_IP_PREFIX,
    KIND_PAYMENT,
    KIND_REQUEST_PARAMS,
    KIND_TEMPLATE,
    KIND_USER_AGENT,
    CommunityKey,
    FrequentShingles,
    MinHasher,
    canonical_ip_prefix,
    canonical_payment,
    canonical_user_agent,
    containment,
    decode_signature,
    frame_shingles,
    jaccard,
    request_profile,
)
from distillguard.intel.indicators import IndicatorIntel
from distillguard.traffic import TrafficRecord, Verdict, prompt_text


@dataclass(frozen=True)
class MatchConfig:
    """When an account's traffic matches a shared indicator."""

    # Share of the shared template's shingles an account's frequent shingles must contain
    # (MinHash estimate; 64 values give about +-0.1, so 0.6 stays clear of chance overlaps).
    min_containment: float = 0.6
    template_share: float = 0.3  # same meaning as ExtractConfig.template_share (frames repeat)
    template_min_requests: int = 5  # an account with fewer prompts has no template to compare
    template_min_shingles: int = 3  # ... nor one with fewer frequent shingles
    profile_share: float = 0.6  # the account's dominant sampling profile covers this share
    # Independent kinds of one campaign an account must match to count as strong: one kind
    # alone (a cloud /24, a common pinned profile) is shared by strangers.
    min_kinds: int = 2
    # ... one of them infrastructure (IP prefix, payment, agent): a template and a sampling
    # profile in common say "the same kind of workload" (two apps built from one tutorial,
    # two campaigns using one public frame), not "the same actor".
    require_infrastructure: bool = True
    shingle_capacity: int = 64  # Misra-Gries counters per account: frames have < 30 shingles

    def __post_init__(self) -> None:
        for name in ("min_containment", "template_share", "profile_share"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ConfigError(f"MatchConfig.{name} must be within (0, 1]")
        if min(self.template_min_requests, self.template_min_shingles, self.min_kinds) < 1:
            raise ConfigError("MatchConfig minimum counts must be at least 1")
        if self.shingle_capacity < 8:
            raise ConfigError("MatchConfig.shingle_capacity must be at least 8")


@dataclass(frozen=True)
class SharedIndicator:
    """An imported indicator and who shared it."""

    source: str  # the partner's name (its STIX identity)
    indicator: IndicatorIntel
    campaign_name: str = ""


@dataclass(frozen=True)
class Match:
    """One line of the matches file (docs/intel.md)."""

    account_id: str
    source: str
    indicator_id: str
    kind: str
    confidence: float  # 0-1: the indicator's confidence (x containment for templates)
    campaign_id: str
    campaign: str
    requests: int  # the account's requests that showed the key (all of them for template/params)

    def to_dict(self) -> dict[str, object]:
        return {
            "account_id": self.account_id,
            "source": self.source,
            "indicator_id": self.indicator_id,
            "kind": self.kind,
            "confidence": round(self.confidence, 4),
            "campaign_id": self.campaign_id,
            "campaign": self.campaign,
            "requests": self.requests,
        }


@dataclass(frozen=True)
class AccountMatch:
    account_id: str
    source: str
    campaign_id: str
    kinds: tuple[str, ...]
    signal: float  # 1 - prod(1 - confidence) over its matches of that campaign
    strong: bool  # at least MatchConfig.min_kinds kinds


@dataclass(frozen=True)
class MatchResult:
    matches: tuple[Match, ...]
    accounts: tuple[AccountMatch, ...]  # best campaign per matched account
    records: int
    scanned_accounts: int
    bad_ips: int


@dataclass
class _Account:
    requests: int = 0
    hits: Counter[int] = field(default_factory=Counter)  # indicator index -> requests
    profiles: Counter[str] = field(default_factory=Counter)
    shingles: FrequentShingles | None = None


def match_traffic(
    records: Iterable[TrafficRecord],
    shared: Sequence[SharedIndicator],
    key: CommunityKey,
    cfg: MatchConfig | None = None,
) -> MatchResult:
    """Every (account, indicator) match of ``records`` against ``shared`` (one pass)."""
    cfg = cfg or MatchConfig()
    index: dict[tuple[str, str], list[int]] = defaultdict(list)
    templates: list[tuple[int, tuple[int, ...], int]] = []
    k = None
    for i, s in enumerate(shared):
        ind = s.indicator
        if ind.kind == KIND_TEMPLATE:
            sig = decode_signature(ind.value)
            if k is not None and len(sig) != k:
                raise InputError(f"indicator {ind.id}: MinHash of {len(sig)} values, not {k}")
            k = len(sig)
            templates.append((i, sig, ind.template_shingles or 1))
        else:
            index[(ind.kind, ind.value)].append(i)
    hashed: dict[tuple[str, str], str] = {}
    accounts: dict[str, _Account] = defaultdict(_Account)
    n = bad_ips = 0
    for r in records:
        n += 1
        a = accounts[r.account_id]
        a.requests += 1
        for kind, raw, canon in (
            (KIND_IP_PREFIX, r.ip, canonical_ip_prefix),
            (KIND_USER_AGENT, r.user_agent, canonical_user_agent),
            (KIND_PAYMENT, r.payment_fingerprint, canonical_payment),
        ):
            if not raw:
                continue
            h = hashed.get((kind, raw))
            if h is None:
                try:
                    h = hashed[(kind, raw)] = key.hash(kind, canon(raw))
                except InputError:
                    bad_ips += 1
                    continue
            for i in index.get((kind, h), ()):
                a.hits[i] += 1
        a.profiles[request_profile(r.request)] += 1
        if templates:
            if a.shingles is None:
                a.shingles = FrequentShingles(cfg.shingle_capacity)
            a.shingles.add(frame_shingles(prompt_text(r.request)))

    hasher = MinHasher(key, k) if k else None
    matches: list[Match] = []
    for acct in sorted(accounts):
        a = accounts[acct]

        def hit(i: int, conf: float, reqs: int, acct: str = acct) -> None:
            s = shared[i]
            matches.append(
                Match(
                    acct,
                    s.source,
                    s.indicator.id,
                    s.indicator.kind,
                    conf,
                    s.indicator.campaign_id,
                    s.campaign_name,
                    reqs,
                )
            )

        for i, reqs in sorted(a.hits.items()):
            hit(i, shared[i].indicator.confidence / 100, reqs)
        profile, count = a.profiles.most_common(1)[0]
        if count >= cfg.profile_share * a.requests:
            for i in index.get((KIND_REQUEST_PARAMS, profile), ()):
                hit(i, shared[i].indicator.confidence / 100, count)
        if hasher is None or a.shingles is None or a.requests < cfg.template_min_requests:
            continue
        mine = a.shingles.frequent(cfg.template_share, cfg.template_min_requests)
        if len(mine) < cfg.template_min_shingles:
            continue
        sig = hasher.signature(sorted(mine))
        for i, theirs, size in templates:
            c = containment(jaccard(sig, theirs), size, len(mine))
            if c >= cfg.min_containment:
                hit(i, shared[i].indicator.confidence / 100 * c, a.requests)
    return MatchResult(tuple(matches), summarize(matches, cfg.min_kinds), n, len(accounts), bad_ips)


def summarize(
    matches: Iterable[Match], min_kinds: int = 2, *, require_infrastructure: bool = True
) -> tuple[AccountMatch, ...]:
    """Per account, the shared campaign it matches best (most kinds, then signal)."""
    by: dict[tuple[str, str, str], list[Match]] = defaultdict(list)
    for m in matches:
        by[(m.account_id, m.source, m.campaign_id)].append(m)
    best: dict[str, AccountMatch] = {}
    for (acct, source, cid), ms in by.items():
        kinds = tuple(sorted({m.kind for m in ms}))
        miss = 1.0
        for kind in kinds:  # one factor per kind: three /24s of one hydra are one piece of evidence
            miss *= 1.0 - max(m.confidence for m in ms if m.kind == kind)
        strong = len(kinds) >= min_kinds and (
            not require_infrastructure or any(k in HASHED_KINDS for k in kinds)
        )
        cand = AccountMatch(acct, source, cid, kinds, 1.0 - miss, strong)
        cur = best.get(acct)
        if cur is None or (len(cand.kinds), cand.signal) > (len(cur.kinds), cur.signal):
            best[acct] = cand
    return tuple(best[a] for a in sorted(best))


def reason(match: AccountMatch) -> str:
    """The verdict reason an analyst reads: which partner, which kinds."""
    return (
        f"matches {', '.join(match.kinds)} of a distillation campaign shared by "
        f"{match.source} (signal {match.signal:.2f})"
    )


def raise_scores(
    verdicts: Iterable[Verdict],
    accounts: Iterable[AccountMatch],
    *,
    weight: float = 0.5,
    threshold: float | None = None,
) -> list[Verdict]:
    """Verdicts with partners' matches as an extra signal: the score rises to
    ``1 - (1 - score)(1 - weight * signal)`` and the reason names the source.

    A partner's indicator never decides alone: ``flagged`` only turns on when a
    ``threshold`` is given, the account matches 2+ kinds of one campaign (strong) *and* its
    raised score reaches the threshold; nothing here blocks (the policy acts on flags).
    """
    if not 0.0 < weight < 1.0:
        raise ConfigError("weight must be within (0, 1): a shared indicator never scores 1")
    by = {a.account_id: a for a in accounts}
    out = []
    for v in verdicts:
        m = by.get(v.account_id)
        if m is None:
            out.append(v)
            continue
        score = 1.0 - (1.0 - v.score) * (1.0 - weight * m.signal)
        flagged = v.flagged or (threshold is not None and m.strong and score >= threshold)
        out.append(
            Verdict(v.account_id, min(1.0, score), flagged, v.cluster_id, (*v.reasons, reason(m)))
        )
    return out
