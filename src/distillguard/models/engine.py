"""Batched generation: a manual KV-cache decode loop with continuous batching.

One background thread owns the model. Requests wait in a queue; when the engine is idle it
gathers arrivals for ``batch_wait_ms`` and prefills them together (left padded); while it is
decoding, new requests are prefilled and merged into the running batch at the next step, and
finished or cancelled rows leave it at once. Each step samples through a ``TokenSampler``
(watermark schemes plug in here), then runs one forward pass for every live row.

Events travel to asyncio callers with ``loop.call_soon_threadsafe`` into a per-request queue;
an error in a step reaches every request of that step, so no caller ever hangs. Closing the
stream (or cancelling the awaiting task) marks the row cancelled and frees its slot.
"""

from __future__ import annotations

import asyncio
import codecs
import os
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from distillguard.errors import ContextTooLong, InputError, ModelError
from distillguard.models.fast_llama import FastLlama
from distillguard.models.sampling import (
    LogitsHook,
    PlainSampler,
    SampleOutput,
    TokenSampler,
    sample_plain,
)
from distillguard.models.tokenizer import (
    byte_level_alphabet,
    encode_chat,
    encode_text,
    eos_token_ids,
)

__all__ = [
    "Completion",
    "EngineStats",
    "GenerationEngine",
    "GenerationParams",
    "SampleOutput",
    "TokenEvent",
    "TokenSampler",
    "sample_plain",
]

MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_TOP_LOGPROBS = 20  # OpenAI's limit
LOGPROB_FLOOR = -9999.0  # stands in for -inf (tokens outside the nucleus): JSON has no -inf


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int  # hard cap on generated tokens (finish_reason "length")
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # nucleus mass kept
    stop: tuple[str, ...] = ()  # generation ends before the first occurrence of any of these
    seed: int | None = None  # per-request generator: same seed -> same tokens, batch or not
    logprobs: bool = False  # report the chosen token's log-prob
    top_logprobs: int = 0  # and the k most likely alternatives
    tag: str | None = None  # opaque per-row tag handed to the sampler (the account id)
    ignore_eos: bool = False  # keep going past eos (benchmarks want a fixed token count)
    # Applied to this row's logits before the sampler (antidistillation sampling); rows that
    # share one hook object are hooked in one call per step.
    logits_hook: LogitsHook | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise InputError("max_tokens must be a positive integer", param="max_tokens")
        if not 0.0 <= self.temperature <= 2.0:
            raise InputError("temperature must be in [0, 2]", param="temperature")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError("top_p must be in (0, 1]", param="top_p")
        if len(self.stop) > MAX_STOP_STRINGS or not all(
            isinstance(s, str) and s for s in self.stop
        ):
            raise InputError(
                f"stop must be at most {MAX_STOP_STRINGS} non-empty strings", param="stop"
            )
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise InputError(
                f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}]", param="top_logprobs"
            )


@dataclass(frozen=True)
class TokenEvent:
    token_id: int  # the sampled token (the eos id on an eos-ended final event)
    text: str  # newly decoded text ("" while held back: partial UTF-8 or a possible stop prefix)
    logprob: float | None  # chosen token's log-prob when requested (None on the eos event)
    top_logprobs: tuple[tuple[str, float], ...] | None  # k best (piece, log-prob) when requested
    finish_reason: str | None  # "stop" | "length" on the last event, else None


@dataclass(frozen=True)
class Completion:
    text: str  # generated text, stop string excluded
    token_ids: tuple[int, ...]  # generated tokens, eos excluded
    finish_reason: str  # "stop" (eos or stop string) | "length"
    prompt_tokens: int
    completion_tokens: int  # == len(token_ids)
    token_logprobs: tuple[float, ...] | None
    top_logprobs: tuple[tuple[tuple[str, float], ...], ...] | None


@dataclass
class EngineStats:
    requests: int = 0  # rows admitted
    prefills: int = 0  # prefill forward passes (one per admitted group)
    decode_steps: int = 0  # sampling steps
    tokens_generated: int = 0
    rows_per_step: Counter = field(default_factory=Counter)  # batch size -> number of steps

    @property
    def max_rows(self) -> int:
        return max(self.rows_per_step, default=0)


