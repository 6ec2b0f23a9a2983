"""Servers for tests and benchmarks: a mock OpenAI upstream and an in-thread ASGI server.

``MockUpstream`` is a tiny aiohttp server speaking OpenAI's API that answers instantly (it
stands in for vLLM/OpenAI, which cannot run here). It runs in a thread of the caller
(``MockUpstream().start()``) or as its own process (``python tests/support/servers.py --port
N``, what the overhead benchmark uses). Model names choose its behaviour:

- ``mock-model``: a fixed answer quoting the last message, streamed in 4 chunks when asked;
- ``mock-slow``: 200 chunks, 20 ms apart (a stream a client can walk away from);
- ``mock-refuse``: a 400 OpenAI error (errors pass through the proxy unchanged);
- ``mock-long``: a ~1,000-token answer to any prompt;
- ``mock-tools``: every choice is a call of the first tool (arguments quoting the prompt),
  ``finish_reason: tool_calls``; streamed, the arguments arrive in pieces;
- ``mock-refusal``: every choice is a refusal (``message.refusal``, content null).

With ``n > 1`` choice ``i`` ends in `` #i`` (choice 0 as with ``n = 1``); streams carry every
choice. ``/v1/responses`` answers a ``response`` object (streamed as OpenAI's named events,
``mock-tools`` as a ``function_call`` output); ``/v1/embeddings`` answers one 8-dimensional
vector per input (base64 when asked).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import struct
import threading
import time
from typing import Any

import orjson

from distillguard.gateway.process import free_port

MOCK_MODELS = ("mock-model", "mock-slow", "mock-refuse", "mock-long", "mock-tools", "mock-refusal")
EMBEDDING_DIMS = 8


# --- the mock upstream ----------------------------------------------------------------------


def _answer_text(body: dict[str, Any]) -> str:
    if body.get("model") == "mock-long":  # ~1,000 tokens whatever the prompt: a TPM test
        return "lorem ipsum " * 350
    if isinstance(body.get("input"), str):
        last = body["input"]
    elif isinstance(body.get("input"), list):
        items = body["input"] or [{}]
        last = items[-1].get("content") or ""
        if isinstance(last, list):
            last = "".join(p.get("text", "") for p in last if isinstance(p, dict))
    elif "messages" in body:
        messages = body.get("messages") or [{}]
        last = messages[-1].get("content") or ""
        if isinstance(last, list):
            last = "".join(p.get("text", "") for p in last if isinstance(p, dict))
    else:
        prompt = body.get("prompt") or ""
        last = prompt if isinstance(prompt, str) else "".join(prompt)
    return f"mock answer to: {str(last)[:40]}"


def _nth(text: str, i: int) -> str:
    """Choice ``i``'s text: choice 0 is the plain answer, the others are told apart."""
    return text if i == 0 else f"{text} #{i}"


def _tool_name(body: dict[str, Any]) -> str:
    """The first tool's name (chat's nested ``function.name`` or the Responses' flat one)."""
    for tool in body.get("tools") or ():
        if isinstance(tool, dict):
            function = tool.get("function")
            name = function.get("name") if isinstance(function, dict) else tool.get("name")
            if isinstance(name, str):
                return name
    return "lookup"


def _arguments(text: str) -> str:
    return orjson.dumps({"query": text}).decode()


