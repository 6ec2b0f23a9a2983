"""``POST /admin/watermark/detect``: watermark detection for the provider's staff only.

The gateway mounts ``router`` under its admin-token dependency (a public detector would let
anyone test their edits against the mark until it is gone, or learn enough to forge it).
Detection runs in a worker thread (tokenizing and scoring are CPU work), with the tokenizer of
the model the gateway serves when it serves one locally, else the teacher's on disk.
Each text gets a result or a per-text error; a request-level problem (no text, too many
texts, unknown scheme or key id) is one 400 with OpenAI's error body.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from distillguard.errors import InputError
from distillguard.watermark.detect import TextDetector, _record

MAX_TEXTS = 1000  # one request stays well under a second of scoring
MAX_ACCOUNTS = 10_000

router = APIRouter(prefix="/admin/watermark", tags=["watermark"])


class DetectRequest(BaseModel):
    text: str | None = None  # one text ...
    texts: list[str] | None = Field(default=None, max_length=MAX_TEXTS)  # ... or many
    prompt: str | None = None  # its prompt (tokens copied from it are not scored)
    prompts: list[str | None] | None = Field(default=None, max_length=MAX_TEXTS)
    scheme: str | None = None  # default: the gateway's configured scheme
    key_ids: list[int] | None = None  # default: every key id up to the current one
    accounts: list[str] = Field(default_factory=list, max_length=MAX_ACCOUNTS)


def _tokenizer_of(request: Request) -> Any | None:
    state = getattr(request.app.state, "gateway", None)
    engine = getattr(getattr(state, "backend", None), "engine", None)
    return getattr(engine, "tokenizer", None)


def _settings_of(request: Request) -> Any:
    state = getattr(request.app.state, "gateway", None)
    if state is not None:
        return state.settings
    from distillguard.config import get_settings

    return get_settings()


def _detector(request: Request, scheme: str | None, key_ids: list[int] | None) -> TextDetector:
    settings = _settings_of(request)
    name = scheme or (settings.watermark_scheme if settings.watermark_scheme != "off" else "kgw")
    cache: dict = request.app.state.__dict__.setdefault("_watermark_detectors", {})
    key = (name, tuple(key_ids or ()))
    if key not in cache:
        cache[key] = TextDetector.from_settings(
            settings, tokenizer=_tokenizer_of(request), scheme=name, key_ids=key_ids
        )
    return cache[key]


@router.post("/detect")
async def detect(body: DetectRequest, request: Request) -> dict[str, Any]:
    if (body.text is None) == (body.texts is None):
        raise InputError("give exactly one of 'text' or 'texts'", param="text")
    texts = [body.text] if body.text is not None else list(body.texts or [])
    prompts = [body.prompt] if body.prompt is not None else body.prompts
    if prompts is not None and len(prompts) != len(texts):
        raise InputError("'prompts' must have one entry per text", param="prompts")
    detector = await asyncio.to_thread(_detector, request, body.scheme, body.key_ids)
    results = await asyncio.to_thread(
        detector.detect_batch, texts, prompts=prompts, accounts=body.accounts
    )
    return {
        "object": "watermark.detection",
        "scheme": detector.scheme,
        "results": [_record(i, r) for i, r in enumerate(results)],
    }
