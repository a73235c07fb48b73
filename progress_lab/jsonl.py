"""Import and export the event log as JSON Lines, one event per line, all or nothing."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

from .errors import EventValidationError, SerializationError
from .events import (
    EventMetadata,
    PersistedEvent,
    _check_name,
    dumps,
    encode_new_event,
    format_timestamp,
)
from .store import EventStore, NewRecord

__all__ = ["record_from_dict", "import_jsonl", "export_jsonl"]

_REQUIRED_KEYS = ("stream_id", "event_type", "event_data", "metadata")
_OPTIONAL_KEYS = ("event_id", "created_at")
_ALLOWED_KEYS = frozenset(_REQUIRED_KEYS + _OPTIONAL_KEYS)
_MAX_EVENT_ID = 64  # the width of event_store.event_id
_EXPORT_BATCH = 10_000


def import_jsonl(store: EventStore, path: str | os.PathLike[str], *, progress: bool = True) -> int:
    """Append every event of a JSON Lines file to the store, in one transaction.

    Each non-blank line is one JSON object::

        {"stream_id": "user-1", "event_type": "SessionStarted",
         "event_data": {"type": "SessionStarted", ...},
         "metadata": {"user_id": ..., "timestamp": "2026-01-05T08:00:00Z",
                      "correlation_id": ..., "causation_id": ...},
         "event_id": "...", "created_at": "2026-01-05T08:00:00.123456Z"}

    ``event_id`` and ``created_at`` are optional (a fresh id and the store's clock
    are used when absent or null); ``metadata.timestamp`` is required. Stream
    versions and global positions are assigned by the store, in file order.

    Parameters
    ----------
    store
        The store to append to.
    path
        The file to read; it is streamed, never read whole into memory.
    progress
        Show a progress bar over the bytes read (only when stderr is a terminal).

    Returns
    -------
    int
        The number of events appended.

    Raises
    ------
    EventValidationError
        When a line is not a valid event; its message starts with ``line N:`` and
        ``line`` is ``N``. Nothing is written.
    OSError
        When the file cannot be read.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from progress_lab import connect
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "log.jsonl").write_text(
    ...     '{"stream_id": "user-1", "event_type": "UserCreated", '
    ...     '"event_data": {"type": "UserCreated", "user_id": "u1"}, '
    ...     '"metadata": {"timestamp": "2026-01-05T08:00:00Z"}}\\n'
    ... )
    >>> import_jsonl(connect("sqlite:///:memory:"), folder / "log.jsonl", progress=False)
    1
    """
    path = Path(path)
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        with tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"import {path.name}",
            disable=None if progress else True,
        ) as bar:
            events = 0

            def on_progress(count: int) -> None:
                nonlocal events
                events += count
                bar.set_postfix(events=events, refresh=False)

            return store.append_records(_read_records(file, bar), on_progress=on_progress)


def _read_records(file: Any, bar: tqdm[Any]) -> Iterator[NewRecord]:
    for number, raw in enumerate(file, start=1):
        bar.update(len(raw))
        if not raw.strip():
            continue
        try:
            yield _parse_line(raw, first=number == 1)
        except EventValidationError as exc:
            raise EventValidationError(f"line {number}: {exc}", errors=exc.errors, line=number) from None


def _parse_line(raw: bytes, *, first: bool) -> NewRecord:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventValidationError(f"invalid UTF-8 at byte {exc.start}") from None
    if first and text.startswith("\ufeff"):
        text = text[1:]
    try:
        obj = _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, a duplicate key, NaN, too deep
        raise EventValidationError(f"invalid JSON: {exc}") from None
    if "\\u" in text:
        _check_encodable(obj)
    return record_from_dict(obj)


def record_from_dict(obj: Any) -> NewRecord:
    """Validate one event in the import format (a parsed JSONL line) and make its record.

    The keys are ``stream_id``, ``event_type``, ``event_data``, ``metadata`` and,
    optionally, ``event_id`` and ``created_at``: what :func:`export_jsonl` writes and
    :mod:`progress_lab.generator` yields. Feed the records to
    :meth:`EventStore.append_records`.

    Raises
    ------
    EventValidationError
        When a key is missing or unknown, or the event or its metadata is invalid.
    """
    if not isinstance(obj, dict):
        raise EventValidationError(f"expected a JSON object, got {_json_type(obj)}")
    if not _ALLOWED_KEYS.issuperset(obj):
        unknown = sorted(set(obj) - _ALLOWED_KEYS)
        raise EventValidationError(f"unknown key {unknown[0]!r}; allowed: {', '.join(sorted(_ALLOWED_KEYS))}")
    for key in _REQUIRED_KEYS:
        if key not in obj:
            raise EventValidationError(f"missing key {key!r}")
    stream_id = _check_name(obj["stream_id"], "stream_id")
    event_type = _check_name(obj["event_type"], "event_type")
    data, meta = obj["event_data"], obj["metadata"]
    if not isinstance(data, dict):
        raise EventValidationError(f"event_data must be a JSON object, got {_json_type(data)}")
    if not isinstance(meta, dict):
        raise EventValidationError(f"metadata must be a JSON object, got {_json_type(meta)}")
    if data.get("type") != event_type:
        raise EventValidationError(
            f"event_type {event_type!r} differs from event_data.type {data.get('type')!r}"
        )
    # A number would be read as a Unix time and a missing one would become "now":
    # both would silently change the event's study day.
    if "timestamp" not in meta:
        raise EventValidationError("missing key 'metadata.timestamp'")
    if not isinstance(meta["timestamp"], str):
        raise EventValidationError(
            f"metadata.timestamp must be an ISO 8601 string, got {_json_type(meta['timestamp'])}"
        )
    _, event_data, metadata = encode_new_event((data, meta))
    return NewRecord(
        stream_id=stream_id,
        event_type=event_type,
        event_data=event_data,
        metadata=metadata,
        event_id=_event_id(obj.get("event_id")),
        created_at=_created_at(obj.get("created_at")),
    )


def _event_id(value: Any) -> str | None:
    if value is None:
        return None
    _check_name(value, "event_id")
    if len(value) > _MAX_EVENT_ID:
        raise EventValidationError(f"event_id must be at most {_MAX_EVENT_ID} characters")
    return str(value)


def _created_at(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise EventValidationError(f"created_at must be an ISO 8601 string, got {_json_type(value)}")
    try:
        parsed = datetime.fromisoformat(value)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: 0001-01-01T00:00+01:00 has no UTC time
        raise EventValidationError(f"created_at is not an ISO 8601 time in range: {value[:80]!r}") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# Made once: json.loads with arguments builds a new decoder for every line.
_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_reject_constant)


def _check_encodable(value: Any) -> None:
    # A "\ud800" escape decodes to a lone surrogate, which no database can store as UTF-8.
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise EventValidationError("a string holds a lone surrogate (an unpaired \\ud800-\\udfff escape)") from None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def export_jsonl(store: EventStore, path: str | os.PathLike[str], *, progress: bool = True) -> int:
    """Write every event of the store to a JSON Lines file, in global order.

    The lines have the keys ``event_id``, ``stream_id``, ``event_type``,
    ``event_data``, ``metadata`` and ``created_at``, in that order, as compact UTF-8
    JSON ending in ``\\n``; times are UTC with microseconds
    (``2026-01-05T08:00:00.123456Z``). Importing the file into an empty store and
    exporting again gives the same bytes.

    The events up to the head position at the start are written, in batches; the
    file is replaced only when all of them are written.

    Parameters
    ----------
    store
        The store to read.
    path
        The file to write (replaced if it exists).
    progress
        Show a progress bar over the events written (only when stderr is a terminal).

    Returns
    -------
    int
        The number of events written.

    Raises
    ------
    SerializationError
        When a stored event cannot be written as a line that would import again.
    """
    path = Path(path)
    head = store.head_position()
    total = store.count_events(1, head) if head else 0
    written = 0
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file, tqdm(
            total=total, unit="ev", unit_scale=True, desc=f"export {path.name}", disable=None if progress else True
        ) as bar:
            position = 1
            while position <= head:
                batch = [e for e in store.read_all_events(position, _EXPORT_BATCH) if e.global_position <= head]
                if not batch:
                    break
                file.write(b"".join(_export_line(event) for event in batch))
                written += len(batch)
                bar.update(len(batch))
                position = batch[-1].global_position + 1
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise
    return written


def _export_line(event: PersistedEvent) -> bytes:
    metadata = event.metadata
    if not isinstance(metadata, EventMetadata) or not isinstance(metadata.timestamp, datetime):
        raise SerializationError(
            f"event at position {event.global_position} has invalid metadata and cannot be exported"
        )
    line = {
        "event_id": event.event_id,
        "stream_id": event.stream_id,
        "event_type": event.event_type,
        "event_data": event.event_data,
        "metadata": metadata.to_data(),
        "created_at": format_timestamp(event.created_at),
    }
    try:
        return (dumps(line) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        raise SerializationError(
            f"event at position {event.global_position} holds a string that is not valid UTF-8"
        ) from None
