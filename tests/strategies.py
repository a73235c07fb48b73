"""Hypothesis strategies for raw event logs: realistic, but adversarial where the spec has edges.

A raw log is a list of rows ``(global_position, event_type, event_data JSON text,
metadata JSON text)`` with ascending positions starting at 1 (sometimes with holes), the
form :func:`progress_lab.frames.frame_from_raw` and :class:`progress_lab.reference.ReferenceFold`
take.

The logs draw from a *small* pool of users, sessions and items (2–4 of each) so that
sessions collide, and they mix random events with scenario templates that hit the spec's
edge cases on purpose (completed twice, answers after completion, completion before
start, duplicate starts, answers and completions without a metadata user, mastery lapses
across the cut-offs, streaks, ``item_count`` 0, more correct items than ``item_count``),
timestamps within minutes of UTC midnight, local midnight and the day-start hour, DST
transition days, events out of time order, unknown event types, and corrupt rows of known
types that every fold must reject as ``malformed``.

:func:`annotated_logs` also says which positions are corrupt (and how) and which scenarios
it used, so the tests can check that the corrupt rows are rejected and that the edge
cases were really drawn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import strategies as st

from progress_lab.events import format_timestamp
from progress_lab.projections import FoldOptions

__all__ = [
    "RawRow",
    "Log",
    "TIMEZONES",
    "DAY_START_HOURS",
    "INTERESTING_DATES",
    "INTERVALS",
    "CORRUPTIONS",
    "SCENARIOS",
    "fold_options",
    "annotated_logs",
    "event_logs",
    "logs_and_options",
    "cut_points",
    "split",
    "row",
    "user_created",
    "session_started",
    "correct_answer",
    "session_completed",
    "review",
    "ts",
]

RawRow = tuple[int, str, str | None, str | None]

TIMEZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata")
DAY_START_HOURS = (0, 4, 23)
CUTOFFS = ((7.0, 21.0), (3.0, 10.0))

# DST transitions (Berlin: 2026-03-29, 2026-10-25; New York: 2026-03-08, 2026-11-01),
# a year boundary and a leap day.
INTERESTING_DATES = (
    date(2026, 3, 29),
    date(2026, 10, 25),
    date(2026, 3, 8),
    date(2026, 11, 1),
    date(2025, 12, 31),
    date(2024, 2, 28),
)

# new_interval values on and around both sets of cut-offs (7/21 and 3/10), ints and floats.
INTERVALS = (0, 0.0, 0.5, 1, 1.0, 2, 2.999, 3, 6.999, 7, 7.0, 9.999, 10, 20.5, 21, 21.0, 25, 30, 400, 1_000_000)

USER_CANDIDATES = ("u1", "u2", "u3", "u4", "42", "true", "ü-5", "{u}")  # some look like other JSON types
SESSION_CANDIDATES = ("s1", "s2", "s3", "s4", "7", "[s]")
ITEM_CANDIDATES = ("a", "b", "c", "d", "-1", "false")
UNKNOWN_TYPES = ("DeckCreated", "ItemAdded", "UserDeleted", "sessionstarted", "ReviewProcessedV2", "")

SCENARIOS = (
    "completed_twice",
    "answer_after_completion",
    "completion_before_start",
    "duplicate_start",
    "no_meta_user_after_start",
    "no_meta_user_before_start",
    "lapse",
    "streak",
    "item_count_zero",
    "more_correct_than_items",
    "old_event",
)

CORRUPTIONS = (
    "invalid_json_data",
    "invalid_json_meta",
    "float_for_int",
    "string_for_int",
    "bool_for_int",
    "out_of_range_int",
    "negative",
    "non_finite",
    "missing_field",
    "null_field",
    "type_differs",
    "noncanonical_timestamp",
    "numeric_id",
    "meta_not_object",
    "data_not_object",
    "bad_identifier",
)

_REQUIRED = {
    "UserCreated": ("user_id",),
    "SessionStarted": ("session_id", "user_id", "item_count"),
    "CorrectAnswerGiven": ("session_id", "item_id"),
    "SessionCompleted": ("session_id", "duration_seconds"),
    "ReviewProcessed": ("user_id", "item_id", "quality", "new_interval", "easiness_factor"),
}
_INT_FIELDS = {"SessionStarted": ("item_count",), "SessionCompleted": ("duration_seconds",), "ReviewProcessed": ("quality",)}
_FLOAT_FIELDS = {"ReviewProcessed": ("new_interval", "easiness_factor")}
_ID_FIELDS = {
    "UserCreated": ("user_id",),
    "SessionStarted": ("session_id", "user_id"),
    "CorrectAnswerGiven": ("session_id", "item_id"),
    "SessionCompleted": ("session_id",),
    "ReviewProcessed": ("user_id", "item_id"),
}
_KNOWN = tuple(_REQUIRED)
# A placeholder replaced by raw JSON text that json.dumps cannot write (1e400, NaN, 2**64, ...).
_RAW = "\x01RAW\x01"


# -- plain builders, shared with the example tests ------------------------------------------


def ts(text: str) -> str:
    """The canonical timestamp text of ``YYYY-MM-DDTHH:MM[:SS[.ffffff]]`` read as UTC."""
    return format_timestamp(datetime.fromisoformat(text).replace(tzinfo=UTC))


def _meta(timestamp: str, user_id: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"user_id": user_id, "timestamp": timestamp, "correlation_id": None, "causation_id": None, **extra}


def row(position: int, event_type: str, data: dict[str, Any], meta: dict[str, Any]) -> RawRow:
    """A raw row with the store's compact JSON encoding."""
    return (position, event_type, _dumps(data), _dumps(meta))


