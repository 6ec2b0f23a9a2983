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
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, fields
from typing import Any

from sqlalchemy import Engine, and_, func, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, aliased

from distillguard.errors import InputError, StoreError
from distillguard.store.db import as_store_error, clean_text
from distillguard.store.schema import Action, Exchange


def new_exchange_id() -> str:
    """Unique and roughly time-ordered: 12 hex digits of milliseconds, then 64 random bits."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(8)}"


@dataclass(frozen=True, kw_only=True, slots=True)
class ExchangeRecord:
    """One API exchange as the gateway saw it (the traffic log's fields plus serving details)."""

    id: str = field(default_factory=new_exchange_id)
    ts: float = field(default_factory=time.time)  # arrival, Unix seconds
    account_id: str | None = None  # None: the request never authenticated
    key_id: str | None = None
    ip: str = ""
    user_agent: str | None = None
    payment_fingerprint: str | None = None
    endpoint: str = ""
    request: Any = field(default_factory=dict)  # the body as sent (any JSON value)
    response_text: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    status: int = 200
    latency_ms: float | None = None  # time to last byte
    model: str | None = None
    error: str | None = None
    watermark_scheme: str | None = None
    watermark_key_id: int | None = None


RECORD_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ExchangeRecord))
_INSERT = insert(Exchange.__table__)
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
    if row["request"] is None:
        row["request"] = {}
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


@dataclass(frozen=True)
class ExchangeLogStats:
    written: int  # rows committed
    failed: int  # records whose insert failed (each waiter got StoreError)
    batches: int  # transactions committed
    largest_batch: int
    pending: int  # queued, not yet committed


def _settle_async(items: list[tuple[asyncio.Future[None], BaseException | None]]) -> None:
    for future, error in items:
        if future.done():  # the waiter was cancelled; its row is written all the same
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


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
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # orders close() against submissions: none after the stop
        self._closed = False
        self._written = self._failed = self._batches = self._largest = 0
        self._thread = threading.Thread(target=self._run, name="exchange-log", daemon=True)
        self._thread.start()

    # -- callers ---------------------------------------------------------------------------

    async def write(self, record: ExchangeRecord) -> None:
        """Queue ``record`` and return once it is committed; StoreError if it cannot be."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._submit(_Pending(record_to_row(record), loop, future))
        try:
            # On timeout or cancellation wait_for cancels `future` (the writer then skips it);
            # the record itself stays queued and is written all the same.
            await asyncio.wait_for(future, self._write_timeout_s)
        except TimeoutError as exc:
            raise self._timeout_error() from exc

    def write_sync(self, record: ExchangeRecord, *, timeout: float | None = None) -> None:
        """The same for callers without an event loop (blocks this thread until COMMIT)."""
        future: Future[None] = Future()
        self._submit(_Pending(record_to_row(record), None, future))
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

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def __enter__(self) -> ExchangeLog:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _submit(self, pending: _Pending) -> None:
        with self._lock:
            if self._closed:
                raise StoreError("the exchange log is closed")
            self._queue.put(pending)

    # -- the background thread ---------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:  # drain what came before the stop, then end
                    stopping = True
                    break
                batch.append(item)
            try:
                outcomes = self._insert(batch)
            except BaseException as exc:  # never leave a waiter hanging, whatever happened
                outcomes = [StoreError(f"cannot log exchange: {exc!r}")] * len(batch)
            self._settle(batch, outcomes)

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
        except SQLAlchemyError as exc:
            if len(batch) == 1:
                return [as_store_error(exc, self._engine)]
        except Exception as exc:  # a value no driver can bind: still the caller's answer
            if len(batch) == 1:
                return [StoreError(f"cannot log exchange: {exc}")]
        return [self._insert([p])[0] for p in batch]

    def _settle(self, batch: list[_Pending], outcomes: list[BaseException | None]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = defaultdict(list)
        for pending, error in zip(batch, outcomes, strict=True):
            if error is None:
                self._written += 1
            else:
                self._failed += 1
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


# --- enforcement actions ------------------------------------------------------------------

ACTIONS = ("allow", "throttle", "flag", "block", "degrade", "suspend", "reinstate")


@dataclass(frozen=True)
class ActionRecord:
    id: int
    ts: float
    account_id: str
    cluster_id: str | None
    action: str
    score: float
    reasons: tuple[str, ...]


def record_action(
    session: Session,
    *,
    account_id: str,
    cluster_id: str | None,
    action: str,
    reasons: list[str] | tuple[str, ...],
    score: float,
    ts: float | None = None,
) -> None:
    """Keep an enforcement decision as evidence (who, what, why, when)."""
    if action not in ACTIONS:
        raise InputError(f"action must be one of {ACTIONS}, got {action!r}", param="action")
    session.add(
        Action(
            ts=time.time() if ts is None else ts,
            account_id=account_id,
            cluster_id=cluster_id,
            action=action,
            score=float(score),
            reasons=[str(r) for r in reasons],
        )
    )
    session.flush()


def list_actions(
    session: Session,
    *,
    account_id: str | None = None,
    since: float | None = None,
    limit: int | None = None,
) -> list[ActionRecord]:
    """Actions in time order (newest last), optionally for one account and/or since a time;
    with ``limit``, the newest ``limit`` of them (still oldest first)."""
    query = select(Action)
    if account_id is not None:
        query = query.where(Action.account_id == account_id)
    if since is not None:
        query = query.where(Action.ts >= since)
    if limit is not None:
        if limit < 1:
            raise InputError(f"limit must be >= 1, got {limit}", param="limit")
        newest = query.order_by(Action.ts.desc(), Action.id.desc()).limit(limit).subquery()
        query = select(aliased(Action, newest))
        order = (newest.c.ts, newest.c.id)
    else:
        order = (Action.ts, Action.id)
    query = query.order_by(*order)
    return [
        ActionRecord(
            id=a.id,
            ts=a.ts,
            account_id=a.account_id,
            cluster_id=a.cluster_id,
            action=a.action,
            score=a.score,
            reasons=tuple(a.reasons or ()),
        )
        for a in session.scalars(query)
    ]
