"""Issue #16: each attack of the review, reproduced against real gateway processes.

Every test here failed on the gateway before the fix (see the issue's numbered items); the
upstream is the mock OpenAI server, everything else (gateway, SQLite/PostgreSQL log, Redis) is
real. Clients are the official openai SDK, or httpx / raw sockets where the attack is below
what an SDK would send.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import socket
import sqlite3
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from distillguard.gateway.process import GatewayProcess

CHAT = [{"role": "user", "content": "hello gateway"}]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, mock_upstream) -> GatewayProcess:
    """One proxy gateway for most attacks: behind a (loopback) trusted proxy, so each test can
    act from its own client address; a small unauthenticated budget; a 1 s header deadline."""
    server = GatewayProcess(
        home=tmp_path_factory.mktemp("hardened"),
        admin_token=secrets.token_urlsafe(16),
        upstream=mock_upstream.url,
        env={
            "DISTILLGUARD_ONLINE_MONITOR": "false",
            "DISTILLGUARD_TRUSTED_PROXIES": "127.0.0.0/8, 10.0.0.0/8",
            "DISTILLGUARD_UNAUTH_LOG_PER_MINUTE": "10",
            "DISTILLGUARD_HEADER_TIMEOUT_S": "1",
        },
    )
    with server:
        yield server


@pytest.fixture(scope="module")
def local_gw(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> GatewayProcess:
    """A gateway serving the tiny local model with the KGW watermark."""
    server = GatewayProcess(
        home=tmp_path_factory.mktemp("hardened-local"),
        admin_token=secrets.token_urlsafe(16),
        model_dir=tiny_model_dir,
        watermark="kgw",
        env={
            "DISTILLGUARD_ONLINE_MONITOR": "false",
            "DISTILLGUARD_WATERMARK_SECRET": "a-test-master-secret",
        },
    )
    with server:
        yield server


def _rows(gw: GatewayProcess, ids: list[str]) -> list[dict]:
    by_id = {r["id"]: r for r in gw.exchanges(limit=1000)}
    return [by_id[i] for i in ids]


def _metric(gw: GatewayProcess, name: str) -> float:
    admin = {"authorization": f"Bearer {gw.admin_token}"}
    for line in httpx.get(f"{gw.base_url}/metrics", headers=admin).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def _post(gw: GatewayProcess, content: bytes, secret: str | None, **headers: str):
    sent = {"content-type": "application/json", **headers}
    if secret:
        sent["authorization"] = f"Bearer {secret}"
    return httpx.post(f"{gw.api_url}/chat/completions", content=content, headers=sent, timeout=30)


def _nested_body(depth: int, *, stream: bool) -> bytes:
    """A chat request whose `metadata` nests ``depth`` lists deep (orjson reads 1,024 levels
    but writes only 255, so the body is built as text)."""
    head = orjson.dumps({"model": "mock-model", "messages": CHAT, "stream": stream})
    return head[:-1] + b',"metadata":' + b"[" * depth + b"]" * depth + b"}"


def _db_path(gw: GatewayProcess) -> Path:
    return gw.home / "distillguard.db"


# --- 1. an answer served but never logged ---------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_a_body_nested_beyond_what_the_log_stores_is_refused_before_serving(
    gw: GatewayProcess, mock_upstream, stream: bool
) -> None:
    _, _, secret = gw.create_key()
    served_before = len(mock_upstream.requests)
    answer = _post(gw, _nested_body(300, stream=stream), secret)
    assert answer.status_code == 400, answer.text
    assert "nests deeper" in answer.json()["error"]["message"]
    assert len(mock_upstream.requests) == served_before  # nothing generated, nothing served
    [row] = _rows(gw, [answer.headers["x-request-id"]])
    assert row["status"] == 400 and row["request"]["_unparsed"].startswith('{"model"')


def test_a_stream_whose_row_cannot_be_written_never_ends_in_done(gateway_server) -> None:
    gw = gateway_server(online_monitor="false")
    _, _, secret = gw.create_key()
    with sqlite3.connect(_db_path(gw)) as db:  # the log refuses every insert from now on
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON exchanges "
            "BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
        )
    client = openai.OpenAI(base_url=gw.api_url, api_key=secret, max_retries=0, timeout=20)
    with pytest.raises(openai.APIError):  # the SDK raises on the error event
        for _ in client.chat.completions.create(model="mock-model", messages=CHAT, stream=True):
            pass
    raw = _post(gw, orjson.dumps({"model": "mock-model", "messages": CHAT, "stream": True}), secret)
    assert raw.content.startswith(b"data: ") and b"data: [DONE]" not in raw.content
    last = orjson.loads(raw.content.strip().split(b"\n\n")[-1][len(b"data: ") :])
    assert last["error"]["code"] == "exchange_not_logged"


# --- 2. one bare JSON number breaks the log tools --------------------------------------------


def test_a_bare_json_number_body_leaves_the_log_readable(gw: GatewayProcess) -> None:
    _, _, secret = gw.create_key()
    answers = [
        _post(gw, b"4.5", None, **{"x-forwarded-for": "192.0.2.45"}),
        _post(gw, b"4.5", secret),
        _post(gw, b'"just a string"', secret),
    ]
    assert [a.status_code for a in answers] == [401, 400, 400]
    rows = _rows(gw, [a.headers["x-request-id"] for a in answers])  # /admin/exchanges was 500
    assert all(isinstance(r["request"], dict) for r in rows)
    assert [r["request"].get("_unparsed") for r in rows] == ["4.5", "4.5", '"just a string"']


def test_an_old_row_holding_a_bare_number_reads_back(gw: GatewayProcess) -> None:
    _, _, secret = gw.create_key()
    answer = _post(gw, orjson.dumps({"model": "mock-model", "messages": CHAT}), secret)
    request_id = answer.headers["x-request-id"]
    with sqlite3.connect(_db_path(gw)) as db:  # what the old gateway wrote for `-d 4.5`
        db.execute("UPDATE exchanges SET request = 4.5 WHERE id = ?", (request_id,))
        kind = db.execute("SELECT typeof(request) FROM exchanges WHERE id = ?", (request_id,))
        assert kind.fetchone() == ("real",)
    assert _rows(gw, [request_id])[0]["request"] == 4.5


# --- 3. anyone can fill the disk --------------------------------------------------------------


def test_unauthenticated_flood_is_logged_bounded_and_rate_limited(gw: GatewayProcess) -> None:
    _, _, secret = gw.create_key()
    big = orjson.dumps({"model": "mock-model", "messages": CHAT, "pad": "x" * 900_000})
    flooder = {"x-forwarded-for": "192.0.2.99"}  # the address the proxy saw
    unlogged_before = _metric(gw, "distillguard_unauthenticated_unlogged_total")
    size_before = _db_path(gw).stat().st_size + _db_path(gw).with_suffix(".db-wal").stat().st_size
    answers = [_post(gw, big, "not-a-key", **flooder) for _ in range(30)]
    assert [a.status_code for a in answers] == [401] * 10 + [429] * 20
    assert int(answers[-1].headers["retry-after"]) >= 1
    rows = _rows(gw, [a.headers["x-request-id"] for a in answers[:10]])
    assert all(r["request"]["_truncated"] and len(r["request"]["_unparsed"]) <= 1024 for r in rows)
    logged_ids = {r["id"] for r in gw.exchanges(limit=1000)}
    assert not logged_ids & {a.headers["x-request-id"] for a in answers[10:]}
    assert _metric(gw, "distillguard_unauthenticated_unlogged_total") == unlogged_before + 20
    size_after = _db_path(gw).stat().st_size + _db_path(gw).with_suffix(".db-wal").stat().st_size
    assert size_after - size_before < 30 * 64 * 1024  # 27 MB of attempts, a few KB per row
    # a valid key from the same address is still served
    served = _post(gw, orjson.dumps({"model": "mock-model", "messages": CHAT}), secret, **flooder)
    assert served.status_code == 200


def test_every_keyless_refusal_shares_the_budget(gw: GatewayProcess) -> None:
    """Models listings and wrong methods without a key are bounded the same way."""
    source = {"x-forwarded-for": "192.0.2.120"}
    answers = [httpx.get(f"{gw.api_url}/models", headers=source) for _ in range(6)]
    answers += [httpx.get(f"{gw.api_url}/chat/completions", headers=source) for _ in range(6)]
    assert [a.status_code for a in answers] == [401] * 6 + [405] * 4 + [429] * 2
    logged = {r["id"] for r in gw.exchanges(limit=1000)}
    assert len(logged & {a.headers["x-request-id"] for a in answers}) == 10


# --- 4. the client chooses the IP that is logged ---------------------------------------------


def test_behind_a_trusted_proxy_the_rightmost_untrusted_hop_is_the_client(
    gw: GatewayProcess,
) -> None:
    _, _, secret = gw.create_key()
    rejected_before = _metric(gw, "distillguard_forwarded_for_rejected_total")
    body = orjson.dumps({"model": "mock-model", "messages": CHAT})
    cases = {
        "198.51.100.9, 203.0.113.77": "203.0.113.77",  # the left entry is the client's forgery
        "198.51.100.9, 203.0.113.77, 10.1.2.3": "203.0.113.77",  # two proxies
        "not-an-ip": "127.0.0.1",  # unreadable: ignored, the proxy itself
        "203.0.113.5, garbage": "127.0.0.1",
    }
    seen = {}
    for header, _expected in cases.items():
        answer = _post(gw, body, secret, **{"x-forwarded-for": header})
        seen[answer.headers["x-request-id"]] = header
    logged = {seen[r["id"]]: r["ip"] for r in _rows(gw, list(seen))}
    assert logged == cases
    assert _metric(gw, "distillguard_forwarded_for_rejected_total") == rejected_before + 2


def test_a_harvester_forging_an_honest_apps_ip_is_not_linked_to_it(
    gateway_server, tmp_path: Path
) -> None:
    """The framing attack: the harvester copies an honest app's prompt frame and, via a forged
    X-Forwarded-For, its IP prefix; IP prefix + template are two link kinds, enough to link
    (and block) the honest app with it. Behind a trusted proxy only the proxy's entry counts."""
    from distillguard.monitor.links import find_clusters
    from distillguard.monitor.offline import collect, read_out
    from distillguard.store.dbsource import read_exchanges_db

    gw = gateway_server(online_monitor="false", trusted_proxies="127.0.0.1/32")  # its own log
    honest, _, honest_key = gw.create_key("honest-app")
    harvester, _, harvester_key = gw.create_key("harvester")
    frame = "You are a support assistant for Acme. Answer the customer's question in two lines: "
    topics = ["refunds", "shipping", "warranty", "returns", "invoices", "accounts", "orders"]
    for i in range(42):
        question = f"{frame}how do {topics[i % len(topics)]} work for order {i}?"
        body = orjson.dumps(
            {"model": "mock-model", "messages": [{"role": "user", "content": question}]}
        )
        # what the proxy appends: the honest app's real address; the harvester's real one
        # after the honest prefix it forged
        _post(gw, body, honest_key, **{"x-forwarded-for": f"198.51.100.{10 + i % 3}"})
        _post(gw, body, harvester_key, **{"x-forwarded-for": "198.51.100.66, 203.0.113.77"})

    records = list(read_exchanges_db(f"sqlite:///{_db_path(gw)}"))
    ips = {r.account_id: r.ip for r in records}
    assert ips[harvester] == "203.0.113.77" and ips[honest].startswith("198.51.100.")

    def linked(recs) -> bool:
        _, keys = read_out(collect(recs))
        return any({honest, harvester} <= set(c.members) for c in find_clusters(keys))

    assert not linked(records)
    # Control: had the forged entry been believed (the old gateway), they would be linked.
    believed = [
        dataclasses.replace(r, ip="198.51.100.66") if r.account_id == harvester else r
        for r in records
    ]
    assert linked(believed)


