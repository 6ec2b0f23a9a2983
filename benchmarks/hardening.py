"""Issue #16 figures: what an unauthenticated flood costs, and the gateway behind a slow Redis.

Two measurements, each beside its baseline in the same run:

1. **Unauthenticated flood.** ``--flood`` requests of ~900 KB with a wrong key, one after the
   other, against the gateway of this checkout and (``--before``) against the same gateway
   run from another checkout (e.g. ``/work/main/src``, the code before the fix). Reports
   bytes the SQLite log grew per rejected request and the gateway's CPU per request.
2. **Slow Redis.** Throughput at concurrency 32 (aiohttp client pool, mock upstream) of the
   gateway without Redis, with Redis, and with Redis behind a TCP proxy that delays every
   client-to-Redis chunk by ``--redis-delay-ms`` (20 ms: each Redis round trip costs 20 ms
   more). Target: within 20 % of Redis-less.

    PYTHONPATH=src .venv/bin/python benchmarks/hardening.py [--before /work/main/src]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distillguard.gateway.process import GatewayProcess, free_port
from gateway_overhead import MOCK_SERVER, _aiohttp, _cpu_seconds, _wait_ready

FLOOD_BODY = (
    b'{"model":"mock-model","messages":[{"role":"user","content":"' + b"x" * 900_000 + b'"}]}'
)


# --- a TCP proxy that delays one direction --------------------------------------------------


class DelayProxy:
    """127.0.0.1:<port> -> target, each client->target chunk forwarded ``delay_s`` later (in
    order): a Redis that answers every round trip ``delay_s`` late."""

    def __init__(self, target_port: int, delay_s: float) -> None:
        self.port = free_port()
        self._target_port = target_port
        self._delay_s = delay_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _pipe(self, reader, writer, delay_s: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            while chunk := await reader.read(65536):
                if delay_s:
                    due = loop.time() + delay_s
                    await asyncio.sleep(max(0.0, due - loop.time()))
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve_client(self, client_reader, client_writer) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        await asyncio.gather(
            self._pipe(client_reader, server_writer, self._delay_s),
            self._pipe(server_reader, client_writer, 0.0),
        )

    def __enter__(self) -> DelayProxy:
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve_client, "127.0.0.1", self.port), self._loop
        )
        self._server = started.result(10)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.close()
        self._loop.call_soon_threadsafe(self._loop.stop)


# --- measurements ---------------------------------------------------------------------------


def _log_bytes(home: Path) -> int:
    return sum(p.stat().st_size for p in home.glob("distillguard.db*") if p.is_file())


def flood(gateway: GatewayProcess, requests: int, progress: Progress) -> tuple[float, float, int]:
    """(log bytes per rejected request, gateway CPU µs per request, rows written)."""
    assert gateway.process is not None
    before_rows = len(gateway.exchanges(limit=1000))
    bytes_before = _log_bytes(gateway.home)
    cpu_before = _cpu_seconds(gateway.process.pid) or 0.0
    task = progress.add_task(f"flood {gateway.home.name}", total=requests)
    headers = {"content-type": "application/json", "authorization": "Bearer not-a-key"}
    with httpx.Client(timeout=30) as client:
        for _ in range(requests):
            client.post(f"{gateway.api_url}/chat/completions", content=FLOOD_BODY, headers=headers)
            progress.advance(task)
    time.sleep(1.0)  # let the writer thread finish
    cpu = (_cpu_seconds(gateway.process.pid) or 0.0) - cpu_before
    grown = _log_bytes(gateway.home) - bytes_before
    rows = len(gateway.exchanges(limit=1000)) - before_rows
    return grown / requests, cpu * 1e6 / requests, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="src/ of the code to compare with (flood only)")
    parser.add_argument("--flood", type=int, default=200, help="unauthenticated requests (0: skip)")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of one throughput run")
    parser.add_argument("--rounds", type=int, default=2, help="throughput rounds (median)")
    parser.add_argument("--redis-port", type=int, default=6379)
    parser.add_argument("--redis-delay-ms", type=float, default=20.0)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="dg-harden-"))
    port = free_port()
    mock = subprocess.Popen([sys.executable, str(MOCK_SERVER), "--port", str(port)])
    upstream = f"http://127.0.0.1:{port}"
    print(f"load before: {os.getloadavg()[0]:.2f} (1-min); machine shared with other engineers")

    def gateway(name: str, **env: str) -> GatewayProcess:
        return GatewayProcess(
            home=home / name,
            admin_token=secrets.token_urlsafe(16),
            upstream=upstream,
            env={"DISTILLGUARD_ONLINE_MONITOR": "false", **env},
        )

    try:
        _wait_ready(upstream)
        with Progress() as progress:
            # 1. unauthenticated flood
            flooded = {"this checkout": gateway("flood-after")}
            if args.before:
                flooded["before"] = gateway("flood-before", PYTHONPATH=args.before)
            flood_rows = {}
            for name, gw in flooded.items() if args.flood else ():
                with gw:
                    flood_rows[name] = flood(gw, args.flood, progress)

            # 2. slow Redis
            with DelayProxy(args.redis_port, args.redis_delay_ms / 1000) as proxy:
                delay = f"{args.redis_delay_ms:g}"
                variants = {
                    "no Redis": gateway("no-redis"),
                    "Redis": gateway(
                        "redis", DISTILLGUARD_REDIS_URL=f"redis://127.0.0.1:{args.redis_port}/0"
                    ),
                    f"Redis +{delay} ms": gateway(
                        "slow-redis", DISTILLGUARD_REDIS_URL=f"redis://127.0.0.1:{proxy.port}/0"
                    ),
                }
                keys = {}
                for name, gw in variants.items():
                    gw.start()
                    keys[name] = gw.create_key(rpm=10**9, tpm=2 * 10**9)[2]
                rps: dict[str, list[float]] = {name: [] for name in variants}
                errors: dict[str, int] = dict.fromkeys(variants, 0)
                task = progress.add_task("throughput", total=args.rounds * len(variants))
                for _ in range(args.rounds):
                    for name, gw in variants.items():
                        run = _aiohttp(gw.base_url, keys[name], 32, args.seconds)
                        rps[name].append(run.rps)
                        errors[name] += run.errors
                        progress.advance(task)
                for gw in variants.values():
                    gw.stop()
    finally:
        mock.terminate()
        mock.wait(10)

    print()
    print(f"Unauthenticated flood: {args.flood} requests of {len(FLOOD_BODY):,} bytes, wrong key")
    print(f"{'':16}{'log bytes/request':>18}{'CPU us/request':>16}{'rows':>6}")
    for name, (per_request, cpu, rows) in flood_rows.items():
        print(f"{name:16}{per_request:18,.0f}{cpu:16,.0f}{rows:6}")
    print()
    print(f"Throughput at c=32 (median of {args.rounds} x {args.seconds:g} s), mock upstream")
    base = statistics.median(rps["no Redis"])
    for name, values in rps.items():
        value = statistics.median(values)
        print(f"{name:16}{value:10.0f} req/s{value / base:8.2f} x no-Redis  errors {errors[name]}")
    print(f"load after: {os.getloadavg()[0]:.2f} (1-min)")


if __name__ == "__main__":
    main()
