"""Harvest a teacher's answers through any OpenAI-compatible API (what an attacker runs).

One prompt -> one dataset record, appended to a JSON Lines file and fsynced before the next
record is written. The file is the checkpoint: a restarted harvest re-reads it, skips every
prompt id already there, and truncates a half-written last line (a kill mid-write), so a
run that is killed and resumed ends with every prompt exactly once.

Requests go through the official ``openai`` SDK with its own retries turned off: this module
retries 429, 5xx, time-outs and connection failures itself with exponential backoff, and
waits what the server's ``Retry-After`` asks when it says so. A wrong key or unknown model
stops the run at once (nothing written is lost); a prompt the server rejects as invalid
(400/413/422) is a permanent answer: it is recorded as a failed prompt in
``<out stem>.rejected.jsonl`` beside the dataset (id, status, the server's message), and later
runs skip it (delete that file to try those prompts again).

``harvest_local`` produces the same records straight from a ``GenerationEngine`` without
HTTP, for fast experiments (forensics' dose-response runs).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from distillguard.distill.records import (
    DatasetWriter,
    HarvestRecord,
    Prompt,
    PromptSet,
    prompt_id,
    read_dataset,
    read_prompts,
)
from distillguard.errors import (
    AuthError,
    InputError,
    NotFound,
    PermissionDenied,
    RateLimited,
    UpstreamError,
)

if TYPE_CHECKING:
    from distillguard.models.engine import GenerationEngine

COT_INSTRUCTION = "Think step by step, then give the final answer."

# --- the HTTP client -----------------------------------------------------------------------


@dataclass(frozen=True)
class HarvestConfig:
    base_url: str  # OpenAI-compatible root, e.g. http://127.0.0.1:8000/v1
    api_key: str  # the harvesting account's key
    model: str | None = None  # None: the first model /v1/models lists
    concurrency: int = 4  # requests in flight; a provider's per-key limits bound the useful value
    max_tokens: int = 128  # answer length; the students here have short contexts
    temperature: float = 1.0  # sample like an ordinary client (KD wants the real distribution)
    top_p: float = 1.0
    top_logprobs: int = 0  # > 0: ask for the top-k logprobs per token (gray-box KD)
    cot: bool = False  # append a step-by-step instruction (chain-of-thought harvesting)
    seed: int | None = None  # passed through; servers that honour it make runs repeatable
    max_retries: int = 6  # per prompt, on 429 / 5xx / time-out / connection failure
    backoff_base_s: float = 0.5  # first retry waits about this long, doubling each time
    backoff_max_s: float = 30.0  # cap of the exponential wait when no Retry-After is given
    max_retry_after_s: float = 300.0  # a server asking for longer than this is treated as down
    timeout_s: float = 60.0  # per request; a hung server counts as a retryable time-out

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise InputError(f"base URL must start with http:// or https://: {self.base_url!r}")
        if self.concurrency < 1 or self.concurrency > 256:
            raise InputError(f"concurrency must be in 1..256, got {self.concurrency}")
        if self.max_tokens < 1:
            raise InputError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not 0 <= self.top_logprobs <= 20:
            raise InputError(f"logprobs must be in 0..20 (OpenAI's limit), got {self.top_logprobs}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise InputError("temperature must be >= 0 and top_p in (0, 1]")
        if self.max_retries < 0 or self.backoff_base_s < 0 or self.timeout_s <= 0:
            raise InputError("max_retries, backoff_base_s must be >= 0 and timeout_s > 0")


@dataclass(frozen=True)
class HarvestResult:
    out: Path
    total_prompts: int
    already_done: int  # found in the dataset when the run started (resume)
    written: int  # new records this run
    failed: int  # prompts the server rejected as invalid this run (see rejected_path)
    failed_ids: tuple[str, ...]
    previously_rejected: int  # rejected by an earlier run: skipped
    retries: int  # retried requests (429, 5xx, time-outs)
    bad_lines: int  # prompt lines that held no prompt
    truncated_bytes: int  # a half-written last line removed on resume
    seconds: float
    completion_tokens: int

    @property
    def complete(self) -> bool:
        """Every prompt has its record or the server's recorded refusal."""
        return (
            self.already_done + self.written + self.failed + self.previously_rejected
            == self.total_prompts
        )


@dataclass(frozen=True)
class _Rejected:
    """The server's permanent refusal of one prompt (400/413/422)."""

    status: int
    message: str


def rejected_path(out: Path) -> Path:
    """Where a harvest into ``out`` records the prompts the server rejected."""
    return out.with_name(f"{out.stem}.rejected.jsonl")


