"""The event log as polars DataFrames: Arrow reads, fixed-schema JSON decoding, validation."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import shutil
import threading
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import adbc_driver_manager
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.json as pajson
import sqlalchemy as sa

from .errors import EventStoreError, StoreUnavailableError
from .events import FIELDS_BY_TYPE, KNOWN_EVENT_TYPES

if TYPE_CHECKING:
    from .store import EventStore

__all__ = [
    "FRAME_SCHEMA",
    "FOLD_SCHEMA",
    "PAYLOAD_FIELDS",
    "read_events_frame",
    "read_fold_frame",
    "iter_events_frames",
    "decode_frame",
    "frame_from_raw",
    "check_raw_event",
    "read_raw_event",
    "load_json",
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

FOLD_SCHEMA: dict[str, pl.DataType] = {
    "global_position": pl.Int64(),
    "event_type": pl.String(),
    "timestamp": _UTC,
    "metadata_user_id": pl.String(),
    **PAYLOAD_FIELDS,
    "malformed": pl.String(),
}
"""The narrower frame a replay folds: what the statistics read, and nothing else."""

# Which fields each known event type must carry (its own fields: the others are null in
# the frame), and their ranges; mirrors events.py.
_REQUIRED = FIELDS_BY_TYPE
_TYPE_CODES = {event_type: code for code, event_type in enumerate(_REQUIRED)}
_INT_RANGE = {"item_count": (0, 1_000_000), "duration_seconds": (0, 1_000_000_000), "quality": (0, 5)}
_FLOAT_RANGE = {"new_interval": (0.0, 1_000_000.0), "easiness_factor": (0.0, 1000.0)}
_ID_FIELDS = ("user_id", "session_id", "item_id")
_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S%.6fZ"
# [0-9], not \d: both Python's and Rust's \d also match non-ASCII digits.
_TIMESTAMP_PATTERN = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z"
_TIMESTAMP_RE = re.compile(_TIMESTAMP_PATTERN)
# Years the fold accepts: a study day in any time zone must still be a valid date.
YEAR_RANGE = (1900, 9000)


def check_raw_event(event_type: str, event_data: str | None, metadata: str | None) -> str | None:
    """Why a stored known event cannot be folded, or ``None`` when it can.

    This is the plain-Python statement of the rule the vectorized decoder applies: the
    payload is a JSON object whose ``type`` is ``event_type``, every field the
    statistics read is present with its JSON type and range, identifiers are non-empty
    strings of at most 256 characters without NUL, and the metadata is a JSON object
    with a canonical UTC ``timestamp`` and a string-or-null ``user_id``.
    """
    read = read_raw_event(event_type, event_data, metadata)
    return read if isinstance(read, str) else None


def read_raw_event(
    event_type: str, event_data: str | None, metadata: str | None
) -> tuple[dict[str, Any], dict[str, Any], datetime] | str:
    """A stored known event decoded for the fold: ``(payload, metadata, UTC time)``.

    Returns the reason instead when the event cannot be folded (see
    :func:`check_raw_event`, which states the rule). The reference fold decodes each
    event once, here.
    """
    try:
        data = load_json(event_data, "event_data")
        meta = load_json(metadata, "metadata")
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
            text = f"event_data.{name}: missing, not a finite number or out of range"
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                return text
            above_low = value > low_f if name == "easiness_factor" else value >= low_f
            if not above_low or value > high_f:
                return text
    user = meta.get("user_id")
    if user is not None and not _is_identifier(user):
        return "metadata.user_id: not an identifier"
    stamp = meta.get("timestamp")
    if not isinstance(stamp, str) or not _TIMESTAMP_RE.fullmatch(stamp):
        return "metadata.timestamp: missing or not canonical UTC"
    try:
        when = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return "metadata.timestamp: not a valid time"
    if not YEAR_RANGE[0] <= when.year <= YEAR_RANGE[1]:
        return "metadata.timestamp: outside the years the fold accepts"
    return data, meta, when.replace(tzinfo=UTC)


def load_json(text: str | None, column: str) -> Any:
    """``json.loads`` of an ``event_data`` or ``metadata`` text, as the fold reads it.

    A text nested deeper than Python's parser goes (``RecursionError``) is read the way
    the vectorized decoder reads it: only the top-level fields the fold uses, with
    pyarrow's strict JSON types; so the deep part of a field the fold ignores changes
    nothing, in every batch split. Raises ``ValueError`` for text that is not JSON.
    """
    if text is None:
        return None
    try:
        return json.loads(text)
    except RecursionError:
        pass
    if text.lstrip().startswith("null"):  # see _decode_json: pyarrow must not see this
        raise ValueError("not a JSON object")
    schema = _PAYLOAD_ARROW if column == "event_data" else _META_ARROW
    options = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        line = text.replace("\n", " ").replace("\r", " ").encode("utf-8") + b"\n"
        table = pajson.read_json(pa.BufferReader(line), parse_options=options)
    except (UnicodeEncodeError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"not a JSON object of the fold's types: {exc}") from None
    if table.num_rows != 1:
        raise ValueError("not one JSON value")
    return {key: value for key, value in table.to_pylist()[0].items() if value is not None}


def _is_identifier(value: Any) -> bool:
    if not isinstance(value, str) or not 1 <= len(value) <= 256 or "\x00" in value:
        return False
    return _utf8(value)  # not a lone surrogate from "\ud800"


def _arrow_schema(fields: dict[str, pl.DataType]) -> pa.Schema:
    kinds = {pl.String(): pa.string(), pl.Int64(): pa.int64(), pl.Float64(): pa.float64()}
    return pa.schema([(name, kinds[dtype]) for name, dtype in fields.items()])


_PAYLOAD_ARROW = _arrow_schema({"type": pl.String(), **PAYLOAD_FIELDS})
_META_ARROW = _arrow_schema(_META_FIELDS)
_META_FOLD_ARROW = _arrow_schema({name: _META_FIELDS[name] for name in ("user_id", "timestamp")})


def _decode_json(lines: tuple[pa.Buffer, int] | None, schema: pa.Schema, n: int) -> pl.DataFrame | None:
    """Decode NDJSON (see :func:`_lines`) with a fixed schema, or ``None`` when any row breaks it.

    pyarrow's reader is strict about JSON types (a number where a string is expected
    is an error, unlike polars, which would quietly make it text), so a batch that
    decodes here needs no further type check.
    """
    if n == 0:
        return pl.DataFrame(schema={f.name: pl.from_arrow(pa.array([], f.type)).dtype for f in schema})  # type: ignore[union-attr]
    # Only documents of objects get here: pyarrow's reader crashes (SIGSEGV) on a document
    # whose first value is a bare `null` (apache/arrow#47409).
    if lines is None:
        return None
    document, mark = lines
    options = pajson.ParseOptions(explicit_schema=schema.append(pa.field(_LINE_MARK, pa.int64())),
                                  unexpected_field_behavior="ignore")
    try:
        table = pajson.read_json(pa.BufferReader(document), parse_options=options)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    # n objects, each opened by a line's own mark: so each line held exactly one object.
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    # (polars, not pyarrow.compute: a first compute call imports pandas, half a second.)
    marks = frame[_LINE_MARK]
    if frame.height != n or marks.null_count() or not (marks == mark).all():
        return None
    return frame.drop(_LINE_MARK)


# Which columns a frame has: all of FRAME_SCHEMA, or only the fold's (FOLD_SCHEMA).
Columns = Literal["all", "fold"]
# The event_store columns of a frame that are not decoded from JSON (all, and the fold's).
_BASE_COLUMNS = ["global_position", "event_id", "stream_id", "stream_version", "event_type", "created_at"]
_FOLD_BASE_COLUMNS = ["global_position", "event_type"]


def decode_frame(table: pa.Table, *, raw: bool = False, columns: Columns = "all") -> pl.DataFrame:
    """Decode rows from their JSON text: the path for rows progress_lab did not write.

    ``table`` has the ``event_store`` columns ``global_position``, ``event_id``,
    ``stream_id``, ``stream_version``, ``event_type``, ``created_at``, ``event_data``
    and ``metadata``. Payload and metadata are decoded with a fixed schema (pyarrow,
    strict about JSON types); a batch with a row that breaks it is checked row by row.

    With ``columns="fold"`` the result has the narrower :data:`FOLD_SCHEMA`, and
    ``table`` needs only ``global_position``, ``event_type``, ``event_data`` and
    ``metadata``: what the fold does not read is not decoded (the JSON is still
    checked in full, so whether a row is malformed does not change).
    """
    fold_only = columns == "fold"
    schema = FOLD_SCHEMA if fold_only else FRAME_SCHEMA
    n = table.num_rows
    if n == 0:
        # An empty result carries no column types (ADBC's SQLite driver reports int64 for all).
        return _empty_frame(schema, raw)
    table = _without_invalid_utf8(table)
    base = pl.from_arrow(table.select(_FOLD_BASE_COLUMNS if fold_only else _BASE_COLUMNS))
    assert isinstance(base, pl.DataFrame)
    base = base.with_columns(pl.col("global_position").cast(pl.Int64))
    if not fold_only:
        base = base.with_columns(pl.col("stream_version").cast(pl.Int64), _as_utc(base["created_at"]))
    meta_arrow = _META_FOLD_ARROW if fold_only else _META_ARROW
    payload = _decode_json(_lines(table.column("event_data")), _PAYLOAD_ARROW, n)
    meta = _decode_json(_lines(table.column("metadata")), meta_arrow, n)
    python_reasons = pl.Series("python_reason", [None] * n, dtype=pl.String)
    if payload is None or meta is None:
        payload, meta, python_reasons = _decode_row_by_row(table)
    frame = pl.concat(
        [
            base,
            meta.select(
                _parse_timestamps(meta["timestamp"]),
                pl.col("user_id").alias("metadata_user_id"),
                *([] if fold_only else ["correlation_id", "causation_id"]),
            ),
            payload.rename({"type": "data_type"}),
            python_reasons.to_frame(),
        ],
        how="horizontal",
    ).with_columns(
        pl.col("event_type").replace_strict(_TYPE_CODES, default=-1, return_dtype=pl.Int8).alias("_type"),
    ).with_columns(
        # A field that is not one of the event type's own is not part of the frame.
        *(
            pl.when(pl.col("_type").is_in([_TYPE_CODES[t] for t, fs in _REQUIRED.items() if name in fs]))
            .then(pl.col(name))
            .otherwise(None)
            .alias(name)
            for name in PAYLOAD_FIELDS
        ),
    ).drop("_type")
    frame = _validate(frame).with_columns(pl.coalesce("python_reason", "malformed").alias("malformed"))
    names = list(schema)
    if raw:
        texts = pl.from_arrow(table.select(["event_data", "metadata"]))
        assert isinstance(texts, pl.DataFrame)
        frame = pl.concat([frame, texts.cast(pl.String)], how="horizontal")
        names += ["event_data", "metadata"]
    return frame.select(names)


_NOT_UTF8 = "(stored text is not valid UTF-8)"


def _without_invalid_utf8(table: pa.Table) -> pa.Table:
    """The table with payload or metadata texts that are not UTF-8 replaced by a non-JSON marker.

    SQLite stores whatever bytes a foreign writer gives it; such a row must be malformed,
    not a crash (polars assumes valid UTF-8). Valid batches cost one validation pass.
    """
    for name in ("event_data", "metadata"):
        column = table.column(name)
        if pa.types.is_null(column.type):
            column = column.cast(pa.string())
        try:
            if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
                column = column.cast(pa.string())  # a cast to text checks UTF-8
            else:
                column.validate(full=True)
        except pa.ArrowInvalid:
            texts = [v if v is None else _utf8_or_marker(v) for v in column.cast(pa.binary()).to_pylist()]
            column = pa.chunked_array([pa.array(texts, pa.string())])
        table = table.set_column(table.schema.get_field_index(name), name, column)
    return table


def _utf8_or_marker(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return _NOT_UTF8


# The canonical form with the clock fields in range, for polars (whose parser would also
# read a leap second, ``23:59:60``); the calendar is checked by parsing.
_CANONICAL_TIMESTAMP = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]\.[0-9]{6}Z$"


def _parse_timestamps(texts: pl.Series) -> pl.Series:
    """The canonical UTC texts as datetimes, null elsewhere: exactly what ``check_raw_event`` accepts.

    Arrow's ISO 8601 cast is about ten times polars' ``strptime`` here (45 ms per million),
    but it fails the whole column on one date that is not in the calendar (30 February);
    such a batch is parsed again by polars, which makes that date null.
    """
    canonical = texts.str.contains(_CANONICAL_TIMESTAMP).fill_null(False)
    if not canonical.all():
        texts = pl.select(pl.when(canonical).then(texts)).to_series().alias(texts.name)
    parsed = _arrow_datetimes(texts, pa.timestamp("us", "UTC"))
    if parsed is None:
        return texts.str.to_datetime(_TIMESTAMP_FORMAT, time_unit="us", time_zone="UTC", strict=False)
    return parsed


def _arrow_datetimes(texts: pl.Series, dtype: pa.DataType) -> pl.Series | None:
    """The texts cast by Arrow's ISO 8601 parser, or ``None`` when it refuses one of them."""
    try:
        parsed = pl.from_arrow(texts.to_arrow(compat_level=pl.CompatLevel.oldest()).cast(dtype))
    except pa.ArrowInvalid:
        return None
    assert isinstance(parsed, pl.Series)
    return parsed.alias(texts.name)


