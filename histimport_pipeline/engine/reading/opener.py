"""``open_file``, the reading stage's entry point.

It detects the format by content, then hands the file to the reader of that format.
"""

from __future__ import annotations

from pathlib import Path

from histimport_pipeline.engine.reading.delimited import _open_delimited
from histimport_pipeline.engine.reading.detect import _open_binary, _sniff
from histimport_pipeline.engine.reading.encoding import SAMPLE_BYTES, _TextSource
from histimport_pipeline.engine.reading.excel import _open_xlsx
from histimport_pipeline.engine.reading.jsonfiles import _open_json
from histimport_pipeline.engine.reading.layout import ParsedFile, _add_warnings
from histimport_pipeline.engine.settings import DEFAULT_MAX_FIELD_BYTES
from histimport_pipeline.engine.spec import DatasetSpec


def open_file(
    path: Path,
    spec: DatasetSpec,
    *,
    batch_size: int = 10_000,
    max_field_bytes: int = DEFAULT_MAX_FIELD_BYTES,
) -> ParsedFile:
    """Open a data file for the dataset: detect its layout, map its headers, ready its rows.

    Args:
        path: the file; its format is decided by content (see ``sniff_format``).
        spec: the dataset; ``spec.encoding``, ``spec.delimiter`` and ``spec.sheet`` override
            detection, and its columns drive the header mapping.
        batch_size: records per list yielded by ``ParsedFile.batches()``.
        max_field_bytes: the largest value (UTF-8 bytes) of a mapped column in delimited text
            or JSON; a larger one, or one holding a NUL byte, makes its row a ``parse`` row
            error naming the column (``HISTIMPORT_MAX_FIELD_BYTES``).

    Returns:
        A ``ParsedFile`` with ``info`` filled in; its rows are read lazily.

    Raises:
        UnsupportedFormatError: ``.xls``, encrypted, macro-enabled, binary or bomb-like files.
        EncodingError: bytes invalid in the declared or detected encoding (with byte offset).
        HeaderError: missing required, duplicate or empty headers (all named at once).
        FileError: any other file-level problem (not found, empty, broken JSON...).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if max_field_bytes < 1:
        raise ValueError(f"max_field_bytes must be at least 1, got {max_field_bytes}")
    fh = _open_binary(path)
    try:
        head = fh.read(SAMPLE_BYTES)
        fmt, suffix_note = _sniff(path, fh, head)
        if fmt == "xlsx":
            fh.close()
            return _open_xlsx(path, spec, batch_size, suffix_note)
        text = _TextSource.detect(path, fh, head, spec.encoding)
        if fmt == "csv":
            info, rows = _open_delimited(path, spec, text, head, max_field_bytes)
        else:
            info, rows = _open_json(path, spec, text, fmt, max_field_bytes)
    except BaseException:
        fh.close()
        raise
    if suffix_note:
        info = _add_warnings(info, [suffix_note])
    return ParsedFile(info, rows, [fh.close], batch_size, position=fh.tell)