# --- 6. a rate-limited key stalls every tenant -------------------------------------------------


def test_a_key_out_of_requests_is_refused_before_its_huge_prompt_is_tokenized(
    local_gw: GatewayProcess, tiny_model_dir: Path
) -> None:
    gw = local_gw
    _, _, limited = gw.create_key(rpm=1)
    _, _, other = gw.create_key()
    small = {"model": tiny_model_dir.name, "messages": CHAT, "max_tokens": 2}
    assert _post(gw, orjson.dumps(small), limited).status_code == 200
    huge = {**small, "messages": [{"role": "user", "content": "word " * 150_000}]}
    # Before: tokenized on the event loop first (a 1 MB prompt), then refused as too long.
    refused = _post(gw, orjson.dumps(huge), limited)
    assert refused.status_code == 429 and refused.headers["retry-after"]
    # A huge prompt from a key with requests left is tokenized off the loop and still judged.
    too_long = _post(gw, orjson.dumps(huge), other)
    assert too_long.json()["error"]["code"] == "context_length_exceeded"
    assert _post(gw, orjson.dumps(small), other).status_code == 200


# --- 7. TPM leaks under concurrency --------------------------------------------------------------


def test_requests_without_max_tokens_cannot_overrun_tpm_together(gw: GatewayProcess) -> None:
    _, _, secret = gw.create_key(tpm=3000)

    async def wave() -> list[object]:
        client = openai.AsyncOpenAI(base_url=gw.api_url, api_key=secret, max_retries=0)
        async with client:
            return await asyncio.gather(
                *(
                    client.chat.completions.create(model="mock-long", messages=CHAT)
                    for _ in range(64)
                ),
                return_exceptions=True,
            )

    # Before: only the prompt (~4 tokens) was reserved, so all 64 were admitted at once and
    # took ~64,000 tokens of a 3,000-token budget.
    results = asyncio.run(wave())
    served = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(served) + len(refused) == 64 and served
    # Each admitted request reserved the worst case (the key's whole budget) until settled:
    # at most one is in flight at a time, so the budget holds.
    assert sum(r.usage.total_tokens for r in served) <= 3000
    assert "set max_tokens" in refused[0].message


