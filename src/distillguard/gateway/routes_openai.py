"""``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/responses``, ``/v1/embeddings``:
the gateway's hot path.

A raw ASGI handler (no FastAPI routing, dependency injection or middleware stack on this path:
those cost more than everything below together). One request, top to bottom:

1. read the body: 413 over ``max_body_bytes`` (Content-Length or counted bytes), 408 when it
   does not finish within ``request_timeout_s``;
2. the key (``store.authenticate``, 401/403), the JSON (400), the fields (400), the model (404),
   what the backend cannot serve as asked (400 naming the field: unknown fields; locally,
   tools, images, ...); inline image/audio/file bytes are replaced by a marker in the log;
3. the key's RPM/TPM limiter (429 + Retry-After);
4. the online monitor's decision (throttle 429, block 403, flag, or a defence that changes
   what is served: ``gateway.prevention``);
5. the backend answers (upstream proxy or local generation), streamed or not;
6. the exchange is committed to the log BEFORE the response's last byte leaves (the whole
   body, or a stream's final ``data: [DONE]``), so an answered request survives a SIGKILL;
   the row holds every choice (tool calls, refusals) and the Responses/embeddings answer;
   failures, disconnects and refusals are logged the same way (account null when auth failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from distillguard.errors import (
    AuthError,
    InputError,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    StoreError,
)
from distillguard.gateway import prevention
from distillguard.gateway.backend import SSE_DONE, Job, Outcome, UpstreamStatus
from distillguard.gateway.errors import (
    ClientGone,
    MethodNotAllowed,
    RequestTimeout,
    to_error_response,
)
from distillguard.gateway.limits import ratelimit_headers
from distillguard.gateway.metrics import log_exchange
from distillguard.gateway.quota import charge_key, check_key, take_budget_turn
from distillguard.store.accounts import check_expiry
from distillguard.wire import openai as wire
from distillguard.wire.answers import needs_redaction, redact_media
from distillguard.wire.exchange import ExchangeRecord, new_exchange_id
from distillguard.wire.openai import EMBEDDINGS_PATH, RESPONSES_PATH, parse_request

if TYPE_CHECKING:
    from distillguard.gateway.runtime import GatewayState
    from distillguard.store.accounts import KeyIdentity

log = logging.getLogger("distillguard.gateway")

OPENAI_PATHS = wire.REQUEST_PATHS
_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_LOGGED_RAW_CHARS = 4096  # an unparsable body is logged as its first characters
# Deepest JSON nesting a request may have. orjson parses 1,024 levels but serializes only 255:
# a body between the two would be served and then fail its log row. No OpenAI request nests
# beyond ~10 levels (tool schemas included); 64 leaves room and stays far below 255.
MAX_JSON_DEPTH = 64
# Bodies above this size have their prompt tokens counted on a worker thread (a 1 MB prompt
# takes ~100 ms to tokenize: on the event loop that would stall every other tenant).
_TOKENIZE_OFF_LOOP_BYTES = 64 * 1024


@dataclass
class Attempt:
    """Everything the log row needs, gathered as the request moves along."""

    request_id: str
    ts: float
    started: float  # perf_counter at arrival
    endpoint: str
    ip: str
    user_agent: str | None
    identity: KeyIdentity | None = None
    logged_body: Any = None
    raw: bytes | None = None  # the body as received, for the log when it was never decoded
    model: str | None = None
    status: int = 200
    error: str | None = None

    @classmethod
    def arriving(cls, state: GatewayState, scope: dict, **fields: Any) -> Attempt:
        """The attempt for a request that just arrived: id, clock, path, client, user agent.
        The client IP is the TCP peer unless that is a trusted proxy (``clientip``)."""
        client = scope.get("client")
        peer = client[0] if client else ""
        address = state.client_resolver.resolve(peer, _header(scope, b"x-forwarded-for"))
        if address.header_rejected:
            state.metrics.rejected_forwarded_for.inc()
        ua = _header(scope, b"user-agent")
        return cls(
            request_id=new_request_id(),
            ts=time.time(),
            started=time.perf_counter(),
            endpoint=scope["path"],
            ip=address.ip,
            user_agent=ua.decode("latin-1") if ua is not None else None,
            **fields,
        )


def new_request_id() -> str:
    """Unique exchange id: a ms clock (keeps the log's primary-key index compact) and 64
    random bits. Random, not a counter: ids a client sees must not reveal how much traffic
    the gateway serves."""
    return new_exchange_id()


def _header(scope: dict, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def _read_body(scope: dict, receive, limit: int, timeout_s: float) -> bytes:
    """The whole request body; PayloadTooLarge, RequestTimeout or ClientGone otherwise."""
    declared = _header(scope, b"content-length")
    too_large = declared is not None and declared.isdigit() and int(declared) > limit
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    too_large = True
                if not too_large:
                    chunks.append(chunk)
                elif size > 8 * limit:
                    break  # stop draining an absurd body; the connection is closed after 413
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise RequestTimeout(
            f"the request body did not arrive within {timeout_s:g} s", code="request_timeout"
        ) from None
    if too_large:
        raise PayloadTooLarge(
            f"request body is {max(size, int(declared or 0))} bytes; the limit is {limit}",
            code="request_too_large",
        )
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _read_prefix(receive, keep: int, timeout_s: float) -> tuple[bytes, int, bool]:
    """At most ``keep`` bytes of a body nobody will serve (the key was refused): (prefix,
    bytes received, whether the body ended). Stops reading as soon as ``keep`` bytes are in:
    a rejected request must cost the server little."""
    chunks: list[bytes] = []
    size = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            while size < keep:
                message = await receive()
                if message["type"] == "http.disconnect":
                    break
                chunk = message.get("body", b"")
                size += len(chunk)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)[:keep], size, True
    return b"".join(chunks)[:keep], size, False


def _too_deep(value: Any, limit: int) -> bool:
    """Whether a decoded JSON value nests deeper than ``limit`` containers (iterative: a
    hostile body must not exhaust the stack). Visits containers only; strings and numbers,
    most of a request's bytes, cost nothing."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


def _decode(raw: bytes, attempt: Attempt) -> dict[str, Any]:
    """The JSON object in the body; InputError (400) for anything else."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        attempt.logged_body = {"_unparsed": raw[:_LOGGED_RAW_CHARS].decode("utf-8", "replace")}
        reason = "invalid UTF-8" if "utf-8" in str(exc).lower() else "malformed JSON"
        raise InputError(
            f"request body is not valid JSON ({reason}): {exc}", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        # The log keeps a JSON object per request: a bare number or string stored as a column
        # value gets SQLite's numeric affinity and no longer reads back as JSON.
        attempt.logged_body = {"_unparsed": raw[:_LOGGED_RAW_CHARS].decode("utf-8", "replace")}
        raise InputError("request body must be a JSON object", code="invalid_json")
    if _too_deep(body, MAX_JSON_DEPTH):
        attempt.logged_body = {"_unparsed": raw[:_LOGGED_RAW_CHARS].decode("utf-8", "replace")}
        raise InputError(
            f"request body nests deeper than {MAX_JSON_DEPTH} levels", code="invalid_json"
        )
    # Inline media (a base64 image) never reaches the log: a marker with its hash does.
    attempt.logged_body = redact_media(body) if needs_redaction(body) else body
    return body


async def handle_openai(state: GatewayState, scope: dict, receive, send) -> None:
    """The ASGI handler for the four model endpoints (see the module docstring)."""
    attempt = Attempt.arriving(state, scope)
    outcome = Outcome()
    reservation = None
    budget_turn = None  # a budgeted key's lock, held from its check to its charge
    limit_headers: list[tuple[bytes, bytes]] = []  # OpenAI's x-ratelimit-*, once admitted
    state.metrics.in_flight.inc()
    try:
        if scope["method"] != "POST":
            raise MethodNotAllowed(f"{scope['method']} is not allowed here; use POST")
        settings = state.settings
        # The key first: a request without a valid one is read only as far as its log needs.
        try:
            identity = state.auth.authenticate(_header(scope, b"authorization"))
        except (AuthError, PermissionDenied) as refused:
            await _refuse_unauthenticated(state, attempt, refused, receive, send)
            raise _StreamEnded() from None
        attempt.identity = identity
        budget_turn = await take_budget_turn(state, identity)
        await check_key(state, identity)  # expiry, token and spend budgets
        raw = attempt.raw = await _read_body(
            scope, receive, settings.max_body_bytes, settings.request_timeout_s
        )
        body = _decode(raw, attempt)
        model = body.get("model")
        attempt.model = model if isinstance(model, str) else None
        request = parse_request(attempt.endpoint, body)
        state.backend.check_model(request.model)
        state.backend.check_request(request)  # 400 naming what it cannot serve as asked
        job = Job(attempt.endpoint, body, raw, request, attempt.request_id, identity.account_id)
        rpm = identity.rpm or settings.default_rpm
        tpm = identity.tpm or settings.default_tpm

        if len(raw) > _TOKENIZE_OFF_LOOP_BYTES:
            # A large prompt: refuse a key that is out of requests before paying to tokenize
            # it, then tokenize on a worker thread, never on the loop every tenant shares.
            await state.limiter.check_rpm(identity.key_id, rpm=rpm)
            prompt_tokens = await asyncio.to_thread(state.backend.count_prompt_tokens, job)
        else:
            prompt_tokens = state.backend.count_prompt_tokens(job)
        # Reserve the most the request may produce; settled to the real usage afterwards.
        # Without max_tokens the worst case is the backend's default output (capped at the
        # key's whole budget): reserving only the prompt let concurrent requests overrun TPM.
        output = request.output_limit()
        if output is not None:
            reserved = prompt_tokens + output * request.n
        else:
            worst = prompt_tokens + state.backend.default_output_tokens * request.n
            reserved = max(prompt_tokens, min(worst, tpm))
        try:
            reservation = await state.limiter.acquire(
                identity.key_id, request_id=attempt.request_id, rpm=rpm, tpm=tpm, tokens=reserved
            )
        except RateLimited as limited:
            hint_codes = ("tokens_per_minute_exceeded", "request_too_large")
            if output is None and limited.code in hint_codes:
                limited.message += (
                    f" (without max_tokens a request reserves up to {reserved} tokens; "
                    "set max_tokens to reserve less)"
                )
            raise
        await _enforce(state, attempt, job, identity, body)

        limit_headers = ratelimit_headers(reservation.window)  # OpenAI's x-ratelimit-*
        if request.stream:
            await _serve_stream(state, attempt, job, outcome, receive, send, limit_headers)
        else:
            reply = await prevention.complete(state, job, outcome)
            attempt.status = reply.status
            attempt.error = outcome.error
            if not await _write_log(state, attempt, outcome):
                raise StoreError(
                    "the exchange could not be logged; not answering unlogged",
                    code="exchange_not_logged",
                )
            headers = [(b"content-type", reply.content_type), *limit_headers]
            await _respond(send, attempt, reply.status, headers, reply.body)
    except ClientGone:
        attempt.status = 499  # nginx's "client closed request": nothing was answered
        attempt.error = "client disconnected before the request body was complete"
        await _write_log(state, attempt, outcome)
    except UpstreamStatus as refused:
        attempt.status = refused.reply.status
        attempt.error = outcome.error
        await _write_log(state, attempt, outcome)
        reply = refused.reply
        headers = [(b"content-type", reply.content_type), *limit_headers]
        await _respond(send, attempt, reply.status, headers, reply.body)
    except _StreamEnded:
        pass  # answered (a stream, or a refused key) and logged inside
    except Exception as exc:  # every failure answers in OpenAI's shape, and is logged
        err = to_error_response(exc)
        if attempt.identity is None:  # e.g. a wrong method: bounded like a refused key
            over = _over_unauthenticated_budget(state, attempt)
            if over is not None:
                headers = [*over.headers, (b"connection", b"close")]
                await _respond(send, attempt, over.status, headers, over.body)
                return
        attempt.status = err.status
        attempt.error = err.message
        headers = list(err.headers)
        if err.status in (408, 413):
            headers.append((b"connection", b"close"))  # the body may still be arriving
            if attempt.raw is None:  # nothing (complete) to keep: say why the body is absent
                attempt.logged_body = {"_omitted": err.message}
        await _write_log(state, attempt, outcome)
        await _respond(send, attempt, err.status, headers, err.body)
    finally:
        state.metrics.in_flight.dec()
        if reservation is not None:
            used = (outcome.prompt_tokens or 0) + (outcome.completion_tokens or 0)
            if outcome.prompt_tokens is None and outcome.completion_tokens is None:
                used = reservation.tokens if attempt.status == 200 else 0
            try:
                await state.limiter.settle(reservation, used)
            except Exception:
                log.exception("could not settle a rate-limit reservation")
        if attempt.identity is not None and attempt.identity.budgeted:
            try:
                await charge_key(
                    state,
                    attempt.identity,
                    outcome.prompt_tokens or 0,
                    outcome.completion_tokens or 0,
                )
            finally:
                if budget_turn is not None:
                    budget_turn.release()
        if state.monitor is not None and attempt.identity is not None and attempt.status == 200:
            try:
                state.monitor.record(
                    account_id=attempt.identity.account_id,
                    response_text=outcome.text or "",
                    completion_tokens=outcome.completion_tokens or 0,
                    ts=attempt.ts,
                )
            except Exception:
                log.exception("online monitor failed to record an exchange")
                state.metrics.state_errors.labels("monitor").inc()


def _bounded_body(prefix: bytes, received: int, complete: bool) -> dict[str, Any]:
    """The log's copy of a refused request's body: the JSON object when it was small enough
    to read whole, its first bytes as text otherwise."""
    if complete:
        with contextlib.suppress(orjson.JSONDecodeError):
            body = orjson.loads(prefix)
            if isinstance(body, dict) and not _too_deep(body, MAX_JSON_DEPTH):
                return redact_media(body) if needs_redaction(body) else body
    text = prefix.decode("utf-8", "replace")
    return {"_unparsed": text, "_bytes_read": received, "_truncated": not complete}


def _over_unauthenticated_budget(state: GatewayState, attempt: Attempt) -> Any:
    """The 429 for a request without a valid key from an IP over its log budget (counted, no
    row), or None: log it. Every refusal before a key was accepted goes through here."""
    retry_after = state.unauth_budget.admit(attempt.ip)
    if retry_after is None:
        return None
    state.metrics.unlogged_unauthenticated.inc()
    return to_error_response(
        RateLimited(
            "too many requests without a valid API key from this address; "
            "send a valid key or retry later",
            retry_after=retry_after,
            code="too_many_unauthenticated",
        )
    )


async def _refuse_unauthenticated(
    state: GatewayState, attempt: Attempt, refused: Exception, receive, send
) -> None:
    """Answer a request whose key was refused. Anyone can send these, so each is cheap and
    bounded: only the first ``unauth_logged_body_bytes`` of the body are read and logged, and
    an IP over ``unauth_log_per_minute`` such requests gets 429 with no row (counted)."""
    settings = state.settings
    keep = settings.unauth_logged_body_bytes
    prefix, received, complete = await _read_prefix(receive, keep, settings.request_timeout_s)
    err = to_error_response(refused)
    headers = list(err.headers)
    if not complete:
        headers.append((b"connection", b"close"))  # the rest of the body is not read
    over = _over_unauthenticated_budget(state, attempt)
    if over is not None:
        await _respond(send, attempt, over.status, [*over.headers, *headers[1:]], over.body)
        return
    attempt.logged_body = _bounded_body(prefix, received, complete)
    attempt.status = err.status
    attempt.error = err.message
    await _write_log(state, attempt, Outcome())
    await _respond(send, attempt, err.status, headers, err.body)


async def _respond(
    send, attempt: Attempt, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    """One complete response; ``x-request-id`` names the exchange's row in the log."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"x-request-id", attempt.request_id.encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _StreamEnded(Exception):
    """Internal: the stream was sent (or cut by the client) and its row is logged."""


async def _serve_stream(
    state: GatewayState,
    attempt: Attempt,
    job: Job,
    outcome: Outcome,
    receive,
    send,
    extra_headers: list[tuple[bytes, bytes]],
) -> None:
    frames = prevention.stream(state, job, outcome)
    try:
        # The first frame before the headers: a refused upstream request still gets its status.
        first = await anext(frames, None)
        if first is not None:
            elapsed = time.perf_counter() - attempt.started
            state.metrics.observe_first_token(attempt.endpoint, attempt.model, elapsed)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    *_SSE_HEADERS,
                    *extra_headers,
                    (b"x-request-id", attempt.request_id.encode()),
                ],
            }
        )
        disconnected = asyncio.ensure_future(receive())  # completes on http.disconnect
        sent_chunks = 0
        try:
            item = first
            while item is not None:
                if disconnected.done():
                    attempt.error = f"client disconnected after {sent_chunks} chunks"
                    break
                frame, text = item
                await send({"type": "http.response.body", "body": frame, "more_body": True})
                sent_chunks += 1
                if text:
                    outcome.text_parts.append(text)
                item = await anext(frames, None)
        except Exception as exc:
            # Headers are gone: report the failure in the stream, as OpenAI does, then end it.
            err = to_error_response(exc)
            attempt.error = err.message
            await send(
                {
                    "type": "http.response.body",
                    "body": b"data: " + err.body + b"\n\n",
                    "more_body": True,
                }
            )
        finally:
            disconnected.cancel()
        if await _write_log(state, attempt, outcome):
            # The Responses API ends its stream with `response.completed`, not [DONE].
            done = b"" if attempt.endpoint == RESPONSES_PATH else SSE_DONE
            await send({"type": "http.response.body", "body": done, "more_body": False})
        else:
            # Nothing is served unlogged: without its row the stream ends in an error, never
            # in [DONE] (clients treat a stream without [DONE] as failed).
            failed = to_error_response(
                StoreError(
                    "the exchange could not be logged; this answer is void",
                    code="exchange_not_logged",
                )
            )
            await send({"type": "http.response.body", "body": b"data: " + failed.body + b"\n\n"})
        raise _StreamEnded()
    finally:
        await frames.aclose()  # stops the upstream request or the local generation row


