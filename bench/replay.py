"""Replay benchmark: full replay into persisted read models, and vectorized vs reference fold.

Usage::

    python bench/replay.py                      # 1,000,000 events, reference fold on all of them
    python bench/replay.py --events 200000 --reference-events 50000
    python bench/replay.py --scaling 1000000,5000000,10000000

It prints a table and writes ``bench/results/replay.json``. Every figure of a run is
measured in that run, on this machine; ratios compare figures of the same run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, describe_machine, peak_rss_mb, print_table, timer, write_results

import progress_lab as plab
from progress_lab.frames import _query, decode_frame, read_raw_event
from progress_lab.generator import estimate_events, generate_events

CACHE = ROOT / "bench" / "cache"
DAYS = 60


def build_log(path: Path, events: int, seed: int = 1) -> dict[str, float]:
    """A generated log of at least ``events`` events in a fresh SQLite file (cached)."""
    if path.exists():
        store = plab.connect(f"sqlite:///{path}")
        if store.head_position() >= events:
            store.close()
            return {"events": store.head_position(), "load_seconds": float("nan")}
        store.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    users = max(1, -(-events // max(1, estimate_events(1, DAYS))))
    store = plab.connect(f"sqlite:///{path}")
    records = (plab.record_from_dict(e) for e in generate_events(users=users, days=DAYS, seed=seed))
    with timer() as t:
        count = store.append_records(records)
    store.close()
    return {"events": count, "load_seconds": t["seconds"]}


_ID_SQL = "CASE WHEN json_extract({x}, '$.{f}') IS NULL THEN {x} ELSE json_set({x}, '$.{f}', json_extract({x}, '$.{f}') || :sfx) END"


def replicate_log(base: Path, target: Path, copies: int) -> int:
    """``copies`` copies of the base log with disjoint learners and sessions, one after another."""
    import shutil

    import sqlalchemy as sa

    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.copy(base, target)
    store = plab.connect(f"sqlite:///{target}")
    size = store.head_position()
    data = _ID_SQL.format(x=_ID_SQL.format(x="event_data", f="user_id"), f="session_id")
    meta = _ID_SQL.format(x="metadata", f="user_id")
    columns = (
        "global_position, event_id, stream_id, stream_version, event_type, event_data, metadata, created_at, typed, "
        "occurred_at_us, metadata_user_id, correlation_id, causation_id, user_id, session_id, item_id, item_count, "
        "duration_seconds, quality, new_interval, easiness_factor"
    )
    select = (
        f"SELECT global_position + :shift, event_id || :sfx, stream_id || :sfx, stream_version, event_type, {data}, "
        f"{meta}, created_at, typed, occurred_at_us, metadata_user_id || :sfx, correlation_id, causation_id, "
        "user_id || :sfx, session_id || :sfx, item_id, item_count, duration_seconds, quality, new_interval, "
        "easiness_factor FROM event_store WHERE global_position <= :size"
    )
    for copy in range(1, copies):
        with store.transaction() as conn:
            conn.execute(sa.text(f"INSERT INTO event_store ({columns}) {select}"), {"shift": copy * size, "sfx": f"-r{copy}", "size": size})
    head = store.head_position()
    store.close()
    return head


def scaled_log(base: Path, base_events: int, size: int, cache: Path) -> tuple[Path, str]:
    """The log of at least ``size`` events made of copies of the base log (cached: about 0.95 GB per million)."""
    copies = -(-size // base_events)
    if copies <= 1:
        return base, "the base log"
    target = cache / f"scaled_{size}.db"
    if target.exists():
        store = plab.connect(f"sqlite:///{target}")
        head = store.head_position()
        store.close()
        if head == copies * base_events:
            return target, "cached"
    with timer() as t:
        replicate_log(base, target, copies)
    return target, f"built in {t['seconds']:.0f} s"


def warm_page_cache(path: Path) -> dict[str, float]:
    """Read the SQLite file once, so that every replay starts with it in the page cache.

    A replay of a log read from disk measures the disk, and which logs the page cache
    holds depends on what ran before (the 1M log is read by every run; the 10M log,
    9.4 GB, by one replay). So each replay of the series starts warm, and the time to
    read the file is reported next to it.
    """
    size = 0
    with timer() as t:
        for name in (path, Path(f"{path}-wal")):
            if name.exists():
                with open(name, "rb", buffering=0) as file:
                    while chunk := file.read(16 << 20):
                        size += len(chunk)
    return {"gigabytes": size / 1e9, "seconds": t["seconds"], "mb_per_s": size / 1e6 / max(t["seconds"], 1e-9)}


def replay_in_child(path: Path, batch_size: int) -> dict[str, float]:
    """Rebuild the read models of the log at ``path`` in a fresh process; its time and peak RSS."""
    output = subprocess.run(
        [sys.executable, __file__, "--child-replay", str(path), "--batch-size", str(batch_size)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def _child_replay(path: Path, batch_size: int) -> None:
    store = plab.connect(f"sqlite:///{path}")
    manager = plab.ProjectionManager(store, batch_size=batch_size, progress=False)
    with timer() as t:
        report = manager.rebuild()
    print(json.dumps({"events": report.events_folded, "seconds": t["seconds"], "peak_rss_mb": peak_rss_mb()}))


def compare_folds(path: Path, events: int) -> dict[str, float]:
    """Vectorized (decode_frame + fold) and reference fold on the same raw JSON rows."""
    store = plab.connect(f"sqlite:///{path}")
    # Read through the store's Arrow reader (a child process for SQLite files).
    table = _query(
        store,
        "SELECT global_position, event_id, stream_id, stream_version, event_type, created_at, event_data, metadata "
        "FROM event_store WHERE global_position >= {p1} AND global_position <= {p2} ORDER BY global_position",
        1,
        events,
    )
    chunk = 250_000
    decoding = 0.0
    with timer() as vectorized:
        state = None
        for start in range(0, table.num_rows, chunk):
            started = time.perf_counter()
            frame = decode_frame(table.slice(start, chunk), columns="fold")
            decoding += time.perf_counter() - started
            state = plab.fold(frame, state)
    rows = list(
        zip(
            table.column("global_position").to_pylist(),
            table.column("event_type").to_pylist(),
            table.column("event_data").to_pylist(),
            table.column("metadata").to_pylist(),
        )
    )
    with timer() as reference:
        expected = plab.ReferenceFold().fold(rows)
    # The reference's own decoding, timed apart: the same read_raw_event call per known event.
    known = plab.KNOWN_EVENT_TYPES
    with timer() as reference_decoding:
        for _, event_type, event_data, metadata in rows:
            if event_type in known:
                read_raw_event(event_type, event_data, metadata)
    assert state is not None
    identical = (
        state.user_progress().equals(expected.user_progress())
        and state.daily_stats().equals(expected.daily_stats())
        and state.rejections().equals(expected.rejections())
    )
    store.close()
    n = table.num_rows
    return {
        "events": n,
        "vectorized_seconds": vectorized["seconds"],
        "vectorized_events_per_s": n / vectorized["seconds"],
        "vectorized_decode_seconds": decoding,
        "reference_seconds": reference["seconds"],
        "reference_decode_seconds": reference_decoding["seconds"],
        "reference_events_per_s": n / reference["seconds"],
        "ratio": reference["seconds"] / vectorized["seconds"],
        "identical": identical,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="size of the generated log")
    parser.add_argument("--reference-events", type=int, default=None, help="events for the fold comparison (default: all)")
    parser.add_argument("--batch-size", type=int, default=250_000, help="projector batch size")
    parser.add_argument("--scaling", default="", help="comma-separated log sizes for a scaling series, e.g. 1000000,5000000,10000000")
    parser.add_argument("--cache", type=Path, default=CACHE, help="folder for the generated SQLite files")
    parser.add_argument("--build-only", action="store_true", help="only build (and cache) the logs, measure nothing")
    parser.add_argument("--child-replay", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_replay:
        _child_replay(args.child_replay, args.batch_size)
        return

    describe_machine()
    args.cache.mkdir(parents=True, exist_ok=True)
    base = args.cache / f"log_{args.events}.db"
    loaded = build_log(base, args.events)
    print(f"log: {loaded['events']:,} events in {base.relative_to(ROOT) if base.is_relative_to(ROOT) else base}")

    sizes = [int(s) for s in args.scaling.split(",") if s.strip()]
    if args.build_only:
        for size in sizes:
            path, built = scaled_log(base, loaded["events"], size, args.cache)
            print(f"  {path.name}: {built}", flush=True)
        return

    warm_page_cache(base)
    replay = replay_in_child(base, args.batch_size)
    replay_row = {
        "what": "full replay, SQLite file -> persisted read models",
        "events": int(replay["events"]),
        "seconds": replay["seconds"],
        "events/s": replay["events"] / replay["seconds"],
        "peak RSS MB": replay["peak_rss_mb"],
    }
    print_table("Replay (ProjectionManager.rebuild, fresh process)", [replay_row])

    folds = compare_folds(base, args.reference_events or args.events)
    print_table(
        "Fold on the same raw events, JSON decoding included on both sides",
        [
            {"fold": "vectorized (polars)", "events": folds["events"], "seconds": folds["vectorized_seconds"], "events/s": folds["vectorized_events_per_s"]},
            {"fold": "reference (per event)", "events": folds["events"], "seconds": folds["reference_seconds"], "events/s": folds["reference_events_per_s"]},
        ],
    )
    print(
        f"\nvectorized / reference: {folds['ratio']:.1f}x faster; results identical: {folds['identical']}\n"
        f"JSON decoding and validation alone: vectorized (decode_frame) {folds['vectorized_decode_seconds']:.2f} s, "
        f"reference (read_raw_event, timed in a separate pass) {folds['reference_decode_seconds']:.2f} s"
    )

    scaling = []
    for size in sizes:
        path, built = scaled_log(base, loaded["events"], size, args.cache)
        warm = warm_page_cache(path)
        result = replay_in_child(path, args.batch_size)
        scaling.append(
            {
                "events": int(result["events"]),
                "seconds": result["seconds"],
                "events/s": result["events"] / result["seconds"],
                "seconds per 1M": result["seconds"] / (result["events"] / 1e6),
                "peak RSS MB": result["peak_rss_mb"],
                "file GB": warm["gigabytes"],
                "file read s": warm["seconds"],
            }
        )
        print(f"  {path.name} ({built}): read into the page cache in {warm['seconds']:.1f} s, replayed in {result['seconds']:.1f} s", flush=True)
    if scaling:
        print_table("Scaling (copies of the base log with disjoint learners; each file read into the page cache first)", scaling)

    write_results("replay", {"replay": replay_row, "folds": folds, "scaling": scaling, "load": loaded, "time": time.time()})


if __name__ == "__main__":
    main()
