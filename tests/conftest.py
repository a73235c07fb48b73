"""Shared fixtures: a PostgreSQL server per session, a fresh database per test, and SQLite/PostgreSQL URLs."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
import sqlalchemy as sa

# pg_server is a plain module beside this file (benchmarks import it the same way); don't rely
# on pytest's import mode to put this directory on sys.path.
_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from pg_server import (  # noqa: E402
    PostgresStartError,
    PostgresUnavailable,
    create_database,
    drop_database,
    throwaway_postgres,
    unique_database_name,
)

PG_URL_ENV = "PROGRESS_LAB_TEST_PG_URL"
REQUIRE_PG_ENV = "PROGRESS_LAB_REQUIRE_PG"


def _pg_required() -> bool:
    # CI sets this so a missing or broken PostgreSQL fails the run instead of silently skipping.
    return os.environ.get(REQUIRE_PG_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _skip_or_fail(reason: str) -> NoReturn:
    if _pg_required():
        pytest.fail(f"{reason} ({REQUIRE_PG_ENV} is set, so this is an error, not a skip)", pytrace=False)
    pytest.skip(reason)


def _with_project_driver(url: str) -> str:
    # A bare postgresql:// URL would make SQLAlchemy load psycopg2, which we do not depend on.
    parsed = sa.make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """URL of a PostgreSQL server on which tests may CREATE DATABASE (external or throwaway)."""
    external = os.environ.get(PG_URL_ENV)
    if external:
        yield _with_project_driver(external)
        return
    with contextlib.ExitStack() as stack:
        # Only startup errors become skip/fail; the stack stops the server at session end.
        problem = ""
        try:
            url = stack.enter_context(throwaway_postgres())
        except PostgresUnavailable:
            problem = (
                f"no PostgreSQL server binaries found; set {PG_URL_ENV} to a server URL "
                "or install PostgreSQL (e.g. apt-get install postgresql)"
            )
        except PostgresStartError as exc:
            problem = f"could not start a throwaway PostgreSQL server: {exc}"
        if problem:
            # Outside the except block so the report is not cluttered by a chained traceback.
            _skip_or_fail(problem)
        yield url


@pytest.fixture
def pg_url(pg_admin_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a fresh, uniquely named database on the session server, dropped after the test."""
    name = unique_database_name(request.node.name)
    url = create_database(pg_admin_url, name)
    try:
        yield url
    finally:
        # WITH (FORCE) in drop_database ends connections a test forgot to close.
        drop_database(pg_admin_url, name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """URL of a SQLite file in the test's private tmp_path."""
    return f"sqlite:///{tmp_path}/store.db"


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
def db_url(request: pytest.FixtureRequest) -> str:
    """The test runs once per backend: a SQLite file URL and a fresh PostgreSQL database URL."""
    # getfixturevalue keeps the PostgreSQL server out of the SQLite run (no start, no skip).
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))
