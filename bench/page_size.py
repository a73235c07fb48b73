"""SQLite page size: the same import and replay into files with 4 KiB and 16 KiB pages.

Usage::

    python bench/page_size.py                       # 1,000,000 events, 2 rounds
    python bench/page_size.py --events 300000 --rounds 3

progress_lab creates its SQLite files with 16 KiB pages (``store.SQLITE_PAGE_SIZE``);
SQLite's default is 4 KiB. Each round imports the same generated events with
``append_records`` into a fresh file of each page size (the file is created with that
page size before progress_lab opens it, which keeps it), then rebuilds the read models
from it in a fresh process (``bench/replay.py --child-replay``). The two sizes alternate
within each round, so drift of this machine's speed hits both. The table shows every
round; the ratios compare the best of each. Results go to ``bench/results/page_size.json``.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

from _common import describe_machine, print_table, timer
from _harness import generated_events, save_results
from ingest import new_records
from replay import replay_in_child

import progress_lab as plab
from progress_lab.store import SQLITE_PAGE_SIZE

SIZES = (4096, SQLITE_PAGE_SIZE)


def one_round(folder: Path, events: list[dict[str, object]], page_size: int, batch_size: int) -> dict[str, float]:
    """Import into a fresh file with ``page_size`` pages, then replay it; times and file size."""
    path = folder / f"pages_{page_size}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    with sqlite3.connect(path) as conn:  # an empty file takes the page size it is given first
        conn.execute(f"PRAGMA page_size={page_size}")
        conn.execute("PRAGMA journal_mode=WAL")
    store = plab.connect(f"sqlite:///{path}")
    with timer() as imported:
        store.append_records(new_records(events))  # type: ignore[arg-type]
    store.close()
    with sqlite3.connect(path) as conn:
        actual = int(conn.execute("PRAGMA page_size").fetchone()[0])
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    if actual != page_size:
        raise SystemExit(f"the file has {actual}-byte pages, not {page_size}")
    replay = replay_in_child(path, batch_size)
    size_mb = path.stat().st_size / 1e6
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return {"import_seconds": imported["seconds"], "replay_seconds": replay["seconds"], "file_mb": size_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="events imported and replayed")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, each with both page sizes")
    parser.add_argument("--batch-size", type=int, default=250_000, help="projector batch size of the replay")
    parser.add_argument("--results-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    describe_machine()
    events = generated_events(args.events)
    print(f"generated {len(events):,} events (untimed)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="progress_lab_pages_") as folder:
        for round_ in range(1, args.rounds + 1):
            for page_size in SIZES if round_ % 2 else SIZES[::-1]:
                result = one_round(Path(folder), events, page_size, args.batch_size)
                rows.append({"round": round_, "page size": page_size, **result})
                print(f"  round {round_}, {page_size}-byte pages: import {result['import_seconds']:.2f} s, "
                      f"replay {result['replay_seconds']:.2f} s", flush=True)
    print_table(f"{args.events:,} events, append_records then ProjectionManager.rebuild (fresh process)", rows)
    best = {
        size: {key: min(r[key] for r in rows if r["page size"] == size) for key in ("import_seconds", "replay_seconds")}
        for size in SIZES
    }
    small, large = best[SIZES[0]], best[SIZES[1]]
    ratios = {
        "import": small["import_seconds"] / large["import_seconds"],
        "replay": small["replay_seconds"] / large["replay_seconds"],
    }
    print(
        f"\n{SIZES[1]}-byte pages against {SIZES[0]} (best of {args.rounds}): "
        f"import {ratios['import']:.2f}x, replay {ratios['replay']:.2f}x as fast"
    )
    save_results(
        "page_size",
        {"events": args.events, "rounds": args.rounds, "rows": rows, "best": best, "ratios": ratios, "time": time.time()},
        args.results_dir,
    )


if __name__ == "__main__":
    main()
