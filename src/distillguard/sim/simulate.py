"""Offline simulation: build the population, merge every actor's arrivals in time order, and
stream the exchanges to a traffic log (spec §1) with the ground truth in a labels file (§2).

Memory stays bounded by the arrival plans (8 bytes per exchange and a few per account), never
by the log: records are made one at a time and written as they come, so millions of exchanges
stream to disk at tens of thousands per second.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distillguard.errors import InputError
from distillguard.sim.personas import (
    CAMPAIGN_ACTORS,
    HONEST_ACTORS,
    Actor,
    Mimic,
    Network,
    SimAccount,
)
from distillguard.sim.prompts import SPLITS, PromptSets, load_prompt_sets
from distillguard.traffic import JsonlWriter, LabelRecord, TrafficRecord

# Midnight UTC of 2025-11-24: simulated traffic starts here (any fixed day works).
EPOCH = 1_763_942_400.0


@dataclass(frozen=True)
class SimConfig:
    """One simulated population; every field has a default that gives a realistic mix."""

    accounts: int = 1000  # honest accounts (people and apps); campaigns add their own
    campaigns: int = 20  # campaigns, spread round-robin over the campaign personas
    seed: int = 0  # same seed + same data -> byte-identical output
    split: str = "train"  # which half of the prompt sets and template banks to draw from
    days: int = 7  # simulated window; diurnal signals need at least a few days
    # Honest mix: apps are few but each sends thousands of requests (5 % of accounts).
    power_share: float = 0.15
    app_share: float = 0.05
    org_share: float = 0.04  # honest accounts sharing one payment method with colleagues
    error_rate: float = 0.005  # share of exchanges that failed upstream (status 500)
    response_chars: int = 1200  # answers are cut here to keep million-exchange logs small
    # Stress case, off by default: campaigns that copy people's timing and parameters (see
    # personas.Mimic). Added after everything else, so the rest of the population is unchanged.
    mimic_campaigns: int = 0

    def __post_init__(self) -> None:
        if self.accounts < 0 or self.campaigns < 0 or self.accounts + self.campaigns == 0:
            raise InputError("need at least one honest account or one campaign")
        if self.split not in SPLITS:
            raise InputError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.mimic_campaigns < 0:
            raise InputError("mimic_campaigns must be >= 0")
        if self.days < 1:
            raise InputError("days must be at least 1")
        for name in ("power_share", "app_share", "org_share", "error_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"{name} must be within [0, 1]")
        if self.power_share + self.app_share > 1.0:
            raise InputError("power_share + app_share must not exceed 1")


@dataclass(frozen=True)
class SimResult:
    exchanges: int
    accounts: int
    campaign_accounts: int
    personas: dict[str, int]  # accounts per persona


def build_population(config: SimConfig, sets: PromptSets) -> list[Actor]:
    """Every actor of the run, honest first, deterministic in ``config.seed``."""
    r = random.Random(config.seed)
    net = Network(random.Random(r.getrandbits(64)))
    actors: list[Actor] = []
    n_apps = max(2, round(config.accounts * config.app_share)) if config.accounts >= 20 else 0
    n_power = round(config.accounts * config.power_share)
    kinds = (["app_support_bot", "app_summarizer"] * n_apps)[:n_apps] + ["power_user"] * n_power
    kinds += ["casual"] * max(0, config.accounts - len(kinds))
    for kind in kinds:
        actors.append(
            HONEST_ACTORS[kind](random.Random(r.getrandbits(64)), sets, net, EPOCH, config.days)
        )
    people = [a.accounts[0] for a in actors if a.persona in ("casual", "power_user")]
    for _ in range(round(len(people) * config.org_share / 3)):  # orgs of 2-4 colleagues
        members = r.sample(people, min(len(people), r.randint(2, 4)))
        card = members[0].payment or f"pm_org{r.getrandbits(48):012x}"
        for m in members:
            m.payment = card
    names = list(CAMPAIGN_ACTORS)
    for i in range(config.campaigns):
        cls = CAMPAIGN_ACTORS[names[i % len(names)]]
        cid = f"campaign-{config.split}-{config.seed}-{i:03d}"
        actors.append(cls(random.Random(r.getrandbits(64)), sets, net, EPOCH, config.days, cid))
    rm = random.Random(config.seed ^ 0x4D1C)  # own stream: the population above is unchanged
    for i in range(config.mimic_campaigns):
        cid = f"campaign-{config.split}-{config.seed}-mimic{i:03d}"
        actors.append(Mimic(random.Random(rm.getrandbits(64)), sets, net, EPOCH, config.days, cid))
    return actors


def labels_of(actors: list[Actor]) -> Iterator[LabelRecord]:
    for actor in actors:
        for a in actor.accounts:
            yield LabelRecord(a.account_id, a.label, a.campaign_id, a.persona)


def _arrivals(actors: list[Actor]) -> Iterator[tuple[float, int, int]]:
    """(ts, actor index, account index) over all actors, in time order."""

    def one(i: int, actor: Actor) -> Iterator[tuple[float, int, int]]:
        t, owner = actor.plan()
        for ts, acct in zip(t.tolist(), owner.tolist(), strict=True):
            yield ts, i, acct

    return heapq.merge(*(one(i, a) for i, a in enumerate(actors)))


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))  # ~4 characters a token for English BPE


def make_record(
    actor: Actor,
    account: SimAccount,
    ts: float,
    seq: int,
    body: dict[str, Any],
    answer: str,
    r: random.Random,
    config: SimConfig,
) -> TrafficRecord:
    """One exchange as the gateway would log it."""
    from distillguard.traffic import prompt_text

    failed = r.random() < config.error_rate
    max_tokens = body.get("max_tokens") or 4096
    completion = min(_tokens(answer), max_tokens)
    answer = answer[: min(config.response_chars, max_tokens * 4)]
    return TrafficRecord(
        id=f"ex-{config.seed}-{seq:09d}",
        ts=round(ts, 3),
        account_id=account.account_id,
        key_id=account.key_id,
        ip=account.ips[0] if len(account.ips) == 1 else r.choice(account.ips),
        endpoint="/v1/completions" if "prompt" in body else "/v1/chat/completions",
        request=body,
        status=500 if failed else 200,
        user_agent=account.user_agent,
        payment_fingerprint=account.payment,
        response_text=None if failed else answer,
        prompt_tokens=_tokens(prompt_text(body)),
        completion_tokens=None if failed else completion,
        latency_ms=round(40.0 + completion * r.uniform(6.0, 10.0), 1),
    )


def iter_exchanges(config: SimConfig, actors: list[Actor]) -> Iterator[TrafficRecord]:
    r = random.Random(config.seed ^ 0x5EED)
    for seq, (ts, i, acct) in enumerate(_arrivals(actors)):
        actor = actors[i]
        body, answer = actor.request(acct)
        yield make_record(actor, actor.accounts[acct], ts, seq, body, answer, r, config)


def simulate(
    config: SimConfig,
    *,
    data_dir: Path,
    out: Path,
    labels: Path,
    progress: Callable[[int], None] | None = None,
) -> SimResult:
    """Write the traffic log and labels of ``config``; returns counts."""
    sets = load_prompt_sets(data_dir, config.split)
    actors = build_population(config, sets)
    with JsonlWriter(labels) as lw:
        for lab in labels_of(actors):
            lw.write(lab)
    n = 0
    with JsonlWriter(out) as w:
        for rec in iter_exchanges(config, actors):
            w.write(rec)
            n += 1
            if progress is not None and n % 10_000 == 0:
                progress(10_000)
    personas: dict[str, int] = {}
    for a in actors:
        personas[a.persona] = personas.get(a.persona, 0) + len(a.accounts)
    accounts = sum(len(a.accounts) for a in actors)
    campaign_accounts = sum(len(a.accounts) for a in actors if a.label == "campaign")
    return SimResult(n, accounts, campaign_accounts, personas)


def arrival_counts(actors: list[Actor]) -> np.ndarray:
    """Planned requests per actor (for sizing runs before writing them)."""
    return np.array([len(a.plan()[0]) for a in actors])
