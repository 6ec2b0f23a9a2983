"""What the provider knows about an account: the accounts file (spec 1b) and trust tiers.

Providers gate reasoning access by verification, and an organization that signed a contract
and declared its use case is accountable in ways an anonymous card is not. A provider-supplied
allow-list (YAML or JSON) maps accounts, organizations and verification levels to tiers; a
tier is a number of log-odds of evidence the detector must find *in addition* before it acts
(its content score is lowered by the offset, and a coordinated cluster must be 10^offset times
less likely by chance). Nothing here exempts anyone outright: a trusted account that harvests
hard enough is still flagged.

    tiers:            # tier -> extra log-odds of evidence required
      standard: 0
      verified: 2.0
      partner: 4.0
    verification:     # accounts file "verification" -> tier
      org: verified
      enterprise: partner
    orgs: {org-42: partner}
    accounts: {acct-1: verified}
    young_days: 14    # accounts younger than this when first seen are "young" (a reason)
    reasoning_tiers: [verified, partner]   # chain-of-thought is allowed, not evidence
    sampling_tiers: [verified, partner]    # n>1 / logprobs are allowed, not evidence
    use_grants:       # declared use (substring) -> score features it explains, for the
      translat: [language_breadth]         # reasoning tiers only (an accountable org's
      evaluat: [harvest_share, cot_share, broad_rate, topic_drift,   # declared purpose)
                model_jump]
    org_verification: [org, enterprise]    # a majority of one such org explains a cluster

The accounts file is optional: without it tiers come from ``accounts``/``orgs`` only and
account age is unknown.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distillguard.errors import ConfigError, InputError
from distillguard.traffic import JsonlReader

VERIFICATION = ("none", "email", "org", "enterprise")
DEFAULT_TIERS = {"standard": 0.0, "verified": 2.0, "partner": 4.0}
DEFAULT_VERIFICATION = {
    "none": "standard",
    "email": "standard",
    "org": "verified",
    "enterprise": "partner",
}


@dataclass(frozen=True)
class AccountInfo:
    """One line of the accounts file (spec section 1b)."""

    account_id: str
    created_ts: float | None = None
    org_id: str | None = None
    verification: str = "none"
    declared_use: str | None = None


@dataclass(frozen=True)
class TrustPolicy:
    """Tiers and who is in them (provider-supplied)."""

    tiers: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TIERS))
    verification: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_VERIFICATION))
    orgs: dict[str, str] = field(default_factory=dict)
    accounts: dict[str, str] = field(default_factory=dict)
    young_days: float = 14.0  # an account this new when it starts sending is "young"
    # Tiers granted reasoning access: providers gate chain-of-thought by verification, so for
    # these accounts asking for step-by-step reasoning is the product working, not evidence.
    reasoning_tiers: frozenset[str] = frozenset({"verified", "partner"})
    # Verification levels whose org_id explains links: members of one verified organization
    # share an office range, a card and an SDK by design (a course cohort, a team).
    org_verification: frozenset[str] = frozenset({"org", "enterprise"})
    # Tiers granted n>1 and logprobs: providers gate them like reasoning (they reveal the
    # distribution a student is trained on), and a verified org's classifier (confidences)
    # or evaluation (pass@k, log-likelihood scoring) uses them as the product.
    sampling_tiers: frozenset[str] = frozenset({"verified", "partner"})
    # What an accountable organization's declared use explains (only for reasoning tiers:
    # a declared use is self-reported, a verified org answers for it): a translation service
    # extracts in many languages, a team evaluating the model sweeps public benchmarks.
    use_grants: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {
            "translat": ("language_breadth",),
            # a team evaluating the model runs each new model, and new kinds of evaluation
            "evaluat": (
                "harvest_share",
                "cot_share",
                "broad_rate",
                "topic_drift",
                "model_jump",
            ),
        }
    )

    def __post_init__(self) -> None:
        for name, off in self.tiers.items():
            if not isinstance(off, int | float) or off < 0 or math.isnan(off):
                raise ConfigError(f"trust tier {name!r} needs a log-odds offset >= 0")
        for where in (self.verification, self.orgs, self.accounts):
            for who, tier in where.items():
                if tier not in self.tiers:
                    raise ConfigError(f"{who!r} is given unknown trust tier {tier!r}")
        for name in ("reasoning_tiers", "sampling_tiers"):
            unknown = set(getattr(self, name)) - set(self.tiers)
            if unknown:
                raise ConfigError(f"{name} names unknown tiers {sorted(unknown)}")
        from distillguard.monitor.score import SCORE_FEATURES

        for key, names in self.use_grants.items():
            bad = set(names) - set(SCORE_FEATURES)
            if bad:
                raise ConfigError(f"use_grants[{key!r}] names unknown features {sorted(bad)}")
        if self.young_days < 0:
            raise ConfigError("young_days must be >= 0")

    def tier_of(self, account_id: str, info: AccountInfo | None) -> str:
        """The most trusted tier any source gives the account (explicit entries first)."""
        candidates = []
        if account_id in self.accounts:
            candidates.append(self.accounts[account_id])
        if info is not None:
            if info.org_id and info.org_id in self.orgs:
                candidates.append(self.orgs[info.org_id])
            if info.verification in self.verification:
                candidates.append(self.verification[info.verification])
        if not candidates:
            return min(self.tiers, key=lambda t: self.tiers[t])
        return max(candidates, key=lambda t: self.tiers[t])

    def offset(self, account_id: str, info: AccountInfo | None) -> float:
        return self.tiers[self.tier_of(account_id, info)]

    def reasoning_access(self, account_id: str, info: AccountInfo | None) -> bool:
        return self.tier_of(account_id, info) in self.reasoning_tiers

    def granted(self, account_id: str, info: AccountInfo | None) -> tuple[str, ...]:
        """Score features the account's tier grants access to (not counted as evidence)."""
        tier = self.tier_of(account_id, info)
        out = []
        if tier in self.reasoning_tiers:
            out.append("cot_share")
        if tier in self.sampling_tiers:
            out.append("harvest_share")
        use = (info.declared_use or "").lower() if info is not None else ""
        if use and tier in self.reasoning_tiers:
            for key, names in self.use_grants.items():
                if key in use:
                    out += [n for n in names if n not in out]
        return tuple(out)

    def explaining_org(
        self, members: Iterable[str], accounts: dict[str, AccountInfo] | None
    ) -> str | None:
        """The verified organization(s) a majority of a cluster's members belong to: their
        links are the organizations, not a coordinated campaign. Several verified orgs
        together count (two courses of one university share its NAT and card and link into
        one cluster, neither holding a majority alone); the largest is named, with a "+"
        when others are needed for the majority."""
        if not accounts:
            return None
        members = list(members)
        orgs = [
            i.org_id
            for m in members
            if (i := accounts.get(m)) is not None
            and i.org_id
            and i.verification in self.org_verification
        ]
        if not orgs:
            return None
        if len(orgs) * 2 <= len(members):
            return None
        top = max(sorted(set(orgs)), key=orgs.count)
        return top if orgs.count(top) * 2 > len(members) else f"{top}+"