def _read_rejected(path: Path) -> set[str]:
    if not path.exists():
        return set()
    ids: set[str] = set()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            ids.add(str(orjson.loads(line)["id"]))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue  # a half-written last line: that prompt is simply tried again
    return ids


class _EmptyAnswer(Exception):
    """A 200 response without a choice: retried like a server error."""


class _Abort(Exception):
    """A failure that stops the whole run (wraps the DistillGuardError to raise)."""


def _retry_after_seconds(headers: Any) -> float | None:
    """Seconds a 429/503 asks to wait: ``retry-after-ms``, ``retry-after`` (seconds or date)."""
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _backoff(config: HarvestConfig, attempt: int) -> float:
    # Full jitter in [0.5, 1] of the exponential step: concurrent workers do not retry in lockstep.
    step = min(config.backoff_max_s, config.backoff_base_s * (2**attempt))
    return step * random.uniform(0.5, 1.0)


def _logprobs_to_json(choice: Any) -> list[dict[str, Any]] | None:
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if not content:
        return None
    return [
        {
            "token": item.token,
            "logprob": float(item.logprob),
            # The raw bytes identify a token even when its text is a partial UTF-8 character.
            "bytes": list(item.bytes) if getattr(item, "bytes", None) else None,
            "top_logprobs": [
                {"token": top.token, "logprob": float(top.logprob)}
                for top in (item.top_logprobs or [])
            ],
        }
        for item in content
    ]


async def _request_one(
    client: Any, prompt: Prompt, config: HarvestConfig, model: str, counters: dict[str, int]
) -> HarvestRecord | _Rejected:
    """One prompt with retries, or the server's permanent refusal of it."""
    import openai

    content = f"{prompt.text}\n\n{COT_INSTRUCTION}" if config.cot else prompt.text
    kwargs: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": config.max_tokens,
        "temperature": config.temperature,
        "top_p": config.top_p,
    }
    if config.seed is not None:
        kwargs["seed"] = config.seed
    if config.top_logprobs:
        kwargs.update(logprobs=True, top_logprobs=config.top_logprobs)
    last_error = ""
    for attempt in range(config.max_retries + 1):
        wait: float | None = None
        try:
            response = await client.chat.completions.create(**kwargs)
            if not response.choices:
                raise _EmptyAnswer("the response has no choices")
            choice = response.choices[0]
            usage = response.usage
            return HarvestRecord(
                id=prompt.id,
                prompt=prompt.text,
                answer=choice.message.content or "",
                finish_reason=choice.finish_reason,
                model=response.model or model,
                cot=config.cot,
                usage={
                    "prompt_tokens": int(usage.prompt_tokens) if usage else 0,
                    "completion_tokens": int(usage.completion_tokens) if usage else 0,
                },
                logprobs=_logprobs_to_json(choice) if config.top_logprobs else None,
            )
        except openai.AuthenticationError as exc:
            raise _Abort(AuthError(f"the API refused the key (401): {exc.message}")) from exc
        except openai.PermissionDeniedError as exc:
            raise _Abort(PermissionDenied(f"the API denied access (403): {exc.message}")) from exc
        except openai.NotFoundError as exc:
            raise _Abort(NotFound(f"model or endpoint not found (404): {exc.message}")) from exc
        except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
            return _Rejected(exc.status_code, exc.message)
        except openai.RateLimitError as exc:
            last_error = f"429 rate limited: {exc.message}"
            wait = _retry_after_seconds(exc.response.headers)
        except openai.APIStatusError as exc:
            if exc.status_code == 413:
                return _Rejected(exc.status_code, exc.message)
            if exc.status_code < 500 and exc.status_code != 408:
                raise _Abort(UpstreamError(f"HTTP {exc.status_code}: {exc.message}")) from exc
            last_error = f"HTTP {exc.status_code}: {exc.message}"
            wait = _retry_after_seconds(exc.response.headers)
        except openai.APITimeoutError:
            last_error = f"timed out after {config.timeout_s} s"
        except openai.APIConnectionError as exc:
            last_error = f"connection failed: {exc.__cause__ or exc}"
        except (openai.APIResponseValidationError, _EmptyAnswer) as exc:
            last_error = f"malformed response: {exc}"
        if attempt == config.max_retries:
            break
        if wait is not None and wait > config.max_retry_after_s:
            raise _Abort(
                RateLimited(f"server asks to wait {wait:.0f} s; stopping", retry_after=wait)
            )
        counters["retries"] += 1
        await asyncio.sleep(wait if wait is not None else _backoff(config, attempt))
    error_cls = RateLimited if last_error.startswith("429") else UpstreamError
    message = (
        f"prompt {prompt.id}: gave up after {config.max_retries + 1} attempts ({last_error}); "
        "everything harvested so far is saved, run the same command again to resume"
    )
    raise _Abort(error_cls(message))


