"""OpenAI's wire shapes: requests, responses, stream chunks, errors, model lists.

The one module that knows them. Requests are pydantic models, validated once per request;
responses are built by the functions at the end of this module as plain dicts (``orjson``
serialises them faster than a model would) and the response models document the same shapes
and let tests validate them.

Requests are validated strictly (``"0.5"`` is not a temperature, ``2.0`` is not an ``n``):
a wrong type is the client's error and gets a 400 naming the field, never a silent coercion.
Every top-level field of OpenAI's API (2026: tools, tool_choice, response_format, logit_bias,
reasoning_effort, metadata, ...) is declared here with its type; the proxy forwards the body as
sent. Unknown top-level fields are kept by pydantic (``extra="allow"``) only so that the
backend can name them: ``unknown_fields()`` lists those that are not a known engine extension
(``ENGINE_EXTENSION_FIELDS``), and both backends answer them with a 400 naming them. The local
backend also refuses every field it cannot honour (``gateway.local``): never a silent 200.

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


# --- content parts --------------------------------------------------------------------------

# The part types a chat message's content may hold (OpenAI, 2026). Anything else is a 400
# naming the type, in both modes: an upstream would refuse it too, and a typo must not reach
# the log as if it had been answered.
CONTENT_PART_TYPES = ("text", "image_url", "input_audio", "file", "refusal")
MEDIA_PART_TYPES = ("image_url", "input_audio", "file")  # parts whose bytes are never logged


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImageUrl(_Strict):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageUrl


class AudioPart(_Strict):
    type: Literal["input_audio"]
    input_audio: dict[str, Any]


class FilePart(_Strict):
    type: Literal["file"]
    file: dict[str, Any]


class RefusalPart(_Strict):
    type: Literal["refusal"]
    refusal: str


ContentPart = Annotated[
    TextPart | ImagePart | AudioPart | FilePart | RefusalPart, Field(discriminator="type")
]


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # a tool message answers this call
    refusal: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _known_part_types(cls, value: Any) -> Any:
        # Checked before the union: pydantic's own message names its internal union instead.
        if isinstance(value, list):
            for part in value:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind not in CONTENT_PART_TYPES:
                    raise ValueError(
                        f"unsupported content part type {kind!r}; expected one of "
                        + ", ".join(CONTENT_PART_TYPES)
                    )
        return value

    def text(self) -> str:
        """The message's text parts joined (media parts contribute nothing)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content if isinstance(part, TextPart))


class StreamOptions(_Strict):
    include_usage: bool = False


Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
MaxTokens = Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
LogitBias = dict[str, Annotated[int, Field(ge=-100, le=100)]]
Metadata = Annotated[dict[str, str], Field(max_length=16)]  # OpenAI: at most 16 pairs

# Engine extensions a proxied request may carry besides OpenAI's fields: the sampling knobs
# vLLM and SGLang accept on their OpenAI endpoints (``extra_body`` in the SDK). Upstream mode
# forwards these; any other unknown top-level field is a 400 naming it (a typo such as
# ``temprature`` would otherwise be dropped by the engine and answered at defaults).
ENGINE_EXTENSION_FIELDS = frozenset(
    {
        "top_k",
        "min_p",
        "repetition_penalty",
        "min_tokens",
        "ignore_eos",
        "skip_special_tokens",
        "spaces_between_special_tokens",
        "include_stop_str_in_output",
        "stop_token_ids",
        "chat_template",
        "chat_template_kwargs",
        "add_generation_prompt",
        "continue_final_message",
        "guided_json",
        "guided_regex",
        "guided_choice",
        "guided_grammar",
        "structured_outputs",
        "priority",
        "vllm_xargs",  # the engine-marking field (gateway.engine_marking overwrites the account)
        "custom_logit_processor",
        "custom_params",
        "return_tokens_as_token_ids",
    }
)


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
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    logit_bias: LogitBias | None = None
    user: str | None = None

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

    def unknown_fields(self) -> list[str]:
        """Top-level fields that are neither OpenAI's nor a known engine extension."""
        return sorted(k for k in self.model_extra or () if k not in ENGINE_EXTENSION_FIELDS)


class FunctionSpec(_Strict):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolSpec(_Strict):
    type: Literal["function", "custom"]
    function: FunctionSpec | None = None
    custom: dict[str, Any] | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


ToolChoice = Literal["none", "auto", "required"] | dict[str, Any]


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: MaxTokens | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = None  # deprecated by OpenAI, still accepted
    function_call: str | dict[str, Any] | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: str | None = None  # none | minimal | low | medium | high | ...
    metadata: Metadata | None = None
    store: bool | None = None
    service_tier: str | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    verbosity: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    moderation: Any = None

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs=true")
        return self

    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def prompt_text(self) -> str:
        return "\n".join(m.text() for m in self.messages)

    def has_media(self) -> bool:
        """Whether any message holds an image, audio or file part (its bytes stay out of the
        log: ``redact_media``)."""
        return any(
            isinstance(m.content, list) and any(p.type in MEDIA_PART_TYPES for p in m.content)
            for m in self.messages
        )


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(min_length=1)
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool = False
    best_of: Annotated[int, Field(ge=1, le=MAX_CHOICES)] | None = None
    suffix: str | None = None

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

    def has_media(self) -> bool:
        return False


