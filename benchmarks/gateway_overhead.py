"""Gateway overhead in --upstream mode, side by side with direct calls in the same run.

Starts, each in its own process: the instant mock upstream (aiohttp + uvloop), and the gateway
(`distillguard serve --upstream`, one worker, uvloop + httptools, SQLite log on, key check,
rate limiter, JSON access log, metrics). A load generator in a third process (`wrk` when
installed, else an aiohttp client pool) drives the mock directly and then through the gateway,
alternating rounds, and reports:

- p50 latency at concurrency 1 (the gateway's added p50 = through - direct);
- requests/s at concurrency 32;

with the ratio gateway/direct. Targets: <= 1 ms added p50 at c=1, >= 1,000 requests/s at c=32.

    .venv/bin/python benchmarks/gateway_overhead.py [--seconds 8] [--rounds 3] [--client wrk]

A second gateway with the online monitor on (``gateway+monitor``) runs in the same rounds.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from distillguard.gateway.process import GatewayProcess, free_port

# the mock upstream lives with the test scaffolding; run as a script, its own process
MOCK_SERVER = Path(__file__).resolve().parents[1] / "tests" / "support" / "servers.py"

BODY = '{"model":"mock-model","messages":[{"role":"user","content":"hello gateway"}]}'


@dataclass(frozen=True)
class Run:
    p50_ms: float
    rps: float
    errors: int
    cpu_us_per_request: float | None = None  # the server process's CPU (user + system)


def _cpu_seconds(pid: int) -> float | None:
    """CPU time used so far by a process (Linux /proc): noise-robust cost per request."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wrk(url: str, secret: str | None, concurrency: int, seconds: float) -> Run:
    auth = f'wrk.headers["Authorization"] = "Bearer {secret}"' if secret else ""
    script = textwrap.dedent(f"""
        wrk.method = "POST"
        wrk.body = '{BODY}'
        wrk.headers["Content-Type"] = "application/json"
        {auth}
    """)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(script)
    try:
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{concurrency}",
                f"-d{max(1, round(seconds))}s",
                "--latency",
                "-s",
                fh.name,
                f"{url}/v1/chat/completions",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(fh.name)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors:.*?(\d+).*?(\d+).*?(\d+).*?(\d+)", out)
    if p50 is None or rps is None:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p50.group(2)]
    n_errors = int(errors.group(1)) if errors else 0
    if socket_errors:
        n_errors += sum(int(g) for g in socket_errors.groups())
    return Run(float(p50.group(1)) * scale, float(rps.group(1)), n_errors)


_AIOHTTP_CLIENT = textwrap.dedent("""
    import asyncio, sys, time, aiohttp, orjson
    url, secret, concurrency, seconds, body = sys.argv[1], sys.argv[2], int(sys.argv[3]), \\
        float(sys.argv[4]), sys.argv[5].encode()
    headers = {"content-type": "application/json"}
    if secret != "-":
        headers["authorization"] = "Bearer " + secret
    async def main():
        latencies, errors = [], 0
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            end = time.perf_counter() + seconds
            async def worker():
                nonlocal errors
                while time.perf_counter() < end:
                    t = time.perf_counter()
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        if resp.status != 200:
                            errors += 1
                    latencies.append(time.perf_counter() - t)
            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - start
        latencies.sort()
        print(orjson.dumps({"p50_ms": latencies[len(latencies) // 2] * 1000,
                            "rps": len(latencies) / elapsed, "errors": errors}).decode())
    import uvloop; uvloop.install(); asyncio.run(main())
""")


def _aiohttp(url: str, secret: str | None, concurrency: int, seconds: float) -> Run:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _AIOHTTP_CLIENT,
            f"{url}/v1/chat/completions",
            secret or "-",
            str(concurrency),
            str(seconds),
            BODY,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    import orjson

    data = orjson.loads(out.strip().splitlines()[-1])
    return Run(data["p50_ms"], data["rps"], data["errors"])


