"""ProjectionManager and ProjectionMonitor against real databases: catch-up, crashes, lag."""

from __future__ import annotations

import inspect
import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy as sa
from polars.testing import assert_frame_equal

import progress_lab as plab
from progress_lab.generator import generate_events
from progress_lab.store import NewRecord

SOAK = os.environ.get("PROGRESS_LAB_SOAK") == "1"


def load_generated(store: plab.EventStore, users: int, days: int, seed: int) -> int:
    """Append a generated log to the store, in its own order."""
    return store.append_records(plab.record_from_dict(e) for e in generate_events(users=users, days=days, seed=seed))


def raw_log(store: plab.EventStore) -> list[tuple[int, str, str, str]]:
    """The log as the reference fold reads it: positions, types and JSON texts."""
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT global_position, event_type, event_data, metadata FROM event_store ORDER BY global_position")
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def assert_read_models_equal_reference(store: plab.EventStore, options: plab.FoldOptions | None = None) -> None:
    reference = plab.ReferenceFold(options).fold(raw_log(store))
    manager = plab.ProjectionManager(store, options=options, progress=False)
    assert_frame_equal(manager.user_progress_repository.all(), reference.user_progress())
    assert_frame_equal(manager.daily_stats_repository.all(), reference.daily_stats())
    assert_frame_equal(manager.rejections(), reference.rejections())
    checkpoint = manager.checkpoints.get("progress")
    assert checkpoint.position == store.head_position()
    assert checkpoint.events_folded == reference.events_folded
    assert checkpoint.ignored == reference.ignored


def test_incremental_catch_up_equals_reference(db_url: str) -> None:
    store = plab.connect(db_url)
    load_generated(store, users=12, days=20, seed=3)
    manager = plab.ProjectionManager(store, batch_size=700, progress=False)
    first = manager.run_once()
    assert first.events_folded == store.head_position() and first.batches > 1
    load_generated_tail = list(generate_events(users=3, days=5, seed=99))
    store.append_records(
        NewRecord(e["stream_id"], e["event_type"], e["event_data"], plab.EventMetadata.model_validate(e["metadata"]))
        for e in load_generated_tail
    )
    second = manager.run_once()
    assert second.from_position == first.to_position + 1
    assert second.events_folded == len(load_generated_tail)
    assert manager.run_once().events_folded == 0
    assert_read_models_equal_reference(store)
    # The in-memory state and the SQL read models agree too.
    assert_frame_equal(manager.user_progress(), manager.user_progress_repository.all())


def test_repositories_answer_point_and_range_queries(db_url: str) -> None:
    store = plab.connect(db_url)
    load_generated(store, users=5, days=15, seed=11)
    manager = plab.ProjectionManager(store, progress=False)
    manager.run_once()
    daily = manager.daily_stats()
    row = daily.row(0, named=True)
    assert manager.daily_stats_repository.get_daily_stats(row["user_id"], row["date"]) == row
    user_days = daily.filter(pl.col("user_id") == row["user_id"])
    start, end = user_days["date"][1], user_days["date"][-2]
    expected = user_days.filter(pl.col("date").is_between(start, end))
    assert_frame_equal(manager.daily_stats_repository.get_stats_range(row["user_id"], start, end), expected)
    progress = manager.user_progress()
    first = progress.row(0, named=True)
    assert manager.user_progress_repository.get_current_progress(first["user_id"]) == first
    assert manager.user_progress_repository.get_current_progress("nobody") is None
    assert manager.daily_stats_repository.get_daily_stats("nobody", row["date"]) is None


def test_rebuild_recomputes_from_position_one(db_url: str) -> None:
    store = plab.connect(db_url)
    load_generated(store, users=6, days=10, seed=5)
    manager = plab.ProjectionManager(store, batch_size=500, progress=False)
    manager.run_once()
    with store.engine.begin() as conn:  # vandalise the read model
        conn.execute(sa.text("UPDATE user_progress SET total_sessions_completed = 999"))
    report = manager.rebuild()
    assert report.from_position == 1 and report.to_position == store.head_position()
    assert_read_models_equal_reference(store)