# --- 9. the detector and the watermark explain themselves ------------------------------------


def test_nothing_unauthenticated_names_the_watermark_or_the_policy(gw: GatewayProcess) -> None:
    assert httpx.get(f"{gw.base_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{gw.base_url}/metrics").status_code == 401
    assert httpx.get(f"{gw.base_url}/admin/openapi.json").status_code == 401
    admin = {"authorization": f"Bearer {gw.admin_token}"}
    spec = httpx.get(f"{gw.base_url}/admin/openapi.json", headers=admin).json()
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models"} <= set(spec["paths"])


def test_local_answers_carry_no_watermark_scheme_or_key(
    local_gw: GatewayProcess, tiny_model_dir: Path
) -> None:
    gw = local_gw
    _, _, secret = gw.create_key()
    client = openai.OpenAI(base_url=gw.api_url, api_key=secret, max_retries=0)
    answer = client.chat.completions.create(model=tiny_model_dir.name, messages=CHAT, max_tokens=3)
    assert answer.system_fingerprint and "kgw" not in answer.system_fingerprint
    assert answer.system_fingerprint.startswith("fp_")
    chunks = list(
        client.chat.completions.create(
            model=tiny_model_dir.name, messages=CHAT, max_tokens=3, stream=True
        )
    )
    assert {c.system_fingerprint for c in chunks} == {answer.system_fingerprint}


