"""Tables of `backdate serve`'s own store (SQLAlchemy Core).

The schema itself is created and changed only by the Alembic migrations next to this module;
these definitions are what the code reads and writes. Times are UTC epoch seconds (floats), so
SQLite and PostgreSQL sort and compare them the same way.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)

metadata = MetaData()

# Integer primary keys: BigInteger does not autoincrement on SQLite.
PK = BigInteger().with_variant(Integer(), "sqlite")

ingest_streams = Table(
    "ingest_streams", metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("device_id", String(200), nullable=False),
    Column("source_vendor", String(200), nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("floor_seq", BigInteger),  # first number seen: nothing below it is a gap
    Column("hwm", BigInteger),  # high-water mark: the largest number seen
    Column("events", BigInteger, nullable=False, server_default=text("0")),
    Column("resets", BigInteger, nullable=False, server_default=text("0")),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Index("ux_ingest_streams_key", "device_id", "source_vendor", "epoch", unique=True),
)

ingest_events = Table(
    "ingest_events", metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("stream_id", PK, ForeignKey("ingest_streams.id"), nullable=False),
    Column("seq", BigInteger),
    Column("counter_reset", Boolean, nullable=False, server_default=text("false")),
    Column("digest", String(32), nullable=False),
    Column("event_type", String(100), nullable=False),
    Column("timestamp", String(64)),
    Column("received_at", Float, nullable=False),
    Column("payload", Text, nullable=False),
    # Deduplication lives in these unique indexes, not in memory: one event per number of a
    # stream, and numbers a reset counter repeats (with other content) once per content.
    Index("ux_ingest_events_seq", "stream_id", "seq", unique=True,
          sqlite_where=text("seq IS NOT NULL AND NOT counter_reset"),
          postgresql_where=text("seq IS NOT NULL AND NOT counter_reset")),
    Index("ux_ingest_events_reset", "stream_id", "seq", "digest", unique=True,
          sqlite_where=text("counter_reset"), postgresql_where=text("counter_reset")),
)

ingestion_gaps = Table(
    "ingestion_gaps", metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("stream_id", PK, ForeignKey("ingest_streams.id"), nullable=False),
    Column("device_id", String(200), nullable=False),
    Column("source_vendor", String(200), nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("first_seq", BigInteger, nullable=False),
    Column("last_seq", BigInteger, nullable=False),
    Column("missing", BigInteger, nullable=False),  # numbers of the range still missing
    Column("status", String(16), nullable=False),  # open, resolved, lost
    Column("reason", String(200)),
    Column("detected_at", Float, nullable=False),
    Column("resolved_at", Float),
    Index("ix_ingestion_gaps_stream", "stream_id", "status"),
    Index("ix_ingestion_gaps_status", "status", "detected_at"),
)

# ------------------------------------------------------------------ Home Assistant mirror
# One row per record of each home's registries, keyed by (home, HA's id): a snapshot replaces
# a home's rows, events change single rows. `data` holds the record as HA sent it (JSON), the
# other columns are copies for filtering. Added by migration 0002_mirror.

mirror_homes = Table(
    "mirror_homes", metadata,
    Column("home", String(200), primary_key=True),
    Column("ha_version", String(64)),
    Column("last_snapshot", Float),
    Column("last_event", Float),
    Column("last_seen", Float),  # the last moment a follower knew it was complete
    Column("counts", Text),
)

mirror_devices = Table(
    "mirror_devices", metadata,
    Column("home", String(200), primary_key=True),
    Column("id", String(200), primary_key=True),
    Column("name", Text),
    Column("name_by_user", Text),
    Column("manufacturer", Text),
    Column("model", Text),
    Column("area_id", String(200)),
    Column("config_entry_id", String(200)),
    Column("parent_device_id", String(200)),
    Column("disabled_by", String(50)),
    Column("data", Text, nullable=False),
    Index("ix_mirror_devices_area", "home", "area_id"),
)

mirror_device_entries = Table(
    "mirror_device_entries", metadata,
    Column("home", String(200), primary_key=True),
    Column("device_id", String(200), primary_key=True),
    Column("entry_id", String(200), primary_key=True),
    Index("ix_mirror_device_entries_entry", "home", "entry_id"),
)

mirror_entities = Table(
    "mirror_entities", metadata,
    Column("home", String(200), primary_key=True),
    Column("entity_id", String(255), primary_key=True),
    Column("id", String(200)),
    Column("device_id", String(200)),
    Column("area_id", String(200)),
    Column("platform", String(200)),
    Column("config_entry_id", String(200)),
    Column("disabled_by", String(50)),
    Column("data", Text, nullable=False),
    Index("ix_mirror_entities_device", "home", "device_id"),
)

mirror_areas = Table(
    "mirror_areas", metadata,
    Column("home", String(200), primary_key=True),
    Column("area_id", String(200), primary_key=True),
    Column("name", Text),
    Column("data", Text, nullable=False),
)

mirror_config_entries = Table(
    "mirror_config_entries", metadata,
    Column("home", String(200), primary_key=True),
    Column("entry_id", String(200), primary_key=True),
    Column("domain", String(200)),
    Column("title", Text),
    Column("state", String(64)),
    Column("data", Text, nullable=False),
)

mirror_states = Table(
    "mirror_states", metadata,
    Column("home", String(200), primary_key=True),
    Column("entity_id", String(255), primary_key=True),
    Column("state", Text),
    Column("attributes", Text),
    Column("last_changed", String(64)),
    Column("last_updated", String(64)),
    Column("last_updated_ts", Float),
)

mirror_events = Table(
    "mirror_events", metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("home", String(200), nullable=False),
    Column("entity_id", String(255), nullable=False),
    Column("old_state", Text),
    Column("new_state", Text),
    Column("attributes", Text),
    Column("time_fired", Float, nullable=False),
    Column("context_id", String(64)),
    Column("received_at", Float, nullable=False),
    # The same state change seen by two `serve` processes (or twice) is one row.
    Index("ux_mirror_events_key", "home", "entity_id", "time_fired", unique=True),
    Index("ix_mirror_events_time", "time_fired"),
)

mirror_gaps = Table(
    "mirror_gaps", metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("home", String(200), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("ended_at", Float),
    Column("status", String(16), nullable=False),  # open, resolved
    Column("cause", String(500), nullable=False),
    Column("instance", String(64), nullable=False),
    Index("ix_mirror_gaps_home", "home", "status"),
)
