"""The append-only event store over SQLite or PostgreSQL, through SQLAlchemy Core."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import orjson
import pydantic_core
import sqlalchemy as sa
import uuid_utils
from sqlalchemy import event as sa_event
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from . import _schema
from ._schema import event_store as _events
from ._schema import snapshots as _snapshots
from .errors import (
    ConcurrencyError,
    EventStoreError,
    EventValidationError,
    MissingExtraError,
    SerializationError,
    StoreUnavailableError,
)
from .events import (
    _FOLD_ROWS,
    _SURROGATE,
    FOLD_FIELDS,
    EventMetadata,
    NewEvent,
    PersistedEvent,
    Snapshot,
    _check_name,
    _no_fold,
    encode_new_event,
    format_timestamp,
)

if TYPE_CHECKING:
    import polars as pl

    from ._pg_copy import ChunkCopy

__all__ = ["EventStore", "SnapshotPolicy", "NewRecord", "connect", "DEFAULT_URL"]

DEFAULT_URL = "sqlite:///progress.db"
# Every append on PostgreSQL holds this transaction-level advisory lock until commit,
# so positions are taken in commit order and a tailing reader can never see position p
# before an event below p commits (a plain BIGSERIAL gives no such guarantee).
_APPEND_LOCK_KEY = 7406102
_COLUMNS = (
    "global_position",
    "event_id",
    "stream_id",
    "stream_version",
    "event_type",
    "event_data",
    "metadata",
    "created_at",
    "typed",
    "occurred_at_us",
    "metadata_user_id",
    "correlation_id",
    "causation_id",
    *FOLD_FIELDS,
)
# The binary COPY type of each column (varchar and text share one wire format).
_PG_TYPES = (
    "int8",
    "text",
    "text",
    "int8",
    "text",
    "text",
    "text",
    "timestamptz",
    "int2",
    "int8",
    "text",
    "text",
    "text",
    *("text", "text", "text", "int8", "int8", "int8", "float8", "float8"),  # FOLD_FIELDS
)
_CHUNK = 10_000
_TEXT_ARRAY = sa.ARRAY(sa.Text)
_COPY_SLICE = 500  # rows made and handed to COPY at a time (PostgreSQL)
_FEED_EVERY = 50  # records read between two feeds of the open COPY (PostgreSQL)
_SQLITE_ROWS_PER_INSERT = 40  # 840 parameters: within SQLite's oldest limit of 999
_SQLITE_ROW = f"({', '.join('?' for _ in _COLUMNS)})"
_SQLITE_INSERT_ONE = f"INSERT INTO event_store ({', '.join(_COLUMNS)}) VALUES {_SQLITE_ROW}"
_SQLITE_INSERT_MANY = f"INSERT INTO event_store ({', '.join(_COLUMNS)}) VALUES {', '.join([_SQLITE_ROW] * _SQLITE_ROWS_PER_INSERT)}"
NOTIFY_CHANNEL = "progress_lab_events"
# How a bulk load into an empty log treats the secondary indexes, by dialect: "keep" them
# up to date, "defer" them (drop, and build after loading), or "auto": defer when the
# event ids come in no particular order. See EventStore._defer_indexes; bench/ingest.py
# measures each way, with time-ordered ids and (--random-ids) without.
BULK_INDEXES: dict[str, Literal["keep", "defer", "auto"]] = {"sqlite": "auto", "postgresql": "keep"}
# What a bulk load into an empty log builds after loading (see EventStore._defer_indexes).
# On SQLite the (stream, version) key is part of the table and stays.
_DEFERRED_INDEXES = tuple(sorted(_events.indexes, key=lambda index: str(index.name)))
_STREAM_VERSION_KEY = next(
    c for c in _events.constraints if isinstance(c, sa.UniqueConstraint) and c.name == "uq_event_store_stream_version"
)


@dataclass(frozen=True)
class SnapshotPolicy:
    """When to snapshot and how many snapshots to keep per stream."""

    every: int = 100
    keep: int = 3

    def __post_init__(self) -> None:
        if self.every < 1 or self.keep < 1:
            raise ValueError("SnapshotPolicy needs every >= 1 and keep >= 1")

    def is_due(self, last_version: int, version: int) -> bool:
        """True when ``version`` is at least ``every`` events past ``last_version``."""
        return version - last_version >= self.every


class NewRecord(NamedTuple):
    """One validated event on its way into the store (see :meth:`EventStore.append_records`)."""

    stream_id: str
    event_type: str
    event_data: dict[str, Any]
    metadata: EventMetadata
    event_id: str | None = None
    created_at: datetime | None = None


def connect(
    url: str = DEFAULT_URL,
    *,
    snapshot_policy: SnapshotPolicy | None = None,
    clock: Callable[[], datetime] | None = None,
    **engine_options: Any,
) -> EventStore:
    """Open (and if needed create) the event store at a SQLAlchemy URL.

    Parameters
    ----------
    url
        ``sqlite:///path/to/file.db`` (the embedded default) or a PostgreSQL URL such as
        ``postgresql://user@host/db`` (the psycopg driver, extra ``postgres``).
    snapshot_policy
        Snapshot frequency and retention; defaults to every 100 events, keep 3.
    clock
        The store's clock for ``created_at``; defaults to the wall clock in UTC.

    Examples
    --------
    >>> store = connect("sqlite:///:memory:")
    >>> store.head_position()
    0
    """
    sa_url = sa.make_url(url)
    if sa_url.get_backend_name() == "postgresql":
        if sa_url.drivername == "postgresql":
            sa_url = sa_url.set(drivername="postgresql+psycopg")
        try:
            engine = sa.create_engine(sa_url, pool_pre_ping=True, **engine_options)
        except ModuleNotFoundError as exc:
            raise MissingExtraError(exc.name or "psycopg", "postgres") from None
    elif sa_url.get_backend_name() == "sqlite":
        engine = _sqlite_engine(sa_url, **engine_options)
    else:
        raise EventStoreError(
            f"unsupported database {sa_url.get_backend_name()!r}: use sqlite or postgresql"
        )
    try:
        _schema.ensure_schema(engine)
    except OperationalError as exc:
        raise StoreUnavailableError(
            f"cannot open {sa_url.render_as_string(hide_password=True)}: {_reason(exc)}"
        ) from None
    return EventStore(engine, snapshot_policy=snapshot_policy, clock=clock)


SQLITE_PAGE_SIZE = 16384


def _sqlite_engine(url: sa.URL, **engine_options: Any) -> sa.Engine:
    connect_args = {"timeout": 30.0, **engine_options.pop("connect_args", {})}
    engine = sa.create_engine(url, connect_args=connect_args, **engine_options)

    @sa_event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN, so writers can take BEGIN IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # 16 KiB pages instead of SQLite's 4 KiB: an event row is about 600 bytes, and
        # bench/page_size.py measures imports and replays with both. SQLite only applies
        # it to a file that is still empty; older files keep their page size.
        cursor.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @sa_event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _reason(exc: SQLAlchemyError) -> str:
    return str(getattr(exc, "orig", exc)).strip().splitlines()[0]


def _utcnow() -> datetime:
    return datetime.now(UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _rows(
    records: Sequence[NewRecord], versions: dict[str, int], position: int, now: datetime, *, sqlite: bool
) -> list[tuple[Any, ...]]:
    """The event_store rows (in :data:`_COLUMNS` order) of records that follow ``position``.

    ``versions`` holds the current version of every stream of the records and is
    advanced. ``created_at`` is SQLite's text or, for PostgreSQL, an aware UTC datetime.

    The loop runs once per appended event, so it is written for speed: one pass, no
    intermediate objects, the fold columns from one function per event type, and the
    times formatted by orjson (several times faster than ``isoformat``). orjson leaves
    out a zero fraction of a second and has no year below 1000 in the store's format,
    so such times take the slow path; its string escaping is pydantic_core's.
    """
    to_json = pydantic_core.to_json
    fast_json = orjson.dumps
    utc_z = orjson.OPT_UTC_Z
    fold = _FOLD_ROWS
    no_fold = _no_fold
    utc = UTC
    epoch = _EPOCH
    microsecond = _MICROSECOND
    timestamp_text = format_timestamp
    new_id = uuid_utils.uuid7
    rows: list[tuple[Any, ...]] = []
    append = rows.append
    for stream_id, event_type, data, meta, event_id, created_at in records:
        position += 1
        version = versions[stream_id] + 1
        versions[stream_id] = version
        timestamp = meta.timestamp
        user_id = meta.user_id
        correlation_id = meta.correlation_id
        causation_id = meta.causation_id
        try:
            data_text = to_json(data).decode()
            if timestamp.microsecond and timestamp.tzinfo is utc and type(timestamp) is datetime and timestamp.year >= 1000:
                meta_text = fast_json(
                    {
                        "user_id": user_id,
                        "timestamp": timestamp,  # 2026-01-05T08:00:00.123456Z, as format_timestamp writes it
                        "correlation_id": correlation_id,
                        "causation_id": causation_id,
                    },
                    option=utc_z,
                ).decode()
            else:
                meta_text = to_json(
                    {
                        "user_id": user_id,
                        "timestamp": timestamp_text(timestamp),
                        "correlation_id": correlation_id,
                        "causation_id": causation_id,
                    }
                ).decode()
        except (TypeError, ValueError, pydantic_core.PydanticSerializationError) as exc:
            raise SerializationError(f"cannot encode as JSON: {exc}") from None
        created = created_at or now
        if created.tzinfo is not utc:
            created = created.astimezone(utc)
        stored: datetime | str = created
        if sqlite:  # fixed-width UTC text, which sorts as the times do (_schema.sqlite_timestamp)
            if created.microsecond and type(created) is datetime and created.year >= 1000:
                stored = fast_json(created)[1:27].decode().replace("T", " ")
            else:
                stored = _schema.sqlite_timestamp(created)
        append(
            (
                position,
                event_id or str(new_id()),
                stream_id,
                version,
                event_type,
                data_text,
                meta_text,
                stored,
                1,
                (timestamp - epoch) // microsecond,
                user_id,
                correlation_id,
                causation_id,
                *fold.get(event_type, no_fold)(data),
            )
        )
    return rows


class EventStore:
    """An append-only log of events, ordered per stream and globally.

    Use :func:`connect` to open one. All operations are safe to call from several
    processes at once; appends are serialised so that ``global_position`` follows
    commit order.
    """

    def __init__(
        self,
        engine: sa.Engine,
        *,
        snapshot_policy: SnapshotPolicy | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.engine = engine
        self.snapshot_policy = snapshot_policy or SnapshotPolicy()
        self.clock = clock or _utcnow
        self.dialect = engine.dialect.name
        # Arrow readers, opened on first use (frames.py): ADBC for PostgreSQL in-process,
        # reader processes for SQLite files.
        self._adbc: Any = None
        self._sqlite_readers: Any = None
        # An in-memory SQLite database lives in one connection, and SQLAlchemy gives each
        # thread a connection of its own (SingletonThreadPool): another thread would see an
        # empty database. Such a store is used from the calling thread only.
        self._thread_bound = isinstance(engine.pool, sa.pool.SingletonThreadPool)
        self._write_engine = (
            engine.execution_options(sqlite_begin="IMMEDIATE") if self.dialect == "sqlite" else engine
        )

    @property
    def url(self) -> str:
        """The database URL with any password masked."""
        return self.engine.url.render_as_string(hide_password=True)

    def __repr__(self) -> str:
        return f"EventStore({self.url!r})"

    def close(self) -> None:
        """Release the store's database connections."""
        adbc = getattr(self, "_adbc", None)
        if adbc is not None:
            adbc.close()
            self._adbc = None
        readers = getattr(self, "_sqlite_readers", None)
        if readers is not None:
            readers.close()
            self._sqlite_readers = None
        self.engine.dispose()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------

    @contextmanager
    def transaction(self, *, lock_appends: bool = True) -> Iterator[sa.Connection]:
        """A write transaction; with ``lock_appends`` it holds the append lock until commit.

        Everything written through the connection commits together or not at all
        (read models and their checkpoint, say). A database that cannot be reached or
        stays locked raises :class:`StoreUnavailableError`.
        """
        try:
            with self._write_engine.begin() as conn:
                if lock_appends and self.dialect == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _APPEND_LOCK_KEY})
                yield conn
        except OperationalError as exc:
            raise StoreUnavailableError(f"{self.url}: {_reason(exc)}") from None
        except sa.exc.DBAPIError as exc:
            if exc.connection_invalidated:
                raise StoreUnavailableError(f"{self.url}: {_reason(exc)}") from None
            raise

    def append_events(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: int | None = None,
    ) -> list[PersistedEvent]:
        """Append events to one stream, atomically: all of them or none.

        Parameters
        ----------
        stream_id
            The stream to append to.
        events
            Domain events (``SessionStarted(...)``), JSON objects with a ``type``
            (unknown types are stored as they come), or ``(event, metadata)`` pairs.
        expected_version
            ``None`` skips the check; ``N`` requires the stream to be at version ``N``
            when the append commits (``0``: the stream must not exist yet).

        Raises
        ------
        ConcurrencyError
            When the stream is not at ``expected_version``.
        EventValidationError
            When an event or its metadata is invalid; ``index`` names the event.
        """
        _check_name(stream_id, "stream_id")
        if expected_version is not None and (
            isinstance(expected_version, bool) or not isinstance(expected_version, int) or expected_version < 0
        ):
            raise EventValidationError("expected_version must be None or an integer >= 0")
        records = []
        for index, item in enumerate(events):
            try:
                event_type, data, meta = encode_new_event(item)
            except EventValidationError as exc:
                raise EventValidationError(
                    f"event {index}: {exc}", errors=exc.errors, index=index
                ) from None
            records.append(NewRecord(stream_id, event_type, data, meta))
        with self.transaction() as conn:
            actual = self._stream_versions(conn, [stream_id]).get(stream_id, 0)
            if expected_version is not None and expected_version != actual:
                raise ConcurrencyError(stream_id, expected_version, actual)
            return self._write(conn, records, {stream_id: actual}, collect=True)

    def append_records(
        self,
        records: Iterable[NewRecord],
        *,
        on_progress: Callable[[int], None] | None = None,
    ) -> int:
        """Append validated records to many streams in one transaction, in order.

        The records are streamed in chunks (bounded memory); if the iterable raises,
        nothing is written. Returns the number of events appended.
        """
        total = 0
        with self.transaction() as conn:
            versions: dict[str, int] = {}
            # PostgreSQL: the COPY of the last chunk, still open and fed to the server
            # while the next chunk is read (so the server works while the records validate).
            pending: ChunkCopy | None = None
            # A large import into an empty log: its streams are new, and the secondary indexes
            # may be built at the end (BULK_INDEXES).
            bulk: bool | None = None
            deferred = False
            try:
                chunk: list[NewRecord] = []
                for record in records:
                    chunk.append(record)
                    if len(chunk) >= _CHUNK:
                        if bulk is None:
                            bulk = self._head(conn) == 0
                            deferred = bulk and self._defer_indexes(conn, chunk)
                        pending = self._write_chunk(conn, chunk, versions, pending, new_log=bulk)
                        total += len(chunk)
                        if on_progress:
                            on_progress(len(chunk))
                        chunk = []
                    elif pending is not None and not len(chunk) % _FEED_EVERY:
                        pending.feed()
                if chunk:
                    pending = self._write_chunk(conn, chunk, versions, pending, new_log=bool(bulk))
                    total += len(chunk)
                    if on_progress:
                        on_progress(len(chunk))
                if pending is not None:
                    self._finish_copy(conn, pending)
                    head = pending.head
                    pending = None
                    self._notify(conn, head)
                if deferred:
                    self._build_deferred_indexes(conn)
                if bulk and self.dialect == "postgresql":
                    # The planner's statistics still describe the empty table until autovacuum
                    # comes by: it then took a whole-log read for 1,000 rows and sorted 200,000
                    # on disk, at half the speed of the index scan it picks once it knows.
                    conn.exec_driver_sql("ANALYZE event_store")
            except BaseException as exc:
                if pending is not None:
                    pending.abort(exc)
                raise
        return total

    def _write_chunk(
        self,
        conn: sa.Connection,
        chunk: list[NewRecord],
        versions: dict[str, int],
        pending: ChunkCopy | None,
        *,
        new_log: bool,
    ) -> ChunkCopy | None:
        if pending is not None:
            self._finish_copy(conn, pending)
        unknown = list({r.stream_id for r in chunk if r.stream_id not in versions})
        # A bulk load started on an empty log: a stream not met yet is new.
        found = {} if new_log else self._stream_versions(conn, unknown)
        for stream_id in unknown:
            versions[stream_id] = found.get(stream_id, 0)
        if self.dialect != "postgresql":
            self._write(conn, chunk, versions, collect=False)
            return None
        # The head is the last chunk's (the append lock keeps other writers out).
        position = self._head(conn) if pending is None else pending.head
        now = self.clock()
        # Made and sent a slice at a time, so the server starts on them at once.
        slices = (
            _rows(chunk[start : start + _COPY_SLICE], versions, position + start, now, sqlite=False)
            for start in range(0, len(chunk), _COPY_SLICE)
        )
        return self._copy(conn, chunk, position + len(chunk), slices)

    def _write(
        self,
        conn: sa.Connection,
        records: Sequence[NewRecord],
        versions: dict[str, int],
        *,
        collect: bool,
    ) -> list[PersistedEvent]:
        if not records:
            return []
        position = self._head(conn)
        now = self.clock()
        rows = _rows(records, versions, position, now, sqlite=self.dialect == "sqlite")
        if self.dialect == "postgresql":
            self._finish_copy(conn, self._copy(conn, records, rows[-1][0], [rows]))
            # Delivered at commit: followers wake up instead of polling.
            self._notify(conn, rows[-1][0])
        else:
            try:
                self._insert_sqlite(conn, rows)
            except IntegrityError as exc:
                raise self._integrity_error(conn, exc, records) from None
        if not collect:
            return []
        return [
            PersistedEvent.model_construct(
                event_id=row[1],
                stream_id=row[2],
                stream_version=row[3],
                global_position=row[0],
                event_type=row[4],
                event_data=record.event_data,
                metadata=record.metadata,
                created_at=(record.created_at or now).astimezone(UTC),
            )
            for row, record in zip(rows, records)
        ]

    def _copy(
        self, conn: sa.Connection, records: Sequence[NewRecord], head: int, slices: Iterable[list[tuple[Any, ...]]]
    ) -> ChunkCopy:
        """An open COPY of the records' rows (given in slices), to be finished with _finish_copy."""
        # COPY is PostgreSQL's bulk path: one round trip per buffer, not per row. The
        # binary format spares the server the parsing of numbers and times, and the client
        # the formatting of them (psycopg's C dumpers).
        from ._pg_copy import ChunkCopy

        copy = ChunkCopy(conn.connection.driver_connection, _COLUMNS, _PG_TYPES, records, head=head)  # type: ignore[arg-type]
        try:
            for rows in slices:
                copy.write_rows(rows)
        except BaseException as exc:
            copy.abort(exc)
            if isinstance(exc, IntegrityError):
                raise self._integrity_error(conn, exc, records) from None
            raise
        return copy

    def _finish_copy(self, conn: sa.Connection, copy: ChunkCopy) -> None:
        try:
            copy.finish()
        except IntegrityError as exc:
            raise self._integrity_error(conn, exc, copy.records) from None

    def _notify(self, conn: sa.Connection, head: int) -> None:
        conn.execute(sa.text("SELECT pg_notify(:channel, :head)"), {"channel": NOTIFY_CHANNEL, "head": str(head)})

    def _insert_sqlite(self, conn: sa.Connection, rows: list[tuple[Any, ...]]) -> None:
        # Several rows per INSERT: the statement is stepped once per group, not per row.
        # The parameters are the same, but each row costs the sqlite3 module and SQLite less.
        full = len(rows) - len(rows) % _SQLITE_ROWS_PER_INSERT
        if full:
            chain = itertools.chain.from_iterable
            conn.exec_driver_sql(
                _SQLITE_INSERT_MANY,
                [tuple(chain(rows[i : i + _SQLITE_ROWS_PER_INSERT])) for i in range(0, full, _SQLITE_ROWS_PER_INSERT)],
            )
        if full < len(rows):
            conn.exec_driver_sql(_SQLITE_INSERT_ONE, rows[full:])

    def _defer_indexes(self, conn: sa.Connection, chunk: Sequence[NewRecord]) -> bool:
        """Drop the log's secondary indexes for a bulk load into an empty log, as
        :data:`BULK_INDEXES` says for the dialect and the first ``chunk``; whether they were.

        Built once at the end (:meth:`_build_deferred_indexes`), each index is one sort
        instead of one insertion per row. That pays when the event ids come in no
        particular order (UUIDv4, say), so that each lands at a random place in its index.
        Time-ordered ids (UUIDv7, which the store gives an event without an id) land at
        the end of it, where the pages are at hand, and building the index at the end
        gains nothing measurable; "auto" keeps the indexes for them. On PostgreSQL
        the server keeps the indexes up to date on another core while the client formats
        rows, and building them at the end leaves the client waiting, so it keeps them.

        It happens inside the import's transaction, under the append lock: on failure the
        indexes are back as they were. On PostgreSQL dropping an index needs the table to
        itself, so a reader holding it (for a second) means the import keeps the indexes.
        """
        mode = BULK_INDEXES.get(self.dialect, "keep")
        if mode == "keep" or (mode == "auto" and _ids_in_order(chunk)):
            return False
        try:
            with conn.begin_nested():
                if self.dialect == "postgresql":
                    conn.exec_driver_sql("SET LOCAL lock_timeout = '1s'")
                    conn.exec_driver_sql(f"ALTER TABLE event_store DROP CONSTRAINT {_STREAM_VERSION_KEY.name}")
                    conn.exec_driver_sql("SET LOCAL lock_timeout = DEFAULT")
                for index in _DEFERRED_INDEXES:
                    conn.exec_driver_sql(f"DROP INDEX {index.name}")
        except (OperationalError, sa.exc.DBAPIError):
            return False
        return True

    def _build_deferred_indexes(self, conn: sa.Connection) -> None:
        """Build what :meth:`_defer_indexes` dropped; a duplicate event id fails the import."""
        try:
            with conn.begin_nested():
                for index in _DEFERRED_INDEXES:
                    index.create(conn)
                if self.dialect == "postgresql":
                    columns = ", ".join(c.name for c in _STREAM_VERSION_KEY.columns)
                    conn.exec_driver_sql(
                        f"ALTER TABLE event_store ADD CONSTRAINT {_STREAM_VERSION_KEY.name} UNIQUE ({columns})"
                    )
        except IntegrityError as exc:
            duplicate = conn.execute(
                sa.select(_events.c.event_id).group_by(_events.c.event_id).having(sa.func.count() > 1).limit(1)
            ).scalar()
            raise EventStoreError(
                f"event id {duplicate!r} appears more than once in the import: {_reason(exc)}"
            ) from None

    def _integrity_error(
        self, conn: sa.Connection, exc: IntegrityError, records: Sequence[NewRecord]
    ) -> EventStoreError:
        text = _reason(exc)
        if "event_id" in text:
            return EventStoreError(f"an event id is already in the store, or twice in this append: {text}")
        stream_id = records[0].stream_id
        return EventStoreError(f"conflicting write to stream {stream_id!r}: {text}")

    # -- reading -----------------------------------------------------------------

    def head_position(self) -> int:
        """The highest global position in the log (0 when empty)."""
        with self.engine.connect() as conn:
            return self._head(conn)

    def stream_version(self, stream_id: str) -> int:
        """The version of a stream: its number of events (0 when it does not exist)."""
        with self.engine.connect() as conn:
            return self._stream_versions(conn, [stream_id]).get(stream_id, 0)

    def count_events(self, from_position: int = 1, to_position: int | None = None) -> int:
        """How many events lie between two global positions (inclusive)."""
        query = sa.select(sa.func.count()).select_from(_events).where(_events.c.global_position >= from_position)
        if to_position is not None:
            query = query.where(_events.c.global_position <= to_position)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def read_events(
        self, stream_id: str, from_version: int = 1, to_version: int | None = None
    ) -> list[PersistedEvent]:
        """The events of one stream from ``from_version`` to ``to_version`` (inclusive), ascending."""
        query = (
            sa.select(_events)
            .where(_events.c.stream_id == stream_id, _events.c.stream_version >= from_version)
            .order_by(_events.c.stream_version)
        )
        if to_version is not None:
            query = query.where(_events.c.stream_version <= to_version)
        return self._fetch(query)

    def read_all_events(self, from_position: int = 1, limit: int | None = None) -> list[PersistedEvent]:
        """Events of all streams from ``from_position`` (inclusive) in global order, at most ``limit``.

        A reader that tails the log with this method never skips an event that commits later.
        """
        query = (
            sa.select(_events)
            .where(_events.c.global_position >= from_position)
            .order_by(_events.c.global_position)
        )
        if limit is not None:
            query = query.limit(limit)
        return self._fetch(query)

    def read_events_by_type(
        self,
        event_type: str,
        from_timestamp: datetime | None = None,
        to_timestamp: datetime | None = None,
        limit: int | None = None,
    ) -> list[PersistedEvent]:
        """Events of one type by ``created_at``: ``from`` inclusive, ``to`` exclusive, in global order."""
        query = sa.select(_events).where(_events.c.event_type == event_type)
        if from_timestamp is not None:
            query = query.where(_events.c.created_at >= from_timestamp)
        if to_timestamp is not None:
            query = query.where(_events.c.created_at < to_timestamp)
        query = query.order_by(_events.c.global_position)
        if limit is not None:
            query = query.limit(limit)
        return self._fetch(query)

    def iter_events(self, from_position: int = 1, batch_size: int = 10_000) -> Iterator[PersistedEvent]:
        """Every event from ``from_position`` on, fetched in batches of ``batch_size``."""
        position = from_position
        while True:
            batch = self.read_all_events(position, batch_size)
            yield from batch
            if len(batch) < batch_size:
                return
            position = batch[-1].global_position + 1

    def events_frame(
        self,
        from_position: int = 1,
        to_position: int | None = None,
        *,
        raw: bool = False,
    ) -> pl.DataFrame:
        """The log between two positions (inclusive) as a polars DataFrame, one row per event.

        Payload and metadata fields are typed columns (see :mod:`progress_lab.frames`);
        the rows travel as Arrow columns, never as Python objects. ``raw=True`` also
        keeps the JSON text of ``event_data`` and ``metadata``.
        """
        from .frames import read_events_frame

        return read_events_frame(self, from_position, to_position, raw=raw)

    def _fetch(self, query: sa.Select[Any]) -> list[PersistedEvent]:
        with self.engine.connect() as conn:
            try:
                rows = conn.execute(query).all()
            except OperationalError as exc:
                # SQLite stores whatever bytes another tool gives it, and the sqlite3 module
                # refuses to read text that is not UTF-8 without saying where it is.
                if self.dialect != "sqlite" or "decode to UTF-8" not in str(exc):
                    raise
                conn.rollback()
                rows = _rows_not_utf8_named(conn, query)
        return [_to_persisted(row) for row in rows]

    def _head(self, conn: sa.Connection) -> int:
        return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(_events.c.global_position), 0))).scalar_one())

    def _stream_versions(self, conn: sa.Connection, stream_ids: Sequence[str]) -> dict[str, int]:
        """The current version of each stream that has events.

        One query with the ids as one parameter (a PostgreSQL array, a JSON array that
        SQLite's ``json_each`` unpacks), and for each id the highest version by itself:
        the (stream, version) index finds it in one step, where ``max(...) GROUP BY`` over
        all the streams read every version of every stream, a cost that grew with the log.
        """
        if not stream_ids:
            return {}
        ids: sa.FromClause
        if self.dialect == "postgresql":
            unnest = sa.func.unnest(sa.bindparam("ids", list(stream_ids), type_=_TEXT_ARRAY))
            ids = unnest.table_valued("id").render_derived(name="ids")
        else:
            each = sa.func.json_each(sa.bindparam("ids", json.dumps(list(stream_ids)))).table_valued(
                sa.column("value", sa.Text)
            )
            ids = sa.select(each.c.value.label("id")).subquery("ids")
        latest = sa.select(sa.func.max(_events.c.stream_version)).where(_events.c.stream_id == ids.c.id)
        query = sa.select(ids.c.id, latest.scalar_subquery())
        return {sid: int(version) for sid, version in conn.execute(query) if version is not None}

    # -- snapshots -----------------------------------------------------------------

    def save_snapshot(self, snapshot: Snapshot, policy: SnapshotPolicy | None = None) -> None:
        """Store a snapshot, keeping at most ``policy.keep`` per stream (the oldest go)."""
        keep = (policy or self.snapshot_policy).keep
        created_at = snapshot.created_at or self.clock()
        with self.transaction() as conn:
            conn.execute(
                _snapshots.delete().where(
                    _snapshots.c.stream_id == snapshot.stream_id, _snapshots.c.version == snapshot.version
                )
            )
            conn.execute(
                _snapshots.insert().values(
                    stream_id=snapshot.stream_id,
                    version=snapshot.version,
                    state=snapshot.state,
                    created_at=created_at,
                )
            )
            stale = (
                sa.select(_snapshots.c.version)
                .where(_snapshots.c.stream_id == snapshot.stream_id)
                .order_by(_snapshots.c.version.desc())
                .offset(keep)
            )
            old = [v for (v,) in conn.execute(stale)]
            if old:
                conn.execute(
                    _snapshots.delete().where(
                        _snapshots.c.stream_id == snapshot.stream_id, _snapshots.c.version.in_(old)
                    )
                )

    def get_latest_snapshot(self, stream_id: str, max_version: int | None = None) -> Snapshot | None:
        """The snapshot with the highest version (at most ``max_version``), or ``None``."""
        query = sa.select(_snapshots).where(_snapshots.c.stream_id == stream_id)
        if max_version is not None:
            query = query.where(_snapshots.c.version <= max_version)
        query = query.order_by(_snapshots.c.version.desc()).limit(1)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return Snapshot(stream_id=row.stream_id, version=row.version, state=bytes(row.state), created_at=row.created_at)

    def list_snapshots(self, stream_id: str) -> list[Snapshot]:
        """All kept snapshots of a stream, oldest first."""
        query = sa.select(_snapshots).where(_snapshots.c.stream_id == stream_id).order_by(_snapshots.c.version)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            Snapshot(stream_id=r.stream_id, version=r.version, state=bytes(r.state), created_at=r.created_at)
            for r in rows
        ]


