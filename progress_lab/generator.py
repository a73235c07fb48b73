"""Seeded, deterministic synthetic learners: the event logs that benchmarks and tests replay."""

from __future__ import annotations

import gc
import math
import random
from array import array
from bisect import bisect_left
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from heapq import heappop, heappush
from operator import itemgetter
from os import PathLike
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    import polars as pl

__all__ = [
    "ARCHETYPES",
    "DEFAULT_START",
    "estimate_events",
    "generate_events",
    "generate_frame",
    "write_jsonl",
]

DEFAULT_START = datetime(2026, 1, 5, tzinfo=UTC)
"""The first day of every generated period unless ``start`` is given (a Monday)."""

ARCHETYPES: tuple[str, ...] = ("daily", "weekend", "lapsing", "churned")
"""The study habits a learner can have."""

_ARCHETYPE_CUMULATIVE = (0.30, 0.50, 0.80, 1.00)

# (UTC offset in hours, cumulative share of learners): the Americas, Europe, India, East Asia.
_UTC_OFFSETS: tuple[tuple[float, float], ...] = (
    (-8.0, 0.07), (-6.0, 0.11), (-5.0, 0.24), (-3.0, 0.30), (0.0, 0.46), (1.0, 0.70),
    (2.0, 0.77), (3.0, 0.81), (5.5, 0.87), (8.0, 0.94), (9.0, 1.01),
)  # fmt: skip

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = 1_000_000
_MINUTE = 60 * _SECOND
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR

# Anomaly and behaviour rates; the tests assert each of them shows up, so keep them > 0.
_ABANDON_P = 0.05
_DUP_COMPLETED_P = 0.005
_DUP_STARTED_P = 0.003
_LATE_ANSWER_P = 0.01  # per completed session: one of the last answers arrives after completion
_LATE_P = 0.001  # any answer, review or completion delivered minutes to hours late
_ANONYMOUS_P = 0.03  # answers/completions whose metadata lacks the user id
_MIN_ITEMS = 5
_MAX_ITEMS = 30
_INITIAL_EF = 250  # easiness factors are kept in hundredths, see _EF_DELTA
# SM-2's EF' = EF + 0.1 - (5-q)(0.08 + (5-q)0.02) moves EF by a multiple of 0.02 for every
# quality q, so integer hundredths follow the formula exactly, with no float drift.
_EF_DELTA: tuple[int, ...] = (-80, -54, -32, -14, 0, 10)
_MIN_EF = 130
_MAX_INTERVAL = 36_500.0

# Decks are shared by all learners, so item ids repeat across users as they would in the app.
_DECKS: tuple[tuple[str, int], ...] = (
    ("es-a1", 600),
    ("es-a2", 900),
    ("fr-a1", 600),
    ("de-a1", 700),
    ("ja-kana", 214),
    ("ja-n5", 800),
    ("geo-capitals", 195),
    ("med-anatomy", 1200),
    ("chem-elements", 118),
    ("hist-dates", 400),
)
_DECK_IDS: tuple[str, ...] = tuple(f"deck-{slug}" for slug, _ in _DECKS)
_ITEM_IDS: tuple[tuple[str, ...], ...] = tuple(
    tuple(f"{slug}-{k:04d}" for k in range(size)) for slug, size in _DECKS
)
# Heap keys pack (due minute, item index) into one small int, which is far cheaper than tuples.
_ITEM_BITS = 12
_ITEM_MASK = (1 << _ITEM_BITS) - 1
assert max(size for _, size in _DECKS) <= _ITEM_MASK + 1


def _difficulty(deck: int, item: int) -> float:
    # A fixed multiplicative hash instead of hash(): identical on every machine and run.
    h = ((item + 1) * 2654435761 + (deck + 1) * 40503) & 0xFFFFFFFF
    return 0.6 + h / 0xFFFFFFFF  # error-rate multiplier in [0.6, 1.6]