async def _enforce(
    state: GatewayState, attempt: Attempt, job: Job, identity: KeyIdentity, body: dict[str, Any]
) -> None:
    """Act on the actions in force on the account (the monitor sees the request first, and
    what its policy decides is recorded there: ``gateway.state``)."""
    decision = await state.enforcement.check(
        account_id=identity.account_id,
        key_id=identity.key_id,
        payment_fingerprint=identity.payment_fingerprint,
        ip=attempt.ip,
        user_agent=attempt.user_agent,
        endpoint=attempt.endpoint,
        request=body,
        ts=attempt.ts,
    )
    action = decision.action
    if action == "allow":
        return
    state.metrics.actions.labels(action).inc()
    # Refusals say what the client may do, never why the detector decided: the reasons are
    # an evasion guide. They stay in the actions table for the operator.
    if action == "block":
        raise PermissionDenied(
            "this account's access to the API is suspended; contact support",
            code="account_blocked",
        )
    if action == "throttle":
        retry_after = decision.retry_after or 60.0
        raise RateLimited(
            f"this account is temporarily rate limited; retry after {retry_after:.0f} s",
            retry_after=retry_after,
            code="account_throttled",
        )
    await prevention.prepare(state, job, attempt, decision)  # the graduated defences


def _logged_request(attempt: Attempt) -> Any:
    """The request body for the log, also for attempts refused before it was decoded."""
    if attempt.logged_body is not None:
        return attempt.logged_body
    if not attempt.raw:
        return {}
    try:
        return orjson.loads(attempt.raw)
    except orjson.JSONDecodeError:
        return {"_unparsed": attempt.raw[:_LOGGED_RAW_CHARS].decode("utf-8", "replace")}