def test_request_ids_are_random_not_a_counter(gw: GatewayProcess) -> None:
    _, _, secret = gw.create_key()
    ids = [_post(gw, b"{}", secret).headers["x-request-id"] for _ in range(3)]
    tails = [int(i[12:], 16) for i in ids]  # after the millisecond clock
    assert len(set(ids)) == 3
    assert not (tails[1] - tails[0] == 1 and tails[2] - tails[1] == 1)
    assert all(len(i[12:]) == 16 for i in ids)


def test_upstream_addresses_stay_internal_and_forwarded_for_is_untrusted_by_default(
    gateway_server,
) -> None:
    """A gateway with default settings: no proxy is trusted, and an unreachable upstream's
    address reaches the operator's log, not the client."""
    from distillguard.gateway.process import free_port

    port = free_port()
    gw = gateway_server(upstream=f"http://127.0.0.1:{port}/v1", online_monitor="false")
    _, _, secret = gw.create_key()
    body = orjson.dumps({"model": "any", "messages": CHAT})
    answers = [_post(gw, body, secret, **{"x-forwarded-for": f}) for f in ("203.0.113.77", "x")]
    assert [a.status_code for a in answers] == [502, 502]
    assert str(port) not in answers[0].text and "127.0.0.1" not in answers[0].text
    rows = _rows(gw, [a.headers["x-request-id"] for a in answers])
    assert str(port) in rows[0]["error"]  # the operator's log keeps the detail
    assert {r["ip"] for r in rows} == {"127.0.0.1"}  # the forged header was not believed


# --- 11. smaller ---------------------------------------------------------------------------------


def test_huge_seed_and_huge_key_limits_are_400_not_500(
    local_gw: GatewayProcess, tiny_model_dir: Path
) -> None:
    gw = local_gw
    _, _, secret = gw.create_key()
    body = {
        "model": tiny_model_dir.name,
        "messages": CHAT,
        "max_tokens": 2,
        "n": 2,
        "seed": 2**64 - 1,
    }
    assert _post(gw, orjson.dumps(body), secret).status_code == 400
    body["seed"] = 2**63 - 1  # the largest allowed, n=2: seed + 1 wraps, still served
    assert _post(gw, orjson.dumps(body), secret).status_code == 200
    admin = {"authorization": f"Bearer {gw.admin_token}"}
    account = gw.admin_get("/accounts")["data"][0]["id"]
    huge = httpx.post(
        f"{gw.base_url}/admin/keys", json={"account": account, "rpm": 2**63}, headers=admin
    )
    assert huge.status_code == 400 and huge.json()["error"]["param"] == "rpm"


def _raw_exchange(port: int, payload: bytes, *, wait_s: float) -> tuple[bytes, bool]:
    """What the server sent on one raw connection, and whether it closed the connection
    (False: still open when our own ``wait_s`` ran out)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(payload)
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return received, False
            if not chunk:
                return received, True
            received += chunk


def test_malformed_http_framing_is_answered_in_json(gw: GatewayProcess) -> None:
    answer, _ = _raw_exchange(gw.port, b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n", wait_s=10)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head
    assert orjson.loads(body)["error"]["type"] == "invalid_request_error"


def test_a_half_sent_header_is_cut_off(gw: GatewayProcess) -> None:
    half = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
    answer, closed = _raw_exchange(gw.port, half, wait_s=20)
    assert closed and answer.startswith(b"HTTP/1.1 408")
