"""Follow benchmark: how long after its commit an event shows in the read models, under a steady write load.

Usage::

    python bench/follow.py                          # 1,000 events/s for 60 s, SQLite and PostgreSQL
    python bench/follow.py --rate 500 --seconds 20 --backends postgresql
    python bench/follow.py --backends postgresql --snapshot-interval 5
    python bench/follow.py --pg-url postgresql://user@host/postgres

Per backend, in a fresh database holding ``--preload`` generated events:

* a projector process runs ``ProjectionManager.run_forever(poll_interval=...)``, with
  ``--snapshot-interval`` when given (on
  PostgreSQL it wakes on the store's notifications, on SQLite it polls);
* ``--writers`` writer processes append the next generated events at ``--rate``
  events/s in total, one ``append_records`` transaction every ``--batch-ms`` with the
  events due by then (a writer's events are whole streams: per-stream order holds).
  After each commit a writer notes the wall-clock time and the global position of the
  batch's last event;
* this process polls the projection's checkpoint (``CheckpointStore.get``) every
  ``--sample-ms`` and notes when each position became visible. The checkpoint and the
  read models commit in one transaction, so a visible position is in the read models.

The delay of a batch is the time from its commit (as its writer saw it) to the first
poll that sees the checkpoint at or past its last position; the poll period bounds
the error. All times are ``time.time()`` of processes on one machine. PostgreSQL is a
throwaway server unless ``--pg-url`` names one. Results go to ``bench/results/follow.json``.
"""

from __future__ import annotations

import argparse
import inspect
import math
import multiprocessing as mp
import queue
import shutil
import tempfile
import time
import zlib
from bisect import bisect_left
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

from _common import describe_machine, print_table, timer
from _harness import add_backend_arguments, backends, fresh_database, generated_events, postgres_server, save_results

import progress_lab as plab
from progress_lab.events import EventMetadata
from progress_lab.store import NewRecord

PROJECTION = "progress"
TARGET_P95_MS = {"postgresql": 250.0}  # issue 5
CATCH_UP_TIMEOUT_S = 120.0


def _records(events: list[dict[str, Any]], *, keep_created: bool) -> Iterator[NewRecord]:
    for e in events:
        yield NewRecord(
            e["stream_id"],
            e["event_type"],
            e["event_data"],
            EventMetadata.model_validate(e["metadata"]),
            e["event_id"],
            datetime.fromisoformat(e["created_at"]) if keep_created else None,  # live appends: the store's clock
        )


# -- the child processes ---------------------------------------------------------------------


def _projector(url: str, poll_interval: float, snapshot_interval: float | None, stop: Any, out: Any) -> None:
    store = plab.connect(url)
    manager = plab.ProjectionManager(store, name=PROJECTION, progress=False)
    reports: list[tuple[float, int, float]] = []  # (end time, events folded, seconds) per catch-up
    # None: run_forever's own default.
    options = {} if snapshot_interval is None else {"snapshot_interval": snapshot_interval}
    try:
        manager.run_forever(
            poll_interval=poll_interval,
            **options,
            stop=stop,  # a multiprocessing.Event: the is_set()/wait() run_forever needs
            on_report=lambda r: reports.append((time.time(), r.events_folded, r.seconds)),
        )
    finally:
        out.put(reports)
        store.close()


def _writer(
    index: int,
    url: str,
    events: list[dict[str, Any]],
    rate: float,
    seconds: float,
    batch_s: float,
    ready: Any,
    go: Any,
    start: Any,
    out: Any,
) -> None:
    import sqlalchemy as sa

    store = plab.connect(url)
    lookup = sa.text("SELECT global_position FROM event_store WHERE event_id = :id")
    commits: list[tuple[float, int, int]] = []  # (commit time, last position, events)
    total = min(len(events), int(rate * seconds))
    sent = 0
    store.head_position()  # connected before the clock starts
    ready.wait()
    go.wait()
    t0 = start.value
    tick = 0
    try:
        while sent < total:
            tick = max(tick + 1, int((time.time() - t0) / batch_s) + 1)  # a late commit skips ticks, never spins
            wake = t0 + tick * batch_s
            pause = wake - time.time()
            if pause > 0:
                time.sleep(pause)
            due = min(total, int(rate * (time.time() - t0)))
            if due <= sent:
                continue
            batch = events[sent:due]
            store.append_records(_records(batch, keep_created=False))
            committed = time.time()
            with store.engine.connect() as conn:
                position = int(conn.execute(lookup, {"id": batch[-1]["event_id"]}).scalar_one())
            commits.append((committed, position, len(batch)))
            sent = due
    finally:
        out.put((index, commits, time.time() - t0))
        store.close()