def user_created(position: int, user_id: str, timestamp: str, email: str | None = None) -> RawRow:
    data = {"type": "UserCreated", "user_id": user_id, "email": email or f"{user_id}@example.com", "display_name": "Ada"}
    return row(position, "UserCreated", data, _meta(timestamp, user_id))


def session_started(position: int, session_id: str, user_id: str, item_count: int, timestamp: str) -> RawRow:
    data = {"type": "SessionStarted", "session_id": session_id, "user_id": user_id, "item_count": item_count, "deck_id": "d1"}
    return row(position, "SessionStarted", data, _meta(timestamp, user_id))


def correct_answer(position: int, session_id: str, item_id: str, timestamp: str, meta_user: str | None) -> RawRow:
    data = {"type": "CorrectAnswerGiven", "session_id": session_id, "item_id": item_id, "response_time_ms": 900}
    return row(position, "CorrectAnswerGiven", data, _meta(timestamp, meta_user))


def session_completed(position: int, session_id: str, duration: int, timestamp: str, meta_user: str | None) -> RawRow:
    data = {"type": "SessionCompleted", "session_id": session_id, "duration_seconds": duration}
    return row(position, "SessionCompleted", data, _meta(timestamp, meta_user))


def review(position: int, user_id: str, item_id: str, new_interval: float, timestamp: str) -> RawRow:
    data = {
        "type": "ReviewProcessed",
        "user_id": user_id,
        "item_id": item_id,
        "quality": 4,
        "previous_interval": None,
        "new_interval": new_interval,
        "easiness_factor": 2.5,
    }
    return row(position, "ReviewProcessed", data, _meta(timestamp, user_id))


def _dumps(value: Any, style: int = 0) -> str:
    if style == 1:
        text = json.dumps(value)
    elif style == 2:
        text = json.dumps(value, indent=2)  # line breaks inside the row
    elif style == 3:
        text = json.dumps(value, ensure_ascii=False, indent=1).replace("\n", "\r\n")
    else:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text


def _raw_dumps(value: Any, raw: str | None) -> str:
    text = json.dumps(value, separators=(",", ":"))  # ASCII: lone surrogates stay escaped
    return text if raw is None else text.replace(json.dumps(_RAW), raw)


# -- options ----------------------------------------------------------------------------------


_CUTOFF_S, _TIMEZONE_S, _HOUR_S = st.sampled_from(CUTOFFS), st.sampled_from(TIMEZONES), st.sampled_from(DAY_START_HOURS)


@st.composite
def fold_options(draw: st.DrawFn) -> FoldOptions:
    """Time zone, day-start hour and mastery cut-offs."""
    short, long = draw(_CUTOFF_S)
    return FoldOptions(
        timezone=draw(_TIMEZONE_S),
        day_start_hour=draw(_HOUR_S),
        short_term_days=short,
        long_term_days=long,
    )


# -- drawing helpers ----------------------------------------------------------------------------
#
# The event builders below are plain functions of ``draw`` rather than composite strategies:
# building a strategy object per event costs more than drawing the event, and these logs
# are drawn thousands of times per run. Constant strategies are built once, here.

