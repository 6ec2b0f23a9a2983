"""The RPM/TPM limiters on their own: exact under concurrency, in memory and in real Redis."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from distillguard.errors import RateLimited
from distillguard.gateway.limits import MemoryLimiter, RedisLimiter

REDIS_URL = "redis://127.0.0.1:6379/0"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def admitted(limiter, key: str, n: int, *, rpm: int, tpm: int, tokens: int = 1) -> int:
    async def one(i: int) -> bool:
        try:
            await limiter.acquire(
                key, request_id=f"r{i}-{secrets.token_hex(4)}", rpm=rpm, tpm=tpm, tokens=tokens
            )
            return True
        except RateLimited:
            return False

    return sum(await asyncio.gather(*(one(i) for i in range(n))))


def test_memory_rpm_is_exact_and_slides() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock)

    async def scenario() -> None:
        assert await admitted(limiter, "k", 50, rpm=10, tpm=10**6) == 10
        clock.now += 30
        assert await admitted(limiter, "k", 5, rpm=10, tpm=10**6) == 0  # window still full
        with pytest.raises(RateLimited) as caught:
            await limiter.acquire("k", request_id="x", rpm=10, tpm=10**6, tokens=1)
        assert caught.value.retry_after == pytest.approx(30.0)  # when the oldest expires
        clock.now += 30.001
        assert await admitted(limiter, "k", 50, rpm=10, tpm=10**6) == 10
        assert await admitted(limiter, "other", 3, rpm=10, tpm=10**6) == 3  # per key

    asyncio.run(scenario())


def test_memory_tpm_reserves_then_settles() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock)

    async def scenario() -> None:
        first = await limiter.acquire("k", request_id="a", rpm=100, tpm=100, tokens=80)
        with pytest.raises(RateLimited) as caught:
            await limiter.acquire("k", request_id="b", rpm=100, tpm=100, tokens=30)
        assert caught.value.code == "tokens_per_minute_exceeded"
        await limiter.settle(first, 20)  # it really used 20
        await limiter.acquire("k", request_id="b", rpm=100, tpm=100, tokens=30)
        with pytest.raises(RateLimited) as too_big:
            await limiter.acquire("k", request_id="c", rpm=100, tpm=100, tokens=101)
        assert too_big.value.code == "request_too_large"

    asyncio.run(scenario())


@pytest.fixture
def redis_limiters():
    redis = pytest.importorskip("redis")
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.skip(f"Redis unreachable: {exc}")
    prefix = f"dg:test:{secrets.token_hex(6)}"
    limiters = [RedisLimiter(REDIS_URL, prefix=prefix) for _ in range(2)]
    yield limiters
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


@pytest.mark.redis
def test_redis_rpm_is_exact_across_two_limiters(redis_limiters) -> None:
    a, b = redis_limiters

    async def scenario() -> int:
        try:
            counts = await asyncio.gather(
                admitted(a, "k", 25, rpm=10, tpm=10**6), admitted(b, "k", 25, rpm=10, tpm=10**6)
            )
            with pytest.raises(RateLimited) as caught:
                await a.acquire("k", request_id="late", rpm=10, tpm=10**6, tokens=1)
            assert 0 < caught.value.retry_after <= 60
            return sum(counts)
        finally:
            await a.close()
            await b.close()

    assert asyncio.run(scenario()) == 10  # two "replicas", one limit


@pytest.mark.redis
def test_redis_tpm_reserves_then_settles(redis_limiters) -> None:
    a, b = redis_limiters

    async def scenario() -> None:
        try:
            first = await a.acquire("k", request_id="a", rpm=100, tpm=100, tokens=80)
            with pytest.raises(RateLimited) as caught:
                await b.acquire("k", request_id="b", rpm=100, tpm=100, tokens=30)
            assert caught.value.code == "tokens_per_minute_exceeded"
            await a.settle(first, 20)
            await b.acquire("k", request_id="b", rpm=100, tpm=100, tokens=30)
        finally:
            await a.close()
            await b.close()

    asyncio.run(scenario())
