"""Enforcement policy: a small YAML file mapping scores and signals to actions.

Rules are read top to bottom and the first whose conditions all hold decides. Actions and
their severity come from ``distillguard.actions`` (``allow < flag < ... < throttle < block``),
so that an account and its cluster can be given the more severe of two decisions. Every rule
has a name (the audit log's actor is ``policy:<name>``) and a lifetime: what a rule decides
expires after its ``ttl_s`` (or the policy's ``action_ttl_s``) unless the policy decides it
again on new evidence.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from distillguard.actions import ACTION_NAMES, SEVERITY, validate_params
from distillguard.errors import ConfigError, DistillGuardError, NotFound
from distillguard.monitor.signals import AccountSignals

ACTIONS = ACTION_NAMES
__all__ = ["ACTIONS", "SEVERITY", "Policy", "Rule", "load_policy", "parse_policy"]
SIGNAL_NAMES = tuple(AccountSignals.__dataclass_fields__)
DEFAULT_POLICY = "default_policy.yaml"


@dataclass(frozen=True)
class Rule:
    action: str
    score_at_least: float | None = None  # None: no score condition
    use_threshold: bool = False  # score_at_least is the model's operating point
    # With use_threshold: log-odds above the operating point ("threshold+4.6": the account's
    # p-value against honest accounts is e^4.6 = 100 times smaller than the bar's).
    threshold_margin: float = 0.0
    min_requests: int = 0
    cluster_size_at_least: int = 1
    signals: tuple[tuple[str, float], ...] = ()  # (signal name, lower bound)
    retry_after: float | None = None  # seconds a throttled client is told to wait
    name: str = ""  # the audit's actor is policy:<name>; "" -> rule<i>-<action> when parsed
    ttl_s: float | None = None  # lifetime of what this rule decides; None: the policy's
    params: tuple[tuple[str, object], ...] = ()  # the action's parameters (actions registry)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ConfigError(f"unknown policy action {self.action!r}; use one of {ACTIONS}")
        if self.ttl_s is not None and not 0 < self.ttl_s < float("inf"):
            raise ConfigError(f"policy rule {self.name!r}: ttl_s must be a positive number")
        if self.action != "allow":
            try:
                validate_params(self.action, dict(self.params))
            except DistillGuardError as exc:
                raise ConfigError(f"policy rule {self.name!r}: {exc.message}") from exc
        for name, _ in self.signals:
            if name not in SIGNAL_NAMES:
                raise ConfigError(f"unknown signal {name!r} in policy; use one of {SIGNAL_NAMES}")

    def matches(
        self,
        *,
        score: float,
        threshold: float,
        requests: int,
        cluster_size: int,
        signals: AccountSignals,
    ) -> bool:
        if self.use_threshold:
            if _logit(score) < _logit(threshold) + self.threshold_margin:
                return False
        elif self.score_at_least is not None and score < self.score_at_least:
            return False
        if requests < self.min_requests or cluster_size < self.cluster_size_at_least:
            return False
        return all(getattr(signals, n) >= v for n, v in self.signals)


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    default: str = "allow"
    min_requests: int = 20  # no action on thinner evidence (one-request accounts)
    throttle_rpm: int = 2  # requests per minute a throttled account keeps
    source: str = "built-in"
    # How long a policy action lasts unless its rule says: a day, so that a false positive
    # costs an honest app at most a day even if nobody looks, while a campaign that goes on
    # is decided again (on its new evidence) as soon as the action expires.
    action_ttl_s: float = 86_400.0

    def __post_init__(self) -> None:
        if self.default not in ACTIONS:
            raise ConfigError(f"unknown default action {self.default!r}")
        if self.min_requests < 1 or self.throttle_rpm < 0:
            raise ConfigError("policy min_requests must be >= 1 and throttle_rpm >= 0")
        if not 0 < self.action_ttl_s < float("inf"):
            raise ConfigError("policy action_ttl_s must be a positive number of seconds")

    def ttl_of(self, rule: Rule) -> float:
        """Seconds an action decided by ``rule`` lasts."""
        return rule.ttl_s if rule.ttl_s is not None else self.action_ttl_s

    def decide(
        self,
        *,
        score: float,
        threshold: float,
        requests: int,
        cluster_size: int,
        signals: AccountSignals,
    ) -> Rule | None:
        """The first matching rule, or None (the default action)."""
        if requests < self.min_requests:
            return None
        for rule in self.rules:
            if rule.matches(
                score=score,
                threshold=threshold,
                requests=requests,
                cluster_size=cluster_size,
                signals=signals,
            ):
                return rule
        return None


def _logit(p: float) -> float:
    p = min(1.0 - 1e-15, max(1e-15, p))
    return math.log(p / (1.0 - p))


_THRESHOLD = re.compile(r"^threshold(?:\s*\+\s*(\d+(?:\.\d+)?))?$")


def _rule(d: Any, i: int) -> Rule:
    if not isinstance(d, dict) or "action" not in d:
        raise ConfigError(f"policy rule {i + 1} must be a mapping with an 'action'")
    unknown_keys = set(d) - {"action", "when", "retry_after", "name", "ttl_s", "params"}
    if unknown_keys:
        raise ConfigError(f"policy rule {i + 1}: unknown keys {sorted(unknown_keys)}")
    params = d.get("params") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"policy rule {i + 1}: 'params' must be a mapping")
    when = d.get("when") or {}
    if not isinstance(when, dict):
        raise ConfigError(f"policy rule {i + 1}: 'when' must be a mapping")
    unknown = set(when) - {"score_at_least", "min_requests", "cluster_size_at_least", "signals"}
    if unknown:
        raise ConfigError(f"policy rule {i + 1}: unknown conditions {sorted(unknown)}")
    score = when.get("score_at_least")
    m = _THRESHOLD.match(score.strip()) if isinstance(score, str) else None
    use_threshold = m is not None
    margin = float(m.group(1)) if m is not None and m.group(1) else 0.0
    bad_score = not isinstance(score, int | float) or not 0 <= score <= 1
    if score is not None and not use_threshold and bad_score:
        raise ConfigError(
            f"policy rule {i + 1}: score_at_least must be in [0, 1], 'threshold' or "
            "'threshold+MARGIN' (log-odds above the model's operating point)"
        )
    sigs = when.get("signals") or {}
    if not isinstance(sigs, dict) or not all(isinstance(v, int | float) for v in sigs.values()):
        raise ConfigError(f"policy rule {i + 1}: signals must map names to numbers")
    try:
        return Rule(
            action=str(d["action"]),
            score_at_least=None if use_threshold or score is None else float(score),
            use_threshold=use_threshold,
            threshold_margin=margin,
            min_requests=int(when.get("min_requests", 0)),
            cluster_size_at_least=int(when.get("cluster_size_at_least", 1)),
            signals=tuple((str(k), float(v)) for k, v in sigs.items()),
            retry_after=None if d.get("retry_after") is None else float(d["retry_after"]),
            name=str(d.get("name") or f"rule{i + 1}-{d['action']}"),
            ttl_s=None if d.get("ttl_s") is None else float(d["ttl_s"]),
            params=tuple(sorted((str(k), v) for k, v in params.items())),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"policy rule {i + 1}: {exc}") from exc


def parse_policy(text: str, source: str = "<string>") -> Policy:
    try:
        d = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"policy {source} is not valid YAML: {exc}") from exc
    if not isinstance(d, dict) or not isinstance(d.get("rules"), list):
        raise ConfigError(f"policy {source} must be a mapping with a 'rules' list")
    unknown = set(d) - {"rules", "default", "min_requests", "throttle_rpm", "action_ttl_s"}
    if unknown:
        raise ConfigError(f"policy {source}: unknown keys {sorted(unknown)}")
    return Policy(
        rules=tuple(_rule(r, i) for i, r in enumerate(d["rules"])),
        default=str(d.get("default", "allow")),
        min_requests=int(d.get("min_requests", 20)),
        throttle_rpm=int(d.get("throttle_rpm", 2)),
        source=source,
        action_ttl_s=float(d.get("action_ttl_s", 86_400.0)),
    )


def load_policy(path: Path | None = None) -> Policy:
    """The YAML policy at ``path``, or the built-in default when ``path`` is None."""
    if path is None:
        text = resources.files("distillguard.monitor").joinpath(DEFAULT_POLICY).read_text()
        return parse_policy(text, "built-in")
    if not Path(path).exists():
        raise NotFound(f"policy file not found: {path}")
    return parse_policy(Path(path).read_text(), str(path))