_DIFFICULTY: tuple[tuple[float, ...], ...] = tuple(
    tuple(_difficulty(d, k) for k in range(size)) for d, (_, size) in enumerate(_DECKS)
)
# Standard-normal quantiles indexed by a uniform draw stand in for random.gauss (Python
# code, slow) and for math.exp at run time. Rounding the tables to 4 decimals makes them
# identical on every platform even if libm's log/exp differ in the last bit; everything
# else in the simulation is IEEE arithmetic, which is exact to the bit everywhere.
_QUANTILES = 4096
_NORMAL: tuple[float, ...] = tuple(
    round(NormalDist().inv_cdf((i + 0.5) / _QUANTILES), 4) for i in range(_QUANTILES)
)
_RT_NOISE: tuple[float, ...] = tuple(round(math.exp(0.45 * z), 4) for z in _NORMAL)  # lognormal


def _powers(base: float, n: int) -> tuple[float, ...]:
    # Repeated multiplication rather than ** (libm pow), for bit-identical values everywhere.
    out = [1.0]
    for _ in range(n - 1):
        out.append(out[-1] * base)
    return tuple(out)


# Each successful repetition makes an item easier to recall.
_RECALL_DECAY: tuple[float, ...] = _powers(0.7, 256)

_FIRST_NAMES = (
    "Ada", "Ben", "Chloé", "Dmitri", "Emma", "Farid", "Greta", "Hiro", "Ingrid", "José",
    "Kwame", "Lena", "Łukasz", "Mia", "Noah", "Olga", "Priya", "Quentin", "Rosa", "Søren",
    "Tariq", "Uma", "Victor", "Wen", "Xochitl", "Yusuf", "Zoë", "美咲", "Ana", "Leon",
)  # fmt: skip
_LAST_INITIALS = "ABCDEFGHIJKLMNOPRSTVWYZ"


_MMSS: tuple[str, ...] = tuple(f"{m:02d}:{s:02d}." for m in range(60) for s in range(60))
_HOUR_PREFIXES: dict[int, str] = {}