def _empty_frame(schema: dict[str, pl.DataType], raw: bool) -> pl.DataFrame:
    return pl.DataFrame(schema={**schema, **({"event_data": pl.String(), "metadata": pl.String()} if raw else {})})


# The key of the mark that opens each line of a JSON document (see _lines).
_LINE_MARK = "~line"


def _lines(column: pa.ChunkedArray) -> tuple[pa.Buffer, int] | None:
    """The JSON texts as one NDJSON document, with the mark its lines carry; ``None`` when unsafe.

    Each text becomes a line (polars joins them in one copy), its opening brace followed
    by a mark, ``"~line":<random>``, short because every line's is parsed.

    A line break is only whitespace to a JSON reader, so the document alone cannot show
    where a text ends: one text could leave an object open for the next to close, and
    another hold two objects. An object has the mark at its top level only when it opens
    a line: a text that writes the key itself, in any escaped form, either repeats it
    in that line's object (an error) or must guess the random value. So n objects that
    all have the mark are the n texts, one each.

    A text that is not an object (``null``, a number, empty) or that holds a raw line
    break (JSON allows one between tokens; pyarrow cuts the document into blocks at line
    breaks, which must fall between texts) is not made a line; such batches (rare:
    foreign writers) are checked row by row instead.
    """
    texts = pl.from_arrow(column)
    assert isinstance(texts, pl.Series)
    if texts.null_count() or not texts.str.starts_with("{").all():
        return None
    if texts.str.contains("[\n\r]").any():
        return None
    mark = secrets.randbits(31)  # guessing it has a chance of 2**-31 per batch
    opening = f'{{"{_LINE_MARK}":{mark},'
    # Each text's brace is replaced by the opening: the first text's here, the others' by the
    # separator. (An empty object becomes `{"~line":m,}`, an error, so its batch goes row by row.)
    rest = texts.str.slice(1)
    rest = pl.concat([opening + rest[:1], rest[1:]])
    text = rest.str.join("\n" + opening).to_arrow(compat_level=pl.CompatLevel.oldest())
    first, last = np.frombuffer(text.buffers()[1], dtype=np.int64)[text.offset : text.offset + 2]
    return text.buffers()[2][first:last], mark


