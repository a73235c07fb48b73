"""Throwaway PostgreSQL servers and per-test databases for tests and benchmarks (stdlib + SQLAlchemy only)."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

__all__ = [
    "PostgresUnavailable",
    "PostgresStartError",
    "find_pg_bindir",
    "throwaway_postgres",
    "create_database",
    "drop_database",
    "unique_database_name",
]

# Superuser created by initdb; fixed so the URL does not depend on who runs the tests.
SUPERUSER = "postgres"
# Settings that trade durability for speed; a throwaway cluster never needs crash safety.
TEST_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "128MB",
}
# Picking a free port and binding it later is racy (other test runs share the machine),
# so a failed start is retried on a fresh port a few times before giving up.
START_ATTEMPTS = 3
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 60
_DB_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries (initdb, pg_ctl, postgres) were found."""


class PostgresStartError(RuntimeError):
    """The binaries exist, but initdb or the server start failed."""


def _is_server_bindir(path: str) -> bool:
    return all(os.access(os.path.join(path, tool), os.X_OK) for tool in ("initdb", "pg_ctl", "postgres"))


def _version_key(bindir: str) -> tuple[int, ...]:
    # /usr/lib/postgresql/<version>/bin: sort numerically so 15 beats 9.6.
    version = Path(bindir).parent.name
    return tuple(int(part) for part in re.findall(r"\d+", version)) or (0,)