def _ids_in_order(records: Sequence[NewRecord]) -> bool:
    """Whether the records' event ids mostly ascend: at least 3 in 4 neighbouring pairs.

    An id left to the store counts as in order (a UUIDv7). Time-ordered ids from
    elsewhere ascend in about 9 pairs in 10 (events that arrive late step back); random
    ids in half of them.
    """
    ids = [record.event_id for record in records if record.event_id is not None]
    if len(ids) < 2:
        return True
    ascending = sum(1 for a, b in zip(ids, itertools.islice(ids, 1, None)) if a < b)
    return 4 * ascending >= 3 * (len(ids) - 1)


def _rows_not_utf8_named(conn: sa.Connection, query: sa.Select[Any]) -> Sequence[Any]:
    """The query's rows read again with the bytes that are not UTF-8 kept as lone surrogates
    (which valid UTF-8 never decodes to); raises SerializationError naming the first such row."""
    driver = conn.connection.driver_connection
    driver.text_factory = lambda value: value.decode("utf-8", "surrogateescape")  # type: ignore[union-attr]
    try:
        rows = conn.execute(query).all()
    finally:
        driver.text_factory = str  # type: ignore[union-attr]
        conn.rollback()
    for row in rows:
        for name, value in row._mapping.items():
            if isinstance(value, str) and _SURROGATE.search(value):
                raise SerializationError(f"event at position {row.global_position}: its {name} is not valid UTF-8 text")
    return rows