class _TextDecoder:
    """Turns one row's tokens into text incrementally. Byte-level tokenizers map each token to
    its bytes and feed an incremental UTF-8 decoder (O(1) per token); others re-decode."""

    def __init__(self, token_bytes: list[bytes] | None, tokenizer: Any):
        self.token_bytes, self.tokenizer = token_bytes, tokenizer
        self.utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self.ids: list[int] = []
        self.decoded = ""

    def push(self, token: int) -> str:
        if self.token_bytes is not None:
            return (
                self.utf8.decode(self.token_bytes[token]) if token < len(self.token_bytes) else ""
            )
        self.ids.append(token)
        new = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if new.endswith("\ufffd") or not new.startswith(self.decoded):
            return ""
        delta, self.decoded = new[len(self.decoded) :], new
        return delta

    def flush(self) -> str:
        if self.token_bytes is not None:
            return self.utf8.decode(b"", final=True)
        new = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        return new[len(self.decoded) :] if new.startswith(self.decoded) else ""


class _Request:
    """One row's state: its parameters, output so far and where its events go."""

    def __init__(
        self,
        prompt_ids: list[int],
        params: GenerationParams,
        sink: Callable[[TokenEvent | BaseException], None],
        decoder: _TextDecoder,
    ):
        self.prompt_ids, self.params, self.sink, self.decoder = prompt_ids, params, sink, decoder
        self.generator = (
            torch.Generator().manual_seed(params.seed) if params.seed is not None else None
        )
        self.token_ids: list[int] = []
        self.text = ""  # full decoded text (including the not yet released tail)
        self.sent = 0  # chars of `text` already released
        self.finished = False
        self.cancelled = False
        self.max_stop = max((len(s) for s in params.stop), default=0)
        # Async callers: token events go straight into `queue` on `loop`, one wake-up per loop
        # per step for all its rows (errors still go through `sink`).
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queue: asyncio.Queue | None = None

    def _release(self, final: bool) -> tuple[str, bool]:
        """New text that is safe to send, and whether a stop string ended the output."""
        stops = self.params.stop
        if stops:
            hits = [i for i in (self.text.find(s, self.sent) for s in stops) if i >= 0]
            if hits:
                cut = min(hits)
                delta, self.text, self.sent = self.text[self.sent : cut], self.text[:cut], cut
                return delta, True
            if not final:  # hold back a tail that could still become a stop string
                hold = 0
                for s in stops:
                    for k in range(min(len(s) - 1, len(self.text) - self.sent), hold, -1):
                        if self.text.endswith(s[:k]):
                            hold = k
                            break
                end = len(self.text) - hold
                delta, self.sent = self.text[self.sent : end], end
                return delta, False
        delta, self.sent = self.text[self.sent :], len(self.text)
        return delta, False

    def accept(
        self,
        token: int,
        is_eos: bool,
        logprob: float | None,
        top: tuple[tuple[str, float], ...] | None,
    ) -> TokenEvent:
        if is_eos:
            self.text += self.decoder.flush()
            delta, _ = self._release(final=True)
            self.finished = True
            return TokenEvent(token, delta, None, None, "stop")
        self.token_ids.append(token)
        self.text += self.decoder.push(token)
        at_limit = len(self.token_ids) >= self.params.max_new_tokens
        if at_limit:
            self.text += self.decoder.flush()
        delta, stopped = self._release(final=at_limit)
        reason = "stop" if stopped else ("length" if at_limit else None)
        self.finished = reason is not None
        return TokenEvent(token, delta, logprob, top, reason)


