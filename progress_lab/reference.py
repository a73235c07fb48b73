"""The per-event reference fold: plain Python that reads like the spec; the yardstick."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl

from .events import KNOWN_EVENT_TYPES
from .frames import read_raw_event
from .projections import FoldOptions
from .read_models import DAILY_STATS_SCHEMA, REJECTIONS_SCHEMA, USER_PROGRESS_SCHEMA

__all__ = ["ReferenceFold", "RawEvent"]

RawEvent = tuple[int, str, str | None, str | None]
"""(global_position, event_type, event_data JSON text, metadata JSON text)."""


@dataclass
class _Session:
    started: bool = False
    user_id: str | None = None
    item_count: int | None = None
    completed: bool = False
    correct: set[str] = field(default_factory=set)


@dataclass
class _Totals:
    sessions_completed: int = 0
    duration_seconds: int = 0
    correct_items: int = 0
    item_count: int = 0


@dataclass
class _Day(_Totals):
    items_learned: int = 0
    items_reviewed: int = 0
    new_mastery_count: int = 0


@dataclass
class _User(_Totals):
    last_updated: datetime | None = None


class ReferenceFold:
    """Fold raw events one at a time, exactly as the spec words it.

    Call :meth:`fold` with batches in global order (any split gives the same result),
    then read :meth:`user_progress`, :meth:`daily_stats` and :meth:`rejections`.
    """

    def __init__(self, options: FoldOptions | None = None) -> None:
        self.options = options or FoldOptions()
        self._zone = ZoneInfo(self.options.timezone)
        self.position = 0
        self.events_folded = 0
        self.ignored = 0
        self.latest: datetime | None = None
        self.users: dict[str, _User] = {}
        self.sessions: dict[str, _Session] = {}
        # (user, item) -> mastery class of the latest review; None: answered, never reviewed.
        self.items: dict[tuple[str, str], int | None] = {}
        self.days: dict[tuple[str, date], _Day] = {}
        self.rejected: list[tuple[int, str, str]] = []

    def fold(self, events: Iterable[RawEvent]) -> ReferenceFold:
        """Fold events (ascending global positions after :attr:`position`); returns self."""
        for position, event_type, event_data, metadata in events:
            if position <= self.position:
                raise ValueError(f"event at position {position} is not after {self.position}")
            self.position = position
            self.events_folded += 1
            if event_type not in KNOWN_EVENT_TYPES:
                self.ignored += 1
                continue
            read = read_raw_event(event_type, event_data, metadata)
            if isinstance(read, str):
                self._reject(position, event_type, "malformed")
                continue
            data, meta, when = read
            reason = getattr(self, f"_on_{event_type}")(data, meta.get("user_id"), when)
            if reason is not None:
                self._reject(position, event_type, reason)
        return self

    def _reject(self, position: int, event_type: str, reason: str) -> None:
        self.rejected.append((position, event_type, reason))

    def _accept(self, user_id: str, when: datetime) -> _User:
        user = self.users.setdefault(user_id, _User())
        if user.last_updated is None or when > user.last_updated:
            user.last_updated = when
        if self.latest is None or when > self.latest:
            self.latest = when
        return user

    def _day(self, user_id: str, when: datetime) -> _Day:
        return self.days.setdefault((user_id, self.options.study_day(when, self._zone)), _Day())

    # -- one method per event type; each returns a rejection reason or None ---------

    def _on_UserCreated(self, data: dict[str, Any], _meta_user: str | None, when: datetime) -> str | None:
        self._accept(data["user_id"], when)
        return None

    def _on_SessionStarted(self, data: dict[str, Any], _meta_user: str | None, when: datetime) -> str | None:
        session = self.sessions.setdefault(data["session_id"], _Session())
        if session.started:
            return "duplicate_start"
        session.started = True
        session.user_id = data["user_id"]
        session.item_count = data["item_count"]
        self._accept(data["user_id"], when)
        return None

    def _attributed_user(self, session_id: str, meta_user: str | None) -> str | None:
        if meta_user is not None:
            return meta_user
        session = self.sessions.get(session_id)
        return session.user_id if session is not None and session.started else None

    def _on_CorrectAnswerGiven(self, data: dict[str, Any], meta_user: str | None, when: datetime) -> str | None:
        user_id = self._attributed_user(data["session_id"], meta_user)
        if user_id is None:
            return "unknown_user"
        session = self.sessions.setdefault(data["session_id"], _Session())
        if session.completed:
            return "answer_after_completion"
        session.correct.add(data["item_id"])
        self.items.setdefault((user_id, data["item_id"]), None)
        self._accept(user_id, when)
        return None

    def _on_SessionCompleted(self, data: dict[str, Any], meta_user: str | None, when: datetime) -> str | None:
        user_id = self._attributed_user(data["session_id"], meta_user)
        if user_id is None:
            return "unknown_user"
        session = self.sessions.setdefault(data["session_id"], _Session())
        if session.completed:
            return "duplicate_completion"
        session.completed = True
        user = self._accept(user_id, when)
        day = self._day(user_id, when)
        for totals in (user, day):
            totals.sessions_completed += 1
            totals.duration_seconds += data["duration_seconds"]
            if session.started:  # a session without a known item_count adds nothing to accuracy
                totals.correct_items += len(session.correct)
                totals.item_count += session.item_count or 0
        return None

    def _on_ReviewProcessed(self, data: dict[str, Any], _meta_user: str | None, when: datetime) -> str | None:
        key = (data["user_id"], data["item_id"])
        new_class = self.options.mastery_class(data["new_interval"])
        previous = self.items.get(key)  # None: answered only, or never seen
        day = self._day(data["user_id"], when)
        day.items_reviewed += 1
        if previous is None:
            day.items_learned += 1
        if new_class == 3 and previous != 3:
            day.new_mastery_count += 1
        self.items[key] = new_class
        self._accept(data["user_id"], when)
        return None

    # -- read models -----------------------------------------------------------------

    def default_as_of(self) -> date | None:
        """The study day of the latest accepted event, the default ``as_of`` of streaks."""
        return None if self.latest is None else self.options.study_day(self.latest, self._zone)

    def user_progress(self, as_of: date | None = None) -> pl.DataFrame:
        """One row per user, sorted by ``user_id``."""
        as_of = as_of or self.default_as_of()
        study_days: dict[str, list[date]] = {}
        for (user_id, day), stats in self.days.items():
            if stats.sessions_completed > 0:
                study_days.setdefault(user_id, []).append(day)
        mastery: dict[str, list[int]] = {}  # four class counts, then items reviewed
        for (user_id, _item), cls in self.items.items():
            counts = mastery.setdefault(user_id, [0, 0, 0, 0, 0])
            counts[0 if cls is None else cls] += 1
            counts[4] += cls is not None
        rows = []
        for user_id in sorted(self.users):
            user = self.users[user_id]
            counts = mastery.get(user_id, [0, 0, 0, 0, 0])
            rows.append(
                {
                    "user_id": user_id,
                    "total_items_learned": counts[4],
                    "total_sessions_completed": user.sessions_completed,
                    "total_study_time_minutes": user.duration_seconds // 60,
                    "current_streak": current_streak(study_days.get(user_id, []), as_of),
                    "accuracy_rate": user.correct_items / user.item_count if user.item_count else None,
                    "unlearned": counts[0],
                    "learning": counts[1],
                    "short_term_mastered": counts[2],
                    "long_term_mastered": counts[3],
                    "last_updated": user.last_updated,
                }
            )
        return pl.DataFrame(rows, schema=USER_PROGRESS_SCHEMA, orient="row")

    def daily_stats(self) -> pl.DataFrame:
        """One row per (user, study day) with a completed session or a review, sorted."""
        rows = [
            {
                "user_id": user_id,
                "date": day,
                "sessions_completed": stats.sessions_completed,
                "items_learned": stats.items_learned,
                "items_reviewed": stats.items_reviewed,
                "study_time_minutes": stats.duration_seconds // 60,
                "accuracy_rate": stats.correct_items / stats.item_count if stats.item_count else None,
                "new_mastery_count": stats.new_mastery_count,
            }
            for (user_id, day), stats in sorted(self.days.items())
        ]
        return pl.DataFrame(rows, schema=DAILY_STATS_SCHEMA, orient="row")

    def rejections(self) -> pl.DataFrame:
        """Every rejected event: position, type and reason, in global order."""
        return pl.DataFrame(self.rejected, schema=REJECTIONS_SCHEMA, orient="row")



def current_streak(study_days: Iterable[date], as_of: date | None) -> int:
    """Consecutive study days ending on ``as_of``, or on the day before when ``as_of`` has none."""
    if as_of is None:
        return 0
    days = set(study_days)
    end = as_of if as_of in days else as_of - timedelta(days=1)
    streak = 0
    while end in days:
        streak += 1
        end -= timedelta(days=1)
    return streak
