"""The event store contract, held against SQLite and PostgreSQL alike (real databases, no mocks)."""

from __future__ import annotations

import json
import math
import multiprocessing
import random
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import sqlalchemy as sa

from progress_lab import (
    ConcurrencyError,
    CorrectAnswerGiven,
    EventMetadata,
    EventStore,
    EventValidationError,
    PersistedEvent,
    ReviewProcessed,
    SerializationError,
    SessionCompleted,
    SessionStarted,
    Snapshot,
    SnapshotPolicy,
    StoreUnavailableError,
    UserCreated,
    cli,
    connect,
)
from progress_lab._schema import event_store as event_table
from progress_lab.events import FOLD_FIELDS
from progress_lab.frames import FRAME_SCHEMA
from progress_lab.jsonl import export_jsonl, import_jsonl

T0 = datetime(2026, 1, 5, 8, 0, 0, 123456, tzinfo=UTC)
INJECTIONS = [
    "x'); DROP TABLE event_store; --",
    "Robert'); DELETE FROM snapshots WHERE ('1'='1",
    '" OR 1=1 --',
    "%s %(x)s :param $1 ? \\ \\\\",
    "ünïcødé 🦉 \u202e",
]


class FakeClock:
    """A clock the test moves by hand, so ``created_at`` is known exactly."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def set(self, value: datetime) -> None:
        self.now = value


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(db_url: str, clock: FakeClock) -> Iterator[EventStore]:
    with connect(db_url, clock=clock, snapshot_policy=SnapshotPolicy(keep=3)) as opened:
        yield opened


@pytest.fixture
def other_db_url(db_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A second fresh, empty database on the same backend as ``db_url``."""
    if db_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path}/other.db"
        return
    from pg_server import create_database, drop_database, unique_database_name

    admin = str(request.getfixturevalue("pg_admin_url"))
    name = unique_database_name("other")
    url = create_database(admin, name)
    try:
        yield url
    finally:
        drop_database(admin, name)


def meta(user: str | None = "u1", at: datetime = T0, **extra: Any) -> EventMetadata:
    return EventMetadata(user_id=user, timestamp=at, **extra)


def review(item: str = "i1", **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "type": "ReviewProcessed",
        "user_id": "u1",
        "item_id": item,
        "quality": 4,
        "previous_interval": 1.0,
        "new_interval": 6.0,
        "easiness_factor": 2.5,
    }
    data.update(changes)
    return data


def fields(event: PersistedEvent) -> tuple[Any, ...]:
    return (
        event.event_id,
        event.stream_id,
        event.stream_version,
        event.global_position,
        event.event_type,
        event.event_data,
        event.metadata.to_data(),
        event.created_at,
    )


def assert_empty(store: EventStore) -> None:
    assert store.head_position() == 0
    assert store.count_events() == 0
    assert store.read_all_events() == []


# -- appending and reading -----------------------------------------------------------


def test_append_and_read_round_trip(store: EventStore) -> None:
    at = datetime(2026, 1, 4, 23, 59, 59, 999999, tzinfo=UTC)
    written = store.append_events(
        "session-s1",
        [
            (SessionStarted(session_id="s1", user_id="u1", item_count=3, deck_id="d"), meta(at=at, correlation_id="c")),
            (CorrectAnswerGiven(session_id="s1", item_id="i1", response_time_ms=900), meta(causation_id="x")),
            (SessionCompleted(session_id="s1", duration_seconds=125), meta(user=None)),
        ],
    )
    read = store.read_events("session-s1")
    assert [fields(e) for e in read] == [fields(e) for e in written]
    assert [e.event for e in read] == [
        SessionStarted(session_id="s1", user_id="u1", item_count=3, deck_id="d"),
        CorrectAnswerGiven(session_id="s1", item_id="i1", response_time_ms=900),
        SessionCompleted(session_id="s1", duration_seconds=125),
    ]
    assert read[0].metadata == EventMetadata(user_id="u1", timestamp=at, correlation_id="c")
    assert read[2].metadata.user_id is None
    assert all(e.created_at == T0 for e in read)
    assert len({e.event_id for e in read}) == 3
    assert [fields(e) for e in store.read_all_events()] == [fields(e) for e in written]


def test_stream_versions_start_at_one_and_positions_are_global(store: EventStore) -> None:
    assert store.stream_version("user-u1") == 0
    assert store.read_events("user-u1") == []
    first = store.append_events("user-u1", [UserCreated(user_id="u1"), review("i1")])
    second = store.append_events("user-u2", [UserCreated(user_id="u2")])
    third = store.append_events("user-u1", [review("i2")])
    assert [(e.stream_version, e.global_position) for e in first + second + third] == [(1, 1), (2, 2), (1, 3), (3, 4)]
    assert store.stream_version("user-u1") == 3
    assert store.stream_version("user-u2") == 1
    assert store.head_position() == 4
    assert store.count_events() == 4


def test_expected_version_rules(store: EventStore) -> None:
    store.append_events("s", [UserCreated(user_id="u1")], expected_version=0)
    store.append_events("s", [review("a")], expected_version=None)
    store.append_events("s", [review("b"), review("c")], expected_version=2)
    assert store.stream_version("s") == 4

    with pytest.raises(ConcurrencyError) as caught:
        store.append_events("s", [review("d")], expected_version=0)
    assert (caught.value.stream_id, caught.value.expected_version, caught.value.actual_version) == ("s", 0, 4)
    with pytest.raises(ConcurrencyError, match=r"'s'.*version 4.*version 3") as caught:
        store.append_events("s", [review("d"), review("e")], expected_version=3)
    assert (caught.value.expected_version, caught.value.actual_version) == (3, 4)
    with pytest.raises(ConcurrencyError) as caught:
        store.append_events("new-stream", [review("d")], expected_version=1)
    assert (caught.value.stream_id, caught.value.actual_version) == ("new-stream", 0)

    assert store.head_position() == 4
    assert store.stream_version("new-stream") == 0
    for bad in (-1, True, "1", 1.0):
        with pytest.raises(EventValidationError, match="expected_version"):
            store.append_events("s", [review("f")], expected_version=bad)  # type: ignore[arg-type]
    assert store.head_position() == 4


def test_batch_with_one_invalid_event_writes_nothing(store: EventStore) -> None:
    batch: list[Any] = [UserCreated(user_id="u1"), review("i1"), review("i2", quality=9), review("i3")]
    with pytest.raises(EventValidationError) as caught:
        store.append_events("user-u1", batch)
    assert caught.value.index == 2
    assert str(caught.value).startswith("event 2:")
    assert any(loc == "event_data.quality" for loc, _ in caught.value.errors)
    assert_empty(store)
    assert store.stream_version("user-u1") == 0


