"""Keys: alias, expiry, metadata, token and spend budgets with their running usage.

Revision ID: 0003
Revises: 0001
Create Date: 2026-12-01

Added columns are nullable or have a server default, so existing keys keep working unchanged
(no alias, never expire, no budget, nothing used yet). The chain after 0001 may be linearized
with other revisions at merge: nothing here depends on them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine:
    # JSON text on SQLite, JSONB on PostgreSQL (as in schema.JsonDocument).
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    # batch mode: SQLite rebuilds the table, PostgreSQL runs plain ALTER TABLEs.
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("alias", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("expires_at", sa.Double(), nullable=True))
        batch.add_column(sa.Column("metadata", _json(), nullable=True))
        batch.add_column(sa.Column("token_budget", sa.BigInteger(), nullable=True))
        batch.add_column(
            sa.Column("tokens_used", sa.BigInteger(), server_default=sa.text("0"), nullable=False)
        )
        batch.add_column(sa.Column("spend_budget_usd", sa.Double(), nullable=True))
        batch.add_column(
            sa.Column("spend_used_usd", sa.Double(), server_default=sa.text("0"), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        for column in (
            "spend_used_usd",
            "spend_budget_usd",
            "tokens_used",
            "token_budget",
            "metadata",
            "expires_at",
            "alias",
        ):
            batch.drop_column(column)
