"""The exchange log on both backends: every write lands, batches share commits, close drains,
failures reach the caller."""

from __future__ import annotations

import asyncio
import threading

import pytest
from sqlalchemy import Engine

from distillguard.errors import InputError, StoreError
from distillguard.store import (
    ExchangeLog,
    ExchangeRecord,
    count_exchanges,
    make_engine,
    recent_exchanges,
    session_scope,
)
from distillguard.store.exchanges import get_exchange, iter_exchanges


def _record(i: int, **kw) -> ExchangeRecord:
    fields = {
        "ts": 1_764_000_000.0 + i,
        "account_id": f"acct_{i % 3}",
        "key_id": f"{i % 3:016x}",
        "ip": "203.0.113.7",
        "user_agent": "OpenAI/Python 3.57.0",
        "endpoint": "/v1/chat/completions",
        "request": {"model": "teacher", "messages": [{"role": "user", "content": f"q{i}"}]},
        "response_text": f"answer {i}",
        "prompt_tokens": 5,
        "completion_tokens": 7,
        "status": 200,
        "latency_ms": 1.5,
        "model": "teacher",
        "watermark_scheme": "kgw",
        "watermark_key_id": 1,
    }
    fields.update(kw)
    return ExchangeRecord(**fields)


def _ids(engine: Engine) -> set[str]:
    return {r.id for r in iter_exchanges(engine)}


def test_many_concurrent_writes_all_land(engine: Engine) -> None:
    records = [_record(i) for i in range(400)]
    log = ExchangeLog(engine)

    async def write_all() -> None:
        await asyncio.gather(*(log.write(r) for r in records[:300]))

    # 300 from one event loop and 100 from plain threads at the same time.
    threads = [
        threading.Thread(target=lambda rs=records[k::4]: [log.write_sync(r) for r in rs])
        for k in range(300, 304)
    ]
    for t in threads:
        t.start()
    asyncio.run(write_all())
    for t in threads:
        t.join()
    log.close()
    assert _ids(engine) == {r.id for r in records}
    stats = log.stats()
    assert (stats.written, stats.failed, stats.pending) == (400, 0, 0)


def test_rows_read_back_equal_what_was_written(engine: Engine) -> None:
    record = _record(
        1,
        request={"model": "m", "messages": [{"role": "user", "content": "é 漢字 🙂"}], "n": 2},
        error=None,
        payment_fingerprint="card-9",
    )
    with ExchangeLog(engine) as log:
        log.write_sync(record)
    with session_scope(engine) as s:
        assert get_exchange(s, exchange_id=record.id) == record


def test_waiting_writes_share_one_commit(engine: Engine, write_lock) -> None:
    log = ExchangeLog(engine)
    records = [_record(i) for i in range(100)]

    async def scenario() -> None:
        with write_lock(engine):  # the writer blocks on its first insert
            tasks = [asyncio.create_task(log.write(r)) for r in records]
            await asyncio.sleep(0)  # every task has queued its record
        await asyncio.gather(*tasks)

    asyncio.run(scenario())
    log.close()
    stats = log.stats()
    assert stats.written == 100
    assert stats.batches <= 2  # the first record (perhaps alone), then all the others at once
    assert _ids(engine) == {r.id for r in records}


def test_one_bad_record_fails_alone_within_its_batch(engine: Engine, write_lock) -> None:
    log = ExchangeLog(engine)
    good = [_record(i) for i in range(5)]
    duplicate = _record(99, id=good[2].id)  # same primary key as a good one

    async def scenario() -> list[object]:
        with write_lock(engine):
            tasks = [asyncio.create_task(log.write(r)) for r in [*good, duplicate]]
            await asyncio.sleep(0)
        return await asyncio.gather(*tasks, return_exceptions=True)

    outcomes = asyncio.run(scenario())
    log.close()
    assert outcomes[:5] == [None] * 5
    assert isinstance(outcomes[5], StoreError)
    assert _ids(engine) == {r.id for r in good}
    assert log.stats().failed == 1


def test_close_drains_the_queue_and_refuses_later_writes(engine: Engine) -> None:
    log = ExchangeLog(engine)
    records = [_record(i) for i in range(300)]

    async def scenario() -> None:
        tasks = [asyncio.create_task(log.write(r)) for r in records]
        await asyncio.sleep(0)  # all queued, few or none committed yet
        log.close()  # blocks until the queue is empty
        with session_scope(engine) as s:
            assert count_exchanges(s) == 300
        await asyncio.gather(*tasks)
        with pytest.raises(StoreError, match="closed"):
            await log.write(_record(1000))

    asyncio.run(scenario())
    log.close()  # a second close is harmless