def _mock_message(
    body: dict[str, Any], text: str, tools: bool, refusal: bool, i: int
) -> dict[str, Any]:
    if tools:
        call = {
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": _tool_name(body), "arguments": _arguments(text)},
        }
        return {"role": "assistant", "content": None, "tool_calls": [call]}
    if refusal:
        return {"role": "assistant", "content": None, "refusal": f"I can't help with that #{i}"}
    return {"role": "assistant", "content": text}


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
        tools = model == "mock-tools"
        refusal = model == "mock-refusal"
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
                        "message": _mock_message(body, _nth(text, i), tools, refusal, i),
                        "logprobs": None,
                        "finish_reason": "tool_calls" if tools else "stop",
                    }
                    for i in range(n)
                ]
                obj = "chat.completion"
            else:
                choices = [
                    {"index": i, "text": _nth(text, i), "logprobs": None, "finish_reason": "stop"}
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

        def chunk(c: int, i: int, piece: str | None, finish: str | None) -> bytes:
            if chat:
                delta: dict[str, Any] = {}
                if piece is not None:
                    if tools:  # the call's arguments arrive in pieces, its id and name first
                        call: dict[str, Any] = {"index": 0, "function": {"arguments": piece}}
                        if i == 0:
                            call.update(id=f"call_{c}", type="function")
                            call["function"]["name"] = _tool_name(body)
                        delta["tool_calls"] = [call]
                    else:
                        delta["refusal" if refusal else "content"] = piece
                if piece is not None and i == 0:
                    delta["role"] = "assistant"
                choice = {"index": c, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {
                    "index": c,
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

        for c in range(n):
            source = _arguments(_nth(text, c)) if tools else _nth(text, c)
            choice_pieces = pieces if c == 0 and not tools else _pieces(source, 4)
            for i, piece in enumerate(choice_pieces):
                await response.write(chunk(c, i, piece, None))
                if slow:
                    await asyncio.sleep(0.02)
            finish = "tool_calls" if tools else "stop"
            await response.write(chunk(c, len(choice_pieces), None, finish))
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

    async def responses(request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        requests.append(body)
        model = body.get("model", "mock-model")
        ident = f"resp_mock{len(requests)}"
        text = _answer_text(body)
        if model == "mock-tools":
            output = [
                {
                    "type": "function_call",
                    "id": f"fc_{ident}",
                    "call_id": f"call_{ident}",
                    "name": _tool_name(body),
                    "arguments": _arguments(text),
                    "status": "completed",
                }
            ]
        else:
            output = [
                {
                    "type": "message",
                    "id": f"msg_{ident}",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ]
        answer = {
            "id": ident,
            "object": "response",
            "created_at": created,
            "status": "completed",
            "model": model,
            "output": output,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": body.get("tools") or [],
            "usage": {
                "input_tokens": 7,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": max(1, len(text) // 4),
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 7 + max(1, len(text) // 4),
            },
        }
        if not body.get("stream"):
            return web.Response(body=orjson.dumps(answer), content_type="application/json")
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        sequence = 0

        async def event(kind: str, **fields: Any) -> None:
            nonlocal sequence
            data = {"type": kind, "sequence_number": sequence, **fields}
            sequence += 1
            await response.write(
                b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
            )

        started = {**answer, "status": "in_progress", "output": [], "usage": None}
        await event("response.created", response=started)
        if model != "mock-tools":
            item_id = output[0]["id"]
            for piece in _pieces(text, 4):
                await event(
                    "response.output_text.delta",
                    item_id=item_id,
                    output_index=0,
                    content_index=0,
                    delta=piece,
                    logprobs=[],
                )
        await event("response.completed", response=answer)
        await response.write_eof()
        return response

    async def embeddings(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        requests.append(body)
        inputs = body.get("input")
        many = isinstance(inputs, list) and inputs and not isinstance(inputs[0], int)
        count = len(inputs) if many else 1
        data = []
        for i in range(count):
            vector = [round(0.1 * (i + 1) * (d + 1), 4) for d in range(EMBEDDING_DIMS)]
            if body.get("encoding_format") == "base64":
                encoded: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            else:
                encoded = vector
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        usage = {"prompt_tokens": 3 * count, "total_tokens": 3 * count}
        answer = {"object": "list", "data": data, "model": body.get("model"), "usage": usage}
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app["requests"] = requests
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", complete)
    app.router.add_post("/v1/completions", complete)
    app.router.add_post("/v1/responses", responses)
    app.router.add_post("/v1/embeddings", embeddings)
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
