"""Reliability: concurrency, crashes, a database that goes away, hostile input, secrets.

Every scenario runs against real databases (SQLite files, PostgreSQL servers; no mocks),
checks that no event is lost, duplicated or silently miscounted, and then appends its
numbers to the reliability log (tests/reliability_log.py); scripts/reliability_report.py
turns that log into RELIABILITY.md.

Run counts are small by default (CI); ``PROGRESS_LAB_SOAK=1`` multiplies them. All random
choices (delays, kill moments, fuzzed inputs) come from fixed seeds.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import reliability_log
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from reliability_log import Scenario, runs
from test_projector import assert_read_models_equal_reference, load_generated, raw_log

import progress_lab as plab
from progress_lab import cli
from progress_lab._schema import event_store as event_table
from progress_lab.generator import generate_events, write_jsonl
from progress_lab.jsonl import import_jsonl
from progress_lab.store import NewRecord, retrying

ROOT = Path(__file__).resolve().parent.parent
CHILDREN = Path(__file__).resolve().with_name("reliability_children.py")
# The transaction-level advisory lock every PostgreSQL append holds (store._APPEND_LOCK_KEY).
APPEND_LOCK_SQL = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 7406102 AND granted"
INJECTIONS = [
    "x'); DROP TABLE event_store; --",
    "Robert'); DELETE FROM snapshots WHERE ('1'='1",
    '" OR 1=1 --',
    "%s %(x)s :param $1 ? \\ \\\\",
    "'; SELECT pg_sleep(10); --",
    "$(rm -rf /tmp/pl) `id` | cat /etc/passwd && echo > ; *",
    "ünïcødé 🦉 \u202e",
]
T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
CHILD_TIMEOUT = 180


@pytest.fixture(scope="session", autouse=True)
def _fresh_reliability_log() -> None:
    """One log per test session: the report describes exactly the last run."""
    reliability_log.reset()


def backend(url: str) -> str:
    return "postgresql" if url.startswith("postgresql") else "sqlite"


def sqlite_path(url: str) -> str:
    return str(sa.make_url(url).database)


def checkpoint(store: plab.EventStore) -> plab.Checkpoint:
    return plab.CheckpointStore(store.engine).get("progress")


def child(mode: str, url: str, tmp: Path, name: str, *args: str) -> subprocess.Popen[bytes]:
    """Start tests/reliability_children.py; its output goes to files (a full pipe would block it)."""
    out = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process below
    proc = subprocess.Popen(
        [sys.executable, str(CHILDREN), mode, url, "--out", str(tmp / f"{name}.json"), "--ready", str(tmp / f"{name}.ready"), *args],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    out.close()
    return proc


def started(proc: subprocess.Popen[bytes], ready: Path) -> bool:
    return ready.exists() or proc.poll() is not None


def child_result(tmp: Path, name: str) -> dict[str, Any]:
    return dict(json.loads((tmp / f"{name}.json").read_text()))


def child_log(tmp: Path, name: str) -> str:
    return (tmp / f"{name}.log").read_text(errors="replace")


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def log_ids(store: plab.EventStore) -> list[str]:
    with store.engine.connect() as conn:
        return list(conn.execute(sa.text("SELECT event_id FROM event_store ORDER BY global_position")).scalars())


def assert_streams_contiguous(store: plab.EventStore) -> int:
    """Every stream's versions are exactly 1..n; returns the number of streams."""
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT stream_id, count(*), min(stream_version), max(stream_version) FROM event_store GROUP BY stream_id")
        ).all()
    for stream, count, low, high in rows:
        assert (low, high) == (1, count), f"stream {stream!r} has versions {low}..{high} for {count} events"
    return len(rows)


def assert_read_models_match_prefix(store: plab.EventStore, position: int) -> None:
    """The SQL read models hold exactly the reference fold of the log up to ``position``."""
    reference = plab.ReferenceFold().fold([row for row in raw_log(store) if row[0] <= position])
    manager = plab.ProjectionManager(store, progress=False)
    assert_frame_equal(manager.user_progress_repository.all(), reference.user_progress())
    assert_frame_equal(manager.daily_stats_repository.all(), reference.daily_stats())
    assert_frame_equal(manager.rejections(), reference.rejections())
    assert checkpoint(store).events_folded == reference.events_folded


def generated_records(users: int, days: int, seed: int) -> list[NewRecord]:
    return [plab.record_from_dict(e) for e in generate_events(users=users, days=days, seed=seed)]


def stream_batches(users: int, days: int, seed: int, size: int = 8) -> list[tuple[str, list[tuple[dict[str, Any], dict[str, Any]]]]]:
    """A generated log as append_events batches: runs of consecutive events of one stream."""
    batches: list[tuple[str, list[tuple[dict[str, Any], dict[str, Any]]]]] = []
    for event in generate_events(users=users, days=days, seed=seed):
        item = (event["event_data"], event["metadata"])
        if batches and batches[-1][0] == event["stream_id"] and len(batches[-1][1]) < size:
            batches[-1][1].append(item)
        else:
            batches.append((event["stream_id"], [item]))
    return batches


# -- concurrency --------------------------------------------------------------------------


def test_concurrent_writers_and_two_projectors(db_url: str, tmp_path: Path) -> None:
    """Writer processes race on shared streams while two projector processes fold the same projection."""
    seed = 6001
    row = Scenario("concurrency.writers_and_projectors", backend(db_url), "Concurrent writers and two projectors", seed)
    writers, batches = 3, runs(40)
    store = plab.connect(db_url)
    preloaded = load_generated(store, users=4, days=6, seed=seed)
    preload_ids = set(log_ids(store))
    go, stop = tmp_path / "go", tmp_path / "stop"
    procs = {
        f"writer{n}": child("write", db_url, tmp_path, f"writer{n}", "--writer", str(n), "--seed", str(seed),
                            "--batches", str(batches), "--go", str(go))
        for n in range(writers)
    }
    # Both projectors start from an empty checkpoint at the same moment, so they race from the first commit.
    for name, style in (("projector-loop", "loop"), ("projector-forever", "forever")):
        procs[name] = child("follow", db_url, tmp_path, name, "--style", style, "--batch-size", "60",
                            "--snapshot-every", "250", "--go", str(go), "--stop", str(stop))
    try:
        wait_until(lambda: all((tmp_path / f"{n}.ready").exists() or p.poll() is not None for n, p in procs.items()),
                   CHILD_TIMEOUT, "the children to start")
        go.write_text("go")
        samples: list[tuple[int, int]] = []
        deadline = time.monotonic() + CHILD_TIMEOUT
        while any(p.poll() is None for p in procs.values()) and time.monotonic() < deadline:
            mark = checkpoint(store)
            samples.append((mark.position, mark.events_folded))
            if not stop.exists() and all(procs[f"writer{n}"].poll() is not None for n in range(writers)):
                stop.write_text("stop")
            time.sleep(0.01)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    for name, proc in procs.items():
        assert proc.returncode == 0, f"{name} exited with {proc.returncode}:\n{child_log(tmp_path, name)[-3000:]}"
        assert "Traceback" not in child_log(tmp_path, name), child_log(tmp_path, name)[-3000:]
    results = {name: child_result(tmp_path, name) for name in procs}
    written = [results[f"writer{n}"] for n in range(writers)]

    # The log: every acknowledged event exactly once, nothing that was not acknowledged.
    ids = log_ids(store)
    acked = [event_id for w in written for event_id in w["acked"]]
    assert not [i for i, c in Counter(ids).items() if c > 1], "an event is in the log twice"
    lost = set(acked) - set(ids)
    phantom = set(ids) - set(acked) - preload_ids
    assert not lost and not phantom, (len(lost), len(phantom))
    assert len(ids) == preloaded + len(acked)
    streams = assert_streams_contiguous(store)

    # Every expected-version conflict surfaced as a ConcurrencyError naming both versions.
    assert [e for w in written for e in w["errors"]] == []
    conflicts = [c for w in written for c in w["conflicts"]]
    deliberate = [c for c in conflicts if c["deliberate"]]
    assert len(deliberate) == sum(w["deliberate"] for w in written) > 0
    assert all(c["actual"] == c["expected"] + 1 for c in deliberate)
    assert all(c["actual"] > c["expected"] for c in conflicts)

    # The checkpoint never moved backwards, and the read models are the full fold.
    positions = [p for p, _ in samples]
    assert all(a <= b for a, b in zip(positions, positions[1:])), "the checkpoint moved backwards"
    assert all(a <= b for (_, a), (_, b) in zip(samples, samples[1:]))
    assert checkpoint(store).position == store.head_position()
    assert_read_models_equal_reference(store)
    projector_conflicts = results["projector-loop"]["conflicts"] + results["projector-forever"]["conflicts"]
    row.write(
        what=f"{writers} writer processes x {batches} batches (own stream with expected version, 10% deliberately "
        "stale; 3 shared streams with read-then-append) while 2 projector processes (run_once loop and "
        "run_forever) fold the same projection",
        runs=1,
        events_written=len(ids),
        events_lost=len(lost),
        surfaced=f"{len(conflicts)} ConcurrencyError ({len(deliberate)} deliberate, {len(conflicts) - len(deliberate)} races), "
        f"each naming expected and actual version; {projector_conflicts} CheckpointError between the projectors, "
        "resolved by reloading, none crashed",
        verified=f"no duplicate or phantom event; {streams} streams with versions 1..n; checkpoint monotonic over "
        f"{len(samples)} samples; read models = reference fold",
        duplicates=0,
        phantoms=len(phantom),
        checkpoint_samples=len(samples),
        projector_conflicts=projector_conflicts,
    )