# -- one backend -------------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def follow(backend: str, url: str, events: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    store = plab.connect(url)
    checkpoints = plab.CheckpointStore(store.engine)
    preload, live = events[: args.preload], events[args.preload :]
    if preload:
        store.append_records(_records(preload, keep_created=True))
    head0 = store.head_position()

    shares: list[list[dict[str, Any]]] = [[] for _ in range(args.writers)]
    for e in live:  # whole streams per writer, so each stream's versions stay in order
        shares[zlib.crc32(e["stream_id"].encode()) % args.writers].append(e)

    stop, go = ctx.Event(), ctx.Event()
    ready = ctx.Barrier(args.writers + 1)
    start = ctx.Value("d", 0.0)
    results: Any = ctx.Queue()
    stats: Any = ctx.Queue()
    projector = ctx.Process(target=_projector, args=(url, args.poll_interval, args.snapshot_interval, stop, stats), name="follow-projector")
    writers = [
        ctx.Process(
            target=_writer,
            args=(
                i,
                url,
                share,
                args.rate / args.writers,
                args.seconds,
                args.batch_ms / 1000,
                ready,
                go,
                start,
                results,
            ),
            name=f"follow-writer-{i}",
        )
        for i, share in enumerate(shares)
    ]
    samples: list[tuple[float, int]] = []
    finished: dict[int, tuple[list[tuple[float, int, int]], float]] = {}
    reports: list[tuple[float, int, float]] = []
    try:
        launched = time.time()
        projector.start()
        for w in writers:
            w.start()
        deadline = time.time() + CATCH_UP_TIMEOUT_S
        while checkpoints.get(PROJECTION).position < head0:  # the projector has folded the preload
            if time.time() > deadline or not projector.is_alive():
                raise SystemExit(f"{backend}: the projector did not fold the preloaded events")
            time.sleep(0.05)
        ready.wait(timeout=CATCH_UP_TIMEOUT_S)  # every writer is connected and waiting
        start.value = time.time()
        go.set()
        print(f"  preload folded and writers ready {start.value - launched:.1f} s after launch", flush=True)

        sample_s = args.sample_ms / 1000
        last = -1
        final_head: int | None = None
        final_at = math.nan
        while True:
            began = time.time()
            position = checkpoints.get(PROJECTION).position
            seen = time.time()
            if position != last:
                samples.append((seen, position))
                last = position
            while True:
                try:
                    index, commits, elapsed = results.get_nowait()
                except queue.Empty:
                    break
                finished[index] = (commits, elapsed)
            if final_head is None:
                if len(finished) == len(writers):
                    final_head = store.head_position()
                    final_at = time.time()
                    deadline = time.time() + CATCH_UP_TIMEOUT_S
                elif any(not w.is_alive() and w.exitcode for w in writers):
                    raise SystemExit(f"{backend}: a writer failed")
                elif time.time() > start.value + args.seconds + CATCH_UP_TIMEOUT_S:
                    raise SystemExit(f"{backend}: the writers did not finish")
            elif last >= final_head or time.time() > deadline:
                print(
                    f"  writers done {final_at - start.value:.1f} s after the start; caught up {time.time() - final_at:.1f} s later",
                    flush=True,
                )
                break
            time.sleep(max(0.0, sample_s - (time.time() - began)))
        stop.set()
        reports = [r for r in stats.get(timeout=60) if r[0] >= start.value]  # not the preload's
    finally:
        stop.set()
        go.set()
        ready.abort()
        for process in [projector, *writers]:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
                process.join()
        store.close()

    commits = sorted(c for commits, _ in finished.values() for c in commits)
    times = [t for t, _ in samples]
    positions = [p for _, p in samples]
    delays, unseen = [], 0
    for committed, position, _ in commits:
        i = bisect_left(positions, position)  # the checkpoint only moves forward
        if i == len(positions):
            unseen += 1
            continue
        delays.append((times[i] - committed) * 1000)
    delays.sort()
    written = sum(n for _, _, n in commits)
    elapsed = max((e for _, e in finished.values()), default=math.nan)
    catch_ups = len(reports)
    target = TARGET_P95_MS.get(backend)
    p95 = percentile(delays, 95)
    return {
        "backend": backend,
        "events": written,
        "commits": len(commits),
        "events/s": written / elapsed if elapsed else math.nan,
        "p50 ms": percentile(delays, 50),
        "p95 ms": p95,
        "p99 ms": percentile(delays, 99),
        "max ms": delays[-1] if delays else math.nan,
        "min ms": delays[0] if delays else math.nan,
        "unseen": unseen,
        "catch-ups": catch_ups,
        "events/catch-up": sum(n for _, n, _ in reports) / catch_ups if catch_ups else math.nan,
        "ms/catch-up": 1000 * sum(s for _, _, s in reports) / catch_ups if catch_ups else math.nan,
        "target p95": f"< {target:g} ms" if target else "",
        "met": ("yes" if p95 < target else "no") if target and delays else None,
        "delays_ms": delays,
    }


