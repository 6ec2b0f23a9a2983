"""The exchange log's inline path: a lone writer commits its own record (no thread hand-off),
any sign of concurrency sends records to the group-commit writer, and every record lands
exactly once whichever path it took. Asserted on the log's counters and the stored rows,
never on timing."""

from __future__ import annotations

import asyncio
import threading

import pytest
from sqlalchemy import Engine

from distillguard.errors import StoreError
from distillguard.store import ExchangeLog, ExchangeRecord, exchanges, make_engine
from distillguard.store.exchanges import iter_exchanges


def _fresh(tag: str, i: int, **kw) -> ExchangeRecord:
    # The default ts: the record "arrives" now, as a gateway request's record does.
    return ExchangeRecord(
        id=f"{tag}-{i:05d}",
        account_id="acct_1",
        key_id="00000000000000aa",
        ip="203.0.113.7",
        endpoint="/v1/chat/completions",
        request={"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]},
        response_text=f"answer {i}",
        **kw,
    )


def _stored_ids(engine: Engine) -> list[str]:
    return [r.id for r in iter_exchanges(engine)]


@pytest.fixture(autouse=True)
def _never_pause_inline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The inline path pauses itself when its commits are slow (a timing decision): these
    tests assert which path a record takes, so a loaded machine must not change it."""
    monkeypatch.setattr(exchanges, "_INLINE_SLOW_S", float("inf"))


def test_an_idle_log_commits_inline_on_sqlite(engine: Engine) -> None:
    log = ExchangeLog(engine)

    async def one_at_a_time() -> None:
        for i in range(20):
            await log.write(_fresh("async", i))

    asyncio.run(one_at_a_time())
    for i in range(10):
        log.write_sync(_fresh("sync", i))
    stats = log.stats()
    log.close()
    ids = _stored_ids(engine)
    expected = [f"async-{i:05d}" for i in range(20)] + [f"sync-{i:05d}" for i in range(10)]
    assert sorted(ids) == sorted(expected)
    if engine.dialect.name == "sqlite":
        assert (stats.inline, stats.batches) == (30, 0)  # not one hand-off to the thread
    else:  # PostgreSQL commits always go to the writer thread (a COMMIT there waits on fsync)
        assert (stats.inline, stats.batches) == (0, 30)
    assert (stats.written, stats.failed, stats.pending) == (30, 0, 0)


def test_inline_can_be_turned_off(engine: Engine) -> None:
    with ExchangeLog(engine, inline_when_idle=False) as log:
        for i in range(5):
            log.write_sync(_fresh("off", i))
    stats = log.stats()
    assert (stats.inline, stats.written, stats.batches) == (0, 5, 5)


def test_concurrent_writers_all_land_exactly_once(engine: Engine) -> None:
    """A burst from one loop (gather), sequential writers in another loop and plain threads,
    all at once: each record is stored once, whichever path it took."""
    log = ExchangeLog(engine)
    burst = 200

    async def gathered() -> None:
        await asyncio.gather(*(log.write(_fresh("burst", i)) for i in range(burst)))

    async def sequential(tag: str) -> None:
        for i in range(60):
            await log.write(_fresh(tag, i))

    def in_thread(tag: str) -> None:
        for i in range(60):
            log.write_sync(_fresh(tag, i))

    workers = [threading.Thread(target=in_thread, args=(f"thread{k}",)) for k in range(3)]
    workers.append(threading.Thread(target=asyncio.run, args=(sequential("loop2"),)))
    for w in workers:
        w.start()
    asyncio.run(gathered())
    for w in workers:
        w.join()
    stats = log.stats()
    log.close()
    expected = [f"burst-{i:05d}" for i in range(burst)] + [
        f"{tag}-{i:05d}" for tag in ("thread0", "thread1", "thread2", "loop2") for i in range(60)
    ]
    ids = _stored_ids(engine)
    assert len(ids) == len(expected) and set(ids) == set(expected)  # each exactly once
    assert (stats.written, stats.failed, stats.pending) == (len(expected), 0, 0)
    assert stats.inline <= len(expected) - burst  # the burst went to the writer


def test_a_burst_from_one_loop_queues_for_group_commit(engine: Engine) -> None:
    log = ExchangeLog(engine)

    async def burst() -> None:
        await asyncio.gather(*(log.write(_fresh("b", i)) for i in range(50)))

    asyncio.run(burst())
    stats = log.stats()
    log.close()
    assert stats.inline == 0  # 50 writes ready in one loop turn: none committed alone
    assert stats.written == 50 and stats.batches >= 1
    assert len(_stored_ids(engine)) == 50


def test_records_that_overlap_in_time_go_to_the_writer(engine: Engine) -> None:
    """A record that arrived before the previous write was handed in: its request ran
    concurrently with another, which is the gateway under load."""
    log = ExchangeLog(engine)
    early = _fresh("overlap", 0)  # arrives now, is logged only after the next one
    log.write_sync(_fresh("overlap", 1))
    log.write_sync(early)
    stats = log.stats()
    log.close()
    assert stats.written == 2
    assert stats.inline == (1 if engine.dialect.name == "sqlite" else 0)
    assert sorted(_stored_ids(engine)) == ["overlap-00000", "overlap-00001"]


def test_another_process_holding_the_lock_sends_the_record_to_the_writer(
    engine: Engine, write_lock
) -> None:
    """The inline connection never waits for SQLite's write lock (the loop would stall): the
    record is queued instead, and lands once the lock is free."""
    log = ExchangeLog(engine, write_timeout_s=0.3)
    record = _fresh("locked", 0)
    with write_lock(engine), pytest.raises(StoreError, match="did not commit"):
        log.write_sync(record)
    log.close()
    stats = log.stats()
    assert (stats.inline, stats.written, stats.failed) == (0, 1, 0)
    assert _stored_ids(engine) == ["locked-00000"]


def test_an_inline_failure_reaches_the_caller_and_the_log_goes_on(engine: Engine) -> None:
    log = ExchangeLog(engine)
    first = _fresh("dup", 0)
    log.write_sync(first)
    with pytest.raises(StoreError):
        log.write_sync(_fresh("dup", 0))  # same primary key
    log.write_sync(_fresh("dup", 1))
    stats = log.stats()
    log.close()
    assert (stats.written, stats.failed) == (2, 1)
    assert sorted(_stored_ids(engine)) == ["dup-00000", "dup-00001"]
    with pytest.raises(StoreError, match="closed"):
        log.write_sync(_fresh("dup", 2))


def test_in_memory_sqlite_always_queues() -> None:
    """A shared in-memory database has one connection: no second one for the inline path."""
    from distillguard.store import migrate

    engine = make_engine("sqlite://")
    migrate(engine=engine)
    with ExchangeLog(engine) as log:
        log.write_sync(_fresh("mem", 0))
    assert (log.stats().inline, log.stats().written) == (0, 1)
    engine.dispose()
