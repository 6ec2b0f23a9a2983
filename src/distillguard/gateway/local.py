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
  row's tag (per-account keys), and every exchange logs the scheme and key id;
- ``/v1/responses`` with text input: served through the chat path (``instructions`` as the
  system message), answered as a Responses ``response`` object or streamed as its named
  events; ``/v1/embeddings``: a 400
  (a causal LM here serves no embeddings);
- what the model cannot honour (tools, images, response_format, logit_bias, penalties,
  reasoning_effort, ...): a 400 whose ``param`` names the field (``check_request``), never a
  200 that silently ignored it.
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
from pydantic import BaseModel

from distillguard.config import Settings
from distillguard.errors import ContextTooLong, InputError, NotFound
from distillguard.gateway.backend import Job, Outcome, Reply
from distillguard.wire import answers
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

# The fields the local engine honours (sampling, length, stop, n, seed, log-probabilities,
# streaming) or that do not change an answer (end-user ids, cache keys, metadata, which the
# log keeps). Every other field a request sets is refused unless it holds its no-op value.
_HONOURED = frozenset(
    {
        "model",
        "messages",
        "prompt",
        "input",
        "instructions",
        "temperature",
        "top_p",
        "n",
        "stop",
        "seed",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "max_output_tokens",
        "logprobs",
        "top_logprobs",
        "user",
        "metadata",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
    }
)
# Values of an unhonoured field that ask for nothing (the API's defaults): accepted.
_NO_OP: dict[str, tuple[Any, ...]] = {
    "tools": ([],),
    "tool_choice": ("none",),
    "logit_bias": ({},),
    "response_format": ({"type": "text"},),
    "frequency_penalty": (0, 0.0),
    "presence_penalty": (0, 0.0),
    "reasoning_effort": ("none",),
    "modalities": (["text"],),
    "service_tier": ("auto", "default"),
    "store": (False,),
    "echo": (False,),
    "best_of": (1,),
    "background": (False,),
    "include": ([],),
    "truncation": ("disabled",),
}
_TEXT_FORMAT = {"format": {"type": "text"}}  # Responses `text` that asks for plain text
_WHY = {
    "tools": "it has no tool calling",
    "tool_choice": "it has no tool calling",
    "parallel_tool_calls": "it has no tool calling",
    "functions": "it has no tool calling",
    "function_call": "it has no tool calling",
    "response_format": "it cannot constrain its output to a format",
    "text": "it cannot constrain its output to a format",
    "logit_bias": "its sampler takes no logit bias",
    "frequency_penalty": "its sampler applies no penalties",
    "presence_penalty": "its sampler applies no penalties",
    "reasoning_effort": "it is not a reasoning model",
    "reasoning": "it is not a reasoning model",
}


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

    # -- what the local model can serve ------------------------------------------------------

    def check_request(self, request: wire.AnyRequest) -> None:
        """InputError naming the first field (or content part) this model cannot honour."""
        if isinstance(request, wire.EmbeddingsRequest):
            raise InputError(
                f"the model '{self.name}' generates text and serves no embeddings: "
                "/v1/embeddings is served only in --upstream mode",
                param="model",
                code="embeddings_not_served",
            )
        unknown = sorted(request.model_extra or ())
        if unknown:
            raise InputError(
                f"Unrecognized request argument(s) supplied: {', '.join(unknown)}",
                param=unknown[0],
                code="unknown_parameter",
            )
        for name in sorted(request.model_fields_set - _HONOURED):
            value = getattr(request, name)
            if isinstance(value, BaseModel):  # e.g. response_format: compared as sent
                value = value.model_dump(exclude_none=True)
            if value is None or value in _NO_OP.get(name, ()):
                continue
            if name == "text" and value == _TEXT_FORMAT:
                continue
            if name == "best_of" and value == request.n:
                continue
            raise InputError(
                f"'{name}' is not supported by the local model '{self.name}'"
                f" ({_WHY.get(name, 'it cannot honour it')}); remove it, or serve through "
                "--upstream",
                param=name,
                code="unsupported_parameter",
            )
        if isinstance(request, wire.ChatCompletionRequest):
            _check_chat_messages(request)
        elif isinstance(request, wire.ResponsesRequest):
            _responses_messages(request)  # InputError for what it cannot read

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
        if isinstance(request, wire.EmbeddingsRequest):  # refused by check_request already
            raise InputError("/v1/embeddings is not served locally", param="model")
        if isinstance(request, wire.ResponsesRequest):
            prompt_ids = self.engine.encode_chat(_responses_messages(request))
            want_logprobs, top_k = False, 0
        elif isinstance(request, wire.ChatCompletionRequest):
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
                param="prompt" if isinstance(request, wire.CompletionRequest) else "messages",
                code="context_length_exceeded",
            )
        max_new = request.output_limit() or min(DEFAULT_MAX_TOKENS, room)
        seed = getattr(request, "seed", None)  # the Responses API has none
        params = [
            GenerationParams(
                max_new_tokens=max_new,
                temperature=1.0 if request.temperature is None else request.temperature,
                top_p=1.0 if request.top_p is None else request.top_p,
                stop=request.stop_sequences() if hasattr(request, "stop_sequences") else (),
                seed=None if seed is None else (seed + i) & _SEED_MASK,
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
        if job.is_responses:
            return self._responses_reply(job, prepared, rows[0], outcome)
        completion_tokens = 0
        choices = []
        logged = []
        for index, events in enumerate(rows):
            tokens = [e for e in events if not self._is_eos_event(e)]
            completion_tokens += len(tokens)
            text = "".join(e.text for e in events)
            finish = events[-1].finish_reason if events else "length"
            if index == 0 and text:
                outcome.text_parts.append(text)
            logged.append(answers.logged_choice(index, text or None, finish))
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
        outcome.choices = logged
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

    def _responses_reply(
        self, job: Job, prepared: _Prepared, events: list[Any], outcome: Outcome
    ) -> Reply:
        """One generated row as a Responses API ``response`` object."""
        text = "".join(e.text for e in events)
        finish = events[-1].finish_reason if events else "length"
        output_tokens = sum(1 for e in events if not self._is_eos_event(e))
        request = job.request
        assert isinstance(request, wire.ResponsesRequest)
        body = wire.response_object(
            request_id=job.request_id,
            created=int(time.time()),
            model=self.name,
            text=text,
            truncated=finish == "length",
            input_tokens=len(prepared.prompt_ids),
            output_tokens=output_tokens,
            request=request,
        )
        if text:
            outcome.text_parts.append(text)
        outcome.prompt_tokens, outcome.completion_tokens = len(prepared.prompt_ids), output_tokens
        outcome.response = answers.responses_log(body)
        outcome.choices = [answers.responses_choice(body)]
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

    async def _responses_stream(
        self, job: Job, outcome: Outcome
    ) -> AsyncGenerator[tuple[bytes, str], None]:
        """A Responses stream as OpenAI names its events: ``response.created``, one
        ``response.output_text.delta`` per released piece, then ``response.completed`` (or
        ``response.incomplete`` at the length limit) carrying the whole ``response``."""
        prepared = self._prepare(job)
        request = job.request
        assert isinstance(request, wire.ResponsesRequest)
        sequence = 0

        def event(kind: str, **fields: Any) -> bytes:
            nonlocal sequence
            frame = b"event: " + kind.encode() + b"\n"
            frame += wire.sse_frame({"type": kind, "sequence_number": sequence, **fields})
            sequence += 1
            return frame

        def whole(text: str, truncated: bool, output_tokens: int) -> dict[str, Any]:
            return wire.response_object(
                request_id=job.request_id,
                created=created,
                model=self.name,
                text=text,
                truncated=truncated,
                input_tokens=len(prepared.prompt_ids),
                output_tokens=output_tokens,
                request=request,
            )

        created = int(time.time())
        outcome.prompt_tokens = len(prepared.prompt_ids)
        started = {**whole("", False, 0), "status": "in_progress", "output": [], "usage": None}
        yield event("response.created", response=started), ""
        pieces: list[str] = []
        finish = None
        tokens = 0
        events = self.engine.stream(prepared.prompt_ids, prepared.params[0])
        try:
            async for token in events:
                if not self._is_eos_event(token):
                    tokens += 1
                    outcome.completion_tokens = tokens
                if token.text:
                    pieces.append(token.text)
                    delta = event(
                        "response.output_text.delta",
                        item_id="msg_" + job.request_id,
                        output_index=0,
                        content_index=0,
                        delta=token.text,
                        logprobs=[],
                    )
                    yield delta, token.text
                finish = token.finish_reason or finish
        finally:
            await events.aclose()  # a client gone mid-stream frees its batch row at once
        body = whole("".join(pieces), finish == "length", tokens)
        outcome.response = answers.responses_log(body)
        outcome.choices = [answers.responses_choice(body)]
        last = "response.incomplete" if finish == "length" else "response.completed"
        yield event(last, response=body), ""

    async def stream(self, job: Job, outcome: Outcome) -> AsyncGenerator[tuple[bytes, str], None]:
        if job.is_responses:
            async for item in self._responses_stream(job, outcome):
                yield item
            return
        prepared = self._prepare(job)
        chat = job.is_chat
        base = wire.chunk_base(
            chat=chat,
            request_id=job.request_id,
            created=int(time.time()),
            model=self.name,
            system_fingerprint=self._fingerprint(),
        )

        # Every choice as sent so far, for the log (a stream cut short logs what went out).
        accumulator = outcome.stream_choices = answers.ChoiceAccumulator(chat=chat)

        def frame(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            accumulator.feed({"choices": choices})
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


# --- reading requests the local model can serve ---------------------------------------------


def _check_chat_messages(request: wire.ChatCompletionRequest) -> None:
    """InputError naming the first message part the model cannot read (images, audio,
    files) and the first earlier tool call it cannot replay."""
    for i, message in enumerate(request.messages):
        if message.tool_calls:
            raise InputError(
                "the local model has no tool calling: it cannot read an assistant message "
                "with tool_calls",
                param=f"messages.{i}.tool_calls",
                code="unsupported_parameter",
            )
        if not isinstance(message.content, list):
            continue
        for j, part in enumerate(message.content):
            if part.type in wire.MEDIA_PART_TYPES:
                raise InputError(
                    f"content part type '{part.type}' is not supported by the local model "
                    "(it reads text parts only); send text, or serve through --upstream",
                    param=f"messages.{i}.content.{j}",
                    code="unsupported_content_part",
                )


def _responses_messages(request: wire.ResponsesRequest) -> list[dict[str, str]]:
    """The chat messages of a Responses request with text input: ``instructions`` as the
    system message, then each message item's text. InputError naming the first item or part
    that is not text (images, files, earlier tool calls and their outputs)."""
    messages = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    if isinstance(request.input, str):
        messages.append({"role": "user", "content": request.input})
        return messages
    for i, item in enumerate(request.input):
        kind = item.get("type", "message")
        role = item.get("role")
        if kind != "message" or role not in ("system", "developer", "user", "assistant"):
            raise InputError(
                f"input item type {kind!r} is not supported by the local model "
                "(it reads text messages only)",
                param=f"input.{i}",
                code="unsupported_content_part",
            )
        content = item.get("content")
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            pieces = []
            for j, part in enumerate(content):
                part_type = part.get("type") if isinstance(part, dict) else None
                if part_type not in ("input_text", "output_text", "text"):
                    raise InputError(
                        f"content part type {part_type!r} is not supported by the local model "
                        "(it reads text parts only); send text, or serve through --upstream",
                        param=f"input.{i}.content.{j}",
                        code="unsupported_content_part",
                    )
                if not isinstance(part.get("text"), str):
                    raise InputError(
                        "a text part needs a string 'text'",
                        param=f"input.{i}.content.{j}.text",
                        code="invalid_value",
                    )
                pieces.append(part["text"])
            text = "".join(pieces)
        else:
            raise InputError(
                "a message needs 'content' (a string or a list of parts)",
                param=f"input.{i}.content",
                code="invalid_value",
            )
        messages.append({"role": "system" if role == "developer" else role, "content": text})
    return messages
