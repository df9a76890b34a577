"""Parse stage: detect a file's format, encoding and layout, and stream its records as text.

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
  Windows-1252 under the rules of ``_western_single_byte``; anything else is refused rather
  than guessed. ``FileInfo.encoding_decided_by`` says which rule decided.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from operator import itemgetter
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from charset_normalizer import from_bytes

from histimport_pipeline.engine.errors import (
    EncodingError,
    FileError,
    HeaderError,
    UnsupportedFormatError,
)
from histimport_pipeline.engine.models import FileInfo, RawRow
from histimport_pipeline.engine.settings import DEFAULT_MAX_FIELD_BYTES
from histimport_pipeline.engine.spec import DatasetSpec, fold_header

#: Bytes read from the start of a file to detect its format, encoding and dialect.
SAMPLE_BYTES = 64 * 1024
#: Bytes decoded at a time while streaming text.
CHUNK_BYTES = 64 * 1024
#: Records examined to detect the delimiter and quote character.
DIALECT_SAMPLE_RECORDS = 100
#: Refuse an XLSX whose members would decompress to more than this in total.
MAX_XLSX_UNCOMPRESSED_BYTES = 1024**3
#: Refuse an XLSX with a member compressed more than this many times...
MAX_COMPRESSION_RATIO = 100
#: ...when that member decompresses to at least this much (tiny parts compress well honestly).
RATIO_CHECK_MIN_BYTES = 1024 * 1024
#: A single JSON array element larger than this is refused (it would have to sit in memory).
MAX_JSON_RECORD_CHARS = 64 * 1024 * 1024

#: A text sample with more than this share of control bytes (NUL and the like) is binary.
MAX_CONTROL_SHARE = 0.08

DELIMITERS = (",", "\t", ";", "|")
QUOTECHARS = ('"', "'")

_OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_BOMS: tuple[tuple[bytes, str], ...] = (
    # UTF-32 first: its little-endian BOM starts with UTF-16's.
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_BINARY_CONTROLS = bytes(b for b in range(0x20) if b not in b"\t\n\x0b\x0c\r") + b"\x7f"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
#: Line breaks to str.splitlines that are not line breaks in a delimited file.
_OTHER_BREAKS = ("\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")
_JSON_WS = re.compile(r"[ \t\r\n]*")
_MERGE_CELL = re.compile(
    rb'<(?:\w+:)?mergeCell\b[^>]*?\bref="([A-Za-z]{1,3}[0-9]+(?::[A-Za-z]{1,3}[0-9]+)?)"'
)
_SAVE_AS_HINT = "Open it in Excel or LibreOffice and save it as .xlsx or as CSV (UTF-8)"


class _JsonNumber(str):
    """A JSON number kept as its exact source text (``1.10`` stays ``1.10``)."""


_JSON = json.JSONDecoder(parse_int=_JsonNumber, parse_float=_JsonNumber, parse_constant=_JsonNumber)


class ParsedFile:
    """An opened file: what was detected (``info``) and its records, streamed in batches.

    Use it as a context manager, or call ``close()``; it closes itself once ``batches()`` is
    exhausted.
    """

    def __init__(
        self,
        info: FileInfo,
        rows: Iterator[RawRow],
        closers: Sequence[Callable[[], object]],
        batch_size: int,
    ) -> None:
        self.info = info
        self.rows_read = 0
        self._rows = rows
        self._closers = list(closers)
        self._batch_size = batch_size
        self._started = False

    def batches(self) -> Iterator[list[RawRow]]:
        """Yield the records in lists of at most ``batch_size``, in file order.

        Can be iterated once. ``rows_read`` counts the records yielded so far.

        Raises:
            EncodingError: bytes later in the file are invalid in the detected encoding.
            FileError: the rest of the file cannot be read (e.g. an unbalanced quote).
        """
        if self._started:
            raise RuntimeError("ParsedFile.batches() can be iterated only once")
        self._started = True
        return self._batches()

    def _batches(self) -> Iterator[list[RawRow]]:
        size = self._batch_size
        batch: list[RawRow] = []
        for row in self._rows:
            batch.append(row)
            self.rows_read += 1
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch
        self.close()

    def close(self) -> None:
        """Release the file handles; safe to call more than once."""
        closers, self._closers = self._closers, []
        for close in reversed(closers):
            close()

    def __enter__(self) -> ParsedFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


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
    return ParsedFile(info, rows, [fh.close], batch_size)


def sniff_format(path: Path) -> str:
    """Tell a file's format from its content: ``"csv"``, ``"xlsx"``, ``"json"`` or ``"ndjson"``.

    Zip files holding ``xl/workbook.xml`` are XLSX; text starting with ``[`` followed by an
    object is a JSON array; text whose first line is a JSON object is NDJSON; other text is
    delimited ("csv", whatever the delimiter). The file name is not consulted except to refuse
    ``.xlsm`` / ``.xltm``.

    Raises:
        UnsupportedFormatError: an OLE2 file (``.xls``, encrypted workbook), a macro or binary
            workbook, another kind of zip or binary file, or a zip that looks like a bomb.
        FileError: the file cannot be read.
    """
    with _open_binary(path) as fh:
        return _sniff(path, fh, fh.read(SAMPLE_BYTES))[0]


def _open_binary(path: Path) -> IO[bytes]:
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise FileError(path, "file not found", hint="Check the path and try again") from None
    except IsADirectoryError:
        raise FileError(path, "is a directory, not a file") from None
    except OSError as exc:
        raise FileError(path, f"cannot read the file: {exc.strerror}") from None


def _sniff(path: Path, fh: IO[bytes], head: bytes) -> tuple[str, str | None]:
    """The format by content, and a warning when the file name suggests another one."""
    if head.startswith(_OLE2_MAGIC):
        _refuse_ole2(path, fh)
    if head.startswith(_ZIP_MAGICS):
        _check_workbook_zip(path)
        fmt = "xlsx"
    else:
        fmt = _sniff_text(path, head)
    by_name = {".csv": "csv", ".tsv": "csv", ".xlsx": "xlsx", ".json": "json"}
    by_name |= {".ndjson": "ndjson", ".jsonl": "ndjson"}
    expected = by_name.get(path.suffix.lower())
    note = None
    if expected is not None and expected != fmt:
        note = f"the file name ends in {path.suffix} but its content is {fmt}; read it as {fmt}"
    return fmt, note


def _refuse_ole2(path: Path, fh: IO[bytes]) -> None:
    marker = "EncryptionInfo".encode("utf-16-le")
    fh.seek(0)
    tail = b""
    while chunk := fh.read(CHUNK_BYTES):
        if marker in tail + chunk:
            raise UnsupportedFormatError(
                path,
                "the workbook is encrypted (password-protected); it cannot be read",
                hint="Remove the password in Excel (File > Info > Protect Workbook > Encrypt "
                "with Password, clear it) and save it as .xlsx, or export it to CSV (UTF-8)",
            )
        tail = chunk[-len(marker) :]
    raise UnsupportedFormatError(
        path,
        "this is an old binary Excel 97-2003 file (.xls, OLE2 format), whatever its name says; "
        "histimport reads .xlsx, CSV/TSV, JSON and NDJSON",
        hint=_SAVE_AS_HINT,
    )


def _check_workbook_zip(path: Path) -> None:
    """Refuse zips that are not plain XLSX, or that would decompress to too much.

    Only the central directory is read (plus ``[Content_Types].xml`` once the sizes passed),
    so a zip bomb is refused without decompressing it.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            members = zf.infolist()
            total = 0
            for member in members:
                total += member.file_size
                ratio = member.file_size / max(member.compress_size, 1)
                if member.file_size >= RATIO_CHECK_MIN_BYTES and ratio > MAX_COMPRESSION_RATIO:
                    raise UnsupportedFormatError(
                        path,
                        f"zip member {member.filename!r} would expand {ratio:.0f} times "
                        f"(to {member.file_size} bytes); refused as a possible zip bomb",
                        hint="Re-save the workbook from Excel, or export it to CSV",
                    )
            if total > MAX_XLSX_UNCOMPRESSED_BYTES:
                raise UnsupportedFormatError(
                    path,
                    f"the workbook would expand to {total} bytes, over the limit of "
                    f"{MAX_XLSX_UNCOMPRESSED_BYTES}; refused",
                    hint="Export the sheet to CSV, which is streamed without this limit",
                )
            names = {m.filename for m in members}
            content_types = ""
            if "[Content_Types].xml" in names:
                with zf.open("[Content_Types].xml") as part:
                    content_types = part.read(1024 * 1024).decode("utf-8", "replace")
    except zipfile.BadZipFile as exc:
        raise UnsupportedFormatError(
            path, f"looks like a zip file but cannot be opened ({exc})", hint=_SAVE_AS_HINT
        ) from None
    if (
        "xl/vbaProject.bin" in names
        or "macroEnabled" in content_types
        or path.suffix.lower() in (".xlsm", ".xltm")
    ):
        raise UnsupportedFormatError(
            path,
            "this is a macro-enabled workbook (.xlsm, contains VBA); histimport does not open "
            "workbooks with macros",
            hint="Save a copy as 'Excel Workbook (.xlsx)' (macros are dropped) or as CSV",
        )
    if "xl/workbook.bin" in names:
        raise UnsupportedFormatError(
            path, "this is a binary Excel workbook (.xlsb)", hint=_SAVE_AS_HINT
        )
    if "xl/workbook.xml" not in names:
        raise UnsupportedFormatError(
            path,
            "this is a zip archive but not an Excel workbook (no xl/workbook.xml)",
            hint="Unzip it and import the data file inside, or save the sheet as .xlsx or CSV",
        )


def _sniff_text(path: Path, head: bytes) -> str:
    codec, bom = _bom_codec(head)
    if codec is None:
        codec = _utf16_without_bom(head)
    if codec is None:
        if head.startswith(b"\x1f\x8b"):
            raise UnsupportedFormatError(
                path, "this is a gzip-compressed file", hint="Decompress it first"
            )
        if head.startswith(b"%PDF") or _control_share(head) > MAX_CONTROL_SHARE:
            raise UnsupportedFormatError(
                path,
                "this looks like a binary file, not text, XLSX or JSON",
                hint="Export the data as CSV (UTF-8), .xlsx or JSON",
            )
        # Structural characters are ASCII in every encoding still possible here.
        codec = "latin-1"
    text = head[bom:].decode(codec, errors="replace").lstrip(" \t\r\n")
    eof = len(head) < SAMPLE_BYTES
    if text[:200].lower().startswith(("<!doctype html", "<html", "<?xml", "<table")):
        raise UnsupportedFormatError(
            path,
            "this is an HTML or XML document (some tools export such files as .xls)",
            hint=_SAVE_AS_HINT,
        )
    if text.startswith("["):
        rest = text[1:].lstrip(" \t\r\n")
        if rest[:1] in ("{", "]", ""):
            return "json"
        return "csv"
    if text.startswith("{"):
        newline = _LINE_BREAK.search(text)
        if newline is None and not eof:
            return "ndjson"
        first = text[: newline.start()] if newline else text
        try:
            value = json.loads(first)
        except ValueError:
            return "json"  # an object spread over lines: reported as "not an array" later
        return "ndjson" if isinstance(value, dict) else "json"
    return "csv"


def _control_share(head: bytes) -> float:
    """The share of the sample's bytes that are control characters text does not use.

    Tab, line feed, vertical tab, form feed and carriage return are left out. A stray NUL in
    a text file is a fraction of a per cent of it (and a row error later); executables hold
    such bytes by the tens of per cent, compressed or random data about 11 per cent.
    """
    if not head:
        return 0.0
    return sum(head.count(byte) for byte in _BINARY_CONTROLS) / len(head)


def _bom_codec(head: bytes) -> tuple[str | None, int]:
    for bom, codec in _BOMS:
        if head.startswith(bom):
            return codec, len(bom)
    return None, 0


def _utf16_without_bom(head: bytes) -> str | None:
    """UTF-16 text without a BOM shows NUL as every other byte for ASCII characters."""
    sample = head[: len(head) - len(head) % 2]
    if len(sample) < 4:
        return None
    half = len(sample) // 2
    even_nul = sample[0::2].count(0)
    odd_nul = sample[1::2].count(0)
    if odd_nul > 0.3 * half and even_nul < 0.05 * half:
        return "utf-16-le"
    if even_nul > 0.3 * half and odd_nul < 0.05 * half:
        return "utf-16-be"
    return None


class _TextSource:
    """A text file's bytes decoded strictly and incrementally, with absolute byte offsets."""

    def __init__(
        self, path: Path, fh: IO[bytes], codec: str, start: int, name: str, decided_by: str
    ) -> None:
        self.path = path
        self.fh = fh
        self.codec = codec
        self.start = start
        self.name = name
        #: How the encoding was chosen, recorded as ``FileInfo.encoding_decided_by``.
        self.decided_by = decided_by
        self.warnings: list[str] = []

    @classmethod
    def detect(cls, path: Path, fh: IO[bytes], head: bytes, declared: str | None) -> _TextSource:
        """Pick the encoding: ``declared`` (the spec's), else BOM, UTF-16's NUL pattern, strict
        UTF-8, else Windows-1252 / Latin-1 by the rules of ``_western_single_byte``.

        Real exports are UTF-8, UTF-16, Windows-1252 or Latin-1, so only those are candidates;
        the way the encoding was chosen is kept as ``decided_by``, and a single-byte choice
        also adds a warning.

        Raises:
            EncodingError: the sample is invalid in the declared encoding, or no candidate
                decides it (the message names the candidates and the spec's ``encoding:``).
            FileError: the declared encoding is unknown.
        """
        eof = len(head) < SAMPLE_BYTES
        bom_codec, bom_len = _bom_codec(head)
        if declared is not None:
            try:
                codec = codecs.lookup(declared).name
            except LookupError:
                raise FileError(
                    path,
                    f"unknown encoding {declared!r} in the dataset spec",
                    hint="Fix `encoding:` in the dataset spec (e.g. utf-8, cp1252, utf-16)",
                ) from None
            how = f"declared in the dataset spec (encoding: {declared})"
            if bom_codec is not None and bom_codec.removesuffix("-sig") == codec:
                source = cls(path, fh, codec, bom_len, bom_codec, how)
            else:
                source = cls(path, fh, codec, 0, codec, how)
            source.check_sample(head, eof)
            return source
        if bom_codec is not None:
            codec = bom_codec.removesuffix("-sig")
            source = cls(path, fh, codec, bom_len, bom_codec, "byte order mark")
            source.check_sample(head, eof)
            return source
        utf16 = _utf16_without_bom(head)
        if utf16 is not None:
            how = "UTF-16 without BOM: every other byte of the ASCII text is NUL"
            source = cls(path, fh, utf16, 0, utf16, how)
            source.check_sample(head, eof)
            return source
        utf8 = cls(path, fh, "utf-8", 0, "utf-8", "valid UTF-8")
        try:
            utf8.check_sample(head, eof)
        except EncodingError as not_utf8:
            codec, decided_by = _western_single_byte(path, head, eof, not_utf8)
            source = cls(path, fh, codec, 0, codec, decided_by)
            source.warnings.append(
                f"the file is not UTF-8; it was read as {codec} ({decided_by}). If accented "
                "letters look wrong, set `encoding:` in the dataset spec to the file's encoding"
            )
            return source
        return utf8

    def check_sample(self, head: bytes, eof: bool) -> None:
        """Decode the sample strictly; raise ``EncodingError`` at the first bad byte."""
        decoder = codecs.getincrementaldecoder(self.codec)(errors="strict")
        try:
            decoder.decode(head[self.start :], eof)
        except UnicodeDecodeError as exc:
            raise self._error(self.start + exc.start, exc) from None

    def sample_text(self, head: bytes) -> str:
        """The sample decoded (a partial character at its end is left out)."""
        decoder = codecs.getincrementaldecoder(self.codec)(errors="strict")
        return decoder.decode(head[self.start :], len(head) < SAMPLE_BYTES)

    def chunks(self) -> Iterator[str]:
        """The whole text, decoded chunk by chunk from the start.

        Raises:
            EncodingError: with the absolute byte offset of the first invalid byte.
        """
        self.fh.seek(self.start)
        consumed = self.start
        decoder = codecs.getincrementaldecoder(self.codec)(errors="strict")
        while True:
            data = self.fh.read(CHUNK_BYTES)
            final = not data
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(data, final)
            except UnicodeDecodeError as exc:
                # exc.start counts from the bytes the decoder still held from the last chunk.
                raise self._error(consumed - pending + exc.start, exc) from None
            consumed += len(data)
            if text:
                yield text
            if final:
                return

    def lines(self) -> Iterator[str]:
        """The text split after each ``\\r\\n``, ``\\r`` or ``\\n`` (kept), nothing else."""
        return _split_lines(self.chunks())

    def _error(self, offset: int, exc: UnicodeDecodeError) -> EncodingError:
        bad = exc.object[exc.start : exc.start + 4].hex(" ")
        return EncodingError(
            self.path,
            f"invalid {self.name} bytes ({bad}...): {exc.reason}",
            offset=offset,
            hint="Re-save the file in one encoding (UTF-8 is best), or set `encoding:` in "
            "the dataset spec to the file's real encoding",
        )


#: Bytes Windows-1252 leaves undefined (Python's cp1252 refuses them; Latin-1 maps them to
#: C1 control characters, which text never holds).
_CP1252_UNDEFINED = frozenset(b"\x81\x8d\x8f\x90\x9d")
#: Western words with accents have plain letters too; when more than this share of a
#: sample's accented words have none (and three letters or more), it is another alphabet
#: (Cyrillic, Greek...) misread.
MAX_FOREIGN_WORDS = 0.3
_WORD = re.compile(r"[^\W\d_]+")
#: Symbols that Western text never puts between two letters, but that other code pages'
#: letters turn into when read as Windows-1252 (Polish ą ł ż Ł Ą Ż read as ¹ ³ ¿ £ ¥ ¯).
_SYMBOLS = "€†‡‰•™¡¢£¤¥¦§©¬®¯°±²³¶¹¼½¾¿\u00d7÷"
_SYMBOL_IN_WORD = re.compile(f"(?<=[^\\W\\d_])[{_SYMBOLS}](?=[^\\W\\d_])")


def _western_single_byte(
    path: Path, head: bytes, eof: bool, not_utf8: EncodingError
) -> tuple[str, str]:
    """Windows-1252 or refusal for a sample that is not UTF-8 (and has no BOM, no UTF-16).

    Windows-1252 and Latin-1 give the same text except for bytes 0x80-0x9F, which are
    letters and punctuation (the euro sign, curly quotes, dashes, Œ, Š...) in Windows-1252 and C1
    control characters in Latin-1. So: without any such byte both read alike and
    Windows-1252 is taken; with some, Windows-1252 reads them as text and Latin-1 as control
    characters, so Windows-1252 wins. A byte Windows-1252 leaves undefined (0x81, 0x8D,
    0x8F, 0x90, 0x9D) is a control character in Latin-1 too: no candidate fits, refused.
    Finally the reading is checked: a file in another code page (Cyrillic, Greek, Polish)
    decodes cleanly as Windows-1252 but reads as nonsense (see ``_misread_alphabet``), and is
    refused rather than loaded garbled; charset-normalizer's guess is only named in the
    message.

    Returns:
        The codec name and how it was decided.

    Raises:
        EncodingError: no candidate decides the file.
    """
    candidates = "UTF-8, UTF-16, Windows-1252 (cp1252) and Latin-1 (latin-1)"
    hint = (
        "Re-save the file as UTF-8, or set `encoding:` in the dataset spec to its real "
        "encoding (e.g. `encoding: cp1252`, `encoding: latin-1`, `encoding: cp1250`)"
    )
    undefined = next((i for i, byte in enumerate(head) if byte in _CP1252_UNDEFINED), None)
    if undefined is not None:
        raise EncodingError(
            path,
            f"the file is not valid UTF-8 (byte offset {not_utf8.offset}) and no candidate "
            f"encoding fits it: byte 0x{head[undefined]:02x} (at offset {undefined}) is "
            "undefined in Windows-1252 and a control character in Latin-1. Candidates were "
            + candidates,
            offset=undefined,
            hint=hint,
        )
    decoder = codecs.getincrementaldecoder("cp1252")(errors="strict")
    text = decoder.decode(head, eof)
    if any(0x80 <= byte <= 0x9F for byte in head):
        decided_by = (
            "not UTF-8; bytes 0x80-0x9f are present, which are text in cp1252 and control "
            "characters in latin-1"
        )
    else:
        decided_by = "not UTF-8; no byte in 0x80-0x9f, so cp1252 and latin-1 read it alike"
    misread = _misread_alphabet(text)
    if misread is not None:
        best = from_bytes(head).best()
        suggestion = f"; a detector suggests {best.encoding}" if best is not None else ""
        raise EncodingError(
            path,
            f"the file is not valid UTF-8, and read as Windows-1252 or Latin-1 {misread}"
            f"{suggestion}: it is probably in another encoding. Candidates were {candidates}",
            offset=not_utf8.offset,
            hint=hint,
        )
    return "cp1252", decided_by


def _misread_alphabet(text: str) -> str | None:
    """Why a Windows-1252 reading looks like another alphabet misread, or ``None``.

    Western-European words mix accented letters with plain ones (``été``, ``Größe``), and
    Western text puts no symbol such as ``¹ ³ ¿ £`` between two letters. Other alphabets read
    as Windows-1252 become words made only of accented letters (Cyrillic ``мир`` reads
    ``ìèð``, Greek likewise) or words with symbols inside (Polish ``ząb`` reads ``z¹b``).
    """
    accented = foreign = 0
    for word in _WORD.findall(text):
        if word.isascii():
            continue
        accented += 1
        if len(word) >= 3 and not any(char.isascii() for char in word):
            foreign += 1
    if foreign and foreign > MAX_FOREIGN_WORDS * accented:
        return (
            f"{foreign} of its {accented} words with accents would have no plain letter at "
            "all, as when another alphabet is misread"
        )
    inside = len(_SYMBOL_IN_WORD.findall(text))
    if inside and inside > 0.05 * accented:
        return f"it would have symbols such as ¹ ³ ¿ inside {inside} words"
    return None


def _split_lines(chunks: Iterator[str]) -> Iterator[str]:
    rest = ""
    for text in chunks:
        buf = rest + text
        # Eight substring scans are several times faster than one character-class regex.
        if not any(char in buf for char in _OTHER_BREAKS):
            # Without the other characters str.splitlines breaks at, it splits exactly like
            # _LINE_BREAK, in C. An unfinished last line, or one ending in "\r" (maybe half of
            # a "\r\n"), waits for the next chunk.
            lines = buf.splitlines(keepends=True)
            rest = lines.pop() if lines and not lines[-1].endswith("\n") else ""
            yield from lines
            continue
        # A trailing "\r" may be the first half of a "\r\n" that the next chunk completes.
        search_end = len(buf) - 1 if buf.endswith("\r") else len(buf)
        start = 0
        for brk in _LINE_BREAK.finditer(buf, 0, search_end):
            yield buf[start : brk.end()]
            start = brk.end()
        rest = buf[start:]
    if rest:
        yield rest


def _open_delimited(
    path: Path, spec: DatasetSpec, text: _TextSource, head: bytes, max_field_bytes: int
) -> tuple[FileInfo, Iterator[RawRow]]:
    delimiter, quotechar = _detect_dialect(
        text.sample_text(head), len(head) < SAMPLE_BYTES, spec.delimiter
    )
    records = _records(path, text, delimiter, quotechar, max_field_bytes)
    first = next(records, None)
    if first is None:
        raise HeaderError(path, "the file is empty: no header row", hint="Check the export")
    _, header_fields, _ = first
    if isinstance(header_fields, str):
        raise HeaderError(path, f"cannot read the header row: {header_fields}", row=1)
    layout = _Layout.build(path, spec, tuple(header_fields), header_row=1)
    info = FileInfo(
        path=str(path),
        format="csv",
        encoding=text.name,
        encoding_decided_by=text.decided_by,
        delimiter=delimiter,
        quotechar=quotechar,
        header_row=1,
        sheet=None,
        headers=layout.headers,
        mapping=layout.mapping,
        extra_headers=layout.extra_headers,
        warnings=(*text.warnings, *layout.warnings),
    )

    def rows() -> Iterator[RawRow]:
        # Layout.row inlined for the usual full-width record: this loop runs once per record.
        names, pick, width = layout._names, layout._pick, len(layout.headers)
        for number, fields, suspect in records:
            if isinstance(fields, str):
                yield layout.error_row(number, (), fields)
            elif len(fields) != width:
                yield layout.row(number, fields, pad=None)
            elif suspect and (bad := layout.field_error(number, fields, max_field_bytes)):
                yield bad
            else:
                raw = tuple(fields)
                yield RawRow(number, None, raw, names=names, cells=pick(raw))

    return info, rows()


def _csv_field_ceiling(max_field_bytes: int) -> int:
    """The ``csv`` module's field size limit (characters) used with ``max_field_bytes``.

    A field between the two is read whole and becomes a row error; only a field past the
    ceiling (most likely a quote never closed) stops the file, which bounds the memory an
    unbalanced quote can take.
    """
    return 2 * max_field_bytes + 1024


def _records(
    path: Path, text: _TextSource, delimiter: str, quotechar: str, max_field_bytes: int
) -> Iterator[tuple[int, list[str] | str, bool]]:
    """Number the non-blank records from 1; a record that cannot be split gives its error.

    The flag is set on a record that may hold a NUL byte or a field over ``max_field_bytes``
    (a cheap test on the whole record; ``_Layout.field_error`` looks closer).
    """
    ceiling = _csv_field_ceiling(max_field_bytes)
    # The limit is process-wide: only ever raise it, so concurrent imports never lower it
    # under each other. Each import checks its own ``max_field_bytes`` per field.
    if csv.field_size_limit() < ceiling:
        csv.field_size_limit(ceiling)
    long_record = max_field_bytes // 4  # characters; UTF-8 has at most 4 bytes per character
    reader = csv.reader(
        text.lines(), delimiter=delimiter, quotechar=quotechar, doublequote=True, strict=True
    )
    number = 0
    while True:
        # One ``try`` around the whole loop rather than around each ``next``: after a csv.Error
        # the reader resumes with the next line, so the loop simply starts again.
        try:
            for fields in reader:
                joined = "".join(fields)
                # Blank: every field empty or whitespace, i.e. no non-space character at all.
                if joined.strip():
                    number += 1
                    yield number, fields, len(joined) > long_record or "\x00" in joined
            return
        except csv.Error as exc:
            number += 1
            message = str(exc)
            if "field larger than field limit" in message:
                raise FileError(
                    path,
                    f"a field runs past {ceiling:,} characters near line {reader.line_num}, "
                    f"far over the limit of {max_field_bytes:,} bytes per field",
                    row=number,
                    hint="Most likely a quote is never closed: look for an unbalanced "
                    f"{quotechar} in this row or the ones just before it. If the field is "
                    "genuine, raise HISTIMPORT_MAX_FIELD_BYTES",
                ) from None
            if "unexpected end of data" in message:
                raise FileError(
                    path,
                    f"cannot split the file into records ({message}) near line {reader.line_num}",
                    row=number,
                    hint="A quote is probably never closed: look for an unbalanced "
                    f"{quotechar} in this row or the ones just before it",
                ) from None
            yield number, f"malformed quoting near line {reader.line_num}: {message}", False


def _detect_dialect(sample: str, complete: bool, delimiter: str | None) -> tuple[str, str]:
    """The delimiter and quote character under which the sample's records line up best.

    Each candidate splits the first records (quotes respected); the winner has more than one
    header field, then the largest share of records with the header's field count, then the
    most fields. Ties go to the earlier candidate: ``"`` before ``'``, then ``, TAB ; |``;
    ``'`` is tried only if some field starts with it.
    """
    lines = list(_split_lines(iter([sample])))
    if not complete and len(lines) > 1:
        lines.pop()  # probably cut off mid-record
    candidates = (delimiter,) if delimiter else DELIMITERS
    best: tuple[tuple[bool, float, int], str, str] | None = None
    for quote in QUOTECHARS:
        for delim in candidates:
            # Apostrophes are common in text; only take ' as the quote when a field opens with it.
            opens = re.compile(f"(?:^|{re.escape(delim)}){re.escape(quote)}", re.MULTILINE)
            if quote != QUOTECHARS[0] and not opens.search(sample):
                continue
            counts = _field_counts(lines, delim, quote)
            if not counts:
                continue
            header, data = counts[0], counts[1:]
            share = sum(c == header for c in data) / len(data) if data else 1.0
            score = (header > 1, share, header)
            if best is None or score > best[0]:
                best = (score, delim, quote)
    if best is None:
        return delimiter or ",", '"'
    return best[1], best[2]


def _field_counts(lines: list[str], delimiter: str, quotechar: str) -> list[int]:
    reader = csv.reader(iter(lines), delimiter=delimiter, quotechar=quotechar, strict=True)
    counts: list[int] = []
    while len(counts) < DIALECT_SAMPLE_RECORDS:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error:
            counts.append(-1)  # never equal to the header's count
            continue
        if "".join(fields).strip():
            counts.append(len(fields))
    return counts


@dataclass(frozen=True)
class _Layout:
    """The header row and the spec column each position maps to."""

    headers: tuple[str, ...]
    columns: tuple[str | None, ...]
    mapping: dict[str, str]
    extra_headers: tuple[str, ...]
    warnings: tuple[str, ...]
    #: The spec columns of the mapped positions, in file order, and the function picking
    #: those positions' cells out of a full-width record.
    _names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _pick: Callable[[tuple[str | None, ...]], Sequence[str | None]] = field(
        init=False, repr=False, compare=False
    )

    @classmethod
    def build(
        cls, path: Path, spec: DatasetSpec, headers: tuple[str, ...], header_row: int | None
    ) -> _Layout:
        """Match headers to columns: exact name, then folded name or alias.

        Raises:
            HeaderError: every empty header, NUL in a header, duplicate and missing required
                column at once.
        """
        match = _header_matcher(spec)
        columns = tuple(match(h) for h in headers)
        problems: list[str] = []
        nul = [i + 1 for i, h in enumerate(headers) if "\x00" in h]
        if nul:
            # Headers are recorded on the import, and database text cannot hold NUL.
            problems.append(f"NUL byte (0x00) in the header of column(s) {_join(map(str, nul))}")
            headers = tuple(h.replace("\x00", "\u2400") for h in headers)
        empty = [i + 1 for i, h in enumerate(headers) if not h.strip()]
        if empty:
            problems.append(f"empty header in column(s) {_join(map(str, empty))}")
        groups: dict[tuple[str, str], list[int]] = {}
        for i, (header, column) in enumerate(zip(headers, columns, strict=True)):
            if header.strip():
                key = ("column", column) if column else ("text", header)
                groups.setdefault(key, []).append(i)
        duplicates = []
        for (_, name), positions in groups.items():
            if len(positions) < 2:
                continue
            if len({headers[i] for i in positions}) == 1:
                numbers = _join(str(i + 1) for i in positions)
                duplicates.append(f"{headers[positions[0]]!r} (columns {numbers})")
            else:
                named = _join(f"{headers[i]!r} (column {i + 1})" for i in positions)
                duplicates.append(f"{named} all name column {name}")
        if duplicates:
            problems.append("duplicate header(s): " + "; ".join(duplicates))
        present = {c for c in columns if c}
        missing = [c for c in spec.required_columns if c not in present]
        if missing:
            problems.append(f"missing required column(s): {', '.join(missing)}")
        if problems:
            shown = ", ".join(repr(h) for h in headers[:30])
            more = f" and {len(headers) - 30} more" if len(headers) > 30 else ""
            raise HeaderError(
                path,
                "; ".join(problems) + f" (the header row is: {shown}{more})",
                row=header_row,
                hint="A column is found by its name, by its name ignoring case, spaces, _ - "
                "and ., or by one of its `aliases`: rename the header in the file or add it "
                "to the column's aliases in the dataset spec; give every column a header",
            )
        extra = tuple(h for h, c in zip(headers, columns, strict=True) if c is None)
        warnings = []
        if extra:
            warnings.append(
                f"column(s) not in the dataset are ignored: {', '.join(map(repr, extra))}"
            )
        absent = [c for c in spec.columns if c not in present]
        if absent:
            warnings.append(
                f"optional column(s) not in the file are read as missing: {', '.join(absent)}"
            )
        return cls(
            headers=headers,
            columns=columns,
            mapping={h: c for h, c in zip(headers, columns, strict=True) if c},
            extra_headers=extra,
            warnings=tuple(warnings),
        )

    def __post_init__(self) -> None:
        positions = [i for i, column in enumerate(self.columns) if column is not None]
        # Precomputed once: ``row`` runs for every record of the file.
        object.__setattr__(self, "_names", tuple(self.columns[i] for i in positions))
        object.__setattr__(self, "_pick", _picker(positions, len(self.columns)))

    def row(self, number: int, cells: Sequence[str | None], pad: str | None) -> RawRow:
        """A record; a field count unlike the header's makes it a row error."""
        raw = tuple(cells)
        width = len(self.headers)
        if len(raw) == width:
            return RawRow(number, None, raw, names=self._names, cells=self._pick(raw))
        values = {
            column: (raw[i] if i < len(raw) else pad)
            for i, column in enumerate(self.columns)
            if column is not None
        }
        return RawRow(number, values, raw, f"row has {len(raw)} fields, header has {width}")

    def error_row(
        self,
        number: int,
        cells: Sequence[str | None],
        error: str,
        column: str | None = None,
    ) -> RawRow:
        """A record that could not be read (in ``column``, if one); its values are all
        ``None``."""
        values: dict[str, str | None] = {c: None for c in self.columns if c is not None}
        return RawRow(number, values, tuple(cells), error, error_column=column)

    def field_error(
        self, number: int, cells: Sequence[str | None], max_field_bytes: int
    ) -> RawRow | None:
        """The record as a row error if a mapped column's value holds a NUL byte or is over
        ``max_field_bytes`` (UTF-8); ``None`` when every value is fine.

        PostgreSQL text cannot store NUL, and SQLite is held to the same rule so that both
        give one outcome. Columns the dataset does not map are not loaded and not checked.
        """
        for header, column, value in zip(self.headers, self.columns, cells, strict=False):
            if column is None or not value:
                continue
            if "\x00" in value:
                problem = (
                    f"the value of column {column!r} (header {header!r}) holds a NUL byte "
                    "(0x00), which a database text value cannot store; remove it from the file"
                )
                return self.error_row(number, cells, problem, column)
            if len(value) > max_field_bytes // 4:
                size = len(value.encode("utf-8", "surrogatepass"))
                if size > max_field_bytes:
                    problem = (
                        f"the value of column {column!r} (header {header!r}) is {size:,} bytes, "
                        f"over the limit of {max_field_bytes:,} bytes per field (raise "
                        "HISTIMPORT_MAX_FIELD_BYTES to load it)"
                    )
                    return self.error_row(number, cells, problem, column)
        return None


def _header_matcher(spec: DatasetSpec) -> Callable[[str], str | None]:
    folded: dict[str, str] = {}
    for name, column in spec.columns.items():
        for label in (name, *column.aliases):
            folded.setdefault(fold_header(label), name)

    def match(header: str) -> str | None:
        if header in spec.columns:
            return header
        return folded.get(fold_header(header)) if header.strip() else None

    return match


def _picker(
    positions: Sequence[int], width: int
) -> Callable[[tuple[str | None, ...]], Sequence[str | None]]:
    """A function from a record of ``width`` cells to the cells at ``positions``, in order."""
    if list(positions) == list(range(width)):
        return _same
    if len(positions) > 1:
        return itemgetter(*positions)
    # itemgetter of one position returns the bare cell, of none it cannot be built.
    return lambda cells: tuple(cells[i] for i in positions)


def _same(cells: tuple[str | None, ...]) -> tuple[str | None, ...]:
    return cells


def _join(items: Iterator[str] | Sequence[str]) -> str:
    parts = list(items)
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _add_warnings(info: FileInfo, warnings: Sequence[str]) -> FileInfo:
    return replace(info, warnings=(*info.warnings, *warnings))


def _open_json(
    path: Path, spec: DatasetSpec, text: _TextSource, fmt: str, max_field_bytes: int
) -> tuple[FileInfo, Iterator[RawRow]]:
    items = _JsonArray(path, text.chunks()).items() if fmt == "json" else _ndjson_items(text)
    first = next(items, None)
    if first is None:
        raise HeaderError(
            path, "the file holds no records, so it has no header", hint="Check the export"
        )
    number, value = first
    if not isinstance(value, dict):
        raise FileError(
            path,
            f"the first record is {_json_kind(value)}, not an object; the keys of the first "
            "object are the headers",
            row=number,
            hint="Export an array of objects, or one object per line (NDJSON)",
        )
    layout = _Layout.build(path, spec, tuple(value), header_row=None)
    match = _header_matcher(spec)
    info = FileInfo(
        path=str(path),
        format=fmt,
        encoding=text.name,
        encoding_decided_by=text.decided_by,
        delimiter=None,
        quotechar=None,
        header_row=None,
        sheet=None,
        headers=layout.headers,
        mapping=layout.mapping,
        extra_headers=layout.extra_headers,
        warnings=(*text.warnings, *layout.warnings),
    )
    known = set(layout.headers)

    def row(number: int, value: object) -> RawRow:
        if isinstance(value, _LineError):
            return layout.error_row(number, (value.line,), value.message)
        if not isinstance(value, dict):
            return layout.error_row(
                number, (_json_text(value),), f"record is {_json_kind(value)}, not an object"
            )
        cells = tuple(_json_text(value[h]) if h in value else None for h in layout.headers)
        late = [k for k in value if k not in known and match(k) is not None]
        if late:
            return layout.error_row(
                number,
                cells,
                f"key(s) {', '.join(map(repr, late))} name dataset columns but are not keys "
                "of the first record, which set the headers",
            )
        return layout.field_error(number, cells, max_field_bytes) or layout.row(
            number, cells, pad=None
        )

    def rows() -> Iterator[RawRow]:
        yield row(number, value)
        for n, item in items:
            yield row(n, item)

    return info, rows()


@dataclass(frozen=True)
class _LineError:
    """An NDJSON line that is not valid JSON."""

    line: str
    message: str


def _ndjson_items(text: _TextSource) -> Iterator[tuple[int, object]]:
    for number, line in enumerate(text.lines(), start=1):
        stripped = line.strip(" \t\r\n")
        if not stripped:
            continue
        try:
            value, end = _JSON.raw_decode(stripped)
            if end != len(stripped):
                raise json.JSONDecodeError("extra data after the JSON value", stripped, end)
        except json.JSONDecodeError as exc:
            yield number, _LineError(stripped, f"line is not valid JSON: {exc}")
            continue
        yield number, value


class _JsonArray:
    """Elements of a top-level JSON array, decoded one at a time from streamed text."""

    def __init__(self, path: Path, chunks: Iterator[str]) -> None:
        self._path = path
        self._chunks = chunks
        self._buf = ""
        self._pos = 0
        self._base = 0  # characters dropped from the front of the buffer
        self._eof = False

    def items(self) -> Iterator[tuple[int, object]]:
        """``(1-based position, decoded value)`` for each element.

        Raises:
            FileError: the text is not one array of values (with the record and character).
        """
        if self._peek() != "[":
            found = self._peek()
            raise FileError(
                self._path,
                "expected a JSON array of objects ('[' first), found "
                + (repr(found) if found else "nothing"),
                hint="Export an array of objects, or one object per line (NDJSON)",
            )
        self._pos += 1
        if self._peek() == "]":
            self._pos += 1
        else:
            index = 0
            while True:
                index += 1
                yield index, self._value(index)
                char = self._peek()
                if char == ",":
                    self._pos += 1
                elif char == "]":
                    self._pos += 1
                    break
                elif char is None:
                    raise self._error(index, "the array is not closed (the file may be cut off)")
                else:
                    raise self._error(index, f"expected ',' or ']' after it, found {char!r}")
        if self._peek() is not None:
            raise self._error(None, "unexpected data after the closing ']'")

    def _value(self, index: int) -> object:
        self._peek()
        while True:
            try:
                value, end = _JSON.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as exc:
                if self._grow():
                    continue
                problem = f"invalid JSON: {exc.msg}"
                if exc.pos >= len(self._buf):
                    problem += " where the file ends (it may be cut off)"
                raise self._error(index, problem, self._base + exc.pos) from None
            # A value reaching the end of the buffer (a number) may continue in the next chunk.
            if end == len(self._buf) and self._grow():
                continue
            self._pos = end
            return value

    def _peek(self) -> str | None:
        while True:
            self._pos = _JSON_WS.match(self._buf, self._pos).end()  # type: ignore[union-attr]
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if not self._read():
                return None

    def _read(self) -> bool:
        if self._eof:
            return False
        text = next(self._chunks, None)
        if text is None:
            self._eof = True
            return False
        if self._pos > CHUNK_BYTES:
            self._base += self._pos
            self._buf = self._buf[self._pos :]
            self._pos = 0
        self._buf += text
        return True

    def _grow(self) -> bool:
        """Read until the unparsed part of the buffer has doubled; False at the end."""
        pending = len(self._buf) - self._pos
        if pending > MAX_JSON_RECORD_CHARS:
            raise self._error(
                None, f"a record is over {MAX_JSON_RECORD_CHARS} characters or not valid JSON"
            )
        target = pending * 2 + 1
        grew = False
        while len(self._buf) - self._pos < target and self._read():
            grew = True
        return grew

    def _error(self, index: int | None, problem: str, char: int | None = None) -> FileError:
        where = f" at character {char}" if char is not None else ""
        return FileError(
            self._path,
            f"{problem}{where}" + (f" (record {index} of the array)" if index else ""),
            row=index,
            hint="Fix the JSON (a validator such as `python -m json.tool` shows the spot)",
        )


def _json_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return str(value)
    return _json_dump(value)


def _json_dump(value: object) -> str:
    """Nested values as compact JSON text, numbers exactly as written in the file."""
    if isinstance(value, _JsonNumber):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{_json_dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_json_dump(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, _JsonNumber):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    return "null" if value is None else "an object"


def _open_xlsx(
    path: Path, spec: DatasetSpec, batch_size: int, suffix_note: str | None
) -> ParsedFile:
    import openpyxl
    from openpyxl.utils.cell import range_boundaries

    if not openpyxl.DEFUSEDXML:
        raise FileError(
            path,
            "refusing to open a workbook without defusedxml protection",
            hint="Install defusedxml and unset OPENPYXL_DEFUSEDXML",
        )
    fh = _open_binary(path)
    closers: list[Callable[[], object]] = [fh.close]
    try:
        try:
            wb = openpyxl.load_workbook(fh, read_only=True, data_only=True, keep_links=False)
        except Exception as exc:  # openpyxl raises many kinds; all mean "cannot open"
            raise UnsupportedFormatError(
                path, f"cannot open the workbook: {exc}", hint=_SAVE_AS_HINT
            ) from None
        closers.append(wb.close)
        ws, warnings = _choose_sheet(path, wb, spec.sheet)
        ws.reset_dimensions()  # a stale <dimension> would cut rows short
        cells = _xlsx_rows(path, ws)
        first = next(cells, None)
        if first is None:
            raise HeaderError(
                path,
                f"sheet {ws.title!r} is empty: no header row",
                hint="Set `sheet:` in the dataset spec if the data is on another sheet",
            )
        header_row, header_cells = first
        layout = _Layout.build(path, spec, tuple(header_cells), header_row=header_row)
        width = len(layout.headers)
        merged = []
        for ref in _merged_ranges(path, ws):
            min_col, _, _, max_row = range_boundaries(ref)
            if max_row >= header_row and min_col <= width:
                merged.append(ref)
        if merged:
            warnings.append(
                f"sheet {ws.title!r} has merged cells {', '.join(merged[:20])}"
                + (f" and {len(merged) - 20} more" if len(merged) > 20 else "")
                + ": only the top-left cell of each holds the value, the others are read as "
                "empty (unmerge and fill them in Excel if the value should repeat)"
            )
        info = FileInfo(
            path=str(path),
            format="xlsx",
            encoding=None,
            delimiter=None,
            quotechar=None,
            header_row=header_row,
            sheet=ws.title,
            headers=layout.headers,
            mapping=layout.mapping,
            extra_headers=layout.extra_headers,
            warnings=(*warnings, *layout.warnings, *([suffix_note] if suffix_note else [])),
        )

        def rows() -> Iterator[RawRow]:
            for number, values in cells:
                if len(values) > width:
                    error = f"row has values in {len(values)} columns, header has {width}"
                    yield layout.error_row(number, values, error)
                else:
                    # Excel leaves out trailing empty cells: they are empty, not missing.
                    yield layout.row(number, values + [""] * (width - len(values)), pad="")

        return ParsedFile(info, rows(), closers, batch_size)
    except BaseException:
        for close in reversed(closers):
            close()
        raise


def _choose_sheet(path: Path, wb: Any, wanted: str | None) -> tuple[Any, list[str]]:
    """The sheet named by the spec (case-insensitively), else the first visible worksheet."""
    sheets = list(wb.worksheets)
    warnings: list[str] = []
    if wanted is not None:
        chosen = next((s for s in sheets if s.title == wanted), None) or next(
            (s for s in sheets if s.title.casefold() == wanted.casefold()), None
        )
        if chosen is None:
            raise FileError(
                path,
                f"the workbook has no sheet named {wanted!r}; its sheets are "
                + ", ".join(repr(s.title) for s in sheets),
                hint="Fix `sheet:` in the dataset spec, or rename the sheet",
            )
        if chosen.sheet_state != "visible":
            warnings.append(
                f"sheet {chosen.title!r} is hidden in the workbook; it was read because the "
                "dataset names it"
            )
        return chosen, warnings
    visible = [s for s in sheets if s.sheet_state == "visible"]
    if not visible:
        raise FileError(
            path,
            "the workbook has no visible worksheet",
            hint="Unhide the data sheet, or name it in `sheet:` in the dataset spec",
        )
    chosen = visible[0]
    hidden = [s.title for s in sheets[: sheets.index(chosen)]]
    if hidden:
        warnings.append(
            f"hidden sheet(s) {', '.join(map(repr, hidden))} skipped; read the first visible "
            f"sheet {chosen.title!r}"
        )
    if len(sheets) > 1:
        warnings.append(
            f"the workbook has {len(sheets)} sheets; read {chosen.title!r} (set `sheet:` in the "
            "dataset spec to choose another)"
        )
    return chosen, warnings


def _xlsx_rows(path: Path, ws: Any) -> Iterator[tuple[int, list[str]]]:
    """``(sheet row number, cell texts without trailing empties)`` for each non-blank row."""
    number = 0
    try:
        for number, values in enumerate(ws.iter_rows(values_only=True), start=1):
            cells = [_cell_text(v) for v in values]
            while cells and cells[-1] == "":
                cells.pop()
            if any(c.strip() for c in cells):
                yield number, cells
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, SyntaxError) as exc:
        raise FileError(
            path,
            f"cannot read sheet {ws.title!r} after row {number}: {exc}",
            hint=_SAVE_AS_HINT,
        ) from None


def _cell_text(value: object) -> str:
    """An Excel value as text: 12.0 -> "12", dates ISO, booleans "true"/"false", empty ""."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    if isinstance(value, datetime):
        if value.time() == time(0) and value.tzinfo is None:
            return value.date().isoformat()
        return value.isoformat()
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
        hours, rest = divmod(int(seconds), 3600)
        text = f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
        return text + (f"{seconds % 1:.6f}"[1:].rstrip("0") if seconds % 1 else "")
    return str(value)


def _merged_ranges(path: Path, ws: Any) -> list[str]:
    """The sheet's merged ranges, found by scanning its XML bytes (read-only mode skips them)."""
    member = getattr(ws, "_worksheet_path", None)
    if not member:
        return []
    found: list[str] = []
    with zipfile.ZipFile(path) as zf, zf.open(member) as src:
        tail = b""
        while chunk := src.read(CHUNK_BYTES):
            buf = tail + chunk
            last = 0
            for hit in _MERGE_CELL.finditer(buf):
                found.append(hit.group(1).decode("ascii").upper())
                last = hit.end()
            tail = buf[max(last, len(buf) - 256) :]
    return found
