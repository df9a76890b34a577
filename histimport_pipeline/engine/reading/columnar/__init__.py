"""Columnar reader: delimited UTF-8 files parsed with pyarrow and validated column by column.

The Python path (``reading.open_file`` → ``validation.Validator`` → ``loading.stage_rows``) reads
every kind of file. This package reads the common big case, a delimited UTF-8 file on
PostgreSQL, several times faster, and gives exactly the same outcome: the same records with
the same source row numbers, the same typed values, the same failed rows with the same
messages, the same counts. It gets there by construction, not by imitation:

* records are split by pyarrow's C++ CSV reader, every value as text, and only files on which
  that reader provably agrees with the ``csv`` module get this far (see ``decline_reason``
  and ``quoting_is_plain``); anything unexpected on the way (a ragged row, invalid UTF-8, a
  field over the import's ``max_field_bytes``) raises :class:`Declined` and the caller starts
  again on the Python path;
* each column's *distinct* texts in a block go through the Validator's own column coercer
  (``validation.column_coercer``), so a value or a failure is whatever the Python path makes of
  that text; only plain text columns (no rules) and canonical integers skip Python, through
  vectorised steps that tests hold to the coercer's results;
* a row with a failing column gets its error from ``Validator.row_error``, the Python path's
  own message builder;
* valid rows are encoded column-wise into PostgreSQL's binary COPY format (the encoding
  psycopg's binary dumpers give, which the Python path uses) and streamed to the server by a
  writer thread while the next block is parsed.

It never imports dagster and never touches the database itself: callers hand it a psycopg
COPY to feed.
"""

from histimport_pipeline.engine.reading.columnar.blocks import Block, ColumnarFile, Constant
from histimport_pipeline.engine.reading.columnar.copy import (
    COPY_HEADER,
    COPY_TRAILER,
    CopyPump,
    copy_sql,
    quiet_copy_abort,
)
from histimport_pipeline.engine.reading.columnar.scan import (
    Declined,
    Quoting,
    decline_reason,
    quoting_is_plain,
)

__all__ = [
    "COPY_HEADER",
    "COPY_TRAILER",
    "Block",
    "ColumnarFile",
    "Constant",
    "CopyPump",
    "Declined",
    "Quoting",
    "copy_sql",
    "decline_reason",
    "quiet_copy_abort",
    "quoting_is_plain",
]