def _as_utc(column: pl.Series) -> pl.Series:
    """``created_at`` as a UTC datetime, whatever type the driver gave it."""
    if column.dtype == pl.String:
        parsed = _arrow_datetimes(column, pa.timestamp("us"))  # the fast one; polars reads what it refuses
        if parsed is None:
            return column.str.to_datetime("%Y-%m-%d %H:%M:%S%.f", time_unit="us", time_zone="UTC")
        return parsed.dt.replace_time_zone("UTC")
    if isinstance(column.dtype, pl.Datetime) and column.dtype.time_zone is None:
        return column.dt.cast_time_unit("us").dt.replace_time_zone("UTC")
    return column.dt.cast_time_unit("us").dt.convert_time_zone("UTC")


def _identifier(value: pl.Expr) -> pl.Expr:
    return value.str.len_chars().is_between(1, 256) & ~value.str.contains("\x00", literal=True)


def _validate(frame: pl.DataFrame) -> pl.DataFrame:
    """Add ``malformed``: why a known event cannot be folded (null when it can).

    Expects ``timestamp`` (null when missing or not canonical), ``data_type`` (the
    ``type`` inside the payload), ``metadata_user_id`` and the payload fields. The reason
    is the first failed check in :func:`check_raw_event`'s order; each field is checked
    once, and a batch with nothing wrong (the usual case) skips naming reasons.
    """
    field_bad: dict[str, pl.Expr] = {}
    field_text: dict[str, str] = {}
    for name in PAYLOAD_FIELDS:
        value = pl.col(name)
        if name in _ID_FIELDS:
            bad = value.is_null() | ~_identifier(value)
            field_text[name] = f"event_data.{name}: missing or not an identifier"
        elif name in _INT_RANGE:
            low, high = _INT_RANGE[name]
            bad = value.is_null() | ~value.is_between(low, high)
            field_text[name] = f"event_data.{name}: missing, not an integer or out of range"
        else:
            low_f, high_f = _FLOAT_RANGE[name]
            lower_ok = value > low_f if name == "easiness_factor" else value >= low_f
            bad = value.is_null() | ~value.is_finite() | ~lower_ok | (value > high_f)
            field_text[name] = f"event_data.{name}: missing, not a finite number or out of range"
        field_bad[name] = bad.fill_null(True).alias(f"_bad_{name}")
    known = pl.col("event_type").is_in(KNOWN_EVENT_TYPES)
    checks: list[tuple[pl.Expr, str]] = [
        (known & (pl.col("data_type") != pl.col("event_type")).fill_null(True), "event_data.type differs from event_type"),
        *(
            ((pl.col("event_type") == event_type) & pl.col(f"_bad_{name}"), field_text[name])
            for event_type, fields in _REQUIRED.items()
            for name in fields
        ),
        (
            known & pl.col("metadata_user_id").is_not_null() & ~_identifier(pl.col("metadata_user_id")),
            "metadata.user_id: not an identifier",
        ),
        (known & pl.col("timestamp").is_null(), "metadata.timestamp: missing or not canonical UTC"),
        (
            known & ~pl.col("timestamp").dt.year().is_between(*YEAR_RANGE).fill_null(True),
            "metadata.timestamp: outside the years the fold accepts",
        ),
    ]
    flagged = frame.with_columns(*field_bad.values())
    flagged = flagged.with_columns(pl.any_horizontal(condition for condition, _ in checks).alias("_bad"))
    reason: pl.Expr = pl.lit(None, dtype=pl.String)
    if flagged["_bad"].any():
        for condition, text in reversed(checks):
            reason = pl.when(condition).then(pl.lit(text)).otherwise(reason)
    return flagged.with_columns(reason.alias("malformed")).drop("_bad", *(f"_bad_{name}" for name in field_bad))


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
        read = read_raw_event(event_type, data, meta) if event_type in KNOWN_EVENT_TYPES else None
        reasons.append(read if isinstance(read, str) else None)
        payload: dict[str, Any] = read[0] if isinstance(read, tuple) else {}
        payloads.append({name: _typed(payload.get(name), dtype) for name, dtype in _PAYLOAD_WITH_TYPE.items()})
        meta_obj = read[1] if isinstance(read, tuple) else _loads_object(meta, "metadata")
        meta_rows.append({name: _typed(meta_obj.get(name), dtype) for name, dtype in _META_FIELDS.items()})
    return (
        pl.DataFrame(payloads, schema=_PAYLOAD_WITH_TYPE, orient="row"),
        pl.DataFrame(meta_rows, schema=_META_FIELDS, orient="row"),
        pl.Series("python_reason", reasons, dtype=pl.String),
    )


