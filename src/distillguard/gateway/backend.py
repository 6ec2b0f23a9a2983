"""What serves a validated request: the contract between the route and its two backends.

``UpstreamBackend`` (``upstream.py``) forwards to another OpenAI-compatible server;
``LocalBackend`` (``local.py``) generates with a ``GenerationEngine``. The route does
everything else (auth, limits, policy, log, metrics) the same way for both.

A backend fills an ``Outcome`` as it serves, so the route can log exactly what the client got,
including for a stream cut off half way.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Protocol

from distillguard.wire.openai import ChatCompletionRequest, CompletionRequest

SSE_DONE = b"data: [DONE]\n\n"


@dataclass
class Job:
    """One validated request on its way to a backend."""

    endpoint: str  # "/v1/chat/completions" | "/v1/completions"
    body: dict[str, Any]  # the decoded JSON body (forwarded upstream)
    raw: bytes  # the body as received (forwarded unchanged when nothing was altered)
    request: ChatCompletionRequest | CompletionRequest
    request_id: str
    account_id: str
    degrade: bool = False  # online monitor asked to serve a reduced answer
    prevention: Any = None  # gateway.prevention.Plan: the defence the account is served under
    logits_hook: Any = None  # local mode: models.sampling.LogitsHook (antidistillation)
    backend_state: Any = None  # what the backend derived once (local: prompt ids, params)

    @property
    def is_chat(self) -> bool:
        return self.endpoint == "/v1/chat/completions"


@dataclass
class Outcome:
    """What was actually served (first choice's text, token counts): the log row's content."""

    text_parts: list[str] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None

    @property
    def text(self) -> str | None:
        return "".join(self.text_parts) if self.text_parts else None


@dataclass(frozen=True)
class Reply:
    """A complete non-streamed answer."""

    status: int
    body: bytes
    content_type: bytes = b"application/json"


class UpstreamStatus(Exception):
    """The upstream answered a stream request with an error: pass it to the client as is."""

    def __init__(self, status: int, body: bytes, content_type: bytes = b"application/json"):
        super().__init__(f"upstream answered {status}")
        self.reply = Reply(status, body, content_type)


class Backend(Protocol):
    watermark_scheme: str | None
    watermark_key_id: int | None
    default_output_tokens: int  # reserved against TPM when a request gives no max_tokens

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def model_ids(self) -> list[str]: ...

    def check_model(self, model: str) -> None:
        """NotFound for a model this backend does not serve."""

    def count_prompt_tokens(self, job: Job) -> int:
        """Exact where the tokenizer is known, an estimate (chars / 4) otherwise."""

    async def complete(self, job: Job, outcome: Outcome) -> Reply: ...

    def stream(self, job: Job, outcome: Outcome) -> AsyncGenerator[tuple[bytes, str], None]:
        """(SSE frame ``data: ...\\n\\n``, first choice's new text) pairs, without the final
        ``[DONE]``, which the route sends after the log row is committed; the route adds the
        text to ``outcome`` once the frame is sent. Raises ``UpstreamStatus`` before the first
        frame when the upstream refuses the request."""
        ...
