"""The ``progress-lab`` command line: one subcommand per task, each a small function."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from datetime import date, timedelta
from pathlib import Path

from sqlalchemy.exc import ArgumentError

from .errors import EventStoreError, ProgressRepositoryError, ProjectionError
from .monitor import ProjectionMonitor
from .projections import FoldOptions, ProjectionState
from .projector import ProjectionManager
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


# -- replay ---------------------------------------------------------------------


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _register_replay(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "replay",
        parents=[common],
        help="catch the read models up (or rebuild them) and write them as CSV and Parquet",
        description="Fold the log into UserProgress and DailyStats from the checkpoint on "
        "(or from position 1 with --rebuild), then write DIR/user_progress.csv, "
        "DIR/daily_stats.csv and their Parquet twins.",
    )
    parser.add_argument("--rebuild", action="store_true", help="drop the read models and replay from position 1")
    parser.add_argument("--as-of", type=_date, default=None, metavar="YYYY-MM-DD", help="day the streaks are counted to")
    parser.add_argument("--timezone", default="UTC", metavar="TZ", help="time zone of the study day (default UTC)")
    parser.add_argument("--day-start-hour", type=int, default=0, metavar="H", help="hour a study day starts (default 0)")
    parser.add_argument("--batch-size", type=int, default=250_000, metavar="N", help="events per transaction")
    parser.add_argument("--out", default="out", metavar="DIR", help="folder for the CSV and Parquet files (default ./out)")
    parser.set_defaults(command=_run_replay)


def _fold_options(args: argparse.Namespace) -> FoldOptions:
    try:
        return FoldOptions(timezone=args.timezone, day_start_hour=args.day_start_hour)
    except ValueError as exc:
        raise ProjectionError(str(exc)) from None


def _run_replay(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        manager = ProjectionManager(
            store,
            options=_fold_options(args),
            batch_size=args.batch_size,
            progress=False if args.no_progress else None,
        )
        report = manager.rebuild() if args.rebuild else manager.run_once()
        paths = write_read_models(manager.state, Path(args.out), as_of=args.as_of)
        print(report)
        print(_totals(manager.state))
        for path in paths:
            print(f"wrote {path}")
    return 0


def write_read_models(state: ProjectionState, out: Path, *, as_of: date | None = None) -> list[Path]:
    """Write UserProgress and DailyStats as CSV (null accuracy: empty cell) and Parquet."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frame in (("user_progress", state.user_progress(as_of)), ("daily_stats", state.daily_stats())):
        csv_path, parquet_path = out / f"{name}.csv", out / f"{name}.parquet"
        frame.write_csv(csv_path, datetime_format="%Y-%m-%dT%H:%M:%S%.6fZ", date_format="%Y-%m-%d", null_value="")
        frame.write_parquet(parquet_path)
        written += [csv_path, parquet_path]
    return written


def _totals(state: ProjectionState) -> str:
    summary = state.summary()
    rejected = summary["rejected"]
    assert isinstance(rejected, dict)
    by_reason = ", ".join(f"{k} {v}" for k, v in sorted(rejected.items())) or "none"
    return (
        f"in all: {summary['events_folded']} events folded up to position {summary['position']}, "
        f"{summary['users']} users; rejected by reason: {by_reason}; ignored (unknown types): {summary['ignored']}"
    )


# -- lag --------------------------------------------------------------------------


def _register_lag(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "lag",
        parents=[common],
        help="print each projection's lag and status",
        description="Print how far each projection is behind the head of the log.",
    )
    parser.add_argument(
        "--critical-seconds", type=float, default=60.0, metavar="S",
        help="age of the oldest unprocessed event that makes the lag Critical (default 60)",
    )
    parser.set_defaults(command=_run_lag)


