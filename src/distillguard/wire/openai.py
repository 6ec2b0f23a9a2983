"""OpenAI's wire shapes: requests, responses, stream chunks, errors, model lists.

The one module that knows them. Requests are pydantic models, validated once per request;
responses are built by the functions at the end of this module as plain dicts (``orjson``
serialises them faster than a model would) and the response models document the same shapes
and let tests validate them.

Requests are validated strictly (``"0.5"`` is not a temperature, ``2.0`` is not an ``n``):
a wrong type is the client's error and gets a 400 naming the field, never a silent coercion.
Fields OpenAI has and we do not interpret (``tools``, ``user``, ``presence_penalty``, ...) are
kept (``extra="allow"``) so the upstream proxy forwards them unchanged; the local backend
ignores them.

"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# The largest output a request may ask for. Larger values are a client bug, not a request:
# they would reserve a whole minute of a key's token budget for nothing.
MAX_TOKENS_LIMIT = 131_072
MAX_CHOICES = 16  # `n`: each choice is a separate generation row
MAX_STOP_SEQUENCES = 4  # as OpenAI


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
MaxTokens = Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)]


class _Sampling(_Strict):
    model: str = Field(min_length=1)
    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES)] = 1
    stop: str | list[str] | None = None
    # OpenAI's seed is a 64-bit integer; a larger one (2**64 - 1 + n) broke the local sampler.
    seed: Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: MaxTokens | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        return value

    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return tuple(s for s in stops if s)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: MaxTokens | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs=true")
        return self

    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def prompt_text(self) -> str:
        return "\n".join(m.text() for m in self.messages)


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(min_length=1)
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("exactly one prompt per request")
        return value

    def output_limit(self) -> int | None:
        return self.max_tokens

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


# --- responses (shapes of what the gateway returns) -----------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None
    finish_reason: Literal["stop", "length"] | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None
    system_fingerprint: str | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["stop", "length"] | None


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    error: ErrorDetail


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def parse_request(endpoint: str, body: dict[str, Any]) -> ChatCompletionRequest | CompletionRequest:
    """Validate a decoded body for ``endpoint``; raises pydantic's ValidationError."""
    if endpoint == "/v1/chat/completions":
        return ChatCompletionRequest.model_validate(body)
    return CompletionRequest.model_validate(body)


# --- response builders (plain dicts for orjson; the shapes of the models above) ----------------

Json = dict[str, Any]
FinishReason = str | None  # "stop" | "length" (the engine's and OpenAI's reasons)


def usage(prompt_tokens: int, completion_tokens: int) -> Json:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_id(request_id: str, *, chat: bool) -> str:
    """The response id for the exchange ``request_id`` (its log row)."""
    return ("chatcmpl-" if chat else "cmpl-") + request_id


def chat_choice(index: int, text: str, logprobs: Json | None, finish: FinishReason) -> Json:
    message = {"role": "assistant", "content": text}
    return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish}


def text_choice(index: int, text: str, logprobs: Json | None, finish: FinishReason) -> Json:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}


def completion(
    *,
    chat: bool,
    request_id: str,
    created: int,
    model: str,
    choices: list[Json],
    usage: Json | None,
    system_fingerprint: str | None,
) -> Json:
    """A whole ``chat.completion`` or ``text_completion`` body."""
    body: Json = {
        "id": completion_id(request_id, chat=chat),
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage,
    }
    if system_fingerprint is not None:
        body["system_fingerprint"] = system_fingerprint
    return body


def chunk_base(
    *, chat: bool, request_id: str, created: int, model: str, system_fingerprint: str | None
) -> Json:
    """The fields every chunk of one stream repeats (``choices`` added per chunk)."""
    return {
        "id": completion_id(request_id, chat=chat),
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": system_fingerprint,
    }


def chat_delta(
    index: int, delta: Json, logprobs: Json | None = None, finish: FinishReason = None
) -> Json:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}


def sse_frame(payload: Json) -> bytes:
    """One server-sent event carrying ``payload``."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def model_list(model_ids: list[str], *, created: int, owned_by: str = "distillguard") -> Json:
    return {
        "object": "list",
        "data": [
            {"id": m, "object": "model", "created": created, "owned_by": owned_by}
            for m in model_ids
        ],
    }


def error_body(
    message: str, error_type: str, *, param: str | None = None, code: str | None = None
) -> bytes:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    return orjson.dumps(
        {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    )
