"""How fast the gateway's store path is: exchange-log writes and key checks.

For each backend (SQLite file in WAL mode; PostgreSQL on 127.0.0.1 when reachable) it measures,
side by side in one run:

- ``ExchangeLog`` (group commit): latency of ``await log.write(rec)`` at concurrency 1 and 32,
  and rows/s at 32;
- the naive baseline: one transaction per record in a worker thread (``asyncio.to_thread``),
  what a handler without a dedicated writer would do;
- ``authenticate`` on a held connection: the per-request key check.

Run: ``.venv/bin/python benchmarks/store_log.py [--records 3000] [--backends sqlite,postgresql]``
Prints a table; the figures go to docs/benchmarks.md (## store).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from distillguard.store import (
    ExchangeLog,
    ExchangeRecord,
    authenticate,
    create_account,
    create_key,
    make_engine,
    migrate,
    session_scope,
)
from distillguard.store.db import autocommit_connection
from distillguard.store.exchanges import _INSERT, record_to_row

PG_ADMIN = os.environ.get("DISTILLGUARD_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass(frozen=True)
class Figure:
    backend: str
    method: str
    concurrency: int
    records: int
    seconds: float
    latencies_ms: list[float]

    @property
    def per_second(self) -> float:
        return self.records / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _record(i: int) -> ExchangeRecord:
    # About the size of a real chat exchange: a 500-character prompt, a 600-character answer.
    return ExchangeRecord(
        account_id=f"acct_{i % 50:012x}",
        key_id=f"{i % 50:016x}",
        ip="203.0.113.7",
        user_agent="OpenAI/Python 3.57.0",
        payment_fingerprint="card-1",
        endpoint="/v1/chat/completions",
        request={
            "model": "teacher",
            "messages": [{"role": "user", "content": "Explain photosynthesis. " * 20}],
            "temperature": 0.7,
            "max_tokens": 128,
        },
        response_text="Plants turn light into sugar. " * 20,
        prompt_tokens=120,
        completion_tokens=128,
        status=200,
        latency_ms=12.0,
        model="teacher",
        watermark_scheme="kgw",
        watermark_key_id=1,
    )


async def _drive(
    write: Callable[[ExchangeRecord], Awaitable[None]], total: int, concurrency: int
) -> tuple[float, list[float]]:
    """``concurrency`` workers writing ``total`` records; wall seconds and per-write ms."""
    latencies: list[float] = []
    per_worker = total // concurrency

    async def worker(w: int) -> None:
        for i in range(per_worker):
            record = _record(w * per_worker + i)
            start = time.perf_counter()
            await write(record)
            latencies.append((time.perf_counter() - start) * 1000.0)

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return time.perf_counter() - start, latencies


def bench_backend(backend: str, url: str, records: int) -> list[Figure]:
    migrate(url)
    engine = make_engine(url)
    figures: list[Figure] = []

    def naive_insert(record: ExchangeRecord) -> None:
        with engine.begin() as connection:
            connection.execute(_INSERT, record_to_row(record))

    async def naive(record: ExchangeRecord) -> None:
        await asyncio.to_thread(naive_insert, record)

    for concurrency in (1, 32):
        n = records if concurrency > 1 else records // 2
        log = ExchangeLog(engine)
        seconds, lat = asyncio.run(_drive(log.write, n, concurrency))
        log.close()
        figures.append(
            Figure(backend, "ExchangeLog (group commit)", concurrency, len(lat), seconds, lat)
        )
        if backend == "postgresql":
            log = ExchangeLog(engine, flush_wal=False)
            seconds, lat = asyncio.run(_drive(log.write, n, concurrency))
            log.close()
            method = "ExchangeLog, flush_wal=False"
            figures.append(Figure(backend, method, concurrency, len(lat), seconds, lat))
        seconds, lat = asyncio.run(_drive(naive, n, concurrency))
        figures.append(
            Figure(backend, "commit per record (baseline)", concurrency, len(lat), seconds, lat)
        )

    with session_scope(engine) as session:
        account = create_account(session, name=f"bench-{secrets.token_hex(3)}")
        _, secret = create_key(session, account=account.id)
    for method in ("authenticate + rollback", "authenticate, autocommit"):
        with (
            autocommit_connection(engine) if "autocommit" in method else engine.connect()
        ) as connection:
            lat = []
            start = time.perf_counter()
            for _ in range(2000):
                t0 = time.perf_counter()
                authenticate(connection, secret=secret)
                if "rollback" in method:  # end the snapshot so the next check sees revocations
                    connection.rollback()
                lat.append((time.perf_counter() - t0) * 1000.0)
            seconds = time.perf_counter() - start
        figures.append(Figure(backend, method, 1, 2000, seconds, lat))
    engine.dispose()
    return figures


def _pg_database() -> tuple[str, Callable[[], None]] | None:
    try:
        import psycopg

        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except Exception as exc:  # unreachable: say so and measure SQLite only
        print(f"PostgreSQL skipped: {exc}")
        return None
    name = f"dg_bench_{secrets.token_hex(4)}"
    admin.execute(f'CREATE DATABASE "{name}"')
    user = admin.info.user

    def drop() -> None:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    return f"postgresql+psycopg://{user}@127.0.0.1:5432/{name}", drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=3000, help="records per concurrency-32 run")
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores)")
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            if backend == "sqlite":
                figures += bench_backend(
                    "sqlite", f"sqlite:///{Path(tmp) / 'bench.db'}", args.records
                )
            elif backend == "postgresql":
                pg = _pg_database()
                if pg is not None:
                    url, drop = pg
                    try:
                        figures += bench_backend("postgresql", url, args.records)
                    finally:
                        drop()
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"\n{'backend':<11} {'method':<31} {'conc':>4} {'rows/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for f in figures:
        print(
            f"{f.backend:<11} {f.method:<31} {f.concurrency:>4} {f.per_second:>9,.0f} "
            f"{f.pct(0.5):>8.3f} {f.pct(0.99):>8.3f}"
        )
    print()
    for backend in dict.fromkeys(f.backend for f in figures):
        for c in (1, 32):
            ours = next(
                f
                for f in figures
                if (f.backend, f.concurrency) == (backend, c) and "group" in f.method
            )
            base = next(
                f
                for f in figures
                if (f.backend, f.concurrency) == (backend, c) and "baseline" in f.method
            )
            print(
                f"{backend} c={c}: group commit {ours.per_second / base.per_second:.1f}x the "
                f"baseline's rows/s, p50 {ours.pct(0.5):.3f} vs {base.pct(0.5):.3f} ms"
            )


if __name__ == "__main__":
    main()
