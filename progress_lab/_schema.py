"""The versioned database schema shared by the store, the checkpoints and the read models."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

# Bump when a table changes, and add the step to _MIGRATIONS.
SCHEMA_VERSION = 1


class UTCDateTime(sa.TypeDecorator[datetime]):
    """An aware UTC datetime: ``timestamptz`` on PostgreSQL, sortable ISO text on SQLite."""

    impl = sa.DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(sa.DateTime(timezone=True))
        return dialect.type_descriptor(sa.String(32))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        if dialect.name == "postgresql":
            return value
        return sqlite_timestamp(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            return datetime.fromisoformat(value).replace(tzinfo=UTC)
        return value.astimezone(UTC)


def sqlite_timestamp(value: datetime) -> str:
    """UTC text with fixed width, so SQLite compares timestamps as strings correctly."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # INTEGER PRIMARY KEY is SQLite's rowid

metadata = sa.MetaData()

event_store = sa.Table(
    "event_store",
    metadata,
    sa.Column("global_position", _BigId, primary_key=True, autoincrement=False),
    sa.Column("event_id", sa.String(64), nullable=False),
    sa.Column("stream_id", sa.String(256), nullable=False),
    sa.Column("stream_version", sa.BigInteger, nullable=False),
    sa.Column("event_type", sa.String(256), nullable=False),
    sa.Column("event_data", sa.Text, nullable=False),
    sa.Column("metadata", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    # A typed copy of the fields the statistics read, written by progress_lab in the same
    # insert, so a replay reads narrow columns instead of parsing JSON. ``typed`` is NULL
    # on rows other tools wrote; those are decoded from the JSON text instead.
    sa.Column("typed", sa.SmallInteger, nullable=True),
    sa.Column("occurred_at_us", sa.BigInteger, nullable=True),
    sa.Column("metadata_user_id", sa.Text, nullable=True),
    sa.Column("correlation_id", sa.Text, nullable=True),
    sa.Column("causation_id", sa.Text, nullable=True),
    sa.Column("user_id", sa.Text, nullable=True),
    sa.Column("session_id", sa.Text, nullable=True),
    sa.Column("item_id", sa.Text, nullable=True),
    sa.Column("item_count", sa.BigInteger, nullable=True),
    sa.Column("duration_seconds", sa.BigInteger, nullable=True),
    sa.Column("quality", sa.BigInteger, nullable=True),
    sa.Column("new_interval", sa.Float(precision=53), nullable=True),
    sa.Column("easiness_factor", sa.Float(precision=53), nullable=True),
    # The unique (stream, version) index is also the per-stream read index.
    sa.UniqueConstraint("stream_id", "stream_version", name="uq_event_store_stream_version"),
    sa.Index("ix_event_store_event_id", "event_id", unique=True),
    sa.Index("ix_event_store_type_created", "event_type", "created_at"),
)

snapshots = sa.Table(
    "snapshots",
    metadata,
    sa.Column("stream_id", sa.String(256), primary_key=True),
    sa.Column("version", sa.BigInteger, primary_key=True),
    sa.Column("state", sa.LargeBinary, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

projection_checkpoints = sa.Table(
    "projection_checkpoints",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("events_folded", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("ignored", sa.BigInteger, nullable=False, server_default="0"),
    # The FoldOptions the read models were computed with; a change needs a rebuild.
    sa.Column("options", sa.Text, nullable=False, server_default="{}"),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

projection_rejections = sa.Table(
    "projection_rejections",
    metadata,
    sa.Column("projection", sa.String(128), primary_key=True),
    sa.Column("global_position", sa.BigInteger, primary_key=True),
    sa.Column("event_type", sa.String(256), nullable=False),
    sa.Column("reason", sa.String(64), nullable=False),
)

user_progress = sa.Table(
    "user_progress",
    metadata,
    sa.Column("user_id", sa.String(256), primary_key=True),
    sa.Column("total_items_learned", sa.BigInteger, nullable=False),
    sa.Column("total_sessions_completed", sa.BigInteger, nullable=False),
    sa.Column("total_study_time_minutes", sa.BigInteger, nullable=False),
    sa.Column("current_streak", sa.BigInteger, nullable=False),
    sa.Column("accuracy_rate", sa.Float(precision=53), nullable=True),
    sa.Column("unlearned", sa.BigInteger, nullable=False),
    sa.Column("learning", sa.BigInteger, nullable=False),
    sa.Column("short_term_mastered", sa.BigInteger, nullable=False),
    sa.Column("long_term_mastered", sa.BigInteger, nullable=False),
    sa.Column("last_updated", UTCDateTime, nullable=True),
)

daily_stats = sa.Table(
    "daily_stats",
    metadata,
    sa.Column("user_id", sa.String(256), primary_key=True),
    sa.Column("date", sa.Date, primary_key=True),
    sa.Column("sessions_completed", sa.BigInteger, nullable=False),
    sa.Column("items_learned", sa.BigInteger, nullable=False),
    sa.Column("items_reviewed", sa.BigInteger, nullable=False),
    sa.Column("study_time_minutes", sa.BigInteger, nullable=False),
    sa.Column("accuracy_rate", sa.Float(precision=53), nullable=True),
    sa.Column("new_mastery_count", sa.BigInteger, nullable=False),
)

schema_info = sa.Table(
    "progress_lab_schema",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)

# version -> DDL statements that migrate a database from version-1 to version.
_MIGRATIONS: dict[int, list[str]] = {}


def ensure_schema(engine: sa.Engine) -> int:
    """Create the tables of an empty database, or migrate an older one; return the version.

    Raises
    ------
    ConsistencyError
        When the database was written by a newer progress_lab than this one.
    """
    from .errors import ConsistencyError

    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # Two processes creating the schema at once must not both issue CREATE TABLE.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(7406101)"))
        metadata.create_all(conn, checkfirst=True)
        found = conn.execute(sa.select(schema_info.c.version)).scalar()
        if found is None:
            conn.execute(schema_info.insert().values(id=1, version=SCHEMA_VERSION))
            return SCHEMA_VERSION
        if found > SCHEMA_VERSION:
            raise ConsistencyError(
                f"the database has schema version {found}; this progress_lab knows "
                f"up to {SCHEMA_VERSION}: upgrade progress_lab"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS.get(version, []):
                conn.execute(sa.text(statement))
        if found < SCHEMA_VERSION:
            conn.execute(schema_info.update().values(version=SCHEMA_VERSION))
        return SCHEMA_VERSION
