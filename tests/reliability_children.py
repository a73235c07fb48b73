"""Child processes for test_reliability.py: writers and projectors that the tests run, race and kill.

Run as ``python tests/reliability_children.py MODE URL [options]``. Each mode touches
``--ready`` when it is about to start work, waits for ``--go`` if given (so several
children start together), and writes what it did as JSON to ``--out``.

- ``write``: append batches of domain events to the writer's own stream (expected version
  tracked locally, now and then deliberately stale) and to shared streams (expected version
  read just before, so writers race); every ConcurrencyError is recorded.
- ``follow``: fold the log until ``--stop`` exists and the checkpoint is at the head, either
  with ``run_once`` in a loop (``--style loop``, reloading after a CheckpointError) or with
  ``run_forever`` (``--style forever``).
- ``project``: one ``run_once`` catch-up (the test SIGKILLs it at a random moment).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import progress_lab as plab

T0 = datetime(2026, 2, 2, 7, 0, tzinfo=UTC)


def _wait_for(path: str | None) -> None:
    if path:
        deadline = time.monotonic() + 300
        while not Path(path).exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"gave up waiting for {path}")
            time.sleep(0.005)


def _touch(path: str | None) -> None:
    if path:
        Path(path).write_text("ready")


def batch_events(rng: random.Random, writer: int, batch: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """A small batch of domain events: a whole session, or some reviews, or a foreign event."""
    user = f"w{writer}-u{rng.randrange(3)}"
    at = T0 + timedelta(hours=batch, minutes=writer * 7)

    def meta(user_id: str | None, seconds: int) -> dict[str, Any]:
        return {"user_id": user_id, "timestamp": (at + timedelta(seconds=seconds)).isoformat()}

    kind = rng.random()
    if kind < 0.55:
        session = f"w{writer}-s{batch}"
        items = [f"i{rng.randrange(12)}" for _ in range(rng.randint(0, 3))]
        events = [({"type": "SessionStarted", "session_id": session, "user_id": user, "item_count": 3}, meta(user, 0))]
        events += [
            ({"type": "CorrectAnswerGiven", "session_id": session, "item_id": item}, meta(None, 10 + n))
            for n, item in enumerate(items)
        ]
        events.append(({"type": "SessionCompleted", "session_id": session, "duration_seconds": rng.randint(30, 900)}, meta(None, 60)))
        return events
    if kind < 0.95:
        return [
            (
                {
                    "type": "ReviewProcessed",
                    "user_id": user,
                    "item_id": f"i{rng.randrange(12)}",
                    "quality": rng.randint(0, 5),
                    "new_interval": float(rng.choice([0, 1, 3, 8, 21, 40])),
                    "easiness_factor": 2.5,
                },
                meta(user, n),
            )
            for n in range(rng.randint(1, 3))
        ]
    return [({"type": "ForeignThing", "writer": writer, "batch": batch}, meta(None, 0))]


def write(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed * 1000 + args.writer)
    own, version = f"writer-{args.writer}", 0
    acked: list[str] = []
    conflicts: list[dict[str, Any]] = []
    errors: list[str] = []
    deliberate = 0
    with plab.connect(args.url) as store:
        _touch(args.ready)
        _wait_for(args.go)
        for batch in range(args.batches):
            events = batch_events(rng, args.writer, batch)
            choice = rng.random()
            try:
                if choice < 0.1 and version > 0:
                    deliberate += 1  # a stale expected version: must be refused
                    try:
                        store.append_events(own, events, expected_version=version - 1)
                        errors.append(f"stale append to {own} at {version - 1} was accepted")
                    except plab.ConcurrencyError as exc:
                        conflicts.append(
                            {"stream": own, "expected": exc.expected_version, "actual": exc.actual_version, "deliberate": True}
                        )
                elif choice < 0.45:
                    written = store.append_events(own, events, expected_version=version)
                    version += len(written)
                    acked += [e.event_id for e in written]
                else:
                    stream = f"shared-{rng.randrange(3)}"
                    for _attempt in range(20):
                        expected = store.stream_version(stream)
                        try:
                            written = store.append_events(stream, events, expected_version=expected)
                        except plab.ConcurrencyError as exc:
                            conflicts.append(
                                {"stream": stream, "expected": exc.expected_version, "actual": exc.actual_version, "deliberate": False}
                            )
                            continue
                        acked += [e.event_id for e in written]
                        break
                    else:
                        errors.append(f"gave up on {stream} after 20 conflicts")
            except Exception as exc:  # anything but a ConcurrencyError is a failure of the test
                errors.append(f"{type(exc).__name__}: {exc}")
            time.sleep(rng.uniform(0, 0.004))
    return {"acked": acked, "conflicts": conflicts, "errors": errors, "deliberate": deliberate}


class _Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def follow(args: argparse.Namespace) -> dict[str, Any]:
    store = plab.connect(args.url)
    manager = plab.ProjectionManager(
        store,
        batch_size=args.batch_size,
        snapshot_policy=plab.SnapshotPolicy(every=args.snapshot_every, keep=2),
        progress=False,
    )
    stop = Path(args.stop)

    def done() -> bool:
        return stop.exists() and manager.checkpoints.get(manager.name).position >= store.head_position()

    _touch(args.ready)
    _wait_for(args.go)
    conflicts = runs = folded = 0
    counter = _Counter()
    if args.style == "loop":
        while True:
            try:
                report = manager.run_once()
            except plab.CheckpointError:
                conflicts += 1  # the other projector moved the checkpoint: resync and go on
                manager.reload()
                continue
            runs += 1
            folded += report.events_folded
            if done():
                break
            time.sleep(args.poll)
    else:
        logging.getLogger("progress_lab").addHandler(counter)

        def watch() -> None:
            while not done():
                time.sleep(0.05)
            manager.stop()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        manager.run_forever(poll_interval=args.poll, max_backoff=0.2)
        watcher.join()
        conflicts = sum("another projector" in m for m in counter.messages)
    store.close()
    return {"conflicts": conflicts, "runs": runs, "folded": folded, "warnings": counter.messages[:20]}


def project(args: argparse.Namespace) -> dict[str, Any]:
    store = plab.connect(args.url)
    manager = plab.ProjectionManager(
        store,
        batch_size=args.batch_size,
        snapshot_policy=plab.SnapshotPolicy(every=args.snapshot_every, keep=2),
        progress=False,
    )
    _touch(args.ready)
    report = manager.run_once()
    return {"to_position": report.to_position, "events_folded": report.events_folded}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["write", "follow", "project"])
    parser.add_argument("url")
    parser.add_argument("--out")
    parser.add_argument("--ready")
    parser.add_argument("--go")
    parser.add_argument("--stop")
    parser.add_argument("--writer", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--snapshot-every", type=int, default=500)
    parser.add_argument("--style", choices=["loop", "forever"], default="loop")
    parser.add_argument("--poll", type=float, default=0.02)
    args = parser.parse_args(argv)
    result = {"write": write, "follow": follow, "project": project}[args.mode](args)
    if args.out:
        Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
