"""Per-key rate limits: requests per minute (RPM) and tokens per minute (TPM), exact.

Both limiters keep a true sliding window of the last 60 seconds (no fixed buckets, no token
bucket approximation): a request is admitted when fewer than ``rpm`` requests of the key
arrived in the window and the tokens of those requests plus this one's reservation stay within
``tpm``. Check and insert happen atomically, so N concurrent requests against a limit of k
admit exactly k:

- ``MemoryLimiter``: one process. The check and the insert run without an ``await`` between
  them on the event loop, which makes them atomic for every coroutine of that process.
- ``RedisLimiter``: several gateway replicas. One Lua script per request does expire, check
  and insert inside Redis (scripts run atomically), with Redis' own clock so replicas with
  skewed clocks still share one window.

Tokens are not known before a request is served, so ``acquire`` reserves an estimate
(prompt tokens + the requested ``max_tokens`` for every choice) and ``settle`` replaces it by
the real usage once the response is complete. A request that fails still counts as a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Protocol

from distillguard.errors import ConfigError, RateLimited, StoreError

log = logging.getLogger("distillguard.gateway")

WINDOW_S = 60.0  # "per minute": the window of both limits


@dataclass
class WindowState:
    """The key's window right after a request was admitted: what OpenAI's ``x-ratelimit-*``
    headers report. A reset is the time until the oldest request counted in the window
    leaves it, i.e. until the remaining figure next grows (in a sliding window the limit is
    never "reset" at once; this is the wait that matters to a client at 0 remaining)."""

    limit_requests: int
    remaining_requests: int
    reset_requests_s: float
    limit_tokens: int
    remaining_tokens: int  # after this request's reservation (settled later to real usage)
    reset_tokens_s: float


@dataclass
class Reservation:
    """One admitted request; ``settle`` corrects its token count to the real usage."""

    key_id: str
    request_id: str
    tokens: int
    # memory limiter only: the window entry [ts, tokens] to correct in place
    entry: list[float] | None = field(default=None, repr=False)
    window: WindowState | None = None  # the window after admission (response headers)


def format_reset(seconds: float) -> str:
    """A duration as OpenAI writes it in ``x-ratelimit-reset-*``: ``250ms``, ``1.5s``,
    ``6m0s``."""
    seconds = max(seconds, 0.0)
    if seconds < 1.0:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60.0:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(seconds, 60.0)
    return f"{int(minutes)}m{round(rest, 3):g}s"


def exhausted_headers(kind: str, limit: int, retry_after: float) -> tuple[tuple[bytes, bytes], ...]:
    """The ``x-ratelimit-*`` headers of a refusal: the limit that was hit (``requests`` or
    ``tokens``), nothing left of it, and when that changes."""
    return (
        (f"x-ratelimit-limit-{kind}".encode(), str(limit).encode()),
        (f"x-ratelimit-remaining-{kind}".encode(), b"0"),
        (f"x-ratelimit-reset-{kind}".encode(), format_reset(retry_after).encode()),
    )


def ratelimit_headers(window: WindowState | None) -> list[tuple[bytes, bytes]]:
    """OpenAI's six ``x-ratelimit-*`` response headers for an admitted request."""
    if window is None:
        return []
    return [
        (b"x-ratelimit-limit-requests", str(window.limit_requests).encode()),
        (b"x-ratelimit-limit-tokens", str(window.limit_tokens).encode()),
        (b"x-ratelimit-remaining-requests", str(max(window.remaining_requests, 0)).encode()),
        (b"x-ratelimit-remaining-tokens", str(max(window.remaining_tokens, 0)).encode()),
        (b"x-ratelimit-reset-requests", format_reset(window.reset_requests_s).encode()),
        (b"x-ratelimit-reset-tokens", format_reset(window.reset_tokens_s).encode()),
    ]


class RateLimiter(Protocol):
    async def acquire(
        self, key_id: str, *, request_id: str, rpm: int, tpm: int, tokens: int
    ) -> Reservation: ...

    async def settle(self, reservation: Reservation, tokens: int) -> None: ...

    async def check_rpm(self, key_id: str, *, rpm: int) -> None:
        """RateLimited when the key has no request left in the window (admits nothing): lets
        the gateway refuse an expensive request before it pays for its preparation."""

    async def close(self) -> None: ...