def test_unknown_event_types_are_stored_unchanged(store: EventStore) -> None:
    data = {
        "type": "CardFlipped",
        "nested": {"list": [1, 2.5, "x", None, True, {"deep": []}], "empty": {}},
        "text": "line\nbreak \"quoted\" \u00e9 🦉 \\",
        "big": 2**53 + 1,
        "neg": -0.25,
    }
    (written,) = store.append_events("cards", [(data, meta())])
    (read,) = store.read_events("cards")
    assert read.event_type == "CardFlipped"
    assert read.event_data == data
    assert read.event is None
    assert fields(read) == fields(written)
    assert [e.event_data for e in store.read_events_by_type("CardFlipped")] == [data]


def test_read_events_bounds_are_inclusive(store: EventStore) -> None:
    store.append_events("s", [review(f"i{n}") for n in range(1, 6)])
    store.append_events("other", [review("x")])

    def versions(*args: Any) -> list[int]:
        return [e.stream_version for e in store.read_events("s", *args)]

    assert versions() == [1, 2, 3, 4, 5]
    assert versions(2, 4) == [2, 3, 4]
    assert versions(3, 3) == [3]
    assert versions(4) == [4, 5]
    assert versions(5, 99) == [5]
    assert versions(6) == []
    assert versions(4, 2) == []
    assert [e.event_data["item_id"] for e in store.read_events("s", 2, 3)] == ["i2", "i3"]


def test_read_all_events_from_position_limit_ascending(store: EventStore) -> None:
    for n in range(10):
        store.append_events(f"stream-{n % 3}", [review(f"i{n}")])
    everything = store.read_all_events()
    assert [e.global_position for e in everything] == list(range(1, 11))
    assert [e.event_data["item_id"] for e in everything] == [f"i{n}" for n in range(10)]
    assert [e.global_position for e in store.read_all_events(4)] == list(range(4, 11))
    assert [e.global_position for e in store.read_all_events(4, limit=3)] == [4, 5, 6]
    assert [e.global_position for e in store.read_all_events(10, limit=3)] == [10]
    assert store.read_all_events(11) == []
    assert store.read_all_events(1, limit=0) == []
    assert [e.global_position for e in store.iter_events(2, batch_size=4)] == list(range(2, 11))


def test_read_events_by_type_by_created_at(store: EventStore, clock: FakeClock) -> None:
    t = [T0 + timedelta(minutes=m) for m in range(5)]
    # created_at deliberately not in position order: the result follows global position.
    timeline: list[tuple[datetime, Any]] = [
        (t[0], review("a")),
        (t[2], review("c")),
        (t[1], review("b")),
        (t[1], UserCreated(user_id="u9")),
        (t[3], review("d")),
        (t[4], review("e")),
    ]
    for at, event in timeline:
        clock.set(at)
        store.append_events("s", [event])

    def items(*args: Any, **kwargs: Any) -> list[str]:
        return [e.event_data["item_id"] for e in store.read_events_by_type("ReviewProcessed", *args, **kwargs)]

    assert items() == ["a", "c", "b", "d", "e"]
    assert items(t[1], t[3]) == ["c", "b"]  # from inclusive, to exclusive
    assert items(t[1]) == ["c", "b", "d", "e"]
    assert items(None, t[1]) == ["a"]
    assert items(t[1] + timedelta(microseconds=1), t[3] + timedelta(microseconds=1)) == ["c", "d"]
    assert items(t[1], None, 2) == ["c", "b"]
    assert items(t[4] + timedelta(seconds=1)) == []
    by_type = store.read_events_by_type("ReviewProcessed", t[1], t[3])
    assert [e.created_at for e in by_type] == [t[2], t[1]]
    assert [e.global_position for e in by_type] == [2, 3]
    assert [e.event_data["user_id"] for e in store.read_events_by_type("UserCreated")] == ["u9"]
    assert store.read_events_by_type("Nope") == []


def test_snapshots_latest_and_retention(store: EventStore, clock: FakeClock) -> None:
    assert store.get_latest_snapshot("s") is None
    for version in (200, 100, 400, 300, 500):
        store.save_snapshot(Snapshot.from_json("s", version, {"v": version}))
    store.save_snapshot(Snapshot(stream_id="other", version=7, state=b"\x00\xffraw"))
    kept = store.list_snapshots("s")
    assert [s.version for s in kept] == [300, 400, 500]  # keep=3: the oldest go
    latest = store.get_latest_snapshot("s")
    assert latest is not None
    assert (latest.version, latest.json_state(), latest.created_at) == (500, {"v": 500}, T0)
    below = store.get_latest_snapshot("s", max_version=450)
    assert below is not None and below.version == 400
    assert store.get_latest_snapshot("s", max_version=299) is None
    other = store.get_latest_snapshot("other")
    assert other is not None and other.state == b"\x00\xffraw"
    # Saving a version again replaces it; an explicit policy overrides the store's.
    store.save_snapshot(Snapshot.from_json("s", 500, {"v": "again"}))
    store.save_snapshot(Snapshot.from_json("s", 600, {"v": 600}), SnapshotPolicy(keep=1))
    assert [s.version for s in store.list_snapshots("s")] == [600]
    assert [s.version for s in store.list_snapshots("other")] == [7]
    assert SnapshotPolicy() == SnapshotPolicy(every=100, keep=3)


_STARTED = {"type": "SessionStarted", "session_id": "s1", "user_id": "u1", "item_count": 3}
_BAD_EVENTS: list[tuple[str, Any, str]] = [
    ("negative count", {**_STARTED, "item_count": -1}, "item_count"),
    ("negative duration", {"type": "SessionCompleted", "session_id": "s1", "duration_seconds": -5}, "duration_seconds"),
    ("NaN easiness", review(easiness_factor=math.nan), "easiness_factor"),
    ("inf easiness", review(easiness_factor=math.inf), "easiness_factor"),
    ("inf interval", review(new_interval=-math.inf), "new_interval"),
    ("zero easiness", review(easiness_factor=0.0), "easiness_factor"),
    ("quality out of range", review(quality=6), "quality"),
    ("missing field", {"type": "SessionStarted", "session_id": "s1", "item_count": 3}, "user_id"),
    ("string for int", {**_STARTED, "item_count": "3"}, "item_count"),
    ("bool for int", {**_STARTED, "item_count": True}, "item_count"),
    ("float for int", {**_STARTED, "item_count": 3.0}, "item_count"),
    ("string for float", review(new_interval="6.0"), "new_interval"),
    ("empty identifier", {**_STARTED, "user_id": ""}, "user_id"),
    ("int identifier", {**_STARTED, "session_id": 17}, "session_id"),
    ("no type", {"session_id": "s1"}, "type"),
    ("type with control char", {"type": "Bad\nType"}, "type"),
    ("NaN in unknown event", {"type": "Custom", "value": math.nan}, "JSON"),
    ("not a mapping", "SessionStarted", "mapping"),
    ("metadata user id wrong type", ({**_STARTED}, {"user_id": 5, "timestamp": "2026-01-05T08:00:00Z"}), "user_id"),
    ("metadata unknown key", ({**_STARTED}, {"timestamp": "2026-01-05T08:00:00Z", "ip": "1.2.3.4"}), "ip"),
    ("metadata bad timestamp", ({**_STARTED}, {"timestamp": "yesterday"}), "timestamp"),
    ("NUL in a fold identifier", {**_STARTED, "session_id": "s\x00"}, "event_data.session_id: must not contain a NUL"),
    ("lone surrogate in another field", {**_STARTED, "deck_id": "d\ud800"}, "event_data.deck_id: must not contain a lone surrogate"),
    ("NUL in metadata", ({**_STARTED}, {"timestamp": "2026-01-05T08:00:00Z", "correlation_id": "c\x00"}), "metadata.correlation_id"),
    ("lone surrogate in metadata", ({**_STARTED}, {"timestamp": "2026-01-05T08:00:00Z", "causation_id": "\udfff"}), "metadata.causation_id"),
]