def test_two_projectors_creating_the_checkpoint_at_once(db_url: str) -> None:
    """The first commit of two projectors at once: the loser gets a CheckpointError, not a crash."""
    row = Scenario("concurrency.checkpoint_race", backend(db_url), "Two projectors' first commit at once")
    store = plab.connect(db_url)
    checkpoints = plab.CheckpointStore(store.engine)
    rounds = runs(2)
    outcomes: list[str] = []
    for n in range(rounds):
        name = f"race-{n}"
        loser = _race_first_checkpoint(store, checkpoints, name)
        assert isinstance(loser, plab.CheckpointError), repr(loser)
        assert "another projector" in str(loser)
        outcomes.append(type(loser).__name__)
        assert checkpoints.get(name).position == 5  # the winner's, never overwritten
        # A projector that is behind cannot move the checkpoint either.
        with pytest.raises(plab.CheckpointError, match="another projector"), store.transaction(lock_appends=False) as conn:
            checkpoints.advance(conn, name, expected=0, position=9, events_folded=9, ignored=0, options={}, now=T0)
        assert checkpoints.get(name).position == 5
    row.write(
        what="two projectors commit their first checkpoint (expected position 0) at the same moment; the second "
        "waits on the first's uncommitted row",
        runs=rounds,
        events_written=0,
        events_lost=0,
        surfaced=f"CheckpointError('... another projector ...') for the loser in {len(outcomes)}/{rounds} rounds "
        "(on PostgreSQL it was an IntegrityError crash before the fix)",
        verified="the winner's checkpoint stays; a stale projector cannot move it",
    )


def _lock_waits(store: plab.EventStore) -> int:
    # A fresh transaction each time: pg_stat_activity is a snapshot per transaction.
    with store.engine.connect() as probe:
        return int(probe.execute(sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )).scalar_one())


def _race_first_checkpoint(store: plab.EventStore, checkpoints: plab.CheckpointStore, name: str) -> BaseException | None:
    """Two transactions create checkpoint ``name`` at once (the second waits on the first's row); the second's error."""
    first_done, second_started = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def second() -> None:
        first_done.wait(30)
        second_started.set()
        try:
            with store.transaction(lock_appends=False) as conn:
                checkpoints.advance(conn, name, expected=0, position=7, events_folded=7, ignored=0, options={}, now=T0)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            errors.append(exc)

    thread = threading.Thread(target=second)
    thread.start()
    with store.transaction(lock_appends=False) as conn:
        checkpoints.advance(conn, name, expected=0, position=5, events_folded=5, ignored=0, options={}, now=T0)
        first_done.set()
        second_started.wait(30)
        if store.dialect == "postgresql":  # hold the commit until the other insert waits on our row
            wait_until(lambda: not thread.is_alive() or _lock_waits(store) > 0, 60,
                       "the second projector to wait on the checkpoint row")
        else:
            time.sleep(0.3)  # the second is waiting for the write lock (BEGIN IMMEDIATE)
    thread.join(60)
    return errors[0] if errors else None


# -- crashes ----------------------------------------------------------------------------------


def test_projector_sigkilled_at_random_moments_ends_with_the_full_fold(db_url: str, tmp_path: Path) -> None:
    seed = 7002
    row = Scenario("crash.projector_sigkill", backend(db_url), "Projector killed with SIGKILL", seed)
    rng = random.Random(seed)
    store = plab.connect(db_url)
    load_generated(store, users=10, days=20, seed=seed)
    kills = runs(4)
    tail = generated_records(users=3, days=kills * 2, seed=seed + 1)
    chunk = math.ceil(len(tail) / kills)
    killed_mid_run = finished = 0
    delays: list[float] = []
    for run in range(kills):
        store.append_records(tail[run * chunk : (run + 1) * chunk])
        head, before = store.head_position(), checkpoint(store)
        name = f"projector{run}"
        proc = child("project", db_url, tmp_path, name, "--batch-size", "150", "--snapshot-every", "600")
        try:
            wait_until(functools.partial(started, proc, tmp_path / f"{name}.ready"), CHILD_TIMEOUT, "the projector to start")
            delays.append(rng.uniform(0.0, 1.0))
            time.sleep(delays[-1])
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait()
        assert proc.returncode in (-signal.SIGKILL, 0), child_log(tmp_path, name)
        after = checkpoint(store)
        assert after.position >= before.position, "the checkpoint moved backwards"
        if proc.returncode == 0:
            finished += 1
        elif after.position < head:
            killed_mid_run += 1
        # Whatever the moment of the kill, the read models are exactly the fold up to the checkpoint.
        assert_read_models_match_prefix(store, after.position)
    assert killed_mid_run >= 1
    report = plab.ProjectionManager(store, batch_size=150, progress=False).run_once()
    assert report.to_position == store.head_position()
    assert_read_models_equal_reference(store)
    folded = checkpoint(store).events_folded
    row.write(
        what="catch-up projector process (batches of 150, snapshot every 600) SIGKILLed after a seeded delay "
        "of 0-1 s, new events appended before each run, restarted each time",
        runs=kills,
        events_written=store.count_events(),
        events_lost=store.count_events() - folded,
        surfaced=f"nothing to surface: {killed_mid_run} kills mid-catch-up, {finished} runs finished first; "
        "each restart resumed from the last committed batch",
        verified="after every kill the read models = reference fold up to the checkpoint; checkpoint never "
        "backwards; final read models = reference fold",
        delays=[round(d, 3) for d in delays],
    )