def _too_large(tokens: int, tpm: int) -> RateLimited:
    # Can never pass: say so instead of asking the client to retry forever.
    return RateLimited(
        f"request needs about {tokens} tokens but the key's limit is {tpm} tokens per minute; "
        "lower max_tokens or the prompt",
        retry_after=WINDOW_S,
        code="request_too_large",
    )


class _KeyWindow:
    __slots__ = ("entries", "tokens")

    def __init__(self) -> None:
        self.entries: deque[list[float]] = deque()  # [arrival ts, tokens], oldest first
        self.tokens = 0.0  # sum of tokens over `entries`


class MemoryLimiter:
    """Exact sliding-window limits for one gateway process."""

    def __init__(self, *, clock=time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, _KeyWindow] = {}

    async def acquire(
        self, key_id: str, *, request_id: str, rpm: int, tpm: int, tokens: int
    ) -> Reservation:
        if tokens > tpm:
            raise _too_large(tokens, tpm)
        now = self._clock()
        window = self._windows.get(key_id)
        if window is None:
            window = self._windows[key_id] = _KeyWindow()
        entries = window.entries
        horizon = now - WINDOW_S
        while entries and entries[0][0] <= horizon:
            window.tokens -= entries.popleft()[1]
        if len(entries) >= rpm:
            retry = max(entries[len(entries) - rpm][0] + WINDOW_S - now, 0.001)
            raise RateLimited(
                f"rate limit reached: {rpm} requests per minute for this key",
                retry_after=retry,
                headers=exhausted_headers("requests", rpm, retry),
            )
        if window.tokens + tokens > tpm:
            needed = window.tokens + tokens - tpm
            freed = 0.0
            retry = WINDOW_S
            for ts, used in entries:
                freed += used
                if freed >= needed:
                    retry = ts + WINDOW_S - now
                    break
            retry = max(retry, 0.001)
            raise RateLimited(
                f"rate limit reached: {tpm} tokens per minute for this key",
                retry_after=retry,
                code="tokens_per_minute_exceeded",
                headers=exhausted_headers("tokens", tpm, retry),
            )
        entry = [now, float(tokens)]
        entries.append(entry)
        window.tokens += tokens
        reset = entries[0][0] + WINDOW_S - now  # the oldest counted request leaves then
        state = WindowState(rpm, rpm - len(entries), reset, tpm, int(tpm - window.tokens), reset)
        return Reservation(key_id, request_id, tokens, entry, state)

    async def check_rpm(self, key_id: str, *, rpm: int) -> None:
        window = self._windows.get(key_id)
        if window is None:
            return
        now = self._clock()
        live = [ts for ts, _ in window.entries if ts > now - WINDOW_S]
        if len(live) >= rpm:
            raise RateLimited(
                f"rate limit reached: {rpm} requests per minute for this key",
                retry_after=max(live[len(live) - rpm] + WINDOW_S - now, 0.001),
            )

    async def settle(self, reservation: Reservation, tokens: int) -> None:
        entry = reservation.entry
        window = self._windows.get(reservation.key_id)
        if entry is None or window is None:
            return
        # The entry may already have left the window; then it no longer counts anyway.
        if window.entries and entry[0] >= window.entries[0][0]:
            window.tokens += tokens - entry[1]
        entry[1] = float(tokens)
        reservation.tokens = tokens

    async def close(self) -> None:
        self._windows.clear()