def test_restart_restores_snapshot_and_folds_only_the_tail(db_url: str) -> None:
    store = plab.connect(db_url)
    load_generated(store, users=6, days=12, seed=8)
    policy = plab.SnapshotPolicy(every=400, keep=2)
    manager = plab.ProjectionManager(store, batch_size=300, snapshot_policy=policy, progress=False)
    manager.run_once()
    snapshots = store.list_snapshots(manager.snapshot_stream)
    assert 1 <= len(snapshots) <= 2
    restarted = plab.ProjectionManager(store, batch_size=300, snapshot_policy=policy, progress=False)
    assert restarted.state.position == store.head_position()
    assert_frame_equal(restarted.user_progress(), manager.user_progress())
    assert_frame_equal(restarted.daily_stats(), manager.daily_stats())


def test_an_in_memory_store_catches_up_in_many_batches_and_keeps_its_snapshots() -> None:
    """``sqlite:///:memory:`` gives each thread a database of its own (SQLAlchemy's
    SingletonThreadPool), so the projector must read and snapshot in the calling thread."""
    store = plab.connect("sqlite:///:memory:")
    load_generated(store, users=6, days=12, seed=8)
    policy = plab.SnapshotPolicy(every=400, keep=2)
    manager = plab.ProjectionManager(store, batch_size=300, snapshot_policy=policy, progress=False)
    report = manager.run_once()
    assert report.batches > 2 and report.to_position == store.head_position()
    assert report.snapshots >= 1 and len(store.list_snapshots(manager.snapshot_stream)) >= 1
    assert_read_models_equal_reference(store)
    restarted = plab.ProjectionManager(store, batch_size=300, snapshot_policy=policy, progress=False)
    assert restarted.state.position == store.head_position()
    assert_frame_equal(restarted.user_progress(), manager.user_progress())


def test_changed_options_need_a_rebuild(db_url: str) -> None:
    store = plab.connect(db_url)
    load_generated(store, users=3, days=5, seed=1)
    plab.ProjectionManager(store, progress=False).run_once()
    other = plab.ProjectionManager(store, options=plab.FoldOptions(day_start_hour=4), progress=False)
    with pytest.raises(plab.ConsistencyError, match="rebuild"):
        other.run_once()
    other.rebuild()
    assert_read_models_equal_reference(store, plab.FoldOptions(day_start_hour=4))


_CHILD = """
import sys
import progress_lab as plab
store = plab.connect(sys.argv[1])
plab.ProjectionManager(
    store, batch_size=int(sys.argv[2]), snapshot_policy=plab.SnapshotPolicy(every=900, keep=2), progress=False
).run_once()
"""


def test_projector_killed_with_sigkill_resumes_to_the_full_fold(db_url: str, tmp_path: Path) -> None:
    store = plab.connect(db_url)
    load_generated(store, users=15, days=30, seed=21)
    head = store.head_position()
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    rng = random.Random(2024)
    kills_mid_run = 0
    for _ in range(8 if SOAK else 3):
        child = subprocess.Popen([sys.executable, str(script), db_url, "150"], stderr=subprocess.PIPE)
        checkpoints = plab.CheckpointStore(store.engine)
        before = checkpoints.get("progress").position
        deadline = time.monotonic() + 60
        # Wait until the child has committed at least one batch, then a seeded extra delay.
        while checkpoints.get("progress").position == before and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.4))
        child.send_signal(signal.SIGKILL)
        child.wait()
        stderr = child.stderr.read().decode() if child.stderr else ""
        assert child.returncode in (-signal.SIGKILL, 0), stderr
        position = checkpoints.get("progress").position
        if child.returncode == -signal.SIGKILL and position < head:
            kills_mid_run += 1
        assert position >= before  # never backwards
    assert kills_mid_run >= 1
    report = plab.ProjectionManager(store, batch_size=150, progress=False).run_once()
    assert report.to_position == head
    assert_read_models_equal_reference(store)


