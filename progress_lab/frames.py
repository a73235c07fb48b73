"""The event log as polars DataFrames: Arrow reads, fixed-schema JSON decoding, validation."""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa
import pyarrow.json as pajson
import sqlalchemy as sa

from .events import KNOWN_EVENT_TYPES

if TYPE_CHECKING:
    from .store import EventStore

__all__ = [
    "FRAME_SCHEMA",
    "PAYLOAD_FIELDS",
    "read_events_frame",
    "iter_events_frames",
    "decode_frame",
    "check_raw_event",
]

# The payload fields the statistics read, with their polars types. Other payload fields
# (e-mail, display name, deck, response time) stay in the JSON text: the e-mail address
# must never travel into a read model, and the fold does not need the rest.
PAYLOAD_FIELDS: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "session_id": pl.String(),
    "item_id": pl.String(),
    "item_count": pl.Int64(),
    "duration_seconds": pl.Int64(),
    "quality": pl.Int64(),
    "new_interval": pl.Float64(),
    "easiness_factor": pl.Float64(),
}
_META_FIELDS: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "timestamp": pl.String(),
    "correlation_id": pl.String(),
    "causation_id": pl.String(),
}
_UTC = pl.Datetime("us", "UTC")
FRAME_SCHEMA: dict[str, pl.DataType] = {
    "global_position": pl.Int64(),
    "event_id": pl.String(),
    "stream_id": pl.String(),
    "stream_version": pl.Int64(),
    "event_type": pl.String(),
    "created_at": _UTC,
    "timestamp": _UTC,
    "metadata_user_id": pl.String(),
    "correlation_id": pl.String(),
    "causation_id": pl.String(),
    **PAYLOAD_FIELDS,
    "malformed": pl.String(),
}

# Which fields each known event type must carry, and their ranges; mirrors events.py.
_REQUIRED: dict[str, tuple[str, ...]] = {
    "UserCreated": ("user_id",),
    "SessionStarted": ("session_id", "user_id", "item_count"),
    "CorrectAnswerGiven": ("session_id", "item_id"),
    "SessionCompleted": ("session_id", "duration_seconds"),
    "ReviewProcessed": ("user_id", "item_id", "quality", "new_interval", "easiness_factor"),
}
_INT_RANGE = {"item_count": (0, 1_000_000), "duration_seconds": (0, 1_000_000_000), "quality": (0, 5)}
_FLOAT_RANGE = {"new_interval": (0.0, 1_000_000.0), "easiness_factor": (0.0, 1000.0)}
_ID_FIELDS = ("user_id", "session_id", "item_id")
_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S%.6fZ"
_TIMESTAMP_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")


def check_raw_event(event_type: str, event_data: str | None, metadata: str | None) -> str | None:
    """Why a stored known event cannot be folded, or ``None`` when it can.

    This is the plain-Python statement of the rule the vectorized decoder applies: the
    payload is a JSON object whose ``type`` is ``event_type``, every field the
    statistics read is present with its JSON type and range, identifiers are non-empty
    strings of at most 256 characters without NUL, and the metadata is a JSON object
    with a canonical UTC ``timestamp`` and a string-or-null ``user_id``.
    """
    try:
        data = json.loads(event_data) if event_data is not None else None
        meta = json.loads(metadata) if metadata is not None else None
    except ValueError:
        return "invalid JSON"
    if not isinstance(data, dict) or not isinstance(meta, dict):
        return "not a JSON object"
    if data.get("type") != event_type:
        return "event_data.type differs from event_type"
    for name in _REQUIRED[event_type]:
        value = data.get(name)
        if name in _ID_FIELDS:
            if not _is_identifier(value):
                return f"event_data.{name}: missing or not an identifier"
        elif name in _INT_RANGE:
            low, high = _INT_RANGE[name]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                return f"event_data.{name}: missing, not an integer or out of range"
        else:
            low_f, high_f = _FLOAT_RANGE[name]
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or not (low_f < value if name == "easiness_factor" else low_f <= value) or value > high_f:
                return f"event_data.{name}: missing, not a finite number or out of range"
    user = meta.get("user_id")
    if user is not None and not _is_identifier(user):
        return "metadata.user_id: not an identifier"
    stamp = meta.get("timestamp")
    if not isinstance(stamp, str) or not _TIMESTAMP_RE.fullmatch(stamp):
        return "metadata.timestamp: missing or not canonical UTC"
    try:
        datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return "metadata.timestamp: not a valid time"
    return None


def _is_identifier(value: Any) -> bool:
    if not isinstance(value, str) or not 1 <= len(value) <= 256 or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from "\ud800"
        return False
    return True