async def harvest_async(
    prompts: Sequence[Prompt],
    out: Path,
    config: HarvestConfig,
    *,
    bad_lines: int = 0,
    on_progress: Callable[[int, int], None] | None = None,
) -> HarvestResult:
    """Harvest every prompt not yet in ``out``; returns counts. Raises on a fatal failure
    (wrong key, unreachable server after retries) with everything written kept."""
    import openai

    started = time.perf_counter()
    counters = {"failed": 0, "retries": 0, "tokens": 0, "written": 0}
    failed_ids: list[str] = []
    rejected_file = rejected_path(out)
    rejected_before = _read_rejected(rejected_file)
    with DatasetWriter(out) as writer:
        already = sum(1 for p in prompts if p.id in writer.done_ids)
        todo = [p for p in prompts if p.id not in writer.done_ids and p.id not in rejected_before]
        previously_rejected = sum(
            1 for p in prompts if p.id in rejected_before and p.id not in writer.done_ids
        )
        client = openai.AsyncOpenAI(
            base_url=config.base_url,
            api_key=config.api_key,
            max_retries=0,
            timeout=config.timeout_s,
        )
        try:
            model = config.model or await _first_model(client, config)
            queue: asyncio.Queue[Prompt] = asyncio.Queue()
            for prompt in todo:
                queue.put_nowait(prompt)

            async def worker() -> None:
                while True:
                    try:
                        prompt = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    record = await _request_one(client, prompt, config, model, counters)
                    if isinstance(record, _Rejected):
                        failed_ids.append(prompt.id)
                        line = {"id": prompt.id, "status": record.status, "error": record.message}
                        with rejected_file.open("ab") as rejected:  # kept across reruns
                            rejected.write(orjson.dumps(line) + b"\n")
                    else:
                        writer.append(record)  # sync fsync in the loop: one writer, no races
                        counters["written"] += 1
                        counters["tokens"] += record.usage.get("completion_tokens", 0)
                    if on_progress is not None:
                        on_progress(counters["written"] + len(failed_ids), len(todo))

            workers = [asyncio.create_task(worker()) for _ in range(config.concurrency)]
            try:
                await asyncio.gather(*workers)
            except _Abort as abort:
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                raise abort.args[0] from abort
        finally:
            await client.close()
        truncated = writer.truncated_bytes
    return HarvestResult(
        out=out,
        total_prompts=len(prompts),
        already_done=already,
        written=counters["written"],
        failed=len(failed_ids),
        failed_ids=tuple(failed_ids),
        previously_rejected=previously_rejected,
        retries=counters["retries"],
        bad_lines=bad_lines,
        truncated_bytes=truncated,
        seconds=time.perf_counter() - started,
        completion_tokens=counters["tokens"],
    )


async def _first_model(client: Any, config: HarvestConfig) -> str:
    """The model to ask, from /v1/models; also a fast check of the URL and the key."""
    import openai

    for attempt in range(config.max_retries + 1):
        try:
            page = await client.models.list()
            names = [m.id for m in page.data]
            if not names:
                raise UpstreamError(f"{config.base_url} lists no model; pass --model")
            return names[0]
        except openai.AuthenticationError as exc:
            raise AuthError(f"the API refused the key (401): {exc.message}") from exc
        except openai.NotFoundError as exc:
            raise NotFound(f"{config.base_url}/models not found; pass --model ({exc})") from exc
        except (
            openai.APIConnectionError,
            openai.InternalServerError,
            openai.RateLimitError,
        ) as exc:
            if attempt == config.max_retries:
                raise UpstreamError(
                    f"cannot reach {config.base_url} after {attempt + 1} attempts: "
                    f"{exc.__cause__ or exc}"
                ) from exc
            await asyncio.sleep(_backoff(config, attempt))
    raise AssertionError("unreachable")