@pytest.fixture(scope="module")
def big_jsonl(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    path = tmp_path_factory.mktemp("jsonl") / "big.jsonl"
    return path, write_jsonl(path, users=30, days=20, seed=8003)


def _import_holds_write_lock(store: plab.EventStore) -> bool:
    if store.dialect == "postgresql":
        with store.engine.connect() as conn:
            return bool(conn.execute(sa.text(APPEND_LOCK_SQL)).scalar_one())
    probe = sqlite3.connect(sqlite_path(str(store.engine.url)), timeout=0, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True  # "database is locked": the importer's transaction is open
    finally:
        probe.close()


def _import_started(proc: subprocess.Popen[bytes], store: plab.EventStore) -> bool:
    return proc.poll() is not None or _import_holds_write_lock(store)


def _import_finished(store: plab.EventStore) -> bool:
    return not _import_holds_write_lock(store)


def test_importer_killed_mid_file_leaves_the_whole_file_or_nothing(
    db_url: str, tmp_path: Path, big_jsonl: tuple[Path, int]
) -> None:
    seed = 8003
    row = Scenario("crash.importer_sigkill", backend(db_url), "Importer killed mid-file", seed)
    rng = random.Random(seed)
    path, lines = big_jsonl
    attempts = runs(3)
    killed_empty = completed = 0
    delays: list[float] = []
    for run in range(attempts):
        url = db_url if db_url.startswith("postgresql") else f"sqlite:///{tmp_path}/import-{run}.db"
        store = plab.connect(url)
        with store.engine.begin() as conn:
            conn.execute(event_table.delete())
        out = open(tmp_path / f"import{run}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "progress_lab", "import", str(path), "--db", url, "--no-progress"],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
        )
        out.close()
        try:
            wait_until(functools.partial(_import_started, proc, store), CHILD_TIMEOUT,
                       "the importer to open its transaction", interval=0.02)
            # The first kill comes early (a fast machine might finish the file within a second).
            delays.append(rng.uniform(0.0, 0.1 if run == 0 else 1.5))
            time.sleep(delays[-1])
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait()
        count = store.count_events()
        assert count in (0, lines), f"a killed import left {count} of {lines} events"
        if count == 0:
            assert proc.returncode == -signal.SIGKILL
            killed_empty += 1
        else:
            completed += 1
        if store.dialect == "sqlite":
            with sqlite3.connect(sqlite_path(url)) as check:
                assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        else:  # the server rolls the dead client's transaction back and frees the append lock
            wait_until(functools.partial(_import_finished, store), 60, "the append lock to be released", 0.05)
        store.close()
    assert killed_empty >= 1
    # The store is still sound: the same file now imports completely.
    with plab.connect(url) as store:
        if store.count_events():
            with store.engine.begin() as conn:
                conn.execute(event_table.delete())
        assert import_jsonl(store, path, progress=False) == lines
        assert store.count_events() == lines and store.head_position() == lines
        assert_streams_contiguous(store)
    row.write(
        what=f"`progress-lab import` of a {lines}-event JSONL file ({path.stat().st_size // 1024} KiB) SIGKILLed "
        "a seeded 0-1.5 s (first run 0-0.1 s) after its write transaction opened",
        runs=attempts,
        events_written=lines,
        events_lost=0,
        surfaced=f"{killed_empty} kill(s) left an empty store (nothing half-written), {completed} import(s) had "
        "committed the whole file first: the import is one transaction",
        verified="after each kill 0 or all events; SQLite integrity_check ok / PostgreSQL lock released; "
        "a re-import then stores every line",
        delays=[round(d, 3) for d in delays],
    )


# -- the database goes away ------------------------------------------------------------------


class RestartablePostgres:
    """A private PostgreSQL cluster that the test may stop and start again on the same port."""

    def __init__(self) -> None:
        import pg_server

        self._pg = pg_server
        bindir = pg_server.find_pg_bindir()
        if bindir is None:
            raise pg_server.PostgresUnavailable("no PostgreSQL server binaries")
        self.workdir = pg_server._make_workdir()
        self.datadir = self.workdir / "data"
        self.logfile = self.workdir / "server.log"
        self.runner = pg_server._Runner(bindir, self.workdir)
        self.port = pg_server._init_and_start(self.runner, self.datadir, sockdir=self.workdir / "socket", logfile=self.logfile)

    def url(self, password: str) -> str:
        # The throwaway server trusts loopback connections, so any password is accepted.
        return f"postgresql+psycopg://postgres:{password}@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        proc = self.runner.run("pg_ctl", "stop", "-w", "-m", "fast", "-t", "60", "-D", str(self.datadir), timeout=90)
        assert proc.returncode == 0, proc.stderr

    def start(self) -> None:
        proc = self.runner.run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.datadir), "-l", str(self.logfile),
                               "-o", f"-p {self.port}", timeout=90)
        assert proc.returncode == 0, proc.stderr + self.logfile.read_text(errors="replace")[-2000:]

    def close(self) -> None:
        try:
            if (self.datadir / "postmaster.pid").exists():
                self._pg._stop(self.runner, self.datadir)
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture
def restartable_postgres() -> Iterator[RestartablePostgres]:
    import pg_server

    try:
        server = RestartablePostgres()
    except (pg_server.PostgresUnavailable, pg_server.PostgresStartError) as exc:
        if os.environ.get("PROGRESS_LAB_REQUIRE_PG", "").strip().lower() in {"1", "true", "yes", "on"}:
            pytest.fail(f"cannot start a restartable PostgreSQL server: {exc}")
        pytest.skip(f"cannot start a restartable PostgreSQL server: {exc}")
    try:
        yield server
    finally:
        server.close()


@pytest.mark.postgres
def test_postgres_stopped_and_restarted_while_following_and_writing(
    restartable_postgres: RestartablePostgres, caplog: pytest.LogCaptureFixture
) -> None:
    seed = 9004
    row = Scenario("outage.postgres_restart", "postgresql", "PostgreSQL stopped and restarted", seed)
    caplog.set_level(logging.WARNING, logger="progress_lab")
    secret = "Outage-S3cret-pw"
    url = restartable_postgres.url(secret)
    store = plab.connect(url)
    preloaded = load_generated(store, users=5, days=8, seed=seed)
    outages = runs(1)
    batches = stream_batches(users=6, days=6 + 4 * outages, seed=seed + 1)
    manager = plab.ProjectionManager(store, batch_size=200, progress=False)
    monitor = plab.ProjectionMonitor(store, critical_age=timedelta(seconds=1))
    crashed: list[BaseException] = []
    acked: list[str] = []
    unavailable: list[str] = []
    ambiguous = 0
    done_batches = [0]
    writer_done = threading.Event()
    stop_sampling = threading.Event()
    samples: list[dict[str, Any]] = []

    def follow() -> None:
        try:
            manager.run_forever(poll_interval=0.05, max_backoff=1.0)
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            crashed.append(exc)

    def write() -> None:
        nonlocal ambiguous
        versions: dict[str, int] = {}
        try:
            for stream, events in batches:
                expected = versions.get(stream, 0)
                deadline = time.monotonic() + 120
                while True:
                    try:
                        written = store.append_events(stream, events, expected_version=expected)
                        acked.extend(e.event_id for e in written)
                        break
                    except plab.StoreUnavailableError as exc:
                        unavailable.append(str(exc))
                        assert time.monotonic() < deadline, "the store did not come back"
                        time.sleep(0.1)
                    except plab.ConcurrencyError as exc:
                        # An attempt committed although the reply was lost: read back what it wrote.
                        assert exc.actual_version == expected + len(events), exc
                        mine = store.read_events(stream, expected + 1)
                        assert [e.event_data for e in mine] == [
                            plab.events.encode_new_event(item)[1] for item in events
                        ]
                        acked.extend(e.event_id for e in mine)
                        ambiguous += 1
                        break
                versions[stream] = expected + len(events)
                done_batches[0] += 1
                time.sleep(0.004)
        except BaseException as exc:  # noqa: BLE001
            crashed.append(exc)
        finally:
            writer_done.set()

    def sample() -> None:
        while not stop_sampling.is_set():
            entry: dict[str, Any] = {"t": time.monotonic(), "last_error": manager.last_error}
            try:
                report = monitor.lag()
                entry.update(behind=report.events_behind, status=report.status.name)
            except plab.StoreUnavailableError as exc:
                entry.update(unavailable=str(exc))
            except Exception as exc:  # noqa: BLE001 - must not happen; asserted below
                entry.update(other_error=f"{type(exc).__name__}: {exc}")
            samples.append(entry)
            stop_sampling.wait(0.05)

    threads = [threading.Thread(target=f, daemon=True) for f in (follow, write, sample)]
    for thread in threads:
        thread.start()
    windows: list[tuple[float, float, float]] = []
    progress = [0]
    try:
        for n in range(outages):
            progress[0] = (n + 1) * len(batches) // (outages + 2)
            wait_until(lambda: done_batches[0] > progress[0] or writer_done.is_set(), 120, "the writer to make progress")
            assert not writer_done.is_set(), "the writer finished before the outage"
            stopped_at = time.monotonic()
            restartable_postgres.stop()
            down_at = time.monotonic()
            time.sleep(2.0)
            restartable_postgres.start()
            windows.append((stopped_at, down_at, time.monotonic()))
        assert writer_done.wait(180), "the writer did not finish"
        wait_until(lambda: checkpoint(store).position == store.head_position(), 120, "the projector to catch up", 0.05)
        time.sleep(0.2)
    finally:
        manager.stop()
        stop_sampling.set()
        for thread in threads:
            thread.join(60)
    assert not crashed, crashed
    assert not any(thread.is_alive() for thread in threads)
    assert not [s["other_error"] for s in samples if "other_error" in s]

    # The outage was reported: log lines, last_error, the monitor's error, then lag that shrank to zero.
    warnings = [r.getMessage() for r in caplog.records if r.name == "progress_lab" and r.levelno == logging.WARNING]
    assert any("retrying in" in m for m in warnings), warnings
    assert any("store is back" in m for m in warnings), warnings
    # Backoff: within the first outage the announced waits grow (0.05, 0.1, 0.2, ... up to 1 s).
    first = warnings[: next(i for i, m in enumerate(warnings) if "store is back" in m)]
    waits = [float(m) for m in re.findall(r"retrying in ([0-9.]+) s", " ".join(first))]
    assert len(waits) >= 2 and waits == sorted(waits) and waits[-1] > waits[0], waits
    during = [s for s in samples if any(a <= s["t"] <= c for a, _, c in windows)]
    after = [s for s in samples if s["t"] > windows[-1][2]]
    assert any(s["last_error"] for s in during), "manager.last_error was never set during the outage"
    assert any("unavailable" in s for s in during), "the monitor never reported the store as unavailable"
    assert any(s.get("behind", 0) > 0 for s in during + after), "the monitor never saw the projector behind"
    assert manager.last_error is None and monitor.lag().events_behind == 0
    assert unavailable, "the writer never saw the outage"

    # Nothing lost, nothing counted twice.
    ids = log_ids(store)
    assert len(ids) == len(set(ids)) == preloaded + len(acked)
    assert set(acked) <= set(ids)
    assert_streams_contiguous(store)
    assert_read_models_equal_reference(store)

    # The password appeared nowhere the user can see.
    seen = warnings + unavailable + [str(s.get("last_error")) for s in samples] + [str(s.get("unavailable")) for s in samples]
    seen += [repr(store), str(manager.last_error), caplog.text]
    assert not [text for text in seen if secret in text]
    assert any("***" in text for text in unavailable)
    retries = sum("retrying in" in m for m in warnings)
    row.write(
        what=f"run_forever() follows (poll 0.05 s, backoff up to 1 s) while a writer thread appends "
        f"{len(batches)} batches with expected versions; `pg_ctl stop -m fast`, 2 s down, `pg_ctl start`",
        runs=outages,
        events_written=len(ids),
        events_lost=len(set(acked) - set(ids)),
        surfaced=f"{retries} WARNING log lines 'projection progress: ...; retrying in N s' (backoff "
        f"{waits[0]:g} s to {waits[-1]:g} s) then 'store is back'; "
        f"manager.last_error set; ProjectionMonitor.lag() raised StoreUnavailableError (password masked), then "
        f"showed up to {max([s.get('behind', 0) for s in after] or [0])} events behind after the restart; the writer got "
        f"{len(unavailable)} StoreUnavailableError and retried",
        verified=f"every acknowledged event in the log exactly once ({ambiguous} lost replies resolved via the "
        "expected version); read models = reference fold; password never shown",
        ambiguous_commits=ambiguous,
        outage_seconds=[round(c - a, 1) for a, _, c in windows],
        backoff_waits=waits,
        statuses_after_restart=dict(Counter(str(s.get("status")) for s in after)),
    )