def _ndjson(column: pa.ChunkedArray | pa.Array) -> pa.Buffer:
    # Rows arrive as Arrow strings that already end in "\n": their value buffer *is*
    # an NDJSON document, so no Python object is made per event.
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    array = array.cast(pa.large_string())
    offsets = array.buffers()[1]
    start, end = (
        int.from_bytes(offsets[(array.offset + i) * 8 : (array.offset + i + 1) * 8], "little", signed=True)
        for i in (0, len(array))
    )
    return array.buffers()[2][start:end]


def _arrow_schema(fields: dict[str, pl.DataType]) -> pa.Schema:
    kinds = {pl.String(): pa.string(), pl.Int64(): pa.int64(), pl.Float64(): pa.float64()}
    return pa.schema([(name, kinds[dtype]) for name, dtype in fields.items()])


_PAYLOAD_ARROW = _arrow_schema({"type": pl.String(), **PAYLOAD_FIELDS})
_META_ARROW = _arrow_schema(_META_FIELDS)


def _decode_json(lines: pa.ChunkedArray | pa.Array, schema: pa.Schema, n: int) -> pl.DataFrame | None:
    """Decode NDJSON with a fixed schema, or ``None`` when any row breaks it.

    pyarrow's reader is strict about JSON types (a number where a string is expected
    is an error, unlike polars, which would quietly make it text), so a batch that
    decodes here needs no further type check.
    """
    if n == 0:
        return pl.DataFrame(schema={f.name: pl.from_arrow(pa.array([], f.type)).dtype for f in schema})  # type: ignore[union-attr]
    options = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        table = pajson.read_json(pa.BufferReader(_ndjson(lines)), parse_options=options)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if table.num_rows != n:
        return None
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


def decode_frame(table: pa.Table, *, raw: bool = False) -> pl.DataFrame:
    """Turn the store's columns (Arrow) into the typed events frame.

    ``table`` has the columns of ``event_store`` plus ``data_line`` and ``meta_line``:
    the JSON texts with line breaks removed and one ``\\n`` appended (the SQL adds them).
    """
    n = table.num_rows
    if n == 0:
        # An empty result carries no column types (ADBC's SQLite driver reports int64 for all).
        empty = {**FRAME_SCHEMA, **({"event_data": pl.String(), "metadata": pl.String()} if raw else {})}
        return pl.DataFrame(schema=empty)
    base = pl.from_arrow(table.select(["global_position", "event_id", "stream_id", "stream_version", "event_type", "created_at"]))
    assert isinstance(base, pl.DataFrame)
    base = base.with_columns(
        pl.col("global_position").cast(pl.Int64),
        pl.col("stream_version").cast(pl.Int64),
        _as_utc(pl.col("created_at"), base.schema["created_at"]),
    )
    payload = _decode_json(table.column("data_line"), _PAYLOAD_ARROW, n)
    meta = _decode_json(table.column("meta_line"), _META_ARROW, n)
    python_reasons = pl.Series("python_reason", [None] * n, dtype=pl.String)
    if payload is None or meta is None:
        payload, meta, python_reasons = _decode_row_by_row(table)
    frame = pl.concat(
        [
            base,
            meta.select(
                pl.col("timestamp").alias("timestamp_text"),
                pl.col("user_id").alias("metadata_user_id"),
                "correlation_id",
                "causation_id",
            ),
            payload.rename({"type": "data_type"}),
            python_reasons.to_frame(),
        ],
        how="horizontal",
    )
    frame = _validate(frame).with_columns(pl.coalesce("python_reason", "malformed").alias("malformed")).drop("python_reason")
    columns = list(FRAME_SCHEMA)
    if raw:
        frame = frame.with_columns(
            pl.Series("event_data", table.column("event_data").to_pylist(), dtype=pl.String),
            pl.Series("metadata", table.column("metadata").to_pylist(), dtype=pl.String),
        )
        columns += ["event_data", "metadata"]
    return frame.select(columns)