def test_a_cancelled_waiter_still_gets_its_row(engine: Engine) -> None:
    """A client that disconnects cancels its handler; the exchange is logged all the same."""
    log = ExchangeLog(engine)
    record = _record(1)

    async def scenario() -> None:
        task = asyncio.create_task(log.write(record))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    log.close()
    assert _ids(engine) == {record.id}


def test_a_stuck_database_fails_the_wait_but_keeps_the_record(engine: Engine, write_lock) -> None:
    log = ExchangeLog(engine, write_timeout_s=0.3)
    first, second = _record(1), _record(2)

    async def write() -> None:
        await log.write(first)

    with write_lock(engine):
        with pytest.raises(StoreError, match="did not commit"):
            asyncio.run(write())
        with pytest.raises(StoreError, match="did not commit"):
            log.write_sync(second)
    log.close()  # once the database moves again, both queued records land
    assert _ids(engine) == {first.id, second.id}


def test_database_failures_reach_the_caller(db_url: str) -> None:
    unmigrated = make_engine(db_url)  # no tables: every insert fails
    log = ExchangeLog(unmigrated)
    with pytest.raises(StoreError, match="db migrate"):
        log.write_sync(_record(1))

    async def write() -> None:
        await log.write(_record(2))

    with pytest.raises(StoreError):
        asyncio.run(write())
    log.close()
    assert log.stats().failed == 2
    unmigrated.dispose()


def test_text_no_backend_can_store_is_cleaned_not_lost(engine: Engine) -> None:
    record = _record(
        1,
        request={
            "messages": [{"role": "user", "content": "nul\x00 and \ud800"}],
            "x": float("nan"),
        },
        response_text="a\x00b",
        user_agent="ua\udcff",
    )
    with ExchangeLog(engine) as log:
        log.write_sync(record)
    with session_scope(engine) as s:
        stored = get_exchange(s, exchange_id=record.id)
    assert stored is not None
    assert stored.response_text == "a\ufffdb"
    assert stored.request["messages"][0]["content"].startswith("nul\ufffd and ")
    assert "\x00" not in stored.user_agent and stored.user_agent.startswith("ua")


def test_oversized_fields_are_cut_to_the_column_not_lost(engine: Engine) -> None:
    """A client's absurd model name must land on PostgreSQL (VARCHAR enforced) as on SQLite."""
    record = _record(1, model="m" * 5000, endpoint="/v1/" + "x" * 500, status=404)
    with ExchangeLog(engine) as log:
        log.write_sync(record)
    with session_scope(engine) as s:
        stored = get_exchange(s, exchange_id=record.id)
    assert stored is not None and stored.status == 404
    assert stored.model == "m" * 200 and stored.endpoint.startswith("/v1/xxx")


def test_unauthenticated_attempts_are_logged_without_an_account(engine: Engine) -> None:
    with ExchangeLog(engine) as log:
        log.write_sync(_record(1, account_id=None, key_id=None, status=401, error="invalid key"))
        log.write_sync(_record(2))
    with session_scope(engine) as s:
        assert count_exchanges(s) == 2
        assert count_exchanges(s, attributed=False) == 1
        newest = recent_exchanges(s, limit=1)
        assert newest[0].ts == 1_764_000_002.0
        oldest = recent_exchanges(s, limit=5)[-1]
        assert (oldest.account_id, oldest.key_id, oldest.status) == (None, None, 401)
        assert [r.status for r in recent_exchanges(s, limit=5, account_id="acct_2")] == [200]


def test_iter_exchanges_streams_in_time_order_with_filters(engine: Engine) -> None:
    records = [_record(i) for i in (5, 1, 3, 2, 4)]
    with ExchangeLog(engine) as log:
        for r in records:
            log.write_sync(r)
    ordered = [r.ts for r in iter_exchanges(engine, chunk_rows=2)]
    assert ordered == sorted(ordered) and len(ordered) == 5
    window = [
        r.ts - 1_764_000_000
        for r in iter_exchanges(engine, since=1_764_000_002, until=1_764_000_004)
    ]
    assert window == [2.0, 3.0]


def test_exchange_log_rejects_a_nonsense_batch_size(engine: Engine) -> None:
    with pytest.raises(InputError):
        ExchangeLog(engine, max_batch=0)
