"""Servers for tests and benchmarks: a mock OpenAI upstream and an in-thread ASGI server.

``MockUpstream`` is a tiny aiohttp server speaking OpenAI's API that answers instantly (it
stands in for vLLM/OpenAI, which cannot run here). It runs in a thread of the caller
(``MockUpstream().start()``) or as its own process (``python tests/support/servers.py --port
N``, what the overhead benchmark uses). Model names choose its behaviour:

- ``mock-model``: a fixed answer quoting the last message, streamed in 4 chunks when asked;
- ``mock-slow``: 200 chunks, 20 ms apart (a stream a client can walk away from);
- ``mock-refuse``: a 400 OpenAI error (errors pass through the proxy unchanged);
- ``mock-long``: a ~1,000-token answer to any prompt.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

import orjson

from distillguard.gateway.process import free_port

MOCK_MODELS = ("mock-model", "mock-slow", "mock-refuse", "mock-long")


# --- the mock upstream ----------------------------------------------------------------------


def _answer_text(body: dict[str, Any]) -> str:
    if body.get("model") == "mock-long":  # ~1,000 tokens whatever the prompt: a TPM test
        return "lorem ipsum " * 350
    if "messages" in body:
        messages = body.get("messages") or [{}]
        last = messages[-1].get("content") or ""
        if isinstance(last, list):
            last = "".join(p.get("text", "") for p in last if isinstance(p, dict))
    else:
        prompt = body.get("prompt") or ""
        last = prompt if isinstance(prompt, str) else "".join(prompt)
    return f"mock answer to: {str(last)[:40]}"


def _pieces(text: str, n: int) -> list[str]:
    step = max(1, -(-len(text) // n))
    return [text[i : i + step] for i in range(0, len(text), step)]


def build_mock_app():
    """The aiohttp application (records every request body in ``app["requests"]``)."""
    from aiohttp import web

    requests: list[dict[str, Any]] = []
    created = int(time.time())

    async def models(_request: web.Request) -> web.Response:
        data = [
            {"id": m, "object": "model", "created": created, "owned_by": "mock"}
            for m in MOCK_MODELS
        ]
        return web.Response(
            body=orjson.dumps({"object": "list", "data": data}), content_type="application/json"
        )

    async def complete(request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        requests.append(body)
        chat = request.path.endswith("/chat/completions")
        model = body.get("model", "mock-model")
        if model == "mock-refuse":
            error = {
                "error": {
                    "message": "refused by the mock",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "mock_refusal",
                }
            }
            return web.Response(
                status=400, body=orjson.dumps(error), content_type="application/json"
            )
        text = _answer_text(body)
        n = int(body.get("n") or 1)
        completion_tokens = max(1, len(text) // 4)
        prompt_tokens = 7
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        ident = f"mock-{len(requests)}"
        if not body.get("stream"):
            if chat:
                choices = [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                    for i in range(n)
                ]
                obj = "chat.completion"
            else:
                choices = [
                    {"index": i, "text": text, "logprobs": None, "finish_reason": "stop"}
                    for i in range(n)
                ]
                obj = "text_completion"
            answer = {
                "id": ident,
                "object": obj,
                "created": created,
                "model": model,
                "choices": choices,
                "usage": usage,
            }
            return web.Response(body=orjson.dumps(answer), content_type="application/json")

        slow = model == "mock-slow"
        pieces = ["tok "] * 200 if slow else _pieces(text, 4)
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(i: int, piece: str | None, finish: str | None) -> bytes:
            if chat:
                delta = {} if piece is None else {"content": piece}
                if piece is not None and i == 0:
                    delta["role"] = "assistant"
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {
                    "index": 0,
                    "text": piece or "",
                    "logprobs": None,
                    "finish_reason": finish,
                }
            data = {
                "id": ident,
                "object": obj,
                "created": created,
                "model": model,
                "choices": [choice],
            }
            return b"data: " + orjson.dumps(data) + b"\n\n"

        for i, piece in enumerate(pieces):
            await response.write(chunk(i, piece, None))
            if slow:
                await asyncio.sleep(0.02)
        await response.write(chunk(len(pieces), None, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            data = {
                "id": ident,
                "object": obj,
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            await response.write(b"data: " + orjson.dumps(data) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app["requests"] = requests
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", complete)
    app.router.add_post("/v1/completions", complete)
    return app


class MockUpstream:
    """The mock upstream on a thread of this process: ``url``, ``requests`` (bodies seen)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[dict[str, Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None

    def start(self) -> MockUpstream:
        self._thread = threading.Thread(target=self._run, name="mock-upstream", daemon=True)
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("mock upstream did not start")
        return self

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        from aiohttp import web

        app = build_mock_app()
        self.requests = app["requests"]
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> MockUpstream:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def serve_mock_forever(port: int) -> None:
    """Run the mock upstream as this process's only job (uvloop when available)."""
    from aiohttp import web

    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    web.run_app(build_mock_app(), host="127.0.0.1", port=port, access_log=None, print=None)


class ThreadedServer:
    """An ASGI app under uvicorn on a thread of this process (local-mode tests, the demo)."""

    def __init__(self, app: Any, *, port: int | None = None) -> None:
        import uvicorn

        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.app = app
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="on",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="gateway", daemon=True)

    def start(self, *, timeout: float = 120.0) -> ThreadedServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the gateway thread ended during start-up (see the log)")
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start in time")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(30)

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="the mock OpenAI upstream")
    parser.add_argument("--port", type=int, required=True)
    serve_mock_forever(parser.parse_args().port)
