"""Reversible, audited enforcement: actions get an actor, a reason, params, evidence, an
expiry and a lift; a new audit table records who did what.

Actions recorded before this revision were never enforced from the table (the standing
action lived in Redis or in one process's memory), had no expiry and no actor: they are kept
as history, marked as expired at the moment they were taken, with the actor ``legacy``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine:
    # JSON text on SQLite, JSONB on PostgreSQL (as in schema.JsonDocument).
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("actions") as batch:
        batch.add_column(sa.Column("params", _json(), nullable=True))
        batch.add_column(sa.Column("actor", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("evidence", _json(), nullable=True))
        batch.add_column(sa.Column("evidence_fingerprint", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("expires_at", sa.Double(), nullable=True))
        batch.add_column(sa.Column("lifted_at", sa.Double(), nullable=True))
        batch.add_column(sa.Column("lifted_by", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("lift_reason", sa.Text(), nullable=True))
    op.execute(
        "UPDATE actions SET params = '{}', actor = 'legacy', "
        "reason = 'recorded before actions had reasons', expires_at = ts"
    )
    with op.batch_alter_table("actions") as batch:
        batch.alter_column("params", existing_type=_json(), nullable=False)
        batch.alter_column("actor", existing_type=sa.String(length=200), nullable=False)
        batch.alter_column("reason", existing_type=sa.Text(), nullable=False)
        batch.alter_column("expires_at", existing_type=sa.Double(), nullable=False)
        batch.alter_column("score", existing_type=sa.Double(), nullable=True)
        batch.create_index("ix_actions_expires_at", ["expires_at"])

    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ts", sa.Double(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("event", sa.String(length=40), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=True),
        sa.Column("target", sa.String(length=100), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("details", _json(), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index("ix_audit_events_ts", "audit_events", ["ts"])
    op.create_index("ix_audit_events_account_id_ts", "audit_events", ["account_id", "ts"])


def downgrade() -> None:
    op.drop_index("ix_audit_events_account_id_ts", table_name="audit_events")
    op.drop_index("ix_audit_events_ts", table_name="audit_events")
    op.drop_table("audit_events")
    op.execute("UPDATE actions SET score = 1.0 WHERE score IS NULL")
    with op.batch_alter_table("actions") as batch:
        batch.drop_index("ix_actions_expires_at")
        batch.alter_column("score", existing_type=sa.Double(), nullable=False)
        for column in (
            "lift_reason",
            "lifted_by",
            "lifted_at",
            "expires_at",
            "evidence_fingerprint",
            "evidence",
            "reason",
            "actor",
            "params",
        ):
            batch.drop_column(column)
