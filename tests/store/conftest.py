"""Store fixtures: a migrated engine on each backend, and a way to hold the write lock."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest
from sqlalchemy import Engine

from distillguard.store import make_engine, migrate


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """A migrated database (SQLite file or PostgreSQL) for one test."""
    migrate(db_url)
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def write_lock() -> Callable[[Engine], AbstractContextManager[None]]:
    """``with write_lock(engine):`` holds back every insert into ``exchanges``."""
    return exchanges_write_lock


@contextmanager
def exchanges_write_lock(engine: Engine) -> Iterator[None]:
    """Block every insert into ``exchanges`` until the block ends (from another connection).

    Lets a test queue many records while the log writer waits, so that they reach it together:
    group commit and per-record failure within a batch, tested without timing assumptions.
    """
    if engine.dialect.name == "sqlite":
        conn = sqlite3.connect(engine.url.database, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")  # the database's one write lock
        try:
            yield
        finally:
            conn.execute("COMMIT")
            conn.close()
    else:
        with engine.connect() as conn:
            conn.exec_driver_sql("LOCK TABLE exchanges IN SHARE MODE")  # conflicts with INSERT
            try:
                yield
            finally:
                conn.commit()
