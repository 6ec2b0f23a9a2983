"""A small OpenAI-compatible upstream on 127.0.0.1 for harvest tests.

It stands in for an *external* provider (the one thing that cannot run here): answers are a
deterministic function of the prompt, and a test can make chosen prompts fail first with
429 + Retry-After, 500, or a delay, to exercise the client's retries.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

API_KEY = "sk-test-harvest"
MODEL = "mock-teacher"


def mock_answer(prompt: str) -> str:
    """The mock teacher's answer: deterministic, so tests can check every record."""
    return "answer to " + prompt[::-1]


@dataclass
class MockBehaviour:
    delay_s: float = 0.0  # every completion waits this long (lets a test kill mid-run)
    # prompt substring -> HTTP statuses returned on the first calls, before a success
    failures: dict[str, list[int]] = field(default_factory=dict)
    retry_after: str | None = "0"  # Retry-After header value sent with 429/503
    calls: Counter = field(default_factory=Counter)  # prompt -> completion calls received
    retry_gaps: list[float] = field(default_factory=list)  # seconds between a 429 and its retry
    _last_429: dict[str, float] = field(default_factory=dict)


@dataclass
class MockServer:
    base_url: str
    behaviour: MockBehaviour


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": "mock_error", "code": str(status)}}
    return web.json_response(body, status=status, headers=headers or {})


def _build_app(behaviour: MockBehaviour) -> web.Application:
    async def models(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return _error(401, "invalid api key")
        return web.json_response(
            {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "mock"}]}
        )

    async def chat(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return _error(401, "invalid api key")
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        behaviour.calls[prompt] += 1
        if prompt.startswith("INVALID"):
            return _error(400, "prompt rejected")
        now = time.monotonic()
        if prompt in behaviour._last_429:
            behaviour.retry_gaps.append(now - behaviour._last_429.pop(prompt))
        for needle, statuses in behaviour.failures.items():
            if needle in prompt and statuses:
                status = statuses.pop(0)
                headers = {}
                if status in (429, 503) and behaviour.retry_after is not None:
                    headers["Retry-After"] = behaviour.retry_after
                if status == 429:
                    behaviour._last_429[prompt] = now
                return _error(status, f"injected {status}", headers)
        if behaviour.delay_s:
            await asyncio.sleep(behaviour.delay_s)
        answer = mock_answer(prompt)
        words = answer.split(" ")
        choice: dict = {
            "index": 0,
            "message": {"role": "assistant", "content": answer},
            "finish_reason": "stop",
        }
        if body.get("logprobs"):
            k = int(body.get("top_logprobs") or 0)
            content = []
            for word in words:
                tops = [{"token": word, "logprob": -0.1, "bytes": None}]
                tops += [
                    {"token": f"alt{i}", "logprob": -3.0 - i, "bytes": None} for i in range(k - 1)
                ]
                content.append(
                    {"token": word, "logprob": -0.1, "bytes": None, "top_logprobs": tops}
                )
            choice["logprobs"] = {"content": content}
        return web.json_response(
            {
                "id": "chatcmpl-mock",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": MODEL,
                "choices": [choice],
                "usage": {
                    "prompt_tokens": len(prompt.split()),
                    "completion_tokens": len(words),
                    "total_tokens": len(prompt.split()) + len(words),
                },
            }
        )

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    return app


@pytest.fixture
def mock_openai() -> Iterator[MockServer]:
    """A running mock upstream; yields its base URL (ending in /v1) and its behaviour knobs."""
    behaviour = MockBehaviour()
    port = _free_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runner_box: list[web.AppRunner] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(_build_app(behaviour), access_log=None)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        runner_box.append(runner)
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10), "mock server did not start"
    yield MockServer(f"http://127.0.0.1:{port}/v1", behaviour)
    asyncio.run_coroutine_threadsafe(runner_box[0].cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
