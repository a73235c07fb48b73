"""ProjectionMonitor: how far each projection lags behind the log, now and over time."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import polars as pl
import sqlalchemy as sa

from ._schema import UTCDateTime
from ._schema import event_store as _events
from ._schema import projection_checkpoints as _checkpoints
from .errors import MissingExtraError, StoreUnavailableError

if TYPE_CHECKING:
    from .store import EventStore

__all__ = ["LagStatus", "LagReport", "ProjectionMonitor"]


class LagStatus(enum.Enum):
    """Whether a projection keeps up: ``Normal``, or ``Critical`` past the threshold."""

    Normal = "normal"
    Critical = "critical"


@dataclass(frozen=True)
class LagReport:
    """One measurement of a projection's lag."""

    projection: str
    measured_at: datetime
    head_position: int
    checkpoint: int
    events_behind: int
    oldest_unprocessed_age: timedelta | None
    status: LagStatus

    def __str__(self) -> str:
        age = "-" if self.oldest_unprocessed_age is None else f"{self.oldest_unprocessed_age.total_seconds():.1f} s"
        return (
            f"{self.projection}: {self.events_behind} events behind "
            f"(checkpoint {self.checkpoint}, head {self.head_position}), "
            f"oldest unprocessed {age}: {self.status.name}"
        )


class ProjectionMonitor:
    """Measures lag as events behind the head and as the age of the oldest unprocessed event.

    A projection is ``Critical`` when its oldest unprocessed event is older than
    ``critical_age`` (or, if given, when more than ``critical_events`` are waiting).
    A projection that has stopped while events keep arriving therefore turns Critical,
    and one that is idle with nothing to do stays Normal.

    Parameters
    ----------
    store
        The event store the projections read.
    critical_age
        Age of the oldest unprocessed event (by ``created_at``) that makes the lag Critical.
    critical_events
        Optional count of waiting events that makes the lag Critical.
    clock
        "Now" for ages; inject a simulated clock for reproducible notebooks.
    """

    def __init__(
        self,
        store: EventStore,
        *,
        critical_age: timedelta = timedelta(seconds=60),
        critical_events: int | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.store = store
        self.critical_age = critical_age
        self.critical_events = critical_events
        self.clock = clock or store.clock
        self._history: list[LagReport] = []

    def projections(self) -> list[str]:
        """Names of the projections that have a checkpoint."""
        with self.store.engine.connect() as conn:
            return list(conn.execute(sa.select(_checkpoints.c.name).order_by(_checkpoints.c.name)).scalars())

    def lag(self, projection: str = "progress") -> LagReport:
        """Measure one projection's lag now."""
        try:
            with self.store.engine.connect() as conn:
                checkpoint = conn.execute(
                    sa.select(_checkpoints.c.position).where(_checkpoints.c.name == projection)
                ).scalar()
                checkpoint = int(checkpoint or 0)
                behind, oldest, head = conn.execute(
                    sa.select(
                        sa.func.count(),
                        sa.func.min(_events.c.created_at),
                        sa.func.max(_events.c.global_position),
                    ).where(_events.c.global_position > checkpoint)
                ).one()
        except sa.exc.OperationalError as exc:  # the database is away: say so, password masked
            reason = str(exc.orig or exc).strip().splitlines()[0]
            raise StoreUnavailableError(f"cannot measure the lag of {projection!r}: {self.store.url}: {reason}") from None
        now = self.clock()
        age = None
        if oldest is not None:
            oldest = UTCDateTime().process_result_value(oldest, self.store.engine.dialect)
            assert oldest is not None
            age = max(now - oldest, timedelta(0))
        critical = (age is not None and age > self.critical_age) or (
            self.critical_events is not None and behind > self.critical_events
        )
        return LagReport(
            projection=projection,
            measured_at=now,
            head_position=int(head) if head is not None else checkpoint,
            checkpoint=checkpoint,
            events_behind=int(behind),
            oldest_unprocessed_age=age,
            status=LagStatus.Critical if critical else LagStatus.Normal,
        )

    def check_all(self) -> list[LagReport]:
        """The lag of every projection with a checkpoint."""
        return [self.lag(name) for name in self.projections()]

    def sample(self, projection: str = "progress") -> LagReport:
        """Measure and remember the lag, for :meth:`history`."""
        report = self.lag(projection)
        self._history.append(report)
        return report

    def history(self) -> pl.DataFrame:
        """Every sample so far, one row each, with the age in seconds."""
        rows: list[dict[str, Any]] = []
        for report in self._history:
            row = asdict(report)
            age = row.pop("oldest_unprocessed_age")
            row["oldest_unprocessed_seconds"] = None if age is None else age.total_seconds()
            row["status"] = report.status.name
            rows.append(row)
        return pl.DataFrame(
            rows,
            schema={
                "projection": pl.String,
                "measured_at": pl.Datetime("us", "UTC"),
                "head_position": pl.Int64,
                "checkpoint": pl.Int64,
                "events_behind": pl.Int64,
                "status": pl.String,
                "oldest_unprocessed_seconds": pl.Float64,
            },
            orient="row",
        )

    def plot_history(self, ax: Any = None) -> Any:
        """Plot events behind and the oldest unprocessed age over time; returns the axes."""
        try:
            import matplotlib.pyplot as plt
        except ImportError:
            raise MissingExtraError("matplotlib", "plot") from None
        history = self.history()
        if ax is None:
            _, ax = plt.subplots(figsize=(9, 4))
        start = history["measured_at"].min() if history.height else datetime.now(UTC)
        seconds = [(t - start).total_seconds() for t in history["measured_at"].to_list()]
        ax.step(seconds, history["events_behind"].to_list(), where="post", color="tab:blue", label="events behind")
        ax.set_xlabel("time since first sample (s)")
        ax.set_ylabel("events behind the head", color="tab:blue")
        age_ax = ax.twinx()
        ages = [a if a is not None else 0.0 for a in history["oldest_unprocessed_seconds"].to_list()]
        age_ax.plot(seconds, ages, color="tab:red", label="oldest unprocessed event (s)")
        age_ax.axhline(self.critical_age.total_seconds(), color="tab:red", linestyle="--", linewidth=1, label="critical age")
        age_ax.set_ylabel("age of oldest unprocessed event (s)", color="tab:red")
        critical = [status == "Critical" for status in history["status"].to_list()]
        if any(critical):
            ax.fill_between(
                seconds, 0, 1, where=critical, step="post", transform=ax.get_xaxis_transform(),
                color="tab:red", alpha=0.1, label="Critical",
            )
        ax.set_title("Projection lag")
        lines = ax.get_legend_handles_labels()
        more = age_ax.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left", fontsize="small")
        return ax