def test_a_nul_outside_the_typed_columns_is_kept(store: EventStore) -> None:
    # Only text that goes to a typed column must be free of NUL; the JSON text holds it escaped.
    store.append_events("stream", [{**_STARTED, "deck_id": "d\x00"}])
    assert store.read_all_events()[0].event_data["deck_id"] == "d\x00"


def test_invalid_events_are_rejected_and_nothing_written(store: EventStore) -> None:
    # One test per backend, not one per case: each PostgreSQL case would cost a fresh database.
    for name, event, needle in _BAD_EVENTS:
        try:
            store.append_events("stream", [UserCreated(user_id="u1"), event])
        except EventValidationError as exc:
            assert needle in str(exc), (name, str(exc))
            assert exc.index == 1 and str(exc).startswith("event 1:"), name
        else:
            pytest.fail(f"{name}: accepted")
        assert_empty(store)


def test_a_new_sqlite_file_gets_16k_pages_and_an_older_file_keeps_its_own(tmp_path: Path) -> None:
    import sqlite3

    from progress_lab.store import SQLITE_PAGE_SIZE

    assert SQLITE_PAGE_SIZE == 16384
    fresh, older = tmp_path / "fresh.db", tmp_path / "older.db"
    with sqlite3.connect(older) as conn:  # a file another tool (or an older progress_lab) made
        conn.execute("PRAGMA page_size=4096")
        conn.execute("CREATE TABLE other_tool (x)")
    for path in (fresh, older):
        with connect(f"sqlite:///{path}") as store:
            store.append_events("s", [UserCreated(user_id="u1")])
            assert store.count_events() == 1
    page_size = {path: sqlite3.connect(path).execute("PRAGMA page_size").fetchone()[0] for path in (fresh, older)}
    assert page_size == {fresh: 16384, older: 4096}


def test_invalid_stream_ids_are_rejected(store: EventStore) -> None:
    for stream_id in ["", "a\nb", "a\x00b", "tab\there", "esc\x1b", "x" * 257, 42, None]:
        with pytest.raises(EventValidationError, match="stream_id"):
            store.append_events(stream_id, [UserCreated(user_id="u1")])  # type: ignore[arg-type]
        assert_empty(store)
    assert store.append_events("x" * 256, [UserCreated(user_id="u1")])[0].stream_version == 1


def test_injection_strings_are_stored_literally(store: EventStore) -> None:
    for n, text in enumerate(INJECTIONS):
        written = store.append_events(
            text,
            [
                ({"type": text, "payload": text}, meta(user=text, correlation_id=text)),
                (SessionStarted(session_id=text, user_id=text, item_count=1), meta(user=text)),
            ],
        )
        assert store.stream_version(text) == 2
        read = store.read_events(text)
        assert [fields(e) for e in read] == [fields(e) for e in written]
        assert read[0].event_type == text and read[0].event_data == {"type": text, "payload": text}
        assert read[1].metadata.user_id == text and read[1].event_data["user_id"] == text
        assert [e.event_data["payload"] for e in store.read_events_by_type(text)] == [text]
        assert store.read_events(text + "'") == []
        store.save_snapshot(Snapshot.from_json(text, 1, text))
        snapshot = store.get_latest_snapshot(text)
        assert snapshot is not None and snapshot.json_state() == text
        frame = store.events_frame(2 * n + 1)
        assert frame["stream_id"].to_list() == [text, text]
        assert frame["event_type"].to_list() == [text, "SessionStarted"]
        assert frame["user_id"][1] == text
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM event_store")).scalar_one() == 2 * len(INJECTIONS)
        assert conn.execute(sa.text("SELECT count(*) FROM snapshots")).scalar_one() == len(INJECTIONS)


# -- the events frame ----------------------------------------------------------------


def test_events_frame_types_and_values(store: EventStore, clock: FakeClock) -> None:
    at = datetime(2026, 1, 5, 8, 30, 0, 250000, tzinfo=UTC)
    store.append_events(
        "session-s1",
        [
            (SessionStarted(session_id="s1", user_id="u1", item_count=4), meta(at=at, correlation_id="c1")),
            (CorrectAnswerGiven(session_id="s1", item_id="i7"), meta(user=None, at=at)),
            (ReviewProcessed(user_id="u1", item_id="i7", quality=5, new_interval=21.5, easiness_factor=2.6), meta(at=at)),
        ],
    )
    clock.set(T0 + timedelta(hours=1))
    store.append_events("misc", [({"type": "Custom", "item_count": "nope"}, meta(at=at))])
    frame = store.events_frame()
    assert frame.schema == pl.Schema(FRAME_SCHEMA)
    assert frame["global_position"].to_list() == [1, 2, 3, 4]
    assert frame["stream_version"].to_list() == [1, 2, 3, 1]
    assert frame["event_type"].to_list() == ["SessionStarted", "CorrectAnswerGiven", "ReviewProcessed", "Custom"]
    assert frame["created_at"].to_list() == [T0, T0, T0, T0 + timedelta(hours=1)]
    assert frame["timestamp"].to_list() == [at] * 4
    assert frame["metadata_user_id"].to_list() == ["u1", None, "u1", "u1"]
    assert frame["correlation_id"].to_list() == ["c1", None, None, None]
    assert frame["user_id"].to_list() == ["u1", None, "u1", None]
    assert frame["item_id"].to_list() == [None, "i7", "i7", None]
    assert frame["item_count"][0] == 4
    assert frame["quality"][2] == 5
    assert frame["new_interval"][2] == 21.5
    assert frame["easiness_factor"][2] == 2.6
    assert frame["malformed"].to_list() == [None] * 4  # unknown types are not checked
    assert store.events_frame(2, 3)["global_position"].to_list() == [2, 3]
    assert store.events_frame(5).height == 0
    raw = store.events_frame(4, 4, raw=True)
    assert json.loads(raw["event_data"][0]) == {"type": "Custom", "item_count": "nope"}