def harvest(
    prompts: PromptSet | Sequence[Prompt],
    out: Path,
    config: HarvestConfig,
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> HarvestResult:
    """Synchronous wrapper of :func:`harvest_async`."""
    if isinstance(prompts, PromptSet):
        items, bad = prompts.prompts, prompts.bad_lines
    else:
        items, bad = tuple(prompts), 0
    return asyncio.run(harvest_async(items, out, config, bad_lines=bad, on_progress=on_progress))


# --- straight from a local engine (no HTTP) ------------------------------------------------


@dataclass(frozen=True)
class LocalHarvestParams:
    max_new_tokens: int = 64  # answer length in tokens
    temperature: float = 1.0  # 1.0 samples the teacher's own distribution
    top_p: float = 1.0
    top_logprobs: int = 0  # > 0: keep the top-k per token (ids included) for topk-kd
    cot: bool = False  # append the step-by-step instruction like the HTTP harvest does
    seed: int | None = 0  # per-prompt seeds derived from it keep runs repeatable
    batch_size: int = 16  # prompts decoded together by generate_batch
    tag: str | None = None  # the "account" a watermark sampler keys on (like the gateway's)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise InputError("max_new_tokens and batch_size must be >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_logprobs < 0:
            raise InputError("temperature >= 0, top_p in (0, 1], top_logprobs >= 0 required")


def harvest_local(
    engine: GenerationEngine,
    prompts: Iterable[str | Prompt],
    params: LocalHarvestParams = LocalHarvestParams(),
    *,
    out: Path | None = None,
) -> list[HarvestRecord]:
    """Answer prompts with a local GenerationEngine: the same records as :func:`harvest`.

    Records carry token ids (``logprobs[i]["id"]``, ``["top_ids"]``) so topk-kd needs no
    string-to-id mapping. With ``out``, records are also appended (resumably) to a JSONL file.
    """
    from distillguard.models.engine import GenerationParams

    items = [p if isinstance(p, Prompt) else Prompt(prompt_id(p), p) for p in prompts]
    writer = DatasetWriter(out) if out is not None else None
    records: list[HarvestRecord] = []
    try:
        todo = [p for p in items if writer is None or p.id not in writer.done_ids]
        for start in range(0, len(todo), params.batch_size):
            chunk = todo[start : start + params.batch_size]
            texts = [f"{p.text}\n\n{COT_INSTRUCTION}" if params.cot else p.text for p in chunk]
            prompt_ids = [engine.encode_chat([{"role": "user", "content": t}]) for t in texts]
            gen_params = GenerationParams(
                max_new_tokens=params.max_new_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                seed=None if params.seed is None else params.seed + start,
                logprobs=params.top_logprobs > 0,
                top_logprobs=params.top_logprobs,
                tag=params.tag,
            )
            completions = engine.generate_batch(prompt_ids, gen_params)
            for prompt, completion in zip(chunk, completions, strict=True):
                record = HarvestRecord(
                    id=prompt.id,
                    prompt=prompt.text,
                    answer=completion.text,
                    finish_reason=completion.finish_reason,
                    model=engine.name,
                    cot=params.cot,
                    usage={
                        "prompt_tokens": completion.prompt_tokens,
                        "completion_tokens": completion.completion_tokens,
                    },
                    logprobs=_local_logprobs(engine, completion) if params.top_logprobs else None,
                )
                records.append(record)
                if writer is not None:
                    writer.append(record)
    finally:
        if writer is not None:
            writer.close()
    return records


def _local_logprobs(engine: GenerationEngine, completion: Any) -> list[dict[str, Any]] | None:
    tokenizer = engine.tokenizer
    token_lps = completion.token_logprobs
    tops = completion.top_logprobs
    if token_lps is None:
        return None
    entries: list[dict[str, Any]] = []
    for index, (token_id, logprob) in enumerate(zip(completion.token_ids, token_lps, strict=False)):
        top = tops[index] if tops is not None and index < len(tops) else ()
        entry: dict[str, Any] = {
            "id": int(token_id),
            "token": tokenizer.convert_ids_to_tokens(int(token_id)),
            "logprob": float(logprob),
            "top_logprobs": [_top_entry(tokenizer, item) for item in top],
        }
        entries.append(entry)
    return entries


def _top_entry(tokenizer: Any, item: Any) -> dict[str, Any]:
    """One top-k alternative from the engine: (token_id | token, logprob) -> JSON dict."""
    key, logprob = item[0], float(item[1])
    if isinstance(key, int):
        return {"id": key, "token": tokenizer.convert_ids_to_tokens(key), "logprob": logprob}
    return {"token": key, "logprob": logprob}


__all__ = [
    "COT_INSTRUCTION",
    "DatasetWriter",
    "HarvestConfig",
    "HarvestRecord",
    "HarvestResult",
    "LocalHarvestParams",
    "Prompt",
    "PromptSet",
    "harvest",
    "harvest_async",
    "harvest_local",
    "prompt_id",
    "read_dataset",
    "read_prompts",
]
