"""The ``progress-lab`` command line: one subcommand per task, each a small function."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from sqlalchemy.exc import ArgumentError

from .errors import ProgressRepositoryError
from .store import DEFAULT_URL, EventStore, connect

__all__ = ["main", "DB_ENV"]

DB_ENV = "PROGRESS_LAB_DB"
PROG = "progress-lab"
# Exit status for a failed command, the same as argparse uses for bad usage.
EXIT_ERROR = 2

Command = Callable[[argparse.Namespace], int]


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status (0 on success, 2 on an error).

    Parameters
    ----------
    argv
        The arguments without the program name; ``sys.argv[1:]`` when ``None``.

    Examples
    --------
    >>> main(["export", "/nonexistent-dir/x.jsonl", "--db", "sqlite:///:memory:"])
    2
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse has already reported
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    command: Command = args.command
    try:
        return command(args)
    except (ProgressRepositoryError, OSError, ArgumentError) as exc:
        print(f"{PROG}: error: {_describe(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The Progress Context's event store and read-model projections.",
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    common = _common_options()
    for register in _COMMANDS:
        register(subparsers, common)
    return parser


def _common_options() -> argparse.ArgumentParser:
    # A parent parser, so every subcommand takes --db and --no-progress after its name.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db",
        metavar="URL",
        default=None,
        help=f"SQLAlchemy database URL (default: ${DB_ENV}, else {DEFAULT_URL})",
    )
    common.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    return common


def database_url(args: argparse.Namespace) -> str:
    """The database URL: ``--db``, else ``$PROGRESS_LAB_DB``, else ``sqlite:///progress.db``."""
    url: str | None = args.db or os.environ.get(DB_ENV)
    return url or DEFAULT_URL


def open_store(args: argparse.Namespace) -> EventStore:
    """Connect to the store the arguments name."""
    return connect(database_url(args))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    if isinstance(exc, ArgumentError):
        return f"invalid database URL: {exc}"
    return str(exc)


# -- import ---------------------------------------------------------------------


def _register_import(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "import",
        parents=[common],
        help="append the events of a JSON Lines file (all or nothing)",
        description="Append every event of a JSON Lines file to the store in one transaction; "
        "a bad line is reported by its number and nothing is written.",
    )
    parser.add_argument("file", metavar="FILE", help="the .jsonl file to read")
    parser.set_defaults(command=_run_import)


def _run_import(args: argparse.Namespace) -> int:
    from .jsonl import import_jsonl

    with open_store(args) as store:
        count = import_jsonl(store, args.file, progress=not args.no_progress)
        print(f"imported {count} events from {args.file} into {store.url}")
    return 0


# -- export ---------------------------------------------------------------------


def _register_export(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "export",
        parents=[common],
        help="write every event to a JSON Lines file",
        description="Write every event in global order to a JSON Lines file that `import` reads back.",
    )
    parser.add_argument("file", metavar="FILE", help="the .jsonl file to write (replaced if it exists)")
    parser.set_defaults(command=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from .jsonl import export_jsonl

    with open_store(args) as store:
        count = export_jsonl(store, args.file, progress=not args.no_progress)
        print(f"exported {count} events from {store.url} to {args.file}")
    return 0


# To add a command: write _register_<name>(subparsers, common) and _run_<name>(args), list it here.
_COMMANDS: Sequence[
    Callable[[argparse._SubParsersAction[argparse.ArgumentParser], argparse.ArgumentParser], None]
] = (
    _register_import,
    _register_export,
)
