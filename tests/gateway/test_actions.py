"""Reversible, audited enforcement through real gateway processes and the openai SDK.

- issue #16 item 5's attack: an honest app framed through a forged client IP is blocked with
  the harvester that copied its prefix and frame; an admin lifts its block with a reason and
  it is served again, not re-blocked on the same evidence (the harvester stays blocked);
- a block survives a SIGKILL restart, with and without Redis;
- two replicas: an action applied on one is enforced by the other, a lift reaches it within
  seconds, an expired action is gone on it without any message;
- bad input to the actions API is a clear 4xx in OpenAI's error shape;
- failed admin logins are audited (never the token) and rate-limited per IP (429 +
  Retry-After), other IPs unaffected.
"""

from __future__ import annotations

import http.client
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import openai
import orjson
import pytest
from typer.testing import CliRunner

from distillguard.cli import app as cli_app

REDIS_URL = "redis://127.0.0.1:6379/0"
LINKED_POLICY = """
min_requests: 1
rules:
  - action: block
    name: linked-cluster
    when: {cluster_size_at_least: 2}
"""
QUESTIONS = [
    "where is my order",
    "how do I reset my password",
    "can I change my plan",
    "why was I charged twice",
    "how do I cancel",
    "is there a student discount",
    "my app crashes on start",
    "how do I export my data",
]


def _frame(question: str) -> list[dict[str, str]]:
    text = (
        "You are SupportBot for Acme Corp. Answer the customer question below politely and "
        f"briefly. Question: {question}. Reply in under fifty words and never mention "
        "competitors."
    )
    return [{"role": "user", "content": text}]


def _client(gw, secret: str, forwarded_for: str | None = None) -> openai.OpenAI:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else None
    return openai.OpenAI(
        base_url=gw.api_url, api_key=secret, max_retries=0, timeout=20, default_headers=headers
    )


def _served(client: openai.OpenAI) -> bool:
    """True when a request is answered, False when refused by enforcement (403)."""
    try:
        client.chat.completions.create(model="mock-model", messages=_frame("ping"))
    except openai.PermissionDeniedError as exc:
        assert exc.code == "account_blocked"
        return False
    return True


def _eventually(check: Callable[[], bool], within: float = 15.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


def _redis_or_skip() -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=1).ping()
    except redis.RedisError:
        pytest.skip("Redis not reachable at 127.0.0.1:6379")


