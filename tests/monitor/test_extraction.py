"""Apps are machines and legitimate; a coordinated chat harvest is caught without CoT.

Small synthetic traffic, scored end to end by the offline detector with the shipped model:
integrations with machine timing, temperature 0 and one template serving one domain are
not acted on; thirty young accounts on one proxy range sweeping every domain, with no
chain-of-thought request among them, are acted on as one coordinated cluster. Also: the
topic sketch, trust tiers and the accounts file.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from distillguard.errors import ConfigError, InputError
from distillguard.monitor.offline import score_records
from distillguard.monitor.topics import (
    TOPICS,
    TopicConfig,
    TopicSketch,
    prompt_topic,
    topic_breadth,
    topic_drift,
)
from distillguard.monitor.trust import AccountInfo, load_trust, parse_trust, read_accounts
from distillguard.traffic import TrafficRecord

# What people ask about, across domains (hand-written for this test).
PEOPLE = [
    "How do I fix this python function that returns None instead of the list?",
    "What are the symptoms of vitamin D deficiency and which treatment do doctors suggest?",
    "Can my landlord keep the deposit if the contract says nothing about cleaning?",
    "Should I invest in index fund stocks or pay down my mortgage first?",
    "Why did the Roman empire fall, and which century did the decline begin?",
    "Give me a recipe for a chicken dish with vegetables and a lemon sauce",
    "Plan a trip itinerary: three days in Lisbon, hotel near the beach",
    "Write a short poem about autumn for my grandmother's birthday",
    "Translate this sentence into Spanish: the meeting moved to Thursday",
    "What is the probability of rolling two sixes, and how do I calculate it?",
    "Explain how photosynthesis works in plant cells",
    "Which football team won the league the most times?",
    "My laptop wifi keeps dropping, how do I reset the network settings?",
    "Is it ethical to lie to protect a friend? A philosophy question",
    "How do I get my dog to stop barking at the cat?",
    "What should a student study first for the university entrance exam?",
    "Recommend a movie like Interstellar with a great music score",
    "Draft an email to a customer about a delayed product shipment",
]
TRANSLATION = "Translate the following customer review from German into English: {x}"
REVIEWS = [
    "Die Lieferung kam schnell und gut verpackt",
    "Das Produkt ist leider kaputt",
    "Sehr freundlicher Service, gerne wieder",
    "Die Farbe ist anders als im Bild",
]


def _rec(
    i: int,
    ts: float,
    acct: str,
    text: str,
    *,
    ip: str,
    ua: str,
    pay: str | None,
    system: str | None = None,
    **params,
) -> TrafficRecord:
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": text}
    ]
    return TrafficRecord(
        id=f"ex-{i}",
        ts=ts,
        account_id=acct,
        key_id=f"key-{acct}",
        ip=ip,
        endpoint="/v1/chat/completions",
        request={"model": "m", "messages": msgs, **params},
        status=200,
        user_agent=ua,
        payment_fingerprint=pay,
        response_text="an answer " * 30,
        completion_tokens=60,
    )


def _population(seed: int = 0) -> tuple[list[TrafficRecord], set[str], set[str], set[str]]:
    """(records in time order, people, apps, swarm)."""
    r = random.Random(seed)
    recs: list[tuple[float, str, dict]] = []
    t0 = 1_764_547_200.0
    people, apps, swarm = set(), set(), set()
    for p in range(120):
        acct = f"person-{p:03d}"
        people.add(acct)
        ip = f"{r.randint(24, 200)}.{r.randint(0, 255)}.{p}.{r.randint(1, 254)}"
        pay = f"pm_person_{p}"
        t = t0 + r.uniform(0, 86_400)
        for _ in range(r.randint(3, 25)):
            t += r.expovariate(1 / 1800)
            recs.append(
                (
                    t,
                    acct,
                    dict(
                        text=r.choice(PEOPLE),
                        ip=ip,
                        ua="openai-python/1.54.3",
                        pay=pay,
                        stream=True,
                    ),
                )
            )
    # Apps: one account each, a request every 60 s around the clock, temperature 0, one
    # template, one domain (a translation service; a support bot for a pet shop).
    for k, (make, system) in enumerate(
        [
            (lambda: TRANSLATION.format(x=r.choice(REVIEWS)), None),
            (
                lambda: (
                    f"Customer: my dog food order {r.randint(1000, 9999)} has not arrived, "
                    "where is my pet supply delivery?"
                ),
                "You are the support assistant of Umbrella Pet Supply. Be brief.",
            ),
        ]
    ):
        acct = f"app-{k}"
        apps.add(acct)
        for j in range(1500):
            recs.append(
                (
                    t0 + 60.0 * j + r.random(),
                    acct,
                    dict(
                        text=make(),
                        ip=f"3.5.{k}.10",
                        ua=f"PetShopBot-{k}/2.1",
                        pay=f"pm_app_{k}",
                        system=system,
                        temperature=0,
                    ),
                )
            )
    # A chat harvest without chain-of-thought: 30 young accounts on one proxy /24, two cards,
    # one agent, firing in waves, sweeping every domain with default parameters.
    for w in range(40):
        wave = t0 + 2_000.0 * w
        for i in range(30):
            acct = f"swarm-{i:02d}"
            swarm.add(acct)
            recs.append(
                (
                    wave + r.random() * 3,
                    acct,
                    dict(
                        text=r.choice(PEOPLE),
                        ip=f"45.77.12.{i + 1}",
                        ua="python-httpx/0.27.2",
                        pay=f"pm_swarm_{i % 2}",
                    ),
                )
            )
    recs.sort(key=lambda x: x[0])
    out = [_rec(i, ts, acct, **kw) for i, (ts, acct, kw) in enumerate(recs)]
    return out, people, apps, swarm


@pytest.fixture(scope="module")
def population() -> tuple[list[TrafficRecord], set[str], set[str], set[str]]:
    return _population()


def test_apps_are_not_acted_on_and_a_chat_swarm_is(population) -> None:
    records, people, apps, swarm = population
    infos = {a: AccountInfo(a, created_ts=records[0].ts - 86_400.0) for a in swarm}
    rep = score_records(records, accounts=infos)
    v = {x.account_id: x for x in rep.verdicts}
    assert not any(v[a].flagged for a in apps), [v[a] for a in apps]
    assert not any(v[a].flagged for a in people)
    assert all(v[a].flagged for a in swarm)
    assert len({v[a].cluster_id for a in swarm}) == 1
    why = " ".join(v["swarm-00"].reasons)
    assert "coordinated cluster of 30 accounts" in why and "broad content" in why
    assert "created at most" in why  # the accounts file says they are young
    assert not any("step-by-step" in r for r in v["swarm-00"].reasons)


def test_a_partner_tier_needs_more_evidence(population) -> None:
    records, _, _, swarm = population
    trust = parse_trust({"accounts": {a: "partner" for a in swarm}})
    rep = score_records(records, trust=trust)
    v = {x.account_id: x for x in rep.verdicts}
    # p-values of the swarm are far below 1e-3 * 1e-4: still coordinated, and the tier says so
    assert all(v[a].flagged for a in swarm)
    assert any("trust tier partner" in r for r in v["swarm-00"].reasons)


def test_single_domain_apps_are_narrow_and_a_sweep_is_broad() -> None:
    cfg = TopicConfig()
    app, sweep = TopicSketch(cfg), TopicSketch(cfg)
    for i in range(300):
        app.observe(prompt_topic(TRANSLATION.format(x=REVIEWS[i % 4]), cfg))
        sweep.observe(prompt_topic(PEOPLE[i % len(PEOPLE)], cfg))
    assert app.breadth() < 0.1 < 0.6 < sweep.breadth()
    # a few prompts on different topics are not yet "broad": shrunk toward one domain
    few = np.zeros(len(TOPICS))
    few[:4] = 1
    assert topic_breadth(few, cfg.prior_weight) < 0.5


def test_drift_from_the_accounts_own_history() -> None:
    cfg = TopicConfig(history=64, half_life=64)
    steady, turned = TopicSketch(cfg), TopicSketch(cfg)
    for i in range(600):
        steady.observe(prompt_topic(TRANSLATION.format(x=REVIEWS[i % 4]), cfg))
        text = TRANSLATION.format(x=REVIEWS[i % 4]) if i < 300 else PEOPLE[i % len(PEOPLE)]
        turned.observe(prompt_topic(text, cfg))
    assert steady.drift() < 0.05 < 0.3 < turned.drift()
    a = np.ones(len(TOPICS))
    assert topic_drift(a, a, 1.0) == pytest.approx(0.0, abs=1e-12)


def test_trust_files_and_accounts_file_errors(tmp_path: Path) -> None:
    good = tmp_path / "trust.yaml"
    good.write_text("tiers: {standard: 0, partner: 3}\norgs: {org-1: partner}\n")
    t = load_trust(good)
    assert t.offset("a", AccountInfo("a", org_id="org-1")) == 3
    assert t.offset("b", AccountInfo("b", verification="enterprise")) == 0  # no mapping given
    with pytest.raises(ConfigError, match="unknown trust tier"):
        parse_trust({"accounts": {"a": "gold"}})
    with pytest.raises(ConfigError, match="unknown keys"):
        parse_trust({"tier": {}})
    with pytest.raises(ConfigError, match="not found"):
        load_trust(tmp_path / "missing.yaml")
    acc = tmp_path / "accounts.jsonl"
    acc.write_text(
        json.dumps({"account_id": "a", "created_ts": 1.0, "verification": "org"})
        + "\n"
        + json.dumps({"account_id": "b", "verification": "gold"})
        + "\n"
    )
    with pytest.raises(InputError, match="line 2"):
        read_accounts(acc)


def test_a_verified_organizations_linked_members_are_not_a_campaign(population) -> None:
    """The same 30 linked accounts, declared as members of one verified organization (a
    course cohort on the university's network): the organization explains the links."""
    records, _, _, swarm = population
    infos = {
        a: AccountInfo(
            a, created_ts=records[0].ts - 40 * 86_400.0, org_id="org-uni", verification="org"
        )
        for a in swarm
    }
    v = {x.account_id: x for x in score_records(records, accounts=infos).verdicts}
    assert not any(v[a].flagged for a in swarm)
    assert len({v[a].cluster_id for a in swarm}) == 1  # still linked: only not acted on


def test_reasoning_access_makes_step_by_step_requests_no_evidence() -> None:
    """A tutoring app that asks for worked solutions is flagged as a CoT harvest unless its
    verified tier grants reasoning access."""
    r = random.Random(5)
    recs = [
        _rec(
            j,
            1_764_547_200.0 + 60.0 * j,
            "tutor",
            f"Explain step by step how to solve: {r.randint(2, 99)} x + {r.randint(2, 99)}"
            f" = {r.randint(100, 999)}. Show your work for the student.",
            ip="3.9.9.9",
            ua="TutorApp/1.0",
            pay="pm_tutor",
            temperature=0,
        )
        for j in range(800)
    ]
    plain = {x.account_id: x for x in score_records(recs).verdicts}["tutor"]
    assert plain.flagged and any("step-by-step" in w for w in plain.reasons)
    infos = {"tutor": AccountInfo("tutor", org_id="org-school", verification="org")}
    tiered = {x.account_id: x for x in score_records(recs, accounts=infos).verdicts}["tutor"]
    assert not tiered.flagged and tiered.score < plain.score