def test_run_forever_follows_new_events(db_url: str) -> None:
    store = plab.connect(db_url)
    load_generated(store, users=4, days=6, seed=2)
    manager = plab.ProjectionManager(store, batch_size=1000, progress=False)
    follower = threading.Thread(target=manager.run_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    follower.start()
    try:
        events = list(generate_events(users=2, days=3, seed=77))
        for start in range(0, len(events), 40):
            store.append_records(
                NewRecord(e["stream_id"], e["event_type"], e["event_data"], plab.EventMetadata.model_validate(e["metadata"]))
                for e in events[start : start + 40]
            )
        deadline = time.monotonic() + 60
        while manager.checkpoints.get("progress").position < store.head_position() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        manager.stop()
        follower.join(timeout=30)
    assert not follower.is_alive()
    assert_read_models_equal_reference(store)


@pytest.mark.parametrize(("interval", "expected"), [(3600.0, 1), (0.0, 4), (None, 1)])
def test_run_forever_snapshots_at_most_every_snapshot_interval(tmp_path: Path, interval: float | None, expected: int) -> None:
    # Every catch-up is due (every=1). Following with an hour's interval snapshots once,
    # at its first catch-up; with none, after each of the four catch-ups; with the default
    # (30 s, longer than this test), once.
    default = inspect.signature(plab.ProjectionManager.run_forever).parameters["snapshot_interval"].default
    assert default == 30.0  # as the README says
    store = plab.connect(f"sqlite:///{tmp_path / 'store.db'}")
    load_generated(store, users=2, days=3, seed=5)
    manager = plab.ProjectionManager(store, snapshot_policy=plab.SnapshotPolicy(every=1, keep=100), progress=False)
    stream = manager.snapshot_stream

    def settle(snapshots: int) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (
            manager.checkpoints.get("progress").position < store.head_position() or len(store.list_snapshots(stream)) < snapshots
        ):
            time.sleep(0.02)
        time.sleep(0.1)  # the writer thread marks its snapshot done just after saving it

    options: dict[str, float] = {"poll_interval": 0.02} if interval is None else {"poll_interval": 0.02, "snapshot_interval": interval}
    follower = threading.Thread(target=manager.run_forever, kwargs=options, daemon=True)
    follower.start()
    try:
        settle(1)
        events = list(generate_events(users=2, days=3, seed=78))
        assert len(events) >= 30
        for k in range(3):
            store.append_records(plab.record_from_dict(e) for e in events[k * 10 : (k + 1) * 10])
            settle(min(expected, k + 2))
        time.sleep(0.3)  # room for a snapshot that should not come
    finally:
        manager.stop()
        follower.join(timeout=30)
    assert not follower.is_alive()
    assert manager.checkpoints.get("progress").position == store.head_position()
    assert len(store.list_snapshots(stream)) == expected


def test_monitor_reads_critical_when_stopped_and_normal_when_idle(db_url: str) -> None:
    now = [datetime(2026, 3, 1, 12, 0, tzinfo=UTC)]
    store = plab.connect(db_url, clock=lambda: now[0])
    monitor = plab.ProjectionMonitor(store, critical_age=timedelta(seconds=60))
    meta = plab.EventMetadata(user_id="u1", timestamp=now[0])
    store.append_events("user-u1", [(plab.UserCreated(user_id="u1"), meta)])
    manager = plab.ProjectionManager(store, progress=False)
    manager.run_once()
    now[0] += timedelta(hours=5)  # idle for hours with nothing to do
    idle = monitor.sample()
    assert (idle.status, idle.events_behind, idle.oldest_unprocessed_age) == (plab.LagStatus.Normal, 0, None)
    store.append_events("user-u2", [(plab.UserCreated(user_id="u2"), meta)] * 1)
    now[0] += timedelta(seconds=30)
    young = monitor.sample()
    assert (young.status, young.events_behind) == (plab.LagStatus.Normal, 1)
    assert young.oldest_unprocessed_age == timedelta(seconds=30)
    store.append_events("user-u3", [(plab.UserCreated(user_id="u3"), meta)])
    now[0] += timedelta(seconds=45)  # the projector is stopped; events keep arriving
    stale = monitor.sample()
    assert (stale.status, stale.events_behind) == (plab.LagStatus.Critical, 2)
    assert stale.oldest_unprocessed_age == timedelta(seconds=75)
    manager.run_once()
    recovered = monitor.sample()
    assert (recovered.status, recovered.events_behind) == (plab.LagStatus.Normal, 0)
    history = monitor.history()
    assert history["status"].to_list() == ["Normal", "Normal", "Critical", "Normal"]
    assert history["events_behind"].to_list() == [0, 1, 2, 0]
    assert str(stale).endswith("Critical")


def test_large_sqlite_reads_with_foreign_corrupt_rows_equal_reference(sqlite_url: str) -> None:
    """Reads of 20,000+ positions go through the reader process; corrupt rows stay malformed there."""
    import sqlite3

    store = plab.connect(sqlite_url)
    load_generated(store, users=40, days=40, seed=13)
    head = store.head_position()
    assert head >= 20_000
    path = sqlite_url.removeprefix("sqlite:///")
    foreign = sqlite3.connect(path)
    columns = "global_position, event_id, stream_id, stream_version, event_type, event_data, metadata, created_at"
    meta = '{"user_id":null,"timestamp":"2026-01-10T00:00:00.000000Z"}'
    foreign.executemany(
        f"INSERT INTO event_store ({columns}) VALUES (?, ?, ?, 1, ?, ?, ?, '2026-01-10 00:00:00.000000')",
        [
            (head + 1, "f1", "foreign-1", "UserCreated", b'{"type":"UserCreated","user_id":"\xff\xfe"}', meta),
            (head + 2, "f2", "foreign-2", "SessionCompleted", '{"type":"SessionCompleted",', meta),
            (head + 3, "f3", "foreign-3", "UserCreated", '{"type":"UserCreated","user_id":"foreign"}', meta),
        ],
    )
    foreign.commit()
    frame = store.events_frame()
    assert frame.height == head + 3
    malformed = frame.filter(pl.col("malformed").is_not_null())["global_position"].to_list()
    assert malformed == [head + 1, head + 2]
    manager = plab.ProjectionManager(store, progress=False)
    manager.run_once()
    # The reference fold reads the same rows; bytes that are not UTF-8 are not JSON text.
    foreign.text_factory = lambda b: b.decode("utf-8", errors="replace")
    rows = foreign.execute(
        "SELECT global_position, event_type, event_data, metadata FROM event_store ORDER BY global_position"
    ).fetchall()
    as_text = [(p, t, d.decode("utf-8", errors="replace") if isinstance(d, bytes) else d, m) for p, t, d, m in rows]
    rows = [(p, t, d if "\ufffd" not in d else "not json", m) for p, t, d, m in as_text]
    reference = plab.ReferenceFold().fold(rows)
    assert_frame_equal(manager.user_progress_repository.all(), reference.user_progress())
    assert_frame_equal(manager.rejections(), reference.rejections())
    assert reference.rejections()["reason"].to_list().count("malformed") == 2


def test_reader_process_results_are_the_same_without_shared_memory(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader process hands results over in /dev/shm, or in the temporary folder when that is small."""
    from progress_lab import frames

    store = plab.connect(sqlite_url)
    load_generated(store, users=40, days=40, seed=5)
    assert store.head_position() >= frames._PROCESS_READ_MIN
    in_memory = store.events_frame()
    assert store._sqlite_readers.readers  # read by a reader process
    store.close()

    monkeypatch.setattr(frames, "_shared_memory_dir", lambda: None)
    store = plab.connect(sqlite_url)
    on_disk = store.events_frame()
    [reader] = store._sqlite_readers.readers
    assert not reader._dir.startswith("/dev/shm")
    assert_frame_equal(on_disk, in_memory)
    assert os.listdir(reader._dir) == []  # every result file is unlinked once mapped
    store.close()
    assert not os.path.exists(reader._dir)


def test_large_reads_of_a_sqlite_file_in_two_halves_equal_one_read(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """events_frame and read_fold_frame read a large range of a SQLite file as two halves,
    side by side; the result is the frame one read through SQLAlchemy gives, foreign rows
    too. PostgreSQL (one ADBC connection) reads in one piece."""
    from progress_lab import _schema, frames

    store = plab.connect(db_url)
    head = load_generated(store, users=6, days=12, seed=8)
    meta = '{"user_id":null,"timestamp":"2026-01-10T00:00:00.000000Z"}'
    with store.engine.begin() as conn:  # rows another tool wrote (no typed copy), one of them malformed
        conn.execute(
            _schema.event_store.insert(),
            [
                {"global_position": head + 1 + n, "event_id": f"f{n}", "stream_id": f"foreign-{n}", "stream_version": 1,
                 "event_type": "UserCreated", "event_data": data, "metadata": meta,
                 "created_at": datetime(2026, 1, 10, tzinfo=UTC)}
                for n, data in enumerate(['{"type":"UserCreated","user_id":"foreign"}', '{"type":"UserCreated",'])
            ],
        )
    load_generated(store, users=4, days=12, seed=9)
    last = store.head_position()

    monkeypatch.setattr(frames, "_PROCESS_READ_MIN", 10**9)  # every read in one piece (SQLAlchemy on SQLite)
    one_read = {raw: store.events_frame(raw=raw) for raw in (False, True)}
    fold_one_read = frames.read_fold_frame(store)
    middle_one_read = store.events_frame(7, last - 3)

    monkeypatch.setattr(frames, "_PROCESS_READ_MIN", 500)  # reader processes, and halves from 1,000 positions
    for raw in (False, True):
        assert_frame_equal(store.events_frame(raw=raw), one_read[raw])
    assert_frame_equal(frames.read_fold_frame(store), fold_one_read)
    assert_frame_equal(store.events_frame(7, last - 3), middle_one_read)
    if store.dialect == "sqlite":
        assert len(store._sqlite_readers.readers) == 2  # the halves were read side by side
    else:
        assert store._sqlite_readers is None
    assert one_read[False]["malformed"].null_count() == one_read[False].height - 1
    store.close()


def test_the_read_sizes_the_readme_gives_for_reader_processes_and_halves(sqlite_url: str) -> None:
    """README: reads under 20,000 positions go through SQLAlchemy, from 20,000 through a
    reader process, and from 40,000 in two halves, one per reader process."""
    store = plab.connect(sqlite_url)
    head = load_generated(store, users=80, days=40, seed=5)
    assert head >= 40_000

    def readers() -> int:
        return 0 if store._sqlite_readers is None else len(store._sqlite_readers.readers)

    parts = {}
    for size, processes in [(19_999, 0), (20_000, 1), (39_999, 1), (40_000, 2)]:
        parts[size] = store.events_frame(1, size)
        assert readers() == processes, f"a read of {size:,} positions: {readers()} reader processes"
    whole = store.events_frame()
    for size, part in parts.items():
        assert_frame_equal(part, whole.filter(pl.col("global_position") <= size))
    store.close()


def test_two_halves_leave_no_hole_when_events_commit_between_them(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The halves are cut at or below the head: events committed between the two reads
    can only add to the end of the result, never leave a gap in it."""
    from progress_lab import frames

    store = plab.connect(sqlite_url)
    head = load_generated(store, users=6, days=12, seed=8)
    monkeypatch.setattr(frames, "_PROCESS_READ_MIN", 300)  # halves from 600 positions
    read = frames._read
    first_read = threading.Event()

    def racing_read(store: plab.EventStore, start: int, end: int, columns: str, raw: bool) -> pl.DataFrame:
        if start == 1:
            frame = read(store, start, end, columns, raw)
            first_read.set()
            return frame
        assert first_read.wait(60)
        load_generated(store, users=3, days=12, seed=77)  # commits after the first half was read
        return read(store, start, end, columns, raw)

    monkeypatch.setattr(frames, "_read", racing_read)
    # A range beyond the head, as a caller may give: cut in its middle, the halves would
    # meet at head + 300, above the head, and miss what commits between head and there.
    frame = store.events_frame(1, 2 * head + 600)
    positions = frame["global_position"].to_list()
    assert store.head_position() > head + 300
    assert positions == list(range(1, len(positions) + 1))
    store.close()


def test_reader_processes_read_side_by_side_up_to_their_limit(sqlite_url: str) -> None:
    """A read finds the reader processes busy: it starts one more, up to MAX_SQLITE_READERS,
    and past that waits for one to be free."""
    from progress_lab import frames

    store = plab.connect(sqlite_url)
    load_generated(store, users=40, days=40, seed=5)
    expected = store.events_frame()  # one reader process
    pool = store._sqlite_readers
    assert len(pool.readers) == 1 and frames.MAX_SQLITE_READERS == 2
    results: list[pl.DataFrame] = []

    def read() -> None:
        results.append(store.events_frame())

    with pool.reader() as held:  # the first process is busy
        second = threading.Thread(target=read)
        second.start()
        second.join(timeout=60)
        assert not second.is_alive() and len(pool.readers) == 2  # so the read started another
        with pool.reader() as also_held:  # now both are busy
            assert also_held is not held
            third = threading.Thread(target=read)
            third.start()
            third.join(timeout=1.0)
            assert third.is_alive() and len(results) == 1  # it waits for a free one
        third.join(timeout=60)
        assert not third.is_alive()
    assert len(pool.readers) == 2 and len(results) == 2
    for result in results:
        assert_frame_equal(result, expected)
    processes = [reader._process for reader in pool.readers]
    store.close()
    assert all(process.poll() is not None for process in processes)


def test_a_reader_process_that_stopped_is_replaced(sqlite_url: str) -> None:
    """A reader process killed between reads (by the system, for its memory, say) does not
    make every later read of the store fail: the next read starts a new one."""
    store = plab.connect(sqlite_url)
    load_generated(store, users=40, days=40, seed=5)
    expected = store.events_frame(1, 20_000)  # one reader process (halves start at 40,000)
    [reader] = store._sqlite_readers.readers
    reader._process.kill()
    reader._process.wait()
    assert_frame_equal(store.events_frame(1, 20_000), expected)
    [replacement] = store._sqlite_readers.readers
    assert replacement is not reader and replacement.alive()
    store.close()


def test_a_long_catch_up_snapshots_on_the_way_at_growing_spacings(sqlite_url: str) -> None:
    store = plab.connect(sqlite_url)
    head = load_generated(store, users=22, days=30, seed=2)
    assert head == 10_140
    policy = plab.SnapshotPolicy(every=100, keep=10)
    manager = plab.ProjectionManager(store, batch_size=500, snapshot_policy=policy, progress=False)
    manager.snapshot_span = 1_000
    report = manager.rebuild()
    # Batches end at 62 (an eighth of a batch first), 562, 1,062, 1,562, ... Mid-way, a
    # snapshot needs 1,000 positions and the last snapshot's own position since the last:
    # 1,062, then >= 2,124 (2,562), then >= 5,124 (5,562), then >= 11,124 (none); then the end.
    versions = sorted(s.version for s in store.list_snapshots(manager.snapshot_stream))
    assert versions == [1_062, 2_562, 5_562, head] and report.snapshots == 4
    for snapshot in store.list_snapshots(manager.snapshot_stream):
        assert plab.ProjectionState.from_bytes(snapshot.state).position == snapshot.version
