"""The gateway in --upstream mode, as a real server process, driven by the official openai SDK.

One gateway (SQLite log, 1.5 s body timeout) proxies to the in-process mock upstream for the
whole module; every test creates its own account and key, so they do not share limits.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import time

import httpx
import openai
import pytest

from distillguard.gateway.process import GatewayProcess

CHAT = [{"role": "user", "content": "hello gateway"}]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, mock_upstream) -> GatewayProcess:
    server = GatewayProcess(
        home=tmp_path_factory.mktemp("gw"),
        admin_token=secrets.token_urlsafe(16),
        upstream=mock_upstream.url,
        env={"DISTILLGUARD_REQUEST_TIMEOUT_S": "1.5", "DISTILLGUARD_ONLINE_MONITOR": "false"},
    )
    with server:
        yield server


def sdk(gw: GatewayProcess, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.api_url, api_key=secret, max_retries=0, timeout=20)


def row(gw: GatewayProcess, request_id: str, *, wait_s: float = 5.0) -> dict:
    """The log row of one exchange (by the x-request-id the gateway returned)."""
    deadline = time.monotonic() + wait_s
    while True:
        for r in gw.exchanges(limit=200):
            if r["id"] == request_id:
                return r
        if time.monotonic() > deadline:
            raise AssertionError(f"no log row for {request_id}")
        time.sleep(0.05)


def raw_post(gw: GatewayProcess, content: bytes, secret: str | None) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if secret:
        headers["authorization"] = f"Bearer {secret}"
    return httpx.post(
        f"{gw.api_url}/chat/completions", content=content, headers=headers, timeout=20
    )


def assert_openai_error(response: httpx.Response, status: int, error_type: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == error_type and error["message"]
    return error


# --- serving ---------------------------------------------------------------------------------


def test_chat_completion_is_served_and_logged(gw: GatewayProcess, mock_upstream) -> None:
    account_id, key_id, secret = gw.create_key()
    raw = sdk(gw, secret).chat.completions.with_raw_response.create(
        model="mock-model", messages=CHAT, temperature=0.3, seed=7, presence_penalty=0.5
    )
    answer = raw.parse()
    assert answer.choices[0].message.content == "mock answer to: hello gateway"
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    # fields the gateway does not interpret still reach the upstream unchanged
    assert mock_upstream.requests[-1]["presence_penalty"] == 0.5
    logged = row(gw, raw.headers["x-request-id"])
    assert logged["account_id"] == account_id and logged["key_id"] == key_id
    assert logged["status"] == 200 and logged["endpoint"] == "/v1/chat/completions"
    assert logged["request"]["messages"] == CHAT and logged["request"]["seed"] == 7
    assert logged["response_text"] == answer.choices[0].message.content
    assert logged["completion_tokens"] == answer.usage.completion_tokens
    assert logged["ip"] == "127.0.0.1" and "OpenAI" in (logged["user_agent"] or "")
    assert logged["latency_ms"] > 0


def test_stream_sends_chunks_usage_and_done(gw: GatewayProcess) -> None:
    _, _, secret = gw.create_key()
    stream = sdk(gw, secret).chat.completions.create(
        model="mock-model", messages=CHAT, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "mock answer to: hello gateway"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    # on the wire: SSE events, the last one `data: [DONE]`
    with httpx.stream(
        "POST",
        f"{gw.api_url}/chat/completions",
        timeout=20,
        headers={"authorization": f"Bearer {secret}"},
        json={"model": "mock-model", "messages": CHAT, "stream": True},
    ) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [line for line in resp.iter_lines() if line]
        request_id = resp.headers["x-request-id"]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)
    # the gateway asked the upstream for usage but the client did not: no usage chunk
    assert not any('"usage"' in e for e in events)
    logged = row(gw, request_id)
    assert logged["response_text"] == text and logged["completion_tokens"] > 0


def test_completions_and_models(gw: GatewayProcess) -> None:
    _, _, secret = gw.create_key()
    client = sdk(gw, secret)
    answer = client.completions.create(model="mock-model", prompt="Once upon", n=2, max_tokens=5)
    assert [c.index for c in answer.choices] == [0, 1]
    assert answer.choices[0].text == "mock answer to: Once upon"
    assert {m.id for m in client.models.list()} >= {"mock-model", "mock-slow"}


def test_upstream_refusal_passes_through(gw: GatewayProcess) -> None:
    _, _, secret = gw.create_key()
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(gw, secret).chat.completions.create(model="mock-refuse", messages=CHAT)
    assert caught.value.code == "mock_refusal"
    assert row(gw, caught.value.response.headers["x-request-id"])["status"] == 400


# --- bad input: a clear OpenAI error, never a 500 or a hang, and a log row ---------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "mock-model", "messages": [', None),  # malformed JSON
        (b'{"model": "mock-model", "messages": [{"role": "user", "content": "\xff\xfe"}]}', None),
        (b"[1, 2, 3]", None),  # JSON, but not an object
    ],
    ids=["malformed-json", "invalid-utf8", "not-an-object"],
)
def test_undecodable_bodies_are_400(gw: GatewayProcess, body: bytes, param: str | None) -> None:
    account_id, _, secret = gw.create_key()
    response = raw_post(gw, body, secret)
    error = assert_openai_error(response, 400, "invalid_request_error")
    assert error["code"] == "invalid_json"
    logged = row(gw, response.headers["x-request-id"])
    assert logged["status"] == 400 and logged["account_id"] == account_id
    assert logged["error"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": "hot"}, "temperature"),
        ({"n": 2.5}, "n"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"max_tokens": 10**12}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": "hello"}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"stream": "yes"}, "stream"),
    ],
    ids=[
        "temperature-str",
        "n-float",
        "max-tokens-negative",
        "max-tokens-huge",
        "max-completion-zero",
        "messages-empty",
        "messages-str",
        "role-unknown",
        "stream-str",
    ],
)
def test_invalid_fields_are_400_naming_the_field(
    gw: GatewayProcess, extra: dict, param: str
) -> None:
    _, _, secret = gw.create_key()
    body = {"model": "mock-model", "messages": CHAT, **extra}
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(gw, secret).chat.completions.create(**body)
    error = caught.value.body
    assert error["param"] == param and error["type"] == "invalid_request_error"
    logged = row(gw, caught.value.response.headers["x-request-id"])
    assert logged["status"] == 400 and logged["request"] == body


def test_unknown_model_is_404(gw: GatewayProcess) -> None:
    _, _, secret = gw.create_key()
    with pytest.raises(openai.NotFoundError) as caught:
        sdk(gw, secret).chat.completions.create(model="gpt-17", messages=CHAT)
    assert caught.value.code == "model_not_found"
    assert row(gw, caught.value.response.headers["x-request-id"])["model"] == "gpt-17"


def test_missing_unknown_and_revoked_keys_are_401(gw: GatewayProcess) -> None:
    body = b'{"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}'
    missing = raw_post(gw, body, None)
    assert assert_openai_error(missing, 401, "authentication_error")["code"] == "missing_api_key"
    logged = row(gw, missing.headers["x-request-id"])
    assert logged["account_id"] is None and logged["key_id"] is None
    assert logged["request"]["model"] == "mock-model"  # the attempt keeps its body

    with pytest.raises(openai.AuthenticationError) as unknown:
        sdk(gw, "dg-0123456789abcdef-" + "x" * 43).chat.completions.create(
            model="mock-model", messages=CHAT
        )
    assert row(gw, unknown.value.response.headers["x-request-id"])["account_id"] is None

    _, key_id, secret = gw.create_key()
    client = sdk(gw, secret)
    client.chat.completions.create(model="mock-model", messages=CHAT)
    gw.admin_post(f"/keys/{key_id}/revoke")
    with pytest.raises(openai.AuthenticationError) as revoked:  # refused at once
        client.chat.completions.create(model="mock-model", messages=CHAT)
    assert "revoked" in revoked.value.message


def test_suspended_account_is_403_at_once(gw: GatewayProcess) -> None:
    account_id, _, secret = gw.create_key()
    client = sdk(gw, secret)
    client.chat.completions.create(model="mock-model", messages=CHAT)  # identity now cached
    gw.admin_post(f"/accounts/{account_id}/status", {"status": "suspended"})
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(model="mock-model", messages=CHAT)
    assert caught.value.code == "account_suspended"
    gw.admin_post(f"/accounts/{account_id}/status", {"status": "active"})
    client.chat.completions.create(model="mock-model", messages=CHAT)


def test_one_megabyte_prompt_is_413(gw: GatewayProcess) -> None:
    _, _, secret = gw.create_key()
    huge = [{"role": "user", "content": "a" * (1 << 20)}]
    with pytest.raises(openai.APIStatusError) as caught:
        sdk(gw, secret).chat.completions.create(model="mock-model", messages=huge)
    assert caught.value.status_code == 413
    assert caught.value.body["type"] == "invalid_request_error"
    logged = row(gw, caught.value.response.headers["x-request-id"])
    assert logged["status"] == 413 and "limit" in logged["request"]["_omitted"]

    def chunks():  # no Content-Length: the gateway counts the bytes as they arrive
        yield b'{"model": "mock-model", "messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"b" * 65536
        yield b'"}]}'

    response = httpx.post(
        f"{gw.api_url}/chat/completions",
        content=chunks(),
        timeout=20,
        headers={"authorization": f"Bearer {secret}"},
    )
    assert_openai_error(response, 413, "invalid_request_error")


def test_body_that_never_finishes_is_cut_off_with_408(gw: GatewayProcess) -> None:
    _, _, secret = gw.create_key()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {secret}\r\nContent-Type: application/json\r\n"
        f"Content-Length: 500\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=15) as sock:
        sock.sendall(head + b'{"model": "mock-model", ')  # ... and nothing more
        started = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    assert answer.startswith(b"HTTP/1.1 408")
    assert b'"timeout_error"' in answer
    assert time.monotonic() - started < 10  # cut off, never a hang
    request_id = next(
        line.split(b": ")[1].decode()
        for line in answer.split(b"\r\n")
        if line.lower().startswith(b"x-request-id")
    )
    assert row(gw, request_id)["status"] == 408


# --- limits -----------------------------------------------------------------------------------


def test_rpm_holds_exactly_under_concurrency(gw: GatewayProcess) -> None:
    account_id, _, secret = gw.create_key(rpm=10)

    async def burst() -> list[object]:
        client = openai.AsyncOpenAI(base_url=gw.api_url, api_key=secret, max_retries=0, timeout=30)
        calls = [
            client.chat.completions.create(model="mock-model", messages=CHAT) for _ in range(50)
        ]
        try:
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await client.close()

    results = asyncio.run(burst())
    ok = [r for r in results if not isinstance(r, BaseException)]
    limited = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(ok) == 10 and len(limited) == 40
    assert all(1 <= int(r.response.headers["retry-after"]) <= 60 for r in limited)
    statuses = [r["status"] for r in gw.exchanges(account=account_id)]
    assert sorted(statuses) == [200] * 10 + [429] * 40  # every attempt logged


def test_tpm_charges_real_usage(gw: GatewayProcess) -> None:
    _, _, secret = gw.create_key(tpm=100)
    client = sdk(gw, secret)
    # Each call reserves ~4 prompt + 60 output tokens, then is charged its real usage (~13),
    # so three fit in 100 tokens and the fourth's reservation does not.
    for _ in range(3):
        client.chat.completions.create(model="mock-model", messages=CHAT, max_tokens=60)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="mock-model", messages=CHAT, max_tokens=60)
    assert caught.value.code == "tokens_per_minute_exceeded"
    with pytest.raises(openai.RateLimitError) as too_big:
        client.chat.completions.create(model="mock-model", messages=CHAT, max_tokens=500)
    assert too_big.value.code == "request_too_large"


# --- streams cut short -------------------------------------------------------------------------


def test_client_disconnect_mid_stream_keeps_its_row(gw: GatewayProcess) -> None:
    account_id, _, secret = gw.create_key()
    with httpx.stream(
        "POST",
        f"{gw.api_url}/chat/completions",
        timeout=20,
        headers={"authorization": f"Bearer {secret}"},
        json={"model": "mock-slow", "messages": CHAT, "stream": True},
    ) as resp:
        request_id = resp.headers["x-request-id"]
        received = []
        for line in resp.iter_lines():
            if line:
                received.append(line)
            if len(received) == 5:
                break  # leave: closing the response drops the connection
    logged = row(gw, request_id)
    assert logged["account_id"] == account_id and logged["status"] == 200
    assert "disconnected" in logged["error"]
    sent = logged["response_text"]
    assert sent.startswith("tok tok tok tok tok") and len(sent) < 200 * len("tok ")


# --- admin and operations -------------------------------------------------------------------------


def test_admin_api_needs_the_admin_token(gw: GatewayProcess) -> None:
    url = f"{gw.base_url}/admin/accounts"
    assert httpx.get(url).status_code == 401
    wrong = httpx.get(url, headers={"authorization": "Bearer not-the-token"})
    assert_openai_error(wrong, 403, "permission_error")
    _, _, secret = gw.create_key()
    as_customer = httpx.get(url, headers={"authorization": f"Bearer {secret}"})
    assert as_customer.status_code == 403
    created = gw.admin_post(
        "/accounts", {"name": "admin-test", "org": "acme", "payment_fingerprint": "card-1"}
    )
    names = {a["name"] for a in gw.admin_get("/accounts")["data"]}
    assert "admin-test" in names and created["org"] == "acme"
    bad = httpx.post(
        f"{gw.base_url}/admin/keys",
        json={"account": "admin-test", "rpm": "many"},
        headers={"authorization": f"Bearer {gw.admin_token}"},
    )
    assert_openai_error(bad, 400, "invalid_request_error")
    assert gw.admin_get("/flags")["data"] == [] or gw.admin_get("/flags")["monitor"]


def test_healthz_and_metrics(gw: GatewayProcess) -> None:
    chat = {"endpoint": "/v1/chat/completions", "model": "mock-model"}
    served = ("distillguard_requests_total", frozenset({**chat, "status": "200"}.items()))
    latency = ("distillguard_request_latency_seconds_count", frozenset(chat.items()))
    completion = (
        "distillguard_tokens_total",
        frozenset({"model": "mock-model", "kind": "completion"}.items()),
    )
    admin = {"authorization": f"Bearer {gw.admin_token}"}  # metrics are for admins only
    before = metric_samples(httpx.get(f"{gw.base_url}/metrics", headers=admin).text)
    _, _, secret = gw.create_key()
    sdk(gw, secret).chat.completions.create(model="mock-model", messages=CHAT)
    health = httpx.get(f"{gw.base_url}/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}  # says nothing else
    after = metric_samples(httpx.get(f"{gw.base_url}/metrics", headers=admin).text)
    # other tests share this gateway: compare with the figures before this one request
    assert after[served] - before.get(served, 0) == 1
    assert after[latency] - before.get(latency, 0) == 1
    assert after[completion] > before.get(completion, 0)


def metric_samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text -> {(sample name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_wrong_method_and_unknown_path_are_openai_errors(gw: GatewayProcess) -> None:
    _, _, secret = gw.create_key()
    auth = {"authorization": f"Bearer {secret}"}
    wrong = httpx.get(f"{gw.api_url}/chat/completions", headers=auth)
    assert assert_openai_error(wrong, 405, "invalid_request_error")["code"] == "method_not_allowed"
    missing = httpx.post(f"{gw.api_url}/images/generations", json={"prompt": "x"}, headers=auth)
    assert_openai_error(missing, 404, "not_found_error")