def _as_utc(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    if dtype == pl.String:
        return expr.str.to_datetime("%Y-%m-%d %H:%M:%S%.f", time_unit="us", time_zone="UTC")
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is None:
        return expr.dt.cast_time_unit("us").dt.replace_time_zone("UTC")
    return expr.dt.cast_time_unit("us").dt.convert_time_zone("UTC")


def _identifier(value: pl.Expr) -> pl.Expr:
    return value.str.len_chars().is_between(1, 256) & ~value.str.contains("\x00", literal=True)


def _validate(frame: pl.DataFrame) -> pl.DataFrame:
    """Add ``malformed`` (why a known event cannot be folded) and the parsed ``timestamp``."""
    timestamp = (
        pl.when(pl.col("timestamp_text").str.len_bytes() == 27)
        .then(pl.col("timestamp_text").str.to_datetime(_TIMESTAMP_FORMAT, time_unit="us", time_zone="UTC", strict=False))
        .otherwise(None)
    )
    frame = frame.with_columns(timestamp.alias("timestamp"))
    reason: pl.Expr = pl.lit(None, dtype=pl.String)
    checks: list[tuple[pl.Expr, str]] = []
    for event_type, fields in _REQUIRED.items():
        is_type = pl.col("event_type") == event_type
        for name in fields:
            value = pl.col(name)
            if name in _ID_FIELDS:
                bad = value.is_null() | ~_identifier(value)
                text = f"event_data.{name}: missing or not an identifier"
            elif name in _INT_RANGE:
                low, high = _INT_RANGE[name]
                bad = value.is_null() | ~value.is_between(low, high)
                text = f"event_data.{name}: missing, not an integer or out of range"
            else:
                low_f, high_f = _FLOAT_RANGE[name]
                lower_ok = value > low_f if name == "easiness_factor" else value >= low_f
                bad = value.is_null() | ~value.is_finite() | ~lower_ok | (value > high_f)
                text = f"event_data.{name}: missing, not a finite number or out of range"
            checks.append((is_type & bad.fill_null(True), text))
    known = pl.col("event_type").is_in(KNOWN_EVENT_TYPES)
    checks = [
        (known & (pl.col("data_type") != pl.col("event_type")).fill_null(True), "event_data.type differs from event_type"),
        *checks,
        (
            known & pl.col("metadata_user_id").is_not_null() & ~_identifier(pl.col("metadata_user_id")),
            "metadata.user_id: not an identifier",
        ),
        (known & pl.col("timestamp").is_null(), "metadata.timestamp: missing or not canonical UTC"),
    ]
    for condition, text in reversed(checks):
        reason = pl.when(condition).then(pl.lit(text)).otherwise(reason)
    frame = frame.with_columns(reason.alias("malformed"))
    return frame


def _decode_row_by_row(table: pa.Table) -> tuple[pl.DataFrame, pl.DataFrame, pl.Series]:
    """The slow path for a batch with rows that are not JSON objects of the right types.

    Each row gets the strict Python check that the reference fold uses; the columns
    are built from the Python values, keeping a value only where its JSON type fits.
    """
    types = table.column("event_type").to_pylist()
    datas = table.column("event_data").to_pylist()
    metas = table.column("metadata").to_pylist()
    payloads: list[dict[str, Any]] = []
    meta_rows: list[dict[str, Any]] = []
    reasons: list[str | None] = []
    for event_type, data, meta in zip(types, datas, metas):
        reason = check_raw_event(event_type, data, meta) if event_type in KNOWN_EVENT_TYPES else None
        reasons.append(reason)
        payload = _loads_object(data) if reason is None else {}
        payloads.append({name: _typed(payload.get(name), dtype) for name, dtype in _PAYLOAD_WITH_TYPE.items()})
        meta_obj = _loads_object(meta)
        meta_rows.append({name: _typed(meta_obj.get(name), dtype) for name, dtype in _META_FIELDS.items()})
    return (
        pl.DataFrame(payloads, schema=_PAYLOAD_WITH_TYPE, orient="row"),
        pl.DataFrame(meta_rows, schema=_META_FIELDS, orient="row"),
        pl.Series("python_reason", reasons, dtype=pl.String),
    )


_PAYLOAD_WITH_TYPE: dict[str, pl.DataType] = {"type": pl.String(), **PAYLOAD_FIELDS}


def _loads_object(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text is not None else None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _typed(value: Any, dtype: pl.DataType) -> Any:
    """The value if its JSON type fits the column (as pyarrow would accept it), else None."""
    if dtype == pl.String():
        return value if isinstance(value, str) and _utf8(value) else None
    if dtype == pl.Int64():
        return value if isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63 else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) if math.isfinite(value) else None
    return None


def _utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _one_line(text: str) -> str:
    return text.replace("\n", " ").replace("\r", " ")


def _select_sql(store: EventStore) -> str:
    nl = "char(10)" if store.dialect == "sqlite" else "E'\\n'"
    cr = "char(13)" if store.dialect == "sqlite" else "E'\\r'"
    line = "replace(replace({col}, {nl}, ' '), {cr}, ' ') || {nl}"
    return (
        "SELECT global_position, event_id, stream_id, stream_version, event_type, created_at, "
        "event_data, metadata, "
        f"{line.format(col='event_data', nl=nl, cr=cr)} AS data_line, "
        f"{line.format(col='metadata', nl=nl, cr=cr)} AS meta_line "
        "FROM event_store WHERE global_position >= {p1} AND global_position <= {p2} "
        "ORDER BY global_position"
    )


def _read_arrow(store: EventStore, from_position: int, to_position: int) -> pa.Table:
    conn = _adbc_connection(store)
    if conn is not None:
        placeholder = ("?", "?") if store.dialect == "sqlite" else ("$1", "$2")
        sql = _select_sql(store).format(p1=placeholder[0], p2=placeholder[1])
        with conn.cursor() as cursor:
            cursor.execute(sql, (from_position, to_position))
            table: pa.Table = cursor.fetch_arrow_table()
        return table
    # No ADBC driver for this URL (an in-memory SQLite, say): the same query through SQLAlchemy.
    sql = _select_sql(store).format(p1=":p1", p2=":p2")
    with store.engine.connect() as sa_conn:
        result = sa_conn.execute(sa.text(sql), {"p1": from_position, "p2": to_position})
        rows = result.all()
        names = list(result.keys())
    columns = list(zip(*rows)) if rows else [[] for _ in names]
    created = [str(v) if v is not None else None for v in columns[names.index("created_at")]]
    arrays = {
        name: pa.array(list(col), type=pa.int64() if name in ("global_position", "stream_version") else pa.string())
        for name, col in zip(names, columns)
        if name != "created_at"
    }
    arrays["created_at"] = pa.array(created, type=pa.string())
    return pa.table(arrays)


def _adbc_connection(store: EventStore) -> Any:
    cached = getattr(store, "_adbc", None)
    if cached is not None:
        return cached
    url = store.engine.url
    conn: Any = None
    if store.dialect == "sqlite":
        database = url.database
        if not database or database == ":memory:" or database.startswith("file:"):
            return None
        import adbc_driver_sqlite.dbapi as adbc_sqlite

        conn = adbc_sqlite.connect(database, autocommit=True)
    elif store.dialect == "postgresql":
        try:
            import adbc_driver_postgresql.dbapi as adbc_pg
        except ImportError:
            return None
        uri = url.set(drivername="postgresql").render_as_string(hide_password=False)
        conn = adbc_pg.connect(uri, autocommit=True)
    if conn is not None:
        store._adbc = conn  # type: ignore[attr-defined]
    return conn


def read_events_frame(
    store: EventStore, from_position: int = 1, to_position: int | None = None, *, raw: bool = False
) -> pl.DataFrame:
    """The events between two positions (inclusive) as a typed frame; see :data:`FRAME_SCHEMA`."""
    upper = to_position if to_position is not None else 2**62
    return decode_frame(_read_arrow(store, from_position, upper), raw=raw)


def iter_events_frames(
    store: EventStore,
    from_position: int = 1,
    to_position: int | None = None,
    batch_size: int = 250_000,
) -> Iterator[pl.DataFrame]:
    """The log in frames of at most ``batch_size`` positions, so memory stays bounded."""
    head = store.head_position() if to_position is None else to_position
    start = from_position
    while start <= head:
        end = min(start + batch_size - 1, head)
        frame = read_events_frame(store, start, end)
        if frame.height:
            yield frame
        start = end + 1



def frame_from_raw(
    rows: list[tuple[int, str, str | None, str | None]],
    *,
    created_at: datetime | None = None,
) -> pl.DataFrame:
    """The events frame of raw ``(global_position, event_type, event_data, metadata)`` rows.

    For tests and benchmarks that hold a log in memory rather than in a store; stream
    ids and versions are placeholders.
    """
    n = len(rows)
    positions = [r[0] for r in rows]
    datas = [r[2] for r in rows]
    metas = [r[3] for r in rows]
    stamp = (created_at or datetime(1970, 1, 1)).strftime("%Y-%m-%d %H:%M:%S.%f")
    table = pa.table(
        {
            "global_position": pa.array(positions, type=pa.int64()),
            "event_id": pa.array([str(p) for p in positions], type=pa.string()),
            "stream_id": pa.array([""] * n, type=pa.string()),
            "stream_version": pa.array(positions, type=pa.int64()),
            "event_type": pa.array([r[1] for r in rows], type=pa.string()),
            "created_at": pa.array([stamp] * n, type=pa.string()),
            "event_data": pa.array(datas, type=pa.string()),
            "metadata": pa.array(metas, type=pa.string()),
            "data_line": pa.array([_one_line(d if d is not None else "null") + "\n" for d in datas], type=pa.string()),
            "meta_line": pa.array([_one_line(m if m is not None else "null") + "\n" for m in metas], type=pa.string()),
        }
    )
    return decode_frame(table)
