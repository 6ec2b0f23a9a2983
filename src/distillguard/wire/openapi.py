"""The OpenAPI document of the OpenAI endpoints the raw ASGI handler serves.

FastAPI documents only its own routes; ``/v1/chat/completions``, ``/v1/completions``,
``/v1/responses``, ``/v1/embeddings`` and ``/v1/models`` bypass it (``gateway.app.GatewayApp``).
This module describes them from the same pydantic models that validate them
(``wire.openai``), so the admin's ``/admin/openapi.json`` and the fuzzing suite see the whole
API.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from distillguard.wire.openai import (
    ChatCompletion,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingList,
    EmbeddingsRequest,
    ErrorBody,
    ModelList,
    ResponseObject,
    ResponsesRequest,
    TextCompletion,
)

_REF = "#/components/schemas/{model}"
_ERRORS = {
    "400": "invalid request (names the field)",
    "401": "missing or unknown API key",
    "403": "key revoked or account suspended",
    "404": "unknown model",
    "405": "wrong method",
    "408": "the body did not arrive in time",
    "413": "body too large",
    "429": "rate limited (Retry-After)",
    "502": "the upstream model server failed",
    "503": "the log or the limiter is unavailable",
}


def _components() -> dict[str, Any]:
    models: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [
        (ChatCompletionRequest, "validation"),
        (CompletionRequest, "validation"),
        (ResponsesRequest, "validation"),
        (EmbeddingsRequest, "validation"),
        (ChatCompletion, "serialization"),
        (TextCompletion, "serialization"),
        (ResponseObject, "serialization"),
        (EmbeddingList, "serialization"),
        (ModelList, "serialization"),
        (ErrorBody, "serialization"),
    ]
    _, schema = models_json_schema(models, ref_template=_REF)
    return schema.get("$defs", {})


def _responses(ok: str, *, streams: bool) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": {"$ref": _REF.format(model=ok)}}}
    if streams:
        content["text/event-stream"] = {"schema": {"type": "string"}}
    error = {"application/json": {"schema": {"$ref": _REF.format(model="ErrorBody")}}}
    responses: dict[str, Any] = {"200": {"description": "the answer", "content": content}}
    for status, why in _ERRORS.items():
        responses[status] = {"description": why, "content": error}
    return responses


def _post(request: str, ok: str, summary: str, *, streams: bool = True) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "tags": ["openai"],
            "security": [{"apiKey": []}],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": _REF.format(model=request)}}},
            },
            "responses": _responses(ok, streams=streams),
        }
    }


def openai_paths() -> tuple[dict[str, Any], dict[str, Any]]:
    """(paths, component schemas) of the OpenAI endpoints."""
    paths = {
        "/v1/chat/completions": _post(
            "ChatCompletionRequest", "ChatCompletion", "Chat completion (OpenAI)"
        ),
        "/v1/completions": _post("CompletionRequest", "TextCompletion", "Completion (OpenAI)"),
        "/v1/responses": _post("ResponsesRequest", "ResponseObject", "Response (OpenAI)"),
        "/v1/embeddings": _post(
            "EmbeddingsRequest", "EmbeddingList", "Embeddings (OpenAI)", streams=False
        ),
        "/v1/models": {
            "get": {
                "summary": "Served models (OpenAI)",
                "tags": ["openai"],
                "security": [{"apiKey": []}],
                "responses": _responses("ModelList", streams=False),
            }
        },
    }
    return paths, _components()


def with_openai_paths(document: dict[str, Any]) -> dict[str, Any]:
    """A copy of FastAPI's OpenAPI ``document`` with the OpenAI endpoints added."""
    merged = copy.deepcopy(document)
    paths, schemas = openai_paths()
    merged.setdefault("paths", {}).update(paths)
    components = merged.setdefault("components", {})
    components.setdefault("schemas", {}).update(schemas)
    components.setdefault("securitySchemes", {})["apiKey"] = {"type": "http", "scheme": "bearer"}
    return merged
