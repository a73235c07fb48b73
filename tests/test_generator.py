"""Tests of the synthetic learner generator: determinism, the JSONL contract, and realistic behaviour."""

from __future__ import annotations

import hashlib
import math
import os
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest

from progress_lab.generator import (
    DEFAULT_START,
    estimate_events,
    generate_events,
    generate_frame,
    write_jsonl,
)

USERS, DAYS, SEED = 100, 40, 11

TOP_KEYS = ["event_id", "stream_id", "event_type", "event_data", "metadata", "created_at"]
META_KEYS = ["user_id", "timestamp", "correlation_id", "causation_id"]
PAYLOAD_KEYS = {
    "UserCreated": ["type", "user_id", "email", "display_name"],
    "SessionStarted": ["type", "session_id", "user_id", "item_count", "deck_id"],
    "CorrectAnswerGiven": ["type", "session_id", "item_id", "response_time_ms"],
    "SessionCompleted": ["type", "session_id", "duration_seconds"],
    "ReviewProcessed": [
        "type", "user_id", "item_id", "quality", "previous_interval", "new_interval", "easiness_factor",
    ],
}  # fmt: skip
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
UUID7_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


class Log:
    """The events of one generated log, indexed the way the assertions need them."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events
        self.started: dict[str, dict[str, Any]] = {}
        self.started_dupes = 0
        self.completed: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.answers: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.signup: dict[str, datetime] = {}
        for e in events:
            data = e["event_data"]
            kind = e["event_type"]
            if kind == "SessionStarted":
                if data["session_id"] in self.started:
                    self.started_dupes += 1
                else:
                    self.started[data["session_id"]] = e
            elif kind == "SessionCompleted":
                self.completed[data["session_id"]].append(e)
            elif kind == "CorrectAnswerGiven":
                self.answers[data["session_id"]].append(e)
            elif kind == "UserCreated":
                self.signup[data["user_id"]] = _ts(e["metadata"]["timestamp"])
        # Per user: the UTC dates of their session starts.
        self.session_days: dict[str, list[datetime]] = defaultdict(list)
        for s in self.started.values():
            self.session_days[s["event_data"]["user_id"]].append(_ts(s["metadata"]["timestamp"]))

    def owner(self, event: dict[str, Any]) -> str | None:
        """The user of an event, from its metadata or else from its session's start."""
        uid: str | None = event["metadata"]["user_id"]
        if uid is None:
            start = self.started.get(event["event_data"].get("session_id", ""))
            uid = start["event_data"]["user_id"] if start else None
        return uid


@pytest.fixture(scope="module")
def log() -> Log:
    return Log(list(generate_events(USERS, DAYS, seed=SEED)))


# --- determinism -----------------------------------------------------------------------