def _call(
    gw,
    method: str,
    path: str,
    body: object = None,
    *,
    token: str | None = None,
    source: str = "127.0.0.1",
) -> tuple[int, dict[str, str], object]:
    """One admin call from a chosen loopback source address: (status, headers, JSON)."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10, source_address=(source, 0))
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(
            method, path, body=None if body is None else orjson.dumps(body), headers=headers
        )
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, orjson.loads(raw)
    finally:
        conn.close()


# --- the framing attack ---------------------------------------------------------------------


def test_a_framed_app_is_lifted_served_again_and_not_reblocked(gateway_server, tmp_path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(LINKED_POLICY)
    # The gateway trusts loopback as its reverse proxy, so X-Forwarded-For names the client
    # (a deployment behind a load balancer); the harvester forges a header in the honest
    # app's /24 and copies its prompt frame.
    gw = gateway_server(online_monitor="true", policy_file=policy, trusted_proxies="127.0.0.1/32")
    honest_id, _, honest_secret = gw.create_key("support-bot")
    harvester_id, _, harvester_secret = gw.create_key("harvester")
    honest = _client(gw, honest_secret, "198.51.100.10")
    harvester = _client(gw, harvester_secret, "198.51.100.77")
    framed = False
    for i in range(40):
        for client, shift in ((harvester, 3), (honest, 0)):
            try:
                client.chat.completions.create(
                    model="mock-model", messages=_frame(QUESTIONS[(i + shift) % 8])
                )
            except openai.PermissionDeniedError:
                framed = framed or client is honest
        if framed:
            break
    assert framed, "the harvester never got the honest app linked and blocked"
    assert "reason" not in _refusal_text(honest) and "linked" not in _refusal_text(honest)

    (block,) = gw.admin_get(f"/actions?account={honest_id}&state=active")["data"]
    assert block["action"] == "block" and block["actor"] == "policy:linked-cluster"
    assert block["evidence"]["cluster_size"] == 2 and block["evidence_fingerprint"]
    lifted = gw.admin_post(
        f"/actions/{block['id']}/lift", {"reason": "framed through a forged X-Forwarded-For"}
    )
    assert lifted["state"] == "lifted" and lifted["lifted_by"] == "admin:admin"

    # Served again, and the policy, which still sees the same cluster, does not re-block.
    for i in range(12):
        answer = honest.chat.completions.create(
            model="mock-model", messages=_frame(QUESTIONS[i % 8])
        )
        assert answer.choices[0].message.content.startswith("mock answer")
    assert not _served(harvester)
    assert gw.admin_get(f"/actions?account={honest_id}&state=active")["data"] == []
    audit = gw.admin_get(f"/audit?account={honest_id}")["data"]
    assert [(e["event"], e["actor"]) for e in audit if e["event"].startswith("action.")] == [
        ("action.apply", "policy:linked-cluster"),
        ("action.lift", "admin:admin"),
    ]
    assert audit[-1]["reason"] == "framed through a forged X-Forwarded-For"
    assert any(
        a["account_id"] == harvester_id for a in gw.admin_get("/actions?state=active")["data"]
    )


def _refusal_text(client: openai.OpenAI) -> str:
    try:
        client.chat.completions.create(model="mock-model", messages=_frame("ping"))
    except openai.PermissionDeniedError as exc:
        return str(exc.message)
    return ""


# --- one source of truth --------------------------------------------------------------------


@pytest.mark.parametrize("with_redis", [False, pytest.param(True, marks=pytest.mark.redis)])
def test_a_block_survives_a_restart(gateway_server, with_redis: bool) -> None:
    if with_redis:
        _redis_or_skip()
    gw = gateway_server(online_monitor="false", **({"redis_url": REDIS_URL} if with_redis else {}))
    account_id, key_id, secret = gw.create_key()
    client = _client(gw, secret)
    assert _served(client)
    action = gw.admin_post(
        "/actions",
        {"account": account_id, "action": "block", "reason": "abuse report #12", "ttl_s": 600},
    )
    assert action["state"] == "active" and not _served(client)
    gw.kill()  # SIGKILL: nothing is flushed, no shutdown hook runs
    gw.start()
    assert not _served(client)
    gw.admin_post(f"/actions/{action['id']}/lift", {"reason": "resolved with the customer"})
    assert _served(client)
    events = [
        (e["event"], e["actor"]) for e in gw.admin_get(f"/audit?account={account_id}")["data"]
    ]
    assert events == [
        ("account.create", "admin:admin"),
        ("key.create", "admin:admin"),
        ("action.apply", "admin:admin"),
        ("action.lift", "admin:admin"),
    ]
    assert key_id in {e["target"] for e in gw.admin_get("/audit?event=key.create")["data"]}


@pytest.mark.parametrize(
    ("db_url", "with_redis"),
    [
        ("sqlite", False),
        pytest.param("postgresql", True, marks=[pytest.mark.postgres, pytest.mark.redis]),
    ],
    indirect=["db_url"],
)
def test_replicas_share_actions_lifts_and_expiries(
    gateway_server, db_url: str, with_redis: bool
) -> None:
    settings: dict[str, object] = {"online_monitor": "false", "database_url": db_url}
    if with_redis:
        _redis_or_skip()
        # A slow poll: only the Redis message can bring a lift to the other replica in seconds.
        settings.update(redis_url=REDIS_URL, enforcement_refresh_s=60)
    else:
        settings.update(enforcement_refresh_s=0.5)
    first, second = gateway_server(**settings), gateway_server(**settings)
    account_id, _, secret = first.create_key()
    on_first, on_second = _client(first, secret), _client(second, secret)

    block = first.admin_post(
        "/actions",
        {"account": account_id, "action": "block", "reason": "suspected harvest", "ttl_s": 600},
    )
    assert not _served(on_first)
    assert _eventually(lambda: not _served(on_second))
    first.admin_post(f"/actions/{block['id']}/lift", {"reason": "false positive"})
    assert _served(on_first)
    assert _eventually(lambda: _served(on_second))

    short = second.admin_post(
        "/actions", {"account": account_id, "action": "block", "reason": "cool-down", "ttl_s": 3}
    )
    assert _eventually(lambda: not _served(on_first))
    # Expiry needs no message: both replicas serve again once the action's time is up.
    assert _eventually(lambda: _served(on_first) and _served(on_second))
    states = {
        a["id"]: a["state"] for a in second.admin_get(f"/actions?account={account_id}")["data"]
    }
    assert states == {block["id"]: "lifted", short["id"]: "expired"}


# --- bad input ------------------------------------------------------------------------------


def test_bad_action_requests_are_clear_4xx(gateway_server) -> None:
    gw = gateway_server(online_monitor="false")
    account_id, _, _ = gw.create_key()
    token = gw.admin_token
    ok = {"account": account_id, "action": "flag", "reason": "review", "ttl_s": 60}
    cases = [
        ({**ok, "account": "nobody"}, 404, "account"),
        ({**ok, "ttl_s": 0}, 400, "ttl_s"),
        ({**ok, "ttl_s": -30}, 400, "ttl_s"),
        ({k: v for k, v in ok.items() if k != "reason"}, 400, "reason"),
        ({**ok, "reason": "  "}, 400, "reason"),
        ({**ok, "action": "nuke"}, 400, "action"),
        ({**ok, "action": "throttle", "params": {"rpm": "many"}}, 400, "params.rpm"),
        (
            {**ok, "action": "cap_logprobs", "params": {"top_logprobs": 99}},
            400,
            "params.top_logprobs",
        ),
        ({**ok, "colour": "red"}, 400, "colour"),
    ]
    for body, status, param in cases:
        got, _, answer = _call(gw, "POST", "/admin/actions", body, token=token)
        assert (got, answer["error"]["param"]) == (status, param), (body, answer)
        assert answer["error"]["message"] and answer["error"]["type"]

    expiring = gw.admin_post("/actions", {**ok, "ttl_s": 1})
    lifted = gw.admin_post("/actions", ok)
    gw.admin_post(f"/actions/{lifted['id']}/lift", {"reason": "done"})
    assert _eventually(
        lambda: gw.admin_get(f"/actions?account={account_id}&state=active")["data"] == []
    )
    lifts = [
        (f"/admin/actions/{expiring['id']}/lift", {"reason": "x"}, 409, "expired"),
        (f"/admin/actions/{lifted['id']}/lift", {"reason": "x"}, 409, "already_lifted"),
        ("/admin/actions/987654/lift", {"reason": "x"}, 404, None),
        (f"/admin/actions/{lifted['id']}/lift", {}, 400, None),
        ("/admin/actions/not-a-number/lift", {"reason": "x"}, 400, None),
    ]
    for path, body, status, code in lifts:
        got, _, answer = _call(gw, "POST", path, body, token=token)
        assert got == status, (path, answer)
        assert code is None or answer["error"]["code"] == code
    got, _, answer = _call(gw, "GET", "/admin/actions?account=nobody", token=token)
    assert got == 404 and answer["error"]["type"] == "not_found_error"
    # nothing of the refused calls was recorded
    assert len(gw.admin_get(f"/actions?account={account_id}")["data"]) == 2


# --- failed admin logins --------------------------------------------------------------------


def test_failed_admin_logins_are_audited_and_rate_limited(gateway_server) -> None:
    gw = gateway_server(
        online_monitor="false", admin_login_max_failures=3, admin_login_window_s=600
    )
    wrong = "not-the-admin-token-7f3a"
    assert _call(gw, "GET", "/admin/accounts", source="127.0.0.2")[0] == 401  # no token
    for _ in range(2):
        assert _call(gw, "GET", "/admin/accounts", token=wrong, source="127.0.0.2")[0] == 403
    status, headers, answer = _call(
        gw, "GET", "/admin/accounts", token=gw.admin_token, source="127.0.0.2"
    )
    assert status == 429 and int(headers["retry-after"]) > 0  # even the right token: no oracle
    assert answer["error"]["code"] == "admin_login_rate_limited"
    assert _call(gw, "GET", "/admin/accounts", token=gw.admin_token)[0] == 200  # another IP

    result = CliRunner().invoke(
        cli_app,
        [
            "actions",
            "audit",
            "--event",
            "admin.login_failed",
            "--db",
            f"sqlite:///{Path(gw.home) / 'distillguard.db'}",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "admin.login_failed" in line]
    assert len(lines) == 3 and all("127.0.0.2" in line for line in lines)  # the 429 adds none
    assert wrong not in result.output and gw.admin_token not in result.output
    audit = gw.admin_get("/audit?event=admin.login_failed")["data"]
    assert all(wrong not in orjson.dumps(e).decode() for e in audit)
    assert {e["details"]["path"] for e in audit} == {"/admin/accounts"}


def test_the_demo_lifts_a_wrongly_flagged_app(gateway_server) -> None:
    from distillguard.demo import lift_a_false_positive

    gw = gateway_server(online_monitor="false")
    app_id, _, secret = gw.create_key("support-bot")
    harvester_id, _, _ = gw.create_key("harvester")
    persona = {app_id: "app_support_bot", harvester_id: "campaign_hydra"}
    lift_a_false_positive(gw, persona)
    (action,) = gw.admin_get(f"/actions?account={app_id}")["data"]
    assert action["state"] == "lifted" and action["lift_reason"].startswith("false positive")
    assert _served(_client(gw, secret))


def test_nul_in_admin_urls_is_a_404_on_every_backend(gateway_server, db_url: str) -> None:
    """PostgreSQL refuses NUL in text: an id with one is an unknown id, not a 503."""
    gw = gateway_server(online_monitor="false", database_url=db_url)
    token = gw.admin_token
    for method, path, body in [
        ("POST", "/admin/accounts/a%00b/status", {"status": "active"}),
        ("POST", "/admin/keys/k%00/revoke", {}),
        ("GET", "/admin/actions?account=%00", None),
        ("GET", "/admin/audit?account=x%00", None),
        ("GET", "/admin/exchanges?account=%00", None),
        (
            "POST",
            "/admin/actions",
            {"account": "\x00", "action": "flag", "reason": "r", "ttl_s": 5},
        ),
        ("POST", "/admin/actions/99999999999/lift", {"reason": "r"}),
    ]:
        status, _, answer = _call(gw, method, path, body, token=token)
        assert status in (400, 404), (path, status, answer)
        assert answer["error"]["message"]


@pytest.mark.redis
def test_replicas_share_the_failed_login_budget_through_redis(gateway_server) -> None:
    _redis_or_skip()
    # An address no earlier run used: the counter lives in the shared Redis for a whole window,
    # and the global `random` may have been seeded by an earlier test (a fixed address then).
    rng = secrets.SystemRandom()
    ip = f"127.{rng.randint(1, 254)}.{rng.randint(1, 254)}.{rng.randint(2, 254)}"
    settings = {
        "online_monitor": "false",
        "redis_url": REDIS_URL,
        "admin_login_max_failures": 3,
        "admin_login_window_s": 600,
    }
    first, second = gateway_server(**settings), gateway_server(**settings)
    for gw in (first, first, second):  # three failures, spread over both replicas
        assert _call(gw, "GET", "/admin/accounts", token="guess", source=ip)[0] == 403
    for gw in (first, second):
        status, headers, _ = _call(gw, "GET", "/admin/accounts", token=gw.admin_token, source=ip)
        assert status == 429 and int(headers["retry-after"]) > 0
