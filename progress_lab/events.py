"""The domain events the Progress Context consumes, and the records the event store returns."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeAlias, Union

import pydantic_core
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from .errors import EventValidationError, SerializationError

__all__ = [
    "UserCreated",
    "SessionStarted",
    "CorrectAnswerGiven",
    "SessionCompleted",
    "ReviewProcessed",
    "DomainEvent",
    "KNOWN_EVENT_TYPES",
    "EventMetadata",
    "PersistedEvent",
    "Snapshot",
    "parse_event",
    "format_timestamp",
]

# Bounds keep every sum the folds compute inside int64 (10 million sessions of 10^9 s
# still fit), so the polars fold and the Python fold cannot disagree by overflow.
_MAX_COUNT = 1_000_000
_MAX_SECONDS = 1_000_000_000
_MAX_DAYS = 1_000_000.0

Identifier = Annotated[str, Field(strict=True, min_length=1, max_length=256)]
Count = Annotated[int, Field(strict=True, ge=0, le=_MAX_COUNT)]
Seconds = Annotated[int, Field(strict=True, ge=0, le=_MAX_SECONDS)]
Millis = Annotated[int, Field(strict=True, ge=0, le=_MAX_SECONDS * 1000)]
Days = Annotated[float, Field(strict=True, ge=0, le=_MAX_DAYS, allow_inf_nan=False)]


class _Event(BaseModel):
    # Known fields are strict; fields other contexts add later are kept, not dropped.
    model_config = ConfigDict(frozen=True, extra="allow")

    def to_data(self) -> dict[str, Any]:
        """The event's JSON form: ``{"type": ..., **payload}``."""
        return self.model_dump(mode="json", exclude_none=False)


class UserCreated(_Event):
    """A learner account was created (the e-mail never reaches a read model)."""

    type: Literal["UserCreated"] = "UserCreated"
    user_id: Identifier
    email: str | None = None
    display_name: str | None = None


class SessionStarted(_Event):
    """A study session began with ``item_count`` items to go through."""

    type: Literal["SessionStarted"] = "SessionStarted"
    session_id: Identifier
    user_id: Identifier
    item_count: Count
    deck_id: str | None = None


class CorrectAnswerGiven(_Event):
    """An item of a session was answered correctly."""

    type: Literal["CorrectAnswerGiven"] = "CorrectAnswerGiven"
    session_id: Identifier
    item_id: Identifier
    response_time_ms: Millis | None = None


class SessionCompleted(_Event):
    """A study session ended after ``duration_seconds`` (an integer, so sums are exact)."""

    type: Literal["SessionCompleted"] = "SessionCompleted"
    session_id: Identifier
    duration_seconds: Seconds


class ReviewProcessed(_Event):
    """The scheduler reviewed an item; ``new_interval`` (days) decides its mastery class."""

    type: Literal["ReviewProcessed"] = "ReviewProcessed"
    user_id: Identifier
    item_id: Identifier
    quality: Annotated[int, Field(strict=True, ge=0, le=5)]
    previous_interval: Days | None = None
    new_interval: Days
    easiness_factor: Annotated[float, Field(strict=True, gt=0, le=1000, allow_inf_nan=False)]


DomainEvent: TypeAlias = Union[
    UserCreated, SessionStarted, CorrectAnswerGiven, SessionCompleted, ReviewProcessed
]
_EVENT_CLASSES: dict[str, type[_Event]] = {
    cls.__name__: cls
    for cls in (UserCreated, SessionStarted, CorrectAnswerGiven, SessionCompleted, ReviewProcessed)
}
KNOWN_EVENT_TYPES: tuple[str, ...] = tuple(_EVENT_CLASSES)
_DOMAIN_ADAPTER: TypeAdapter[DomainEvent] = TypeAdapter(
    Annotated[DomainEvent, Field(discriminator="type")]
)


# The payload fields the statistics read, per event type (the fold's columns).
FOLD_FIELDS: tuple[str, ...] = (
    "user_id",
    "session_id",
    "item_id",
    "item_count",
    "duration_seconds",
    "quality",
    "new_interval",
    "easiness_factor",
)
FIELDS_BY_TYPE: dict[str, tuple[str, ...]] = {
    "UserCreated": ("user_id",),
    "SessionStarted": ("session_id", "user_id", "item_count"),
    "CorrectAnswerGiven": ("session_id", "item_id"),
    "SessionCompleted": ("session_id", "duration_seconds"),
    "ReviewProcessed": ("user_id", "item_id", "quality", "new_interval", "easiness_factor"),
}
_FLOAT_FIELDS = ("new_interval", "easiness_factor")


