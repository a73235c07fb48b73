"""Ingest benchmark: N generated events into SQLite and PostgreSQL, progress_lab against raw and eventsourcing.

Usage::

    python bench/ingest.py                          # 1,000,000 events, SQLite and PostgreSQL
    python bench/ingest.py --events 100000 --backends sqlite
    python bench/ingest.py --random-ids           # UUIDv4 event ids, as another tool may export
    python bench/ingest.py --repeat 3             # each method 3 times, the order rotated; the fastest counts
    python bench/ingest.py --pg-url postgresql://user@host/postgres   # a server of your own

Methods, each into a fresh database (a new SQLite file, a new PostgreSQL database):

* ``progress_lab import_jsonl``: ``import_jsonl(store, file)``, the user-facing path;
* ``progress_lab append_records``: ``store.append_records`` with all events in one call;
  again with each of the bulk load's other ways with the indexes (built at the end, or
  kept up to date, where the default is another: ``progress_lab.store.BULK_INDEXES``);
  and with one call per ``--batch-size`` events;
* raw: ``sqlite3.executemany`` / psycopg ``COPY`` of the very rows progress_lab writes
  (same columns, including the typed fold columns) into the same schema with the same
  indexes (``progress_lab._schema.metadata.create_all``; on SQLite, the same page size),
  in one transaction;
* eventsourcing: the ``eventsourcing`` library's ``SQLiteApplicationRecorder`` and
  ``PostgresApplicationRecorder``, ``insert_events`` with ``--batch-size`` events per
  call, into the library's own schema. Needs ``pip install eventsourcing[postgres]``;
  skipped with a message when it is not installed.

The events are generated once, before any timing, and held in memory as JSON-ready
dicts (and written once as a JSON Lines file for ``import_jsonl``). The table says
what each timed region includes. PostgreSQL is a throwaway server started for the
run (fsync and synchronous_commit off) unless ``--pg-url`` names one; without
PostgreSQL binaries that half is skipped. Results go to ``bench/results/ingest.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson
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
from progress_lab import _schema
from progress_lab.events import FIELDS_BY_TYPE, FOLD_FIELDS, EventMetadata
from progress_lab.jsonl import import_jsonl
from progress_lab.store import BULK_INDEXES, SQLITE_PAGE_SIZE, NewRecord

Event = dict[str, Any]
COLUMNS = [column.name for column in _schema.event_store.columns]  # the columns progress_lab writes
TARGETS = {"sqlite": 1.5, "postgresql": 3.0}  # progress_lab vs eventsourcing, from issue 5

TIMED = {
    "progress_lab import_jsonl": "JSONL file -> parse + validate every event -> one transaction",
    "progress_lab append_records": "dicts -> NewRecord (metadata validated) -> one append_records call "
    "(a bulk load: the indexes as BULK_INDEXES says)",
    "progress_lab append_records, indexes deferred": "as append_records, the secondary indexes built at the end",
    "progress_lab append_records, indexes kept": "as append_records, the secondary indexes kept up to date",
    "progress_lab append_records/batch": "dicts -> NewRecord -> one append_records call (transaction) per batch",
    "raw sqlite3.executemany": "dicts -> row tuples (JSON text, versions, typed columns) -> executemany, one transaction",
    "raw psycopg COPY": "dicts -> row tuples (JSON text, versions, typed columns) -> COPY, one transaction",
    "eventsourcing SQLite": "dicts -> StoredEvent (JSON state) -> insert_events per batch (library defaults)",
    "eventsourcing PostgreSQL": "dicts -> StoredEvent (JSON state) -> insert_events per batch (library defaults)",
}

# The text progress_lab.events.dumps writes, from one encoder made once (json.dumps with
# non-default arguments builds a new encoder per call).
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# -- what each method does with the same in-memory events ------------------------------------


def new_records(events: list[Event]) -> Iterator[NewRecord]:
    """The events as progress_lab records: metadata validated, payloads as they are."""
    for e in events:
        yield NewRecord(
            e["stream_id"],
            e["event_type"],
            e["event_data"],
            EventMetadata.model_validate(e["metadata"]),
            e["event_id"],
            datetime.fromisoformat(e["created_at"]),
        )


def raw_rows(events: list[Event], *, sqlite: bool) -> Iterator[tuple[Any, ...]]:
    """The rows progress_lab would write for these events, built by hand."""
    versions: dict[str, int] = {}
    fields = FOLD_FIELDS
    by_type = FIELDS_BY_TYPE
    position = 0
    for e in events:
        position += 1
        stream = e["stream_id"]
        version = versions.get(stream, 0) + 1
        versions[stream] = version
        kind = e["event_type"]
        data = e["event_data"]
        meta = e["metadata"]
        created = e["created_at"]  # 2026-01-05T08:00:00.123456Z
        own = by_type.get(kind, ())
        delta = datetime.fromisoformat(meta["timestamp"]) - _EPOCH
        yield (
            position,
            e["event_id"],
            stream,
            version,
            kind,
            _dumps(data),
            _dumps(meta),
            f"{created[:10]} {created[11:26]}" if sqlite else created,
            1,
            (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds,
            meta["user_id"],
            meta["correlation_id"],
            meta["causation_id"],
            *[data[name] if name in own else None for name in fields],
        )


def stored_events(events: list[Event]) -> Iterator[Any]:
    """The events as eventsourcing ``StoredEvent``s: stream, version, type, JSON state."""
    from eventsourcing.persistence import StoredEvent

    versions: dict[str, int] = {}
    for e in events:
        stream = e["stream_id"]
        version = versions.get(stream, 0) + 1
        versions[stream] = version
        state = {
            "event_id": e["event_id"],
            "event_data": e["event_data"],
            "metadata": e["metadata"],
            "created_at": e["created_at"],
        }
        yield StoredEvent(
            originator_id=stream, originator_version=version, topic=e["event_type"], state=_dumps(state).encode()
        )


def batches(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def chunks(events: list[Event], size: int) -> Iterator[list[Event]]:
    for start in range(0, len(events), size):
        yield events[start : start + size]


def index_modes(dialect: str, events: list[Event]) -> list[tuple[str, Callable[[plab.EventStore], None]]]:
    """Method names and bodies of append_records with each way with the indexes that is not
    the dialect's default (``progress_lab.store.BULK_INDEXES``), to measure it against."""
    default = BULK_INDEXES[dialect]

    def forced(mode: Literal["keep", "defer"]) -> Callable[[plab.EventStore], None]:
        def body(store: plab.EventStore) -> None:
            BULK_INDEXES[dialect] = mode
            try:
                store.append_records(new_records(events))
            finally:
                BULK_INDEXES[dialect] = default

        return body

    names = {"defer": "deferred", "keep": "kept"}
    return [(f"progress_lab append_records, indexes {names[mode]}", forced(mode)) for mode in ("defer", "keep") if mode != default]