def test_locked_sqlite_file_gives_a_clear_retried_timeout(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    seed = 9105
    row = Scenario("outage.sqlite_locked", "sqlite", "Locked SQLite file", seed)
    caplog.set_level(logging.WARNING, logger="progress_lab")
    path = tmp_path / "locked.db"
    url = f"sqlite:///{path}"
    store = plab.connect(url, connect_args={"timeout": 0.5})
    load_generated(store, users=3, days=5, seed=seed)
    manager = plab.ProjectionManager(store, batch_size=100, progress=False)
    manager.run_once()
    extra = stream_batches(users=2, days=4, seed=seed + 1)
    cycles = runs(2)
    timeouts: list[str] = []
    retry_lines: list[str] = []
    written = 0
    for cycle in range(cycles):
        stream, events = extra[cycle % len(extra)]
        stream = f"{stream}-{cycle}"
        holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")
        # A foreign writer's work that it will roll back.
        holder.execute(
            "INSERT INTO event_store (global_position, event_id, stream_id, stream_version, event_type, event_data, "
            "metadata, created_at) VALUES (?, 'foreign', 'foreign', 1, 'X', '{}', '{}', '2026-01-01 00:00:00.000000')",
            (store.head_position() + 1,),
        )
        head = store.head_position()
        started = time.monotonic()
        with pytest.raises(plab.StoreUnavailableError) as caught:
            store.append_events(stream, events, expected_version=0)
        waited = time.monotonic() - started
        message = str(caught.value)
        assert "database is locked" in message and str(path) in message, message
        assert 0.4 <= waited < 10
        timeouts.append(message)
        with pytest.raises(plab.StoreUnavailableError, match="database is locked"):
            manager.rebuild()  # its first write waits for the lock, then gives up; nothing is dropped
        assert store.head_position() == head  # reads still work while the file is locked
        # A retry loop rides out the lock: release it a little later.
        release = threading.Timer(1.0, holder.execute, args=("ROLLBACK",))
        release.start()
        result = retrying(functools.partial(store.append_events, stream, events, expected_version=0), attempts=8,
                          first_delay=0.2, log=retry_lines.append)
        release.join()
        holder.close()
        written += len(result)
        assert store.stream_version(stream) == len(events)
    assert retry_lines and all("database is locked" in line and "retry" in line for line in retry_lines)
    # A follower that meets the lock logs it, retries and catches up once the lock is gone.
    store.append_records(generated_records(users=1, days=3, seed=seed + 2))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    manager.reload()
    follower = threading.Thread(target=manager.run_forever, kwargs={"poll_interval": 0.05, "max_backoff": 0.3}, daemon=True)
    follower.start()
    try:
        wait_until(lambda: manager.last_error is not None, 30, "the follower to meet the lock")
        assert "database is locked" in str(manager.last_error)
        time.sleep(0.6)
        holder.execute("ROLLBACK")
        holder.close()
        wait_until(lambda: checkpoint(store).position == store.head_position(), 60, "the follower to catch up", 0.05)
    finally:
        manager.stop()
        follower.join(30)
    with sqlite3.connect(path) as check:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert check.execute("SELECT count(*) FROM event_store WHERE event_id = 'foreign'").fetchone() == (0,)
    assert_streams_contiguous(store)
    assert_read_models_equal_reference(store)
    warnings = [r.getMessage() for r in caplog.records if r.name == "progress_lab" and r.levelno == logging.WARNING]
    row.write(
        what="another connection holds `BEGIN IMMEDIATE` on the file; the store was opened with a 0.5 s busy "
        "timeout; append_events, a projector commit, then retrying() while the lock is released after 1 s",
        runs=cycles,
        events_written=store.count_events(),
        events_lost=0,
        surfaced=f"StoreUnavailableError after ~0.5 s: '{timeouts[0].split(': ', 1)[-1]}' naming the file; "
        f"retrying() logged {len(retry_lines)} 'store unavailable (...); retry n/7' lines and then succeeded; "
        f"run_forever logged {sum('locked' in m for m in warnings)} warnings and resumed",
        verified="PRAGMA integrity_check ok; the foreign writer's rolled-back row absent; streams 1..n; "
        "read models = reference fold",
    )


def test_sqlite_reader_processes_killed_while_following(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The reader processes that read a SQLite file as Arrow are SIGKILLed (as the system's
    out-of-memory killer would) at random moments of a follower's catch-ups."""
    from progress_lab import frames

    seed = 9206
    row = Scenario("outage.sqlite_reader_killed", "sqlite", "SQLite reader processes killed", seed)
    caplog.set_level(logging.WARNING, logger="progress_lab")
    monkeypatch.setattr(frames, "_PROCESS_READ_MIN", 100)  # every catch-up reads through the reader processes
    store = plab.connect(f"sqlite:///{tmp_path / 'readers.db'}")
    load_generated(store, users=3, days=6, seed=seed)
    manager = plab.ProjectionManager(store, batch_size=150, progress=False)
    follower = threading.Thread(target=manager.run_forever, kwargs={"poll_interval": 0.05, "max_backoff": 0.3}, daemon=True)
    rng = random.Random(seed)
    cycles = runs(6)
    kills = 0
    follower.start()
    try:
        for cycle in range(cycles):
            store.append_records(generated_records(users=2, days=5, seed=seed + 1 + cycle))
            time.sleep(rng.uniform(0.0, 0.4))
            pool = store._sqlite_readers
            for reader in list(pool.readers) if pool is not None else []:
                if reader.alive():
                    reader._process.kill()
                    kills += 1
            wait_until(lambda: checkpoint(store).position == store.head_position(), 60, "the follower to catch up", 0.05)
    finally:
        manager.stop()
        follower.join(30)
    assert not follower.is_alive()
    assert kills >= cycles // 2, f"only {kills} reader processes were running to be killed"
    assert_streams_contiguous(store)
    assert_read_models_equal_reference(store)
    stopped = [r.getMessage() for r in caplog.records if "reader process stopped" in r.getMessage()]
    row.write(
        what=f"run_forever() follows (poll 0.05 s, batches of 150, every catch-up through the reader processes) while "
        f"{cycles} imports land; after each, at a seeded 0-0.4 s, every live reader process is SIGKILLed",
        runs=cycles,
        events_written=store.count_events(),
        events_lost=0,
        surfaced=f"{kills} reader processes killed; {len(stopped)} WARNING log lines 'projection progress: "
        f"the SQLite reader process stopped ...; retrying in N s' (a kill mid-read), the other kills unseen: the next "
        "read started a new process",
        verified="the follower caught up after every kill; streams 1..n; read models = reference fold",
    )


# -- hostile input -----------------------------------------------------------------------------

_TEMPLATES: dict[str, dict[str, Any]] = {
    "UserCreated": {"type": "UserCreated", "user_id": "u1", "email": "learner@example.com"},
    "SessionStarted": {"type": "SessionStarted", "session_id": "s1", "user_id": "u1", "item_count": 3},
    "CorrectAnswerGiven": {"type": "CorrectAnswerGiven", "session_id": "s1", "item_id": "i1"},
    "SessionCompleted": {"type": "SessionCompleted", "session_id": "s1", "duration_seconds": 60},
    "ReviewProcessed": {"type": "ReviewProcessed", "user_id": "u1", "item_id": "i1", "quality": 4,
                        "new_interval": 6.0, "easiness_factor": 2.5},
}
_ID_FIELDS = {"user_id", "session_id", "item_id"}
_INT_RANGES = {"item_count": (0, 1_000_000), "duration_seconds": (0, 1_000_000_000), "quality": (0, 5)}
_FLOAT_RANGES = {"new_interval": (0.0, 1_000_000.0), "easiness_factor": (0.0, 1000.0)}


_NOTHING = object()


class Raw:
    """JSON text put into a line as it is (NaN literals, deep nesting, bytes that are not UTF-8)."""

    def __init__(self, text: bytes, needle: str) -> None:
        self.text, self.needle = text, needle

    def __repr__(self) -> str:
        return f"Raw({self.text[:40]!r}...)"


class Deep:
    """A value nested ``depth`` lists deep (built without recursion)."""

    def __init__(self, depth: int) -> None:
        self.depth = depth

    def value(self) -> list[Any]:
        outer: list[Any] = []
        inner = outer
        for _ in range(self.depth):
            nxt: list[Any] = []
            inner.append(nxt)
            inner = nxt
        return outer

    def __repr__(self) -> str:
        return f"Deep({self.depth})"


# Valid identifiers that are hostile elsewhere: SQL, shell and format metacharacters.
hostile_ids = st.one_of(
    st.sampled_from(INJECTIONS),
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30),
)
non_finite = st.sampled_from([math.nan, math.inf, -math.inf])
deep_values = st.sampled_from([Deep(3_000), Deep(50_000)])
json_junk = st.one_of(st.none(), st.booleans(), st.lists(st.integers(), max_size=3),
                      st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
bad_identifiers = st.one_of(
    st.just(""), st.text(min_size=257, max_size=300),
    st.just("a\x00b"), st.just("lone \ud800 surrogate"), st.integers(), st.floats(allow_nan=False), json_junk, deep_values,
)
bad_names = st.one_of(
    st.just(""), st.just("x" * 257), st.just("new\nline"), st.just("nul\x00"), st.just("lone \udc80"),
    st.integers(), st.floats(allow_nan=False), json_junk,
)
bad_timestamps = st.one_of(
    st.sampled_from(["", "yesterday", "2026-13-45T99:00:00Z", "0001-01-01T00:00:00+01:00",
                     "9999-12-31T23:59:59-01:00", "2026-01-05T08:00:00+25:00"]),
    st.integers(), st.floats(allow_nan=False), st.booleans(), st.lists(st.integers(), max_size=2),
)


def bad_ints(low: int, high: int) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.integers(max_value=low - 1), st.integers(min_value=high + 1), st.just(10**30), st.just(-(10**30)),
        st.floats(), st.booleans(), st.text(max_size=4), json_junk,
    )


def bad_floats(low: float, high: float, name: str) -> st.SearchStrategy[Any]:
    lows = [st.floats(max_value=-1e-9, allow_nan=False), st.integers(max_value=-1)]
    if name == "easiness_factor":
        lows += [st.just(0.0), st.just(0)]
    return st.one_of(
        *lows, st.floats(min_value=high * 1.000001 + 1), st.just(1e308), non_finite, st.booleans(), st.text(max_size=4),
        st.none(), st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=2),
    )


