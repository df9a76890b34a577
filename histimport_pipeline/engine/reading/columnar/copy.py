"""Feeding a psycopg binary COPY: framing, the writer thread, the statement, quiet aborts."""

from __future__ import annotations

import logging
import queue
import struct
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

#: Encoded blocks waiting for the COPY writer thread (bounds memory when the server is slower).
QUEUE_BLOCKS = 1
#: Binary COPY framing (PostgreSQL docs, "COPY ... BINARY file format").
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_TRAILER = struct.pack(">h", -1)


class _AbortNoteFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("error ignored terminating")


_ABORT_NOTE_FILTER = _AbortNoteFilter()


@contextmanager
def quiet_copy_abort() -> Iterator[None]:
    """While a COPY is open, drop psycopg's note that aborting it failed too.

    A COPY left on an error is aborted by psycopg; when the connection is already gone
    (``<psycopg.Copy [BAD]>``) the abort cannot be sent either, and psycopg logs "error
    ignored terminating ..." before letting the original error through. That error is the
    one reported (on the import and by the CLI); the log line would only reach the user as a
    stray unformatted line on stderr.
    """
    logger = logging.getLogger("psycopg")
    logger.addFilter(_ABORT_NOTE_FILTER)
    try:
        yield
    finally:
        logger.removeFilter(_ABORT_NOTE_FILTER)


class CopyPump:
    """Feeds a psycopg COPY from a thread, so the server ingests while the next block parses.

    At most ``QUEUE_BLOCKS`` encoded blocks wait, which bounds memory when the server is the
    slower side. ``close()`` waits for everything to be written and re-raises the writer's
    error, if any.
    """

    def __init__(self, copy: Any) -> None:
        self._copy = copy
        self._queue: queue.Queue[bytes | memoryview | None] = queue.Queue(QUEUE_BLOCKS)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="histimport-copy", daemon=True)
        self._thread.start()
        self.put(COPY_HEADER)

    def _run(self) -> None:
        while True:
            data = self._queue.get()
            if data is None:
                return
            if self._error is None:
                try:
                    self._copy.write(data)
                except BaseException as exc:  # handed to the caller by close()/put()
                    self._error = exc

    def put(self, data: bytes | memoryview) -> None:
        """Queue one block of binary COPY tuples (blocks when the queue is full)."""
        if self._error is not None:
            raise self._error
        self._queue.put(data)

    def close(self, *, write_trailer: bool = True) -> None:
        """Write the trailer, wait for the writer, and raise its error if it had one."""
        if not self._thread.is_alive():
            return
        if write_trailer:
            self._queue.put(COPY_TRAILER)
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> CopyPump:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            self.close()
            return
        # The COPY is being abandoned: stop the writer; psycopg then aborts the COPY. The
        # caller's exception is the one that matters.
        with suppress(Exception):
            self.close(write_trailer=False)


def copy_sql(preparer: Any, qualified_table: str, columns: Sequence[str]) -> str:
    """``COPY table (columns) FROM STDIN (FORMAT BINARY)`` with quoted identifiers."""
    names = ", ".join(preparer.quote(n) for n in columns)
    return f"COPY {qualified_table} ({names}) FROM STDIN (FORMAT BINARY)"
