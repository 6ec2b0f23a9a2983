"""Alembic environment: runs migrations on the connection ``distillguard.store.db.migrate``
hands over (``config.attributes["connection"]``), or on ``sqlalchemy.url`` when Alembic's own
command line is used with ``migrations/alembic.ini``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from distillguard.store.schema import Base

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from distillguard.store.db import make_engine, resolve_url

    engine = make_engine(context.config.get_main_option("sqlalchemy.url") or resolve_url())
    try:
        with engine.connect() as connection:
            _run(connection)
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()
