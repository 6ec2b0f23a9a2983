"""Real gateway processes: answered requests survive SIGKILL; two replicas share one limit
(Redis) and one log (PostgreSQL)."""

from __future__ import annotations

import asyncio
import os
import secrets

import openai
import pytest

from distillguard.store.db import make_engine
from distillguard.store.exchanges import get_exchange

CHAT = [{"role": "user", "content": "durable?"}]
PG_ADMIN_URL = os.environ.get(
    "DISTILLGUARD_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = "redis://127.0.0.1:6379/0"


async def _burst(urls: list[str], secret: str, n: int, *, stream: bool = False) -> list[object]:
    clients = [
        openai.AsyncOpenAI(base_url=u, api_key=secret, max_retries=0, timeout=30) for u in urls
    ]

    async def one(i: int) -> object:
        client = clients[i % len(clients)]
        if stream:
            raw = await client.chat.completions.with_raw_response.create(
                model="mock-model", messages=CHAT, stream=True
            )
            async for _ in raw.parse():
                pass
            return raw.headers["x-request-id"]
        raw = await client.chat.completions.with_raw_response.create(
            model="mock-model", messages=CHAT
        )
        return raw.headers["x-request-id"]

    try:
        return await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    finally:
        for client in clients:
            await client.close()


def test_answered_requests_survive_sigkill(gateway_server) -> None:
    gw = gateway_server()
    _, _, secret = gw.create_key()
    ids = asyncio.run(_burst([gw.api_url], secret, 20))
    ids += asyncio.run(_burst([gw.api_url], secret, 5, stream=True))
    gw.kill()  # right after the last answer: no shutdown hook, no flush
    assert all(isinstance(i, str) for i in ids), ids
    engine = make_engine(f"sqlite:///{gw.home / 'distillguard.db'}")
    try:
        with engine.connect() as conn:
            rows = [get_exchange(conn, exchange_id=i) for i in ids]
    finally:
        engine.dispose()
    assert all(r is not None and r.status == 200 for r in rows)
    assert all(r.response_text == "mock answer to: durable?" for r in rows)


@pytest.fixture
def fresh_pg_url():
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    name = f"dg_gw_{secrets.token_hex(4)}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
        yield f"{base}/{name}"
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.postgres
@pytest.mark.redis
def test_two_replicas_share_one_limit_and_one_log(gateway_server, fresh_pg_url: str) -> None:
    first = gateway_server(database_url=fresh_pg_url, redis_url=REDIS_URL)
    second = gateway_server(database_url=fresh_pg_url, redis_url=REDIS_URL)
    account_id, _, secret = first.create_key(rpm=10)  # created through one replica ...
    results = asyncio.run(_burst([first.api_url, second.api_url], secret, 40))
    ok = [r for r in results if isinstance(r, str)]
    limited = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(ok) == 10 and len(limited) == 30  # ... one limit across both
    rows = second.exchanges(account=account_id)  # ... and one log, read through the other
    assert len(rows) == 40
    assert sorted(r["status"] for r in rows) == [200] * 10 + [429] * 30
    assert set(ok) <= {r["id"] for r in rows}
