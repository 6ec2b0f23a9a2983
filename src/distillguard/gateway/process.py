"""``distillguard serve`` in a subprocess: what the demo, the benchmarks and the tests start.

``GatewayProcess`` runs the gateway on a free loopback port, waits for ``/healthz`` and offers a
small admin client (accounts, keys, the exchange log). It is a supervisor, not test scaffolding:
it needs a real admin token and has no default one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    admin_token: str  # required: a supervisor never ships a default credential
    upstream: str | None = None
    model_dir: Path | None = None
    database_url: str | None = None
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

    def start(self, *, timeout: float = 180.0) -> GatewayProcess:
        # A deadline against a hang, not a speed check: on a busy 2-core machine importing
        # torch and loading a model alone can take a minute.
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
