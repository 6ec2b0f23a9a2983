"""Traffic rollups for the console on a large log, and an index for IP-prefix search.

``traffic_minutes`` holds requests and tokens per (account, minute) plus one row per minute
for all traffic (account ``*``, unauthenticated requests included); ``traffic_hours`` per
(hour, account). Triggers on ``exchanges`` keep both in the same transaction as every insert,
whoever writes (the gateway's log writer, ``log import``, a benchmark), so they cannot drift
from the log; existing rows are rolled up here once. ``ix_exchanges_ip_account`` serves
searches and links by IP prefix as index range scans (``ip >= p AND ip < p'``).

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-01

The chain may be linearized at merge: set ``down_revision`` to "0005" once 0005 (exchange
choices, another branch) is in; nothing here depends on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ALL = "*"  # the account id of the all-traffic rows (no account id has this form)
TOKENS = "COALESCE(NEW.prompt_tokens, 0) + COALESCE(NEW.completion_tokens, 0)"


def _upserts(minute: str, hour: str) -> list[str]:
    """The three rows an exchange adds to: its minute (all traffic), its account's minute and
    its account's hour. ``minute``/``hour``: SQL for the exchange's bucket numbers."""
    return [
        f"INSERT INTO traffic_minutes (account_id, minute, requests, tokens) "
        f"VALUES ('{ALL}', {minute}, 1, {TOKENS}) ON CONFLICT (account_id, minute) DO UPDATE "
        f"SET requests = traffic_minutes.requests + 1, "
        f"tokens = traffic_minutes.tokens + excluded.tokens",
        f"INSERT INTO traffic_minutes (account_id, minute, requests, tokens) "
        f"SELECT NEW.account_id, {minute}, 1, {TOKENS} WHERE NEW.account_id IS NOT NULL "
        f"ON CONFLICT (account_id, minute) DO UPDATE "
        f"SET requests = traffic_minutes.requests + 1, "
        f"tokens = traffic_minutes.tokens + excluded.tokens",
        f"INSERT INTO traffic_hours (hour, account_id, requests, tokens) "
        f"SELECT {hour}, NEW.account_id, 1, {TOKENS} WHERE NEW.account_id IS NOT NULL "
        f"ON CONFLICT (hour, account_id) DO UPDATE "
        f"SET requests = traffic_hours.requests + 1, "
        f"tokens = traffic_hours.tokens + excluded.tokens",
    ]


def upgrade() -> None:
    op.create_table(
        "traffic_minutes",
        sa.Column("account_id", sa.String(length=40), primary_key=True),
        sa.Column("minute", sa.BigInteger(), primary_key=True),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "traffic_hours",
        sa.Column("hour", sa.BigInteger(), primary_key=True),
        sa.Column("account_id", sa.String(length=40), primary_key=True),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_exchanges_ip_account", "exchanges", ["ip", "account_id"])
    sqlite = op.get_bind().dialect.name == "sqlite"
    # floor(ts / 60): SQLite's CAST truncates (ts > 0), PostgreSQL's rounds
    if sqlite:
        minute, hour = "CAST(NEW.ts / 60 AS INTEGER)", "CAST(NEW.ts / 3600 AS INTEGER)"
        body = ";\n".join(_upserts(minute, hour))
        op.execute(f"CREATE TRIGGER exchanges_rollup AFTER INSERT ON exchanges BEGIN\n{body};\nEND")
    else:
        minute, hour = "FLOOR(NEW.ts / 60)::bigint", "FLOOR(NEW.ts / 3600)::bigint"
        body = ";\n".join(_upserts(minute, hour))
        op.execute(
            "CREATE FUNCTION exchanges_rollup() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            f"BEGIN\n{body};\nRETURN NULL;\nEND $$"
        )
        op.execute(
            "CREATE TRIGGER exchanges_rollup AFTER INSERT ON exchanges "
            "FOR EACH ROW EXECUTE FUNCTION exchanges_rollup()"
        )
    row_minute = "CAST(ts / 60 AS INTEGER)" if sqlite else "FLOOR(ts / 60)::bigint"
    row_hour = "CAST(ts / 3600 AS INTEGER)" if sqlite else "FLOOR(ts / 3600)::bigint"
    tokens = "SUM(COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0))"
    op.execute(
        f"INSERT INTO traffic_minutes (account_id, minute, requests, tokens) "
        f"SELECT '{ALL}', {row_minute}, COUNT(*), {tokens} FROM exchanges GROUP BY 2"
    )
    op.execute(
        f"INSERT INTO traffic_minutes (account_id, minute, requests, tokens) "
        f"SELECT account_id, {row_minute}, COUNT(*), {tokens} FROM exchanges "
        "WHERE account_id IS NOT NULL GROUP BY 1, 2"
    )
    op.execute(
        f"INSERT INTO traffic_hours (hour, account_id, requests, tokens) "
        f"SELECT {row_hour}, account_id, COUNT(*), {tokens} FROM exchanges "
        "WHERE account_id IS NOT NULL GROUP BY 1, 2"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS exchanges_rollup")
    else:
        op.execute("DROP TRIGGER IF EXISTS exchanges_rollup ON exchanges")
        op.execute("DROP FUNCTION IF EXISTS exchanges_rollup()")
    op.drop_index("ix_exchanges_ip_account", table_name="exchanges")
    op.drop_table("traffic_hours")
    op.drop_table("traffic_minutes")