def test_events_frame_reports_malformed_rows(store: EventStore) -> None:
    store.append_events("ok", [SessionStarted(session_id="s1", user_id="u1", item_count=2)])
    good_meta = '{"user_id":null,"timestamp":"2026-01-05T08:00:00.000000Z","correlation_id":null,"causation_id":null}'
    completed = '{"type":"SessionCompleted","session_id":"s1","duration_seconds":60}'
    corrupt = [
        ("SessionStarted", "{not json", good_meta),
        ("SessionStarted", '{"type":"SessionStarted","session_id":"s2","user_id":"u1","item_count":"3"}', good_meta),
        ("SessionCompleted", completed, '{"timestamp":"yesterday"}'),
        ("SessionCompleted", "[1, 2]", good_meta),
        ("SessionCompleted", '{"type":"SessionStarted","session_id":"s1","duration_seconds":60}', good_meta),
    ]
    # Written behind the store's back, as a foreign writer or a damaged disk would.
    with store.engine.begin() as conn:
        conn.execute(
            event_table.insert(),
            [
                {
                    "global_position": 2 + n,
                    "event_id": f"corrupt-{n}",
                    "stream_id": "bad",
                    "stream_version": 1 + n,
                    "event_type": event_type,
                    "event_data": data,
                    "metadata": metadata,
                    "created_at": T0,
                }
                for n, (event_type, data, metadata) in enumerate(corrupt)
            ],
        )
    frame = store.events_frame()
    assert frame.schema == pl.Schema(FRAME_SCHEMA)
    assert frame["malformed"].to_list() == [
        None,
        "invalid JSON",
        "event_data.item_count: missing, not an integer or out of range",
        "metadata.timestamp: missing or not canonical UTC",
        "not a JSON object",
        "event_data.type differs from event_type",
    ]
    assert frame["item_count"][0] == 2
    with pytest.raises(SerializationError, match="position 2"):
        store.read_all_events()


@pytest.mark.parametrize("column", ["event_data", "stream_id"])
def test_reading_text_that_is_not_utf8_names_the_event(tmp_path: Path, column: str) -> None:
    # SQLite keeps whatever bytes another tool writes; the sqlite3 module cannot read them
    # as text and says neither where nor what (a raw OperationalError, before).
    import sqlite3

    path = tmp_path / "foreign.db"
    store = connect(f"sqlite:///{path}")
    try:
        for user in ("u1", "u2", "u3"):
            store.append_events(f"user-{user}", [({"type": "UserCreated", "user_id": user}, meta(user))])
        with sqlite3.connect(path) as conn:
            conn.execute(f"UPDATE event_store SET {column} = CAST(X'7B22FF227D' AS TEXT) WHERE global_position = 2")
        message = f"position 2: its {column} is not valid UTF-8"
        with pytest.raises(SerializationError, match=message):
            store.read_all_events()
        with pytest.raises(SerializationError, match=message):
            store.read_events_by_type("UserCreated")
        with pytest.raises(SerializationError, match=message):
            list(store.iter_events())
        # The other events read as before, and the connections read text as usual again.
        assert [e.global_position for e in store.read_all_events(limit=1)] == [1]
        assert [e.event_data["user_id"] for e in store.read_all_events(from_position=3)] == ["u3"]
        assert store.read_events("user-u1")[0].stream_id == "user-u1"
    finally:
        store.close()


# -- concurrency and volume ------------------------------------------------------------


