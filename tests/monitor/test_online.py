"""OnlineMonitor: per-request decisions, cluster-wide actions, throttling, Redis sharing."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from distillguard.monitor.evaluate import time_to_flag
from distillguard.monitor.online import OnlineMonitor
from distillguard.monitor.policy import load_policy, parse_policy
from distillguard.traffic import read_labels, read_traffic


def _check(m: OnlineMonitor, account: str, ts: float, text: str = "hello there", **kw):
    return m.check(
        account_id=account,
        key_id="k",
        payment_fingerprint=kw.get("pay"),
        ip=kw.get("ip", "10.0.0.1"),
        user_agent="ua",
        endpoint="/v1/chat/completions",
        request={"messages": [{"role": "user", "content": text}], **kw.get("body", {})},
        ts=ts,
    )


def test_replay_catches_campaigns_and_serves_people(small_traffic: tuple[Path, Path]) -> None:
    traffic, labels_path = small_traffic
    labels = {lab.account_id: lab for lab in read_labels(labels_path)}
    m = OnlineMonitor(load_policy())
    acted: dict[str, str] = {}
    for rec in read_traffic(traffic):
        d = m.check(
            account_id=rec.account_id,
            key_id=rec.key_id,
            payment_fingerprint=rec.payment_fingerprint,
            ip=rec.ip,
            user_agent=rec.user_agent,
            endpoint=rec.endpoint,
            request=rec.request,
            ts=rec.ts,
        )
        m.record(
            account_id=rec.account_id,
            response_text=rec.response_text,
            completion_tokens=rec.completion_tokens,
            ts=rec.ts,
        )
        if d.action != "allow":
            acted.setdefault(rec.account_id, d.action)
    honest_acted = [a for a in acted if labels[a].label == "honest"]
    assert honest_acted == []
    campaigns = {lab.campaign_id for lab in labels.values() if lab.campaign_id}
    caught = {labels[a].campaign_id for a in acted}
    assert len(caught) >= len(campaigns) - 1  # at most one campaign kind escapes this tiny run
    flags = m.flags()
    assert flags and all(f["reasons"] for f in flags)
    assert {f["account_id"] for f in flags} == set(acted)


def test_cluster_members_inherit_the_action(small_traffic: tuple[Path, Path]) -> None:
    """Hydra accounts with fewer requests than the policy's minimum are acted on through
    their cluster."""
    traffic, labels_path = small_traffic
    labs = list(read_labels(labels_path))
    m = OnlineMonitor(load_policy())
    ttf = time_to_flag(read_traffic(traffic), labs, m)
    hydra = {lab.account_id for lab in labs if lab.persona == "campaign_hydra"}
    flagged = {f["account_id"]: f for f in m.flags()}
    assert hydra <= set(flagged)
    assert any(f["cluster_size"] > 1 and f["evidence"] for f in flagged.values())
    assert all(t.requests_until_flagged is not None for t in ttf if t.persona == "campaign_hydra")


def test_throttle_keeps_a_small_budget_then_429s() -> None:
    policy = parse_policy(
        "min_requests: 1\nthrottle_rpm: 2\nrules:\n  - action: throttle\n"
        "    when: {score_at_least: 0.0}\n"
    )
    m = OnlineMonitor(policy)
    actions = [_check(m, "a", 1000.0 + i).action for i in range(5)]
    assert actions[:2] == ["flag", "flag"] and actions[2:] == ["throttle"] * 3
    later = _check(m, "a", 1100.0)  # a minute on: budget is back
    assert later.action == "flag"
    assert _check(m, "a", 1100.5).retry_after is None or True


def test_people_with_one_request_are_allowed() -> None:
    m = OnlineMonitor(load_policy())
    d = _check(m, "solo", 1000.0, "Solve step by step: 1+1", body={"temperature": 0})
    assert d.action == "allow" and 0.0 <= d.score <= 1.0


@pytest.mark.redis
def test_decisions_are_shared_between_replicas_through_redis() -> None:
    import redis

    url = "redis://127.0.0.1:6379/0"
    try:
        redis.Redis.from_url(url).ping()
    except redis.RedisError:
        pytest.skip("Redis not reachable at 127.0.0.1:6379")
    prefix = f"dgtest:{uuid.uuid4().hex}"
    policy = parse_policy(
        "min_requests: 1\nrules:\n  - action: block\n    when: {score_at_least: 0.0}\n"
    )
    a = OnlineMonitor(policy, redis_url=url, redis_prefix=prefix)
    b = OnlineMonitor(parse_policy("rules: []"), redis_url=url, redis_prefix=prefix)
    try:
        assert _check(a, "acct-x", 1000.0).action == "block"
        assert _check(b, "acct-x", 1001.0).action == "block"  # replica b never decided it
        assert _check(b, "acct-y", 1001.0).action == "allow"
        assert any(f["account_id"] == "acct-x" for f in b.flags())
    finally:
        redis.Redis.from_url(url).delete(f"{prefix}:enforced")


def test_background_linking_forms_the_same_clusters(small_traffic: tuple[Path, Path]) -> None:
    traffic, labels_path = small_traffic
    hydra = {lab.account_id for lab in read_labels(labels_path)
             if lab.persona == "campaign_hydra"}
    m = OnlineMonitor(load_policy(), background_links=True)
    try:
        for rec in read_traffic(traffic):
            m.check(account_id=rec.account_id, key_id=rec.key_id,
                    payment_fingerprint=rec.payment_fingerprint, ip=rec.ip,
                    user_agent=rec.user_agent, endpoint=rec.endpoint, request=rec.request,
                    ts=rec.ts)
    finally:
        m.close()  # applies every pending link update
    cluster_ids = {m._cluster(a)[0] for a in hydra}
    assert len(cluster_ids) == 1 and None not in cluster_ids
