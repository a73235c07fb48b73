"""The benchmark scripts still run: each one at a tiny size, as a user would start it.

Only that they finish and write their results is checked, never how fast anything is.
Results go to a temporary folder, so real results in bench/results are left alone.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
TIMEOUT_S = 300

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


def run(script: Path, *args: str, cwd: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, f"{script.name} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def backend_args(backend: str, request: pytest.FixtureRequest) -> list[str]:
    """Only the given backend; PostgreSQL is the test session's server (fresh databases on it)."""
    if backend == "sqlite":
        return ["--backends", "sqlite"]
    return ["--backends", "postgresql", "--pg-url", str(request.getfixturevalue("pg_admin_url"))]


def results(folder: Path, name: str) -> dict[str, Any]:
    path = folder / f"{name}.json"
    assert path.exists(), f"{path} was not written"
    payload: dict[str, Any] = json.loads(path.read_text())
    assert {"machine", "time"} <= payload.keys()
    return payload


def has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def test_replay(tmp_path: Path) -> None:
    # replay.py writes to the results folder beside its own file: run a copy of bench/.
    copy = tmp_path / "bench"
    copy.mkdir()
    for script in BENCH.glob("*.py"):
        shutil.copy(script, copy / script.name)
    run(
        copy / "replay.py",
        "--events",
        "3000",
        "--reference-events",
        "2000",
        "--cache",
        str(tmp_path / "cache"),
        cwd=tmp_path,
    )
    payload = results(copy / "results", "replay")
    assert {"replay", "folds", "scaling", "load"} <= payload.keys()
    assert payload["folds"]["identical"] is True


@pytest.mark.parametrize("backend", BACKENDS)
def test_ingest(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    run(
        BENCH / "ingest.py",
        "--events",
        "2000",
        "--batch-size",
        "500",
        *(["--random-ids"] if backend == "sqlite" else []),
        *backend_args(backend, request),
        "--results-dir",
        str(tmp_path),
        cwd=tmp_path,
    )
    payload = results(tmp_path, "ingest")
    assert payload["events"] == 2000
    assert payload["random_ids"] == (backend == "sqlite")
    methods = {row["method"] for row in payload["rows"] if row["backend"] == backend}
    expected = {"progress_lab import_jsonl", "progress_lab append_records", "progress_lab append_records/batch"}
    expected.add("raw sqlite3.executemany" if backend == "sqlite" else "raw psycopg COPY")
    expected.add("progress_lab append_records, indexes deferred")
    if backend == "sqlite":  # PostgreSQL keeps them by default
        expected.add("progress_lab append_records, indexes kept")
    if has("eventsourcing"):
        expected.add("eventsourcing SQLite" if backend == "sqlite" else "eventsourcing PostgreSQL")
    assert methods == expected
    assert all({"seconds", "events/s", "timed region"} <= row.keys() for row in payload["rows"])
    assert {row["method"] for row in payload["ratios"]} >= {m for m in expected if m.startswith("progress_lab")}


@pytest.mark.parametrize("backend", BACKENDS)
def test_read(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    run(
        BENCH / "read.py",
        "--events",
        "2000",
        "--repeat",
        "1",
        *backend_args(backend, request),
        "--results-dir",
        str(tmp_path),
        cwd=tmp_path,
    )
    payload = results(tmp_path, "read")
    methods = {row["method"] for row in payload["rows"] if row["backend"] == backend}
    expected = {
        "progress_lab events_frame",
        "progress_lab read_fold_frame",
        "ADBC SELECT * -> polars",
        "ADBC typed columns -> polars",
    }
    expected.add("sqlite3 cursor -> tuples" if backend == "sqlite" else "psycopg cursor -> tuples")
    if has("connectorx"):
        expected.add("connectorx SELECT * -> polars")
    assert methods == expected
    assert all(row["events"] == 2000 and "events_frame x" in row for row in payload["rows"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_follow(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    run(
        BENCH / "follow.py",
        "--seconds",
        "1",
        "--rate",
        "200",
        "--writers",
        "1",
        "--preload",
        "200",
        "--sample-ms",
        "10",
        "--snapshot-interval",
        "5",
        *backend_args(backend, request),
        "--results-dir",
        str(tmp_path),
        cwd=tmp_path,
    )
    payload = results(tmp_path, "follow")
    (row,) = payload["rows"]
    assert row["backend"] == backend
    assert row["events"] > 0 and row["commits"] > 0
    assert row["unseen"] == 0  # every commit became visible in the read models
    assert {"p50 ms", "p95 ms", "p99 ms", "max ms"} <= row.keys()
    assert len(payload["delays_ms"][backend]) == row["commits"]
    assert payload["parameters"]["snapshot_interval"] == 5.0


def test_page_size(tmp_path: Path) -> None:
    run(BENCH / "page_size.py", "--events", "2000", "--rounds", "1", "--results-dir", str(tmp_path), cwd=tmp_path)
    payload = results(tmp_path, "page_size")
    assert sorted(row["page size"] for row in payload["rows"]) == [4096, 16384]
    assert {"import", "replay"} == payload["ratios"].keys()