class ResponsesRequest(_Strict):
    """``POST /v1/responses`` (OpenAI's Responses API): one answer (no ``n``) to ``input``, a
    string or a list of items (messages with ``input_text``/``input_image`` parts, earlier
    outputs, tool results). Items are forwarded as sent; the local backend reads messages."""

    model: str = Field(min_length=1)
    input: str | list[dict[str, Any]] = Field(min_length=1)
    instructions: str | None = None
    max_output_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_tool_calls: Annotated[int, Field(ge=1)] | None = None
    text: dict[str, Any] | None = None  # {"format": {"type": "text" | "json_schema" ...}}
    reasoning: dict[str, Any] | None = None
    metadata: Metadata | None = None
    user: str | None = None
    store: bool | None = None
    background: bool | None = None
    include: list[str] | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    truncation: str | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    context_management: Any = None
    background_options: Any = None
    access_programs: Any = None
    image: Any = None
    moderation: Any = None

    @property
    def n(self) -> int:
        return 1  # one answer per request (not a Responses field: a body's `n` is unknown)

    def output_limit(self) -> int | None:
        return self.max_output_tokens

    def include_usage(self) -> bool:
        return False  # a Responses stream always ends with the usage (response.completed)

    def prompt_text(self) -> str:
        """The text of ``instructions`` and every text part of ``input`` (for estimates)."""
        texts = [self.instructions or ""]
        if isinstance(self.input, str):
            texts.append(self.input)
        else:
            for item in self.input:
                content = item.get("content")
                if isinstance(content, str):
                    texts.append(content)
                elif isinstance(content, list):
                    texts.extend(
                        p["text"]
                        for p in content
                        if isinstance(p, dict) and isinstance(p.get("text"), str)
                    )
                elif isinstance(item.get("output"), str):
                    texts.append(item["output"])
        return "\n".join(t for t in texts if t)

    def has_media(self) -> bool:
        media = ("input_image", "input_file", "input_audio")
        return isinstance(self.input, list) and any(
            isinstance(item.get("content"), list)
            and any(isinstance(p, dict) and p.get("type") in media for p in item["content"])
            for item in self.input
        )

    def unknown_fields(self) -> list[str]:
        return sorted(k for k in self.model_extra or () if k not in ENGINE_EXTENSION_FIELDS)


EmbeddingInput = (
    Annotated[str, Field(min_length=1)]
    | Annotated[list[str], Field(min_length=1, max_length=2048)]
    | Annotated[list[int], Field(min_length=1)]
    | Annotated[list[list[int]], Field(min_length=1, max_length=2048)]
)


class EmbeddingsRequest(_Strict):
    """``POST /v1/embeddings``: vectors for one or more inputs (text or token ids)."""

    model: str = Field(min_length=1)
    input: EmbeddingInput
    dimensions: Annotated[int, Field(ge=1)] | None = None
    encoding_format: Literal["float", "base64"] | None = None
    user: str | None = None

    @property
    def n(self) -> int:
        return 1  # one row per request for the limiter (no generation)

    @property
    def stream(self) -> bool:
        return False  # embeddings are never streamed

    def output_limit(self) -> int | None:
        return 0  # embeddings generate no tokens: only the input is charged

    def include_usage(self) -> bool:
        return False

    def prompt_text(self) -> str:
        value = self.input
        if isinstance(value, str):
            return value
        return "\n".join(v for v in value if isinstance(v, str))

    def input_token_ids(self) -> int:
        """How many token ids the input gives directly (0 for text input)."""
        value = self.input
        if isinstance(value, str) or not value or isinstance(value[0], str):
            return 0
        if isinstance(value[0], int):
            return len(value)
        return sum(len(v) for v in value if isinstance(v, list))

    def has_media(self) -> bool:
        return False

    def unknown_fields(self) -> list[str]:
        return sorted(k for k in self.model_extra or () if k not in ENGINE_EXTENSION_FIELDS)


AnyRequest = ChatCompletionRequest | CompletionRequest | ResponsesRequest | EmbeddingsRequest

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
RESPONSES_PATH = "/v1/responses"
EMBEDDINGS_PATH = "/v1/embeddings"
_REQUEST_MODELS: dict[str, type[AnyRequest]] = {
    CHAT_PATH: ChatCompletionRequest,
    COMPLETIONS_PATH: CompletionRequest,
    RESPONSES_PATH: ResponsesRequest,
    EMBEDDINGS_PATH: EmbeddingsRequest,
}
REQUEST_PATHS = frozenset(_REQUEST_MODELS)


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


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # floats, or base64 float32 with encoding_format=base64


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: dict[str, int] | None


class ResponseObject(BaseModel):
    """A Responses API answer (the fields every answer has; outputs as OpenAI sends them)."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: str
    model: str
    output: list[dict[str, Any]]
    usage: dict[str, Any] | None


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


def parse_request(endpoint: str, body: dict[str, Any]) -> AnyRequest:
    """Validate a decoded body for ``endpoint``; raises pydantic's ValidationError."""
    return _REQUEST_MODELS[endpoint].model_validate(body)


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


def response_object(
    *,
    request_id: str,
    created: int,
    model: str,
    text: str,
    truncated: bool,
    input_tokens: int,
    output_tokens: int,
    request: ResponsesRequest,
) -> Json:
    """A whole Responses API ``response`` with one assistant message (``output_text``)."""
    message = {
        "type": "message",
        "id": "msg_" + request_id,
        "status": "incomplete" if truncated else "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }
    return {
        "id": "resp_" + request_id,
        "object": "response",
        "created_at": created,
        "status": "incomplete" if truncated else "completed",
        "model": model,
        "output": [message],
        "incomplete_details": {"reason": "max_output_tokens"} if truncated else None,
        "error": None,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "metadata": request.metadata or {},
        "parallel_tool_calls": False,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "tool_choice": "none",
        "tools": [],
        "text": {"format": {"type": "text"}},
        "user": request.user,
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        },
    }


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