# The fold columns of each known type as one function (the append path calls it per event):
# what fold_fields computes, spelt out; tests/test_store.py checks the two agree.
_FOLD_ROWS: dict[str, Callable[[Mapping[str, Any]], tuple[Any, ...]]] = {
    "UserCreated": lambda d: (d["user_id"], None, None, None, None, None, None, None),
    "SessionStarted": lambda d: (d["user_id"], d["session_id"], None, d["item_count"], None, None, None, None),
    "CorrectAnswerGiven": lambda d: (None, d["session_id"], d["item_id"], None, None, None, None, None),
    "SessionCompleted": lambda d: (None, d["session_id"], None, None, d["duration_seconds"], None, None, None),
    "ReviewProcessed": lambda d: (
        d["user_id"],
        None,
        d["item_id"],
        None,
        None,
        d["quality"],
        float(d["new_interval"]),
        float(d["easiness_factor"]),
    ),
}
_NO_FOLD: tuple[Any, ...] = (None,) * len(FOLD_FIELDS)


def _no_fold(data: Mapping[str, Any]) -> tuple[Any, ...]:
    return _NO_FOLD


def fold_fields(event_type: str, data: Mapping[str, Any]) -> tuple[Any, ...]:
    """The typed copy of a validated event's fold fields, in :data:`FOLD_FIELDS` order.

    Fields that do not belong to the event's type are ``None``; so is everything of an
    unknown type.
    """
    return _FOLD_ROWS.get(event_type, _no_fold)(data)


def format_timestamp(value: datetime) -> str:
    """Format an aware datetime as the store's canonical UTC text, ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    if type(value) is not datetime:  # a subclass (pandas' Timestamp) may format differently
        value = datetime(*value.timetuple()[:6], value.microsecond, tzinfo=UTC)
    # isoformat (several times faster than strftime, and it writes the year with four
    # digits, which strftime does not below 1000); its "+00:00" becomes the "Z".
    return value.isoformat(timespec="microseconds")[:-6] + "Z"


class EventMetadata(BaseModel):
    """Who and when: ``timestamp`` is when the event happened in the learning app.

    A naive ``timestamp`` is taken to be UTC; it is stored in UTC with microseconds.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    correlation_id: str | None = None
    causation_id: str | None = None
    user_id: Annotated[str, Field(strict=True, min_length=1, max_length=256)] | None = None
    timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @field_validator("timestamp")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        try:
            value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        except OverflowError:  # 0001-01-01T00:00+01:00, say: a ValueError becomes a validation error
            raise ValueError("timestamp is out of range once converted to UTC") from None
        if not 1900 <= value.year <= 9000:  # frames.YEAR_RANGE: the years the fold accepts
            raise ValueError("timestamp must be between the years 1900 and 9000")
        return value

    def to_data(self) -> dict[str, Any]:
        """The metadata's JSON form, with the canonical timestamp text."""
        return {
            "user_id": self.user_id,
            "timestamp": format_timestamp(self.timestamp),
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
        }


class PersistedEvent(BaseModel):
    """An event as the store holds it: its place in its stream and in the whole log."""

    model_config = ConfigDict(frozen=True)

    event_id: str
    stream_id: str
    stream_version: int
    global_position: int
    event_type: str
    event_data: dict[str, Any]
    metadata: EventMetadata
    created_at: datetime

    @property
    def event(self) -> DomainEvent | None:
        """The typed domain event, or ``None`` for a type the Progress Context does not know."""
        if self.event_type not in _EVENT_CLASSES:
            return None
        return parse_event(self.event_data)


class Snapshot(BaseModel):
    """The state of a stream (or of a projection) at ``version``, as opaque bytes."""

    model_config = ConfigDict(frozen=True)

    stream_id: str
    version: int
    state: bytes
    created_at: datetime | None = None

    @classmethod
    def from_json(cls, stream_id: str, version: int, state: Any) -> Snapshot:
        """A snapshot whose state is a JSON-serialisable object."""
        return cls(stream_id=stream_id, version=version, state=pydantic_core.to_json(state))

    def json_state(self) -> Any:
        """The state decoded from JSON (for snapshots made by :meth:`from_json`)."""
        return json.loads(self.state)


def parse_event(data: Mapping[str, Any]) -> DomainEvent:
    """Validate the JSON form of a known event and return the typed event.

    Raises
    ------
    EventValidationError
        When a field is missing, of the wrong type or out of range.
    """
    try:
        return _DOMAIN_ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise _validation_error(exc, "event_data") from None


def _validation_error(exc: ValidationError, prefix: str) -> EventValidationError:
    errors = [
        (".".join([prefix, *(str(p) for p in err["loc"])]), err["msg"]) for err in exc.errors()
    ]
    text = "; ".join(f"{loc}: {msg}" for loc, msg in errors)
    return EventValidationError(f"invalid event: {text}", errors=errors)


EventLike: TypeAlias = Union[_Event, Mapping[str, Any]]
NewEvent: TypeAlias = Union[EventLike, tuple[EventLike, "EventMetadata | Mapping[str, Any] | None"]]


