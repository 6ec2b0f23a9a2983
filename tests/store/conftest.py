"""Store fixtures: a migrated engine on each backend, and a way to hold the write lock."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine

from distillguard.config import get_settings
from distillguard.store import make_engine, migrate
from distillguard.store.db import current_revision, head_revision

_TABLES = ("accounts", "api_keys", "exchanges", "actions", "audit_events")


def _pg_admin(url: str, *statements: str) -> None:
    import psycopg

    conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
        conn.execute(  # a connection some test leaked would block what follows
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        for statement in statements:
            conn.execute(statement)


def _empty_pg_database(url: str) -> bool:
    """Truncate the session database's tables when it is at the newest schema; False if not."""
    engine = make_engine(url)
    try:
        at_head = current_revision(engine) == head_revision()
    finally:
        engine.dispose()
    if not at_head:
        return False
    _pg_admin(url, f"TRUNCATE {', '.join(_TABLES)} RESTART IDENTITY CASCADE")
    return True


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """URL of a migrated, empty database. Faster than ``db_url`` + migrate on PostgreSQL: the
    session's database is migrated once and truncated between tests (``db_url`` tests, which
    need a blank database, drop its schema; then it is migrated again here)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
        migrate(url)
    else:
        url = request.getfixturevalue("pg_database_url")
        if not _empty_pg_database(url):
            _pg_admin(url, "DROP SCHEMA public CASCADE", "CREATE SCHEMA public")
            migrate(url)
    monkeypatch.setenv("DISTILLGUARD_DATABASE_URL", url)
    get_settings.cache_clear()
    return url


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    """A migrated, empty database (SQLite file or PostgreSQL) for one test."""
    eng = make_engine(store_url)
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
