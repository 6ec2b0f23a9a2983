"""Campaign indicators from a detector's verdicts and the traffic they were made from.

Pure: verdicts (spec §3) and traffic records (spec §1) in, an ``IntelSet`` out. A *campaign*
is one flagged cluster (or one flagged account that belongs to none). Its indicators are the
keys its accounts share that honest traffic does not: client IP prefixes, user agents and
payment fingerprints (as keyed hashes), the frame of its prompts (a keyed MinHash signature)
and the sampling parameters it pins. A key is kept only when most accounts that hold it at
home were flagged (``min_precision``): a cloud range or an SDK's default agent that honest
accounts share too would make partners match strangers. Confidence is the detector's
calibrated score of the campaign times that home precision, on STIX's 0-100 scale.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from distillguard.errors import ConfigError, InputError
from distillguard.intel.fingerprints import (
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
    encode_signature,
    frame_shingles,
    request_profile,
)
from distillguard.traffic import TrafficRecord, Verdict, prompt_text

TLP_LEVELS = ("clear", "green", "amber", "red")


@dataclass(frozen=True)
class ExtractConfig:
    """When a key of a flagged campaign becomes a shared indicator."""

    # A key on fewer of a campaign's accounts belongs to one member, not to its infrastructure.
    min_account_share: float = 0.2
    # ... and a key seen in fewer requests is noise (one request from a hotel network).
    min_requests: int = 5
    # Share of the accounts holding a key at home that the detector flagged; below it the key
    # is shared with honest users (a cloud /24, an SDK's agent) and partners would match them.
    min_precision: float = 0.6
    # A frame shingle in at least this share of a campaign's prompts is part of its template
    # (payload questions vary; the frame repeats in nearly all of them).
    template_share: float = 0.3
    # Fewer frequent shingles than this is not a template (a shared greeting, not a frame).
    template_min_shingles: int = 3
    # The campaign's most common sampling profile must cover this share of its requests ...
    profile_share: float = 0.6
    # ... and pin at least this many parameters (an empty profile is everyone's default).
    profile_min_params: int = 2
    minhash_k: int = 64  # MinHash signature length (estimate error ~ 1/sqrt(k))

    def __post_init__(self) -> None:
        for name in ("min_account_share", "min_precision", "template_share", "profile_share"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ConfigError(f"ExtractConfig.{name} must be within (0, 1]")
        if min(self.min_requests, self.template_min_shingles, self.profile_min_params) < 1:
            raise ConfigError("ExtractConfig minimum counts must be at least 1")
        if not 8 <= self.minhash_k <= 1024:
            raise ConfigError("ExtractConfig.minhash_k must be within [8, 1024]")


@dataclass(frozen=True)
class CampaignIntel:
    """One flagged cluster as shared: counts and times only, no account or content."""

    id: str  # "campaign--<uuid>", derived under the community key from the cluster
    name: str
    accounts: int  # flagged accounts in the cluster
    requests: int
    first_seen: float  # Unix seconds, millisecond precision
    last_seen: float
    confidence: int  # 0-100: the detector's calibrated score (mean over members)


@dataclass(frozen=True)
class IndicatorIntel:
    """One shared indicator of a campaign: what a partner matches its own traffic against."""

    id: str  # "indicator--<uuid>"
    campaign_id: str  # the CampaignIntel it indicates
    kind: str  # ip_prefix | user_agent | payment | template | request_params
    value: str  # HMAC-SHA256 hex; MinHash hex (template); parameter profile (request_params)
    confidence: int  # 0-100: campaign confidence x home precision of the key
    accounts: int  # campaign accounts that showed it
    requests: int  # campaign requests that showed it
    first_seen: float
    last_seen: float
    template_shingles: int | None = None  # size of the template's shingle set (template only)


@dataclass(frozen=True)
class IntelSet:
    """Everything one bundle says: who produced it, under which key, campaigns, indicators."""

    producer: str  # the provider's name as partners know it
    producer_id: str  # "identity--<uuid>"
    key_id: str  # CommunityKey.key_id the hashes were made with
    tlp: str  # clear | green | amber | red
    created: float  # export time: created/modified of every object
    campaigns: tuple[CampaignIntel, ...] = ()
    indicators: tuple[IndicatorIntel, ...] = ()

    def __post_init__(self) -> None:
        if self.tlp not in TLP_LEVELS:
            raise InputError(f"TLP must be one of {', '.join(TLP_LEVELS)}, got {self.tlp!r}")


@dataclass(frozen=True)
class ExtractResult:
    intel: IntelSet
    flagged_accounts: int
    records: int
    bad_ips: int  # records whose ip field is not an address (their prefix is not used)
    dropped: dict[str, int]  # kind -> candidate keys dropped for low home precision


def stix_uuid(key: CommunityKey, *parts: str) -> str:
    """A UUIDv4-shaped id derived under the key: stable across exports, reveals nothing."""
    digest = key.hash("stix-id", "\x00".join(parts))
    return str(uuid.UUID(bytes=bytes.fromhex(digest[:32]), version=4))


def producer_id(key: CommunityKey, producer: str) -> str:
    return f"identity--{stix_uuid(key, 'identity', producer)}"


@dataclass
class _Group:
    accounts: set[str] = field(default_factory=set)
    requests: int = 0
    first: float = float("inf")
    last: float = float("-inf")
    scores: list[float] = field(default_factory=list)
    keys: dict[tuple[str, str], list] = field(default_factory=dict)  # -> [accounts, n, lo, hi]
    shingles: FrequentShingles = field(default_factory=FrequentShingles)
    profiles: Counter[str] = field(default_factory=Counter)
    profile_times: dict[str, list[float]] = field(default_factory=dict)


def extract_intel(
    verdicts: Iterable[Verdict],
    records: Iterable[TrafficRecord],
    key: CommunityKey,
    *,
    producer: str,
    tlp: str = "amber",
    created: float,
    cfg: ExtractConfig | None = None,
) -> ExtractResult:
    """Indicators of every flagged campaign (one pass over ``records``)."""
    cfg = cfg or ExtractConfig()
    group_of: dict[str, str] = {}
    groups: dict[str, _Group] = {}
    for v in verdicts:
        if v.flagged:
            gkey = v.cluster_id or f"account:{v.account_id}"
            group_of[v.account_id] = gkey
            groups.setdefault(gkey, _Group()).scores.append(v.score)
    holders: dict[tuple[str, str], set[str]] = defaultdict(set)  # key -> accounts holding it
    account_profiles: dict[str, Counter[str]] = defaultdict(Counter)
    hashed: dict[tuple[str, str], str] = {}
    n = bad_ips = 0
    for r in records:
        n += 1
        keys: list[tuple[str, str, Callable[[str], str]]] = [
            (KIND_IP_PREFIX, r.ip, canonical_ip_prefix)
        ]
        if r.user_agent:
            keys.append((KIND_USER_AGENT, r.user_agent, canonical_user_agent))
        if r.payment_fingerprint:
            keys.append((KIND_PAYMENT, r.payment_fingerprint, canonical_payment))
        g = groups.get(group_of.get(r.account_id, ""))
        for kind, raw, canon in keys:
            h = hashed.get((kind, raw))
            if h is None:
                try:
                    h = hashed[(kind, raw)] = key.hash(kind, canon(raw))
                except InputError:
                    bad_ips += 1
                    continue
            holders[(kind, h)].add(r.account_id)
            if g is not None:
                slot = g.keys.setdefault((kind, h), [set(), 0, r.ts, r.ts])
                slot[0].add(r.account_id)
                slot[1] += 1
                slot[2], slot[3] = min(slot[2], r.ts), max(slot[3], r.ts)
        profile = request_profile(r.request)
        account_profiles[r.account_id][profile] += 1
        if g is not None:
            g.accounts.add(r.account_id)
            g.requests += 1
            g.first, g.last = min(g.first, r.ts), max(g.last, r.ts)
            g.shingles.add(frame_shingles(prompt_text(r.request)))
            g.profiles[profile] += 1
            times = g.profile_times.setdefault(profile, [r.ts, r.ts])
            times[0], times[1] = min(times[0], r.ts), max(times[1], r.ts)

    flagged = set(group_of)
    dominant = {a: _dominant(c, cfg.profile_share) for a, c in account_profiles.items()}
    hasher = MinHasher(key, cfg.minhash_k)
    campaigns: list[CampaignIntel] = []
    indicators: list[IndicatorIntel] = []
    dropped: Counter[str] = Counter()
    for gkey in sorted(groups):
        g = groups[gkey]
        if not g.requests:
            continue  # flagged, but no traffic of it in this log: nothing to share
        cid = f"campaign--{stix_uuid(key, 'campaign', gkey)}"
        conf = round(100 * sum(g.scores) / len(g.scores))
        campaigns.append(
            CampaignIntel(
                cid,
                f"distillation campaign {cid[10:18]}",
                len(g.accounts),
                g.requests,
                _ms(g.first),
                _ms(g.last),
                conf,
            )
        )

        def add(
            kind: str,
            value: str,
            precision: float,
            accts: int,
            reqs: int,
            lo: float,
            hi: float,
            size: int | None = None,
            *,
            cid: str = cid,
            conf: int = conf,
        ) -> None:
            iid = f"indicator--{stix_uuid(key, 'indicator', cid, kind, value)}"
            confidence = round(conf * precision)
            indicators.append(
                IndicatorIntel(
                    iid, cid, kind, value, confidence, accts, reqs, _ms(lo), _ms(hi), size
                )
            )

        need = max(1, cfg.min_account_share * len(g.accounts))
        for (kind, h), (accts, reqs, lo, hi) in sorted(g.keys.items()):
            if len(accts) < need or reqs < cfg.min_requests:
                continue
            held = holders[(kind, h)]
            precision = len(held & flagged) / len(held)
            if precision < cfg.min_precision:
                dropped[kind] += 1
                continue
            add(kind, h, precision, len(accts), reqs, lo, hi)
        template = g.shingles.frequent(cfg.template_share, cfg.min_requests)
        if len(template) >= cfg.template_min_shingles:
            sig = encode_signature(hasher.signature(sorted(template)))
            add(
                KIND_TEMPLATE, sig, 1.0, len(g.accounts), g.requests, g.first, g.last, len(template)
            )
        profile, count = g.profiles.most_common(1)[0]
        if count >= cfg.profile_share * g.requests and profile.count("=") >= cfg.profile_min_params:
            users = [a for a, d in dominant.items() if d == profile]
            in_group = sum(1 for a in users if a in g.accounts)
            precision = sum(1 for a in users if a in flagged) / max(1, len(users))
            if in_group and precision >= cfg.min_precision:
                lo, hi = g.profile_times[profile]
                add(KIND_REQUEST_PARAMS, profile, precision, in_group, count, lo, hi)
            else:
                dropped[KIND_REQUEST_PARAMS] += 1
    intel = IntelSet(
        producer,
        producer_id(key, producer),
        key.key_id,
        tlp,
        _ms(created),
        tuple(campaigns),
        tuple(indicators),
    )
    return ExtractResult(intel, len(flagged), n, bad_ips, dict(dropped))


def _dominant(profiles: Counter[str], share: float) -> str | None:
    profile, count = profiles.most_common(1)[0]
    return profile if count >= share * sum(profiles.values()) else None


def _ms(ts: float) -> float:
    return round(ts, 3)