def find_pg_bindir() -> str | None:
    """Directory holding initdb/pg_ctl/postgres (highest Debian-style version first), or None."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    for candidate in candidates:
        if _is_server_bindir(candidate):
            return candidate
    # Non-Debian layouts (Homebrew, source builds): pg_config knows where the server lives.
    # It may come from libpq-dev alone, so the directory is still checked for initdb.
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        bindir = out.stdout.strip()
        if bindir and _is_server_bindir(bindir):
            return bindir
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _traversable_by_others(path: Path) -> bool:
    # When running as root the server runs as `postgres`, which needs +x on every ancestor.
    return all(p.stat().st_mode & stat.S_IXOTH for p in path.resolve().parents)


def _conf_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class _Runner:
    """Runs PostgreSQL tools as `postgres` when we are root (initdb/postgres refuse root)."""

    def __init__(self, bindir: str, workdir: Path) -> None:
        self.bindir = bindir
        self.workdir = workdir
        self.as_root = os.geteuid() == 0

    def run(self, tool: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self.as_root:
            kwargs.update(user=SUPERUSER, group=SUPERUSER, extra_groups=[])
        # cwd inside the workdir: the caller's cwd (e.g. /root) may be unreadable for `postgres`.
        # LC_ALL=C keeps initdb from rejecting a locale that is not installed in the container.
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        env.pop("PGDATA", None)
        return subprocess.run(
            [os.path.join(self.bindir, tool), *args],
            cwd=self.workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kwargs,
        )


def _describe(proc: subprocess.CompletedProcess[str], log: Path | None = None) -> str:
    parts = [f"exit code {proc.returncode}", proc.stdout.strip(), proc.stderr.strip()]
    if log is not None and log.exists():
        parts.append("server log:\n" + log.read_text(errors="replace")[-4000:])
    return "\n".join(p for p in parts if p)


def _make_workdir() -> Path:
    base = Path(tempfile.gettempdir())
    if os.geteuid() == 0 and not _traversable_by_others(base):
        base = Path("/tmp")
    # Short prefix: the unix socket path inside it must stay under ~107 bytes.
    return Path(tempfile.mkdtemp(prefix="plpg_", dir=base))


def _write_config(datadir: Path, sockdir: Path) -> None:
    settings = {
        **TEST_SETTINGS,
        # TCP on loopback only; the unix socket lives in the private 0700 workdir.
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": str(sockdir),
    }
    with (datadir / "postgresql.conf").open("a") as conf:
        conf.write("\n# progress_lab throwaway test server\n")
        for key, value in settings.items():
            conf.write(f"{key} = {_conf_quote(value)}\n")
    # Replace initdb's defaults (which also trust ::1 and replication) with the minimum.
    (datadir / "pg_hba.conf").write_text(
        "# progress_lab throwaway test server: trust, loopback and private socket only\n"
        "local all all trust\n"
        "host  all all 127.0.0.1/32 trust\n"
    )


@contextlib.contextmanager
def throwaway_postgres(bindir: str | None = None) -> Iterator[str]:
    """Start a private PostgreSQL cluster in a temp folder; yield its admin SQLAlchemy URL.

    The server is stopped (`pg_ctl stop -m fast`) and the folder removed on exit, also when
    the body raises. Raises PostgresUnavailable without binaries, PostgresStartError if
    initdb or the start fails.
    """
    bindir = bindir or find_pg_bindir()
    if bindir is None:
        raise PostgresUnavailable("no PostgreSQL server binaries (initdb, pg_ctl, postgres) found")

    workdir = _make_workdir()
    datadir = workdir / "data"
    runner = _Runner(bindir, workdir)
    try:
        try:
            port = _init_and_start(runner, datadir, sockdir=workdir / "socket", logfile=workdir / "server.log")
        except (OSError, LookupError, subprocess.TimeoutExpired) as exc:
            # e.g. no `postgres` OS user, a hung initdb: still "could not start", not a crash.
            raise PostgresStartError(f"could not set up the server: {exc!r}") from exc
        yield f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{port}/postgres"
    finally:
        try:
            # Also after a failed start: pg_ctl may have timed out on a postmaster that is alive.
            if (datadir / "postmaster.pid").exists():
                _stop(runner, datadir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def _init_and_start(runner: _Runner, datadir: Path, sockdir: Path, logfile: Path) -> int:
    """initdb, configure and start the cluster; return its TCP port."""
    sockdir.mkdir(mode=0o700)
    if runner.as_root:
        # Created by root, but initdb and the server run as `postgres` and write in here.
        for path in (runner.workdir, sockdir):
            shutil.chown(path, user=SUPERUSER, group=SUPERUSER)

    proc = runner.run(
        "initdb",
        "-D", str(datadir),
        f"--username={SUPERUSER}",
        "--auth=trust",
        "--encoding=UTF8",
        "--locale=C",
        "--no-sync",  # nothing to protect; saves seconds on slow disks
        timeout=300,
    )
    if proc.returncode != 0:
        raise PostgresStartError("initdb failed: " + _describe(proc))
    # Edited in place (as root if need be): the files keep their `postgres` ownership.
    _write_config(datadir, sockdir)

    last_error = ""
    for _attempt in range(START_ATTEMPTS):
        port = _free_port()
        # -l sends the postmaster's output to a file; otherwise it would inherit our
        # captured pipes and subprocess.run would wait for EOF forever.
        proc = runner.run(
            "pg_ctl", "start", "-w", "-t", str(START_TIMEOUT_S),
            "-D", str(datadir), "-l", str(logfile), "-o", f"-p {port}",
            timeout=START_TIMEOUT_S + 30,
        )
        if proc.returncode == 0:
            return port
        last_error = _describe(proc, logfile)
    raise PostgresStartError(f"pg_ctl start failed {START_ATTEMPTS} times; last: {last_error}")


def _postmaster_pid(datadir: Path) -> int | None:
    try:
        return int((datadir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _wait_gone(pid: int, timeout: float) -> None:
    # pg_ctl stop returns once the pid file is gone, but the exited postmaster (re-parented to
    # init by pg_ctl) lingers as a zombie until init reaps it; wait so nothing is left behind.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            return  # pid already reused by someone else's process
        time.sleep(0.05)


def _stop(runner: _Runner, datadir: Path) -> None:
    pid = _postmaster_pid(datadir)
    stopped = False
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc = runner.run("pg_ctl", "stop", "-w", "-m", "fast", "-t", str(STOP_TIMEOUT_S), "-D", str(datadir),
                          timeout=STOP_TIMEOUT_S + 30)
        stopped = proc.returncode == 0
    if not stopped:
        # Fast shutdown can still hang on a stuck backend; immediate does not, and we must not leak it.
        with contextlib.suppress(subprocess.TimeoutExpired):
            runner.run("pg_ctl", "stop", "-w", "-m", "immediate", "-D", str(datadir), timeout=STOP_TIMEOUT_S)
    if pid is not None:
        _wait_gone(pid, timeout=5)


def _admin_engine(admin_url: str) -> sa.Engine:
    # CREATE/DROP DATABASE cannot run in a transaction block; NullPool leaves no idle
    # connection behind that would block a later DROP DATABASE of another test.
    return sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)


def _checked_name(name: str) -> str:
    # Names are interpolated into DDL (no bind parameters there), so only allow plain identifiers.
    if not _DB_NAME_RE.fullmatch(name):
        raise ValueError(f"invalid database name {name!r}: use [a-z_][a-z0-9_]*, at most 63 characters")
    return name


def unique_database_name(hint: str = "") -> str:
    """A valid database name: readable (from hint, e.g. a test name) yet unique (uuid suffix)."""
    # Unique across processes too: concurrent runs may share one external server.
    slug = re.sub(r"[^a-z0-9]+", "_", hint.lower()).strip("_")[:40]
    return f"t_{slug}_{uuid.uuid4().hex[:12]}" if slug else f"t_{uuid.uuid4().hex[:12]}"


def create_database(admin_url: str, name: str) -> str:
    """Create database `name` on admin_url's server; return a URL to it (same driver and credentials)."""
    name = _checked_name(name)
    engine = _admin_engine(admin_url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, name: str) -> None:
    """Drop database `name` if it exists, terminating any sessions still connected to it."""
    name = _checked_name(name)
    engine = _admin_engine(admin_url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()
