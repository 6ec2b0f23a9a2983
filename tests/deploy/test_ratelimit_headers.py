"""OpenAI's x-ratelimit-* headers: the limiters report the window after each admission, and
a real gateway sends the six headers on plain and streamed answers."""

from __future__ import annotations

import asyncio
import re
import secrets

import openai
import pytest

from distillguard.errors import RateLimited
from distillguard.gateway.limits import MemoryLimiter, RedisLimiter, format_reset
from distillguard.gateway.process import GatewayProcess

CHAT = [{"role": "user", "content": "hi"}]
RESET = re.compile(r"^(\d+ms|\d+(\.\d+)?s|\d+m\d+(\.\d+)?s)$")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0ms"),
        (0.25, "250ms"),
        (1.0, "1s"),
        (1.5, "1.5s"),
        (59.9991, "59.999s"),
        (60.0, "1m0s"),
        (61.25, "1m1.25s"),
        (360.0, "6m0s"),
    ],
)
def test_reset_is_written_as_openai_does(seconds: float, text: str) -> None:
    assert format_reset(seconds) == text


def test_memory_limiter_reports_the_window_after_each_admission() -> None:
    now = [100.0]
    limiter = MemoryLimiter(clock=lambda: now[0])
    windows = []
    for i in range(3):
        now[0] = 100.0 + 10 * i  # requests at 0 s, 10 s, 20 s
        reservation = asyncio.run(
            limiter.acquire("k", request_id=f"r{i}", rpm=5, tpm=100, tokens=10)
        )
        windows.append(reservation.window)
    last = windows[-1]
    assert [w.remaining_requests for w in windows] == [4, 3, 2]
    assert [w.remaining_tokens for w in windows] == [90, 80, 70]
    assert (last.limit_requests, last.limit_tokens) == (5, 100)
    assert last.reset_requests_s == last.reset_tokens_s == 40.0  # the first leaves at 60 s


@pytest.mark.redis
def test_redis_limiter_reports_the_same_window() -> None:
    async def run() -> list:
        limiter = RedisLimiter("redis://127.0.0.1:6379/0", prefix=f"dg:test:{secrets.token_hex(4)}")
        try:
            return [
                (await limiter.acquire("k", request_id=f"r{i}", rpm=5, tpm=100, tokens=10)).window
                for i in range(3)
            ]
        finally:
            await limiter.close()

    windows = asyncio.run(run())
    assert [w.remaining_requests for w in windows] == [4, 3, 2]
    assert [w.remaining_tokens for w in windows] == [90, 80, 70]
    assert 0 < windows[-1].reset_requests_s <= 60.0


def test_gateway_sends_ratelimit_headers(tmp_path, mock_upstream) -> None:
    with GatewayProcess(
        home=tmp_path / "gw",
        admin_token=secrets.token_urlsafe(16),
        upstream=mock_upstream.url,
        env={"DISTILLGUARD_ONLINE_MONITOR": "false"},
    ) as gw:
        _, _, secret = gw.create_key(rpm=3, tpm=10_000)
        client = openai.OpenAI(base_url=gw.api_url, api_key=secret, max_retries=0, timeout=20)
        first = client.chat.completions.with_raw_response.create(
            model="mock-model", messages=CHAT
        ).headers
        with client.chat.completions.with_streaming_response.create(
            model="mock-model", messages=CHAT, stream=True
        ) as streamed:
            second = streamed.headers
            assert "".join(streamed.iter_lines())  # read the stream to its end
        assert (first["x-ratelimit-limit-requests"], first["x-ratelimit-limit-tokens"]) == (
            "3",
            "10000",
        )
        assert first["x-ratelimit-remaining-requests"] == "2"
        assert second["x-ratelimit-remaining-requests"] == "1"
        # the reservation (prompt estimate) is counted; the remaining tokens shrink
        assert (
            0
            < int(second["x-ratelimit-remaining-tokens"])
            < int(first["x-ratelimit-remaining-tokens"])
            < 10_000
        )
        for headers in (first, second):
            assert RESET.match(headers["x-ratelimit-reset-requests"])
            assert RESET.match(headers["x-ratelimit-reset-tokens"])
        client.chat.completions.create(model="mock-model", messages=CHAT)  # the third of 3
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model="mock-model", messages=CHAT)
        headers = refused.value.response.headers
        assert (
            headers["x-ratelimit-limit-requests"],
            headers["x-ratelimit-remaining-requests"],
        ) == (
            "3",
            "0",
        )
        assert RESET.match(headers["x-ratelimit-reset-requests"]) and headers["retry-after"]


def test_refusals_carry_the_exhausted_limit() -> None:
    now = [0.0]
    limiter = MemoryLimiter(clock=lambda: now[0])
    asyncio.run(limiter.acquire("k", request_id="a", rpm=1, tpm=100, tokens=10))
    now[0] = 15.0
    with pytest.raises(RateLimited) as by_requests:
        asyncio.run(limiter.acquire("k", request_id="b", rpm=1, tpm=100, tokens=10))
    assert dict(by_requests.value.headers) == {
        b"x-ratelimit-limit-requests": b"1",
        b"x-ratelimit-remaining-requests": b"0",
        b"x-ratelimit-reset-requests": b"45s",  # the first request leaves at 60 s
    }
    asyncio.run(limiter.acquire("k2", request_id="c", rpm=9, tpm=100, tokens=95))
    with pytest.raises(RateLimited) as by_tokens:
        asyncio.run(limiter.acquire("k2", request_id="d", rpm=9, tpm=100, tokens=10))
    assert dict(by_tokens.value.headers)[b"x-ratelimit-remaining-tokens"] == b"0"
