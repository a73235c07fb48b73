"""The SQLite reader process: ADBC queries answered as Arrow IPC over stdin/stdout.

Run as ``python -m progress_lab._reader PATH``. Each request is one JSON line
``{"sql": ..., "params": [...]}``; each answer is a status byte (``0`` a table, ``1`` an
error message), an 8-byte little-endian length, and that many bytes. See
``frames._SqliteReader`` for why this lives in its own process.
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    import adbc_driver_sqlite.dbapi as adbc_sqlite
    import pyarrow as pa

    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    db = adbc_sqlite.connect(sys.argv[1], autocommit=True)
    try:
        for line in requests:
            request = json.loads(line)
            try:
                with db.cursor() as cursor:
                    cursor.execute(request["sql"], tuple(request["params"]))
                    table = cursor.fetch_arrow_table()
                sink = pa.BufferOutputStream()
                with pa.ipc.new_stream(sink, table.schema) as writer:
                    writer.write_table(table)
                status, payload = b"\0", sink.getvalue().to_pybytes()
            except Exception as exc:  # report it and keep serving
                status, payload = b"\1", str(exc).encode()
            answers.write(status + len(payload).to_bytes(8, "little") + payload)
            answers.flush()
    finally:
        db.close()


if __name__ == "__main__":
    main()