class _Batch:
    """Live rows decoded together: left-padded context, attention mask, KV cache, and the
    next-token logits waiting to be sampled."""

    def __init__(
        self,
        rows: list[_Request],
        ids: Tensor,
        mask: Tensor,
        next_pos: Tensor,
        cache: Any,
        logits: Tensor,
    ):
        self.rows = rows
        self.ids = ids  # (B, L) long, left padded: prompt + generated
        self.mask = mask  # (B, L) long, 1 on real tokens
        self.next_pos = next_pos  # (B,) long, position id of each row's next token
        self.cache = cache  # DynamicCache with L positions
        self.logits = logits  # (B, V) float32


def _pad_left(t: Tensor, length: int, value: float, dim: int) -> Tensor:
    extra = length - t.shape[dim]
    if extra <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t.new_full(shape, value), t], dim=dim)


class GenerationEngine:
    """Serves one causal LM to many concurrent callers (see the module docstring)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        sampler: TokenSampler | None = None,
        max_batch_size: int = 8,
        batch_wait_ms: float = 2.0,
        name: str | None = None,
        num_threads: int | None = None,
        fast: bool = True,
    ):
        if max_batch_size < 1 or batch_wait_ms < 0:
            raise InputError("max_batch_size must be >= 1 and batch_wait_ms >= 0")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.sampler: TokenSampler = sampler or PlainSampler()
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.name = name or getattr(model.config, "name_or_path", None) or "model"
        self.context_length = int(
            getattr(model.config, "max_position_embeddings", 0) or tokenizer.model_max_length
        )
        self.vocab_size = int(model.get_input_embeddings().weight.shape[0])
        self.eos_ids = eos_token_ids(tokenizer, model.config)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else min(self.eos_ids))
        # Threads: default to the cores this process may use (torch's default counts all).
        self.num_threads = num_threads or len(os.sched_getaffinity(0))
        self.stats = EngineStats()
        # Llama models run through a lean forward pass (see fast_llama.py); others through HF.
        self._use_fast = fast
        self._fast: FastLlama | None = None
        self._model_lock = threading.Lock()  # the thread and generate_batch share the model
        self.reload_weights()
        self._token_bytes = _byte_table(tokenizer)
        self._pieces: dict[int, str] = {}
        self._pending: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._running = 0  # rows in the thread's current batch (for `load`)

    def reload_weights(self) -> None:
        """Re-read the model's weights into the fast path (call after training the model)."""
        with self._model_lock:
            self._fast = (
                FastLlama(self.model) if self._use_fast and FastLlama.supports(self.model) else None
            )

    @property
    def uses_fast_path(self) -> bool:
        return self._fast is not None

    @classmethod
    def from_dir(cls, model_dir: Path, **kw: Any) -> GenerationEngine:
        from distillguard.models.llama import load_model

        model, tokenizer = load_model(Path(model_dir))
        kw.setdefault("name", Path(model_dir).name)
        return cls(model, tokenizer, **kw)

    # ---- prompts ---------------------------------------------------------------------------
    def encode_chat(self, messages: list[dict]) -> list[int]:
        return encode_chat(self.tokenizer, messages)

    def encode_text(self, text: str) -> list[int]:
        return encode_text(self.tokenizer, text)

    def check(self, prompt_ids: Sequence[int], params: GenerationParams) -> None:
        """Raise InputError / ContextTooLong for a request that cannot run."""
        if not prompt_ids:
            raise InputError("the prompt is empty", param="messages")
        if any(not 0 <= int(t) < self.vocab_size for t in prompt_ids):
            raise InputError("prompt token id out of the model's vocabulary", param="prompt")
        if len(prompt_ids) + params.max_new_tokens > self.context_length:
            raise ContextTooLong(
                f"this model's maximum context length is {self.context_length} tokens; the "
                f"prompt has {len(prompt_ids)} and max_tokens is {params.max_new_tokens}",
                code="context_length_exceeded",
                param="messages",
            )

    @property
    def load(self) -> tuple[int, int]:
        """(rows being decoded by the background thread, requests waiting to join)."""
        return self._running, len(self._pending)

    # ---- background thread -----------------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(
                target=self._serve, name=f"engine-{self.name}", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread; requests still waiting or running fail with ModelError."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _serve(self) -> None:
        torch.set_num_threads(self.num_threads)  # OpenMP settings are per thread
        batch: _Batch | None = None
        while True:
            with self._cond:
                if batch is None:
                    while not self._pending and not self._stopping:
                        self._cond.wait()
                    deadline = time.monotonic() + self.batch_wait_s
                    while (
                        len(self._pending) < self.max_batch_size
                        and not self._stopping
                        and (left := deadline - time.monotonic()) > 0
                    ):
                        self._cond.wait(left)
                if self._stopping:
                    break
                room = self.max_batch_size - (len(batch.rows) if batch else 0)
                if batch is not None and not _mergeable(batch.cache):
                    room = 0
                new = [r for r in _take(self._pending, room) if not r.cancelled]
            try:
                with self._model_lock, torch.inference_mode():
                    batch = self._admit(batch, new)
                    if batch is not None:
                        batch = self._step(batch)
                    self._running = len(batch.rows) if batch is not None else 0
            except Exception as exc:  # reaches every caller of the failed step
                rows = (batch.rows if batch else []) + new
                error = (
                    exc
                    if isinstance(exc, ModelError)
                    else ModelError(f"generation failed: {type(exc).__name__}: {exc}")
                )
                for row in rows:
                    if not row.finished:
                        row.finished = True
                        row.sink(error)
                batch = None
                self._running = 0
        leftovers = (batch.rows if batch else []) + list(self._pending)
        self._pending.clear()
        for row in leftovers:
            if not row.finished:
                row.finished = True
                row.sink(ModelError("the generation engine stopped"))

    def _submit(self, row: _Request) -> None:
        with self._cond:
            if self._stopping:
                raise ModelError("the generation engine is stopped")
            self._pending.append(row)
            self._cond.notify_all()
        if self._thread is None or not self._thread.is_alive():
            self.start()

    # ---- async API -------------------------------------------------------------------------
    async def stream(
        self, prompt_ids: list[int], params: GenerationParams
    ) -> AsyncIterator[TokenEvent]:
        """Token events of one request; closing the iterator (or cancelling the task that
        awaits it) cancels the row and frees its batch slot."""
        self.check(prompt_ids, params)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[TokenEvent | BaseException] = asyncio.Queue()

        def sink(item: TokenEvent | BaseException) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the caller's loop is closed: nobody is listening
                row.cancelled = True

        row = _Request(list(prompt_ids), params, sink, self._decoder())
        row.loop, row.queue = loop, queue
        self._submit(row)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            row.cancelled = True

    async def generate(self, prompt_ids: list[int], params: GenerationParams) -> Completion:
        events = [e async for e in self.stream(prompt_ids, params)]
        return _completion(len(prompt_ids), events, params, self.eos_ids)

    # ---- synchronous API -------------------------------------------------------------------
    def generate_batch(
        self, prompts: list[list[int]], params: GenerationParams | Sequence[GenerationParams]
    ) -> list[Completion]:
        """Generate for every prompt in this thread (no background thread needed), up to
        ``max_batch_size`` rows at once with finished rows replaced as they end."""
        if torch.get_num_threads() != self.num_threads:
            torch.set_num_threads(self.num_threads)
        per_row = [params] * len(prompts) if isinstance(params, GenerationParams) else list(params)
        if len(per_row) != len(prompts):
            raise InputError("generate_batch needs one GenerationParams per prompt")
        for p, prm in zip(prompts, per_row, strict=True):
            self.check(p, prm)
        events: list[list[TokenEvent]] = [[] for _ in prompts]
        errors: list[BaseException] = []

        def sink_for(i: int) -> Callable[[TokenEvent | BaseException], None]:
            return lambda e: (
                errors.append(e) if isinstance(e, BaseException) else events[i].append(e)
            )

        waiting = deque(
            _Request(list(p), prm, sink_for(i), self._decoder())
            for i, (p, prm) in enumerate(zip(prompts, per_row, strict=True))
        )
        batch: _Batch | None = None
        with self._model_lock, torch.inference_mode():
            while waiting or batch is not None:
                room = self.max_batch_size - (len(batch.rows) if batch else 0)
                if batch is not None and not _mergeable(batch.cache):
                    room = 0
                batch = self._admit(batch, _take(waiting, room))
                if batch is not None:
                    batch = self._step(batch)
        if errors:
            raise errors[0]
        return [
            _completion(len(p), ev, prm, self.eos_ids)
            for p, ev, prm in zip(prompts, events, per_row, strict=True)
        ]

    # ---- the decode loop -------------------------------------------------------------------
    def _decoder(self) -> _TextDecoder:
        return _TextDecoder(self._token_bytes, self.tokenizer)

    def _forward(self, ids: Tensor, mask: Tensor, pos: Tensor, cache: Any) -> Tensor:
        if self._fast is not None:
            return self._fast.forward(ids, mask, pos, cache)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :].float()  # (B, V)

    def _admit(self, batch: _Batch | None, rows: list[_Request]) -> _Batch | None:
        """Prefill ``rows`` together (left padded) and merge them into ``batch``."""
        if not rows:
            return batch
        from transformers import DynamicCache

        length = max(len(r.prompt_ids) for r in rows)
        ids = torch.tensor(
            [[self.pad_id] * (length - len(r.prompt_ids)) + r.prompt_ids for r in rows],
            dtype=torch.long,
        )  # (b, P)
        mask = torch.tensor(
            [[0] * (length - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in rows],
            dtype=torch.long,
        )  # (b, P)
        pos = (mask.cumsum(-1) - 1).clamp_(min=0)  # (b, P)
        cache = (
            self._fast.new_cache()
            if self._fast is not None
            else DynamicCache(config=self.model.config)
        )
        logits = self._forward(ids, mask, pos, cache)
        self.stats.prefills += 1
        self.stats.requests += len(rows)
        new = _Batch(rows, ids, mask, pos[:, -1] + 1, cache, logits)
        return new if batch is None else _merge(batch, new, self.pad_id)

    def _step(self, batch: _Batch) -> _Batch | None:
        """Sample one token per row, emit events, drop finished rows, run one forward pass."""
        live = [i for i, r in enumerate(batch.rows) if not r.cancelled]
        if len(live) < len(batch.rows):
            kept = _select(batch, live)
            if kept is None:
                return None
            batch = kept
        rows, logits = batch.rows, batch.logits  # logits (B, V)
        self.stats.decode_steps += 1
        self.stats.rows_per_step[len(rows)] += 1
        tokens, logprobs = self._sample(batch)  # (B,), (B, V) or None
        token_list = tokens.tolist()
        chosen, tops = self._report_logprobs(rows, tokens, logprobs)
        keep: list[int] = []
        outbox: dict[asyncio.AbstractEventLoop, list[tuple[_Request, TokenEvent]]] = {}
        for i, (row, tok) in enumerate(zip(rows, token_list, strict=True)):
            is_eos = tok in self.eos_ids and not row.params.ignore_eos
            event = row.accept(tok, is_eos, chosen[i], tops[i])
            if row.loop is None:
                row.sink(event)
            else:
                outbox.setdefault(row.loop, []).append((row, event))
            if not row.finished:
                keep.append(i)
        for loop, items in outbox.items():
            _post(loop, items)
        self.stats.tokens_generated += len(rows)
        del logits
        if len(keep) < len(rows):
            kept = _select(batch, keep)
            if kept is None:
                return None
            batch = kept
            tokens = tokens[keep]
        step = tokens.unsqueeze(-1)  # (B, 1)
        batch.ids = torch.cat([batch.ids, step], dim=-1)
        batch.mask = torch.cat([batch.mask, torch.ones_like(step)], dim=-1)
        batch.logits = self._forward(step, batch.mask, batch.next_pos.unsqueeze(-1), batch.cache)
        batch.next_pos = batch.next_pos + 1
        return batch

    def _hooked_logits(self, batch: _Batch) -> Tensor:
        """The batch's logits (B, V) after each row's ``logits_hook`` (one call per hook)."""
        groups: dict[int, tuple[LogitsHook, list[int]]] = {}
        for i, r in enumerate(batch.rows):
            hook = r.params.logits_hook
            if hook is not None:
                groups.setdefault(id(hook), (hook, []))[1].append(i)
        if not groups:
            return batch.logits
        logits = batch.logits.clone()
        for hook, idx in groups.values():
            index = torch.tensor(idx)
            logits[index] = hook(batch.logits[index], batch.ids[index], batch.mask[index]).float()
        return logits

    def _sample(self, batch: _Batch) -> tuple[Tensor, Tensor | None]:
        """Run the sampler once per (temperature, top_p) group of rows."""
        rows = batch.rows
        all_logits = self._hooked_logits(batch)  # (B, V)
        groups: dict[tuple[float, float], list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault((r.params.temperature, r.params.top_p), []).append(i)
        want_lp = any(r.params.logprobs or r.params.top_logprobs for r in rows)
        if len(groups) == 1:
            (temperature, top_p), _ = next(iter(groups.items()))
            out = self.sampler.sample(
                all_logits,
                batch.ids,
                temperature=temperature,
                top_p=top_p,
                generators=[r.generator for r in rows],
                tags=[r.params.tag for r in rows],
            )
            return out.tokens.long(), (out.logprobs if want_lp else None)
        tokens = torch.empty(len(rows), dtype=torch.long)
        logprobs = torch.empty_like(all_logits) if want_lp else None
        for (temperature, top_p), idx in groups.items():
            index = torch.tensor(idx)
            out = self.sampler.sample(
                all_logits[index],
                batch.ids[index],
                temperature=temperature,
                top_p=top_p,
                generators=[rows[i].generator for i in idx],
                tags=[rows[i].params.tag for i in idx],
            )
            tokens[index] = out.tokens.long()
            if logprobs is not None:
                logprobs[index] = out.logprobs.float()
        return tokens, logprobs

    def _report_logprobs(
        self, rows: list[_Request], tokens: Tensor, logprobs: Tensor | None
    ) -> tuple[list[float | None], list[Any]]:
        chosen: list[float | None] = [None] * len(rows)
        tops: list[Any] = [None] * len(rows)
        if logprobs is None:
            return chosen, tops
        picked = logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).clamp(min=LOGPROB_FLOOR)
        k = max(r.params.top_logprobs for r in rows)
        top_vals: list[Any] | None = None
        top_ids: list[Any] | None = None
        if k:
            vals, ids = logprobs.topk(k, dim=-1)  # (B, k)
            top_vals, top_ids = vals.clamp(min=LOGPROB_FLOOR).tolist(), ids.tolist()
        picked_list = picked.tolist()
        for i, r in enumerate(rows):
            if r.params.logprobs or r.params.top_logprobs:
                chosen[i] = picked_list[i]
            if r.params.top_logprobs and top_vals is not None and top_ids is not None:
                n = r.params.top_logprobs
                tops[i] = tuple(
                    (self._piece(t), v)
                    for t, v in zip(top_ids[i][:n], top_vals[i][:n], strict=True)
                )
        return chosen, tops

    def _piece(self, token: int) -> str:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self.tokenizer.decode([token])
        return piece


# ---- batch surgery: merge, select, trim ---------------------------------------------------
def _mergeable(cache: Any) -> bool:
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(
        type(layer).__name__ in ("DynamicLayer", "KVLayer") for layer in layers or ()
    )


def _merge(a: _Batch, b: _Batch, pad_id: int) -> _Batch:
    """One batch from two: the shorter side is left-padded (masked) to the longer length."""
    length = max(a.ids.shape[1], b.ids.shape[1])
    for la, lb in zip(a.cache.layers, b.cache.layers, strict=True):
        keys = torch.cat(
            [_pad_left(la.keys, length, 0.0, -2), _pad_left(lb.keys, length, 0.0, -2)]
        )  # (B, H, L, D)
        values = torch.cat(
            [_pad_left(la.values, length, 0.0, -2), _pad_left(lb.values, length, 0.0, -2)]
        )
        la.keys, la.values = keys, values  # both read before either is replaced
    return _Batch(
        a.rows + b.rows,
        torch.cat([_pad_left(a.ids, length, pad_id, 1), _pad_left(b.ids, length, pad_id, 1)]),
        torch.cat([_pad_left(a.mask, length, 0, 1), _pad_left(b.mask, length, 0, 1)]),
        torch.cat([a.next_pos, b.next_pos]),
        a.cache,
        torch.cat([a.logits, b.logits]),
    )


def _select(batch: _Batch, keep: list[int]) -> _Batch | None:
    """Keep rows ``keep``; cut leading columns that are padding for every remaining row."""
    if not keep:
        return None
    index = torch.tensor(keep, dtype=torch.long)
    batch.cache.batch_select_indices(index)
    batch.rows = [batch.rows[i] for i in keep]
    batch.ids, batch.mask = batch.ids[index], batch.mask[index]
    batch.next_pos, batch.logits = batch.next_pos[index], batch.logits[index]
    lead = int((batch.mask.sum(0) == 0).long().cumprod(0).sum())  # all-pad leading columns
    if lead and _mergeable(batch.cache):
        batch.ids, batch.mask = batch.ids[:, lead:], batch.mask[:, lead:]
        for layer in batch.cache.layers:
            layer.keys, layer.values = layer.keys[:, :, lead:], layer.values[:, :, lead:]
    return batch


def _post(loop: asyncio.AbstractEventLoop, items: list[tuple[_Request, TokenEvent]]) -> None:
    """Hand one step's events to an event loop in a single thread-safe call."""
    try:
        loop.call_soon_threadsafe(_deliver, [(row.queue, event) for row, event in items])
    except RuntimeError:  # the loop is closed: nobody is listening any more
        for row, _ in items:
            row.cancelled = True


def _deliver(items: list[tuple[asyncio.Queue | None, TokenEvent]]) -> None:
    for queue, event in items:
        if queue is not None:
            queue.put_nowait(event)


def _take(queue: deque[_Request], n: int) -> list[_Request]:
    return [queue.popleft() for _ in range(min(n, len(queue)))]


def _completion(
    prompt_tokens: int, events: list[TokenEvent], params: GenerationParams, eos_ids: frozenset[int]
) -> Completion:
    """Assemble a Completion from a request's events (the eos event carries no token)."""
    ended_by_eos = (
        bool(events)
        and events[-1].finish_reason == "stop"
        and (events[-1].token_id in eos_ids and events[-1].logprob is None)
    )
    body = events[:-1] if ended_by_eos else events
    ids = tuple(e.token_id for e in body)
    want = params.logprobs or params.top_logprobs > 0
    return Completion(
        text="".join(e.text for e in events),
        token_ids=ids,
        finish_reason=(events[-1].finish_reason if events else None) or "length",
        prompt_tokens=prompt_tokens,
        completion_tokens=len(ids),
        token_logprobs=tuple(e.logprob if e.logprob is not None else 0.0 for e in body)
        if want
        else None,
        top_logprobs=tuple(e.top_logprobs or () for e in body) if params.top_logprobs else None,
    )


def _byte_table(tokenizer: Any) -> list[bytes] | None:
    """Bytes of every token for byte-level BPE tokenizers (special tokens -> b""), or None when
    the tokenizer is not byte-level (generation then re-decodes text)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or type(backend.decoder).__name__ != "ByteLevel":
        return None
    byte_of = {ch: b for b, ch in byte_level_alphabet().items()}
    special = set(tokenizer.all_special_ids)
    added = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
    table: list[bytes] = []
    for token_id in range(len(tokenizer)):
        if token_id in special:
            table.append(b"")
            continue
        if token_id in added:
            table.append(
                b""
                if tokenizer.added_tokens_decoder[token_id].special
                else added[token_id].encode()
            )
            continue
        piece = tokenizer.convert_ids_to_tokens(token_id)
        if piece is None or any(ch not in byte_of for ch in piece):
            return None
        table.append(bytes(byte_of[ch] for ch in piece))
    return table