def _interval(seconds: float | None) -> str:
    default = inspect.signature(plab.ProjectionManager.run_forever).parameters["snapshot_interval"].default
    return f"{default:g} s (the default)" if seconds is None else f"{seconds:g} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--rate", type=float, default=1_000.0, help="events/s appended, all writers together (default 1,000)"
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the writers append (default 60)")
    parser.add_argument("--writers", type=int, default=2, help="writer processes (default 2)")
    parser.add_argument(
        "--batch-ms", type=float, default=10.0, help="a writer commits the events due every this many ms (default 10)"
    )
    parser.add_argument(
        "--poll-interval", type=float, default=0.1, help="run_forever's poll_interval in seconds (default 0.1)"
    )
    parser.add_argument(
        "--snapshot-interval",
        type=float,
        default=None,
        help="run_forever's snapshot_interval in seconds (default: run_forever's own, 30)",
    )
    parser.add_argument(
        "--sample-ms", type=float, default=5.0, help="checkpoint poll period of the observer in ms (default 5)"
    )
    parser.add_argument(
        "--preload", type=int, default=10_000, help="events in the log before following starts (default 10,000)"
    )
    parser.add_argument("--seed", type=int, default=1, help="generator seed")
    add_backend_arguments(parser)
    args = parser.parse_args()
    if args.writers < 1 or args.rate <= 0 or args.seconds <= 0:
        raise SystemExit("--writers, --rate and --seconds must be positive")
    chosen = backends(args)

    describe_machine()
    live = int(args.rate * args.seconds * 1.5) + 100 * args.writers  # spare: streams split unevenly
    with timer() as t:
        events = generated_events(args.preload + live, seed=args.seed)
    print(f"generated {len(events):,} events in {t['seconds']:.1f} s")
    folder = Path(tempfile.mkdtemp(prefix="plab_follow_"))
    rows: list[dict[str, Any]] = []
    try:
        with postgres_server(args) as (admin_url, pg_note):
            for backend in chosen:
                with ExitStack() as stack:
                    if backend == "sqlite":
                        url = f"sqlite:///{folder / 'follow.db'}"
                    elif admin_url is not None:
                        url = stack.enter_context(fresh_database(admin_url, "follow"))
                    else:
                        continue
                    print(
                        f"{backend}: {args.writers} writers at {args.rate:,.0f} events/s for {args.seconds:g} s ...",
                        flush=True,
                    )
                    row = follow(backend, url, events, args)
                    rows.append(row)
                    print(
                        f"  p50 {row['p50 ms']:.0f} ms, p95 {row['p95 ms']:.0f} ms, max {row['max ms']:.0f} ms",
                        flush=True,
                    )
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    print_table(
        f"Commit -> visible in the read models ({args.writers} writers, a commit every {args.batch_ms:g} ms each; "
        f"poll_interval {args.poll_interval:g} s; snapshot_interval {_interval(args.snapshot_interval)}; "
        f"observer polls every {args.sample_ms:g} ms)",
        [{k: v for k, v in row.items() if k != "delays_ms"} for row in rows],
    )
    if "postgresql" in chosen:
        print(f"\nPostgreSQL: {pg_note}")
    save_results(
        "follow",
        {
            "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "pg_url"},
            "postgresql": pg_note,
            "rows": [{k: v for k, v in row.items() if k != "delays_ms"} for row in rows],
            "delays_ms": {row["backend"]: row["delays_ms"] for row in rows},
            "time": time.time(),
        },
        args.results_dir,
    )


if __name__ == "__main__":
    main()
