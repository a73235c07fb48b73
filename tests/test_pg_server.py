"""Tests for the PostgreSQL test infrastructure: session server, per-test databases and db_url."""

from __future__ import annotations

import os

import pytest
import sqlalchemy as sa
from pg_server import create_database, drop_database, find_pg_bindir, unique_database_name


def _scalar(url: str, sql: str, **params: object) -> object:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar_one()
    finally:
        engine.dispose()


def _database_exists(admin_url: str, name: str) -> bool:
    return _scalar(admin_url, "select count(*) from pg_database where datname = :n", n=name) == 1


@pytest.mark.postgres
def test_admin_server_answers_select_1(pg_admin_url: str) -> None:
    assert _scalar(pg_admin_url, "select 1") == 1


@pytest.mark.postgres
def test_pg_url_is_a_fresh_database(pg_url: str, pg_admin_url: str) -> None:
    name = sa.make_url(pg_url).database
    assert name and name != sa.make_url(pg_admin_url).database
    assert _scalar(pg_url, "select current_database()") == name
    assert _scalar(pg_url, "select count(*) from pg_tables where schemaname = 'public'") == 0


@pytest.mark.postgres
def test_two_databases_are_distinct(pg_url: str, pg_admin_url: str) -> None:
    # pg_url is function scoped (one per test), so the second database uses the same helpers.
    other_name = unique_database_name("second")
    other_url = create_database(pg_admin_url, other_name)
    try:
        assert other_url != pg_url
        first, second = sa.create_engine(pg_url), sa.create_engine(other_url)
        try:
            with first.begin() as conn:
                conn.execute(sa.text("create table marker (v int)"))
                conn.execute(sa.text("insert into marker values (1)"))
            with second.connect() as conn:
                assert conn.execute(sa.text("select current_database()")).scalar_one() == other_name
                assert conn.execute(sa.text("select to_regclass('marker')")).scalar_one() is None
            with first.connect() as conn:
                assert conn.execute(sa.text("select count(*) from marker")).scalar_one() == 1
            # Keep a session open on purpose: drop_database must still succeed (WITH (FORCE)).
            held = second.connect()
            drop_database(pg_admin_url, other_name)
            held.invalidate()
        finally:
            first.dispose()
            second.dispose()
    finally:
        drop_database(pg_admin_url, other_name)
    assert not _database_exists(pg_admin_url, other_name)


def test_db_url_gives_a_working_engine(db_url: str) -> None:
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("create table t (id integer primary key, name text)"))
            conn.execute(sa.text("insert into t (id, name) values (1, 'a'), (2, 'b')"))
        with engine.connect() as conn:
            assert conn.execute(sa.text("select count(*) from t")).scalar_one() == 2
    finally:
        engine.dispose()
    assert engine.dialect.name == ("postgresql" if db_url.startswith("postgresql") else "sqlite")


def test_database_names_are_unique_and_valid() -> None:
    names = {unique_database_name("test_x[postgresql]") for _ in range(100)}
    assert len(names) == 100
    assert all(n.startswith("t_test_x_postgresql_") and len(n) <= 63 for n in names)
    with pytest.raises(ValueError):
        create_database("postgresql+psycopg://nobody@127.0.0.1:1/postgres", 'bad"; drop')


def test_find_pg_bindir_points_at_server_tools() -> None:
    bindir = find_pg_bindir()
    if bindir is None:
        # Mirrors pg_admin_url: CI (REQUIRE_PG without an external server) needs the binaries.
        if os.environ.get("PROGRESS_LAB_REQUIRE_PG") == "1" and not os.environ.get("PROGRESS_LAB_TEST_PG_URL"):
            pytest.fail("PROGRESS_LAB_REQUIRE_PG=1 but no PostgreSQL server binaries were found")
        pytest.skip("no PostgreSQL server binaries on this machine")
    for tool in ("initdb", "pg_ctl", "postgres"):
        assert os.access(os.path.join(bindir, tool), os.X_OK)