async def _write_log(state: GatewayState, attempt: Attempt, outcome: Outcome) -> bool:
    """Commit the exchange's row (awaited: durable before the client's last byte); False
    when the log could not take it."""
    latency_s = time.perf_counter() - attempt.started
    identity = attempt.identity
    # Marked answers only: an embedding is not sampled, a failure answered nothing.
    marked = attempt.status == 200 and attempt.endpoint != EMBEDDINGS_PATH
    record = ExchangeRecord(
        id=attempt.request_id,
        ts=attempt.ts,
        account_id=identity.account_id if identity else None,
        key_id=identity.key_id if identity else None,
        ip=attempt.ip,
        user_agent=attempt.user_agent,
        payment_fingerprint=identity.payment_fingerprint if identity else None,
        endpoint=attempt.endpoint,
        request=_logged_request(attempt),
        response_text=outcome.text,
        prompt_tokens=outcome.prompt_tokens,
        completion_tokens=outcome.completion_tokens,
        status=attempt.status,
        latency_ms=latency_s * 1000.0,
        model=attempt.model,
        error=attempt.error,
        watermark_scheme=state.backend.watermark_scheme if marked else None,
        watermark_key_id=state.backend.watermark_key_id if marked else None,
        choices=outcome.logged_choices(),
        response=outcome.response,
    )
    written = True
    try:
        await state.exchange_log.write(record)
    except Exception:
        written = False
        log.exception("exchange log write failed", extra={"fields": {"id": attempt.request_id}})
        model_label = state.metrics.model_label(attempt.model)
        state.metrics.requests.labels(attempt.endpoint, model_label, "log_failed").inc()
    state.metrics.observe(
        attempt.endpoint,
        attempt.status,
        latency_s,
        outcome.prompt_tokens,
        outcome.completion_tokens,
        attempt.model,
    )
    log_exchange(
        {
            "id": attempt.request_id,
            "endpoint": attempt.endpoint,
            "status": attempt.status,
            "account_id": record.account_id,
            "key_id": record.key_id,
            "ip": attempt.ip,
            "latency_ms": None if record.latency_ms is None else round(record.latency_ms, 3),
            "prompt_tokens": outcome.prompt_tokens,
            "completion_tokens": outcome.completion_tokens,
            "error": attempt.error,
        }
    )
    return written


async def handle_models(state: GatewayState, scope: dict, receive, send) -> None:
    """``GET /v1/models``: the served models, for an authenticated key (logged like the rest)."""
    attempt = Attempt.arriving(state, scope, logged_body={})
    outcome = Outcome()
    try:
        if scope["method"] != "GET":
            raise MethodNotAllowed(f"{scope['method']} is not allowed here; use GET")
        attempt.identity = state.auth.authenticate(_header(scope, b"authorization"))
        check_expiry(attempt.identity)
        body = orjson.dumps(
            wire.model_list(state.backend.model_ids(), created=int(state.started_at))
        )
        await _write_log(state, attempt, outcome)
        await _respond(send, attempt, 200, _JSON_HEADERS, body)
    except Exception as exc:
        err = to_error_response(exc)
        if attempt.identity is None:
            over = _over_unauthenticated_budget(state, attempt)
            if over is not None:
                await _respond(send, attempt, over.status, list(over.headers), over.body)
                return
        attempt.status, attempt.error = err.status, err.message
        await _write_log(state, attempt, outcome)
        await _respond(send, attempt, err.status, list(err.headers), err.body)
