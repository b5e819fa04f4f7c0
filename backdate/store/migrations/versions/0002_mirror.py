"""Home Assistant mirror: registries, current states, state-change history, mirror gaps.

Revision ID: 0002_mirror
Revises: 0001_ingest
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_mirror"
down_revision = "0001_ingest"
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _key(*names: str) -> list[sa.Column]:
    return [sa.Column(n, sa.String(255 if n == "entity_id" else 200), primary_key=True)
            for n in names]


def upgrade() -> None:
    op.create_table(
        "mirror_homes", *_key("home"),
        sa.Column("ha_version", sa.String(64)), sa.Column("last_snapshot", sa.Float),
        sa.Column("last_event", sa.Float), sa.Column("last_seen", sa.Float),
        sa.Column("counts", sa.Text))
    op.create_table(
        "mirror_devices", *_key("home", "id"),
        sa.Column("name", sa.Text), sa.Column("name_by_user", sa.Text),
        sa.Column("manufacturer", sa.Text), sa.Column("model", sa.Text),
        sa.Column("area_id", sa.String(200)), sa.Column("config_entry_id", sa.String(200)),
        sa.Column("parent_device_id", sa.String(200)), sa.Column("disabled_by", sa.String(50)),
        sa.Column("data", sa.Text, nullable=False))
    op.create_index("ix_mirror_devices_area", "mirror_devices", ["home", "area_id"])
    op.create_table("mirror_device_entries", *_key("home", "device_id", "entry_id"))
    op.create_index("ix_mirror_device_entries_entry", "mirror_device_entries",
                    ["home", "entry_id"])
    op.create_table(
        "mirror_entities", *_key("home", "entity_id"),
        sa.Column("id", sa.String(200)), sa.Column("device_id", sa.String(200)),
        sa.Column("area_id", sa.String(200)), sa.Column("platform", sa.String(200)),
        sa.Column("config_entry_id", sa.String(200)), sa.Column("disabled_by", sa.String(50)),
        sa.Column("data", sa.Text, nullable=False))
    op.create_index("ix_mirror_entities_device", "mirror_entities", ["home", "device_id"])
    op.create_table(
        "mirror_areas", *_key("home", "area_id"),
        sa.Column("name", sa.Text), sa.Column("data", sa.Text, nullable=False))
    op.create_table(
        "mirror_config_entries", *_key("home", "entry_id"),
        sa.Column("domain", sa.String(200)), sa.Column("title", sa.Text),
        sa.Column("state", sa.String(64)), sa.Column("data", sa.Text, nullable=False))
    op.create_table(
        "mirror_states", *_key("home", "entity_id"),
        sa.Column("state", sa.Text), sa.Column("attributes", sa.Text),
        sa.Column("last_changed", sa.String(64)), sa.Column("last_updated", sa.String(64)),
        sa.Column("last_updated_ts", sa.Float))
    op.create_table(
        "mirror_events",
        sa.Column("id", PK, primary_key=True, autoincrement=True),
        sa.Column("home", sa.String(200), nullable=False),
        sa.Column("entity_id", sa.String(255), nullable=False),
        sa.Column("old_state", sa.Text), sa.Column("new_state", sa.Text),
        sa.Column("attributes", sa.Text),
        sa.Column("time_fired", sa.Float, nullable=False),
        sa.Column("context_id", sa.String(64)),
        sa.Column("received_at", sa.Float, nullable=False))
    op.create_index("ux_mirror_events_key", "mirror_events", ["home", "entity_id", "time_fired"],
                    unique=True)
    op.create_index("ix_mirror_events_time", "mirror_events", ["time_fired"])
    op.create_table(
        "mirror_gaps",
        sa.Column("id", PK, primary_key=True, autoincrement=True),
        sa.Column("home", sa.String(200), nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("ended_at", sa.Float),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("cause", sa.String(500), nullable=False),
        sa.Column("instance", sa.String(64), nullable=False))
    op.create_index("ix_mirror_gaps_home", "mirror_gaps", ["home", "status"])


def downgrade() -> None:
    for name in ("mirror_gaps", "mirror_events", "mirror_states", "mirror_config_entries",
                 "mirror_areas", "mirror_entities", "mirror_device_entries", "mirror_devices",
                 "mirror_homes"):
        op.drop_table(name)