_PAYLOAD_WITH_TYPE: dict[str, pl.DataType] = {"type": pl.String(), **PAYLOAD_FIELDS}


def _loads_object(text: str | None, column: str) -> dict[str, Any]:
    try:
        value = load_json(text, column)
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


# ADBC's SQLite driver takes a column's type from its first rows, so a column that starts
# with NULLs would be read as int64 and fail at its first text. On SQLite the query starts
# with one row of stand-ins of the right types, dropped
# on arrival (its position is the lowest integer, so it sorts first whatever a foreign
# writer stored); SQLite merges it in front of the rowid scan without sorting.
_TYPE_ROW = {pl.String(): "''", pl.Int64(): "0", pl.Float64(): "0.0"}
_LOWEST = "(-9223372036854775807 - 1)"  # sorts first; SQLite reads a bare -9223372036854775808 as a float


def _typed_columns(columns: Columns) -> list[tuple[str, pl.DataType]]:
    fold = [("occurred_at_us", pl.Int64()), ("metadata_user_id", pl.String()), *PAYLOAD_FIELDS.items()]
    if columns == "all":
        fold += [("correlation_id", pl.String()), ("causation_id", pl.String())]
        fold += [("event_id", pl.String()), ("stream_id", pl.String()), ("stream_version", pl.Int64())]
        fold += [("created_at", pl.String())]
    return [("global_position", pl.Int64()), ("event_type", pl.String()), ("typed", pl.Int64()), *fold]


