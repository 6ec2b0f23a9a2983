"""Migrations create the schema on a blank database, match the models, and go both ways."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from distillguard.errors import StoreError
from distillguard.store import make_engine, migrate, session_scope
from distillguard.store.accounts import list_accounts
from distillguard.store.db import (
    alembic_config,
    current_revision,
    head_revision,
    require_current_schema,
    table_names,
)
from distillguard.store.schema import Base

TABLES = {"accounts", "api_keys", "exchanges", "actions", "audit_events"}
TABLES |= {"traffic_minutes", "traffic_hours"}  # 0006: the console's rollups
# spec/traffic-log.md §1 fields, plus the serving details the gateway records.
EXCHANGE_COLUMNS = {
    "id",
    "ts",
    "account_id",
    "key_id",
    "ip",
    "user_agent",
    "payment_fingerprint",
    "endpoint",
    "request",
    "response_text",
    "prompt_tokens",
    "completion_tokens",
    "status",
    "latency_ms",
    "model",
    "error",
    "watermark_scheme",
    "watermark_key_id",
    "choices",  # 0005: every choice (tool calls, refusals)
    "response",  # 0005: the /v1/responses and /v1/embeddings answer
}


def test_migrate_blank_database_creates_every_table(db_url: str) -> None:
    engine = make_engine(db_url)
    assert table_names(engine) == set()
    assert current_revision(engine) is None
    with pytest.raises(StoreError, match="db migrate"):
        require_current_schema(engine)

    migrate(db_url)
    migrate(db_url)  # idempotent: a second run changes nothing and does not fail

    assert table_names(engine) == TABLES | {"alembic_version"}
    assert current_revision(engine) == head_revision()
    require_current_schema(engine)
    inspector = inspect(engine)
    assert {c["name"] for c in inspector.get_columns("exchanges")} == EXCHANGE_COLUMNS
    indexes = {tuple(ix["column_names"]) for ix in inspector.get_indexes("exchanges")}
    assert ("account_id", "ts") in indexes
    assert ("ts",) in indexes
    engine.dispose()


def test_models_and_migrations_agree(db_url: str) -> None:
    """Autogenerate finds nothing to add: no model change lands without its migration."""
    migrate(db_url)
    engine = make_engine(db_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()


def test_downgrade_to_base_and_back(db_url: str) -> None:
    engine = make_engine(db_url)
    migrate(engine=engine)
    with engine.connect() as connection:
        command.downgrade(alembic_config(connection), "base")
        connection.commit()
    assert table_names(engine) <= {"alembic_version"}
    migrate(engine=engine)
    assert table_names(engine) >= TABLES
    engine.dispose()


def test_unmigrated_database_is_a_clear_store_error(db_url: str) -> None:
    engine = make_engine(db_url)
    with pytest.raises(StoreError, match="db migrate"), session_scope(engine) as session:
        list_accounts(session)
    engine.dispose()


def test_sqlite_runs_in_wal_mode_with_normal_sync(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'wal.db'}")
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL
        assert connection.execute(text("PRAGMA busy_timeout")).scalar() > 0
    engine.dispose()


@pytest.mark.parametrize(
    "url", ["not a url", "mysql://u@h/db", "postgresql+psycopg://postgres@127.0.0.1:1/none"]
)
def test_bad_database_urls_raise_store_error(url: str) -> None:
    with pytest.raises(StoreError):
        migrate(url)


def test_replicas_starting_together_migrate_once(db_url: str) -> None:
    """Three processes call migrate() on one blank database at the same moment."""
    import subprocess
    import sys

    code = "import sys; from distillguard.store import migrate; migrate(sys.argv[1])"
    children = [
        subprocess.Popen([sys.executable, "-c", code, db_url], stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    errors = [child.communicate(timeout=120)[1].decode()[-1500:] for child in children]
    assert [child.returncode for child in children] == [0, 0, 0], errors
    engine = make_engine(db_url)
    assert current_revision(engine) == head_revision()
    assert table_names(engine) == TABLES | {"alembic_version"}
    engine.dispose()


def test_postgres_scheme_aliases_use_psycopg(monkeypatch) -> None:
    for url in ("postgresql://u@127.0.0.1/db", "postgres://u@127.0.0.1/db"):
        engine = make_engine(url)
        assert engine.url.drivername == "postgresql+psycopg"
        engine.dispose()
