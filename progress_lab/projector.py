"""ProjectionManager: keeps the SQL read models caught up with the log, batch by batch."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import polars as pl
import sqlalchemy as sa
from tqdm import tqdm

from ._schema import projection_rejections as _rejections
from ._schema import snapshots as _snapshots
from .checkpoints import CheckpointStore
from .errors import CheckpointError, ConsistencyError, StoreUnavailableError
from .events import Snapshot
from .frames import read_fold_batch, read_fold_frame
from .projections import FoldOptions, ProjectionState, fold
from .read_models import DailyStatsRepository, UserProgressRepository
from .store import NOTIFY_CHANNEL, EventStore, SnapshotPolicy

__all__ = ["ProjectionManager", "RunReport"]

log = logging.getLogger("progress_lab")


@dataclass(frozen=True)
class RunReport:
    """What one catch-up did: the positions covered, events folded, rejections by reason."""

    projection: str
    from_position: int
    to_position: int
    events_folded: int = 0
    batches: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    ignored: int = 0
    snapshots: int = 0
    # Wall-clock time: shown by nothing that prints a report, so outputs stay reproducible.
    seconds: float = field(default=0.0, repr=False, compare=False)

    def __str__(self) -> str:
        rejected = ", ".join(f"{k} {v}" for k, v in sorted(self.rejected.items())) or "none"
        return (
            f"{self.projection}: folded {self.events_folded} events "
            f"(positions {self.from_position}..{self.to_position}) in {self.batches} batches; "
            f"rejected: {rejected}; ignored: {self.ignored}"
        )


class ProjectionManager:
    """Folds the log into ``UserProgress`` and ``DailyStats`` and keeps them in SQL.

    Each batch writes the changed read-model rows, the batch's rejections and the new
    checkpoint in one transaction, so a projector killed at any instant resumes from a
    consistent point. The fold state is kept in memory and, under the
    ``SnapshotPolicy``, saved as a snapshot so that a restart folds only the tail.

    Parameters
    ----------
    store
        The event store; the read models live in the same database.
    options
        Study-day clock and mastery cut-offs.
    batch_size
        Positions per batch (each batch is one transaction).
    snapshot_policy
        When to snapshot the fold state; defaults to the store's policy.
    progress
        Show a progress bar: ``None`` (default) shows one only on a terminal.

    Snapshots are written by a background thread, after the batch they capture has
    committed, so they never hold up the read models. A catch-up takes one at its end
    when the policy is due; a long one also takes them on the way, once the positions
    since the last snapshot reach both :attr:`snapshot_span` and the last snapshot's own
    position (at 1M, 2M, 4M, ... in a rebuild: a snapshot's cost grows with the state),
    except in the catch-up's last :attr:`snapshot_span` positions.
    """

    #: The least number of positions between snapshots taken in the middle of a catch-up.
    snapshot_span: int = 1_000_000

    def __init__(
        self,
        store: EventStore,
        *,
        name: str = "progress",
        options: FoldOptions | None = None,
        batch_size: int = 250_000,
        snapshot_policy: SnapshotPolicy | None = None,
        progress: bool | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.store = store
        self.name = name
        self.options = options or FoldOptions()
        self.batch_size = batch_size
        self.snapshot_policy = snapshot_policy or store.snapshot_policy
        self.progress = progress
        self.checkpoints = CheckpointStore(store.engine)
        self.user_progress_repository = UserProgressRepository(store.engine)
        self.daily_stats_repository = DailyStatsRepository(store.engine)
        self.last_error: str | None = None
        self._state: ProjectionState | None = None
        self._last_snapshot = 0
        self._snapshot_writer: ThreadPoolExecutor | None = None
        self._snapshot_pending: Future[None] | None = None
        self._last_snapshot_time = -float("inf")
        self._stop = threading.Event()

    @property
    def snapshot_stream(self) -> str:
        """The stream id under which this projection's state snapshots are kept."""
        return f"$projection-{self.name}"

    @property
    def state(self) -> ProjectionState:
        """The fold state at the checkpoint (loaded from snapshot + tail on first use)."""
        if self._state is None:
            self._state = self._load()
        return self._state

    def reload(self) -> None:
        """Forget the in-memory state; the next use restores it from snapshot + checkpoint.

        Call it after a :class:`CheckpointError` (another projector moved the checkpoint)
        or an outage whose last commit may or may not have happened.
        """
        self._state = None

    def _options_dict(self) -> dict[str, object]:
        return asdict(self.options)

    def _load(self) -> ProjectionState:
        checkpoint = self.checkpoints.get(self.name)
        if checkpoint.options is not None and checkpoint.options != self._options_dict():
            raise ConsistencyError(
                f"the read models of {self.name!r} were computed with {checkpoint.options}; "
                f"rebuild them to use {self._options_dict()} (progress-lab replay --rebuild)"
            )
        snapshot = self.store.get_latest_snapshot(self.snapshot_stream, max_version=checkpoint.position)
        state = (
            ProjectionState.from_bytes(snapshot.state, self.options)
            if snapshot is not None
            else ProjectionState(options=self.options)
        )
        self._last_snapshot = state.position
        # Refold what lies between the snapshot and the checkpoint, writing nothing:
        # the read models already hold it.
        return self._fold_range(state, checkpoint.position, write=False).state

    # -- catching up ---------------------------------------------------------------------

    def run_once(self, *, until: int | None = None) -> RunReport:
        """Catch up from the checkpoint to the head of the log (or ``until``); return what was done.

        It returns once the snapshots it took are saved too.
        """
        try:
            return self._catch_up(until)
        finally:
            self.wait_for_snapshot()

    def _catch_up(self, until: int | None = None, *, snapshot_interval: float | None = None) -> RunReport:
        """Fold up to the head (or ``until``) and write the read models.

        ``snapshot_interval`` is ``run_forever``'s: a due snapshot at most that often, and
        none while the last is still being written. ``None`` (``run_once``) takes every
        due snapshot, waiting for the last to be saved.
        """
        state = self.state
        head = self.store.head_position() if until is None else until
        return self._fold_range(state, head, write=True, snapshot_interval=snapshot_interval).report

    def rebuild(self) -> RunReport:
        """Drop the read models, checkpoint and snapshots of this projection, then replay from position 1."""
        self.wait_for_snapshot()  # a snapshot still being written must not outlive the rebuild
        with self.store.transaction(lock_appends=False) as conn:
            self.user_progress_repository.clear(conn)
            self.daily_stats_repository.clear(conn)
            conn.execute(_rejections.delete().where(_rejections.c.projection == self.name))
            conn.execute(_snapshots.delete().where(_snapshots.c.stream_id == self.snapshot_stream))
            self.checkpoints.reset(conn, self.name)
        self._state = ProjectionState(options=self.options)
        self._last_snapshot = 0
        return self.run_once()

    def _fold_range(
        self, state: ProjectionState, head: int, *, write: bool, snapshot_interval: float | None = None
    ) -> _FoldResult:
        start = state.position
        started = time.perf_counter()
        before_rejected = state.rejected.height
        before_folded, before_ignored = state.events_folded, state.ignored
        batches = snapshots = 0
        bar = tqdm(
            total=max(head - start, 0),
            unit="ev",
            unit_scale=True,
            desc=f"{self.name}" if write else f"{self.name} (restoring)",
            disable=True if self.progress is False else (None if self.progress is None else False),
            leave=False,
        )
        ranges = _batch_ranges(start + 1, head, self.batch_size)
        frames = self._frames(ranges)
        try:
            for (_, end), frame in zip(ranges, frames):
                new = fold(frame, state) if frame.height else state
                new = replace(new, position=end)  # positions may have holes; the range is done
                if write:
                    self._commit(state, new)
                    self._state = new
                    due = self._snapshot_due(new.position, head, snapshot_interval)
                    if due and self._start_snapshot(new, skip_if_busy=snapshot_interval is not None):
                        snapshots += 1
                bar.update(end - state.position)
                state = new
                batches += 1
        finally:
            frames.close()
            bar.close()
        new_rejections = state.rejected.slice(before_rejected) if write else state.rejected.clear()
        by_reason = new_rejections.group_by("reason").len()
        report = RunReport(
            projection=self.name,
            from_position=start + 1,
            to_position=state.position,
            events_folded=state.events_folded - before_folded,
            batches=batches,
            rejected=dict(zip(by_reason["reason"].to_list(), by_reason["len"].to_list())),
            ignored=state.ignored - before_ignored,
            snapshots=snapshots,
            seconds=time.perf_counter() - started,
        )
        return _FoldResult(state, report)

    def _frames(self, ranges: list[tuple[int, int]]) -> Generator[pl.DataFrame, None, None]:
        """The fold frames of ``ranges``, in order.

        Reading the next batches (Arrow, outside the GIL) overlaps folding and writing this
        one; with two batches asked for ahead, the reader never waits for the fold to take
        one before it starts the next. A SQLite file's two are read side by side, each by a
        reader process of its own. A single batch, the usual catch-up while following
        the log, is read in this thread: a reader thread would only add its start-up and
        hand-over to the latency. So is every batch of an in-memory store, whose database
        other threads cannot see.
        """
        if len(ranges) == 1 or self.store._thread_bound:
            for batch in ranges:
                yield read_fold_frame(self.store, *batch)
            return
        # A SQLite file is read by processes of its own (frames.MAX_SQLITE_READERS), so two
        # batches are read side by side; PostgreSQL's one ADBC connection reads one at a time.
        workers = _READ_AHEAD if self.store.dialect == "sqlite" else 1
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="progress_lab-read") as reader:
            pending = deque(reader.submit(read_fold_batch, self.store, *r) for r in ranges[:_READ_AHEAD])
            try:
                for index in range(len(ranges)):
                    frame = pending.popleft().result()
                    if index + _READ_AHEAD < len(ranges):
                        pending.append(reader.submit(read_fold_batch, self.store, *ranges[index + _READ_AHEAD]))
                    yield frame
            finally:
                for future in pending:
                    future.cancel()

    # -- snapshots ---------------------------------------------------------------------------
    # The checkpoint, not the snapshot, is what makes a crash safe: snapshots only shorten
    # restarts, so they are taken after the commit, in the background, and a failed one is
    # a warning.

    def _snapshot_due(self, position: int, head: int, interval: float | None) -> bool:
        if not self.snapshot_policy.is_due(self._last_snapshot, position):
            return False
        if interval is not None and time.monotonic() - self._last_snapshot_time < interval:
            return False
        # Mid-way, the gap grows with the log (1M, 2M, 4M, ...): a snapshot costs time in
        # proportion to the state, so their total cost stays a fixed share of the replay.
        gap = max(self.snapshot_span, self._last_snapshot)
        return position >= head or (position - self._last_snapshot >= gap and head - position >= self.snapshot_span)

    def _start_snapshot(self, state: ProjectionState, *, skip_if_busy: bool) -> bool:
        """Save ``state`` as a snapshot in the background (in this thread for an in-memory store).

        When one is still being written, ``run_forever`` skips this one (the next batch
        will be due again) rather than wait; ``run_once`` waits, so that its snapshots
        fall at the same positions in every run.
        """
        if skip_if_busy and self._snapshot_pending is not None and not self._snapshot_pending.done():
            return False
        self.wait_for_snapshot()
        previous, self._last_snapshot = self._last_snapshot, state.position
        self._last_snapshot_time = time.monotonic()
        if self.store._thread_bound:  # an in-memory store: saved here, as its thread sees it
            saved: Future[None] = Future()
            try:
                self._save_snapshot(state, previous)
                saved.set_result(None)
            except Exception as exc:
                saved.set_exception(exc)
            self._snapshot_pending = saved
            return True
        if self._snapshot_writer is None:
            self._snapshot_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="progress_lab-snapshot")
        self._snapshot_pending = self._snapshot_writer.submit(self._save_snapshot, state, previous)
        return True

    def _save_snapshot(self, state: ProjectionState, previous: int) -> None:
        try:
            self.store.save_snapshot(
                Snapshot(stream_id=self.snapshot_stream, version=state.position, state=state.to_bytes()),
                self.snapshot_policy,
            )
        except Exception:
            if self._last_snapshot == state.position:
                self._last_snapshot = previous  # due again at the next batch
            raise

    def wait_for_snapshot(self) -> None:
        """Wait until the snapshot being written (if any) is saved; a failure is logged."""
        pending, self._snapshot_pending = self._snapshot_pending, None
        if pending is None:
            return
        try:
            pending.result()
        except Exception as exc:
            log.warning("projection %s: snapshot not saved: %s", self.name, exc)

    def _commit(self, old: ProjectionState, new: ProjectionState) -> None:
        # A new default as_of changes every user's streak, not only the users of the batch.
        users = None if new.default_as_of() != old.default_as_of() else new.changed_users
        rejections = new.rejected.slice(old.rejected.height)
        with self.store.transaction(lock_appends=False) as conn:
            self.checkpoints.advance(
                conn,
                self.name,
                expected=old.position,
                position=new.position,
                events_folded=new.events_folded,
                ignored=new.ignored,
                options=self._options_dict(),
                now=self.store.clock(),
            )
            self.user_progress_repository.update_progress(new.user_progress(users=users), conn)
            self.daily_stats_repository.update_daily_stats(new.daily_stats(keys=new.changed_days), conn)
            if rejections.height:
                conn.execute(
                    _rejections.insert(),
                    [{"projection": self.name, **row} for row in rejections.to_dicts()],
                )

    # -- following -------------------------------------------------------------------------

    def run_forever(
        self,
        *,
        poll_interval: float = 0.5,
        max_backoff: float = 30.0,
        stop: threading.Event | None = None,
        on_report: Callable[[RunReport], None] | None = None,
        snapshot_interval: float = 30.0,
    ) -> None:
        """Keep folding new events until :meth:`stop` (or ``stop.set()``).

        Waits for PostgreSQL notifications where available and polls otherwise. When the
        database goes away it logs the outage, retries with exponential backoff, and on
        return reloads its state from the checkpoint, so nothing is lost or counted twice.
        While following, a due snapshot is taken at most once every ``snapshot_interval``
        seconds (30 by default): a catch-up of a few hundred events would otherwise
        snapshot the whole state each time, and a snapshot's CPU is taken from the next
        catch-ups (``bench/follow.py --snapshot-interval`` compares settings). A restart
        after a crash refolds at most the events of those seconds.
        """
        stop_event = stop or self._stop
        listener = _Listener(self.store) if self.store.dialect == "postgresql" else None
        backoff = poll_interval
        try:
            while not stop_event.is_set():
                try:
                    # Snapshots finish in the background.
                    report = self._catch_up(snapshot_interval=snapshot_interval)
                except (StoreUnavailableError, CheckpointError, sa.exc.OperationalError) as exc:
                    self.last_error = str(exc)
                    log.warning("projection %s: %s; retrying in %.1f s", self.name, exc, backoff)
                    self.reload()  # the database is the truth: reload from the checkpoint
                    stop_event.wait(backoff)
                    backoff = min(backoff * 2, max_backoff)
                    continue
                if self.last_error is not None:
                    log.warning("projection %s: store is back; resumed at %d", self.name, report.to_position)
                    self.last_error = None
                backoff = poll_interval
                if on_report is not None and report.batches:
                    on_report(report)
                if listener is not None:
                    listener.wait(poll_interval, stop_event)
                else:
                    stop_event.wait(poll_interval)
        finally:
            self.wait_for_snapshot()
            if listener is not None:
                listener.close()

    def stop(self) -> None:
        """Ask :meth:`run_forever` to return after its current batch."""
        self._stop.set()

    # -- reading the results -------------------------------------------------------------

    def user_progress(self, as_of: Any = None) -> pl.DataFrame:
        """``UserProgress`` from the in-memory state (see :meth:`ProjectionState.user_progress`)."""
        return self.state.user_progress(as_of)

    def daily_stats(self) -> pl.DataFrame:
        """``DailyStats`` from the in-memory state."""
        return self.state.daily_stats()

    def rejections(self) -> pl.DataFrame:
        """The rejected events as stored with the read models, in global order."""
        query = (
            sa.select(_rejections.c.global_position, _rejections.c.event_type, _rejections.c.reason)
            .where(_rejections.c.projection == self.name)
            .order_by(_rejections.c.global_position)
        )
        with self.store.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        return pl.DataFrame(
            rows, schema={"global_position": pl.Int64, "event_type": pl.String, "reason": pl.String}, orient="row"
        )


