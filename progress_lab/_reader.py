"""The SQLite reader process: ADBC queries answered as Arrow IPC files in shared memory.

Run as ``python -P progress_lab/_reader.py PATH``. Each request is one JSON line
``{"sql": ..., "params": [...], "out": FILE}``; the result is written to ``FILE`` as an
Arrow IPC file (the parent memory-maps it, so the data is not copied through a pipe), and
the answer on stdout is a status byte (``0`` written, ``1`` an error), an 8-byte
little-endian length, and that many bytes (the error message, or nothing). See
``frames._SqliteReader`` for why this lives in its own process.

It uses ADBC's low-level API (not its DB-API module, which imports pandas and takes a
second to start) and asks for large record batches: fewer, longer Arrow chunks.
"""

from __future__ import annotations

import json
import sys

BATCH_ROWS = "65536"


def main() -> None:
    import adbc_driver_manager
    import adbc_driver_sqlite
    import pyarrow as pa

    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    database = adbc_driver_manager.AdbcDatabase(driver=adbc_driver_sqlite._driver_path(), uri=sys.argv[1])
    connection = adbc_driver_manager.AdbcConnection(database)
    try:
        for line in requests:
            request = json.loads(line)
            try:
                statement = adbc_driver_manager.AdbcStatement(connection)
                try:
                    statement.set_options(**{"adbc.sqlite.query.batch_rows": BATCH_ROWS})
                    statement.set_sql_query(request["sql"])
                    params = request["params"]
                    if params:
                        names = [f"p{i}" for i in range(len(params))]
                        statement.bind(pa.record_batch([pa.array([p]) for p in params], names=names))
                    handle, _ = statement.execute_query()
                    _write(pa.RecordBatchReader._import_from_c(handle.address), request["out"])
                finally:  # only after the result stream is released (else the driver crashes)
                    statement.close()
                status, payload = b"\0", b""
            except Exception as exc:  # report it and keep serving
                status, payload = b"\1", str(exc).encode()
            answers.write(status + len(payload).to_bytes(8, "little") + payload)
            answers.flush()
    finally:
        connection.close()
        database.close()


def _write(reader: object, path: str) -> None:
    import pyarrow as pa

    assert isinstance(reader, pa.RecordBatchReader)
    with reader, pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, reader.schema) as writer:
        for batch in reader:
            writer.write_batch(batch)


if __name__ == "__main__":
    main()
