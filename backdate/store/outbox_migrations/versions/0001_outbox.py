"""Outbox: events waiting for an acknowledgement, the ring of acknowledged ones, lost ranges.

Revision ID: 0001_outbox
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_outbox"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outbox_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "outbox_counters",
        sa.Column("device_id", sa.String(200), primary_key=True),
        sa.Column("source_vendor", sa.String(200), primary_key=True),
        sa.Column("next_seq", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "outbox_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(200), nullable=False),
        sa.Column("source_vendor", sa.String(200), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("acked", sa.Boolean, nullable=False, server_default=sa.text("0")),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("enqueued_at", sa.Float, nullable=False),
        sa.Column("acked_at", sa.Float),
        sa.Column("body", sa.Text, nullable=False),
    )
    op.create_index("ux_outbox_events_seq", "outbox_events",
                    ["device_id", "source_vendor", "seq"], unique=True)
    op.create_index("ix_outbox_events_acked", "outbox_events", ["acked", "id"])
    op.create_table(
        "outbox_lost",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(200), nullable=False),
        sa.Column("source_vendor", sa.String(200), nullable=False),
        sa.Column("first_seq", sa.BigInteger, nullable=False),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.String(100), nullable=False),
        sa.Column("reported", sa.Boolean, nullable=False, server_default=sa.text("0")),
        sa.Column("recorded_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("outbox_lost")
    op.drop_table("outbox_events")
    op.drop_table("outbox_counters")
    op.drop_table("outbox_meta")
