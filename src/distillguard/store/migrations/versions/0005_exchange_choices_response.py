"""The complete answer in the exchange log: every choice (text, tool calls with their
arguments, refusal, finish reason) and, for /v1/responses and /v1/embeddings, the answer
object (outputs; count and dims of the vectors, never the vectors).

Both columns are nullable: rows logged before this revision have only ``response_text``
(choice 0), and an attempt that was never answered has neither.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine:
    # JSON text on SQLite, JSONB on PostgreSQL (as in schema.JsonDocument).
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("exchanges") as batch:
        batch.add_column(sa.Column("choices", _json(), nullable=True))
        batch.add_column(sa.Column("response", _json(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("exchanges") as batch:
        batch.drop_column("response")
        batch.drop_column("choices")