_S: dict[tuple[int, int], st.SearchStrategy[int]] = {}


def _pick(draw: st.DrawFn, choices: tuple[Any, ...] | list[Any]) -> Any:
    """One of ``choices`` (shrinks towards the first)."""
    return choices[_int(draw, 0, len(choices) - 1)]


def _int(draw: st.DrawFn, low: int, high: int) -> int:
    key = (low, high)
    strategy = _S.get(key)
    if strategy is None:
        strategy = _S[key] = st.integers(low, high)
    return draw(strategy)


@dataclass
class _Pools:
    users: tuple[str, ...]
    sessions: tuple[str, ...]
    items: tuple[str, ...]
    base: date
    zone: ZoneInfo
    day_start_hour: int


# -- timestamps -------------------------------------------------------------------------------

_DAY_OFFSETS = (0, 1, -1, 2, 3, -2)
_TIME_KINDS = ("any", "utc_midnight", "local_midnight", "day_start", "dst_window", "any")
_MICROS = (0, 999_999, 500_000, 1, 123_456)
_UTC_ZONE = ZoneInfo("UTC")


def _timestamp(draw: st.DrawFn, pools: _Pools, day: date | None = None) -> str:
    """Canonical text of an instant near the edges of a study day (or anywhere in it)."""
    if day is None:
        day = pools.base + timedelta(days=_pick(draw, _DAY_OFFSETS))
    kind = _pick(draw, _TIME_KINDS)
    micro = _pick(draw, _MICROS)
    if kind == "any":
        minute = _int(draw, 0, 24 * 60 - 1)
        naive = datetime.combine(day, time(minute // 60, minute % 60, _int(draw, 0, 59), micro))
        zone = pools.zone
    elif kind == "dst_window":  # 01:00-03:59 local: where the DST switches happen
        naive = datetime.combine(day, time(1, 0, 0, micro)) + timedelta(minutes=_int(draw, 0, 179))
        zone = pools.zone
    else:
        # within a few minutes either side of 00:00 UTC, 00:00 local or the day-start hour
        hour = pools.day_start_hour if kind == "day_start" else 0
        zone = _UTC_ZONE if kind == "utc_midnight" else pools.zone
        delta = timedelta(seconds=_int(draw, -180, 180), microseconds=micro)
        naive = datetime.combine(day, time(hour)) + delta
    aware = naive.replace(tzinfo=zone, fold=_pick(draw, (0, 1)))
    return format_timestamp(aware)


# -- events -----------------------------------------------------------------------------------


@dataclass
class _Event:
    event_type: str
    data: Any
    meta: Any
    data_text: str | None = None
    meta_text: str | None = None
    corruption: str | None = None
    raw_text: bool = False  # data_text / meta_text hold the row's texts as they are


_DRAW = object()  # "draw this argument"


def _meta_user(draw: st.DrawFn, pools: _Pools, prefer: str | None = None) -> str | None:
    choice = _pick(draw, ("none", "prefer", "any", "none"))
    if choice == "none":
        return None
    if choice == "prefer" and prefer is not None:
        return prefer
    return _pick(draw, pools.users)


def _user_created(draw: st.DrawFn, pools: _Pools, day: date | None = None) -> _Event:
    user = _pick(draw, pools.users)
    data = {"type": "UserCreated", "user_id": user, "email": f"{user}@example.com", "display_name": f"Learner {user}"}
    return _Event("UserCreated", data, _meta(_timestamp(draw, pools, day), _meta_user(draw, pools, user)))


def _started(
    draw: st.DrawFn, pools: _Pools, session: str | None = None, user: str | None = None, day: date | None = None,
    item_count: int | None = None,
) -> _Event:
    session = session or _pick(draw, pools.sessions)
    user = user or _pick(draw, pools.users)
    if item_count is None:
        item_count = _pick(draw, (2, 0, 1, 3, 4, 5))
    data = {"type": "SessionStarted", "session_id": session, "user_id": user, "item_count": item_count, "deck_id": "deck-1"}
    return _Event("SessionStarted", data, _meta(_timestamp(draw, pools, day), _meta_user(draw, pools, user)))


def _answer(
    draw: st.DrawFn, pools: _Pools, session: str | None = None, item: str | None = None, meta_user: Any = _DRAW,
    day: date | None = None,
) -> _Event:
    session = session or _pick(draw, pools.sessions)
    item = item or _pick(draw, pools.items)
    data = {"type": "CorrectAnswerGiven", "session_id": session, "item_id": item, "response_time_ms": 850}
    user = _meta_user(draw, pools) if meta_user is _DRAW else meta_user
    return _Event("CorrectAnswerGiven", data, _meta(_timestamp(draw, pools, day), user))


_DURATIONS = (90, 0, 1, 59, 60, 61, 119, 120, 1799, 3600, 7201, 1_000_000_000)


def _completed(
    draw: st.DrawFn, pools: _Pools, session: str | None = None, meta_user: Any = _DRAW, day: date | None = None
) -> _Event:
    session = session or _pick(draw, pools.sessions)
    data = {"type": "SessionCompleted", "session_id": session, "duration_seconds": _pick(draw, _DURATIONS)}
    user = _meta_user(draw, pools) if meta_user is _DRAW else meta_user
    return _Event("SessionCompleted", data, _meta(_timestamp(draw, pools, day), user))


def _review(
    draw: st.DrawFn, pools: _Pools, user: str | None = None, item: str | None = None, interval: float | None = None,
    day: date | None = None,
) -> _Event:
    user = user or _pick(draw, pools.users)
    item = item or _pick(draw, pools.items)
    data = {
        "type": "ReviewProcessed",
        "user_id": user,
        "item_id": item,
        "quality": _int(draw, 0, 5),
        "previous_interval": _pick(draw, (None, 0, 1.0, 6)),
        "new_interval": _pick(draw, INTERVALS) if interval is None else interval,
        "easiness_factor": _pick(draw, (2.5, 1.3, 0.001, 1000, 2)),
    }
    return _Event("ReviewProcessed", data, _meta(_timestamp(draw, pools, day), _meta_user(draw, pools, user)))


def _unknown(draw: st.DrawFn, pools: _Pools) -> _Event:
    event_type = _pick(draw, UNKNOWN_TYPES)
    kind = _pick(draw, ("object", "known_payload", "garbage"))
    timestamp = _timestamp(draw, pools)
    if kind == "garbage":  # unknown types are ignored whatever their texts are
        data_text = _pick(draw, ("{not json", "[]", "null", "5", '{"type": 5}', None))
        meta_text = _pick(draw, ("{", "[]", json.dumps(_meta(timestamp)), None))
        return _Event(event_type, None, None, data_text, meta_text, raw_text=True)
    if kind == "known_payload":  # looks like a known event, but the row's type is unknown
        known = _pick(draw, (_started, _completed, _review, _answer))(draw, pools)
        return _Event(event_type, known.data, known.meta)
    data = {"type": event_type, "user_id": _pick(draw, pools.users), "deck_id": "deck-9", "n": 3.5}
    return _Event(event_type, data, _meta(timestamp, _meta_user(draw, pools)))


_RANDOM_EVENTS = (_answer, _completed, _review, _started, _user_created, _answer, _completed, _review, _unknown)


def _random_event(draw: st.DrawFn, pools: _Pools) -> _Event:
    return _pick(draw, _RANDOM_EVENTS)(draw, pools)


# -- corrupt rows -----------------------------------------------------------------------------

_BUILDERS = {
    "UserCreated": _user_created,
    "SessionStarted": _started,
    "CorrectAnswerGiven": _answer,
    "SessionCompleted": _completed,
    "ReviewProcessed": _review,
}


def _types_for(kind: str) -> tuple[str, ...]:
    if kind in ("float_for_int", "string_for_int", "bool_for_int", "out_of_range_int"):
        return tuple(_INT_FIELDS)
    if kind in ("negative", "non_finite"):
        return (*_INT_FIELDS, *(t for t in _FLOAT_FIELDS if t not in _INT_FIELDS))
    return _KNOWN


_NONCANONICAL = (
    "seconds",  # 2026-01-01T00:00:00Z
    "+01:00",
    "+00:00",
    "naive",
    "space",
    "millis",
    "lower_z",
    "date",
    "2026-02-30T00:00:00.000000Z",
    "2026-01-01T24:00:00.000000Z",
    "2026-12-31T23:59:60.000000Z",  # a leap second
    "+026-01-01T00:00:00.000000Z",  # a signed year, 27 characters
    "0000-01-01T00:00:00.000000Z",  # year 0
    "2026-1-01T00:00:00.0000000Z",  # 27 characters, but not canonical
    "leading_space",
    None,
    1767225600,
    "missing",
)


def _corrupt(draw: st.DrawFn, pools: _Pools, nth: int = 0) -> _Event:
    """A known event made malformed in one of the ways in :data:`CORRUPTIONS`.

    ``nth`` (the number of corrupt rows drawn before in this log) rotates the choices, so
    one log's corrupt rows differ in kind even when the drawn indexes are all small.
    """
    kind = CORRUPTIONS[(_int(draw, 0, len(CORRUPTIONS) - 1) + nth) % len(CORRUPTIONS)]
    event_type = _pick(draw, _types_for(kind))
    event = _BUILDERS[event_type](draw, pools)
    data: dict[str, Any] = dict(event.data)
    meta: dict[str, Any] = dict(event.meta)
    raw: str | None = None
    numeric = (*_INT_FIELDS.get(event_type, ()), *_FLOAT_FIELDS.get(event_type, ()))
    if kind == "invalid_json_data":
        text = _raw_dumps(data, None)
        broken = _pick(draw, (text[:-1], text.replace('"', "'"), text + "}", text.replace(":", "", 1), ""))
        return _Event(event_type, None, None, broken, _raw_dumps(meta, None), kind, raw_text=True)
    if kind == "invalid_json_meta":
        text = _raw_dumps(meta, None)
        broken = _pick(draw, (text[:-1], "{user_id: null}", text.replace('"timestamp"', "timestamp"), ""))
        return _Event(event_type, None, None, _raw_dumps(data, None), broken, kind, raw_text=True)
    if kind == "meta_not_object":
        text = _pick(draw, ("[]", "null", '"u1"', "5", "true", '[{"user_id": "u1"}]', None))
        return _Event(event_type, None, None, _raw_dumps(data, None), text, kind, raw_text=True)
    if kind == "data_not_object":
        text = _pick(draw, ("[]", "null", "5", json.dumps(event_type), json.dumps([data]), None))
        return _Event(event_type, None, None, text, _raw_dumps(meta, None), kind, raw_text=True)
    if kind == "float_for_int":
        name = _pick(draw, _INT_FIELDS[event_type])
        data[name] = _pick(draw, (float(data[name]), data[name] + 0.5, 3.0, 1e3))
    elif kind == "string_for_int":
        name = _pick(draw, _INT_FIELDS[event_type])
        data[name] = _pick(draw, (str(data[name]), "3", ""))
    elif kind == "bool_for_int":
        data[_pick(draw, _INT_FIELDS[event_type])] = _pick(draw, (True, False))
    elif kind == "out_of_range_int":
        name = _pick(draw, _INT_FIELDS[event_type])
        high = {"item_count": 1_000_001, "duration_seconds": 1_000_000_001, "quality": 6}[name]
        data[name] = _RAW
        raw = str(_pick(draw, (high, 2**63, 2**64, 10**30, -(2**63) - 1)))
    elif kind == "negative":
        name = _pick(draw, numeric)
        data[name] = _pick(draw, (0, -2.5, 0.0)) if name == "easiness_factor" else _pick(draw, (-1, -60, -0.5))
    elif kind == "non_finite":
        data[_pick(draw, numeric)] = _RAW
        raw = _pick(draw, ("1e400", "-1e400", "NaN", "Infinity", "-Infinity"))
    elif kind == "missing_field":
        del data[_pick(draw, _REQUIRED[event_type])]
    elif kind == "null_field":
        data[_pick(draw, _REQUIRED[event_type])] = None
    elif kind == "type_differs":
        choice = _pick(draw, (*(t for t in _KNOWN if t != event_type), "missing", "lower", "number"))
        if choice == "missing":
            del data["type"]
        else:
            data["type"] = {"lower": event_type.lower(), "number": 1}.get(choice, choice)
    elif kind == "noncanonical_timestamp":
        good = meta["timestamp"]
        variant = _NONCANONICAL[(_int(draw, 0, len(_NONCANONICAL) - 1) + nth * 5) % len(_NONCANONICAL)]
        derived = {
            "seconds": good[:19] + "Z",
            "+01:00": good[:-1] + "+01:00",
            "+00:00": good[:-1] + "+00:00",
            "naive": good[:-1],
            "space": good.replace("T", " "),
            "millis": good[:23] + "Z",
            "lower_z": good[:-1] + "z",
            "date": good[:10],
            "leading_space": " " + good,
        }
        if variant == "missing":
            del meta["timestamp"]
        else:
            meta["timestamp"] = derived.get(variant, variant) if isinstance(variant, str) else variant
    elif kind == "numeric_id":
        value = _pick(draw, (5, 7.5, True, ["u1"], {"id": "u1"}))
        if _pick(draw, ("meta", "data")) == "meta":
            meta["user_id"] = value
        else:
            data[_pick(draw, _ID_FIELDS[event_type])] = value
    elif kind == "bad_identifier":
        value = _pick(draw, ("", "x" * 257, "a\x00b", "\ud800"))
        if _pick(draw, ("meta", "data")) == "meta":
            meta["user_id"] = value
        else:
            data[_pick(draw, _ID_FIELDS[event_type])] = value
    return _Event(event_type, None, None, _raw_dumps(data, raw), _raw_dumps(meta, None), kind, raw_text=True)


# -- scenarios --------------------------------------------------------------------------------

_LAPSES = ((20.5, 21, 30, 2, 25), (30, 2, 25), (400, 0, 21), (6.999, 7, 20.5, 21), (9.999, 10, 3, 10), (0.5, 1, 7, 21))


def _scenario(draw: st.DrawFn, pools: _Pools) -> tuple[str, list[_Event]]:
    name = _pick(draw, SCENARIOS)
    session = _pick(draw, pools.sessions)
    user = _pick(draw, pools.users)
    day = pools.base + timedelta(days=_pick(draw, (0, -1, 1, -2, 2)))
    events: list[_Event]
    if name == "completed_twice":
        events = [
            _started(draw, pools, session, user, day),
            _answer(draw, pools, session, meta_user=None, day=day),
            _completed(draw, pools, session, meta_user=None, day=day),
            _completed(draw, pools, session, day=day),
        ]
    elif name == "answer_after_completion":
        events = [
            _started(draw, pools, session, user, day),
            _completed(draw, pools, session, meta_user=user, day=day),
            _answer(draw, pools, session, day=day),
        ]
    elif name == "completion_before_start":
        events = [_completed(draw, pools, session, day=day), _started(draw, pools, session, user, day)]
    elif name == "duplicate_start":
        events = [_started(draw, pools, session, user, day), _started(draw, pools, session, day=day)]
    elif name == "no_meta_user_after_start":
        events = [
            _started(draw, pools, session, user, day),
            _answer(draw, pools, session, meta_user=None, day=day),
            _answer(draw, pools, session, meta_user=None, day=day),
            _completed(draw, pools, session, meta_user=None, day=day),
        ]
    elif name == "no_meta_user_before_start":
        events = [
            _answer(draw, pools, session, meta_user=None, day=day),
            _completed(draw, pools, session, meta_user=None, day=day),
            _started(draw, pools, session, user, day),
        ]
    elif name == "lapse":
        item = _pick(draw, pools.items)
        if _pick(draw, ("fixed", "drawn")) == "fixed":
            path: tuple[float, ...] = _pick(draw, _LAPSES)
        else:
            path = tuple(_pick(draw, INTERVALS) for _ in range(_int(draw, 2, 5)))
        step = _pick(draw, (1, 0))
        events = [_review(draw, pools, user, item, value, day + timedelta(days=i * step)) for i, value in enumerate(path)]
    elif name == "streak":
        events = []
        for i in range(_int(draw, 2, 4)):
            s, d = _pick(draw, pools.sessions), day + timedelta(days=i)
            events += [_started(draw, pools, s, user, d), _completed(draw, pools, s, meta_user=user, day=d)]
    elif name == "item_count_zero":
        events = [
            _started(draw, pools, session, user, day, item_count=0),
            _answer(draw, pools, session, day=day),
            _completed(draw, pools, session, day=day),
        ]
    elif name == "more_correct_than_items":
        events = [_started(draw, pools, session, user, day, item_count=1)]
        events += [_answer(draw, pools, session, item, meta_user=None, day=day) for item in pools.items]
        events.append(_completed(draw, pools, session, meta_user=None, day=day))
    else:  # old_event: weeks before the rest, folded late
        old = pools.base - timedelta(days=_int(draw, 20, 400))
        events = [_pick(draw, (_completed, _review, _started))(draw, pools, day=old)]
    return name, events


# -- logs -------------------------------------------------------------------------------------


@dataclass
class Log:
    """A drawn raw log, with what the strategy knows about it."""

    rows: list[RawRow]
    malformed: dict[int, str] = field(default_factory=dict)  # position -> corruption kind
    scenarios: set[str] = field(default_factory=set)
    base: date = date(2026, 1, 1)


def _render(position: int, event: _Event, style: int) -> RawRow:
    if event.raw_text:
        return (position, event.event_type, event.data_text, event.meta_text)
    meta = dict(event.meta)
    if meta.get("user_id") is None and style == 1:
        del meta["user_id"]  # an absent metadata user is the same as a null one
    if style == 2:
        meta["correlation_id"] = 12345  # fields the fold does not read may have any JSON type
    return (position, event.event_type, _dumps(event.data, style), _dumps(meta, style))


_STEP_KINDS = ("random", "scenario", "corrupt", "random", "scenario", "corrupt")
_GAPS = (1, 1, 1, 1, 1, 2, 5)
_STYLES = (0, 0, 0, 0, 1, 2, 3)


def _draw_pools(draw: st.DrawFn, zone: str, hour: int) -> _Pools:
    users = draw(st.lists(st.sampled_from(USER_CANDIDATES[:4]), min_size=1, max_size=2, unique=True))
    users += draw(st.lists(st.sampled_from(USER_CANDIDATES[4:]), min_size=1, max_size=2, unique=True))
    return _Pools(
        users=tuple(users),
        sessions=tuple(draw(st.lists(st.sampled_from(SESSION_CANDIDATES), min_size=2, max_size=4, unique=True))),
        items=tuple(draw(st.lists(st.sampled_from(ITEM_CANDIDATES), min_size=2, max_size=4, unique=True))),
        base=_pick(draw, INTERESTING_DATES),
        zone=ZoneInfo(zone),
        day_start_hour=hour,
    )


@st.composite
def annotated_logs(draw: st.DrawFn, options: FoldOptions | None = None, max_steps: int = 16) -> Log:
    """A raw log (see the module docstring) with its corrupt positions and scenarios."""
    if options is None:
        zone, hour = _pick(draw, TIMEZONES), _pick(draw, DAY_START_HOURS)
    else:
        zone, hour = options.timezone, options.day_start_hour
    pools = _draw_pools(draw, zone, hour)
    count_offset = _int(draw, 0, len(CORRUPTIONS) - 1)
    log = Log(rows=[], base=pools.base)
    position = 0
    # A drawn number of steps, then "more?" coin flips: long enough logs, and still shrinkable.
    count = draw(st.one_of(st.integers(1, 3), st.integers(4, max_steps), st.integers(max_steps // 2, max_steps)))
    more = st.booleans()
    while count > 0 or (len(log.rows) < 4 * max_steps and count > -max_steps // 2 and draw(more)):
        count -= 1
        kind = _pick(draw, _STEP_KINDS)
        if kind == "scenario":
            name, events = _scenario(draw, pools)
            log.scenarios.add(name)
        elif kind == "corrupt":
            events = [_corrupt(draw, pools, len(log.malformed) + count_offset)]
        else:
            events = [_random_event(draw, pools)]
        for event in events:
            position += _pick(draw, _GAPS)  # holes in the positions
            log.rows.append(_render(position, event, _pick(draw, _STYLES)))
            if event.corruption is not None:
                log.malformed[position] = event.corruption
    return log


def event_logs(options: FoldOptions | None = None, max_steps: int = 16) -> st.SearchStrategy[list[RawRow]]:
    """Raw logs ``[(global_position, event_type, event_data, metadata), ...]``."""
    return annotated_logs(options, max_steps).map(lambda log: log.rows)


@st.composite
def logs_and_options(draw: st.DrawFn, max_steps: int = 16) -> tuple[Log, FoldOptions]:
    """Options, and a log whose timestamps crowd around that zone's midnight and day start."""
    options = draw(fold_options())
    return draw(annotated_logs(options, max_steps)), options


def cut_points(n: int, max_cuts: int = 3) -> st.SearchStrategy[list[int]]:
    """Sorted cut indexes into a log of ``n`` rows (repeats make empty batches)."""
    return st.lists(st.integers(0, n), max_size=max_cuts).map(sorted)


def split(rows: list[RawRow], cuts: list[int]) -> list[list[RawRow]]:
    """``rows`` cut before each index in ``cuts``: ``len(cuts) + 1`` batches, some maybe empty."""
    bounds = [0, *cuts, len(rows)]
    return [rows[a:b] for a, b in zip(bounds, bounds[1:])]
