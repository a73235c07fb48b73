"""The progress-lab command line, end to end on real SQLite files, and the README's examples."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import polars as pl
import pytest

import progress_lab as plab
from progress_lab.cli import main

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample.jsonl"


@pytest.fixture()
def loaded_db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert main(["import", str(SAMPLE), "--db", url, "--no-progress"]) == 0
    return url


def test_replay_writes_csv_and_parquet_with_the_read_models_columns(loaded_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["replay", "--db", loaded_db, "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"folded \d+ events", printed) and "rejected by reason:" in printed and "ignored" in printed
    with open(out / "user_progress.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(plab.USER_PROGRESS_SCHEMA)
    last_updated = rows[1][rows[0].index("last_updated")]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", last_updated)
    with open(out / "daily_stats.csv", newline="") as f:
        daily_rows = list(csv.reader(f))
    assert daily_rows[0] == list(plab.DAILY_STATS_SCHEMA)
    accuracy = daily_rows[0].index("accuracy_rate")
    sessions = daily_rows[0].index("sessions_completed")
    # A day with reviews but no completed session has no accuracy: an empty cell.
    assert any(r[accuracy] == "" and r[sessions] == "0" for r in daily_rows[1:])
    # The Parquet twins hold the same numbers as the SQL read models.
    store = plab.connect(loaded_db)
    assert pl.read_parquet(out / "user_progress.parquet").equals(plab.UserProgressRepository(store.engine).all())
    assert pl.read_parquet(out / "daily_stats.parquet").equals(plab.DailyStatsRepository(store.engine).all())


def test_replay_is_incremental_and_rebuild_and_as_of_work(loaded_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--db", loaded_db, "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["replay", "--db", loaded_db, "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    assert "folded 0 events" in capsys.readouterr().out
    assert main(["replay", "--db", loaded_db, "--rebuild", "--as-of", "2026-01-20", "--out", str(tmp_path / "c"), "--no-progress"]) == 0
    full = pl.read_csv(tmp_path / "a" / "user_progress.csv")
    early = pl.read_csv(tmp_path / "c" / "user_progress.csv")
    assert full.drop("current_streak").equals(early.drop("current_streak"))
    reference = plab.ProjectionManager(plab.connect(loaded_db), progress=False).user_progress(
        as_of=__import__("datetime").date(2026, 1, 20)
    )
    assert early["current_streak"].to_list() == reference["current_streak"].to_list()


def test_replay_with_other_options_asks_for_a_rebuild(loaded_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--db", loaded_db, "--out", str(tmp_path), "--no-progress"]) == 0
    assert main(["replay", "--db", loaded_db, "--day-start-hour", "4", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "rebuild" in capsys.readouterr().err
    assert main(["replay", "--db", loaded_db, "--timezone", "Mars/Olympus", "--rebuild", "--no-progress"]) == 2


def test_lag_prints_each_projection(loaded_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lag", "--db", loaded_db]) == 0
    assert "events behind" in capsys.readouterr().out
    assert main(["replay", "--db", loaded_db, "--out", str(tmp_path), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["lag", "--db", loaded_db]) == 0
    assert re.search(r"progress: 0 events behind .*: Normal", capsys.readouterr().out)


def test_demo_loads_replays_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path / "demo"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "UserProgress: 15 learners" in printed and "busiest days" in printed
    assert (tmp_path / "demo" / "user_progress.csv").is_file()
    # Running it again starts from a fresh database: the same report.
    assert main(["demo", "--out", str(tmp_path / "demo"), "--no-progress"]) == 0
    assert capsys.readouterr().out == printed


def test_email_addresses_never_reach_the_read_models(loaded_db: str, tmp_path: Path) -> None:
    assert "@example.com" in SAMPLE.read_text()
    assert main(["replay", "--db", loaded_db, "--out", str(tmp_path), "--no-progress"]) == 0
    files = [p for p in tmp_path.iterdir() if p.suffix in (".csv", ".parquet")]
    assert len(files) == 4
    for path in files:
        assert b"@example.com" not in path.read_bytes(), path
    frame = pl.read_parquet(tmp_path / "user_progress.parquet")
    assert not any(frame[c].cast(pl.String).str.contains("@").any() for c in frame.columns)


def test_passwords_never_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql://ada:s3cret-pw@127.0.0.1:1/nowhere"
    assert main(["lag", "--db", url]) == 2
    captured = capsys.readouterr()
    assert "s3cret-pw" not in captured.out + captured.err


def test_readme_python_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    assert os.path.exists(tmp_path / "example.db")