def parse_trust(data: dict[str, Any], source: str = "trust policy") -> TrustPolicy:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    known = {
        "tiers",
        "verification",
        "orgs",
        "accounts",
        "young_days",
        "reasoning_tiers",
        "sampling_tiers",
        "org_verification",
        "use_grants",
    }
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{source}: unknown keys {sorted(unknown)} (known: {sorted(known)})")
    kw: dict[str, Any] = {}
    for key in ("tiers", "verification", "orgs", "accounts"):
        if key in data:
            if not isinstance(data[key], dict):
                raise ConfigError(f"{source}: {key} must be a mapping")
            kw[key] = {str(k): v for k, v in data[key].items()}
    if "tiers" in kw and "verification" not in kw:
        kw["verification"] = {}
    if "tiers" in kw and "reasoning_tiers" not in data:
        kw["reasoning_tiers"] = frozenset({"verified", "partner"}) & set(kw["tiers"])
    if "tiers" in kw and "sampling_tiers" not in data:
        kw["sampling_tiers"] = frozenset({"verified", "partner"}) & set(kw["tiers"])
    if "use_grants" in data:
        grants = data["use_grants"]
        if not isinstance(grants, dict) or not all(isinstance(v, list) for v in grants.values()):
            raise ConfigError(f"{source}: use_grants must map declared-use words to lists")
        kw["use_grants"] = {str(k).lower(): tuple(map(str, v)) for k, v in grants.items()}
    for key in ("reasoning_tiers", "sampling_tiers", "org_verification"):
        if key in data:
            if not isinstance(data[key], list):
                raise ConfigError(f"{source}: {key} must be a list")
            kw[key] = frozenset(str(x) for x in data[key])
    if "young_days" in data:
        kw["young_days"] = float(data["young_days"])
    try:
        return TrustPolicy(**kw)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def load_trust(path: Path | None) -> TrustPolicy:
    """A trust policy file (YAML or JSON); the defaults when ``path`` is None."""
    if path is None:
        return TrustPolicy()
    try:
        text = Path(path).read_text()
    except FileNotFoundError as exc:
        raise ConfigError(f"trust policy not found: {path}") from exc
    try:
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"trust policy {path} is not valid: {exc}") from exc
    return parse_trust(data or {}, str(path))


def creation_keys(
    accounts: dict[str, AccountInfo], first_ts: dict[str, float], young_days: float
) -> dict[str, frozenset[str]]:
    """Link keys of account-creation bursts: the creation day of each account that was young
    (at most ``young_days`` old) when it sent its first request; older accounts get none."""
    out = {}
    for acct, t in first_ts.items():
        info = accounts.get(acct)
        if info is None or info.created_ts is None or not math.isfinite(t):
            continue
        if (t - info.created_ts) / 86_400.0 <= young_days:
            out[acct] = frozenset({f"day:{int(info.created_ts // 86_400)}"})
    return out


def _account_info(d: dict[str, Any]) -> AccountInfo:
    acct = d.get("account_id")
    if not isinstance(acct, str) or not acct:
        raise ValueError("account_id must be a non-empty string")
    created = d.get("created_ts")
    if created is not None and not isinstance(created, int | float):
        raise ValueError("created_ts must be a number")
    ver = d.get("verification") or "none"
    if ver not in VERIFICATION:
        raise ValueError(f"verification must be one of {VERIFICATION}")
    return AccountInfo(
        acct,
        None if created is None else float(created),
        d.get("org_id"),
        ver,
        d.get("declared_use"),
    )


def read_accounts(path: Path) -> dict[str, AccountInfo]:
    """The accounts file (JSON Lines) through the one JSONL reader; it must be clean: a
    malformed line is an InputError naming its number and why."""
    if not Path(path).is_file():
        raise InputError(f"accounts file not found: {path}")
    reader = JsonlReader(path, _account_info)
    out = {info.account_id: info for info in reader}
    reader.summary().raise_if_skipped()
    return out
