"""COPY of event_store rows on PostgreSQL, fed to the server while the client does other work.

A bulk append validates its records in Python (the caller's iterator) and has the
server store them; done one after the other, each side waits for the other. Here the
rows of a chunk are sent a slice at a time as they are made, and the COPY of a chunk
stays open while the next chunk is read: its binary data waits in Python and goes to
libpq a buffer at a time whenever the socket takes more (:meth:`ChunkCopy.feed`,
without blocking), so the server stores rows while the client validates and formats
more. :meth:`ChunkCopy.finish` sends the rest and ends the COPY.

Only imported with the ``postgres`` extra installed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import psycopg
from psycopg.copy import LibpqWriter
from sqlalchemy.exc import IntegrityError, OperationalError


class _FeedingWriter(LibpqWriter):
    """A psycopg COPY writer that keeps the formatted data until the socket is ready for it."""

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        super().__init__(cursor)
        self._feed_pgconn = cursor.connection.pgconn  # public; LibpqWriter keeps its own privately
        self._waiting: deque[Any] = deque()

    def write(self, data: Any) -> None:
        self._waiting.append(data)

    def feed(self) -> None:
        """Hand libpq more data while it has sent what it had; never blocks."""
        pgconn = self._feed_pgconn
        waiting = self._waiting
        while waiting and pgconn.flush() == 0:  # 1: the socket takes nothing more for now
            if pgconn.put_copy_data(waiting[0]) == 0:  # libpq's buffer is full
                return
            waiting.popleft()
        pgconn.flush()

    def finish(self, exc: BaseException | None = None) -> None:
        if exc is None:
            while self._waiting:
                super().write(self._waiting.popleft())  # blocking, flow-controlled
        else:
            self._waiting.clear()
        super().finish(exc)


class ChunkCopy:
    """One ``COPY event_store ... FROM STDIN (FORMAT BINARY)``, left open for :meth:`write_rows`.

    Errors of the driver come out as SQLAlchemy's ``IntegrityError`` and
    ``OperationalError``, as if SQLAlchemy had run the statement. After an error of
    :meth:`write_rows` or :meth:`feed`, call :meth:`abort`.
    """

    def __init__(
        self,
        driver_conn: psycopg.Connection[Any],
        columns: Sequence[str],
        types: Sequence[str],
        records: Sequence[Any],
        *,
        head: int,
    ) -> None:
        self.records = records  # what the rows are made of, for error messages
        self.head = head  # the global position of the last row
        self.statement = f"COPY event_store ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
        self._stack = ExitStack()
        try:
            with _wrapped(self.statement):
                cursor = self._stack.enter_context(driver_conn.cursor())
                self._writer = _FeedingWriter(cursor)
                self._copy = self._stack.enter_context(cursor.copy(self.statement, writer=self._writer))
                self._copy.set_types(types)
        except BaseException as exc:
            self.abort(exc)
            raise

    def write_rows(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Format the rows (in the columns' order) and send what the socket takes now."""
        with _wrapped(self.statement):
            write_row = self._copy.write_row
            for row in rows:
                write_row(row)
            self._writer.feed()

    def feed(self) -> None:
        """Send what the socket takes now, without waiting."""
        with _wrapped(self.statement):
            self._writer.feed()

    def finish(self) -> None:
        """Send the rest and end the COPY: its rows are in the table (of this transaction)."""
        with _wrapped(self.statement):
            self._stack.close()

    def abort(self, exc: BaseException) -> None:
        """End the COPY with an error (the server discards its rows), keeping ``exc`` the error."""
        try:
            self._stack.__exit__(type(exc), exc, exc.__traceback__)
        except Exception:  # the connection may be gone: the error in flight says more
            pass


@contextmanager
def _wrapped(statement: str) -> Iterator[None]:
    """psycopg's integrity and connection errors as SQLAlchemy's."""
    try:
        yield
    except psycopg.IntegrityError as exc:
        raise IntegrityError(statement, None, exc) from None
    except psycopg.OperationalError as exc:
        raise OperationalError(statement, None, exc) from None