_READ_AHEAD = 2  # batches read ahead of the fold


def _batch_ranges(first: int, last: int, size: int) -> list[tuple[int, int]]:
    """Position ranges of at most ``size``; a long catch-up starts with an eighth of one,
    so that folding starts while the reader is still on the second batch."""
    if last < first:
        return []
    ranges = []
    if last - first + 1 > size and size >= 8:
        ranges.append((first, first + size // 8 - 1))
        first += size // 8
    ranges += [(a, min(a + size - 1, last)) for a in range(first, last + 1, size)]
    return ranges


@dataclass(frozen=True)
class _FoldResult:
    state: ProjectionState
    report: RunReport


class _Listener:
    """LISTEN on the store's notification channel; falls back to sleeping when it cannot."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.conn: Any = None

    def _connect(self) -> Any:
        import psycopg

        url = self.store.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        conn = psycopg.connect(url, autocommit=True, connect_timeout=5)
        conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        return conn

    def wait(self, timeout: float, stop: threading.Event) -> None:
        try:
            if self.conn is None or self.conn.closed:
                self.conn = self._connect()
            for _ in self.conn.notifies(timeout=timeout, stop_after=1):
                pass
        except Exception:  # the server is away: the outage surfaces in run_once
            self.close()
            stop.wait(timeout)

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
            self.conn = None
