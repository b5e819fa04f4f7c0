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