def _run_lag(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        monitor = ProjectionMonitor(store, critical_age=timedelta(seconds=args.critical_seconds))
        reports = monitor.check_all() or [monitor.lag("progress")]
        for report in reports:
            print(report)
    return 0


# -- generate -----------------------------------------------------------------------


def _register_generate(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="write a synthetic, seeded learner event log as JSON Lines",
        description="Write a deterministic synthetic event log (learners with different habits) "
        "in the import format.",
    )
    parser.add_argument("--users", type=int, required=True, metavar="N")
    parser.add_argument("--days", type=int, required=True, metavar="D")
    parser.add_argument("--seed", type=int, default=0, metavar="S")
    parser.add_argument("file", metavar="FILE.jsonl")
    parser.set_defaults(command=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from .generator import write_jsonl

    try:
        count = write_jsonl(args.file, users=args.users, days=args.days, seed=args.seed)
    except ValueError as exc:
        raise EventStoreError(str(exc)) from None
    print(f"wrote {count} events for {args.users} users over {args.days} days (seed {args.seed}) to {args.file}")
    return 0


# -- demo ---------------------------------------------------------------------------

SAMPLE = {"users": 15, "days": 28, "seed": 7}
"""The arguments that produced data/sample.jsonl."""


def _register_demo(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="load the sample log into a fresh SQLite file, replay it and print a report",
        description="Load data/sample.jsonl into a fresh SQLite file, replay it and print a short report.",
    )
    parser.add_argument("--out", default="progress-demo", metavar="DIR", help="folder for demo.db and the CSV files")
    parser.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    parser.set_defaults(command=_run_demo)


def sample_path() -> Path | None:
    """data/sample.jsonl of a source checkout, when there is one."""
    path = Path(__file__).resolve().parent.parent / "data" / "sample.jsonl"
    return path if path.is_file() else None


def _run_demo(args: argparse.Namespace) -> int:
    from .generator import write_jsonl
    from .jsonl import import_jsonl

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sample = sample_path()
    if sample is None:  # an installed package without the checkout: make the same file
        sample = out / "sample.jsonl"
        write_jsonl(sample, users=SAMPLE["users"], days=SAMPLE["days"], seed=SAMPLE["seed"])
    db = out / "demo.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    with connect(f"sqlite:///{db}") as store:
        count = import_jsonl(store, sample, progress=not args.no_progress)
        manager = ProjectionManager(store, progress=False if args.no_progress else None)
        report = manager.run_once()
        paths = write_read_models(manager.state, out)
        print(f"loaded {count} events from {sample} into {store.url}")
        print(report)
        print(_totals(manager.state))
        print()
        print(demo_report(manager.state))
        print()
        for path in paths:
            print(f"wrote {path}")
    return 0


def demo_report(state: ProjectionState) -> str:
    """A short text report: the most active learners and the busiest days."""
    import polars as pl

    progress = state.user_progress()
    daily = state.daily_stats()
    top = progress.sort(["total_sessions_completed", "user_id"], descending=[True, False]).head(5).select(
        pl.col("user_id").str.slice(0, 8).alias("user"),
        pl.col("total_sessions_completed").alias("sessions"),
        pl.col("total_study_time_minutes").alias("minutes"),
        pl.col("current_streak").alias("streak"),
        pl.col("accuracy_rate").round(3).alias("accuracy"),
        pl.col("long_term_mastered").alias("mature items"),
    )
    per_day = daily.group_by("date").agg(
        pl.col("sessions_completed").sum().alias("sessions"), pl.col("items_reviewed").sum().alias("reviews")
    )
    busiest = per_day.sort(["sessions", "date"], descending=[True, False]).head(3)
    with pl.Config(tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True, tbl_width_chars=100):
        return (
            f"UserProgress: {progress.height} learners, as of {state.default_as_of()}\n"
            f"{top}\n\nDailyStats: {daily.height} learner-days; busiest days:\n{busiest}"
        )


# To add a command: write _register_<name>(subparsers, common) and _run_<name>(args), list it here.
_COMMANDS: Sequence[
    Callable[[argparse._SubParsersAction[argparse.ArgumentParser], argparse.ArgumentParser], None]
] = (
    _register_import,
    _register_export,
    _register_replay,
    _register_lag,
    _register_generate,
    _register_demo,
)
