"""Cost of the gateway's per-request metrics in one process vs prometheus_client's
multiprocess mode (what ``serve`` uses so that ``--workers N`` count together), side by side.

Each mode runs in its own subprocess (the mode is fixed when prometheus_client is imported):
``GatewayMetrics.observe`` + the in-flight gauge's inc/dec, as the hot path calls them per
request, then one ``/metrics`` render of the result.

    .venv/bin/python benchmarks/metrics_multiprocess.py [--calls 200000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import orjson

_CHILD = """
import sys, time, orjson
from distillguard.gateway.metrics import GatewayMetrics
calls = int(sys.argv[1])
metrics = GatewayMetrics(lambda: ["mock-model"])
observe, gauge = metrics.observe, metrics.in_flight
for _ in range(1000):  # warm the label caches
    observe("/v1/chat/completions", 200, 0.001, 7, 4, "mock-model")
best = []
for _ in range(3):
    start = time.perf_counter()
    for _ in range(calls):
        gauge.inc()
        observe("/v1/chat/completions", 200, 0.001, 7, 4, "mock-model")
        gauge.dec()
    best.append((time.perf_counter() - start) / calls * 1e6)
start = time.perf_counter()
size = len(metrics.render())
render_ms = (time.perf_counter() - start) * 1000
print(orjson.dumps({"us_per_request": min(best), "render_ms": render_ms, "bytes": size,
                    "multiprocess": metrics.multiprocess}).decode())
"""


def run(calls: int, multiproc_dir: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    if multiproc_dir:
        env["PROMETHEUS_MULTIPROC_DIR"] = multiproc_dir
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(calls)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return orjson.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    args = parser.parse_args()
    single = run(args.calls, None)
    with tempfile.TemporaryDirectory() as directory:
        multi = run(args.calls, directory)
    print(f"{'mode':<14} {'µs/request (best of 3)':>24} {'render ms':>10}")
    for name, result in (("one process", single), ("multiprocess", multi)):
        print(f"{name:<14} {result['us_per_request']:>24.2f} {result['render_ms']:>10.2f}")
    print(f"multiprocess adds {multi['us_per_request'] - single['us_per_request']:.2f} µs/request")


if __name__ == "__main__":
    main()