def _typed_sql(columns: Columns, type_row: bool) -> str:
    typed = _typed_columns(columns)
    names = [name for name, _ in typed]
    first = ""
    if type_row:
        stand_ins = (_LOWEST if name == "global_position" else _TYPE_ROW[dtype] for name, dtype in typed)
        first = "SELECT " + ", ".join(f"{value} AS {name}" for value, name in zip(stand_ins, names)) + " UNION ALL "
    return (
        f"{first}SELECT {', '.join(names)} FROM event_store "
        "WHERE global_position >= {p1} AND global_position <= {p2} ORDER BY global_position"
    )


# SQLite keeps whatever bytes a foreign writer stored: read the texts as bytes, so that a
# row that is not UTF-8 becomes malformed (decode_frame) instead of failing the batch.
_JSON_SQL = (
    "SELECT {base}, {texts} FROM event_store WHERE global_position >= {p1} AND global_position <= {p2} {extra} "
    "ORDER BY global_position"
)


def _json_sql(store: EventStore, extra: str, columns: Columns = "all") -> str:
    texts = (
        "CAST(event_data AS BLOB) AS event_data, CAST(metadata AS BLOB) AS metadata"
        if store.dialect == "sqlite"
        else "event_data, metadata"
    )
    base = ", ".join(_BASE_COLUMNS if columns == "all" else _FOLD_BASE_COLUMNS)
    return _JSON_SQL.replace("{base}", base).replace("{texts}", texts).replace("{extra}", extra)