# -- one measured run per method and backend ---------------------------------------------------


class Run:
    """Set-up (untimed), the timed body, and a row count (untimed) for one method on one database."""

    def __init__(
        self,
        method: str,
        setup: Callable[[], Any],
        body: Callable[[Any], object],
        count: Callable[[Any], int],
        teardown: Callable[[Any], None],
    ):
        self.method, self.setup, self.body, self.count, self.teardown = method, setup, body, count, teardown

    def measure(self, backend: str, events: int) -> tuple[float, float]:
        """Wall-clock and CPU seconds (of this process: the client, and SQLite itself) of the timed body."""
        handle = self.setup()
        try:
            cpu = time.process_time()
            with timer() as t:
                self.body(handle)
            cpu = time.process_time() - cpu
            rows = self.count(handle)
        finally:
            self.teardown(handle)
        if rows != events:
            raise SystemExit(f"{self.method} on {backend}: {rows} rows in the table, expected {events}")
        return t["seconds"], cpu


def sqlite_runs(folder: Path, events: list[Event], jsonl: Path, batch_size: int, es: bool) -> list[Run]:
    counter = iter(range(1_000_000))

    def new_file() -> Path:
        return folder / f"ingest_{next(counter)}.db"

    def count(path: Path, table: str = "event_store") -> int:
        with sqlite3.connect(path) as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    def remove(path: Path) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)

    def store_setup() -> tuple[plab.EventStore, Path]:
        path = new_file()
        return plab.connect(f"sqlite:///{path}"), path

    def store_count(handle: tuple[plab.EventStore, Path]) -> int:
        return count(handle[1])

    def store_teardown(handle: tuple[plab.EventStore, Path]) -> None:
        handle[0].close()
        remove(handle[1])

    def raw_setup() -> Path:
        import sqlalchemy as sa

        path = new_file()
        with sqlite3.connect(path) as conn:  # the page size progress_lab gives its files
            conn.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")
            conn.execute("PRAGMA journal_mode=WAL")  # writes the header: the page size stays
        engine = sa.create_engine(f"sqlite:///{path}")
        _schema.metadata.create_all(engine)
        engine.dispose()
        return path

    def raw_body(path: Path) -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")  # as progress_lab opens its files
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            f"INSERT INTO event_store ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
            raw_rows(events, sqlite=True),
        )
        conn.execute("COMMIT")
        conn.close()

    runs = [
        Run("raw sqlite3.executemany", raw_setup, raw_body, count, remove),
        Run(
            "progress_lab append_records",
            store_setup,
            lambda h: h[0].append_records(new_records(events)),
            store_count,
            store_teardown,
        ),
        *(Run(name, store_setup, lambda h, body=body: body(h[0]), store_count, store_teardown)
          for name, body in index_modes("sqlite", events)),
        Run(
            "progress_lab append_records/batch",
            store_setup,
            lambda h: [h[0].append_records(new_records(chunk)) for chunk in chunks(events, batch_size)],
            store_count,
            store_teardown,
        ),
        Run(
            "progress_lab import_jsonl",
            store_setup,
            lambda h: import_jsonl(h[0], jsonl, progress=False),
            store_count,
            store_teardown,
        ),
    ]
    if es:
        from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore

        def es_setup() -> tuple[Any, Path]:
            path = new_file()
            datastore = SQLiteDatastore(db_name=str(path), originator_id_type="text")
            recorder = SQLiteApplicationRecorder(datastore)
            recorder.create_table()
            return recorder, path

        def es_body(handle: tuple[Any, Path]) -> None:
            for batch in batches(stored_events(events), batch_size):
                handle[0].insert_events(batch)

        def es_teardown(handle: tuple[Any, Path]) -> None:
            handle[0].datastore.close()
            remove(handle[1])

        runs.insert(
            1, Run("eventsourcing SQLite", es_setup, es_body, lambda h: count(h[1], "stored_events"), es_teardown)
        )
    return runs


