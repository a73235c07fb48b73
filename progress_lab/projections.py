"""The vectorized fold: a batch of events (a polars DataFrame) and a state in, a new state out."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import polars as pl

from .errors import ConsistencyError, ProjectionError, SerializationError
from .events import KNOWN_EVENT_TYPES
from .read_models import DAILY_STATS_SCHEMA, REJECTIONS_SCHEMA, USER_PROGRESS_SCHEMA

__all__ = ["FoldOptions", "ProjectionState", "fold"]

_UTC = pl.Datetime("us", "UTC")
_EPOCH = date(1970, 1, 1)


@dataclass(frozen=True)
class FoldOptions:
    """How events become statistics: the study-day clock and the mastery cut-offs.

    Parameters
    ----------
    timezone
        IANA zone of the study day, e.g. ``"Europe/Berlin"``.
    day_start_hour
        Hour at which a study day begins (Anki's default rollover is 4).
    short_term_days, long_term_days
        Interval cut-offs: ``learning < short_term_days <= short_term_mastered <
        long_term_days <= long_term_mastered`` (below 1 day an item is ``unlearned``).
    """

    timezone: str = "UTC"
    day_start_hour: int = 0
    short_term_days: float = 7.0
    long_term_days: float = 21.0

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {self.timezone!r}") from None
        if not 0 <= self.day_start_hour <= 23:
            raise ValueError("day_start_hour must be between 0 and 23")
        if not 1 <= self.short_term_days < self.long_term_days:
            raise ValueError("mastery cut-offs need 1 <= short_term_days < long_term_days")

    def study_day(self, when: datetime, zone: ZoneInfo | None = None) -> date:
        """The study day of an instant: local wall time minus ``day_start_hour``, as a date."""
        local = when.astimezone(zone or ZoneInfo(self.timezone)).replace(tzinfo=None)
        return (local - timedelta(hours=self.day_start_hour)).date()

    def study_day_expr(self, column: str) -> pl.Expr:
        """:meth:`study_day` as a polars expression over a UTC datetime column."""
        local = pl.col(column).dt.convert_time_zone(self.timezone).dt.replace_time_zone(None)
        return (local - pl.duration(hours=self.day_start_hour)).dt.date()

    def mastery_class(self, interval: float) -> int:
        """0 unlearned, 1 learning, 2 short-term mastered, 3 long-term mastered."""
        if interval < 1:
            return 0
        if interval < self.short_term_days:
            return 1
        return 2 if interval < self.long_term_days else 3

    def mastery_expr(self, column: str) -> pl.Expr:
        """:meth:`mastery_class` as a polars expression."""
        value = pl.col(column)
        return (
            pl.when(value < 1)
            .then(0)
            .when(value < self.short_term_days)
            .then(1)
            .when(value < self.long_term_days)
            .then(2)
            .otherwise(3)
            .cast(pl.Int8)
        )


_STATE_SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "users": {
        "user_id": pl.String(),
        "sessions_completed": pl.Int64(),
        "duration_seconds": pl.Int64(),
        "correct_items": pl.Int64(),
        "item_count": pl.Int64(),
        "last_updated": _UTC,
    },
    "days": {
        "user_id": pl.String(),
        "date": pl.Date(),
        "sessions_completed": pl.Int64(),
        "duration_seconds": pl.Int64(),
        "correct_items": pl.Int64(),
        "item_count": pl.Int64(),
        "items_learned": pl.Int64(),
        "items_reviewed": pl.Int64(),
        "new_mastery_count": pl.Int64(),
    },
    # mastery: class of the latest review; null when the item was only answered.
    "items": {"user_id": pl.String(), "item_id": pl.String(), "mastery": pl.Int8()},
    "sessions": {
        "session_id": pl.String(),
        "started": pl.Boolean(),
        "user_id": pl.String(),
        "item_count": pl.Int64(),
        "completed": pl.Boolean(),
    },
    # Distinct answered items of sessions not completed yet (completed ones are settled).
    "session_items": {"session_id": pl.String(), "item_id": pl.String()},
    "rejections": REJECTIONS_SCHEMA,
}
_FOLD_COLUMNS = [
    "global_position", "event_type", "timestamp", "metadata_user_id", "user_id", "session_id", "item_id",
    "item_count", "duration_seconds", "new_interval",
]
_TOTALS = ["sessions_completed", "duration_seconds", "correct_items", "item_count"]
_DAY_COUNTS = [*_TOTALS, "items_learned", "items_reviewed", "new_mastery_count"]


def _empty(name: str) -> pl.DataFrame:
    return pl.DataFrame(schema=_STATE_SCHEMAS[name])


@dataclass(frozen=True)
class ProjectionState:
    """Everything the fold knows after ``position``: a handful of DataFrames and counters.

    States are immutable; :func:`fold` returns a new one. ``changed_users`` and
    ``changed_days`` name the read-model rows the last batch touched, so a projector
    can upsert only those.
    """

    options: FoldOptions = field(default_factory=FoldOptions)
    position: int = 0
    events_folded: int = 0
    ignored: int = 0
    latest: datetime | None = None
    users: pl.DataFrame = field(default_factory=lambda: _empty("users"))
    days: pl.DataFrame = field(default_factory=lambda: _empty("days"))
    items: pl.DataFrame = field(default_factory=lambda: _empty("items"))
    sessions: pl.DataFrame = field(default_factory=lambda: _empty("sessions"))
    session_items: pl.DataFrame = field(default_factory=lambda: _empty("session_items"))
    rejected: pl.DataFrame = field(default_factory=lambda: _empty("rejections"))
    changed_users: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema={"user_id": pl.String()}))
    changed_days: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(schema={"user_id": pl.String(), "date": pl.Date()})
    )
    # ``events_folded`` when the frames' text buffers were last compacted (see _compact).
    compacted_at: int = field(default=0, repr=False, compare=False)

    # -- read models -------------------------------------------------------------------

    def default_as_of(self) -> date | None:
        """The study day of the latest accepted event: the default ``as_of`` of streaks."""
        return None if self.latest is None else self.options.study_day(self.latest)

    def user_progress(self, as_of: date | None = None, users: pl.DataFrame | None = None) -> pl.DataFrame:
        """``UserProgress``: one row per user, sorted by ``user_id``.

        Parameters
        ----------
        as_of
            The day the streak is counted to; defaults to :meth:`default_as_of`.
        users
            Only these users (a frame with a ``user_id`` column), for incremental writes.
        """
        as_of = as_of or self.default_as_of()
        people = self.users if users is None else self.users.join(users, on="user_id", how="semi")
        items = self.items if users is None else self.items.join(users, on="user_id", how="semi")
        days = self.days if users is None else self.days.join(users, on="user_id", how="semi")
        cls = pl.col("mastery")
        mastery = items.group_by("user_id").agg(
            cls.is_not_null().sum().alias("total_items_learned"),
            (cls.fill_null(0) == 0).sum().alias("unlearned"),
            (cls == 1).sum().alias("learning"),
            (cls == 2).sum().alias("short_term_mastered"),
            (cls == 3).sum().alias("long_term_mastered"),
        )
        counts = ["total_items_learned", "unlearned", "learning", "short_term_mastered", "long_term_mastered"]
        return (
            people.join(mastery, on="user_id", how="left")
            .join(_streaks(days, as_of), on="user_id", how="left")
            .with_columns(
                *(pl.col(c).fill_null(0).cast(pl.Int64) for c in [*counts, "current_streak"]),
                (pl.col("duration_seconds") // 60).alias("total_study_time_minutes"),
                pl.col("sessions_completed").alias("total_sessions_completed"),
                _accuracy(),
            )
            .select(list(USER_PROGRESS_SCHEMA))
            .cast(USER_PROGRESS_SCHEMA)  # type: ignore[arg-type]
            .sort("user_id")
        )

    def daily_stats(self, keys: pl.DataFrame | None = None) -> pl.DataFrame:
        """``DailyStats``: one row per user and study day, sorted (``keys``: only those rows)."""
        days = self.days if keys is None else self.days.join(keys, on=["user_id", "date"], how="semi")
        return (
            days.with_columns((pl.col("duration_seconds") // 60).alias("study_time_minutes"), _accuracy())
            .select(list(DAILY_STATS_SCHEMA))
            .sort("user_id", "date")
        )

    def rejections(self) -> pl.DataFrame:
        """Every rejected event: global position, event type and reason, in global order."""
        return self.rejected.sort("global_position")

    def summary(self) -> dict[str, object]:
        """Counts of what was folded: events, rejected by reason, ignored."""
        by_reason = self.rejected.group_by("reason").len().sort("reason")
        return {
            "position": self.position,
            "events_folded": self.events_folded,
            "rejected": dict(zip(by_reason["reason"].to_list(), by_reason["len"].to_list())),
            "ignored": self.ignored,
            "users": self.users.height,
        }

    # -- snapshots -----------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The whole state as one zip of Arrow IPC files, for a snapshot."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
            meta = {
                "format": 1,
                "options": {
                    "timezone": self.options.timezone,
                    "day_start_hour": self.options.day_start_hour,
                    "short_term_days": self.options.short_term_days,
                    "long_term_days": self.options.long_term_days,
                },
                "position": self.position,
                "events_folded": self.events_folded,
                "ignored": self.ignored,
                "latest": None if self.latest is None else self.latest.isoformat(),
            }
            # Fixed entry dates and sorted rows: the same state always gives the same bytes.
            archive.writestr(zipfile.ZipInfo("state.json", _ZIP_DATE), json.dumps(meta))
            for name, keys in _SORT_KEYS.items():
                part = io.BytesIO()
                getattr(self, name).sort(keys).write_ipc(part)
                archive.writestr(zipfile.ZipInfo(f"{name}.arrow", _ZIP_DATE), part.getvalue(), zipfile.ZIP_DEFLATED, 1)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, options: FoldOptions | None = None) -> ProjectionState:
        """Restore a state saved by :meth:`to_bytes`.

        Raises
        ------
        ConsistencyError
            When the snapshot was folded with other options than ``options``.
        """
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                meta = json.loads(archive.read("state.json"))
                frames = {
                    name: pl.read_ipc(io.BytesIO(archive.read(f"{name}.arrow")))
                    for name in ("users", "days", "items", "sessions", "session_items", "rejected")
                }
        except (zipfile.BadZipFile, KeyError, ValueError) as exc:
            raise SerializationError(f"not a projection snapshot: {exc}") from None
        saved = FoldOptions(**meta["options"])
        if options is not None and options != saved:
            raise ConsistencyError(f"the snapshot was folded with {saved}, not {options}")
        return cls(
            options=saved,
            position=meta["position"],
            events_folded=meta["events_folded"],
            ignored=meta["ignored"],
            latest=None if meta["latest"] is None else datetime.fromisoformat(meta["latest"]),
            users=frames["users"],
            days=frames["days"],
            items=frames["items"],
            sessions=frames["sessions"],
            session_items=frames["session_items"],
            rejected=frames["rejected"],
            compacted_at=meta["events_folded"],  # frames read from IPC own their buffers
        )


_ZIP_DATE = (2000, 1, 1, 0, 0, 0)
_SORT_KEYS: dict[str, list[str]] = {
    "users": ["user_id"],
    "days": ["user_id", "date"],
    "items": ["user_id", "item_id"],
    "sessions": ["session_id"],
    "session_items": ["session_id", "item_id"],
    "rejected": ["global_position"],
}


def _accuracy() -> pl.Expr:
    return (
        pl.when(pl.col("item_count") > 0)
        .then(pl.col("correct_items") / pl.col("item_count"))
        .otherwise(None)
        .cast(pl.Float64)
        .alias("accuracy_rate")
    )


def _streaks(days: pl.DataFrame, as_of: date | None) -> pl.DataFrame:
    """Per user, the run of consecutive study days ending on ``as_of`` or the day before."""
    schema = {"user_id": pl.String(), "current_streak": pl.Int64()}
    if as_of is None:
        return pl.DataFrame(schema=schema)
    end = (as_of - _EPOCH).days
    day = pl.col("date").cast(pl.Int32).cast(pl.Int64)
    study = days.filter(pl.col("sessions_completed") > 0, pl.col("date") <= as_of).select("user_id", day.alias("n"))
    # Distinct days, newest first: the k-th is in the run exactly when it is last - k.
    return (
        study.with_columns(
            pl.col("n").max().over("user_id").alias("last"),
            (pl.col("n").rank("ordinal", descending=True).over("user_id") - 1).cast(pl.Int64).alias("k"),
        )
        .group_by("user_id")
        .agg(
            (pl.col("n") == pl.col("last") - pl.col("k")).sum().cast(pl.Int64).alias("run"),
            pl.col("last").first(),
        )
        .select(
            "user_id",
            pl.when(pl.col("last") >= end - 1).then(pl.col("run")).otherwise(0).cast(pl.Int64).alias("current_streak"),
        )
    )


def _merge_sums(old: pl.DataFrame, delta: pl.DataFrame, keys: list[str], sums: list[str]) -> pl.DataFrame:
    untouched = old.join(delta, on=keys, how="anti")
    merged = pl.concat([old.join(delta, on=keys, how="semi"), delta], how="diagonal_relaxed")
    merged = merged.group_by(keys).agg(
        *(pl.col(c).sum() for c in sums),
        *(pl.col(c).max() for c in old.columns if c not in keys and c not in sums),
    )
    return pl.concat([untouched, merged.select(old.columns).cast(old.schema)], how="vertical")  # type: ignore[arg-type]


def fold(
    events: pl.DataFrame,
    state: ProjectionState | None = None,
    *,
    options: FoldOptions | None = None,
) -> ProjectionState:
    """Fold a batch of events into the state and return the new state.

    ``events`` has the columns of :meth:`EventStore.events_frame` and positions after
    ``state.position``. The result is the same whatever the batch boundaries: folding
    the log in one batch or in many gives equal read models.

    Examples
    --------
    >>> state = fold(store.events_frame())                       # doctest: +SKIP
    >>> state = fold(store.events_frame(state.position + 1), state)  # doctest: +SKIP
    >>> state.user_progress().to_pandas()                         # doctest: +SKIP
    """
    if state is None:
        state = ProjectionState(options=options or FoldOptions())
    elif options is not None and options != state.options:
        raise ProjectionError("options differ from the options the state was folded with")
    o = state.options
    batch = events if events["global_position"].is_sorted() else events.sort("global_position")
    if batch.height == 0:
        return replace(state, changed_users=state.changed_users.clear(), changed_days=state.changed_days.clear())
    first = int(batch["global_position"][0])
    if first <= state.position:
        raise ProjectionError(f"the batch starts at position {first}, but the state is already at {state.position}")

    known = pl.col("event_type").is_in(KNOWN_EVENT_TYPES)
    kind = pl.col("event_type")
    pos = pl.col("global_position")
    ignored = batch.filter(~known).height
    # Only the columns the statistics read travel through the joins below.
    ev = batch.filter(known & pl.col("malformed").is_null()).select(
        *_FOLD_COLUMNS, o.study_day_expr("timestamp").alias("day")
    )
    reject_frames = [
        batch.filter(known & pl.col("malformed").is_not_null()).select(
            "global_position", "event_type", pl.lit("malformed").alias("reason")
        )
    ]

    def rejected(frame: pl.DataFrame, reason: str) -> None:
        reject_frames.append(frame.select("global_position", "event_type", pl.lit(reason).alias("reason")))

    # -- sessions: the first start wins; attribution needs a start earlier in the log --
    touched = ev.filter(pl.col("session_id").is_not_null()).select("session_id").unique()
    prev = state.sessions.join(touched, on="session_id", how="semi").select(
        "session_id",
        pl.col("started").alias("prev_started"),
        pl.col("user_id").alias("prev_user"),
        pl.col("item_count").alias("prev_item_count"),
        pl.col("completed").alias("prev_completed"),
    )
    starts = (
        ev.filter(kind == "SessionStarted")
        .join(prev.select("session_id", "prev_started"), on="session_id", how="left")
        .with_columns(
            ((pos == pos.min().over("session_id")) & ~pl.col("prev_started").fill_null(False)).alias("accepted")
        )
    )
    rejected(starts.filter(~pl.col("accepted")), "duplicate_start")
    accepted_starts = starts.filter("accepted")
    info = prev.join(
        accepted_starts.select(
            "session_id",
            pos.alias("start_pos"),
            pl.col("user_id").alias("start_user"),
            pl.col("item_count").alias("start_item_count"),
        ),
        on="session_id",
        how="full",
        coalesce=True,
    ).with_columns(pl.col("prev_started").fill_null(False), pl.col("prev_completed").fill_null(False))

    start_user_before = (
        pl.when(pl.col("prev_started"))
        .then(pl.col("prev_user"))
        .when(pl.col("start_pos") < pos)
        .then(pl.col("start_user"))
        .otherwise(None)
    )
    in_session = (
        ev.filter(kind.is_in(["CorrectAnswerGiven", "SessionCompleted"]))
        .select("global_position", "event_type", "timestamp", "day", "metadata_user_id", "session_id", "item_id",
                "duration_seconds")
        .join(info, on="session_id", how="left")
        .with_columns(
            pl.col("prev_started").fill_null(False),
            pl.col("prev_completed").fill_null(False),
        )
        .with_columns(pl.coalesce(pl.col("metadata_user_id"), start_user_before).alias("attributed"))
    )
    rejected(in_session.filter(pl.col("attributed").is_null()), "unknown_user")
    attributed = in_session.filter(pl.col("attributed").is_not_null())

    completions = attributed.filter(kind == "SessionCompleted").with_columns(
        ((pos == pos.min().over("session_id")) & ~pl.col("prev_completed")).alias("accepted")
    )
    rejected(completions.filter(~pl.col("accepted")), "duplicate_completion")
    completed = completions.filter("accepted")

    answers = (
        attributed.filter(kind == "CorrectAnswerGiven")
        .join(completed.select("session_id", pos.alias("completion_pos")), on="session_id", how="left")
        .with_columns((pl.col("prev_completed") | (pl.col("completion_pos") < pos).fill_null(False)).alias("late"))
    )
    rejected(answers.filter("late"), "answer_after_completion")
    answers = answers.filter(~pl.col("late"))

    done = completed.select("session_id")
    # The correct items of the sessions still open before this batch, and of this batch.
    open_items = pl.concat([state.session_items, answers.select("session_id", "item_id")])
    correct = (
        open_items.join(done, on="session_id", how="semi")
        .group_by("session_id")
        .agg(pl.col("item_id").n_unique().cast(pl.Int64).alias("correct"))
    )
    started_before = pl.col("prev_started") | (pl.col("start_pos") < pos).fill_null(False)
    completed = completed.join(correct, on="session_id", how="left").with_columns(
        pl.when(started_before).then(pl.col("correct").fill_null(0)).otherwise(0).cast(pl.Int64).alias("correct_items"),
        pl.when(pl.col("prev_started"))
        .then(pl.col("prev_item_count"))
        .when(started_before)
        .then(pl.col("start_item_count"))
        .otherwise(0)
        .cast(pl.Int64)
        .alias("item_count"),
    )

    updated = (
        pl.concat(
            [accepted_starts.select("session_id"), answers.select("session_id"), completed.select("session_id")]
        )
        .unique()
        .join(info, on="session_id", how="left")
        .join(completed.select("session_id", pl.lit(True).alias("completed_now")), on="session_id", how="left")
        .select(
            "session_id",
            (pl.col("prev_started").fill_null(False) | pl.col("start_pos").is_not_null()).alias("started"),
            pl.when(pl.col("prev_started").fill_null(False)).then(pl.col("prev_user")).otherwise(pl.col("start_user")).alias("user_id"),
            pl.when(pl.col("prev_started").fill_null(False))
            .then(pl.col("prev_item_count"))
            .otherwise(pl.col("start_item_count"))
            .alias("item_count"),
            (pl.col("prev_completed").fill_null(False) | pl.col("completed_now").fill_null(False)).alias("completed"),
        )
    )
    sessions = pl.concat([state.sessions.join(updated, on="session_id", how="anti"), updated.cast(_STATE_SCHEMAS["sessions"])])  # type: ignore[arg-type]
    session_items = open_items.join(done, on="session_id", how="anti").unique()  # anti first: most sessions complete in their batch

    # -- reviews: each compared with the review before it, in this batch or the state --
    # Sorted by item and position, a review's predecessor in the batch is the row above it
    # when that row is the same item: cheaper than windows over two string keys.
    same_as_above = (pl.col("user_id") == pl.col("user_id").shift(1)) & (pl.col("item_id") == pl.col("item_id").shift(1))
    same_as_below = (pl.col("user_id") == pl.col("user_id").shift(-1)) & (pl.col("item_id") == pl.col("item_id").shift(-1))
    ordered = (
        ev.filter(kind == "ReviewProcessed")
        .select("global_position", "user_id", "item_id", "timestamp", "day", o.mastery_expr("new_interval").alias("mastery"))
        .sort("user_id", "item_id", maintain_order=True)  # a stable sort: positions stay in order
        .with_columns(
            (~same_as_above.fill_null(False)).alias("first_in_batch"),
            (~same_as_below.fill_null(False)).alias("last_in_batch"),
            pl.col("mastery").shift(1).alias("batch_previous"),
        )
    )
    # Only an item's first review in the batch looks up the state (null: never reviewed).
    first_reviews = ordered.filter("first_in_batch")
    review_columns = ["user_id", "item_id", "timestamp", "day", "mastery", "last_in_batch", "previous", "learned"]
    reviews = pl.concat(
        [
            first_reviews.join(
                # The state's rows of these items first: a left join builds its table on the right.
                state.items.join(first_reviews, on=["user_id", "item_id"], how="semi").rename({"mastery": "previous"}),
                on=["user_id", "item_id"],
                how="left",
            )
            .with_columns(pl.col("previous").is_null().alias("learned"))
            .select(review_columns),
            ordered.filter(~pl.col("first_in_batch"))
            .with_columns(pl.col("batch_previous").alias("previous"), pl.lit(False).alias("learned"))
            .select(review_columns),
        ]
    ).with_columns(
        ((pl.col("mastery") == 3) & (pl.col("previous").is_null() | (pl.col("previous") != 3))).alias("mastered")
    )
    latest_review = reviews.filter("last_in_batch").select("user_id", "item_id", "mastery")
    items = pl.concat([state.items.join(latest_review, on=["user_id", "item_id"], how="anti"), latest_review])
    answered = answers.select(pl.col("attributed").alias("user_id"), "item_id")
    newly_answered = (
        answered.join(latest_review, on=["user_id", "item_id"], how="anti")  # first: most answered items are reviewed
        .unique()
        # Probe the state with the few left rather than hash all of it (an anti join builds on the right).
        .join(state.items.join(answered, on=["user_id", "item_id"], how="semi"), on=["user_id", "item_id"], how="anti")
        .with_columns(pl.lit(None, dtype=pl.Int8).alias("mastery"))
    )
    items = pl.concat([items, newly_answered])

    # -- per user and day ----------------------------------------------------------------
    zero = pl.lit(0, dtype=pl.Int64)
    day_delta = (
        pl.concat(
            [
                completed.select(
                    pl.col("attributed").alias("user_id"),
                    pl.col("day").alias("date"),
                    pl.lit(1, dtype=pl.Int64).alias("sessions_completed"),
                    "duration_seconds",
                    "correct_items",
                    "item_count",
                    zero.alias("items_learned"),
                    zero.alias("items_reviewed"),
                    zero.alias("new_mastery_count"),
                ),
                reviews.select(
                    "user_id",
                    pl.col("day").alias("date"),
                    zero.alias("sessions_completed"),
                    zero.alias("duration_seconds"),
                    zero.alias("correct_items"),
                    zero.alias("item_count"),
                    pl.col("learned").cast(pl.Int64).alias("items_learned"),
                    pl.lit(1, dtype=pl.Int64).alias("items_reviewed"),
                    pl.col("mastered").cast(pl.Int64).alias("new_mastery_count"),
                ),
            ]
        )
        .group_by("user_id", "date")
        .agg(pl.col(c).sum() for c in _DAY_COUNTS)
    )
    days = _merge_sums(state.days, day_delta, ["user_id", "date"], _DAY_COUNTS)

    activity = pl.concat(
        [
            ev.filter(kind == "UserCreated").select("user_id", "timestamp"),
            accepted_starts.select("user_id", "timestamp"),
            answers.select(pl.col("attributed").alias("user_id"), "timestamp"),
            completed.select(pl.col("attributed").alias("user_id"), "timestamp"),
            reviews.select("user_id", "timestamp"),
        ]
    )
    user_delta = (
        activity.group_by("user_id")
        .agg(pl.col("timestamp").max().alias("last_updated"))
        .join(
            completed.group_by(pl.col("attributed").alias("user_id")).agg(
                pl.len().cast(pl.Int64).alias("sessions_completed"),
                *(pl.col(c).sum() for c in _TOTALS[1:]),
            ),
            on="user_id",
            how="left",
        )
        .with_columns(pl.col(c).fill_null(0).cast(pl.Int64) for c in _TOTALS)
    )
    users = _merge_sums(state.users, user_delta, ["user_id"], _TOTALS)
    batch_latest = activity["timestamp"].max()
    latest = state.latest
    if isinstance(batch_latest, datetime) and (latest is None or batch_latest > latest):
        latest = batch_latest.astimezone(UTC)

    rejections = pl.concat([state.rejected, *reject_frames]).sort("global_position")
    new = ProjectionState(
        options=o,
        position=int(batch["global_position"][-1]),
        events_folded=state.events_folded + batch.height,
        ignored=state.ignored + ignored,
        latest=latest,
        users=users,
        days=days,
        items=items,
        sessions=sessions,
        session_items=session_items,
        rejected=rejections,
        changed_users=user_delta.select("user_id"),
        changed_days=day_delta.select("user_id", "date"),
        compacted_at=state.compacted_at,
    )
    if new.events_folded - new.compacted_at >= COMPACT_EVERY:
        compacted: dict[str, object] = {name: _compact(getattr(new, name)) for name in _SORT_KEYS}
        new = replace(new, compacted_at=new.events_folded, **compacted)  # type: ignore[arg-type]
    return new


#: Events folded between two compactions of the state's text columns.
COMPACT_EVERY = 1_000_000


def _compact(frame: pl.DataFrame) -> pl.DataFrame:
    """The frame with its text columns copied into buffers of their own.

    polars keeps long strings in shared buffers: a column filtered or joined out of a
    batch still refers to the batch's whole buffer, so a state built batch by batch would
    keep every batch's text alive (measured: 1.7 GB after 5M events for ~70 MB of state).
    Concatenating an empty string writes fresh buffers holding only the rows' own text.
    """
    strings = [name for name, dtype in frame.schema.items() if dtype == pl.String]
    return frame.with_columns(pl.col(name) + "" for name in strings) if strings else frame