# Reads of at least this many positions from a SQLite file go through the reader process.
_PROCESS_READ_MIN = 20_000


def _query(store: EventStore, sql: str, from_position: int, to_position: int) -> pa.Table:
    if store.dialect == "sqlite":
        large = to_position - from_position + 1 >= _PROCESS_READ_MIN
        if large and to_position > 2**40:  # "to the end": size the read by the real head
            large = store.head_position() - from_position + 1 >= _PROCESS_READ_MIN
        pool = _sqlite_readers(store) if large else None
        if pool is not None:
            with pool.reader() as reader:
                return reader.query(sql.format(p1="?", p2="?"), (from_position, to_position))
    else:
        try:
            conn = _adbc_connection(store)
            if conn is not None:
                with conn.cursor() as cursor:
                    # The positions are written into the text: ADBC's PostgreSQL driver reads
                    # a query without parameters through COPY (binary), twice as fast here
                    # (bench/read.py) as the rows of a prepared statement.
                    cursor.execute(sql.format(p1=int(from_position), p2=int(to_position)))
                    table: pa.Table = cursor.fetch_arrow_table()
                return table
        except adbc_driver_manager.OperationalError as exc:
            # The server went away (or cannot be reached): drop the dead connection so the next
            # read reconnects, and report it as the outage it is.
            _forget_adbc(store)
            raise StoreUnavailableError(f"{store.url}: {str(exc).strip().splitlines()[0]}") from None
    # Small reads, an in-memory SQLite, no ADBC driver: the same query through SQLAlchemy.
    with store.engine.connect() as sa_conn:
        raw_texts = store.dialect == "sqlite" and "event_data" in sql
        if raw_texts:  # a foreign writer's bytes that are not UTF-8 must not stop the read
            sa_conn.connection.driver_connection.text_factory = _utf8_or_marker  # type: ignore[union-attr]
        try:
            result = sa_conn.execute(sa.text(sql.format(p1=":p1", p2=":p2")), {"p1": from_position, "p2": to_position})
            rows = result.all()
            names = list(result.keys())
        finally:
            if raw_texts:
                sa_conn.connection.driver_connection.text_factory = str  # type: ignore[union-attr]
    columns = list(zip(*rows)) if rows else [() for _ in names]
    # Built by polars: pyarrow's pa.array() of Python values imports pandas on its first
    # call in a process, half a second of a small catch-up (or of `progress-lab demo`).
    frame = pl.DataFrame(
        [
            pl.Series(name, [None if v is None else str(v) for v in col], dtype=pl.String)
            if name == "created_at" or not rows
            else pl.Series(name, col, strict=False)
            for name, col in zip(names, columns)
        ]
    )
    return frame.to_arrow(compat_level=pl.CompatLevel.oldest())


def _from_typed(table: pa.Table, columns: Columns) -> pl.DataFrame:
    """The frame of rows progress_lab wrote, from their typed columns."""
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    types = dict(_typed_columns(columns))
    frame = frame.with_columns(
        *(pl.col(name).cast(dtype) for name, dtype in types.items() if name != "created_at"),
    ).with_columns(
        pl.col("typed").fill_null(0),
        pl.col("occurred_at_us").cast(_UTC).alias("timestamp"),
        pl.col("event_type").alias("data_type"),
    )
    if columns == "all":
        frame = frame.with_columns(_as_utc(frame["created_at"]))
    return _validate(frame)


def _read(store: EventStore, from_position: int, to_position: int, columns: Columns, raw: bool) -> pl.DataFrame:
    schema = FRAME_SCHEMA if columns == "all" else FOLD_SCHEMA
    type_row = store.dialect == "sqlite"
    typed = _query(store, _typed_sql(columns, type_row), from_position, to_position)
    if type_row:
        assert typed.num_rows and typed.column("global_position")[0].as_py() == -(2**63), "the stand-in row first"
        typed = typed.slice(1)
    if typed.num_rows == 0:
        return _empty_frame(schema, raw)
    frame = _from_typed(typed, columns)
    untyped = frame.filter(pl.col("typed") == 0)
    if raw:
        texts = decode_frame(_query(store, _json_sql(store, ""), from_position, to_position), raw=True)
        if untyped.height:
            frame = texts
        else:
            frame = frame.join(texts.select("global_position", "event_data", "metadata"), on="global_position")
        return frame.select([*schema, "event_data", "metadata"])
    if untyped.height:
        # Rows other tools wrote: decode their JSON text (and validate it as strictly).
        decoded = decode_frame(
            _query(store, _json_sql(store, "AND typed IS NULL", columns), from_position, to_position), columns=columns
        )
        frame = pl.concat([frame.filter(pl.col("typed") == 1).select(list(schema)), decoded.select(list(schema))]).sort(
            "global_position"
        )
    return frame.select(list(schema))


