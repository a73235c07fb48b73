"""Read benchmark: the whole log as a DataFrame, progress_lab against the fastest raw paths.

Usage::

    python bench/read.py                            # 1,000,000 events, SQLite and PostgreSQL
    python bench/read.py --events 200000 --backends sqlite --repeat 3
    python bench/read.py --pg-url postgresql://user@host/postgres

A log of N generated events is written once per backend with ``store.append_records``
(untimed), then read whole, each way in turn, ``--repeat`` rounds (the best time counts):

* ``store.events_frame()``: every column of the typed frame (``FRAME_SCHEMA``);
* ``progress_lab.frames.read_fold_frame(store)``: the narrower frame a replay folds;
* ADBC ``SELECT * FROM event_store`` into polars (``pl.from_arrow``): every stored
  column, JSON text included, nothing decoded or checked;
* ADBC selecting just the columns ``events_frame`` reads, into polars: its raw floor;
* connectorx ``SELECT *`` into polars (skipped with a message when not installed:
  ``pip install connectorx``);
* a DB-API cursor to a list of tuples (``sqlite3`` / ``psycopg``), ``SELECT *``.

Every raw query orders by ``global_position``, as ``events_frame`` does. Connections
are opened before the timed region, the store's too (an untimed ``events_frame`` of the
first 20,000 positions: on SQLite it starts the store's reader process). The ratio column is events_frame's rate over the
row's rate. PostgreSQL is a throwaway server unless ``--pg-url`` names one.
Results go to ``bench/results/read.json``.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
from _common import describe_machine, peak_rss_mb, print_table, timer
from _harness import (
    add_backend_arguments,
    backends,
    fresh_database,
    generated_events,
    libpq_url,
    postgres_server,
    save_results,
)

import progress_lab as plab
from progress_lab.events import EventMetadata
from progress_lab.frames import _PROCESS_READ_MIN, read_fold_frame
from progress_lab.store import NewRecord

SELECT_ALL = "SELECT * FROM event_store ORDER BY global_position"
# What events_frame reads (no JSON text: rows progress_lab wrote carry typed columns).
SELECT_TYPED = (
    "SELECT global_position, event_type, typed, occurred_at_us, metadata_user_id, user_id, session_id, item_id, "
    "item_count, duration_seconds, quality, new_interval, easiness_factor, correlation_id, causation_id, "
    "event_id, stream_id, stream_version, created_at FROM event_store ORDER BY global_position"
)


def load(store: plab.EventStore, events: list[dict[str, Any]]) -> float:
    records = (
        NewRecord(
            e["stream_id"],
            e["event_type"],
            e["event_data"],
            EventMetadata.model_validate(e["metadata"]),
            e["event_id"],
            datetime.fromisoformat(e["created_at"]),
        )
        for e in events
    )
    with timer() as t:
        store.append_records(records)
    return t["seconds"]


def readers(
    backend: str, store: plab.EventStore, stack: ExitStack, sqlite_path: Path | None, pg_url: str | None
) -> list[tuple[str, Callable[[], int]]]:
    """(method, read the whole log and return its row count) for one backend."""

    def adbc(query: str) -> Callable[[], int]:
        def read() -> int:
            with conn.cursor() as cursor:
                cursor.execute(query)
                frame = pl.from_arrow(cursor.fetch_arrow_table())
            return len(frame)

        return read

    if backend == "sqlite":
        # ADBC and connectorx bring their own copies of SQLite into this process, which
        # progress_lab avoids (frames._SqliteReader): harmless here, as nothing writes now.
        import adbc_driver_sqlite.dbapi as adbc_sqlite

        assert sqlite_path is not None
        conn = stack.enter_context(adbc_sqlite.connect(str(sqlite_path), autocommit=True))
        cx_url = f"sqlite://{sqlite_path}"
        dbapi: Any = stack.enter_context(sqlite3.connect(sqlite_path))
        dbapi_name = "sqlite3 cursor -> tuples"
    else:
        import adbc_driver_postgresql.dbapi as adbc_pg
        import psycopg

        assert pg_url is not None
        conn = stack.enter_context(adbc_pg.connect(libpq_url(pg_url), autocommit=True))
        cx_url = libpq_url(pg_url)
        dbapi = stack.enter_context(psycopg.connect(libpq_url(pg_url)))
        dbapi_name = "psycopg cursor -> tuples"

    def fetchall() -> int:
        cursor = dbapi.cursor()
        cursor.execute(SELECT_ALL)
        rows = cursor.fetchall()
        cursor.close()
        return len(rows)

    methods: list[tuple[str, Callable[[], int]]] = [
        ("progress_lab events_frame", lambda: store.events_frame().height),
        ("progress_lab read_fold_frame", lambda: read_fold_frame(store).height),
        ("ADBC SELECT * -> polars", adbc(SELECT_ALL)),
        ("ADBC typed columns -> polars", adbc(SELECT_TYPED)),
    ]
    try:
        import connectorx as cx

        def connectorx() -> int:
            frame = pl.from_arrow(cx.read_sql(cx_url, SELECT_ALL, return_type="arrow"))
            return len(frame)

        methods.append(("connectorx SELECT * -> polars", connectorx))
    except ImportError:
        pass
    methods.append((dbapi_name, fetchall))
    return methods


def measure(
    backend: str, methods: list[tuple[str, Callable[[], int]]], events: int, repeat: int
) -> list[dict[str, Any]]:
    times: dict[str, list[tuple[float, float]]] = {method: [] for method, _ in methods}
    for _ in range(repeat):  # round robin, so a busy spell hits every method alike
        for method, read in methods:
            cpu = time.process_time()
            with timer() as t:
                count = read()
            cpu = time.process_time() - cpu
            if count != events:
                raise SystemExit(f"{method} on {backend}: read {count} rows, expected {events}")
            times[method].append((t["seconds"], cpu))
            print(f"  {backend:10s} {method:32s} {events / t['seconds']:>12,.0f} events/s", flush=True)
    rows: list[dict[str, Any]] = []
    for method, measured in times.items():
        best, cpu = min(measured)
        rows.append(
            {
                "backend": backend,
                "method": method,
                "events": events,
                "seconds": best,
                "events/s": events / best,
                "cpu s": cpu,
            }
        )
    frame_rate = rows[0]["events/s"]
    for row in rows:
        row["events_frame x"] = frame_rate / row["events/s"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the log (default 1,000,000)")
    parser.add_argument("--repeat", type=int, default=2, help="reads per method; the best counts (default 2)")
    parser.add_argument("--seed", type=int, default=1, help="generator seed")
    add_backend_arguments(parser)
    args = parser.parse_args()
    chosen = backends(args)

    describe_machine()
    try:
        import connectorx  # noqa: F401
    except ImportError:
        print("connectorx is not installed: its rows are skipped (pip install connectorx)")
    with timer() as t:
        events = generated_events(args.events, seed=args.seed)
    print(f"generated {len(events):,} events in {t['seconds']:.1f} s")
    folder = Path(tempfile.mkdtemp(prefix="plab_read_"))
    rows: list[dict[str, Any]] = []
    loads: dict[str, float] = {}
    opened: dict[str, float] = {}
    try:
        with postgres_server(args) as (admin_url, pg_note):
            plans: list[tuple[str, Callable[[ExitStack], tuple[plab.EventStore, Path | None, str | None]]]] = []
            if "sqlite" in chosen:

                def sqlite_store(stack: ExitStack) -> tuple[plab.EventStore, Path | None, str | None]:
                    path = folder / "log.db"
                    return stack.enter_context(plab.connect(f"sqlite:///{path}")), path, None

                plans.append(("sqlite", sqlite_store))
            if admin_url is not None:

                def pg_store(stack: ExitStack) -> tuple[plab.EventStore, Path | None, str | None]:
                    url = stack.enter_context(fresh_database(admin_url, "read"))
                    return stack.enter_context(plab.connect(url)), None, url

                plans.append(("postgresql", pg_store))
            for backend, open_store in plans:
                with ExitStack() as stack:
                    store, path, url = open_store(stack)
                    loads[backend] = load(store, events)
                    print(
                        f"{backend}: wrote the log in {loads[backend]:.1f} s (append_records, untimed below)",
                        flush=True,
                    )
                    with timer() as first:  # opens the store's Arrow reader (a reader process for SQLite)
                        store.events_frame(1, _PROCESS_READ_MIN)  # large enough to use the reader process
                    opened[backend] = first["seconds"]
                    print(
                        f"{backend}: first events_frame call {opened[backend]:.2f} s (opens the store's reader; untimed below)"
                    )
                    rows += measure(backend, readers(backend, store, stack, path, url), len(events), args.repeat)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    print_table(f"The whole log ({len(events):,} events) into memory, best of {args.repeat}", rows)
    print(
        "\ncpu s: CPU time of this process, all its threads (not the PostgreSQL server's, nor that of the reader\n"
        "process through which progress_lab reads SQLite files)"
    )
    print("events_frame x: events_frame's rate over the row's rate (above 1: events_frame is faster)")
    if "postgresql" in chosen:
        print(f"\nPostgreSQL: {pg_note}")
    save_results(
        "read",
        {
            "events": len(events),
            "repeat": args.repeat,
            "postgresql": pg_note,
            "load_seconds": loads,
            "first_call_seconds": opened,
            "rows": rows,
            "peak_rss_mb": peak_rss_mb(),
            "time": time.time(),
        },
        args.results_dir,
    )


if __name__ == "__main__":
    main()
