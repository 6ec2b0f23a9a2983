"""Real servers for tests, benchmarks and the demo: a mock OpenAI upstream and gateway processes.

``MockUpstream`` is a tiny aiohttp server speaking OpenAI's API that answers instantly (it
stands in for vLLM/OpenAI, which cannot run here). It runs in a thread of the caller
(``MockUpstream().start()``) or as its own process (``python -m
distillguard.gateway.testing --port N``, what the overhead benchmark uses). Model names choose
its behaviour:

- ``mock-model``: a fixed answer quoting the last message, streamed in 4 chunks when asked;
- ``mock-slow``: 200 chunks, 20 ms apart (a stream a client can walk away from);
- ``mock-refuse``: a 400 OpenAI error (errors pass through the proxy unchanged).

``GatewayProcess`` runs ``distillguard serve`` in a subprocess on a free port, waits for
``/healthz`` and offers an admin client to create accounts and keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

MOCK_MODELS = ("mock-model", "mock-slow", "mock-refuse")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the mock upstream ----------------------------------------------------------------------


def _answer_text(body: dict[str, Any]) -> str:
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


# --- gateway subprocesses -------------------------------------------------------------------


def _get(url: str, *, token: str | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _post(
    url: str, body: dict[str, Any], *, token: str | None = None, timeout: float = 10.0
) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=orjson.dumps(body), method="POST")
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read() or b"null")


@dataclass
class GatewayProcess:
    """``distillguard serve`` in a subprocess. Unpacks as ``(base_url, admin_token)``."""

    home: Path
    upstream: str | None = None
    model_dir: Path | None = None
    database_url: str | None = None
    admin_token: str = "test-admin-token"
    env: dict[str, str] = field(default_factory=dict)  # extra DISTILLGUARD_* settings
    watermark: str = "off"
    port: int = field(default_factory=free_port)
    workers: int = 1
    process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/v1"

    def __iter__(self):
        return iter((self.base_url, self.admin_token))

    def start(self, *, timeout: float = 60.0) -> GatewayProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLGUARD_")}
        env.update(
            {
                "DISTILLGUARD_HOME": str(self.home),
                "DISTILLGUARD_ADMIN_TOKEN": self.admin_token,
                "OMP_NUM_THREADS": "1",
            }
        )
        env.update(self.env)
        command = [
            sys.executable,
            "-m",
            "distillguard",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--watermark",
            self.watermark,
            "--workers",
            str(self.workers),
        ]
        if self.upstream:
            command += ["--upstream", self.upstream]
        if self.model_dir:
            command += ["--model", str(self.model_dir)]
        if self.database_url:
            command += ["--db", self.database_url]
        self.home.mkdir(parents=True, exist_ok=True)
        log_file = open(self.home / f"gateway-{self.port}.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError):
                status, _ = _get(f"{self.base_url}/healthz", timeout=1.0)
                if status == 200:
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gateway did not become healthy in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        path = self.home / f"gateway-{self.port}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs (what a crash or the OOM killer does)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    # -- admin helpers -----------------------------------------------------------------------

    def admin_get(self, path: str) -> Any:
        status, body = _get(f"{self.base_url}/admin{path}", token=self.admin_token)
        if status != 200:
            raise RuntimeError(f"GET /admin{path}: {status} {body[:300]!r}")
        return orjson.loads(body)

    def admin_post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        status, answer = _post(f"{self.base_url}/admin{path}", body or {}, token=self.admin_token)
        if status not in (200, 201):
            raise RuntimeError(f"POST /admin{path}: {status} {answer}")
        return answer

    def create_key(
        self, account: str | None = None, *, rpm: int | None = None, tpm: int | None = None
    ) -> tuple[str, str, str]:
        """A fresh account (unless ``account`` names one) and key: (account_id, key_id, secret)."""
        if account is None or not any(
            a["name"] == account or a["id"] == account for a in self.admin_get("/accounts")["data"]
        ):
            name = account or f"acct-{os.urandom(4).hex()}"
            account_id = self.admin_post("/accounts", {"name": name})["id"]
        else:
            account_id = next(
                a["id"]
                for a in self.admin_get("/accounts")["data"]
                if a["name"] == account or a["id"] == account
            )
        body: dict[str, Any] = {"account": account_id}
        if rpm is not None:
            body["rpm"] = rpm
        if tpm is not None:
            body["tpm"] = tpm
        created = self.admin_post("/keys", body)
        return account_id, created["key"]["key_id"], created["secret"]

    def exchanges(self, *, limit: int = 1000, account: str | None = None) -> list[dict[str, Any]]:
        query = f"/exchanges?limit={limit}" + (f"&account={account}" if account else "")
        return self.admin_get(query)["data"]

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="the mock OpenAI upstream")
    parser.add_argument("--port", type=int, required=True)
    serve_mock_forever(parser.parse_args().port)


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
