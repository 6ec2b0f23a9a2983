"""``POST /admin/watermark/detect``: watermark detection for the provider's staff only.

Mounted by the admin router and behind its token (a public detector would let anyone test
their edits against the mark until it is gone, or learn enough to forge it). The scoring is
``watermark.detect.TextDetector``; this route only parses, picks a detector and shapes the
answer. Detection runs in a worker thread (tokenizing and scoring are CPU work), with the
tokenizer of the model the gateway serves when it serves one locally, else the teacher's on
disk. Each text gets a result or a per-text error; a request-level problem (no text, too many
texts, unknown scheme or key id) is one 400 with OpenAI's error body.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from distillguard.errors import InputError
from distillguard.gateway.auth import AdminAuth
from distillguard.gateway.local import LocalBackend
from distillguard.watermark.detect import TextDetector, detection_record

MAX_TEXTS = 1000  # one request stays well under a second of scoring
MAX_ACCOUNTS = 10_000

router = APIRouter(prefix="/watermark", tags=["watermark"])


class DetectRequest(BaseModel):
    text: str | None = None  # one text ...
    texts: list[str] | None = Field(default=None, max_length=MAX_TEXTS)  # ... or many
    prompt: str | None = None  # its prompt (tokens copied from it are not scored)
    prompts: list[str | None] | None = Field(default=None, max_length=MAX_TEXTS)
    scheme: str | None = None  # default: the gateway's configured scheme
    key_ids: list[int] | None = None  # default: every key id up to the current one
    accounts: list[str] = Field(default_factory=list, max_length=MAX_ACCOUNTS)


class DetectorCache:
    """One ``TextDetector`` per (scheme, key ids) for the gateway's lifetime: building one
    loads a tokenizer and derives keys, which a request should not pay for every time."""

    def __init__(self) -> None:
        self._detectors: dict[tuple[str, tuple[int, ...]], TextDetector] = {}
        self._lock = threading.Lock()  # built in worker threads

    def get(self, state: Any, scheme: str | None, key_ids: list[int] | None) -> TextDetector:
        settings = state.settings
        configured = settings.watermark_scheme
        name = scheme or (configured if configured != "off" else "kgw")
        key = (name, tuple(key_ids or ()))
        with self._lock:
            if key not in self._detectors:
                backend = state.backend
                tokenizer = backend.engine.tokenizer if isinstance(backend, LocalBackend) else None
                self._detectors[key] = TextDetector.from_settings(
                    settings, tokenizer=tokenizer, scheme=name, key_ids=key_ids
                )
            return self._detectors[key]


def _detectors(request: Request) -> DetectorCache:
    """The app's cache (one per gateway app: two apps in one process keep theirs apart)."""
    cache = getattr(request.app.state, "watermark_detectors", None)
    if cache is None:  # the event loop is single-threaded: no race between two requests
        cache = request.app.state.watermark_detectors = DetectorCache()
    return cache


@router.post("/detect")
async def detect(body: DetectRequest, request: Request, _: AdminAuth) -> dict[str, Any]:
    if (body.text is None) == (body.texts is None):
        raise InputError("give exactly one of 'text' or 'texts'", param="text")
    texts = [body.text] if body.text is not None else list(body.texts or [])
    prompts = [body.prompt] if body.prompt is not None else body.prompts
    if prompts is not None and len(prompts) != len(texts):
        raise InputError("'prompts' must have one entry per text", param="prompts")
    state = request.app.state.gateway
    detector = await asyncio.to_thread(_detectors(request).get, state, body.scheme, body.key_ids)
    results = await asyncio.to_thread(
        detector.detect_batch, texts, prompts=prompts, accounts=body.accounts
    )
    return {
        "object": "watermark.detection",
        "scheme": detector.scheme,
        "results": [detection_record(i, r) for i, r in enumerate(results)],
    }