# KEYS: 1 zset request_id -> arrival ms, 2 hash request_id -> tokens, 3 token sum
# ARGV: window ms, rpm, tpm, request_id, tokens
# Returns {admitted 0|1, retry after ms, which limit} and, when admitted, the window after it:
# {..., requests in it, tokens in it, ms until its oldest request leaves}.
_ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local rpm = tonumber(ARGV[2])
local tpm = tonumber(ARGV[3])
local tokens = tonumber(ARGV[5])
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - window)
if #old > 0 then
  local freed = 0
  for i = 1, #old do
    local v = redis.call('HGET', KEYS[2], old[i])
    if v then freed = freed + tonumber(v) end
    redis.call('HDEL', KEYS[2], old[i])
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  redis.call('DECRBY', KEYS[3], freed)
end
local count = redis.call('ZCARD', KEYS[1])
if count >= rpm then
  local nth = redis.call('ZRANGE', KEYS[1], count - rpm, count - rpm, 'WITHSCORES')
  return {0, tonumber(nth[2]) + window - now, 'rpm'}
end
local used = tonumber(redis.call('GET', KEYS[3]) or '0')
if used + tokens > tpm then
  local needed = used + tokens - tpm
  local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  local freed = 0
  for i = 1, #entries, 2 do
    freed = freed + tonumber(redis.call('HGET', KEYS[2], entries[i]) or '0')
    if freed >= needed then
      return {0, tonumber(entries[i + 1]) + window - now, 'tpm'}
    end
  end
  return {0, window, 'tpm'}
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('HSET', KEYS[2], ARGV[4], tokens)
redis.call('INCRBY', KEYS[3], tokens)
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], window * 2) end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {1, 0, '', count + 1, used + tokens, tonumber(oldest[2]) + window - now}
"""

# KEYS as above; ARGV: request_id, real tokens
_SETTLE_LUA = """
local old = redis.call('HGET', KEYS[2], ARGV[1])
if not old then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('INCRBY', KEYS[3], tonumber(ARGV[2]) - tonumber(old))
return 1
"""


# KEYS: 1 zset as above; ARGV: window ms. Requests of the key inside the window (Redis' clock).
_COUNT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. (now - tonumber(ARGV[1])), '+inf')
"""


