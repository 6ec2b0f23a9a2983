"""How fast the console's pages answer on a large log: rollups and index ranges vs. a naive read.

Generates ``--exchanges`` exchanges (default 100k) from ``--accounts`` Zipf-weighted accounts
over one day, plus a planted ring of ``--ring`` accounts (one card, one proxy /24, one agent,
synchronized waves), into a fresh SQLite file or, with ``--postgres URL``, a fresh database on
that PostgreSQL server (dropped afterwards). Starts a real gateway on it (``distillguard
serve`` subprocess), signs in to ``/console`` and times, over ``--repeats`` requests each,
the full HTML answer of every page: the overview (24 h and 7 d), the busiest account's page
(and its prompts page 50), a search by IP prefix, the ring's cluster page (its first answer,
which links the whole log, then warm) and the evidence page. Beside them in the same run, the
baseline a console without server-side aggregation pays: reading the window's rows into
Python and binning them there. ``--browser`` also times Chromium's navigation-to-load-event
of every page (no JavaScript on the pages: painted by then).

Run: ``.venv/bin/python benchmarks/console_first_paint.py [--exchanges 1000000] [--browser]``
Figures go to docs/benchmarks.md (## console).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
from sqlalchemy import create_engine, insert, select, text
from sqlalchemy.engine import make_url

from distillguard.gateway.process import GatewayProcess
from distillguard.monitor.links import cluster_id_of
from distillguard.progress import tracked
from distillguard.store import create_account, make_engine, migrate, session_scope
from distillguard.store.schema import Exchange

CHUNK = 5_000


def generate(
    url: str, *, exchanges: int, accounts: int, ring: int, seed: int = 0
) -> tuple[str, list[str], float]:
    """Fill the log; returns (busiest account id, ring account ids, latest ts)."""
    rng = random.Random(seed)
    engine = make_engine(url)
    migrate(engine=engine)
    with session_scope(engine) as session:
        ids = [create_account(session, name=f"acct-{i:05d}").id for i in range(accounts)]
        ring_ids = [
            create_account(session, name=f"ring-{i:02d}", payment_fingerprint="card-ring").id
            for i in range(ring)
        ]
    weights = [1.0 / (i + 1) for i in range(accounts)]  # Zipf-like: a few heavy accounts
    end = time.time()
    ring_share = 0.01  # the ring's share of the log: 1%, in waves every 10 minutes
    with tracked("generating exchanges", total=exchanges) as update, engine.begin() as conn:
        done = 0
        while done < exchanges:
            n = min(CHUNK, exchanges - done)
            rows = []
            for account_id in rng.choices(ids, weights=weights, k=n):
                if ring_ids and rng.random() < ring_share:
                    member = rng.randrange(len(ring_ids))
                    wave = end - 600 * rng.randrange(144) - 300  # inside one 5 s bucket
                    rows.append(
                        _row(
                            rng,
                            done,
                            ring_ids[member],
                            wave - wave % 5 + rng.random() * 4,
                            f"198.51.100.{10 + member}",
                            "ring-client/1.0",
                        )
                    )
                    continue
                ip = f"10.{rng.randrange(4)}.{rng.randrange(256)}.{rng.randrange(256)}"
                rows.append(_row(rng, done, account_id, end - rng.random() * 86_400, ip, None))
            conn.execute(insert(Exchange), rows)
            done += n
            update(done)
    engine.dispose()
    return ids[0], ring_ids, end


def _row(
    rng: random.Random, n: int, account_id: str, ts: float, ip: str, agent: str | None
) -> dict:
    return {
        "id": secrets.token_hex(12),
        "ts": ts,
        "account_id": account_id,
        "key_id": None,
        "ip": ip,
        "user_agent": agent,
        "endpoint": "/v1/chat/completions",
        "request": {"messages": [{"role": "user", "content": f"q {n}"}]},
        "response_text": "an answer",
        "prompt_tokens": rng.randrange(5, 200),
        "completion_tokens": rng.randrange(5, 400),
        "status": 200,
        "model": "m",
    }


@contextlib.contextmanager
def fresh_database(postgres: str | None, tmp: Path) -> Iterator[str]:
    """A SQLite file in ``tmp``, or a new database on the PostgreSQL server (dropped after)."""
    if postgres is None:
        yield f"sqlite:///{tmp / 'log.db'}"
        return
    name = f"dg_console_bench_{secrets.token_hex(4)}"
    admin = create_engine(postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(postgres).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def naive_overview(url: str, end: float, span_s: float, buckets: int = 48) -> None:
    """The baseline: every row of the window into Python, binned there."""
    engine = make_engine(url)
    width = span_s / buckets
    counts = [0] * (buckets + 1)
    tokens = [0] * (buckets + 1)
    with engine.connect() as conn:
        query = select(Exchange.ts, Exchange.prompt_tokens, Exchange.completion_tokens).where(
            Exchange.ts >= end - span_s
        )
        for ts, p, c in conn.execute(query):
            i = int((ts - end + span_s) / width)
            counts[i] += 1
            tokens[i] += (p or 0) + (c or 0)
    engine.dispose()


def timed(fn: Callable[[], None], repeats: int) -> tuple[float, float]:
    """(median, max) milliseconds."""
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples), max(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=100_000)
    parser.add_argument("--accounts", type=int, default=500)
    parser.add_argument("--ring", type=int, default=12, help="planted linked accounts")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--postgres", help="a PostgreSQL server URL (a fresh database on it)")
    parser.add_argument("--browser", action="store_true", help="also time Chromium's paint")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, fresh_database(args.postgres, Path(tmp)) as url:
        t0 = time.perf_counter()
        busiest, ring, end = generate(
            url, exchanges=args.exchanges, accounts=args.accounts, ring=args.ring
        )
        print(f"generated in {time.perf_counter() - t0:.0f} s (rollups kept by the trigger)")
        gateway = GatewayProcess(
            home=Path(tmp) / "home",
            admin_token=secrets.token_urlsafe(16),
            upstream="http://127.0.0.1:9",  # never called: only /console is exercised
            database_url=url,
            env={"DISTILLGUARD_ONLINE_MONITOR": "false"},
        ).start(timeout=300)
        try:
            base = gateway.base_url
            login = httpx.post(f"{base}/console/login", data={"token": gateway.admin_token})
            cookies = {"dg_console": login.cookies["dg_console"]}
            client = httpx.Client(base_url=base, cookies=cookies, timeout=600)

            def get(path: str) -> Callable[[], None]:
                def run() -> None:
                    response = client.get(path)
                    assert response.status_code == 200, (path, response.status_code)

                return run

            cluster = f"/console/clusters/{cluster_id_of(ring)}"
            t0 = time.perf_counter()
            get(cluster)()  # the first answer links the whole log (the sign-in started it)
            cold = (time.perf_counter() - t0) * 1000
            pages = [
                ("overview 24 h", "/console?hours=24"),
                ("overview 7 d", "/console?hours=168"),
                ("account page (busiest)", f"/console/accounts/{busiest}?show=1"),
                ("account page, prompts page 50", f"/console/accounts/{busiest}?page=50"),
                ("search IP prefix 10.1.2.", "/console/search?q=10.1.2."),
                ("cluster page (warm)", cluster),
                ("evidence", "/console/evidence"),
            ]
            rows = [(name, get(path)) for name, path in pages]
            rows.insert(
                2, ("naive: rows into Python, 24 h", lambda: naive_overview(url, end, 86_400))
            )
            backend = "PostgreSQL" if args.postgres else "SQLite"
            print(
                f"\nlog: {args.exchanges} exchanges, "
                f"{args.accounts} + {args.ring} accounts, {backend}"
            )
            print(f"load average at start: {os.getloadavg()[0]:.1f}")
            print(f"{'page':34} {'median ms':>10} {'max ms':>8}")
            print(f"{'cluster page, first (links the log)':34} {cold:10.1f} {cold:8.1f}")
            for name, fn in rows:
                fn()  # warm: first connection, template compile
                median, worst = timed(fn, args.repeats)
                print(f"{name:34} {median:10.1f} {worst:8.1f}")
            print(f"load average at end: {os.getloadavg()[0]:.1f}")
            if args.browser:
                from distillguard.gateway.console.browser import chromium_driver, sign_in

                driver = chromium_driver()
                try:
                    sign_in(driver, base, gateway.admin_token)
                    for name, path in pages:
                        paints = []
                        for _ in range(args.repeats):
                            driver.get(base + path)
                            # Navigation start to the load event: with no JavaScript on the
                            # page, paint has happened by then (headless Chromium does not
                            # always record a first-contentful-paint entry).
                            paints.append(
                                driver.execute_script(
                                    "return performance.getEntriesByType('navigation')[0]"
                                    ".loadEventEnd"
                                )
                            )
                        print(
                            f"{'Chromium: ' + name:34} "
                            f"{statistics.median(paints):10.1f} {max(paints):8.1f}"
                        )
                finally:
                    driver.quit()
        finally:
            gateway.stop()


if __name__ == "__main__":
    main()
