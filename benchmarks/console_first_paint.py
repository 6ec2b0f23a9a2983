"""How fast the console's pages answer on a large log: server-side GROUP BY vs. a naive read.

Generates ``--exchanges`` exchanges (default 100k) from ``--accounts`` accounts over one day
into a fresh SQLite file, starts a real gateway on it (``distillguard serve`` subprocess),
signs in to ``/console`` and times, over ``--repeats`` requests each, the full HTML answer of:
the overview (24 h and 7 d windows), the busiest account's page, and a search by IP prefix.
Beside them in the same run, the baseline a console without server-side aggregation pays:
reading the window's rows (ts, tokens) into Python and binning them there.
Optionally (``--browser``) it also times Chromium's first paint of the overview.

Run: ``.venv/bin/python benchmarks/console_first_paint.py [--exchanges 100000] [--browser]``
Figures go to docs/benchmarks.md (## console).
"""

from __future__ import annotations

import argparse
import random
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from sqlalchemy import insert, select

from distillguard.gateway.process import GatewayProcess
from distillguard.progress import tracked
from distillguard.store import create_account, make_engine, migrate, session_scope
from distillguard.store.schema import Exchange

CHUNK = 5_000


def generate(url: str, *, exchanges: int, accounts: int, seed: int = 0) -> tuple[str, float]:
    """Fill the log; returns (busiest account id, latest ts)."""
    rng = random.Random(seed)
    engine = make_engine(url)
    migrate(engine=engine)
    with session_scope(engine) as session:
        ids = [create_account(session, name=f"acct-{i:05d}").id for i in range(accounts)]
    weights = [1.0 / (i + 1) for i in range(accounts)]  # Zipf-like: a few heavy accounts
    end = time.time()
    with tracked("generating exchanges", total=exchanges) as update, engine.begin() as conn:
        done = 0
        while done < exchanges:
            n = min(CHUNK, exchanges - done)
            rows = []
            for account_id in rng.choices(ids, weights=weights, k=n):
                ip = f"10.{rng.randrange(4)}.{rng.randrange(256)}.{rng.randrange(256)}"
                rows.append(
                    {
                        "id": secrets.token_hex(12),
                        "ts": end - rng.random() * 86_400,
                        "account_id": account_id,
                        "key_id": None,
                        "ip": ip,
                        "endpoint": "/v1/chat/completions",
                        "request": {"messages": [{"role": "user", "content": f"q {done}"}]},
                        "response_text": "an answer",
                        "prompt_tokens": rng.randrange(5, 200),
                        "completion_tokens": rng.randrange(5, 400),
                        "status": 200,
                        "model": "m",
                    }
                )
            conn.execute(insert(Exchange), rows)
            done += n
            update(done)
    engine.dispose()
    return ids[0], end


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


def timed(fn, repeats: int) -> tuple[float, float]:
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
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--browser", action="store_true", help="also time Chromium's paint")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'log.db'}"
        busiest, end = generate(url, exchanges=args.exchanges, accounts=args.accounts)
        gateway = GatewayProcess(
            home=Path(tmp) / "home",
            admin_token=secrets.token_urlsafe(16),
            upstream="http://127.0.0.1:9",  # never called: only /console is exercised
            database_url=url,
        ).start()
        try:
            base = gateway.base_url
            login = httpx.post(f"{base}/console/login", data={"token": gateway.admin_token})
            cookies = {"dg_console": login.cookies["dg_console"]}
            client = httpx.Client(base_url=base, cookies=cookies, timeout=60)

            def get(path: str):
                def run() -> None:
                    response = client.get(path)
                    assert response.status_code == 200, (path, response.status_code)

                return run

            rows = [
                ("overview 24 h (GROUP BY)", get("/console?hours=24")),
                ("overview 7 d (GROUP BY)", get("/console?hours=168")),
                ("naive: rows into Python, 24 h", lambda: naive_overview(url, end, 86_400)),
                ("account page (busiest)", get(f"/console/accounts/{busiest}?show=1")),
                ("account page, page 50", get(f"/console/accounts/{busiest}?page=50")),
                ("search IP prefix 10.1.2", get("/console/search?q=10.1.2")),
            ]
            print(f"\nlog: {args.exchanges} exchanges, {args.accounts} accounts, SQLite")
            print(f"{'page':34} {'median ms':>10} {'max ms':>8}")
            for name, fn in rows:
                fn()  # warm: first connection, template compile
                median, worst = timed(fn, args.repeats)
                print(f"{name:34} {median:10.1f} {worst:8.1f}")
            if args.browser:
                from distillguard.gateway.console.browser import chromium_driver, sign_in

                driver = chromium_driver()
                try:
                    sign_in(driver, base, gateway.admin_token)
                    paints = []
                    for _ in range(args.repeats):
                        driver.get(f"{base}/console")
                        # Navigation start to the load event: with no JavaScript on the
                        # page, paint has happened by then (headless Chromium does not
                        # always record a first-contentful-paint entry).
                        paints.append(
                            driver.execute_script(
                                "return performance.getEntriesByType('navigation')[0].loadEventEnd"
                            )
                        )
                    print(
                        f"{'Chromium: navigation to load event':34} "
                        f"{statistics.median(paints):10.1f} {max(paints):8.1f}"
                    )
                finally:
                    driver.quit()
        finally:
            gateway.stop()


if __name__ == "__main__":
    main()
