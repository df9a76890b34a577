"""Reading stage: detect a file's format, encoding and layout, and stream its records as text.

``open_file`` looks at the bytes (not the file name) to tell delimited text, XLSX, a JSON array
and NDJSON apart, refuses what it cannot read safely (``.xls``, encrypted or macro workbooks,
zip bombs), maps the header row to the dataset's columns and returns a ``ParsedFile`` whose
``batches()`` stream ``RawRow`` records. Memory does not grow with the file: text is decoded
incrementally, XLSX is read in openpyxl's read-only mode, JSON arrays are decoded one element
at a time.

Rules a caller can rely on:

* Every value stays text exactly as in the file: ``"007"``, ``"NA"``, ``"null"`` and
  surrounding spaces are kept. Only a cell the file does not have at all is ``None``.
* Row numbers (``RawRow.source_row``): delimited text counts records, header = 1, so a quoted
  value spanning lines is one record. A blank record (no fields, or every field empty or
  whitespace) is skipped and not counted. XLSX uses the sheet's own row numbers (blank rows
  are skipped, so numbers may jump). A JSON array counts its elements from 1; NDJSON uses the
  line number.
* JSON headers are the keys of the first object, in order. A later object may omit keys (read
  as ``None``); a later key that names a dataset column but was not in the first object makes
  that row an error, since its value would otherwise be lost; other unknown later keys are
  ignored like any extra column.
* File-level problems raise ``FileError`` subclasses naming the file, the row, column or byte
  offset where known, and what to do. Row-level problems (a ragged row, a malformed quote, an
  invalid NDJSON line, a NUL byte or a value over ``max_field_bytes`` in a mapped column)
  become ``RawRow.error`` (with ``RawRow.error_column`` when one column is at fault) and
  parsing goes on.
* Encodings: the spec's ``encoding:``, else a BOM, UTF-16's NUL pattern, valid UTF-8, else
  Windows-1252 under the rules of ``encoding._western_single_byte``; anything else is refused
  rather than guessed. ``FileInfo.encoding_decided_by`` says which rule decided.
"""

from histimport_pipeline.engine.reading.detect import sniff_format
from histimport_pipeline.engine.reading.layout import ParsedFile
from histimport_pipeline.engine.reading.opener import open_file

__all__ = ["ParsedFile", "open_file", "sniff_format"]