def needle_for(field: str, value: Any) -> str:
    """What the error message must mention for this hostile value of this field."""
    if isinstance(value, float) and not math.isfinite(value):
        return r"NaN|Infinity|finite|JSON"
    if isinstance(value, Deep):
        return rf"invalid JSON|not plain JSON|{re.escape(field.split('.')[-1])}"
    if isinstance(value, Raw):
        return value.needle
    if isinstance(value, str) and re.search("[\ud800-\udfff]", value):
        return r"surrogate|unicode|UTF-8"
    return re.escape(field.split(".")[-1])


@st.composite
def hostile_field(draw: st.DrawFn, *, jsonl: bool) -> tuple[str, Any]:
    """(dotted field, hostile value) for one event line or one append_events item."""
    event_type = draw(st.sampled_from(sorted(_TEMPLATES)))
    fold = [f for f in _TEMPLATES[event_type] if f not in {"type", "email"}]
    choices = [f"event_data.{f}" for f in fold] + [
        "metadata.timestamp", "metadata.user_id", "metadata.correlation_id", "event_data.extra",
    ]
    if jsonl:
        choices += ["stream_id", "event_type", "event_data", "metadata", "event_id", "created_at"]
    field = draw(st.sampled_from(choices))
    name = field.split(".")[-1]
    if field.startswith("event_data.") and name in _ID_FIELDS:
        value = draw(bad_identifiers)
    elif name in _INT_RANGES:
        value = draw(bad_ints(*_INT_RANGES[name]))
    elif name in _FLOAT_RANGES:
        value = draw(bad_floats(*_FLOAT_RANGES[name], name))
    elif field == "metadata.timestamp" and jsonl:
        value = draw(st.one_of(bad_timestamps, st.none()))
    elif field == "metadata.timestamp":  # Python numbers are Unix times: only the absurd ones are errors
        value = draw(st.one_of(
            st.sampled_from(["", "yesterday", "2026-13-45T99:00:00Z", "0001-01-01T00:00:00+01:00",
                             "9999-12-31T23:59:59-01:00", 10**20, -(10**20),
                             datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))]),
            st.booleans(), st.none(), st.lists(st.integers(), max_size=2),
        ))
    elif field == "created_at":
        value = draw(bad_timestamps)
    elif field == "metadata.user_id":
        value = draw(st.one_of(st.just(""), st.just("x" * 257), st.just("a\x00b"), st.just("\ud800"), st.integers(),
                               st.booleans(), st.lists(st.integers(), max_size=2)))
    elif field == "metadata.correlation_id":
        value = draw(st.one_of(st.just("a\x00b"), st.just("\udfff"), st.integers(), st.lists(st.integers(), max_size=2)))
    elif field == "event_data.extra":
        raws = [Raw(b'"\xff\xfe not utf-8"', r"UTF-8")] if jsonl else []
        value = draw(st.one_of(non_finite, deep_values, st.just("lone \ud800"), *(st.just(r) for r in raws)))
        if not jsonl:
            value = draw(st.one_of(st.just(value), st.sampled_from([b"bytes", {1, 2}, object()])))
    elif field in ("stream_id", "event_type"):
        value = draw(bad_names)
    elif field in ("event_data", "metadata"):
        value = draw(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5),
                               st.lists(st.integers(), max_size=3)))
    else:  # event_id
        value = draw(st.one_of(st.just(""), st.just("x" * 65), st.just("a\nb"), st.integers(), st.booleans(),
                               st.lists(st.integers(), max_size=2)))
    return f"{event_type}:{field}", value


