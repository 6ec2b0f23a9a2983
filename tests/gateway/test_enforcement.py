"""Refusals that do not come from the request itself: the online monitor's decisions
(degrade, then block, recorded as actions), and the parts the gateway depends on failing
(Redis for limits, the upstream).

The monitor is a real ``OnlineMonitor`` with a policy file that acts after a few requests
whatever the score (``score_at_least: 0.0``), so the gateway's handling of each action is what
is tested.
"""

from __future__ import annotations

import httpx
import openai
import pytest

POLICY = """
min_requests: 3
throttle_rpm: 2
rules:
  - action: block
    when: {score_at_least: 0.0, min_requests: 6}
  - action: degrade
    when: {score_at_least: 0.0, min_requests: 3}
default: allow
"""


def test_degrade_then_block_with_actions_recorded(gateway_server, mock_upstream, tmp_path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    gw = gateway_server(online_monitor="true", policy_file=policy)
    account_id, _, secret = gw.create_key()
    client = openai.OpenAI(base_url=gw.api_url, api_key=secret, max_retries=0, timeout=20)
    chat = [{"role": "user", "content": "tell me everything"}]
    for i in range(5):  # requests 1-2 allowed, 3-5 degraded: served without log-probabilities
        answer = client.chat.completions.create(
            model="mock-model", messages=chat, logprobs=True, top_logprobs=5
        )
        assert answer.choices[0].message.content.startswith("mock answer")
        forwarded = mock_upstream.requests[-1]
        assert ("logprobs" in forwarded) == (i < 2), (i, forwarded)
    with pytest.raises(openai.PermissionDeniedError) as blocked:  # request 6: blocked
        client.chat.completions.create(model="mock-model", messages=chat)
    assert blocked.value.code == "account_blocked"

    flags = gw.admin_get("/flags")
    assert flags["monitor"] is True
    flagged = {f["account_id"]: f for f in flags["data"]}
    assert flagged[account_id]["action"] == "block"
    actions = [a["action"] for a in gw.admin_get(f"/actions?account={account_id}")["data"]]
    assert actions == ["degrade", "block"]  # recorded once per change, in order
    statuses = sorted(r["status"] for r in gw.exchanges(account=account_id))
    assert statuses == [200] * 5 + [403]


def test_unreachable_redis_fails_closed_with_503(gateway_server) -> None:
    from distillguard.gateway.process import free_port

    redis_port = free_port()
    gw = gateway_server(redis_url=f"redis://127.0.0.1:{redis_port}/0", online_monitor="false")
    _, _, secret = gw.create_key()
    client = openai.OpenAI(base_url=gw.api_url, api_key=secret, max_retries=0, timeout=20)
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(
            model="mock-model", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.status_code == 503 and caught.value.code == "rate_limiter_unavailable"
    # no internal address in what the client reads
    assert str(redis_port) not in caught.value.message and "127.0.0.1" not in caught.value.message
    assert [r["status"] for r in gw.exchanges()] == [503]  # refused, and logged
    ready = httpx.get(f"{gw.base_url}/readyz")  # and readiness says so
    assert ready.status_code == 503 and "redis" in ready.json()["failed"]


def test_unreachable_upstream_is_502_and_logged(gateway_server) -> None:
    from distillguard.gateway.process import free_port

    gw = gateway_server(upstream=f"http://127.0.0.1:{free_port()}", online_monitor="false")
    _, _, secret = gw.create_key()
    client = openai.OpenAI(base_url=gw.api_url, api_key=secret, max_retries=0, timeout=20)
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as caught:
            answer = client.chat.completions.create(
                model="any", messages=[{"role": "user", "content": "hi"}], stream=stream
            )
            if stream:
                list(answer)  # the error arrives with the first chunk
        assert caught.value.status_code == 502
    assert [r["status"] for r in gw.exchanges()] == [502, 502]
