"""The exchange log: a group-commit writer for the gateway's hot path, readers, and actions.

``ExchangeLog`` owns one background thread. Request handlers hand it a record and wait; the
thread takes everything queued so far, inserts it as one batch in one transaction, and only
after COMMIT wakes each waiter. Under load many requests share one commit (the cost that
dominates on both backends), so throughput grows with concurrency while a lone request pays
one small transaction. A handler whose ``await log.write(rec)`` returned knows its row is
durable (see ``db.py`` for SQLite's durability against SIGKILL); a handler cancelled while
waiting (a client that disconnected) still gets its row written, because the record is
already queued.

One bad record cannot sink its batch: when a batch insert fails, each record is retried in
its own transaction, and only the ones that still fail get ``StoreError``.

A lone request does not pay the hand-off. When the writer is idle, nothing is queued and the
record shows no other request in flight, the caller commits its record itself (SQLite files
only, see ``ExchangeLog.__init__``): two thread wake-ups cost ~0.7 ms under this machine's load
against ~0.2 ms for the commit. Any sign of concurrency sends records to the queue, so group
commit still carries the load. Either way ``write`` returns only after COMMIT.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, func, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from distillguard.errors import InputError, StoreError
from distillguard.store.db import as_store_error, clean_text
from distillguard.store.schema import Exchange
from distillguard.wire.exchange import RECORD_FIELDS, ExchangeRecord

_INSERT = insert(Exchange)
# Every text column with its length limit (None: unbounded). PostgreSQL enforces VARCHAR
# lengths and SQLite does not: a client's 1,000-character model name must not make the same
# row land on one backend and be lost on the other, so values are cut to the column's size.
_TEXT_LIMITS: dict[str, int | None] = {
    column.name: getattr(column.type, "length", None)
    for column in Exchange.__table__.columns
    if column.name in RECORD_FIELDS and column.type.python_type is str
}


def record_to_row(record: ExchangeRecord) -> dict[str, Any]:
    """The insert parameters for one record: text cleaned and cut to its column."""
    row = {name: getattr(record, name) for name in RECORD_FIELDS}
    for name, limit in _TEXT_LIMITS.items():
        value = row[name]
        if value is None:
            continue
        if not isinstance(value, str):
            value = str(value)
        value = clean_text(value)  # NUL and lone surrogates would fail the insert
        row[name] = value if limit is None or len(value) <= limit else value[:limit]
    request = row["request"]
    if request is None:
        row["request"] = {}
    elif not isinstance(request, dict):
        # Always an object: SQLite gives a bare JSON number numeric affinity (it then no
        # longer reads back as JSON), and readers may rely on `request.get(...)`.
        row["request"] = {"_value": request}
    return row


def _from_row(row: Any) -> ExchangeRecord:
    mapping = row._mapping
    return ExchangeRecord(**{name: mapping[name] for name in RECORD_FIELDS})


# --- the writer ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    row: dict[str, Any]
    loop: asyncio.AbstractEventLoop | None  # set for async waiters
    future: asyncio.Future[None] | Future[None]


# Queued by the inline path every _CHECKPOINT_EVERY commits: the writer thread then copies the
# WAL into the database file (the one step of a SQLite commit that may fsync), off the loop.
_CHECKPOINT = object()
_CHECKPOINT_EVERY = 256  # inline commits (~0.5-1 MB of WAL) between checkpoints
# The inline path measures itself: when its commits average (EWMA, weight 1/10) more than
# this, the database is slow (disk, contention) and every record goes to the writer thread
# for _INLINE_BACKOFF_S. Two ms is 10x the measured commit. Each sample is capped at
# _INLINE_SAMPLE_CAP_S first: on this loaded machine a lone commit is sometimes preempted
# for 10-30 ms, which uncapped tripped the pause by itself (measured: 149 of 1,600 writes
# inline); capped, it takes four or more slow commits in a row - a real stall.
_INLINE_SLOW_S = 0.002
_INLINE_SAMPLE_CAP_S = 0.005
_INLINE_BACKOFF_S = 0.5


@dataclass(frozen=True)
class ExchangeLogStats:
    written: int  # rows committed (both paths)
    failed: int  # records whose insert failed (each waiter got StoreError)
    batches: int  # transactions committed by the writer thread
    largest_batch: int
    pending: int  # queued, not yet committed
    inline: int = 0  # rows the caller committed itself (writer idle): included in `written`


def _settle_async(items: list[tuple[asyncio.Future[None], BaseException | None]]) -> None:
    for future, error in items:
        if future.done():  # the waiter was cancelled; its row is written all the same
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def _sqlite_busy(exc: BaseException) -> bool:
    """True when SQLite refused because another connection holds the write lock."""
    code = getattr(getattr(exc, "orig", None), "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class ExchangeLog:
    """Group-commit writer: ``await write(rec)`` returns once the row is committed."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_batch: int = 512,
        write_timeout_s: float = 30.0,
        close_timeout_s: float = 60.0,
        flush_wal: bool = True,
        inline_when_idle: bool = True,
    ):
        if max_batch < 1:
            raise InputError(f"max_batch must be >= 1, got {max_batch}")
        if write_timeout_s <= 0 or close_timeout_s <= 0:
            raise InputError("write_timeout_s and close_timeout_s must be positive")
        self._engine = engine
        self._max_batch = max_batch  # bounds one transaction's size and a failed batch's retries
        # A stuck database fails the waiting request (StoreError) instead of hanging it; the
        # record stays queued and is still written if the database comes back.
        self._write_timeout_s = write_timeout_s
        self._close_timeout_s = close_timeout_s  # close() gives up (StoreError) after this
        # PostgreSQL only. True: COMMIT waits for the server's WAL flush (fsync; ~4 ms here),
        # so a row survives even a crash of the database server. False: `synchronous_commit
        # = off` for the log's transactions: a row still survives the gateway's SIGKILL (the
        # server holds it) and is flushed within ~0.6 s; only a server crash in that window
        # loses it - the same promise as SQLite's synchronous=NORMAL.
        self._relaxed_commit = not flush_wal and engine.dialect.name == "postgresql"
        # The inline path runs the commit on the caller's thread, usually the event loop, which
        # serves nothing else meanwhile. It is offered for SQLite files only, where a commit is
        # a local write() into the page cache (~0.2 ms measured; synchronous=NORMAL, no fsync)
        # and the two ways it could stall are removed: its connection never waits for another
        # process's write lock (busy_timeout 0: the record goes to the queue, whose thread
        # waits) and never checkpoints (the writer thread does, see _CHECKPOINT). PostgreSQL
        # is always queued: its COMMIT is a network round trip that waits for the server's
        # fsync (4-10 ms p50 measured here; 0.6 ms p50 / 10 ms p99 even with flush_wal=False)
        # and a stuck server holds it up to statement_timeout (60 s) - on the loop that would
        # stall every request, on the writer thread it stalls only the log's waiters.
        url = engine.url
        self._inline_enabled = (
            inline_when_idle
            and engine.dialect.name == "sqlite"
            and (url.database or ":memory:") != ":memory:"
            and "mode=memory" not in str(url)  # a shared in-memory database has one connection
        )
        self._queue: queue.SimpleQueue[_Pending | object | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # orders close() against submissions: none after the stop
        # Held for every use of the database by either path (the writer per batch, a caller
        # for its inline commit): one writer at a time, and the counters below stay exact.
        self._db_lock = threading.Lock()
        self._closed = False
        self._writer_busy = False  # the writer took records off the queue and holds them
        self._inline_conn: Connection | None = None
        self._inline_ewma_s = 0.0
        self._inline_paused_until = 0.0  # time.monotonic()
        self._since_checkpoint = 0
        # Concurrency signals for the inline path (see _may_go_inline): when the last write
        # arrived, and how many async writes have arrived so far.
        self._last_write_at = time.time()
        self._arrivals = 0
        self._written = self._failed = self._batches = self._largest = self._inline = 0
        self._thread = threading.Thread(target=self._run, name="exchange-log", daemon=True)
        self._thread.start()

    # -- callers ---------------------------------------------------------------------------

    async def write(self, record: ExchangeRecord) -> None:
        """Commit ``record`` (inline when idle, else queued) and return once it is committed;
        StoreError if it cannot be."""
        row = record_to_row(record)
        if self._may_go_inline(row):
            self._arrivals += 1
            arrival = self._arrivals
            try:
                # One loop turn lets writes that are ready at the same moment (a burst, a
                # gather) show themselves: then they all queue and share one commit.
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                with contextlib.suppress(StoreError):  # closed meanwhile: nothing to write to
                    self._submit(_Pending(row, None, Future()))  # still logged, as documented
                raise
            if arrival == self._arrivals and self._commit_inline(row):
                return
        else:
            self._arrivals += 1
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._submit(_Pending(row, loop, future))
        try:
            # On timeout or cancellation wait_for cancels `future` (the writer then skips it);
            # the record itself stays queued and is written all the same.
            await asyncio.wait_for(future, self._write_timeout_s)
        except TimeoutError as exc:
            raise self._timeout_error() from exc

    def write_sync(self, record: ExchangeRecord, *, timeout: float | None = None) -> None:
        """The same for callers without an event loop (blocks this thread until COMMIT)."""
        row = record_to_row(record)
        if self._may_go_inline(row) and self._commit_inline(row):
            return
        future: Future[None] = Future()
        self._submit(_Pending(row, None, future))
        try:
            future.result(timeout=self._write_timeout_s if timeout is None else timeout)
        except FutureTimeout as exc:
            future.cancel()
            raise self._timeout_error() from exc

    def _timeout_error(self) -> StoreError:
        return StoreError(
            f"the exchange log did not commit within {self._write_timeout_s:g} s "
            f"({self._queue.qsize()} records queued): is the database reachable?"
        )

    def stats(self) -> ExchangeLogStats:
        return ExchangeLogStats(
            written=self._written,
            failed=self._failed,
            batches=self._batches,
            largest_batch=self._largest,
            pending=self._queue.qsize(),
            inline=self._inline,
        )

    def close(self) -> None:
        """Write everything queued, then stop the thread. Later writes raise StoreError."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(None)
        self._thread.join(self._close_timeout_s)
        if self._thread.is_alive():
            raise StoreError(
                f"exchange log did not drain within {self._close_timeout_s:.0f} s "
                f"({self._queue.qsize()} records still queued)"
            )
        with self._db_lock:  # an inline commit in progress finishes first
            self._drop_inline_connection()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def __enter__(self) -> ExchangeLog:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _submit(self, pending: _Pending | object) -> None:
        with self._lock:
            if self._closed:
                raise StoreError("the exchange log is closed")
            self._queue.put(pending)

    # -- the inline path (caller's thread) ---------------------------------------------------

    def _may_go_inline(self, row: dict[str, Any]) -> bool:
        """Whether nothing suggests concurrency: the writer idle, nothing queued, and the
        record arrived after the previous write was handed in. A gateway's records carry
        their request's arrival time, so at concurrency 1 each arrives after the previous
        one was logged, while under load requests overlap and the check fails. Only speed
        depends on this answer, never correctness: both paths return after COMMIT."""
        now = time.time()
        previous, self._last_write_at = self._last_write_at, now
        arrived = row["ts"]
        return (
            self._inline_enabled
            and not self._writer_busy
            and self._queue.empty()
            and isinstance(arrived, int | float)
            and arrived >= previous
            and time.monotonic() >= self._inline_paused_until
        )

    def _commit_inline(self, row: dict[str, Any]) -> bool:
        """Commit one row on this thread. False: not done (the writer or another caller holds
        the database, or another process its write lock), queue it. StoreError as the writer
        would give for a one-record batch."""
        if not self._db_lock.acquire(blocking=False):
            return False
        try:
            if self._closed or not self._queue.empty():
                return False  # closed: _submit says so; queued meanwhile: keep the order
            try:
                connection = self._inline_connection()
                started = time.perf_counter()
                with connection.begin():  # rolled back if the insert or the COMMIT fails
                    connection.execute(_INSERT, row)
            except Exception as exc:
                if _sqlite_busy(exc):  # another process is writing: the writer thread waits
                    return False
                self._drop_inline_connection()  # never reuse a connection in an unknown state
                self._failed += 1
                raise self._store_error(exc) from exc
            elapsed = time.perf_counter() - started
            self._written += 1
            self._inline += 1
            self._since_checkpoint += 1
            sample = min(elapsed, _INLINE_SAMPLE_CAP_S)
            self._inline_ewma_s += (sample - self._inline_ewma_s) / 10
            if self._inline_ewma_s > _INLINE_SLOW_S:
                self._inline_paused_until = time.monotonic() + _INLINE_BACKOFF_S
                self._inline_ewma_s = 0.0  # after the pause, judge afresh
            if self._since_checkpoint >= _CHECKPOINT_EVERY:
                self._since_checkpoint = 0
                # Closing: later commits or the last connection's close checkpoint instead.
                with contextlib.suppress(StoreError):
                    self._submit(_CHECKPOINT)
            return True
        finally:
            self._db_lock.release()

    def _inline_connection(self) -> Connection:
        if self._inline_conn is None:
            connection = self._engine.connect()  # the engine's pragmas (WAL, NORMAL) apply
            connection.detach()  # its own settings below must never reach the pool
            connection.exec_driver_sql("PRAGMA busy_timeout = 0")
            connection.exec_driver_sql("PRAGMA wal_autocheckpoint = 0")
            connection.commit()  # end the autobegun transaction: each write begins its own
            self._inline_conn = connection
        return self._inline_conn

    def _drop_inline_connection(self) -> None:
        if self._inline_conn is not None:
            with contextlib.suppress(Exception):
                self._inline_conn.close()
            self._inline_conn = None

    # -- the background thread ---------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is None:
                break
            self._writer_busy = True
            batch: list[_Pending] = []
            checkpoint = False
            while True:
                if item is _CHECKPOINT:
                    checkpoint = True
                else:
                    assert isinstance(item, _Pending)
                    batch.append(item)
                if len(batch) >= self._max_batch:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:  # drain what came before the stop, then end
                    stopping = True
                    break
            with self._db_lock:
                outcomes: list[BaseException | None] = []
                if batch:
                    try:
                        outcomes = self._insert(batch)
                    except BaseException as exc:  # never leave a waiter hanging
                        outcomes = [StoreError(f"cannot log exchange: {exc!r}")] * len(batch)
                    failed = sum(error is not None for error in outcomes)
                    self._written += len(batch) - failed
                    self._failed += failed
                if checkpoint:
                    self._checkpoint()
            self._settle(batch, outcomes)
            self._writer_busy = False

    def _checkpoint(self) -> None:
        """Copy the WAL into the database file (PASSIVE: never waits for readers)."""
        with contextlib.suppress(SQLAlchemyError), self._engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def _store_error(self, exc: BaseException) -> StoreError:
        if isinstance(exc, SQLAlchemyError):
            return as_store_error(exc, self._engine)
        # A value no driver can bind: still the caller's answer.
        return StoreError(f"cannot log exchange: {exc}")

    def _insert(self, batch: list[_Pending]) -> list[BaseException | None]:
        """Insert a batch in one transaction; on failure, each record alone."""
        try:
            with self._engine.begin() as connection:
                if self._relaxed_commit:
                    connection.exec_driver_sql("SET LOCAL synchronous_commit = off")
                connection.execute(_INSERT, [p.row for p in batch])
            self._batches += 1
            self._largest = max(self._largest, len(batch))
            return [None] * len(batch)
        except Exception as exc:
            if len(batch) == 1:
                return [self._store_error(exc)]
        return [self._insert([p])[0] for p in batch]

    def _settle(self, batch: list[_Pending], outcomes: list[BaseException | None]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = defaultdict(list)
        for pending, error in zip(batch, outcomes, strict=True):
            if pending.loop is None:
                assert isinstance(pending.future, Future)
                if pending.future.done():
                    continue
                if error is None:
                    pending.future.set_result(None)
                else:
                    pending.future.set_exception(error)
            else:
                by_loop[pending.loop].append((pending.future, error))
        # One wake-up per event loop per batch, not one per record.
        for loop, items in by_loop.items():
            # A closed loop raises RuntimeError: nobody is waiting there any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle_async, items)


# --- readers ------------------------------------------------------------------------------


# An exchange belongs to an account when it authenticated: both ids are known.
_ATTRIBUTED = and_(Exchange.account_id.is_not(None), Exchange.key_id.is_not(None))


def recent_exchanges(
    session: Session | Connection, *, limit: int = 20, account_id: str | None = None
) -> list[ExchangeRecord]:
    """The newest ``limit`` exchanges, newest first."""
    if limit < 1:
        raise InputError(f"limit must be >= 1, got {limit}", param="limit")
    query = select(Exchange.__table__)
    if account_id is not None:
        query = query.where(Exchange.account_id == account_id)
    query = query.order_by(Exchange.ts.desc(), Exchange.id.desc()).limit(limit)
    return [_from_row(row) for row in session.execute(query)]


def get_exchange(session: Session | Connection, *, exchange_id: str) -> ExchangeRecord | None:
    row = session.execute(select(Exchange.__table__).where(Exchange.id == exchange_id)).first()
    return None if row is None else _from_row(row)


def count_exchanges(
    session: Session | Connection,
    *,
    since: float | None = None,
    until: float | None = None,
    account_id: str | None = None,
    attributed: bool | None = None,
) -> int:
    """How many exchanges (``since <= ts < until``); ``attributed=False`` counts those without
    an account, ``True`` those with one."""
    query = select(func.count()).select_from(Exchange.__table__)
    if since is not None:
        query = query.where(Exchange.ts >= since)
    if until is not None:
        query = query.where(Exchange.ts < until)
    if account_id is not None:
        query = query.where(Exchange.account_id == account_id)
    if attributed is True:
        query = query.where(_ATTRIBUTED)
    elif attributed is False:
        query = query.where(~_ATTRIBUTED)
    return int(session.execute(query).scalar_one())


def iter_exchanges(
    engine: Engine,
    *,
    since: float | None = None,
    until: float | None = None,
    account_id: str | None = None,
    attributed_only: bool = False,
    chunk_rows: int = 1000,
) -> Iterator[ExchangeRecord]:
    """Every matching exchange in time order, streamed: memory stays bounded by ``chunk_rows``
    (a server-side cursor on PostgreSQL; SQLite's cursor steps lazily by itself)."""
    query = select(Exchange.__table__)
    if since is not None:
        query = query.where(Exchange.ts >= since)
    if until is not None:
        query = query.where(Exchange.ts < until)
    if account_id is not None:
        query = query.where(Exchange.account_id == account_id)
    if attributed_only:
        query = query.where(_ATTRIBUTED)
    query = query.order_by(Exchange.ts, Exchange.id)
    try:
        with engine.connect() as connection:
            result = connection.execution_options(
                stream_results=True, yield_per=chunk_rows
            ).execute(query)
            for row in result:
                yield _from_row(row)
    except SQLAlchemyError as exc:
        raise as_store_error(exc, engine) from exc