def _set(obj: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        obj = obj[part]
    obj[parts[-1]] = value


def _good_line(event_type: str, ident: str, n: int) -> dict[str, Any]:
    data = json.loads(json.dumps(_TEMPLATES[event_type]))
    for key in data:
        if key in _ID_FIELDS:
            data[key] = f"{ident}-{key}"
    return {"stream_id": f"{ident}#{n}", "event_type": event_type, "event_data": data,
            "metadata": {"user_id": ident, "timestamp": "2026-01-05T08:00:00Z", "correlation_id": ident}}


def _encode_line(obj: dict[str, Any]) -> bytes:
    raws: dict[str, bytes] = {}

    def swap(value: Any) -> Any:
        if isinstance(value, Deep):
            value = Raw(b"[" * value.depth + b"]" * value.depth, "")
        if isinstance(value, Raw):
            key = f"@@raw{len(raws)}@@"
            raws[key] = value.text
            return key
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        return value

    text = json.dumps(swap(obj), allow_nan=True).encode()
    for key, raw in raws.items():
        text = text.replace(f'"{key}"'.encode(), raw)
    return text


def test_fuzzed_jsonl_import_names_the_line_and_writes_nothing(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    row = Scenario("hostile.jsonl_fuzz", backend(db_url), "Fuzzed JSONL import")
    store = plab.connect(db_url)
    path = tmp_path / "fuzz.jsonl"
    kinds: Counter[str] = Counter()
    examples = runs(50)

    garbage = st.binary(min_size=1, max_size=80).filter(lambda b: b"\n" not in b and bool(b.strip()))

    @settings(max_examples=examples, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(
        goods=st.lists(st.tuples(st.sampled_from(sorted(_TEMPLATES)), hostile_ids), min_size=0, max_size=4),
        where=st.integers(min_value=0, max_value=4),
        blanks=st.booleans(),
        bad=st.one_of(hostile_field(jsonl=True), st.tuples(st.just("garbage"), garbage),
                      st.sampled_from([("structure:duplicate", None), ("structure:unknown", None), ("structure:missing", None)])),
    )
    def check(goods: list[tuple[str, str]], where: int, blanks: bool, bad: tuple[str, Any]) -> None:
        lines = [_encode_line(_good_line(t, ident, n)) for n, (t, ident) in enumerate(goods)]
        label, value = bad
        if label == "garbage":
            bad_line, needle = value, r"invalid JSON|invalid UTF-8|expected a JSON object|missing key|unknown key|must|differs|surrogate"
        elif label.startswith("structure:"):
            base = _encode_line(_good_line("UserCreated", "u", 0))
            kind = label.split(":")[1]
            if kind == "duplicate":
                bad_line, needle = base[:-1] + b', "stream_id": "again"}', "duplicate key"
            elif kind == "unknown":
                bad_line, needle = base[:-1] + b', "stream": "x"}', "unknown key"
            else:
                bad_line, needle = base.replace(b'"stream_id": "u#0", ', b""), "missing key"
        else:
            event_type, field = label.split(":")
            obj = _good_line(event_type, "u", 0)
            _set(obj, field, value)
            bad_line, needle = _encode_line(obj), needle_for(field, value)
        kinds[label.split(":")[-1] if ":" in label else label] += 1
        position = min(where, len(lines))
        lines.insert(position, bad_line)
        if blanks:
            lines.insert(0, b"")
            position += 1
        path.write_bytes(b"\n".join(lines) + b"\n")
        with pytest.raises(plab.EventValidationError) as caught:
            import_jsonl(store, path, progress=False)
        message = str(caught.value)
        assert caught.value.line == position + 1 and message.startswith(f"line {position + 1}: "), (label, value, message)
        assert re.search(needle, message, re.I), (label, value, message)
        assert store.head_position() == 0

    check()
    # Through the command line: the same message, exit status 2, no traceback (deep nesting used to escape).
    capsys.readouterr()
    for raw, needle in ((b"[" * 50_000 + b"]" * 50_000, "line 2: invalid JSON"),
                        (_encode_line({**_good_line("UserCreated", "u", 0), "created_at": "0001-01-01T00:00:00+01:00"}),
                         "line 2: created_at")):
        path.write_bytes(_encode_line(_good_line("UserCreated", "u", 1)) + b"\n" + raw + b"\n")
        assert cli.main(["import", str(path), "--db", db_url, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"progress-lab: error: {needle}") and "Traceback" not in err, err[:300]
    assert store.head_position() == 0
    # The hostile but valid identifiers import literally.
    good = [_good_line(t, ident, n) for n, (t, ident) in enumerate(
        [(t, ident) for ident in INJECTIONS for t in ("UserCreated", "ReviewProcessed")])]
    path.write_bytes(b"\n".join(_encode_line(line) for line in good) + b"\n")
    assert import_jsonl(store, path, progress=False) == len(good)
    assert [e.stream_id for e in store.read_all_events()] == [line["stream_id"] for line in good]
    assert assert_streams_contiguous(store) == len(good)
    row.write(
        what="hypothesis (derandomized) files of 0-4 valid lines with SQL/shell/format metacharacters in ids plus one "
        "bad line: random bytes, invalid UTF-8, NaN/Infinity, 3 000-50 000-deep nesting, wrong JSON types, "
        "huge and negative numbers, out-of-range and overflowing timestamps, NUL and lone surrogates, "
        "over-long ids, duplicate/unknown/missing keys",
        runs=examples,
        events_written=store.count_events(),
        events_lost=0,
        surfaced="EventValidationError 'line N: ...' with .line = N, naming the field (or 'invalid JSON' / "
        "'invalid UTF-8' / 'surrogate'); CLI exit 2 with that message",
        verified=f"store unchanged after every bad file; then {len(good)} hostile-id lines imported literally",
        kinds=dict(kinds),
    )


def test_fuzzed_append_events_names_the_field_and_writes_nothing(db_url: str) -> None:
    row = Scenario("hostile.append_fuzz", backend(db_url), "Fuzzed append_events")
    store = plab.connect(db_url)
    kinds: Counter[str] = Counter()
    examples = runs(50)

    @settings(max_examples=examples, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(
        goods=st.lists(st.tuples(st.sampled_from(sorted(_TEMPLATES)), hostile_ids), min_size=0, max_size=3),
        where=st.integers(min_value=0, max_value=3),
        bad=st.one_of(
            hostile_field(jsonl=False),
            st.tuples(st.just("shape"), st.sampled_from([42, "SessionStarted", None, ["x"], ("a",), ("a", {}, {})])),
            st.tuples(st.just("unknown-type"), st.one_of(non_finite, deep_values, st.just("\ud800"),
                                                         st.sampled_from([b"x", {1}, object()]))),
            st.tuples(st.just("stream_id"), bad_names),
            st.tuples(st.just("expected_version"), st.sampled_from([-1, True, 1.5, "0", 2**70 * -1])),
        ),
    )
    def check(goods: list[tuple[str, str]], where: int, bad: tuple[str, Any]) -> None:
        items: list[Any] = []
        for n, (event_type, ident) in enumerate(goods):
            line = _good_line(event_type, ident, n)
            items.append((line["event_data"], line["metadata"]))
        label, value = bad
        stream, expected = "fuzz", None
        position = min(where, len(items))
        index: int | None = position
        item: Any = _NOTHING
        if label == "shape":
            item = value
            needle = r"mapping|pair|domain event|type"
        elif label == "unknown-type":
            item = ({"type": "Custom", "value": value.value() if isinstance(value, Deep) else value}, {"timestamp": "2026-01-05T08:00:00Z"})
            needle = r"event_data"
        elif label in ("stream_id", "expected_version"):
            index = None
            stream = value if label == "stream_id" else "fuzz"
            expected = value if label == "expected_version" else None
            needle = label
        else:
            event_type, field = label.split(":")
            line = _good_line(event_type, "u", 0)
            _set(line, field, value.value() if isinstance(value, Deep) else value)
            item = (line["event_data"], line["metadata"])
            needle = needle_for(field, value)
        kinds[label.split(":")[-1]] += 1
        if item is not _NOTHING:
            items.insert(position, item)
        with pytest.raises(plab.EventValidationError) as caught:
            store.append_events(stream, items, expected_version=expected)
        message = str(caught.value)
        assert caught.value.index == index, (label, value, message)
        if index is not None:
            assert message.startswith(f"event {index}: "), (label, value, message)
        assert re.search(needle, message, re.I), (label, value, message)
        assert store.head_position() == 0

    check()
    row.write(
        what="hypothesis (derandomized) batches of 0-3 valid events (hostile ids) plus one bad item: wrong JSON "
        "types, huge/negative/NaN/infinite numbers, 3 000-50 000-deep nesting, lone surrogates, NUL in ids, "
        "bytes/sets/objects, overflowing timestamps, bad stream ids and expected versions, wrong shapes",
        runs=examples,
        events_written=0,
        events_lost=0,
        surfaced="EventValidationError 'event i: ...' with .index = i naming the field (e.g. "
        "'event_data.item_count', 'metadata.timestamp', 'event_data.extra is not plain JSON')",
        verified="store unchanged after every rejected batch (all or nothing)",
        kinds=dict(kinds),
    )


# Rows a foreign writer (or a damaged disk) put into the log: (event_type, event_data, metadata).
_GOOD_META = '{"user_id":null,"timestamp":"2026-01-05T09:00:00.000000Z","correlation_id":null,"causation_id":null}'
_DEEP = "[" * 100_000 + "]" * 100_000
_CORRUPT: list[tuple[str, str, str]] = [
    ("UserCreated", "{not json", _GOOD_META),
    ("SessionStarted", '{"type":"SessionStarted","session_id":"c1","user_id":"cu"}', _GOOD_META),  # field missing
    ("SessionStarted", '{"type":"SessionStarted","session_id":"c2","user_id":"cu","item_count":"3"}', _GOOD_META),
    ("ReviewProcessed", '{"type":"ReviewProcessed","user_id":"cu","item_id":"i","quality":3,"new_interval":NaN,'
     '"easiness_factor":2.5}', _GOOD_META),
    ("SessionStarted", '{"type":"SessionStarted","session_id":"c3","user_id":"cu","item_count":1e400}', _GOOD_META),
    ("SessionStarted", '{"type":"SessionStarted","session_id":"c4","user_id":"cu","item_count":100000000000000000000000}', _GOOD_META),
    ("UserCreated", '{"type":"UserCreated","user_id":' + _DEEP + "}", _GOOD_META),
    ("UserCreated", '{"type":"UserCreated","user_id":"cu8"}', '{"timestamp":"2026-01-05T09:00:00.000000Z","user_id":' + _DEEP + "}"),
    ("UserCreated", '{"type":"UserCreated","user_id":"cu7"}', "null"),
    ("UserCreated", "null", _GOOD_META),
    ("UserCreated", '{"type":"UserCreated","user_id":"u\\u0000x"}', _GOOD_META),
    ("UserCreated", '{"type":"UserCreated","user_id":"u\\ud800x"}', _GOOD_META),
    ("UserCreated", '{"type":"UserCreated","user_id":"cu5"}', '{"timestamp":"yesterday"}'),
    ("SessionCompleted", '{"type":"SessionStarted","session_id":"c1","duration_seconds":60}', _GOOD_META),
    ("UserCreated", "[1, 2]", _GOOD_META),
    ("ForeignEvent", "{broken", "{broken"),  # an unknown type: ignored, whatever it holds
]
# Valid, if odd: accepted by both folds alike (the deep part is in a field the fold ignores).
_ODD_BUT_VALID: list[tuple[str, str, str]] = [
    ("UserCreated", '{"type":"UserCreated","user_id":"deep-extra","x":' + _DEEP + "}", _GOOD_META),
    ("UserCreated", '{"type":"UserCreated","user_id":"dup","user_id":"dup-last"}', _GOOD_META),
]
_NOT_UTF8_DATA = b'{"type":"UserCreated","user_id":"u\xff"}'


def _insert_foreign(store: plab.EventStore, rows: list[tuple[str, str, str]], tag: str, not_utf8: bool = False) -> list[int]:
    head = store.head_position()
    with store.engine.begin() as conn:
        conn.execute(event_table.insert(), [
            {"global_position": head + 1 + n, "event_id": f"{tag}-{n}", "stream_id": f"foreign-{tag}", "stream_version": 1 + n,
             "event_type": t, "event_data": d, "metadata": m, "created_at": T0}
            for n, (t, d, m) in enumerate(rows)
        ])
        if not_utf8 and store.dialect == "sqlite":  # bytes that are not UTF-8: SQLite stores what it is given
            conn.execute(event_table.insert().values(
                global_position=head + 1 + len(rows), event_id=f"{tag}-utf8", stream_id=f"foreign-{tag}-b",
                stream_version=1, event_type="UserCreated", event_data="", metadata=_GOOD_META, created_at=T0))
            conn.execute(sa.text("UPDATE event_store SET event_data = CAST(:raw AS TEXT) WHERE event_id = :id"),
                         {"raw": _NOT_UTF8_DATA, "id": f"{tag}-utf8"})
    return list(range(head + 1, store.head_position() + 1))


def _raw_log_bytes_safe(store: plab.EventStore) -> list[tuple[int, str, str, str]]:
    """The log for the reference fold; text that is not UTF-8 becomes a non-JSON marker (it is malformed)."""
    if store.dialect != "sqlite":
        return raw_log(store)
    with contextlib.closing(sqlite3.connect(sqlite_path(str(store.engine.url)))) as conn:
        conn.text_factory = bytes
        rows = conn.execute("SELECT global_position, event_type, event_data, metadata FROM event_store ORDER BY 1").fetchall()

    def text(value: bytes) -> str:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return "(not UTF-8)"

    return [(p, text(t), text(d), text(m)) for p, t, d, m in rows]


def test_corrupt_rows_in_the_store_are_rejected_as_malformed_and_the_replay_goes_on(db_url: str) -> None:
    row = Scenario("hostile.corrupt_rows", backend(db_url), "Corrupt rows already in the store")
    store = plab.connect(db_url)
    load_generated(store, users=2, days=3, seed=31)
    corrupt = _insert_foreign(store, _CORRUPT, "a", not_utf8=True)
    odd = _insert_foreign(store, _ODD_BUT_VALID, "odd")
    store.append_records(generated_records(users=2, days=3, seed=32))
    corrupt += _insert_foreign(store, _CORRUPT[:4], "b")
    store.append_events("user-late", [({"type": "UserCreated", "user_id": "after-the-corruption"}, {"timestamp": "2026-01-09T00:00:00Z"})])
    known_corrupt = [p for p in corrupt if p not in odd]
    rows = _raw_log_bytes_safe(store)
    reference = plab.ReferenceFold().fold(rows)
    types = {p: t for p, t, _, _ in rows}
    expected_malformed = [p for p in known_corrupt if types[p] in plab.KNOWN_EVENT_TYPES]
    batch_sizes = [1, 6, 100_000]
    for size in batch_sizes:
        manager = plab.ProjectionManager(store, batch_size=size, progress=False)
        report = manager.rebuild()
        assert report.to_position == store.head_position()
        rejections = manager.rejections()
        malformed = rejections.filter(pl.col("reason") == "malformed")["global_position"].to_list()
        assert malformed == expected_malformed, (size, malformed)
        assert_frame_equal(manager.user_progress_repository.all(), reference.user_progress())
        assert_frame_equal(manager.daily_stats_repository.all(), reference.daily_stats())
        assert_frame_equal(rejections, reference.rejections())
        users = manager.user_progress_repository.all()["user_id"].to_list()
        assert "after-the-corruption" in users and "deep-extra" in users and "dup-last" in users
    folded = checkpoint(store).events_folded
    assert folded == len(rows)
    row.write(
        what=f"{len(corrupt)} rows written behind the store's back amid valid events: invalid JSON, missing or "
        "mistyped fields, NaN / 1e400 / 10^23, 100 000-deep nesting, JSON null, NUL and lone surrogates in ids, "
        "non-canonical timestamps, payload type mismatch, "
        + ("bytes that are not UTF-8, " if store.dialect == "sqlite" else "")
        + "an unknown type with broken JSON; replayed in batches of "
        + ", ".join(map(str, batch_sizes)),
        runs=len(batch_sizes),
        events_written=len(rows),
        events_lost=len(rows) - folded,
        surfaced=f"{len(expected_malformed)} rejections (position, event type, reason 'malformed') in "
        "ProjectionManager.rejections(); the unknown-type row ignored and counted; the replay went on",
        verified="read models and rejections = reference fold for every batch split; events after the corrupt "
        "rows folded",
    )


# -- security -------------------------------------------------------------------------------------


def test_every_sql_statement_binds_injection_strings(db_url: str, tmp_path: Path) -> None:
    row = Scenario("security.bound_sql", backend(db_url), "SQL injection strings in ids and types")
    store = plab.connect(db_url)
    statements: list[str] = []

    @sa.event.listens_for(store.engine, "before_cursor_execute")
    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        statements.append(statement)

    at = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    for n, text in enumerate(INJECTIONS):
        meta = {"user_id": text, "timestamp": (at + timedelta(minutes=n)).isoformat(), "correlation_id": text}
        store.append_events(text, [
            ({"type": "SessionStarted", "session_id": text, "user_id": text, "item_count": 2}, meta),
            ({"type": "CorrectAnswerGiven", "session_id": text, "item_id": text}, {**meta, "user_id": None}),
            ({"type": "SessionCompleted", "session_id": text, "duration_seconds": 120}, meta),
            ({"type": "ReviewProcessed", "user_id": text, "item_id": text, "quality": 5, "new_interval": 30.0,
              "easiness_factor": 2.6}, meta),
            ({"type": text, "payload": text}, meta),
        ], expected_version=0)
    path = tmp_path / "inject.jsonl"
    path.write_text("".join(json.dumps({
        "stream_id": f"{text}/import", "event_type": "UserCreated", "event_data": {"type": "UserCreated", "user_id": f"{text}/import"},
        "metadata": {"timestamp": "2026-01-06T10:00:00Z", "causation_id": text}, "event_id": f"id {n} {text}"[:64],
    }) + "\n" for n, text in enumerate(INJECTIONS)))
    assert import_jsonl(store, path, progress=False) == len(INJECTIONS)
    manager = plab.ProjectionManager(store, batch_size=7, progress=False)
    manager.run_once()
    plab.ProjectionMonitor(store).lag()
    for text in INJECTIONS:
        progress = manager.user_progress_repository.get_current_progress(text)
        assert progress is not None and progress["user_id"] == text and progress["total_sessions_completed"] == 1
        assert manager.daily_stats_repository.get_daily_stats(text, date(2026, 1, 5)) is not None
        assert manager.daily_stats_repository.get_stats_range(text, date(2026, 1, 1), date(2026, 1, 31)).height == 1
        assert store.stream_version(text) == 5 and [e.stream_id for e in store.read_events(text)] == [text] * 5
        assert [e.event_data["payload"] for e in store.read_events_by_type(text)] == [text]
        store.save_snapshot(plab.Snapshot.from_json(text, 1, text))
        snapshot = store.get_latest_snapshot(text)
        assert snapshot is not None and snapshot.json_state() == text
    assert manager.rejections().height == 0
    users = set(manager.user_progress_repository.all()["user_id"].to_list())
    assert users == set(INJECTIONS) | {f"{t}/import" for t in INJECTIONS}
    with store.engine.connect() as conn:  # every table is still there, with what was written
        counts = {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()
                  for t in ("event_store", "snapshots", "user_progress", "daily_stats", "projection_checkpoints")}
    assert counts["event_store"] == 6 * len(INJECTIONS) and counts["snapshots"] >= len(INJECTIONS)
    # The capture sees the writes too: read-model upserts, checkpoints, rejections (and SQLite's event inserts;
    # PostgreSQL appends stream rows through COPY, which has no SQL text to inject into).
    assert any("INTO user_progress" in s for s in statements) and any("projection_checkpoints" in s for s in statements)
    assert any("INTO event_store" in s for s in statements) or store.dialect == "postgresql"
    leaked = [(text, s) for s in statements for text in INJECTIONS if text in s]
    assert not leaked, leaked[:3]
    # The CSV files carry the ids literally, as data.
    out = tmp_path / "out"
    assert cli.main(["replay", "--db", db_url, "--out", str(out), "--no-progress"]) == 0
    with open(out / "user_progress.csv", newline="", encoding="utf-8") as f:
        assert {r["user_id"] for r in csv.DictReader(f)} == users
    row.write(
        what=f"{len(INJECTIONS)} injection strings (quotes, `; DROP TABLE`, `%s %(x)s :param $1 ?`, shell "
        "`$(...)`/backticks, bidi) as stream ids, event types, session/user/item ids, metadata ids and event "
        "ids, through append_events, JSONL import, projector, monitor, repositories, snapshots and CLI replay",
        runs=1,
        events_written=counts["event_store"],
        events_lost=0,
        surfaced=f"nothing to surface: all {len(statements)} SQL statements issued carried the strings as bound "
        "parameters (none in the statement text); ids stored and returned literally",
        verified="all tables intact; read models hold the ids verbatim; CSV output holds them verbatim",
        statements=len(statements),
    )


@pytest.mark.postgres
def test_passwords_never_shown_in_cli_output_logs_errors_or_reprs(
    pg_admin_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    from pg_server import create_database, drop_database, unique_database_name

    row = Scenario("security.passwords", "postgresql", "Database passwords never shown")
    caplog.set_level(logging.WARNING, logger="progress_lab")
    secret = "Pa55w0rd-n3ver-sh0wn"
    name = unique_database_name("secrets")
    url = sa.make_url(create_database(pg_admin_url, name)).set(password=secret).render_as_string(hide_password=False)
    seen: list[str] = []
    try:
        sample = tmp_path / "in.jsonl"
        write_jsonl(sample, users=2, days=3, seed=5)
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"stream_id": 1}\n')
        unreachable = sa.make_url(url).set(port=1).render_as_string(hide_password=False)
        commands = [
            ["import", str(sample)], ["export", str(tmp_path / "out.jsonl")], ["replay", "--out", str(tmp_path / "o")],
            ["lag"], ["import", str(bad)],
        ]
        codes = [cli.main([*c, "--db", url, "--no-progress"] if c[0] != "lag" else [*c, "--db", url]) for c in commands]
        codes += [cli.main(["lag", "--db", unreachable]), cli.main(["replay", "--db", unreachable, "--no-progress"])]
        assert codes == [0, 0, 0, 0, 2, 2, 2]
        captured = capsys.readouterr()
        seen += [captured.out, captured.err]
        assert "***" in captured.out and "***" in captured.err
        with pytest.raises(plab.StoreUnavailableError) as caught:
            plab.connect(unreachable)
        seen.append(str(caught.value))
        store = plab.connect(url)
        imported = store.count_events()
        manager = plab.ProjectionManager(store, progress=False)
        monitor = plab.ProjectionMonitor(store)
        seen += [repr(store), str(store), store.url, repr(store.engine), repr(store.engine.url), repr(manager),
                 str(monitor.lag()), repr(monitor.lag())]
        # The database disappears under a running follower and a monitor.
        follower = threading.Thread(target=manager.run_forever, kwargs={"poll_interval": 0.05, "max_backoff": 0.2}, daemon=True)
        follower.start()
        time.sleep(0.3)
        drop_database(pg_admin_url, name)
        wait_until(lambda: manager.last_error is not None, 30, "the follower to notice")
        seen.append(str(manager.last_error))
        with pytest.raises(plab.StoreUnavailableError) as lag_error:
            monitor.lag()
        seen.append(str(lag_error.value))
        with pytest.raises(plab.StoreUnavailableError) as append_error:
            store.append_events("s", [{"type": "UserCreated", "user_id": "u"}])
        seen.append(str(append_error.value))
        manager.stop()
        follower.join(30)
        store.close()
        seen += [r.getMessage() for r in caplog.records] + [caplog.text]
    finally:
        drop_database(pg_admin_url, name)
    leaks = [text for text in seen if secret in text]
    assert not leaks, leaks[:2]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings
    row.write(
        what="a password in the URL; CLI import/export/replay/lag (success and failure, unreachable server), "
        "connect() errors, reprs of store/engine/manager/lag report, then the database dropped under a "
        "run_forever follower, the monitor and a writer",
        runs=1,
        events_written=imported,
        events_lost=0,
        surfaced=f"URLs shown as postgres:***@...; {len(warnings)} follower warnings, last_error, "
        "StoreUnavailableError from lag() and append_events() without the password",
        verified=f"the password appears in none of {len(seen)} outputs, messages, log lines and reprs",
    )


def test_email_addresses_never_reach_read_models_or_files(db_url: str, tmp_path: Path) -> None:
    row = Scenario("security.emails", backend(db_url), "E-mail addresses stay out of the read models")
    store = plab.connect(db_url)
    written = load_generated(store, users=6, days=6, seed=41)
    store.append_events("user-x", [({"type": "UserCreated", "user_id": "x", "email": "x'); DROP TABLE t; --@example.com",
                                     "display_name": "someone@example.com"}, {"timestamp": "2026-01-06T00:00:00Z"})])
    assert any("@example.com" in str(e.event_data.get("email")) for e in store.read_events_by_type("UserCreated"))
    out = tmp_path / "out"
    assert cli.main(["replay", "--db", db_url, "--out", str(out), "--no-progress"]) == 0
    files = sorted(p for p in out.iterdir() if p.suffix in (".csv", ".parquet"))
    assert len(files) == 4
    for path in files:
        assert b"@example.com" not in path.read_bytes(), path
    texts: list[str] = []
    with store.engine.connect() as conn:
        for table in ("user_progress", "daily_stats", "projection_rejections", "projection_checkpoints"):
            texts += [str(tuple(r)) for r in conn.execute(sa.text(f"SELECT * FROM {table}"))]
    assert texts and not [t for t in texts if "@" in t]
    snapshots = store.list_snapshots(plab.ProjectionManager(store).snapshot_stream)
    for snapshot in snapshots:  # the fold state itself never held an address
        with zipfile.ZipFile(io.BytesIO(snapshot.state)) as archive:
            assert not [n for n in archive.namelist() if b"@example.com" in archive.read(n)]
    row.write(
        what="generated learners with e-mail addresses (and one hostile address/display name) replayed with "
        "the CLI into SQL read models, CSV and Parquet",
        runs=1,
        events_written=written + 1,
        events_lost=0,
        surfaced="nothing to surface: no read model has an e-mail column and the fold never reads the field",
        verified=f"no '@' in {len(texts)} rows of user_progress/daily_stats/rejections/checkpoints; no address "
        f"in the 4 CSV/Parquet files or {len(snapshots)} projection snapshots",
    )