def test_racing_writers_exactly_one_wins(db_url: str) -> None:
    stores = [connect(db_url), connect(db_url)]
    try:
        for round_ in range(5):
            stream = f"race-{round_}"
            if round_ % 2:
                stores[0].append_events(stream, [UserCreated(user_id="u")])
            expected = round_ % 2
            barrier = threading.Barrier(2)
            outcomes: list[Any] = [None, None]

            def write(
                n: int,
                barrier: threading.Barrier = barrier,
                outcomes: list[Any] = outcomes,
                stream: str = stream,
                expected: int = expected,
            ) -> None:
                barrier.wait()
                try:
                    outcomes[n] = stores[n].append_events(stream, [review(f"w{n}"), review(f"w{n}")], expected)
                except ConcurrencyError as exc:
                    outcomes[n] = exc

            threads = [threading.Thread(target=write, args=(n,)) for n in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            errors = [o for o in outcomes if isinstance(o, ConcurrencyError)]
            wins = [o for o in outcomes if isinstance(o, list)]
            assert len(errors) == 1 and len(wins) == 1, outcomes
            assert (errors[0].expected_version, errors[0].actual_version) == (expected, expected + 2)
            events = stores[1].read_events(stream)
            assert [e.stream_version for e in events] == list(range(1, expected + 3))
            assert [e.event_id for e in events[expected:]] == [e.event_id for e in wins[0]]
    finally:
        for opened in stores:
            opened.close()


def test_append_of_100_000_events_in_one_call(store: EventStore) -> None:
    metadata = meta(at=T0)
    events = [(CorrectAnswerGiven(session_id=f"s{n // 50}", item_id=f"i{n % 50}"), metadata) for n in range(100_000)]
    written = store.append_events("bulk", events, expected_version=0)
    assert len(written) == 100_000
    assert store.count_events() == 100_000
    assert store.head_position() == 100_000
    assert store.stream_version("bulk") == 100_000
    last = store.read_all_events(100_000)
    assert [(e.global_position, e.stream_version, e.event_data["item_id"]) for e in last] == [(100_000, 100_000, "i49")]


def test_append_records_across_many_chunks(store: EventStore, monkeypatch: pytest.MonkeyPatch) -> None:
    # Small chunks: on PostgreSQL each chunk's COPY is still open while the next is read.
    import progress_lab.store as store_module
    from progress_lab import EventStoreError
    from progress_lab.store import NewRecord

    monkeypatch.setattr(store_module, "_CHUNK", 7)
    monkeypatch.setattr(store_module, "_FEED_EVERY", 2)
    monkeypatch.setattr(store_module, "_COPY_SLICE", 3)
    store.append_events("s0", [review("a"), review("b")])

    def records(count: int, start: int = 0, fail_at: int | None = None, event_id: str | None = None) -> Iterator[NewRecord]:
        for n in range(start, start + count):
            if n == fail_at:
                raise RuntimeError("the source broke")
            data = review(f"i{n}")
            yield NewRecord(f"s{n % 3}", "ReviewProcessed", data, meta(), event_id if n == fail_at else f"e{n}")

    assert store.append_records(records(50)) == 50
    events = store.read_all_events()
    assert [e.global_position for e in events] == list(range(1, 53))
    assert [e.event_id for e in events[2:]] == [f"e{n}" for n in range(50)]
    assert [store.stream_version(f"s{k}") for k in range(3)] == [2 + 17, 17, 16]
    assert [e.stream_version for e in store.read_events("s1")] == list(range(1, 18))

    # The source fails in a later chunk: nothing of this call is written, the store works on.
    with pytest.raises(RuntimeError, match="the source broke"):
        store.append_records(records(30, start=100, fail_at=123))
    assert store.head_position() == 52
    # An event id already stored, in a later chunk: the same.
    dup = [r if n != 25 else r._replace(event_id="e3") for n, r in enumerate(records(30, start=200))]
    with pytest.raises(EventStoreError, match="already in the store"):
        store.append_records(dup)
    assert store.head_position() == 52
    assert store.append_records(records(9, start=300)) == 9
    assert store.head_position() == 61
    assert store.stream_version("s0") == 2 + 17 + 3


def _event_store_indexes(store: EventStore) -> dict[str, tuple[bool, tuple[str, ...]]]:
    inspector = sa.inspect(store.engine)
    found = {i["name"]: (bool(i["unique"]), tuple(i["column_names"])) for i in inspector.get_indexes("event_store")}
    for c in inspector.get_unique_constraints("event_store"):
        found[c["name"]] = (True, tuple(c["column_names"]))
    return found


@pytest.mark.parametrize("defer", [True, False], ids=["deferred", "kept"])
def test_bulk_load_into_an_empty_log(store: EventStore, monkeypatch: pytest.MonkeyPatch, defer: bool) -> None:
    # A first chunk that fills up, into an empty log: streams are new, and the secondary
    # indexes are either dropped and built after loading or kept up to date. The result
    # must be the log and the indexes of a row-by-row import.
    import progress_lab.store as store_module
    from progress_lab import EventStoreError
    from progress_lab.store import NewRecord

    monkeypatch.setattr(store_module, "_CHUNK", 8)
    monkeypatch.setitem(store_module.BULK_INDEXES, store.dialect, "defer" if defer else "keep")
    statements: list[str] = []
    sa.event.listen(store.engine, "before_cursor_execute", lambda conn, cursor, statement, *args: statements.append(statement))
    indexes = _event_store_indexes(store)
    assert {"ix_event_store_event_id", "ix_event_store_type_created", "uq_event_store_stream_version"} <= set(indexes)

    def records(count: int, start: int = 0) -> list[NewRecord]:
        return [NewRecord(f"s{n % 3}", "ReviewProcessed", review(f"i{n}"), meta(), f"e{n}") for n in range(start, start + count)]

    # A duplicate event id inside the import: found when its index is built; nothing is written.
    duplicate = records(40)
    duplicate[31] = duplicate[31]._replace(event_id="e4")
    with pytest.raises(EventStoreError, match="'e4' appears more than once" if defer else "or twice in this append"):
        store.append_records(duplicate)
    assert store.head_position() == 0
    assert _event_store_indexes(store) == indexes
    assert any(statement.startswith("DROP INDEX") for statement in statements) == defer

    assert store.append_records(records(40)) == 40
    assert _event_store_indexes(store) == indexes
    if store.dialect == "postgresql":  # and the planner has the columns' statistics (a range read's estimate)
        with store.engine.connect() as conn:
            stats = sa.text("SELECT count(*) FROM pg_stats WHERE tablename = 'event_store' AND attname = 'global_position'")
            assert conn.execute(stats).scalar() == 1
    assert [store.stream_version(f"s{k}") for k in range(3)] == [14, 13, 13]
    assert [e.stream_version for e in store.read_events("s2")] == list(range(1, 14))
    # The rebuilt indexes hold: an id already stored is refused, by a non-bulk import now.
    with pytest.raises(EventStoreError, match="already in the store"):
        store.append_records(records(20, start=39))
    assert store.append_records(records(20, start=40)) == 20
    assert store.stream_version("s0") == len(range(0, 60, 3))


def test_append_records_continues_every_stream_whatever_its_name(store: EventStore) -> None:
    # The streams' versions are looked up with the ids as one array parameter (PostgreSQL)
    # or one JSON text (SQLite): names with quotes, backslashes and other scripts included.
    from progress_lab.store import NewRecord

    names = ['quote"d', "back\\slash", "ünïcödé-流", "it's", "[1]", "{}", "null", "plain"]
    for round_ in range(3):
        records = [NewRecord(name, "ReviewProcessed", review(f"i{round_}"), meta(), None) for name in names]
        assert store.append_records(records) == len(names)
        assert [store.stream_version(name) for name in names] == [round_ + 1] * len(names)
    assert [e.stream_version for e in store.read_events('quote"d')] == [1, 2, 3]


# 13 ids, 12 neighbouring pairs: the rule is "at least 3 in 4 pairs ascend", so 9 is in order.
@pytest.mark.parametrize(
    ("order", "deferred"),
    [
        (None, False),  # the store's own ids: UUIDv7
        (list(range(13)), False),
        ([0, 1, 2, 4, 3, 5, 6, 8, 7, 9, 11, 10, 12], False),  # 9 of 12 pairs ascend
        ([0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 10, 12, 11], True),  # 8 of 12
        ([3, 7, 1, 10, 0, 5, 11, 2, 8, 4, 9, 6, 12], True),  # 7 of 12
    ],
    ids=["store", "ascending", "9-of-12", "8-of-12", "random"],
)
def test_auto_bulk_load_defers_the_indexes_only_for_ids_out_of_order(
    store: EventStore, monkeypatch: pytest.MonkeyPatch, order: list[int] | None, deferred: bool
) -> None:
    import progress_lab.store as store_module
    from progress_lab.store import NewRecord

    ids = [None] * 13 if order is None else [f"e{n:02}" for n in order]
    monkeypatch.setattr(store_module, "_CHUNK", 13)
    if store.dialect != "sqlite":  # "auto" is SQLite's default; PostgreSQL keeps them by default
        monkeypatch.setitem(store_module.BULK_INDEXES, store.dialect, "auto")
    statements: list[str] = []
    sa.event.listen(store.engine, "before_cursor_execute", lambda conn, cursor, statement, *args: statements.append(statement))
    records = [NewRecord(f"s{n % 2}", "ReviewProcessed", review(f"i{n}"), meta(), id_) for n, id_ in enumerate(ids)]
    assert store.append_records(records) == 13
    assert any(statement.startswith("DROP INDEX") for statement in statements) == deferred
    assert [e.stream_version for e in store.read_events("s1")] == list(range(1, 7))
    assert "ix_event_store_event_id" in _event_store_indexes(store)


@pytest.mark.parametrize("count", [9_999, 10_000])
def test_a_bulk_load_is_an_import_of_10000_records_or_more(tmp_path: Path, count: int) -> None:
    # The README's threshold. Random ids make a SQLite bulk load defer its indexes.
    from progress_lab.store import NewRecord

    store = connect(f"sqlite:///{tmp_path}/bulk.db")
    try:
        statements: list[str] = []
        sa.event.listen(store.engine, "before_cursor_execute", lambda conn, cursor, statement, *args: statements.append(statement))
        order = random.Random(7).sample(range(count), count)
        records = [NewRecord(f"s{n % 50}", "ReviewProcessed", review(f"i{n}"), meta(), f"e{n:05}") for n in order]
        assert store.append_records(records) == count
        assert any(statement.startswith("DROP INDEX") for statement in statements) == (count == 10_000)
        assert store.head_position() == count
    finally:
        store.close()


def test_a_bulk_load_on_postgresql_leaves_readers_free(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # With its default (the indexes kept), a bulk load takes no lock that a reader waits
    # for: halfway through it, a reader with a 3 s timeout sees the empty log at once.
    import progress_lab.store as store_module
    from progress_lab.store import NewRecord

    monkeypatch.setattr(store_module, "_CHUNK", 8)
    store = connect(pg_url)
    halfway, go_on = threading.Event(), threading.Event()
    appended: list[int] = []

    def records() -> Iterator[NewRecord]:
        for n in range(20):
            if n == 12:  # the first chunk is in the table, the import's transaction open
                halfway.set()
                go_on.wait(60)
            yield NewRecord("s", "ReviewProcessed", review(f"i{n}"), meta(), f"e{n}")

    writer = threading.Thread(target=lambda: appended.append(store.append_records(records())))
    writer.start()
    try:
        assert halfway.wait(60)
        with store.engine.connect() as reader:
            reader.exec_driver_sql("SET statement_timeout = '3s'")
            assert reader.execute(sa.text("SELECT count(*) FROM event_store")).scalar_one() == 0
    finally:
        go_on.set()
        writer.join(60)
    try:
        assert appended == [20]
        assert store.stream_version("s") == 20
    finally:
        store.close()


def test_bulk_load_keeps_the_indexes_while_a_reader_holds_the_table(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # PostgreSQL: dropping an index needs the table to itself. A reader in an open
    # transaction holds it; the import must not wait for it, only keep the indexes.
    import progress_lab.store as store_module
    from progress_lab.store import NewRecord

    monkeypatch.setattr(store_module, "_CHUNK", 8)
    monkeypatch.setitem(store_module.BULK_INDEXES, "postgresql", "defer")  # not the default there
    store = connect(pg_url)
    try:
        dropped: list[str] = []
        sa.event.listen(
            store.engine,
            "before_cursor_execute",
            lambda conn, cursor, statement, *args: dropped.append(statement) if statement.startswith("DROP INDEX") else None,
        )
        with store.engine.connect() as reader:
            reader.execute(sa.text("SELECT count(*) FROM event_store")).scalar_one()  # holds ACCESS SHARE until rollback
            records = [NewRecord("s", "ReviewProcessed", review(f"i{n}"), meta(), f"e{n}") for n in range(20)]
            assert store.append_records(records) == 20
            reader.rollback()
        assert dropped == []
        assert store.stream_version("s") == 20
        assert "ix_event_store_event_id" in _event_store_indexes(store)
    finally:
        store.close()


def test_fold_fields_by_type_agree_with_fields_by_type() -> None:
    # fold_fields is spelt out per type for speed; FIELDS_BY_TYPE is the definition.
    from progress_lab.events import _FLOAT_FIELDS, FIELDS_BY_TYPE, FOLD_FIELDS, fold_fields

    data = {name: i + 1 for i, name in enumerate(FOLD_FIELDS)} | {"type": "x", "extra": "e"}
    for kind in [*FIELDS_BY_TYPE, "Custom", ""]:
        own = FIELDS_BY_TYPE.get(kind, ())
        expected = tuple(
            (float(data[name]) if name in _FLOAT_FIELDS else data[name]) if name in own else None
            for name in FOLD_FIELDS
        )
        got = fold_fields(kind, data)
        assert got == expected and [type(v) for v in got] == [type(v) for v in expected], kind


def test_append_records_writes_the_canonical_row_text(store: EventStore, clock: FakeClock) -> None:
    # The append path formats times and JSON on fast paths; every column must still hold
    # what the slow, obvious code writes: events.dumps, format_timestamp, UTC created_at.
    from progress_lab.events import dumps, fold_fields
    from progress_lab.store import NewRecord

    plus_five = timezone(timedelta(hours=5, minutes=30))
    times = [
        T0,
        T0.replace(microsecond=0),  # orjson would leave out the fraction
        datetime(1900, 1, 1, tzinfo=UTC),
        datetime(9000, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 3, 1, 0, 0, 0, 1, tzinfo=plus_five),
    ]
    created = [None, T0, T0.replace(microsecond=0), datetime(999, 5, 6, 7, 8, 9, 10, tzinfo=UTC),
               datetime(2026, 3, 1, 2, 3, 4, 5, tzinfo=plus_five)]
    payloads = [
        review(),
        review(new_interval=3, easiness_factor=2),  # ints in float columns
        {"type": "Custom", "big": 2**70, "f": [1e20, 1e-7, 0.1], "s": 'tab\there "q" \\ ü 🦉 \u2028', "n": None},
        {"type": "UserCreated", "user_id": "u\\1", "email": None, "display_name": "x\ty"},
    ]
    records = []
    for n in range(4 * len(times) * len(created) + 3):  # not a multiple of the rows per INSERT
        at, made, data = times[n % len(times)], created[(n // 2) % len(created)], payloads[n % len(payloads)]
        metadata = EventMetadata(user_id=f"u{n}\t", timestamp=at, correlation_id="c\"1" if n % 3 else None)
        records.append(NewRecord(f"stream-{n % 7}", data["type"], data, metadata, f"id-{n}" if n % 2 else None, made))
    clock.set(datetime(2026, 2, 3, 4, 5, 6, tzinfo=UTC))
    assert store.append_records(records) == len(records)

    columns = [c.name for c in event_table.columns]
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(event_table).order_by(event_table.c.global_position)).all()
    assert len(rows) == len(records)
    versions: dict[str, int] = {}
    for position, (row, record) in enumerate(zip(rows, records), start=1):
        versions[record.stream_id] = versions.get(record.stream_id, 0) + 1
        got = dict(zip(columns, row))
        meta_data = record.metadata.to_data()
        expected = {
            "global_position": position,
            "stream_id": record.stream_id,
            "stream_version": versions[record.stream_id],
            "event_type": record.event_type,
            "event_data": dumps(record.event_data),
            "metadata": dumps(meta_data),
            "created_at": (record.created_at or clock.now).astimezone(UTC),
            "typed": 1,
            "occurred_at_us": epoch_us(record.metadata.timestamp),
            "metadata_user_id": meta_data["user_id"],
            "correlation_id": meta_data["correlation_id"],
            "causation_id": None,
            **dict(zip(FOLD_FIELDS, fold_fields(record.event_type, record.event_data))),
        }
        assert got.pop("event_id") == record.event_id or record.event_id is None
        assert got == expected, position
        if isinstance(row.created_at, str):  # SQLite: fixed-width text
            raw = conn_text(store, position)
            assert raw == expected["created_at"].replace(tzinfo=None).isoformat(" ", "microseconds")


def epoch_us(value: datetime) -> int:
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def conn_text(store: EventStore, position: int) -> str:
    with store.engine.connect() as conn:
        return str(conn.exec_driver_sql(f"SELECT created_at FROM event_store WHERE global_position = {position}").scalar())


# -- JSON Lines and the command line ---------------------------------------------------


def _fill(store: EventStore, clock: FakeClock) -> None:
    clock.set(datetime(2026, 1, 5, 8, 0, 0, 123456, tzinfo=UTC))
    store.append_events(
        "user-u1",
        [
            (UserCreated(user_id="u1", email="u1@example.org", display_name="Ünï 🦉"), meta(at=T0)),
            (SessionStarted(session_id="s1", user_id="u1", item_count=2), meta(at=T0 + timedelta(seconds=1))),
        ],
    )
    clock.set(datetime(2026, 1, 5, 9, 0, tzinfo=UTC))
    store.append_events(
        "session-s1",
        [
            (CorrectAnswerGiven(session_id="s1", item_id="i1", response_time_ms=1200), meta(user=None, correlation_id="c")),
            ({"type": "Custom", "nested": {"a": [1, 2.5, None, "x\ny"]}, "text": 'q"\\'}, meta(causation_id="z")),
            (SessionCompleted(session_id="s1", duration_seconds=95), meta(at=datetime(2026, 1, 6, tzinfo=UTC))),
            (review("i1", new_interval=21.0, previous_interval=None), meta(at=T0 + timedelta(days=1, microseconds=7))),
        ],
    )
    store.append_events(INJECTIONS[0], [({"type": INJECTIONS[0]}, meta(user=INJECTIONS[0]))])


def test_jsonl_round_trip_through_the_cli(
    store: EventStore, clock: FakeClock, db_url: str, other_db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(store, clock)
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    assert cli.main(["export", str(first), "--db", db_url, "--no-progress"]) == 0
    assert cli.main(["import", str(first), "--db", other_db_url, "--no-progress"]) == 0
    assert cli.main(["export", str(second), "--db", other_db_url, "--no-progress"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"exported 7 events from {db_url.split(':')[0]}")
    assert out[1].startswith("imported 7 events from") and out[2].startswith("exported 7 events")
    assert first.read_bytes() == second.read_bytes()

    lines = first.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 8
    line = json.loads(lines[0])
    assert list(line) == ["event_id", "stream_id", "event_type", "event_data", "metadata", "created_at"]
    assert line["created_at"] == "2026-01-05T08:00:00.123456Z"
    assert line["metadata"]["timestamp"] == "2026-01-05T08:00:00.123456Z"
    assert "Ünï 🦉".encode() in lines[0]  # UTF-8, not \u escapes
    for text in lines[:-1]:
        assert text == json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False).encode()
    assert json.loads(lines[5])["metadata"]["timestamp"] == "2026-01-06T08:00:00.123463Z"

    with connect(other_db_url) as copy:
        assert [fields(e) for e in copy.read_all_events()] == [fields(e) for e in store.read_all_events()]
        assert copy.stream_version("session-s1") == 4


def test_import_bad_line_names_it_and_writes_nothing(
    store: EventStore, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def line(event: dict[str, Any], stream: str = "s") -> str:
        return json.dumps(
            {"stream_id": stream, "event_type": event["type"], "event_data": event, "metadata": {"timestamp": "2026-01-05T08:00:00Z"}}
        )

    good = line(_STARTED)
    bad = line({"type": "SessionCompleted", "session_id": "s1", "duration_seconds": -30})
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([good, good, bad, good, good]) + "\n")
    assert cli.main(["import", str(path), "--db", db_url, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("progress-lab: error: line 3: ") and "duration_seconds" in err
    assert "Traceback" not in err
    assert_empty(store)
    with pytest.raises(EventValidationError) as caught:
        import_jsonl(store, path, progress=False)
    assert caught.value.line == 3

    cases: list[tuple[bytes, str]] = [
        (b"{not json", "invalid JSON"),
        (b'{"stream_id": "s", "event_type": "X", "event_data": {"type": "X", "v": NaN}, "metadata": {"timestamp": "2026-01-05T08:00:00Z"}}', "NaN"),
        (b"\xff\xfe" + good.encode(), "invalid UTF-8"),
        (b"[1, 2]", "JSON object"),
        (good.replace('"stream_id": "s", ', "").encode(), "missing key 'stream_id'"),
        (good[:-1].encode() + b', "extra": 1}', "unknown key 'extra'"),
        (good[:-1].encode() + b', "stream_id": "t"}', "duplicate key"),
        (good.replace('"event_type": "SessionStarted"', '"event_type": "SessionCompleted"').encode(), "differs"),
        (good.replace('"item_count": 3', '"item_count": "3"').encode(), "item_count"),
        (good.replace('"stream_id": "s"', '"stream_id": ""').encode(), "stream_id"),
        (good.replace('"stream_id": "s"', '"stream_id": "a\\u0000b"').encode(), "stream_id"),
        (good.replace('"2026-01-05T08:00:00Z"', "1767600000").encode(), "metadata.timestamp"),
        (good.replace(', "metadata": {"timestamp": "2026-01-05T08:00:00Z"}', ', "metadata": {}').encode(), "timestamp"),
        (good[:-1].encode() + b', "created_at": "last tuesday"}', "created_at"),
        (good[:-1].encode() + b', "event_id": 7}', "event_id"),
        (good.replace('"user_id": "u1"', '"user_id": "\\ud800"').encode(), "surrogate"),
    ]
    for n, (raw, needle) in enumerate(cases):
        path.write_bytes(good.encode() + b"\n\n" + raw + b"\n" + good.encode() + b"\n")
        with pytest.raises(EventValidationError, match=needle) as caught:
            import_jsonl(store, path, progress=False)
        assert (caught.value.line, str(caught.value)[:8]) == (3, "line 3: "), n
    assert_empty(store)


def test_import_accepts_blank_lines_and_optional_fields(store: EventStore, clock: FakeClock, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    lines = [
        {"stream_id": "a", "event_type": "UserCreated", "event_data": {"type": "UserCreated", "user_id": "u1"},
         "metadata": {"user_id": "u1", "timestamp": "2026-01-05T09:00:00+01:00"}, "event_id": "id-1",
         "created_at": "2026-01-05T08:00:00"},
        {"stream_id": "a", "event_type": "Custom", "event_data": {"type": "Custom"},
         "metadata": {"timestamp": "2026-01-05T08:00:00.5Z"}, "event_id": None, "created_at": None},
    ]
    path.write_bytes(b"\xef\xbb\xbf" + b"\r\n\n  \n".join(json.dumps(x).encode() for x in lines) + b"\r\n\n")
    assert import_jsonl(store, path, progress=False) == 2
    first, second = store.read_all_events()
    assert (first.event_id, first.created_at, first.metadata.timestamp) == ("id-1", T0.replace(microsecond=0), T0.replace(microsecond=0))
    assert (second.stream_version, second.created_at) == (2, T0)
    assert second.metadata.timestamp == datetime(2026, 1, 5, 8, 0, 0, 500000, tzinfo=UTC)


def test_export_of_an_empty_store(store: EventStore, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("old content\n")
    assert cli.main(["export", str(path), "--db", db_url, "--no-progress"]) == 0
    assert path.read_bytes() == b""
    assert capsys.readouterr().out.startswith("exported 0 events")
    assert export_jsonl(store, path, progress=False) == 0
    assert import_jsonl(store, path, progress=False) == 0
    assert_empty(store)
    assert not list(tmp_path.glob(".empty.jsonl*"))  # no temporary file left behind


def test_export_of_a_created_at_before_the_year_1000_imports_again(store: EventStore, other_db_url: str, tmp_path: Path) -> None:
    # created_at is the writer's clock and has no year range; its text must stay ISO 8601 (four-digit year).
    from progress_lab.store import NewRecord

    ancient = datetime(999, 3, 4, 5, 6, 7, 8, tzinfo=UTC)
    store.append_records([NewRecord("s", "ReviewProcessed", review(), meta(), "e1", ancient)])
    path = tmp_path / "ancient.jsonl"
    export_jsonl(store, path, progress=False)
    assert json.loads(path.read_bytes())["created_at"] == "0999-03-04T05:06:07.000008Z"
    with connect(other_db_url) as copy:
        assert import_jsonl(copy, path, progress=False) == 1
        assert [fields(e) for e in copy.read_all_events()] == [fields(e) for e in store.read_all_events()]
        assert copy.read_all_events()[0].created_at == ancient


def test_import_of_an_event_id_already_stored_writes_nothing(store: EventStore, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store.append_events("s", [UserCreated(user_id="u1")])
    path = tmp_path / "dup.jsonl"
    export_jsonl(store, path, progress=False)
    assert cli.main(["import", str(path), "--db", db_url, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("progress-lab: error: an event id is already in the store") and "Traceback" not in err
    assert store.count_events() == 1


# -- secrets ------------------------------------------------------------------------------


@pytest.mark.postgres
def test_passwords_never_shown(pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = "s3cr3t-Pa55"
    url = sa.make_url(pg_url).set(password=secret).render_as_string(hide_password=False)
    with connect(url) as store:  # the throwaway server trusts local connections, so any password works
        assert secret not in repr(store) and secret not in str(store) and secret not in store.url
        assert "***" in repr(store)
    assert cli.main(["export", str(tmp_path / "x.jsonl"), "--db", url, "--no-progress"]) == 0
    unreachable = sa.make_url(url).set(host="127.0.0.1", port=1).render_as_string(hide_password=False)
    with pytest.raises(StoreUnavailableError) as caught:
        connect(unreachable)
    assert secret not in str(caught.value)
    assert cli.main(["export", str(tmp_path / "y.jsonl"), "--db", unreachable, "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err
    assert "***" in captured.out and "***" in captured.err


# -- the no-skip guarantee on PostgreSQL ------------------------------------------------


_WRITERS = 4
_BATCHES = 300


def _writer(url: str, writer: int, barrier: Any, results: Any) -> None:
    """Append small batches to the writer's own stream and to shared ones (runs in a child process)."""
    rng = random.Random(writer)
    written = 0
    with connect(url) as store:
        own = f"writer-{writer}"
        version = 0
        barrier.wait()
        for batch in range(_BATCHES):
            size = rng.randint(1, 5)
            events = [
                ({"type": "Tick", "writer": writer, "batch": batch, "n": n}, {"timestamp": "2026-01-05T08:00:00Z"})
                for n in range(size)
            ]
            if rng.random() < 0.5:
                store.append_events(own, events, expected_version=version)
                version += size
            else:
                store.append_events(f"shared-{rng.randint(0, 2)}", events)
            written += size
    results.put((writer, written))


@pytest.mark.postgres
def test_tailing_reader_never_skips_with_concurrent_writer_processes(pg_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(_WRITERS + 1)
    results = context.Queue()
    writers = [context.Process(target=_writer, args=(pg_url, n, barrier, results)) for n in range(_WRITERS)]
    for process in writers:
        process.start()
    seen: list[PersistedEvent] = []
    with connect(pg_url) as reader:
        barrier.wait(timeout=120)
        last = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = not any(process.is_alive() for process in writers)
            batch = reader.read_all_events(last + 1, limit=50)
            seen.extend(batch)
            if batch:
                last = batch[-1].global_position
            elif done:
                break
            if len(batch) < 50:
                time.sleep(0.002)  # leave the two cores to the writers while caught up
        final = reader.read_all_events()
    for process in writers:
        process.join(timeout=30)
        assert process.exitcode == 0
    counts = dict(results.get(timeout=5) for _ in writers)
    positions = [e.global_position for e in seen]
    assert all(a < b for a, b in zip(positions, positions[1:]))
    assert len(final) == sum(counts.values()) == len(seen)
    assert {e.event_id for e in seen} == {e.event_id for e in final}
    assert [e.global_position for e in final] == positions
    # Each writer's batches arrive in the order it wrote them, each at consecutive positions.
    batches: dict[tuple[int, int], list[int]] = {}
    for event in final:
        batches.setdefault((event.event_data["writer"], event.event_data["batch"]), []).append(event.global_position)
    assert all(p == list(range(p[0], p[0] + len(p))) for p in batches.values())
    for writer in range(_WRITERS):
        mine = [(e.event_data["batch"], e.event_data["n"]) for e in final if e.event_data["writer"] == writer]
        assert mine == sorted(mine) and len({b for b, _ in mine}) == _BATCHES