def _second_prefix(second: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS.`` of an epoch second."""
    hour, in_hour = divmod(second, 3600)
    prefix = _HOUR_PREFIXES.get(hour)
    if prefix is None:
        # Bounded by the hours of one generated period; strftime is too slow to call per event.
        prefix = _HOUR_PREFIXES[hour] = (_EPOCH + timedelta(hours=hour)).strftime("%Y-%m-%dT%H:")
    return prefix + _MMSS[in_hour]


def _to_us(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * _SECOND + delta.microseconds


def _dashed(value: int) -> str:
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class _Deck:
    """One learner's SM-2 state for the items of one deck they have met."""

    __slots__ = ("deck", "size", "next_new", "interval", "ef", "reps", "due")

    def __init__(self, deck: int) -> None:
        self.deck = deck
        self.size = _DECKS[deck][1]
        self.next_new = 0
        self.interval = array("d")
        self.ef = array("h")  # hundredths
        self.reps = bytearray()
        self.due: list[int] = []  # heap of (due_minute << _ITEM_BITS) | item


class _Learner:
    """A synthetic learner: fixed habits drawn once, plus the state that evolves day by day."""

    __slots__ = (
        "user_id", "stream", "email", "display_name", "archetype", "skill", "speed_ms",
        "pref_hour", "hour_sd", "max_items", "new_per_session", "decks", "signup_day",
        "churn_day", "gap_until", "busy_until", "created",
    )  # fmt: skip

    user_id: str
    stream: str
    email: str
    display_name: str
    archetype: int
    skill: float
    speed_ms: float
    pref_hour: float
    hour_sd: float
    max_items: int
    new_per_session: int
    decks: list[_Deck]
    signup_day: int
    churn_day: int
    gap_until: int
    busy_until: int
    created: bool


class _Simulator:
    """Draws every learner's sessions day by day from one ``random.Random``.

    A single generator consumed in a fixed order (day, then user, then event) is what
    makes the output a pure function of the arguments.
    """

    def __init__(self, users: int, days: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.days = days
        self._getrandbits = self.rng.getrandbits
        self._seconds: dict[int, str] = {}
        self.out: list[tuple[int, dict[str, Any]]] = []
        self._append = self.out.append
        self.learners = [self._new_learner(i) for i in range(users)]

    def _uuid4(self) -> str:
        value = self.rng.getrandbits(128)
        value = (value & ~(0xF << 76)) | (0x4 << 76)
        value = (value & ~(0x3 << 62)) | (0x2 << 62)
        return _dashed(value)

    def _new_learner(self, index: int) -> _Learner:
        rng = self.rng
        days = self.days
        learner = _Learner()
        learner.user_id = self._uuid4()
        learner.stream = "user-" + learner.user_id
        learner.email = f"learner{index:04d}@example.com"
        learner.display_name = (
            f"{_FIRST_NAMES[int(rng.random() * len(_FIRST_NAMES))]} "
            f"{_LAST_INITIALS[int(rng.random() * len(_LAST_INITIALS))]}."
        )
        r = rng.random()
        learner.archetype = next(i for i, c in enumerate(_ARCHETYPE_CUMULATIVE) if r < c)
        learner.skill = 0.60 + 0.33 * rng.random()
        learner.speed_ms = 2_500.0 + 5_500.0 * rng.random()  # median response time
        # Habits live in local time; the log is in UTC. Mapping through a time zone spreads
        # sessions over the whole UTC day, and puts some evenings right on UTC midnight.
        r = rng.random()
        if r < 0.25:  # night owl, in bed with the phone
            local, learner.hour_sd = 22.8 + 2.0 * rng.random(), 0.5
        elif r < 0.50:
            local, learner.hour_sd = 6.5 + 2.5 * rng.random(), 0.5
        elif r < 0.65:
            local, learner.hour_sd = 11.5 + 2.5 * rng.random(), 0.7
        else:
            local, learner.hour_sd = 18.0 + 4.5 * rng.random(), 0.8
        r = rng.random()
        offset = next(o for o, c in _UTC_OFFSETS if r < c)
        learner.pref_hour = (local - offset) % 24.0
        learner.max_items = 10 + int((_MAX_ITEMS - 9) * rng.random())
        learner.new_per_session = 3 + int(6 * rng.random())
        n_decks = 1 + (rng.random() < 0.4) + (rng.random() < 0.15)
        picks: list[int] = []
        while len(picks) < n_decks:
            d = int(rng.random() * len(_DECKS))
            if d not in picks:
                picks.append(d)
        learner.decks = [_Deck(d) for d in picks]
        # Most sign up on day one; the rest trickle in over the first 30% of the period.
        learner.signup_day = 0 if rng.random() < 0.5 else int(rng.random() * days * 0.3)
        # Churners are gone well before the last third, which is their signature.
        active = max(2, int(days * (0.12 + 0.35 * rng.random())))
        learner.churn_day = min(learner.signup_day + active, int(days * 0.6))
        learner.gap_until = 0
        learner.busy_until = 0
        learner.created = False
        return learner

    def _sessions_today(self, learner: _Learner, day: int, weekday: int) -> int:
        # One uniform draw per decision: the second-session region nests in the first.
        r = self.rng.random()
        a = learner.archetype
        if a == 0:  # daily
            return (r < 0.90) + (r < 0.15)
        if a == 1:  # weekend
            if weekday >= 5:
                return (r < 0.85) + (r < 0.30)
            return int(r < 0.06)
        if a == 2:  # lapsing: active streaks broken by gaps of several days
            if day < learner.gap_until:
                return 0
            if r < 0.13:
                learner.gap_until = day + 3 + int(8 * self.rng.random())
                return 0
            return (r < 0.90) + (r < 0.20)
        if day >= learner.churn_day:  # churned: never comes back
            return 0
        return (r < 0.88) + (r < 0.25)

    def _emit(
        self,
        event_type: str,
        stream: str,
        data: dict[str, Any],
        user_id: str | None,
        ts: int,
        created: int,
        correlation: str | None,
        causation: str | None,
    ) -> str:
        # UUIDv7 layout: the ms of created_at first, so ids sort roughly in append order;
        # 74 random bits make a collision in 10^7 events astronomically unlikely.
        rnd = self._getrandbits(74)
        ms = created // 1000
        event_id = "%08x-%04x-%04x-%04x-%012x" % (  # noqa: UP031 - faster than an f-string here
            ms >> 16,
            ms & 0xFFFF,
            0x7000 | (rnd >> 62),
            0x8000 | ((rnd >> 48) & 0x3FFF),
            rnd & 0xFFFFFFFFFFFF,
        )
        # An event's timestamp and created_at, and neighbouring events, mostly share their
        # second: caching "YYYY-MM-DDTHH:MM:SS." per second halves the formatting cost.
        cache = self._seconds
        second, frac = divmod(ts, _SECOND)
        prefix = cache.get(second)
        if prefix is None:
            prefix = cache[second] = _second_prefix(second)
        ts_text = f"{prefix}{frac:06d}Z"
        created_second, frac = divmod(created, _SECOND)
        if created_second != second:
            prefix = cache.get(created_second)
            if prefix is None:
                prefix = cache[created_second] = _second_prefix(created_second)
        self._append(
            (
                created,
                {
                    "event_id": event_id,
                    "stream_id": stream,
                    "event_type": event_type,
                    "event_data": data,
                    "metadata": {
                        "user_id": user_id,
                        "timestamp": ts_text,
                        "correlation_id": correlation,
                        "causation_id": causation,
                    },
                    "created_at": f"{prefix}{frac:06d}Z",
                },
            )
        )
        return event_id

    def collect_into(self, out: list[tuple[int, dict[str, Any]]]) -> None:
        """Append the next ``(created_us, event)`` entries to ``out``, in generation order."""
        self.out = out
        self._append = out.append
        if len(self._seconds) > 200_000:
            self._seconds.clear()  # a day has 86,400 seconds; keep about two days' worth

    def _delay(self) -> int:
        # Delivery delay 5-500 ms, skewed towards the fast end like real network latency.
        r = self.rng.random()
        return 5_000 + int(495_000 * r * r * r)

    def _late_delay(self, low_s: float) -> int:
        # Between low_s and 6 h, median ~20 min: an offline client syncing later. r**4 gives
        # the long tail with plain arithmetic (no libm, see _NORMAL).
        r = self.rng.random()
        r *= r
        return int((low_s + (21_600.0 - low_s) * r * r) * _SECOND)

    def simulate_day(self, learner: _Learner, day: int, day_start: int, weekday: int) -> None:
        """Append the events of ``learner``'s sessions that start on ``day`` to ``self.out``."""
        if day < learner.signup_day:
            return
        n = self._sessions_today(learner, day, weekday)
        if not learner.created:
            if day != learner.signup_day:
                return
            n = max(n, 1)  # people sign up in order to study
        if n == 0:
            return
        rng = self.rng
        day_end = day_start + _DAY
        t0 = 0
        for j in range(n):
            if j == 0:
                hour = learner.pref_hour + learner.hour_sd * _NORMAL[int(rng.random() * _QUANTILES)]
                # A session may start after the next midnight (a late evening), never before
                # this one: the merge in _batches relies on sessions of day d starting at or
                # after day d's midnight.
                if hour < 0.0:
                    hour += 24.0
                t0 = day_start + int(hour * _HOUR)
            else:
                t0 = learner.busy_until + int((1.0 + 7.0 * rng.random()) * _HOUR)
            t0 = max(t0, learner.busy_until + 5 * _MINUTE)
            last_created = 0
            if not learner.created:
                t0 = max(t0, day_start + 20 * _MINUTE)
                ts = t0 - int((60 + 840 * rng.random()) * _SECOND)
                last_created = ts + self._delay()
                self._emit(
                    "UserCreated",
                    learner.stream,
                    {
                        "type": "UserCreated",
                        "user_id": learner.user_id,
                        "email": learner.email,
                        "display_name": learner.display_name,
                    },
                    learner.user_id,
                    ts,
                    last_created,
                    None,
                    None,
                )
                learner.created = True
            if t0 >= day_end + 2 * _HOUR:
                break  # too late for another session of this day
            learner.busy_until = self._session(learner, t0, last_created)

    def _session(self, learner: _Learner, t0: int, last_created: int) -> int:
        """Emit one session starting at ``t0``; return when the learner is free again."""
        rng = self.rng
        decks = learner.decks
        # The first deck is the learner's main one; others get the occasional session.
        deck = decks[0] if len(decks) == 1 or rng.random() < 0.7 else decks[int(rng.random() * len(decks))]
        d = deck.deck
        now_min = t0 // _MINUTE
        due = deck.due
        cap = learner.max_items
        keys: list[int] = []
        # Most overdue first, as SM-2 apps do; the cap leaves the rest for later sessions.
        while due and (due[0] >> _ITEM_BITS) <= now_min and len(keys) < cap:
            keys.append(heappop(due))
        n_new = learner.new_per_session if len(keys) < cap else 0
        n_new = max(n_new, _MIN_ITEMS - len(keys))
        n_new = min(n_new, cap - len(keys), deck.size - deck.next_new)
        new_key = now_min << _ITEM_BITS
        for _ in range(max(n_new, 0)):
            k = deck.next_new
            deck.next_new += 1
            deck.interval.append(0.0)
            deck.ef.append(_INITIAL_EF)
            deck.reps.append(0)
            keys.append(new_key | k)
        # A deck with nothing due and nothing new left: the learner reviews ahead of schedule.
        while len(keys) < _MIN_ITEMS and due:
            keys.append(heappop(due))
        n_items = len(keys)
        if n_items == 0:
            return t0

        user_id = learner.user_id
        session_id = self._uuid4()
        stream = "session-" + session_id
        created = max(t0 + self._delay(), last_created + 1)
        started_data = {
            "type": "SessionStarted",
            "session_id": session_id,
            "user_id": user_id,
            "item_count": n_items,
            "deck_id": _DECK_IDS[d],
        }
        started_id = self._emit(
            "SessionStarted", stream, started_data, user_id, t0, created, session_id, None
        )
        last_created = created
        if rng.random() < _DUP_STARTED_P:
            # A client retry: same payload and timestamp, a new event id, appended a bit later.
            self._emit(
                "SessionStarted", stream, dict(started_data), user_id, t0,
                created + int((0.05 + 3.0 * rng.random()) * _SECOND), session_id, None,
            )  # fmt: skip

        abandoned = rng.random() < _ABANDON_P
        shown = int(n_items * rng.random()) if abandoned else n_items
        late_pos = -1
        if not abandoned and rng.random() < _LATE_ANSWER_P:
            late_pos = n_items - 1 - int(rng.random() * min(3, n_items))

        item_ids = _ITEM_IDS[d]
        difficulty = _DIFFICULTY[d]
        intervals, efs, reps_of = deck.interval, deck.ef, deck.reps
        miss_base = 1.0 - learner.skill
        speed = learner.speed_ms
        rt_noise = _RT_NOISE
        ef_delta = _EF_DELTA
        recall_decay = _RECALL_DECAY
        quantiles = _QUANTILES
        late_p = _LATE_P
        anonymous_p = _ANONYMOUS_P
        rand = rng.random
        emit = self._emit
        t = t0 + int((0.3 + 1.2 * rand()) * _SECOND)
        for i in range(shown):
            key = keys[i]
            k = key & _ITEM_MASK
            reps = reps_of[k]
            correct = rand() >= miss_base * difficulty[k] * recall_decay[reps]
            rt_f = speed * rt_noise[int(rand() * quantiles)]
            if not correct:
                rt_f *= 1.5
            r = rand()
            if r < 0.012:
                # Distracted mid-answer: a message (seconds to minutes), now and then a
                # real break (5-30 min) that stretches the session, e.g. across midnight.
                rt_f += 300_000.0 + 1_500_000.0 * rand() if r < 0.002 else 15_000.0 + 200_000.0 * rand()
            rt = int(rt_f)
            t += rt * 1000
            item_id = item_ids[k]
            cause = started_id
            if correct:
                r = rand()
                created = t + 5_000 + int(495_000 * r * r * r)
                if i == late_pos:
                    created = t + self._late_delay(300.0)
                elif rand() < late_p:
                    created = t + self._late_delay(60.0)
                else:
                    # The client sends its events in order, so a session's stream stays ordered.
                    if created <= last_created:
                        created = last_created + 1
                    last_created = created
                anonymous = rand() < anonymous_p
                cause = emit(
                    "CorrectAnswerGiven",
                    stream,
                    {
                        "type": "CorrectAnswerGiven",
                        "session_id": session_id,
                        "item_id": item_id,
                        "response_time_ms": rt,
                    },
                    None if anonymous else user_id,
                    t,
                    created,
                    session_id,
                    started_id,
                )
                quality = 5 if rt_f < 0.8 * speed else (4 if rt_f < 1.6 * speed else 3)
            else:
                r = rand()
                quality = 2 if r < 0.4 else (1 if r < 0.8 else 0)

            # SM-2: EF moves with quality (never below 1.3); a lapse restarts the repetitions.
            prev = intervals[k]
            ef = efs[k]
            if quality < 3:
                reps = 0
                new = 1.0 if quality == 2 else 0.0  # 0.0: relearn later today
            else:
                reps += 1
                if reps == 1:
                    new = 1.0
                elif reps == 2:
                    new = 6.0
                else:
                    new = min(round(prev * ef / 100, 4), _MAX_INTERVAL)
            ef += ef_delta[quality]
            if ef < _MIN_EF:
                ef = _MIN_EF
            intervals[k] = new
            efs[k] = ef
            reps_of[k] = reps if reps < 255 else 255
            due_min = t // _MINUTE + (10 if new == 0.0 else int(new * 1440))
            heappush(due, (due_min << _ITEM_BITS) | k)

            ts = t + 1_000 + int(19_000 * rand())
            r = rand()
            created = ts + 5_000 + int(495_000 * r * r * r)
            if rand() < late_p:
                created = ts + self._late_delay(60.0)
            else:
                if created <= last_created:
                    created = last_created + 1
                last_created = created
            emit(
                "ReviewProcessed",
                learner.stream,
                {
                    "type": "ReviewProcessed",
                    "user_id": user_id,
                    "item_id": item_id,
                    "quality": quality,
                    "previous_interval": prev,
                    "new_interval": new,
                    "easiness_factor": ef / 100,
                },
                user_id,
                ts,
                created,
                session_id,
                cause,
            )
            t += int((0.2 + 1.0 * rand()) * _SECOND)

        # Items drawn for the session but never shown keep their old due date.
        for i in range(shown, n_items):
            heappush(due, keys[i])
        if abandoned:
            return t

        tc = t + int((0.1 + 0.7 * rand()) * _SECOND)
        created = tc + self._delay()
        if rand() < _LATE_P:
            created = tc + self._late_delay(60.0)
        elif created <= last_created:
            created = last_created + 1
        completed_data = {
            "type": "SessionCompleted",
            "session_id": session_id,
            "duration_seconds": (tc - t0) // _SECOND,
        }
        meta_user = None if rand() < _ANONYMOUS_P else user_id
        emit("SessionCompleted", stream, completed_data, meta_user, tc, created, session_id, started_id)
        if rand() < _DUP_COMPLETED_P:
            # The client timed out waiting for the ack and sent the completion again.
            emit(
                "SessionCompleted", stream, dict(completed_data), meta_user, tc,
                created + int((1.0 + 29.0 * rand()) * _SECOND), session_id, started_id,
            )  # fmt: skip
        return tc


def _check_args(users: int, days: int) -> None:
    for name, value in (("users", users), ("days", days)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, not {value!r}")


@contextmanager
def _gc_paused() -> Iterator[None]:
    # The log has no reference cycles, yet millions of fresh dicts would trigger thousands
    # of collections (~20% of the run time); pause the collector, then restore its state.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _batches(users: int, days: int, seed: int, start: datetime | None) -> Iterator[list[dict[str, Any]]]:
    """Yield the log in append order, one list per simulated day (plus a final flush)."""
    _check_args(users, days)
    start_dt = DEFAULT_START if start is None else start
    if start_dt.tzinfo is None:
        start_dt = start_dt.replace(tzinfo=UTC)
    start_us = _to_us(start_dt)
    first_weekday = start_dt.astimezone(UTC).weekday()
    sim = _Simulator(users, days, seed)
    learners = sim.learners
    pending: list[tuple[int, dict[str, Any]]] = []
    by_created = itemgetter(0)
    for day in range(days):
        day_start = start_us + day * _DAY
        weekday = (first_weekday + day) % 7
        sim.collect_into(pending)
        for learner in learners:
            sim.simulate_day(learner, day, day_start, weekday)
        # Every session of a later day starts at or after the next midnight, so all that is
        # created before it is final. The rest (sessions running past midnight, late
        # deliveries) waits in `pending`. Timsort merges the already sorted runs in ~O(n),
        # and is stable: ties keep generation order, so the result is fully determined.
        pending.sort(key=by_created)
        cut = bisect_left(pending, day_start + _DAY, key=by_created)
        if cut:
            yield [entry[1] for entry in pending[:cut]]
        pending = pending[cut:]
    if pending:
        pending.sort(key=by_created)
        yield [entry[1] for entry in pending]


def generate_events(
    users: int, days: int, seed: int = 0, start: datetime | None = None
) -> Iterator[dict[str, Any]]:
    """Stream a synthetic event log in append (``created_at``) order.

    Parameters
    ----------
    users : int
        Number of learners; each one signs up (``UserCreated``) within the first 30% of
        the period.
    days : int
        Length of the period in days; day ``d`` is the 24 h from ``start + d days``.
    seed : int, default 0
        Seed of the only random generator used (``random.Random``, which takes a negative
        seed's absolute value); equal arguments give equal logs on every machine and run.
    start : datetime or None, default None
        Start of the period; ``None`` means :data:`DEFAULT_START` (2026-01-05T00:00:00Z).
        A naive datetime is taken to be UTC.

    Yields
    ------
    dict
        An event with the keys ``event_id``, ``stream_id``, ``event_type``,
        ``event_data``, ``metadata`` and ``created_at``, in that order (one line of the
        JSONL import format); timestamps are ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` strings.

    Notes
    -----
    Memory is bounded by one day's events (about ``10 * users`` of them) plus the SM-2
    state of the items each learner has met: days are simulated one at a time and only
    events created after the next midnight are held back.
    """
    for batch in _batches(users, days, seed, start):
        yield from batch


def write_jsonl(
    path: str | PathLike[str],
    users: int,
    days: int,
    seed: int = 0,
    start: datetime | None = None,
) -> int:
    """Write the log of :func:`generate_events` as JSON Lines.

    Parameters
    ----------
    path : str or os.PathLike
        File to create or overwrite.
    users, days, seed, start
        As for :func:`generate_events`.

    Returns
    -------
    int
        The number of events (lines) written.

    Notes
    -----
    One compact UTF-8 JSON object per line, ``\\n``-terminated; the bytes are identical
    across runs for the same arguments.
    """
    dumps = orjson.dumps
    newline = orjson.OPT_APPEND_NEWLINE
    count = 0
    with _gc_paused(), open(path, "wb", buffering=1 << 20) as fh:
        write = fh.write
        for batch in _batches(users, days, seed, start):
            # Line by line into the buffer: joining a whole day first is slower, as large
            # fresh allocations cost page faults on every batch.
            for event in batch:
                write(dumps(event, option=newline))
            count += len(batch)
    return count


def generate_frame(users: int, days: int, seed: int = 0, start: datetime | None = None) -> pl.DataFrame:
    """Build the log of :func:`generate_events` as a polars DataFrame, one row per event.

    Parameters
    ----------
    users, days, seed, start
        As for :func:`generate_events`.

    Returns
    -------
    polars.DataFrame
        String columns ``event_id``, ``stream_id``, ``event_type``, ``event_data`` (JSON),
        ``metadata`` (JSON) and ``created_at`` (``YYYY-MM-DDTHH:MM:SS.ffffffZ``), in
        append order.
    """
    import polars as pl  # only this function needs it, and it is slow to import

    columns: dict[str, list[str]] = {
        "event_id": [],
        "stream_id": [],
        "event_type": [],
        "event_data": [],
        "metadata": [],
        "created_at": [],
    }
    dumps = orjson.dumps
    with _gc_paused():
        for batch in _batches(users, days, seed, start):
            columns["event_id"].extend(e["event_id"] for e in batch)
            columns["stream_id"].extend(e["stream_id"] for e in batch)
            columns["event_type"].extend(e["event_type"] for e in batch)
            columns["event_data"].extend(dumps(e["event_data"]).decode() for e in batch)
            columns["metadata"].extend(dumps(e["metadata"]).decode() for e in batch)
            columns["created_at"].extend(e["created_at"] for e in batch)
    return pl.DataFrame(columns, schema={name: pl.String for name in columns})


# Events per learner-day, measured over several seeds and sizes (15-16 for 30+ days); short
# periods have fewer, as late sign-ups make up a larger share of them.
_EVENTS_PER_USER_DAY = 15.0


def estimate_events(users: int, days: int) -> int:
    """Roughly how many events :func:`generate_events` yields.

    Parameters
    ----------
    users, days : int
        As for :func:`generate_events`.

    Returns
    -------
    int
        The expected number of events, within ~15% for 100+ users and 30+ days (small
        runs vary more); use it to pick ``users`` and ``days`` for a target log size.
    """
    _check_args(users, days)
    if users == 0 or days == 0:
        return 0
    rate = _EVENTS_PER_USER_DAY if days >= 30 else 12.0 + 0.1 * days
    return round(users * days * rate)
