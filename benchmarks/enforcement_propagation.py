"""How fast an admin's action, lift and an expiry reach a second gateway replica.

Two deployments, each of two real gateway processes (`distillguard serve --upstream`, online
monitor off) behind the instant mock upstream, in one run:

- polling (baseline): both replicas share one SQLite file, no Redis: a replica learns of an
  action or a lift made on the other when it re-reads the actions table
  (``DISTILLGUARD_ENFORCEMENT_REFRESH_S``, default 2 s);
- redis: both share a fresh PostgreSQL database and Redis: the acting replica publishes on
  the change channel and the other reloads at once (same refresh period as a backstop).

Each trial applies a block on replica A (POST /admin/actions) and times, from A's answer,
until replica B refuses the account's requests (403); then lifts it on A and times until B
serves again; then applies a block with ttl_s = 2 x refresh + 1 on A, waits until B
refuses, and times from its ``expires_at`` until B serves (expiry needs no message). B is
probed with one request every 10 ms.

    .venv/bin/python benchmarks/enforcement_propagation.py [--trials 5] [--refresh 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from distillguard.gateway.process import GatewayProcess, free_port

MOCK_SERVER = Path(__file__).resolve().parents[1] / "tests" / "support" / "servers.py"
PG_ADMIN_URL = os.environ.get(
    "DISTILLGUARD_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("DISTILLGUARD_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
BODY = b'{"model":"mock-model","messages":[{"role":"user","content":"probe"}]}'
console = Console()


def _status(gw: GatewayProcess, secret: str) -> int:
    request = urllib.request.Request(f"{gw.api_url}/chat/completions", data=BODY, method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", f"Bearer {secret}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _until(gw: GatewayProcess, secret: str, want: int, since: float, limit: float = 30.0) -> float:
    """Seconds from ``since`` (a time.time()) until ``gw`` answers ``want``."""
    while time.time() - since < limit:
        if _status(gw, secret) == want:
            return time.time() - since
        time.sleep(0.01)
    raise RuntimeError(f"replica never answered {want} within {limit} s")


def _trial(
    a: GatewayProcess, b: GatewayProcess, account: str, secret: str, short_ttl: float
) -> tuple[float, ...]:
    block = a.admin_post(
        "/actions", {"account": account, "action": "block", "reason": "benchmark", "ttl_s": 600}
    )
    applied = _until(b, secret, 403, time.time())
    a.admin_post(f"/actions/{block['id']}/lift", {"reason": "benchmark"})
    lifted = _until(b, secret, 200, time.time())
    short = a.admin_post(
        "/actions",
        {"account": account, "action": "block", "reason": "benchmark", "ttl_s": short_ttl},
    )
    _until(b, secret, 403, time.time())
    expired = _until(b, secret, 200, short["expires_at"])
    return applied, lifted, expired


@contextlib.contextmanager
def _pg_database():
    import psycopg

    name = f"dg_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5, help="trials per deployment")
    parser.add_argument("--refresh", type=float, default=2.0, help="enforcement_refresh_s")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="dg-bench-enforce-"))
    port = free_port()
    mock = subprocess.Popen([sys.executable, str(MOCK_SERVER), "--port", str(port)])
    results: dict[str, list[tuple[float, ...]]] = {}
    try:
        with _pg_database() as pg_url, Progress(console=console, transient=True) as bar:
            deployments = {
                "polling (SQLite, no Redis)": {
                    "DISTILLGUARD_DATABASE_URL": f"sqlite:///{home / 'shared.db'}"
                },
                "redis (PostgreSQL + Redis)": {
                    "DISTILLGUARD_DATABASE_URL": pg_url,
                    "DISTILLGUARD_REDIS_URL": REDIS_URL,
                },
            }
            task = bar.add_task("trials", total=args.trials * len(deployments))
            for label, env in deployments.items():
                token = secrets.token_urlsafe(16)
                env = {
                    **env,
                    "DISTILLGUARD_ONLINE_MONITOR": "false",
                    "DISTILLGUARD_ENFORCEMENT_REFRESH_S": str(args.refresh),
                }
                replicas = [
                    GatewayProcess(
                        home=home / f"{label[:5]}{i}",
                        admin_token=token,
                        upstream=f"http://127.0.0.1:{port}",
                        env=env,
                    ).start()
                    for i in range(2)
                ]
                try:
                    account, _, secret = replicas[0].create_key(rpm=1_000_000)
                    results[label] = []
                    for _ in range(args.trials):
                        short_ttl = 2 * args.refresh + 1  # B must see it before it ends
                        results[label].append(_trial(*replicas, account, secret, short_ttl))
                        bar.advance(task)
                finally:
                    for gw in replicas:
                        gw.stop()
    finally:
        mock.terminate()
        mock.wait(10)
    table = Table(
        title=f"seconds until replica B obeys (refresh {args.refresh:g} s, "
        f"{args.trials} trials: median / max)"
    )
    for column in ("deployment", "block applied on A", "lift on A", "after expires_at"):
        table.add_column(column)
    for label, rows in results.items():
        cells = [f"{statistics.median(c):.3f} / {max(c):.3f}" for c in zip(*rows, strict=True)]
        table.add_row(label, *cells)
    console.print(table)


if __name__ == "__main__":
    main()