def _forget_adbc(store: EventStore) -> None:
    conn = store._adbc
    store._adbc = None
    if conn is not None:
        try:
            conn.close()
        except Exception:  # noqa: S110 - it is dead already
            pass


def _adbc_connection(store: EventStore) -> Any:
    """An in-process ADBC connection, for PostgreSQL only (see :class:`_SqliteReader`)."""
    cached = store._adbc
    if cached is not None or store.dialect != "postgresql":
        return cached
    try:
        import adbc_driver_postgresql.dbapi as adbc_pg
    except ImportError:
        return None
    uri = store.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    conn = adbc_pg.connect(uri, autocommit=True)
    store._adbc = conn
    return conn


class _SqliteReader:
    """Reads a SQLite file with ADBC in a child process and hands back Arrow tables.

    ADBC's SQLite driver carries its own copy of SQLite. Two copies of SQLite using one
    database file in one process can lose each other's POSIX locks (closing either copy's
    file descriptor drops both copies' locks), which SQLite's documentation lists as a way
    to read torn data or corrupt a database. In its own process (``progress_lab/_reader.py``)
    the driver's copy is just another reader, the case SQLite is built for. Each result
    comes back as an Arrow IPC file in shared memory (``/dev/shm`` where there is one),
    memory-mapped here and unlinked at once: no copy through a pipe.
    """

    def __init__(self, path: str) -> None:
        import subprocess
        import sys
        import tempfile

        self._dir = tempfile.mkdtemp(prefix="progress_lab-", dir=_shared_memory_dir())
        weakref.finalize(self, shutil.rmtree, self._dir, True)  # also for a store never closed
        self._count = 0
        # Run as a file with -P, not with -m: importing the progress_lab package would
        # cost the child a second of start-up for modules it does not use.
        self._process = subprocess.Popen(
            [sys.executable, "-P", str(Path(__file__).with_name("_reader.py")), path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._lock = threading.Lock()

    def query(self, sql: str, params: tuple[int, int]) -> pa.Table:
        with self._lock:
            stdin, stdout = self._process.stdin, self._process.stdout
            assert stdin is not None and stdout is not None
            self._count += 1
            out = os.path.join(self._dir, f"{self._count}.arrow")
            try:
                stdin.write(json.dumps({"sql": sql, "params": list(params), "out": out}).encode() + b"\n")
                stdin.flush()
                header = stdout.read(9)
                if len(header) != 9:
                    raise EOFError("no answer")
                payload = stdout.read(int.from_bytes(header[1:], "little"))
            except (EOFError, OSError) as exc:
                _unlink(out)
                raise StoreUnavailableError(f"the SQLite reader process stopped: {exc}") from None
        if header[:1] != b"\0":
            _unlink(out)
            message = payload.decode(errors="replace")
            # Only a busy or unreachable file is worth retrying; anything else is a real error.
            transient = any(word in message.lower() for word in ("locked", "busy", "unable to open"))
            error = StoreUnavailableError if transient else EventStoreError
            raise error(f"reading SQLite failed: {message}")
        try:
            # The mapping outlives the unlinked file; the memory goes with the table.
            return pa.ipc.open_file(pa.memory_map(out)).read_all()
        finally:
            _unlink(out)

    def alive(self) -> bool:
        return self._process.poll() is None

    def close(self) -> None:
        with self._lock:
            if self._process.stdin is not None:
                try:
                    self._process.stdin.close()
                except OSError:
                    pass
            try:
                self._process.wait(timeout=5)
            except Exception:
                self._process.kill()
            shutil.rmtree(self._dir, ignore_errors=True)


def _shared_memory_dir(min_free: int = 2 << 30) -> str | None:
    """``/dev/shm`` when it is writable and roomy (containers often give it 64 MB), else ``None``
    (the system's temporary folder: slower, but results still arrive through the page cache)."""
    try:
        stats = os.statvfs("/dev/shm")
    except OSError:
        return None
    roomy = stats.f_bavail * stats.f_frsize >= min_free
    return "/dev/shm" if roomy and os.access("/dev/shm", os.W_OK) else None


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


#: Reader processes of one SQLite file that may read at once (the projector reads its next
#: two batches side by side, so the reading keeps up with the fold on two cores).
MAX_SQLITE_READERS = 2


class _ReaderPool:
    """The reader processes of one SQLite file: a query takes an idle one, and starts one
    more (up to :data:`MAX_SQLITE_READERS`) when all are busy.

    A process that has stopped (killed by the system for its memory, say) is dropped, so
    the next read starts a new one instead of failing for good.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.readers: list[_SqliteReader] = []
        self._idle: list[_SqliteReader] = []
        self._starting = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def reader(self) -> Iterator[_SqliteReader]:
        with self._changed:
            for stopped in [r for r in self._idle if not r.alive()]:
                self._idle.remove(stopped)
                self.readers.remove(stopped)
                stopped.close()
            while not self._idle and len(self.readers) + self._starting >= MAX_SQLITE_READERS:
                self._changed.wait()
            taken = self._idle.pop() if self._idle else None
            if taken is None:
                self._starting += 1
        if taken is None:
            try:
                taken = _SqliteReader(self.path)  # its start-up outside the lock
            finally:
                with self._changed:
                    self._starting -= 1
                    if taken is not None:
                        self.readers.append(taken)
                    self._changed.notify()
        try:
            yield taken
        finally:
            with self._changed:
                if taken.alive():
                    self._idle.append(taken)
                else:
                    self.readers.remove(taken)
                    taken.close()
                self._changed.notify()

    def close(self) -> None:
        with self._changed:
            readers, self.readers, self._idle = self.readers, [], []
        for reader in readers:
            reader.close()


_READERS_LOCK = threading.Lock()


def _sqlite_readers(store: EventStore) -> _ReaderPool | None:
    database = store.engine.url.database
    if store.dialect != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        return None
    with _READERS_LOCK:
        pool = store._sqlite_readers
        if pool is None:
            pool = _ReaderPool(database)
            store._sqlite_readers = pool
    return pool


def read_events_frame(
    store: EventStore, from_position: int = 1, to_position: int | None = None, *, raw: bool = False
) -> pl.DataFrame:
    """The events between two positions (inclusive) as a typed frame; see :data:`FRAME_SCHEMA`."""
    upper = to_position if to_position is not None else 2**62
    return _read_in_halves(store, from_position, upper, "all", raw)


def read_fold_frame(store: EventStore, from_position: int = 1, to_position: int | None = None) -> pl.DataFrame:
    """Only what the fold reads (:data:`FOLD_SCHEMA`): fewer columns, a faster replay."""
    upper = to_position if to_position is not None else 2**62
    return _read_in_halves(store, from_position, upper, "fold", False)


def read_fold_batch(store: EventStore, from_position: int, to_position: int) -> pl.DataFrame:
    """:func:`read_fold_frame` in one piece: for the projector, which reads two batches at once."""
    return _read(store, from_position, to_position, "fold", False)


def _read_in_halves(store: EventStore, from_position: int, to_position: int, columns: Columns, raw: bool) -> pl.DataFrame:
    """A large read of a SQLite file as two halves read side by side, by two reader processes.

    The first half ends at or below the head, whose positions are all committed (appends
    number their events after the head, in commit order), so it reads the same whenever
    it runs; the second reads what is there when it runs, as a single read would. (Were
    the cut above the head, events committed between the two reads could appear above
    it while those below it were missed.)
    """
    if _sqlite_readers(store) is not None:  # a SQLite file
        last = min(to_position, store.head_position())
        if last - from_position + 1 >= 2 * _PROCESS_READ_MIN:
            middle = (from_position + last) // 2
            with ThreadPoolExecutor(max_workers=2, thread_name_prefix="progress_lab-read") as pool:
                first = pool.submit(_read, store, from_position, middle, columns, raw)
                second = pool.submit(_read, store, middle + 1, to_position, columns, raw)
                return pl.concat([first.result(), second.result()])
    return _read(store, from_position, to_position, columns, raw)


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
    columns: Columns = "all",
) -> pl.DataFrame:
    """The events frame of raw ``(global_position, event_type, event_data, metadata)`` rows.

    For tests and benchmarks that hold a log in memory rather than in a store: it takes
    the JSON decoding path (:func:`decode_frame`, with its ``columns``). Stream ids and
    versions are placeholders.
    """
    n = len(rows)
    positions = [r[0] for r in rows]
    stamp = (created_at or datetime(1970, 1, 1)).strftime("%Y-%m-%d %H:%M:%S.%f")
    table = pa.table(
        {
            "global_position": pa.array(positions, type=pa.int64()),
            "event_id": pa.array([str(p) for p in positions], type=pa.string()),
            "stream_id": pa.array([""] * n, type=pa.string()),
            "stream_version": pa.array(positions, type=pa.int64()),
            "event_type": pa.array([r[1] for r in rows], type=pa.string()),
            "created_at": pa.array([stamp] * n, type=pa.string()),
            "event_data": pa.array([r[2] for r in rows], type=pa.string()),
            "metadata": pa.array([r[3] for r in rows], type=pa.string()),
        }
    )
    return decode_frame(table, columns=columns)
