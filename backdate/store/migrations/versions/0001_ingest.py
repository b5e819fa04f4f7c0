"""Ingest: streams, events (dedup in unique indexes) and ingestion_gaps.

Revision ID: 0001_ingest
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_ingest"
down_revision = None
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "ingest_streams",
        sa.Column("id", PK, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(200), nullable=False),
        sa.Column("source_vendor", sa.String(200), nullable=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("floor_seq", sa.BigInteger),
        sa.Column("hwm", sa.BigInteger),
        sa.Column("events", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("resets", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("first_seen", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
    )
    op.create_index("ux_ingest_streams_key", "ingest_streams",
                    ["device_id", "source_vendor", "epoch"], unique=True)
    op.create_table(
        "ingest_events",
        sa.Column("id", PK, primary_key=True, autoincrement=True),
        sa.Column("stream_id", PK, sa.ForeignKey("ingest_streams.id"), nullable=False),
        sa.Column("seq", sa.BigInteger),
        sa.Column("counter_reset", sa.Boolean, nullable=False,
                  server_default=sa.text("false")),
        sa.Column("digest", sa.String(32), nullable=False),
        sa.Column("event_type", sa.String(100), nullable=False),
        sa.Column("timestamp", sa.String(64)),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
    )
    op.create_index("ux_ingest_events_seq", "ingest_events", ["stream_id", "seq"], unique=True,
                    sqlite_where=sa.text("seq IS NOT NULL AND NOT counter_reset"),
                    postgresql_where=sa.text("seq IS NOT NULL AND NOT counter_reset"))
    op.create_index("ux_ingest_events_reset", "ingest_events", ["stream_id", "seq", "digest"],
                    unique=True, sqlite_where=sa.text("counter_reset"),
                    postgresql_where=sa.text("counter_reset"))
    op.create_table(
        "ingestion_gaps",
        sa.Column("id", PK, primary_key=True, autoincrement=True),
        sa.Column("stream_id", PK, sa.ForeignKey("ingest_streams.id"), nullable=False),
        sa.Column("device_id", sa.String(200), nullable=False),
        sa.Column("source_vendor", sa.String(200), nullable=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("first_seq", sa.BigInteger, nullable=False),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("missing", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(200)),
        sa.Column("detected_at", sa.Float, nullable=False),
        sa.Column("resolved_at", sa.Float),
    )
    op.create_index("ix_ingestion_gaps_stream", "ingestion_gaps", ["stream_id", "status"])
    op.create_index("ix_ingestion_gaps_status", "ingestion_gaps", ["status", "detected_at"])


def downgrade() -> None:
    op.drop_table("ingestion_gaps")
    op.drop_table("ingest_events")
    op.drop_table("ingest_streams")