def _to_persisted(row: Any) -> PersistedEvent:
    try:
        data = json.loads(row.event_data)
        meta = json.loads(row.metadata)
    except ValueError as exc:
        raise SerializationError(f"event at position {row.global_position} is not valid JSON: {exc}") from None
    try:
        metadata = EventMetadata.model_validate(meta)
    except Exception:  # a foreign writer's metadata: keep what can be kept
        metadata = EventMetadata.model_construct(
            user_id=meta.get("user_id") if isinstance(meta, dict) else None,
            timestamp=None,
            correlation_id=None,
            causation_id=None,
        )
    return PersistedEvent.model_construct(
        event_id=row.event_id,
        stream_id=row.stream_id,
        stream_version=row.stream_version,
        global_position=row.global_position,
        event_type=row.event_type,
        event_data=data,
        metadata=metadata,
        created_at=row.created_at,
    )


def retrying(
    action: Callable[[], Any], *, attempts: int = 5, first_delay: float = 0.2, log: Callable[[str], None] | None = None
) -> Any:
    """Run ``action``, retrying with exponential backoff while the store is unavailable."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except StoreUnavailableError as exc:
            if attempt == attempts:
                raise
            if log:
                log(f"store unavailable ({exc}); retry {attempt}/{attempts - 1} in {delay:.1f}s")
            time.sleep(delay)
            delay *= 2
    return None  # unreachable

