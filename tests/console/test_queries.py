"""The console's aggregation queries on SQLite and PostgreSQL: buckets, paging, links, search."""

from __future__ import annotations

import pytest
from sqlalchemy import insert, select

from distillguard.gateway.console import queries
from distillguard.store import create_account, create_key, make_engine, migrate, session_scope
from distillguard.store.schema import Account, Exchange


def _row(i: int, ts: float, account_id: str, ip: str, prompt: str) -> dict:
    return {
        "id": f"ex{i:04d}",
        "ts": ts,
        "account_id": account_id,
        "ip": ip,
        "endpoint": "/v1/chat/completions",
        "request": {
            "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": prompt}]
        },
        "prompt_tokens": 3,
        "completion_tokens": 7,
        "status": 200,
    }


@pytest.fixture
def log(db_url):
    engine = make_engine(db_url)
    migrate(engine=engine)
    with session_scope(engine) as session:
        a = create_account(session, name="alpha", payment_fingerprint="card-1").id
        b = create_account(session, name="beta", payment_fingerprint="card-1").id
        c = create_account(session, name="gamma").id
        key, _ = create_key(session, account=c)
    rows = [_row(i, 1000.0 + i * 10, a, "10.0.0.1", f"a{i}") for i in range(30)]  # 1000..1290
    rows += [_row(100 + i, 1000.0 + i * 100, c, "10.0.0.9", f"c{i}") for i in range(3)]
    rows += [_row(200, 1300.0, b, "192.168.5.5", "b")]
    with engine.begin() as conn:
        conn.execute(insert(Exchange), rows)
    yield engine, {"alpha": a, "beta": b, "gamma": c, "key": key.key_id}
    engine.dispose()


@pytest.mark.parametrize("account", [None, "alpha"])
def test_traffic_series_counts_every_request_once(log, account):
    engine, ids = log
    with session_scope(engine) as session:
        series = queries.traffic_series(
            session,
            end=1300.0,
            span_s=300.0,
            num_buckets=3,
            account_id=ids[account] if account else None,
        )
    # Buckets [1000,1100) [1100,1200) [1200,1300]; the end itself falls in the last one.
    if account is None:
        assert [b.requests for b in series.buckets] == [10 + 1, 10 + 1, 10 + 1 + 1]
    else:
        assert [b.requests for b in series.buckets] == [10, 10, 10]
    assert series.total_tokens == series.total_requests * 10
    assert [b.start for b in series.buckets] == [1000.0, 1100.0, 1200.0]


def test_paging_links_and_search(log):
    engine, ids = log
    with session_scope(engine) as session:
        first = queries.account_prompts(session, account_id=ids["alpha"], limit=20)
        second = queries.account_prompts(session, account_id=ids["alpha"], limit=20, offset=20)
        assert [p.prompt for p in first[:2]] == ["a29", "a28"] and len(second) == 10
        assert {p.exchange_id for p in first}.isdisjoint({p.exchange_id for p in second})
        alpha = session.scalar(select(Account).where(Account.id == ids["alpha"]))
        linked = {
            link.account_id: link.why for link in queries.linked_accounts(session, account=alpha)
        }
        assert linked == {
            ids["beta"]: "same payment fingerprint",
            ids["gamma"]: "shares network 10.0.0.*",
        }
        top = queries.top_accounts(session, since=0.0)
        assert [(t.name, t.requests) for t in top] == [("alpha", 30), ("gamma", 3), ("beta", 1)]
        assert [h.name for h in queries.search(session, "bet")] == ["beta"]
        assert [h.matched for h in queries.search(session, ids["key"])] == [
            f"owns key {ids['key']}"
        ]
        by_ip = queries.search(session, "192.168.")
        assert [(h.name, h.matched) for h in by_ip] == [
            ("beta", "1 requests from IPs starting 192.168.")
        ]
        assert queries.search(session, "%") == [] and queries.search(session, "  ") == []


def test_the_rollups_match_the_log_they_summarise(log):
    """The trigger-kept minute and hour rollups (0006) give the charts and the busiest
    accounts exactly what the exchanges give, on minute-aligned windows."""
    engine, ids = log
    more = [_row(300 + i, 1000.0 + i * 7.5, None, "10.9.9.9", "x") for i in range(40)]
    with engine.begin() as conn:  # unauthenticated traffic: in the totals only
        conn.execute(insert(Exchange), more)
    with session_scope(engine) as session:
        for account in (None, "alpha", "gamma"):
            account_id = ids[account] if account else None
            # 960..1560 in 10 bars of one minute: read from traffic_minutes
            fast = queries.traffic_series(
                session, end=1560.0, span_s=600.0, num_buckets=10, account_id=account_id
            )
            # the same window in 20 bars of 30 s: read from the exchanges, then paired up
            exact = queries.traffic_series(
                session, end=1560.0, span_s=600.0, num_buckets=20, account_id=account_id
            )
            pairs = zip(exact.buckets[::2], exact.buckets[1::2], strict=True)
            assert [b.requests for b in fast.buckets] == [a.requests + b.requests for a, b in pairs]
            assert fast.total_tokens == exact.total_tokens and fast.total_requests > 0
        all_traffic = queries.traffic_series(session, end=1560.0, span_s=600.0, num_buckets=10)
        assert all_traffic.total_requests == 30 + 3 + 1 + 40
        top = queries.top_accounts(session, since=0.0)
        assert [(t.name, t.requests) for t in top] == [("alpha", 30), ("gamma", 3), ("beta", 1)]
        # an IP prefix is a range on the (ip, account_id) index, not a LIKE over the log
        assert [h.name for h in queries.search(session, "10.0.0.")] == ["alpha", "gamma"]
        assert queries.search(session, "10.0.0.10") == []
