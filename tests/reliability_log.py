"""The reliability log: what each scenario of test_reliability.py did, as one JSON line.

Each scenario appends its numbers (runs, events written, events lost, how the failure
surfaced) after its assertions passed; ``scripts/reliability_report.py`` turns the file
into RELIABILITY.md. Nothing here is written by hand: the table is the tests' output.

Run counts are small by default so CI stays fast; ``PROGRESS_LAB_SOAK=1`` multiplies
them by :data:`SOAK_FACTOR` (``PROGRESS_LAB_SOAK=<n>`` with n > 1 multiplies by n).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LOG_ENV = "PROGRESS_LAB_RELIABILITY_LOG"
SOAK_ENV = "PROGRESS_LAB_SOAK"
SOAK_FACTOR = 10
DEFAULT_LOG = ROOT / "build" / "reliability.jsonl"


def log_path() -> Path:
    """Where the rows go: ``$PROGRESS_LAB_RELIABILITY_LOG``, else ``build/reliability.jsonl``."""
    return Path(os.environ.get(LOG_ENV) or DEFAULT_LOG)


def soak_factor() -> int:
    """1 normally; ``SOAK_FACTOR`` (or the given n) when ``PROGRESS_LAB_SOAK`` is set."""
    value = os.environ.get(SOAK_ENV, "").strip()
    if not value or value == "0":
        return 1
    return int(value) if value.isdigit() and int(value) > 1 else SOAK_FACTOR


def runs(default: int) -> int:
    """A scenario's run count: ``default``, times the soak factor."""
    return default * soak_factor()


def reset() -> None:
    """Start a fresh log (once per test session)."""
    path = log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")


@dataclass
class Scenario:
    """One scenario on one backend; fill in the numbers, then :meth:`write` after the asserts."""

    scenario: str
    backend: str
    title: str = ""
    seed: int | None = None
    started: float = field(default_factory=time.monotonic)

    def write(
        self,
        *,
        what: str,
        runs: int,
        events_written: int,
        events_lost: int,
        surfaced: str,
        verified: str,
        **details: Any,
    ) -> dict[str, Any]:
        """Append the row; ``details`` are kept in the log (and summarised in the report)."""
        row = {
            "scenario": self.scenario,
            "title": self.title or self.scenario,
            "backend": self.backend,
            "what": what,
            "runs": runs,
            "events_written": events_written,
            "events_lost": events_lost,
            "surfaced": surfaced,
            "verified": verified,
            "seed": self.seed,
            "soak_factor": soak_factor(),
            "seconds": round(time.monotonic() - self.started, 1),
            "details": details,
        }
        path = log_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(row, sort_keys=True, default=str) + "\n")
        return row
