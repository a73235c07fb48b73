"""What ingest.py, read.py and follow.py share: backends, PostgreSQL databases, results folder, events.

Kept apart from ``_common`` (machine, timer, tables) so those stay as replay.py uses them.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import RESULTS, ROOT, machine

sys.path.insert(0, str(ROOT / "tests"))

BACKENDS = ("sqlite", "postgresql")
THROWAWAY_NOTE = "throwaway server (fsync=off, synchronous_commit=off)"


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backends``, ``--pg-url`` and ``--results-dir``, the same in every script."""
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="comma-separated: sqlite, postgresql (default: both)",
    )
    parser.add_argument(
        "--pg-url",
        default=None,
        help="admin URL of a PostgreSQL server on which the benchmark may CREATE DATABASE "
        "(default: a throwaway server started for this run, see tests/pg_server.py)",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS,
        help="folder for the JSON results (default: bench/results)",
    )


def backends(args: argparse.Namespace) -> list[str]:
    chosen = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(chosen) - set(BACKENDS))
    if unknown:
        raise SystemExit(f"unknown backend(s) {', '.join(unknown)}: use {', '.join(BACKENDS)}")
    return chosen


@contextlib.contextmanager
def postgres_server(args: argparse.Namespace) -> Iterator[tuple[str | None, str]]:
    """``(admin URL, description)`` of the PostgreSQL server, or ``(None, why not)``.

    A server given with ``--pg-url`` is used as it is; otherwise a throwaway one is
    started for the run and stopped at the end. Without PostgreSQL binaries the
    PostgreSQL half is skipped with a message, not an error.
    """
    if "postgresql" not in backends(args):
        yield None, "not selected"
        return
    if args.pg_url:
        import sqlalchemy as sa

        given = sa.make_url(args.pg_url)
        if given.drivername == "postgresql":
            given = given.set(drivername="postgresql+psycopg")
        yield given.render_as_string(hide_password=False), "server given with --pg-url"
        return
    from pg_server import PostgresStartError, PostgresUnavailable, throwaway_postgres

    with contextlib.ExitStack() as stack:
        problem = ""
        try:
            url = stack.enter_context(throwaway_postgres())
        except (PostgresUnavailable, PostgresStartError) as exc:
            problem = str(exc).splitlines()[0]
        if problem:
            print(f"\nPostgreSQL skipped: {problem} (install PostgreSQL or pass --pg-url)")
            yield None, f"skipped: {problem}"
            return
        yield url, THROWAWAY_NOTE


@contextlib.contextmanager
def fresh_database(admin_url: str, hint: str) -> Iterator[str]:
    """A new, empty database on the server (dropped afterwards); yields its SQLAlchemy URL."""
    from pg_server import create_database, drop_database, unique_database_name

    name = unique_database_name(f"bench_{hint}")
    url = create_database(admin_url, name)
    try:
        yield url
    finally:
        drop_database(admin_url, name)


def libpq_url(url: str) -> str:
    """The URL without SQLAlchemy's ``+driver`` part, for psycopg, ADBC and connectorx."""
    import sqlalchemy as sa

    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def save_results(name: str, payload: dict[str, Any], results_dir: Path) -> Path:
    """Write ``<results_dir>/<name>.json`` with the machine description; return its path."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2, default=str))
    shown = path.relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path
    print(f"\nresults written to {shown}")
    return path


def generated_events(count: int, seed: int = 1, days: int = 60) -> list[dict[str, Any]]:
    """Exactly ``count`` events of the generator's log, in append order, as JSON-ready dicts.

    The list is moved out of the garbage collector's sight (``gc.freeze``) so that a
    million live dicts do not make every measured method pay for full collections.
    """
    from progress_lab.generator import estimate_events, generate_events

    per_user = max(1, estimate_events(1, days))
    users = max(1, -(-count * 5 // (per_user * 4)))  # 25% spare: the estimate is within ~15%
    while True:
        events = list(itertools.islice(generate_events(users=users, days=days, seed=seed), count))
        if len(events) == count or count == 0:
            break
        users *= 2
    gc.collect()
    gc.freeze()
    return events