def postgres_runs(admin_url: str, events: list[Event], jsonl: Path, batch_size: int, es: bool) -> list[Run]:
    import psycopg
    import sqlalchemy as sa

    def count(url: str, table: str = "event_store") -> int:
        with psycopg.connect(libpq_url(url)) as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]

    def database(hint: str) -> tuple[Any, str]:
        context = fresh_database(admin_url, hint)
        return context, context.__enter__()

    def drop(context: Any) -> None:
        context.__exit__(None, None, None)

    def store_setup() -> tuple[Any, str, plab.EventStore]:
        context, url = database("plab")
        return context, url, plab.connect(url)

    def store_teardown(handle: tuple[Any, str, plab.EventStore]) -> None:
        handle[2].close()
        drop(handle[0])

    def raw_setup() -> tuple[Any, str]:
        context, url = database("raw")
        engine = sa.create_engine(url)
        _schema.metadata.create_all(engine)
        engine.dispose()
        return context, url

    def raw_body(handle: tuple[Any, str]) -> None:
        with psycopg.connect(libpq_url(handle[1])) as conn:  # commits on exit
            with conn.cursor() as cursor, cursor.copy(f"COPY event_store ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                for row in raw_rows(events, sqlite=False):
                    copy.write_row(row)

    runs = [
        Run("raw psycopg COPY", raw_setup, raw_body, lambda h: count(h[1]), lambda h: drop(h[0])),
        Run(
            "progress_lab append_records",
            store_setup,
            lambda h: h[2].append_records(new_records(events)),
            lambda h: count(h[1]),
            store_teardown,
        ),
        *(Run(name, store_setup, lambda h, body=body: body(h[2]), lambda h: count(h[1]), store_teardown)
          for name, body in index_modes("postgresql", events)),
        Run(
            "progress_lab append_records/batch",
            store_setup,
            lambda h: [h[2].append_records(new_records(chunk)) for chunk in chunks(events, batch_size)],
            lambda h: count(h[1]),
            store_teardown,
        ),
        Run(
            "progress_lab import_jsonl",
            store_setup,
            lambda h: import_jsonl(h[2], jsonl, progress=False),
            lambda h: count(h[1]),
            store_teardown,
        ),
    ]
    if es:
        from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore

        def es_setup() -> tuple[Any, str, Any]:
            context, url = database("es")
            u = sa.make_url(url)
            datastore = PostgresDatastore(
                dbname=u.database or "",
                host=u.host or "localhost",
                port=u.port or 5432,
                user=u.username or "",
                password=u.password or "",
                originator_id_type="text",
            )
            recorder = PostgresApplicationRecorder(datastore)
            recorder.create_table()
            return context, url, recorder

        def es_body(handle: tuple[Any, str, Any]) -> None:
            for batch in batches(stored_events(events), batch_size):
                handle[2].insert_events(batch)

        def es_teardown(handle: tuple[Any, str, Any]) -> None:
            handle[2].datastore.close()
            drop(handle[0])

        runs.insert(
            1, Run("eventsourcing PostgreSQL", es_setup, es_body, lambda h: count(h[1], "stored_events"), es_teardown)
        )
    return runs


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """progress_lab's rates over the raw and eventsourcing rates of the same backend."""
    out = []
    for backend in dict.fromkeys(r["backend"] for r in rows):
        mine = [r for r in rows if r["backend"] == backend]
        raw = next((r for r in mine if r["method"].startswith("raw")), None)
        es = next((r for r in mine if r["method"].startswith("eventsourcing")), None)
        for r in mine:
            if not r["method"].startswith("progress_lab"):
                continue
            vs_raw = r["events/s"] / raw["events/s"] if raw else None
            vs_es = r["events/s"] / es["events/s"] if es else None
            out.append(
                {
                    "backend": backend,
                    "method": r["method"],
                    "x raw": vs_raw,
                    "x eventsourcing": vs_es,
                    "target": f">=1 raw, >={TARGETS[backend]:g} es",
                    "met": None
                    if vs_raw is None or vs_es is None
                    else ("yes" if vs_raw >= 1 and vs_es >= TARGETS[backend] else "no"),
                }
            )
        if raw and es:
            out.append(
                {
                    "backend": backend,
                    "method": f"({raw['method']})",
                    "x raw": 1.0,
                    "x eventsourcing": raw["events/s"] / es["events/s"],
                    "target": "",
                    "met": None,
                }
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="events to import (default 1,000,000)")
    parser.add_argument(
        "--batch-size", type=int, default=1_000, help="events per call for the batched methods (default 1,000)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per method, in turn, each turn starting one method later; the fastest counts (default 1)",
    )
    parser.add_argument("--seed", type=int, default=1, help="generator seed")
    parser.add_argument(
        "--random-ids",
        action="store_true",
        help="give the events random UUIDv4 ids instead of the generator's time-ordered ones (UUIDv7 layout)",
    )
    add_backend_arguments(parser)
    args = parser.parse_args()
    chosen = backends(args)

    describe_machine()
    try:
        import eventsourcing  # noqa: F401

        es = True
    except ImportError:
        es = False
        print("eventsourcing is not installed: its rows are skipped (pip install 'eventsourcing[postgres]')")

    with timer() as t:
        events = generated_events(args.events, seed=args.seed)
        if args.random_ids:
            rng = random.Random(args.seed)
            for event in events:
                event["event_id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    ids = "random UUIDv4 ids" if args.random_ids else "time-ordered ids"
    print(f"generated {len(events):,} events ({ids}) in {t['seconds']:.1f} s (untimed below)")
    # The share of the append_records rows that is validation: the raw rows skip it.
    with timer() as t:
        for _ in new_records(events):
            pass
    records_seconds = t["seconds"]
    print(f"building the NewRecords alone (dict -> NewRecord, metadata validated): {records_seconds:.2f} s")
    folder = Path(tempfile.mkdtemp(prefix="plab_ingest_"))
    rows: list[dict[str, Any]] = []
    try:
        jsonl = folder / "events.jsonl"
        with open(jsonl, "wb") as file:  # the bytes generator.write_jsonl writes for these events
            for event in events:
                file.write(orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE))
        with postgres_server(args) as (admin_url, pg_note):
            plans: list[tuple[str, list[Run]]] = []
            if "sqlite" in chosen:
                plans.append(("sqlite", sqlite_runs(folder, events, jsonl, args.batch_size, es)))
            if admin_url is not None:
                plans.append(("postgresql", postgres_runs(admin_url, events, jsonl, args.batch_size, es)))
            for backend, runs in plans:
                measured: dict[str, list[tuple[float, float]]] = {run.method: [] for run in runs}
                width = max(len(run.method) for run in runs)
                for turn in range(args.repeat):
                    # Round robin, so a busy spell hits every method alike, and each turn starts one
                    # method later: identical code measured 6-18% apart by its place in a fixed order.
                    shift = turn % len(runs)
                    for run in runs[shift:] + runs[:shift]:
                        seconds, cpu = run.measure(backend, len(events))
                        measured[run.method].append((seconds, cpu))
                        print(f"  {backend:10s} {run.method:{width}s} {len(events) / seconds:>12,.0f} events/s", flush=True)
                for method, times in measured.items():
                    seconds, cpu = min(times)
                    rows.append(
                        {
                            "backend": backend,
                            "method": method,
                            "events": len(events),
                            "seconds": seconds,
                            "events/s": len(events) / seconds,
                            "cpu s": cpu,
                            "all seconds": ", ".join(f"{s:.2f}" for s, _ in times),
                        }
                    )
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    best = f", best of {args.repeat}" if args.repeat > 1 else ""
    print_table(f"Ingest of {len(events):,} generated events, {ids} (each method into a fresh database{best})", rows)
    print(
        "\ncpu s: CPU time of this process in the timed region (the client, and SQLite itself; not the PostgreSQL server)"
    )
    print("timed regions:")
    for method in dict.fromkeys(row["method"] for row in rows):
        print(f"  {method}: {TIMED[method]}")
    for row in rows:
        row["timed region"] = TIMED[row["method"]]
    compared = ratios(rows)
    print_table("progress_lab rate over the others' (same backend, same run)", compared)
    if "postgresql" in chosen:
        print(f"\nPostgreSQL: {pg_note}")
    save_results(
        "ingest",
        {
            "events": len(events),
            "random_ids": args.random_ids,
            "batch_size": args.batch_size,
            "repeat": args.repeat,
            "postgresql": pg_note,
            "rows": rows,
            "ratios": compared,
            "new_records_seconds": records_seconds,
            "peak_rss_mb": peak_rss_mb(),
            "time": time.time(),
        },
        args.results_dir,
    )


if __name__ == "__main__":
    main()
