"""Proxy mode: forward requests to another OpenAI-compatible server (vLLM, llama.cpp, OpenAI).

One keep-alive connection pool (``httpclient.HttpClient``, a lean asyncio + httptools client:
the proxy's own cost is mostly its HTTP client, see that module) serves every request. Bodies
are forwarded as the client sent them whenever nothing needs changing, so the proxy adds no
JSON encoding to the hot path.

Streams are passed on event by event. Two things change on the way:
- the upstream's final ``data: [DONE]`` is held back: the route sends it itself, after the log
  row is committed;
- the gateway always asks the upstream for usage (``stream_options.include_usage``) to charge
  the key's token limit exactly, and drops that usage chunk again when the client did not ask.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import Any

import orjson

from distillguard.errors import InputError, NotFound, UpstreamError
from distillguard.gateway.backend import Job, Outcome, Reply, UpstreamStatus
from distillguard.gateway.engine_marking import UpstreamMarking
from distillguard.gateway.httpclient import HttpClient
from distillguard.wire import answers
from distillguard.wire.openai import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    EMBEDDINGS_PATH,
    RESPONSES_PATH,
    AnyRequest,
    EmbeddingsRequest,
)

log = logging.getLogger("distillguard.gateway.upstream")

_LOGPROB_FIELDS = ("logprobs", "top_logprobs")
_USAGE_IN_STREAM = frozenset({CHAT_PATH, COMPLETIONS_PATH})


def _base_url(url: str) -> str:
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _estimate_tokens(text: str) -> int:
    # ~3.4-4 characters per token for English BPE vocabularies; rounds up so short prompts count.
    return len(text) // 4 + 1


class UpstreamBackend:
    watermark_scheme: str | None = None  # the upstream owns its sampling
    watermark_key_id: int | None = None
    # Without max_tokens the upstream decides the length: the limiter reserves this much per
    # choice (capped at the key's whole TPM), the worst case of a typical served model, and
    # settles to the real usage once the answer is complete. Reserving only the prompt let a
    # wave of 64 concurrent requests take 4.5x a key's TPM.
    default_output_tokens = 4096

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 600.0,
        marking: UpstreamMarking | None = None,
    ) -> None:
        self.base_url = _base_url(url)
        self.marking = marking  # the engine marks: send it the account (engine_marking.py)
        if marking is not None:
            self.watermark_scheme, self.watermark_key_id = marking.scheme, marking.key_id
        self._timeout_s = timeout_s  # longest wait for the upstream's response head
        self._client: HttpClient | None = None
        self._models: list[str] = []
        headers = [(b"content-type", b"application/json"), (b"accept", b"*/*")]
        if api_key:
            headers.append((b"authorization", f"Bearer {api_key}".encode()))
        self._headers = tuple(headers)

    async def start(self) -> None:
        self._client = HttpClient(self.base_url)
        await self.refresh_models()

    async def refresh_models(self) -> None:
        """Learn which models the upstream serves; unknown names then get 404 here."""
        try:
            resp = await self._http.request(
                "GET", "/v1/models", headers=self._headers, timeout_s=10.0
            )
            body = await resp.read()
            if resp.status == 200:
                data = orjson.loads(body)
                self._models = [m["id"] for m in data.get("data", []) if "id" in m]
                return
            log.warning("upstream /v1/models answered %s: model names not checked", resp.status)
        except (UpstreamError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("upstream /v1/models unavailable (%s): model names not checked", exc)
        self._models = []

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    @property
    def _http(self) -> HttpClient:
        if self._client is None:
            raise UpstreamError("upstream client not started")
        return self._client

    def model_ids(self) -> list[str]:
        return list(self._models)

    def check_model(self, model: str) -> None:
        if self._models and model not in self._models:
            raise NotFound(
                f"The model '{model}' does not exist", param="model", code="model_not_found"
            )

    def check_request(self, request: AnyRequest) -> None:
        """Every OpenAI field is forwarded; an unknown top-level field is a 400 naming it
        (engine extensions such as vLLM's ``top_k`` pass: ``wire.openai``)."""
        unknown = request.unknown_fields()
        if unknown:
            raise InputError(
                f"Unrecognized request argument(s) supplied: {', '.join(unknown)}",
                param=unknown[0],
                code="unknown_parameter",
            )

    def count_prompt_tokens(self, job: Job) -> int:
        request = job.request
        if isinstance(request, EmbeddingsRequest) and request.input_token_ids():
            return request.input_token_ids()  # token ids: the count is exact
        return _estimate_tokens(request.prompt_text())

    def _payload(self, job: Job, *, want_usage: bool) -> bytes:
        body: dict[str, Any] | None = None
        if job.degrade and any(f in job.body for f in _LOGPROB_FIELDS):
            # Degraded service: no log-probabilities (the richest signal for distillation).
            body = {k: v for k, v in job.body.items() if k not in _LOGPROB_FIELDS}
        if job.degrade and isinstance(job.body.get("include"), list):
            # The Responses API asks for them in `include` ("message.output_text.logprobs").
            body = dict(body if body is not None else job.body)
            body["include"] = [i for i in job.body["include"] if "logprobs" not in str(i)]
        # Usage in the stream: chat and completions only (a Responses stream ends with it).
        if want_usage and job.endpoint in _USAGE_IN_STREAM and not job.request.include_usage():
            body = dict(body if body is not None else job.body)
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        if self.marking is not None and job.endpoint != EMBEDDINGS_PATH:  # vectors: unsampled
            body = self.marking.mark_body(body if body is not None else job.body, job.account_id)
        return job.raw if body is None else orjson.dumps(body)

    async def complete(self, job: Job, outcome: Outcome) -> Reply:
        resp = await self._http.request(
            "POST",
            job.endpoint,
            self._payload(job, want_usage=False),
            self._headers,
            timeout_s=self._timeout_s,
        )
        body = await resp.read(timeout_s=self._timeout_s)
        status = resp.status
        if status >= 500:
            raise UpstreamError(f"upstream failed with status {status}: {body[:200]!r}")
        if status == 200:
            _read_answer(body, outcome, job.endpoint)
        else:
            outcome.error = f"upstream status {status}: {body[:500].decode('utf-8', 'replace')}"
        content_type = resp.header(b"content-type", b"application/json") or b"application/json"
        return Reply(status, body, content_type)

    async def stream(self, job: Job, outcome: Outcome) -> AsyncGenerator[tuple[bytes, str], None]:
        client_wants_usage = job.request.include_usage()
        resp = await self._http.request(
            "POST",
            job.endpoint,
            self._payload(job, want_usage=True),
            self._headers,
            timeout_s=self._timeout_s,
        )
        try:
            if resp.status != 200:
                body = await resp.read(timeout_s=self._timeout_s)
                if resp.status >= 500:
                    raise UpstreamError(f"upstream failed with status {resp.status}")
                outcome.error = f"upstream status {resp.status}"
                raise UpstreamStatus(resp.status, body)
            if job.endpoint in _USAGE_IN_STREAM:
                outcome.stream_choices = answers.ChoiceAccumulator(chat=job.is_chat)
            pending = b""
            event = b""  # the Responses API names its events (`event: response.created`)
            async for chunk in resp.chunks(timeout_s=self._timeout_s):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.startswith(b"event:"):
                        event = b"event: " + line[6:].strip() + b"\n"
                        continue
                    if not line.startswith(b"data:"):
                        if not line.strip():
                            event = b""  # an event ends at its blank line
                        continue  # comments (": ping")
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        continue  # sent by the route once the row is committed
                    text, is_usage_only = _read_chunk(payload, outcome, job.endpoint)
                    if is_usage_only and not client_wants_usage:
                        continue
                    yield event + b"data: " + payload + b"\n\n", text
        finally:
            # Read to the end: back to the pool. Cut short (client gone): the connection is
            # closed, which also stops the upstream's generation.
            resp.release(reuse=True)


def _read_answer(body: bytes, outcome: Outcome, endpoint: str) -> None:
    """Fill the log's text, choices, answer object and token counts from a complete upstream
    answer (every choice, tool calls and refusals included: ``wire.answers``)."""
    try:
        data = orjson.loads(body)
        if not isinstance(data, dict):
            raise TypeError("not an object")
        if endpoint == RESPONSES_PATH:
            _read_response_object(data, outcome)
            return
        usage = data.get("usage") or {}
        outcome.prompt_tokens = usage.get("prompt_tokens")
        if endpoint == EMBEDDINGS_PATH:
            outcome.response = answers.embeddings_log(data)
            outcome.completion_tokens = 0  # embeddings generate nothing
            return
        outcome.completion_tokens = usage.get("completion_tokens")
        chat = endpoint == CHAT_PATH
        choices = answers.chat_choices(data) if chat else answers.completion_choices(data)
        outcome.choices = choices
        text = answers.first_text(choices)
        if text:
            outcome.text_parts.append(text)
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        outcome.error = "upstream answer is not OpenAI-shaped JSON"


def _read_response_object(response: dict[str, Any], outcome: Outcome) -> None:
    """A Responses API ``response`` (whole, or a stream's final event) into the outcome."""
    outcome.response = answers.responses_log(response)
    outcome.choices = [answers.responses_choice(response)]
    outcome.prompt_tokens, outcome.completion_tokens = answers.responses_usage(response)
    text = answers.responses_text(response)
    if text and not outcome.text_parts:  # a stream's deltas already carried it
        outcome.text_parts.append(text)


# The Responses stream events that carry the whole answer object (the last event of a stream).
_FINAL_RESPONSE_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def _read_chunk(payload: bytes, outcome: Outcome, endpoint: str) -> tuple[str, bool]:
    """Choice 0's new text in one stream event (every choice goes into the outcome's
    accumulator, usage into its counts), and whether the event carries only usage."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return "", False
    if not isinstance(data, dict):
        return "", False
    if endpoint == RESPONSES_PATH:
        kind = data.get("type")
        if kind == "response.output_text.delta":
            delta = data.get("delta")
            return (delta if isinstance(delta, str) else ""), False
        if kind in _FINAL_RESPONSE_EVENTS and isinstance(data.get("response"), dict):
            _read_response_object(data["response"], outcome)
        return "", False
    usage = data.get("usage")
    if usage:
        outcome.prompt_tokens = usage.get("prompt_tokens")
        outcome.completion_tokens = usage.get("completion_tokens")
    choices = data.get("choices")
    new_text = outcome.stream_choices.feed(data) if outcome.stream_choices is not None else ""
    return new_text, bool(usage) and not choices