def test_write_jsonl_is_byte_identical_across_runs_and_differs_across_seeds(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    n_a = write_jsonl(a, 25, 20, seed=5)
    n_b = write_jsonl(b, 25, 20, seed=5)
    n_c = write_jsonl(c, 25, 20, seed=6)
    data = a.read_bytes()
    assert n_a == n_b > 0
    assert data == b.read_bytes()
    assert data != c.read_bytes() and n_c > 0
    assert data.endswith(b"\n") and b"\r" not in data
    lines = data.split(b"\n")[:-1]
    assert len(lines) == n_a
    # The file is exactly the stream, one compact object per line.
    assert [orjson.loads(line) for line in lines] == list(generate_events(25, 20, seed=5))
    assert all(orjson.dumps(orjson.loads(line)) == line for line in lines)
    text = data.decode("utf-8")  # raw UTF-8 names such as "Zoë", never \\u escapes
    assert "\\u" not in text and any(ord(ch) > 127 for ch in text)


def test_output_does_not_depend_on_hash_randomisation(tmp_path: Path) -> None:
    # The child loads generator.py by path, which skips the package's heavy imports.
    module = Path(__file__).resolve().parents[1] / "progress_lab" / "generator.py"
    script = (
        "import hashlib, importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('generator', sys.argv[1])\n"
        "gen = importlib.util.module_from_spec(spec); spec.loader.exec_module(gen)\n"
        "gen.write_jsonl(sys.argv[2], 8, 6, seed=3)\n"
        "print(hashlib.sha256(open(sys.argv[2], 'rb').read()).hexdigest())\n"
    )
    # This process hashes strings with a random seed; the child with a fixed one.
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", script, str(module), str(tmp_path / "child.jsonl")],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    digests = {out.stdout.strip()}
    write_jsonl(tmp_path / "here.jsonl", 8, 6, seed=3)
    digests.add(hashlib.sha256((tmp_path / "here.jsonl").read_bytes()).hexdigest())
    assert len(digests) == 1


def test_generate_events_is_lazy() -> None:
    # A 270-year period: only lazy, day-by-day generation returns the first events at once.
    started = time.perf_counter()
    it = generate_events(20, 100_000, seed=1)
    first = [next(it) for _ in range(10)]
    assert time.perf_counter() - started < 2.0
    assert first[0]["event_type"] == "UserCreated"


def test_start_parameter() -> None:
    naive = list(generate_events(5, 4, seed=2, start=datetime(2025, 3, 1)))
    aware = list(generate_events(5, 4, seed=2, start=datetime(2025, 3, 1, tzinfo=UTC)))
    assert naive == aware
    first = min(_ts(e["metadata"]["timestamp"]) for e in aware)
    assert datetime(2025, 3, 1, tzinfo=UTC) <= first < datetime(2025, 3, 2, tzinfo=UTC)
    default = list(generate_events(5, 4, seed=2))
    assert list(generate_events(5, 4, seed=2, start=DEFAULT_START)) == default
    assert min(e["metadata"]["timestamp"] for e in default).startswith("2026-01-05T")


def test_invalid_sizes() -> None:
    assert list(generate_events(0, 10)) == []
    assert list(generate_events(10, 0)) == []
    with pytest.raises(ValueError):
        list(generate_events(-1, 3))
    with pytest.raises(ValueError):
        estimate_events(3, -2)


# --- the contract ----------------------------------------------------------------------


def test_every_event_follows_the_contract(log: Log) -> None:
    for e in log.events:
        assert list(e) == TOP_KEYS
        kind = e["event_type"]
        data, meta = e["event_data"], e["metadata"]
        assert list(data) == PAYLOAD_KEYS[kind]
        assert data["type"] == kind
        assert list(meta) == META_KEYS
        assert TS_RE.match(meta["timestamp"]) and TS_RE.match(e["created_at"])
        assert UUID7_RE.match(e["event_id"])
        for key, value in data.items():
            if key in ("item_count", "response_time_ms", "duration_seconds", "quality"):
                assert type(value) is int and value >= 0, (key, value)
            elif key in ("previous_interval", "new_interval", "easiness_factor"):
                assert type(value) is float and math.isfinite(value) and value >= 0, (key, value)
            else:
                assert type(value) is str and value, (key, value)
        for key in ("user_id", "correlation_id", "causation_id"):
            assert meta[key] is None or (type(meta[key]) is str and meta[key])
        if kind == "UserCreated":
            assert e["stream_id"] == f"user-{data['user_id']}"
            assert re.fullmatch(r"learner\d{4,}@example\.com", data["email"])
        elif kind == "ReviewProcessed":
            assert e["stream_id"] == f"user-{data['user_id']}"
            assert 0 <= data["quality"] <= 5
            assert data["easiness_factor"] >= 1.3
        else:
            assert e["stream_id"] == f"session-{data['session_id']}"
            assert meta["correlation_id"] == data["session_id"]
        if kind == "SessionStarted":
            assert 1 <= data["item_count"] <= 30
            assert data["deck_id"].startswith("deck-")
        if kind in ("UserCreated", "SessionStarted", "ReviewProcessed"):
            assert meta["user_id"] == data["user_id"]


def test_append_order_and_ids(log: Log) -> None:
    created = [e["created_at"] for e in log.events]
    assert created == sorted(created)
    ids = [e["event_id"] for e in log.events]
    assert len(set(ids)) == len(ids)
    for e in log.events[:2000]:
        # UUIDv7: the first 48 bits are the ms of created_at.
        ms = int(e["event_id"].replace("-", "")[:12], 16)
        assert ms == int(_ts(e["created_at"]).timestamp() * 1000 // 1)
    # Delivery: created_at is after the timestamp, usually by 5-500 ms.
    delays = [(_ts(e["created_at"]) - _ts(e["metadata"]["timestamp"])).total_seconds() for e in log.events]
    assert min(delays) >= 0.005
    assert sum(d <= 0.5 for d in delays) / len(delays) > 0.98


def test_causation_and_correlation(log: Log) -> None:
    ids = {e["event_id"] for e in log.events}
    for sid, answers in log.answers.items():
        for a in answers:
            assert a["metadata"]["causation_id"] == log.started[sid]["event_id"]
    for e in log.events:
        cause = e["metadata"]["causation_id"]
        assert cause is None or cause in ids
        if e["event_type"] == "ReviewProcessed":
            assert e["metadata"]["correlation_id"] in log.started


def test_sm2_scheduling_is_consistent(log: Log) -> None:
    reviews = [e for e in log.events if e["event_type"] == "ReviewProcessed"]
    reviews.sort(key=lambda e: e["metadata"]["timestamp"])
    last: dict[tuple[str, str], float] = {}
    grew = 0
    for e in reviews:
        d = e["event_data"]
        key = (d["user_id"], d["item_id"])
        # Each review starts from the interval the previous review of that item set.
        assert d["previous_interval"] == last.get(key, 0.0)
        if d["quality"] < 3:
            assert d["new_interval"] in (0.0, 1.0)
        elif d["previous_interval"] >= 6.0:
            assert d["new_interval"] >= d["previous_interval"] * 1.3 - 1e-3  # rounded to 4 places
            grew += 1
        last[key] = d["new_interval"]
    assert grew > 0
    qualities = Counter(e["event_data"]["quality"] for e in reviews)
    assert set(qualities) == set(range(6))
    # The item pool grows: learners meet more distinct items as the weeks go by.
    per_user_items: dict[str, set[str]] = defaultdict(set)
    for e in reviews:
        per_user_items[e["event_data"]["user_id"]].add(e["event_data"]["item_id"])
    assert max(len(items) for items in per_user_items.values()) > 100


def test_sessions_answers_and_reviews_agree(log: Log) -> None:
    reviews_per_session = Counter(
        e["metadata"]["correlation_id"] for e in log.events if e["event_type"] == "ReviewProcessed"
    )
    for sid, start in log.started.items():
        n = start["event_data"]["item_count"]
        done = log.completed.get(sid)
        shown = reviews_per_session[sid]
        assert len(log.answers[sid]) <= shown
        if done:
            assert shown == n  # a completed session went through every item
            elapsed = _ts(done[0]["metadata"]["timestamp"]) - _ts(start["metadata"]["timestamp"])
            assert done[0]["event_data"]["duration_seconds"] == int(elapsed.total_seconds())
            rt = sum(a["event_data"]["response_time_ms"] for a in log.answers[sid]) / 1000
            assert done[0]["event_data"]["duration_seconds"] >= rt - 1
        else:
            assert shown < n


# --- realistic behaviour and anomalies ---------------------------------------------------


def test_archetype_signatures(log: Log) -> None:
    start = DEFAULT_START
    last_third = start + timedelta(days=DAYS * 2 / 3)
    end = start + timedelta(days=DAYS)
    last_seen: dict[str, datetime] = {}
    for e in log.events:
        uid = log.owner(e)
        assert uid is not None
        ts = _ts(e["metadata"]["timestamp"])
        last_seen[uid] = max(last_seen.get(uid, ts), ts)
    assert set(last_seen) == set(log.signup)
    churned = [u for u, seen in last_seen.items() if seen < last_third]
    assert 0.05 * USERS <= len(churned) <= 0.4 * USERS

    daily = weekend = lapsing = 0
    for uid, starts in log.session_days.items():
        days_active = {s.date() for s in starts}
        span = (end.date() - log.signup[uid].date()).days
        if len(days_active) >= 0.8 * span:
            daily += 1
        if len(starts) >= 4 and sum(s.weekday() >= 5 for s in starts) >= 0.75 * len(starts):
            weekend += 1
        ordered = sorted(days_active)
        gaps = [(b - a).days for a, b in zip(ordered, ordered[1:], strict=False)]
        if sum(g >= 4 for g in gaps) >= 2 and ordered[-1] >= last_third.date():
            lapsing += 1
    assert daily >= 0.1 * USERS
    assert weekend >= 0.05 * USERS
    assert lapsing >= 0.05 * USERS
    # Preferred hours differ from user to user and cover the whole UTC day.
    hours = Counter(_ts(s["metadata"]["timestamp"]).hour for s in log.started.values())
    assert len(hours) == 24
    assert max(hours.values()) < 0.15 * len(log.started)


def test_anomalies_are_present(log: Log) -> None:
    n_sessions = len(log.started)
    abandoned = [sid for sid in log.started if sid not in log.completed]
    assert 0.02 * n_sessions <= len(abandoned) <= 0.09 * n_sessions
    duplicates = [sid for sid, done in log.completed.items() if len(done) > 1]
    assert duplicates
    for sid in duplicates:
        first, retry = log.completed[sid][:2]
        assert first["event_data"] == retry["event_data"] and first["event_id"] != retry["event_id"]
    assert log.started_dupes >= 1

    anonymous = [e for e in log.events if e["metadata"]["user_id"] is None]
    assert {e["event_type"] for e in anonymous} == {"CorrectAnswerGiven", "SessionCompleted"}
    eligible = sum(e["event_type"] in ("CorrectAnswerGiven", "SessionCompleted") for e in log.events)
    share = len(anonymous) / eligible
    assert 0.015 < share < 0.05
    assert all(log.owner(e) is not None for e in anonymous)

    after_completion = [
        a
        for sid, answers in log.answers.items()
        if sid in log.completed
        for a in answers
        if a["created_at"] > log.completed[sid][0]["created_at"]
    ]
    assert len(after_completion) >= 3

    minute = timedelta(minutes=1)
    late = [e for e in log.events if _ts(e["created_at"]) - _ts(e["metadata"]["timestamp"]) > minute]
    assert late and len(late) < 0.01 * len(log.events)
    timestamps = [e["metadata"]["timestamp"] for e in log.events]
    assert any(b < a for a, b in zip(timestamps, timestamps[1:], strict=False))  # out of timestamp order

    crossing = 0
    for sid, start in log.started.items():
        day = start["metadata"]["timestamp"][:10]
        later = log.answers[sid] + log.completed.get(sid, [])
        crossing += any(e["metadata"]["timestamp"][:10] != day for e in later)
    assert crossing >= 1, crossing


def test_events_validate_against_the_domain_models(log: Log) -> None:
    events = pytest.importorskip("progress_lab.events")
    for e in log.events[:5000]:
        parsed = events.parse_event(e["event_data"])
        assert parsed.type == e["event_type"]
        meta = events.EventMetadata.model_validate(e["metadata"])
        assert events.format_timestamp(meta.timestamp) == e["metadata"]["timestamp"]


# --- other outputs -----------------------------------------------------------------------


def test_generate_frame_matches_the_stream() -> None:
    frame = generate_frame(15, 12, seed=4)
    events = list(generate_events(15, 12, seed=4))
    assert frame.columns == TOP_KEYS
    assert all(dtype == pl.String for dtype in frame.dtypes)
    assert frame.height == len(events)
    rows = frame.to_dicts()
    for row, e in zip(rows, events, strict=True):
        assert row["event_id"] == e["event_id"] and row["created_at"] == e["created_at"]
        assert orjson.loads(row["event_data"]) == e["event_data"]
        assert orjson.loads(row["metadata"]) == e["metadata"]


@pytest.mark.parametrize(("users", "days"), [(40, 30), (100, 7), (8, 60)])
def test_estimate_events_within_factor_two(users: int, days: int) -> None:
    actual = sum(1 for _ in generate_events(users, days, seed=9))
    estimate = estimate_events(users, days)
    assert actual / 2 <= estimate <= actual * 2
    assert estimate_events(0, 10) == 0