class RedisLimiter:
    """Exact sliding-window limits shared by every replica that uses one Redis."""

    def __init__(self, url: str, *, prefix: str = "dg:rl") -> None:
        try:
            from redis.asyncio import Redis
        except ImportError as exc:  # pragma: no cover - redis is a pinned dependency
            raise ConfigError("the redis package is needed for DISTILLGUARD_REDIS_URL") from exc
        from redis.exceptions import RedisError

        self._errors = (RedisError, OSError)
        self._redis = Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        self._prefix = prefix
        self._acquire = self._redis.register_script(_ACQUIRE_LUA)
        self._settle = self._redis.register_script(_SETTLE_LUA)
        self._count = self._redis.register_script(_COUNT_LUA)
        self._pending_settles: list[tuple[str, str, int, asyncio.Future[None]]] = []
        self._flushing: asyncio.Task[None] | None = None

    def _keys(self, key_id: str) -> list[str]:
        # One hash tag per key id: the three keys live on one Redis Cluster slot.
        base = f"{self._prefix}:{{{key_id}}}"
        return [f"{base}:req", f"{base}:tok", f"{base}:sum"]

    async def acquire(
        self, key_id: str, *, request_id: str, rpm: int, tpm: int, tokens: int
    ) -> Reservation:
        if tokens > tpm:
            raise _too_large(tokens, tpm)
        try:
            admitted, retry_ms, which, *after = await self._acquire(
                keys=self._keys(key_id),
                args=[int(WINDOW_S * 1000), rpm, tpm, request_id, tokens],
            )
        except self._errors as exc:
            # Fail closed: without the shared window no replica can keep the limit. The
            # client's message names no internal address; the log has the details.
            log.warning("rate limiter: Redis failed: %s", exc)
            raise StoreError(
                "rate limiter unavailable; retry shortly", code="rate_limiter_unavailable"
            ) from exc
        if not admitted:
            retry = max(float(retry_ms) / 1000.0, 0.001)
            if which == b"tpm":
                raise RateLimited(
                    f"rate limit reached: {tpm} tokens per minute for this key",
                    retry_after=retry,
                    code="tokens_per_minute_exceeded",
                    headers=exhausted_headers("tokens", tpm, retry),
                )
            raise RateLimited(
                f"rate limit reached: {rpm} requests per minute for this key",
                retry_after=retry,
                headers=exhausted_headers("requests", rpm, retry),
            )
        count, used, reset_ms = (int(v) for v in after)
        reset = reset_ms / 1000.0
        state = WindowState(rpm, rpm - count, reset, tpm, tpm - used, reset)
        return Reservation(key_id, request_id, tokens, window=state)

    async def check_rpm(self, key_id: str, *, rpm: int) -> None:
        try:
            count = await self._count(keys=self._keys(key_id)[:1], args=[int(WINDOW_S * 1000)])
        except self._errors as exc:
            log.warning("rate limiter: Redis failed: %s", exc)
            raise StoreError(
                "rate limiter unavailable; retry shortly", code="rate_limiter_unavailable"
            ) from exc
        if count >= rpm:
            raise RateLimited(
                f"rate limit reached: {rpm} requests per minute for this key",
                retry_after=1.0,
            )

    async def settle(self, reservation: Reservation, tokens: int) -> None:
        """Correct the reservation; returns once Redis applied it. Corrections queued while a
        round trip is under way share the next one (one pipeline): under load one round trip
        settles many requests (a round trip per request cost half the gateway's throughput)."""
        if tokens == reservation.tokens:
            return
        reservation.tokens = tokens
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending_settles.append((reservation.key_id, reservation.request_id, tokens, done))
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush_settles())
        await asyncio.shield(done)

    async def _flush_settles(self) -> None:
        try:
            while self._pending_settles:
                batch, self._pending_settles = self._pending_settles, []
                error: BaseException | None = None
                try:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for key_id, request_id, tokens, _ in batch:
                            await self._settle(
                                keys=self._keys(key_id), args=[request_id, tokens], client=pipe
                            )
                        await pipe.execute()
                except Exception as exc:  # every waiter gets an answer, whatever failed
                    # The reservations stay at their (larger) estimate until they leave the
                    # window: the limit errs on the safe side.
                    log.warning("rate limiter: %d settlements lost (Redis: %s)", len(batch), exc)
                    error = StoreError("rate limiter unavailable; settlement not applied")
                for *_, done in batch:
                    if not done.done():
                        if error is None:
                            done.set_result(None)
                        else:
                            done.set_exception(error)
        finally:
            self._flushing = None

    async def close(self) -> None:
        if self._flushing is not None:
            with contextlib.suppress(Exception):
                await self._flushing
        await self._redis.aclose()


def make_limiter(redis_url: str | None) -> RateLimiter:
    """Redis when a URL is configured (replicas share limits), memory otherwise."""
    return RedisLimiter(redis_url) if redis_url else MemoryLimiter()


class UnauthenticatedBudget:
    """How many requests without a valid key each client IP may have logged per minute.

    Anyone can send such requests, so each must cost little: within the budget an attempt
    gets a (truncated) log row; beyond it the gateway answers 429 and only counts it. One
    process, memory only (an attacker spread over replicas gets the budget once per replica,
    still bounded), and at most ``max_ips`` addresses are tracked (the least recently seen
    one is forgotten first), so a flood from many addresses cannot grow the table.
    """

    def __init__(self, per_minute: int, *, max_ips: int = 65_536, clock=time.monotonic) -> None:
        if per_minute < 0 or max_ips < 1:
            raise ConfigError("unauth_log_per_minute must be >= 0 and max_ips >= 1")
        self.per_minute = per_minute
        self._max_ips = max_ips
        self._clock = clock
        self._windows: OrderedDict[str, deque[float]] = OrderedDict()

    def admit(self, ip: str) -> float | None:
        """None: log this attempt; else the seconds until the IP may be logged again."""
        now = self._clock()
        window = self._windows.get(ip)
        if window is None:
            window = self._windows[ip] = deque()
            if len(self._windows) > self._max_ips:
                self._windows.popitem(last=False)
        else:
            self._windows.move_to_end(ip)
        horizon = now - WINDOW_S
        while window and window[0] <= horizon:
            window.popleft()
        if len(window) >= self.per_minute:
            return max(window[0] + WINDOW_S - now, 0.001) if window else WINDOW_S
        window.append(now)
        return None
