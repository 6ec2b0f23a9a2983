"""Local mode: answer with a model on this machine through ``GenerationEngine``.

The engine batches concurrent requests by itself (continuous batching on a background
thread); this module only translates between OpenAI's shapes and the engine's:

- the prompt: the chat template for ``/v1/chat/completions``, plain text for
  ``/v1/completions``; exact token counts for limits and usage;
- ``n > 1``: n separate rows (seeds ``seed, seed+1, ...`` when a seed is given), which the
  engine decodes in one batch;
- ``logprobs`` / ``top_logprobs`` in OpenAI's chat shape (``{"content": [{token, logprob,
  bytes, top_logprobs}]}``) or the legacy completions shape (``tokens, token_logprobs,
  top_logprobs, text_offset``);
- streaming: one chunk per released piece of text (or per token when log-probs are asked),
  a final chunk with ``finish_reason``, and a usage chunk with ``stream_options``;
- the watermark: the engine samples through ``build_scheme(...)`` with the account id as the
  row's tag (per-account keys), and every exchange logs the scheme and key id.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from distillguard.config import Settings
from distillguard.errors import ContextTooLong, NotFound
from distillguard.gateway.backend import Job, Outcome, Reply
from distillguard.wire import openai as wire

log = logging.getLogger("distillguard.gateway.local")

# Without max_tokens a request generates at most this many tokens (OpenAI's default is "up to
# the context window", which on a CPU model ties a batch slot up for minutes).
DEFAULT_MAX_TOKENS = 256


@dataclass
class _Prepared:
    prompt_ids: list[int]
    params: list[Any]  # one GenerationParams per choice
    want_logprobs: bool
    top_k: int


_SEED_MASK = 0xFFFF_FFFF_FFFF_FFFF  # `seed + i` of the n choices stays a valid 64-bit seed


class LocalBackend:
    """A ``GenerationEngine`` behind OpenAI's API."""

    default_output_tokens = DEFAULT_MAX_TOKENS  # what a request without max_tokens may use

    def __init__(
        self,
        engine: Any,
        *,
        name: str,
        watermark_scheme: str | None = None,
        watermark_key_id: int | None = None,
    ) -> None:
        self.engine = engine
        self.name = name
        self.watermark_scheme = watermark_scheme
        self.watermark_key_id = watermark_key_id
        self._pieces: dict[int, tuple[str, list[int]]] = {}
        self._created = int(time.time())
        self._system_fingerprint = "fp_" + hashlib.sha256(name.encode()).hexdigest()[:10]

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalBackend:
        """Load ``settings.model_dir`` and its watermark sampler (``settings.watermark_scheme``)."""
        from distillguard.models.engine import GenerationEngine
        from distillguard.models.llama import load_model

        if settings.model_dir is None:
            from distillguard.models.teacher import default_teacher_dir

            model_dir = default_teacher_dir(settings, progress=False)
        else:
            model_dir = Path(settings.model_dir)
        model, tokenizer = load_model(model_dir)
        vocab_size = int(model.get_input_embeddings().weight.shape[0])
        scheme_name = settings.watermark_scheme
        sampler = None
        key_id: int | None = None
        if scheme_name != "off":
            from distillguard.watermark import build_scheme

            sampler = build_scheme(
                scheme_name,
                secret=settings.require_watermark_secret(),
                key_id=settings.watermark_key_id,
                vocab_size=vocab_size,
            )
            key_id = settings.watermark_key_id
        name = settings.model_name or model_dir.name
        engine = GenerationEngine(
            model,
            tokenizer,
            sampler=sampler,
            name=name,
            max_batch_size=settings.max_batch_size,
            batch_wait_ms=settings.batch_wait_ms,
        )
        return cls(
            engine,
            name=name,
            watermark_scheme=None if sampler is None else scheme_name,
            watermark_key_id=key_id,
        )

    async def start(self) -> None:
        self.engine.start()

    async def close(self) -> None:
        await asyncio.to_thread(self.engine.stop)

    def model_ids(self) -> list[str]:
        return [self.name]

    def check_model(self, model: str) -> None:
        if model != self.name:
            raise NotFound(
                f"The model '{model}' does not exist; this gateway serves '{self.name}'",
                param="model",
                code="model_not_found",
            )

    # -- request preparation ---------------------------------------------------------------

    def _prepare(self, job: Job) -> _Prepared:
        """Prompt ids and per-choice parameters, computed once per job (the route counts the
        prompt's tokens for the limiter before it serves). The online monitor decides after
        that: a degraded job is re-derived without log-probabilities."""
        prepared = job.backend_state
        if prepared is None:
            prepared = job.backend_state = self._prepare_fresh(job)
        if job.degrade and prepared.want_logprobs:  # degraded service: no log-probabilities
            prepared = job.backend_state = _Prepared(
                prepared.prompt_ids,
                [replace(p, logprobs=False, top_logprobs=0) for p in prepared.params],
                want_logprobs=False,
                top_k=0,
            )
        if job.logits_hook is not None and prepared.params[0].logits_hook is not job.logits_hook:
            # antidistillation (gateway.prevention): every choice sampled through the hook
            prepared = job.backend_state = replace(
                prepared, params=[replace(p, logits_hook=job.logits_hook) for p in prepared.params]
            )
        return prepared

    def _prepare_fresh(self, job: Job) -> _Prepared:
        from distillguard.models.engine import GenerationParams

        request = job.request
        if isinstance(request, wire.ChatCompletionRequest):
            messages = [
                {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in request.messages
            ]
            prompt_ids = self.engine.encode_chat(messages)
            want_logprobs = bool(request.logprobs)
            top_k = request.top_logprobs or 0
        else:
            prompt_ids = self.engine.encode_text(request.prompt_text())
            want_logprobs = request.logprobs is not None
            top_k = request.logprobs or 0
        room = self.engine.context_length - len(prompt_ids)
        if room < 1:
            raise ContextTooLong(
                f"the prompt has {len(prompt_ids)} tokens; this model's context is "
                f"{self.engine.context_length}",
                param="messages" if job.is_chat else "prompt",
                code="context_length_exceeded",
            )
        max_new = request.output_limit() or min(DEFAULT_MAX_TOKENS, room)
        params = [
            GenerationParams(
                max_new_tokens=max_new,
                temperature=1.0 if request.temperature is None else request.temperature,
                top_p=1.0 if request.top_p is None else request.top_p,
                stop=request.stop_sequences(),
                seed=None if request.seed is None else (request.seed + i) & _SEED_MASK,
                logprobs=want_logprobs,
                top_logprobs=top_k,
                tag=job.account_id,
            )
            for i in range(request.n)
        ]
        self.engine.check(prompt_ids, params[0])  # ContextTooLong before anything is reserved
        return _Prepared(prompt_ids, params, want_logprobs, top_k)

    def count_prompt_tokens(self, job: Job) -> int:
        return len(self._prepare(job).prompt_ids)

    # -- OpenAI shapes ---------------------------------------------------------------------

    def _piece(self, token_id: int) -> tuple[str, list[int]]:
        cached = self._pieces.get(token_id)
        if cached is None:
            table = getattr(self.engine, "_token_bytes", None)
            text = self.engine.tokenizer.decode([token_id])
            raw = table[token_id] if table is not None and token_id < len(table) else text.encode()
            cached = self._pieces[token_id] = (text, list(raw))
        return cached

    def _chat_logprob(self, event: Any) -> dict[str, Any]:
        token, raw = self._piece(event.token_id)
        return {
            "token": token,
            "logprob": event.logprob,
            "bytes": raw,
            "top_logprobs": [
                {"token": t, "logprob": lp, "bytes": list(t.encode())}
                for t, lp in (event.top_logprobs or ())
            ],
        }

    def _is_eos_event(self, event: Any) -> bool:
        return (
            event.finish_reason == "stop"
            and event.token_id in self.engine.eos_ids
            and (event.logprob is None)
        )

    # -- serving ---------------------------------------------------------------------------

    async def _rows(self, job: Job) -> list[list[Any]]:
        prepared = self._prepare(job)

        async def one(params: Any) -> list[Any]:
            return [e async for e in self.engine.stream(prepared.prompt_ids, params)]

        return list(await asyncio.gather(*(one(p) for p in prepared.params)))

    async def complete(self, job: Job, outcome: Outcome) -> Reply:
        prepared = self._prepare(job)
        rows = await self._rows(job)
        completion_tokens = 0
        choices = []
        for index, events in enumerate(rows):
            tokens = [e for e in events if not self._is_eos_event(e)]
            completion_tokens += len(tokens)
            text = "".join(e.text for e in events)
            finish = events[-1].finish_reason if events else "length"
            if index == 0 and text:
                outcome.text_parts.append(text)
            if job.is_chat:
                logprobs = (
                    {"content": [self._chat_logprob(e) for e in tokens]}
                    if prepared.want_logprobs
                    else None
                )
                choices.append(wire.chat_choice(index, text, logprobs, finish))
            else:
                logprobs = self._legacy_logprobs(tokens, prepared)
                choices.append(wire.text_choice(index, text, logprobs, finish))
        prompt_tokens = len(prepared.prompt_ids)
        outcome.prompt_tokens, outcome.completion_tokens = prompt_tokens, completion_tokens
        body = wire.completion(
            chat=job.is_chat,
            request_id=job.request_id,
            created=int(time.time()),
            model=self.name,
            choices=choices,
            usage=wire.usage(prompt_tokens, completion_tokens),
            system_fingerprint=self._fingerprint(),
        )
        return Reply(200, orjson.dumps(body))

    def _legacy_logprobs(self, tokens: list[Any], prepared: _Prepared) -> dict[str, Any] | None:
        if not prepared.want_logprobs:
            return None
        pieces = [self._piece(e.token_id)[0] for e in tokens]
        offsets, at = [], 0
        for piece in pieces:
            offsets.append(at)
            at += len(piece)
        return {
            "tokens": pieces,
            "token_logprobs": [e.logprob for e in tokens],
            "top_logprobs": [dict(e.top_logprobs or ()) for e in tokens]
            if prepared.top_k
            else None,
            "text_offset": offsets,
        }

    def _fingerprint(self) -> str:
        # Names the served model only: the watermark's scheme and key are the provider's
        # secret (a client that knows them knows what to scrub).
        return self._system_fingerprint

    async def stream(self, job: Job, outcome: Outcome) -> AsyncGenerator[tuple[bytes, str], None]:
        prepared = self._prepare(job)
        chat = job.is_chat
        base = wire.chunk_base(
            chat=chat,
            request_id=job.request_id,
            created=int(time.time()),
            model=self.name,
            system_fingerprint=self._fingerprint(),
        )

        def frame(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            return wire.sse_frame({**base, "choices": choices, **extra})

        queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

        async def pump(index: int, params: Any) -> None:
            try:
                async for event in self.engine.stream(prepared.prompt_ids, params):
                    queue.put_nowait((index, event))
            except Exception as exc:  # reaches the consumer, which raises it
                queue.put_nowait((index, exc))

        tasks = [asyncio.ensure_future(pump(i, p)) for i, p in enumerate(prepared.params)]
        prompt_tokens = len(prepared.prompt_ids)
        outcome.prompt_tokens = prompt_tokens
        completion_tokens = 0
        try:
            if chat:
                yield (
                    frame(
                        [
                            wire.chat_delta(i, {"role": "assistant", "content": ""})
                            for i in range(len(tasks))
                        ]
                    ),
                    "",
                )
            open_rows = len(tasks)
            while open_rows:
                index, event = await queue.get()
                if isinstance(event, BaseException):
                    raise event
                is_eos = self._is_eos_event(event)
                if not is_eos:
                    completion_tokens += 1
                    outcome.completion_tokens = completion_tokens
                text = event.text
                if text or (prepared.want_logprobs and not is_eos):
                    if chat:
                        logprobs = (
                            {"content": [self._chat_logprob(event)]}
                            if prepared.want_logprobs and not is_eos
                            else None
                        )
                        choice = wire.chat_delta(index, {"content": text}, logprobs)
                    else:
                        logprobs = (
                            self._legacy_logprobs([event], prepared)
                            if prepared.want_logprobs and not is_eos
                            else None
                        )
                        choice = wire.text_choice(index, text, logprobs, None)
                    yield frame([choice]), text if index == 0 else ""
                if event.finish_reason is not None:
                    open_rows -= 1
                    end = (
                        wire.chat_delta(index, {}, None, event.finish_reason)
                        if chat
                        else wire.text_choice(index, "", None, event.finish_reason)
                    )
                    yield frame([end]), ""
            if job.request.include_usage():
                yield frame([], usage=wire.usage(prompt_tokens, completion_tokens)), ""
        finally:
            for task in tasks:  # a client gone mid-stream frees its batch rows at once
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