# Control characters, and lone surrogates (from "\ud800"), which no database can store as UTF-8.
_CONTROL = re.compile(r"[\x00-\x1f\ud800-\udfff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _check_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 256:
        raise EventValidationError(f"{what} must be a non-empty string of at most 256 characters")
    bad = _CONTROL.search(value)
    if bad:
        if bad.group() >= "\ud800":
            raise EventValidationError(f"{what} must not contain a lone surrogate (it is not valid UTF-8)")
        raise EventValidationError(f"{what} must not contain control characters")
    return value


def encode_new_event(item: NewEvent) -> tuple[str, dict[str, Any], EventMetadata]:
    """Validate one item given to ``append_events``; return (type, JSON data, metadata).

    Known types are validated against their schema; unknown types are kept as they
    come, as long as they are JSON objects with a ``type``.
    """
    if isinstance(item, tuple):
        if len(item) != 2:
            raise EventValidationError("an event with metadata must be a pair (event, metadata)")
        event, meta = item
    else:
        event, meta = item, None
    # type() before isinstance(): an import checks a million dicts, and isinstance() of an
    # abstract class (Mapping, and pydantic's models) takes the slow path. (A model is not
    # a Mapping, so the order of the two branches does not matter otherwise.)
    if type(event) is dict or isinstance(event, Mapping):
        event_type = _check_name(event.get("type"), "event_data.type")
        cls = _EVENT_CLASSES.get(event_type)
        if cls is not None:
            try:
                model = cls.model_validate(event)
            except ValidationError as exc:
                raise _validation_error(exc, "event_data") from None
            data = _known_data(model)
        else:
            data = _json_object(event)
    elif isinstance(event, _Event):
        data = _known_data(event)
    else:
        raise EventValidationError(
            f"an event must be a domain event or a mapping with a 'type', not {type(event).__name__}"
        )
    _check_name(data["type"], "event_data.type")
    if meta is None:
        metadata = EventMetadata()
    elif type(meta) is dict or isinstance(meta, Mapping):
        try:
            metadata = EventMetadata.model_validate(meta if type(meta) is dict else dict(meta))
        except ValidationError as exc:
            raise _validation_error(exc, "metadata") from None
    elif isinstance(meta, EventMetadata):
        metadata = meta
    else:
        raise EventValidationError(f"metadata must be EventMetadata or a mapping, not {type(meta).__name__}")
    _check_text(data, metadata)
    return data["type"], data, metadata


def _known_data(event: _Event) -> dict[str, Any]:
    # Fields other contexts add are kept, but only as plain JSON that the store can write.
    for key, value in (event.model_extra or {}).items():
        _json_object({key: value}, f"event_data.{key}")
    return event.to_data()


def _check_text(data: Mapping[str, Any], metadata: EventMetadata) -> None:
    # Identifiers and metadata go to typed text columns: PostgreSQL text cannot hold NUL (and
    # the fold treats an identifier with NUL as malformed); no database stores a lone surrogate.
    texts = [value for value in data.values() if isinstance(value, str)]
    texts += [value for value in (metadata.user_id, metadata.correlation_id, metadata.causation_id) if value]
    joined = "".join(texts)
    if "\x00" not in joined and not _SURROGATE.search(joined):  # the usual case: one scan of all the text
        return
    fold = FIELDS_BY_TYPE.get(data["type"], ())
    where = [(f"event_data.{name}", value, name in fold) for name, value in data.items()]
    where += [(f"metadata.{name}", getattr(metadata, name), True) for name in ("user_id", "correlation_id", "causation_id")]
    for loc, value, is_column in where:
        if not isinstance(value, str):
            continue
        problem = None
        if is_column and "\x00" in value:
            problem = "must not contain a NUL character"
        elif _SURROGATE.search(value):
            problem = "must not contain a lone surrogate (it is not valid UTF-8)"
        if problem:
            raise EventValidationError(f"invalid event: {loc}: {problem}", errors=[(loc, problem)])


def _json_object(value: Mapping[str, Any], where: str = "event_data") -> dict[str, Any]:
    # Unknown events are stored as they come, but only if they are plain finite JSON that
    # the store's encoder can write: no NaN, no lone surrogate, not nested too deeply.
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
        text.encode("utf-8")
        result: dict[str, Any] = json.loads(text)
        dumps(result)
    except (TypeError, ValueError, RecursionError) as exc:  # UnicodeError, SerializationError: ValueErrors
        raise EventValidationError(f"{where} is not plain JSON: {exc}") from None
    return result


def dumps(data: Mapping[str, Any]) -> str:
    """Compact UTF-8 JSON text, the store's encoding of payloads and metadata.

    Only for validated data: the schemas (and ``_json_object`` for unknown types) have
    already refused NaN and infinities, so the fast serializer cannot meet them.
    """
    try:
        return pydantic_core.to_json(data).decode()
    except (TypeError, ValueError, pydantic_core.PydanticSerializationError) as exc:
        raise SerializationError(f"cannot encode as JSON: {exc}") from None