def _wait_ready(url: str, timeout: float = 30.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of one measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every target (median)")
    parser.add_argument("--client", choices=("auto", "wrk", "aiohttp"), default="auto")
    parser.add_argument(
        "--no-monitor-run",
        action="store_true",
        help="skip the second gateway that also runs the online monitor",
    )
    args = parser.parse_args()
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "aiohttp"
    drive = _wrk if client == "wrk" else _aiohttp

    home = Path(tempfile.mkdtemp(prefix="dg-bench-"))
    port = free_port()
    mock = subprocess.Popen([sys.executable, str(MOCK_SERVER), "--port", str(port)])
    upstream = f"http://127.0.0.1:{port}"
    gateways = {
        "gateway": GatewayProcess(
            home=home / "plain",
            admin_token=secrets.token_urlsafe(16),
            upstream=upstream,
            env={"DISTILLGUARD_ONLINE_MONITOR": "false"},
        )
    }
    if not args.no_monitor_run:
        gateways["gateway+monitor"] = GatewayProcess(
            home=home / "monitor",
            admin_token=secrets.token_urlsafe(16),
            upstream=upstream,
            env={"DISTILLGUARD_ONLINE_MONITOR": "true"},
        )
    targets: dict[str, tuple[str, str | None]] = {"direct": (upstream, None)}
    pids: dict[str, int] = {"direct": mock.pid}
    results: dict[tuple[str, int], list[Run]] = {}
    try:
        _wait_ready(upstream)
        for name, gateway in gateways.items():
            gateway.start()
            _, _, secret = gateway.create_key(rpm=10**9, tpm=2 * 10**9)
            targets[name] = (gateway.base_url, secret)
            assert gateway.process is not None
            pids[name] = gateway.process.pid
        print(
            f"load before: {os.getloadavg()[0]:.2f} (1-min), client: {client}, "
            f"{args.rounds} rounds x {args.seconds:g} s per target and concurrency"
        )
        for url, secret in targets.values():  # warm-up: connections, caches
            drive(url, secret, 1, 1.0)
        for _ in range(args.rounds):  # interleaved, so machine noise hits every target alike
            for concurrency in (1, 32):
                for name, (url, secret) in targets.items():
                    before = _cpu_seconds(pids[name])
                    run = drive(url, secret, concurrency, args.seconds)
                    after = _cpu_seconds(pids[name])
                    if before is not None and after is not None and run.rps > 0:
                        used = (after - before) * 1e6 / (run.rps * args.seconds)
                        run = Run(run.p50_ms, run.rps, run.errors, used)
                    results.setdefault((name, concurrency), []).append(run)
        load_after = os.getloadavg()[0]
    finally:
        for gateway in gateways.values():
            gateway.stop()
        mock.terminate()
        mock.wait(10)

    def med(kind: str, c: int, field: str) -> float:
        values = [getattr(r, field) for r in results[(kind, c)]]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else float("nan")

    errors = sum(r.errors for runs in results.values() for r in runs)
    d1, d32 = med("direct", 1, "p50_ms"), med("direct", 32, "rps")
    print()
    print(
        f"{'':16}{'p50 c=1 ms':>11}{'added':>8}{'req/s c=1':>10}{'req/s c=32':>11}"
        f"{'ratio':>7}{'server CPU us/req c=1':>23}{'c=32':>6}"
    )
    for name in targets:
        g1, g1r, g32 = med(name, 1, "p50_ms"), med(name, 1, "rps"), med(name, 32, "rps")
        added = "" if name == "direct" else f"{g1 - d1:8.3f}"
        cpu1, cpu32 = med(name, 1, "cpu_us_per_request"), med(name, 32, "cpu_us_per_request")
        print(
            f"{name:16}{g1:11.3f}{added:>8}{g1r:10.0f}{g32:11.0f}{g32 / d32:7.2f}"
            f"{cpu1:23.0f}{cpu32:6.0f}"
        )
    print()
    for name in gateways:
        added, g32 = med(name, 1, "p50_ms") - d1, med(name, 32, "rps")
        print(
            f"{name}: added p50 at c=1 {added:.3f} ms (target <= 1 ms: "
            f"{'met' if added <= 1 else 'MISSED'}); {g32:.0f} req/s at c=32 (target >= 1000: "
            f"{'met' if g32 >= 1000 else 'MISSED'})"
        )
    print(f"non-200 responses or socket errors: {errors}; load after: {load_after:.2f}")
    per_round = {
        f"{k}@c={c}": [round(r.p50_ms if c == 1 else r.rps, 3) for r in runs]
        for (k, c), runs in results.items()
    }
    print(f"per round (p50 ms at c=1, req/s at c=32): {per_round}")


if __name__ == "__main__":
    main()
