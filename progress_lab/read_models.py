"""The read models UserProgress and DailyStats: their columns and their SQL repositories."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

import polars as pl
import sqlalchemy as sa

from ._schema import daily_stats as _daily
from ._schema import user_progress as _progress

__all__ = [
    "USER_PROGRESS_SCHEMA",
    "DAILY_STATS_SCHEMA",
    "REJECTIONS_SCHEMA",
    "UserProgressRepository",
    "DailyStatsRepository",
]

_UTC = pl.Datetime("us", "UTC")

USER_PROGRESS_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "total_items_learned": pl.Int64(),
    "total_sessions_completed": pl.Int64(),
    "total_study_time_minutes": pl.Int64(),
    "current_streak": pl.Int64(),
    "accuracy_rate": pl.Float64(),
    "unlearned": pl.Int64(),
    "learning": pl.Int64(),
    "short_term_mastered": pl.Int64(),
    "long_term_mastered": pl.Int64(),
    "last_updated": _UTC,
}
"""Columns of ``UserProgress``, in order (one row per user, sorted by ``user_id``)."""

DAILY_STATS_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "date": pl.Date(),
    "sessions_completed": pl.Int64(),
    "items_learned": pl.Int64(),
    "items_reviewed": pl.Int64(),
    "study_time_minutes": pl.Int64(),
    "accuracy_rate": pl.Float64(),
    "new_mastery_count": pl.Int64(),
}
"""Columns of ``DailyStats``, in order (one row per user and study day, sorted)."""

REJECTIONS_SCHEMA: dict[str, pl.DataType] = {
    "global_position": pl.Int64(),
    "event_type": pl.String(),
    "reason": pl.String(),
}
"""Columns of the rejections: which event, and why it changed no statistic."""


def _frame(rows: Sequence[Any], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame([dict(r._mapping) for r in rows], schema=schema, orient="row")


def _upsert(conn: sa.Connection, table: sa.Table, frame: pl.DataFrame, keys: list[str]) -> int:
    """Insert rows, or update them where the key exists: one driver-level executemany.

    Values are bound parameters, converted in polars to what each driver stores (SQLite
    keeps dates and times as the same text SQLAlchemy writes), so no dict per row is made.
    """
    if frame.height == 0:
        return 0
    sqlite = conn.dialect.name == "sqlite"
    columns = list(frame.columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in keys)
    marker = "?" if sqlite else "%s"
    statement = (
        f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join(marker for _ in columns)}) "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
    )
    if sqlite:
        frame = frame.with_columns(
            *(pl.col(c).dt.strftime("%Y-%m-%d") for c, t in frame.schema.items() if t == pl.Date),
            *(
                pl.col(c).dt.convert_time_zone("UTC").dt.strftime("%Y-%m-%d %H:%M:%S%.6f")
                for c, t in frame.schema.items()
                if isinstance(t, pl.Datetime)
            ),
        )
    conn.exec_driver_sql(statement, frame.rows())
    return frame.height


class UserProgressRepository:
    """``UserProgress`` rows in SQL, written in bulk by the projector."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def get_current_progress(self, user_id: str) -> dict[str, Any] | None:
        """The user's progress as a dict of the read model's columns, or ``None``."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(_progress).where(_progress.c.user_id == user_id)).first()
        return None if row is None else _frame([row], USER_PROGRESS_SCHEMA).row(0, named=True)

    def all(self) -> pl.DataFrame:
        """Every user's progress, sorted by ``user_id``."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(_progress).order_by(_progress.c.user_id)).all()
        return _frame(rows, USER_PROGRESS_SCHEMA)

    def update_progress(self, frame: pl.DataFrame, conn: sa.Connection | None = None) -> int:
        """Upsert rows of ``USER_PROGRESS_SCHEMA``; with ``conn``, inside that transaction."""
        frame = frame.select(list(USER_PROGRESS_SCHEMA))
        if conn is not None:
            return _upsert(conn, _progress, frame, ["user_id"])
        with self.engine.begin() as own:
            return _upsert(own, _progress, frame, ["user_id"])

    def clear(self, conn: sa.Connection) -> None:
        """Delete every row (inside the caller's transaction), for a rebuild."""
        conn.execute(_progress.delete())


class DailyStatsRepository:
    """``DailyStats`` rows in SQL, keyed by user and study day."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def get_daily_stats(self, user_id: str, day: date) -> dict[str, Any] | None:
        """One user's statistics for one study day, or ``None`` when there are none."""
        query = sa.select(_daily).where(_daily.c.user_id == user_id, _daily.c.date == day)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else _frame([row], DAILY_STATS_SCHEMA).row(0, named=True)

    def get_stats_range(self, user_id: str, start: date, end: date) -> pl.DataFrame:
        """One user's rows from ``start`` to ``end``, both included, by date."""
        query = (
            sa.select(_daily)
            .where(_daily.c.user_id == user_id, _daily.c.date >= start, _daily.c.date <= end)
            .order_by(_daily.c.date)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return _frame(rows, DAILY_STATS_SCHEMA)

    def all(self) -> pl.DataFrame:
        """Every row, sorted by user and date."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(_daily).order_by(_daily.c.user_id, _daily.c.date)).all()
        return _frame(rows, DAILY_STATS_SCHEMA)

    def update_daily_stats(self, frame: pl.DataFrame, conn: sa.Connection | None = None) -> int:
        """Upsert rows of ``DAILY_STATS_SCHEMA``; with ``conn``, inside that transaction."""
        frame = frame.select(list(DAILY_STATS_SCHEMA))
        if conn is not None:
            return _upsert(conn, _daily, frame, ["user_id", "date"])
        with self.engine.begin() as own:
            return _upsert(own, _daily, frame, ["user_id", "date"])

    def clear(self, conn: sa.Connection) -> None:
        """Delete every row (inside the caller's transaction), for a rebuild."""
        conn.execute(_daily.delete())
