"""Format detection by content: delimited text, XLSX, JSON array or NDJSON.

The file name is only compared with the content (a warning when they disagree). OLE2
files (``.xls``, encrypted workbooks), macro or binary workbooks, other zips, zip bombs
and binary files are refused here, before anything is parsed.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import IO

from histimport_pipeline.engine.errors import FileError, UnsupportedFormatError
from histimport_pipeline.engine.reading.encoding import (
    _LINE_BREAK,
    CHUNK_BYTES,
    SAMPLE_BYTES,
    _bom_codec,
    _utf16_without_bom,
)

#: Refuse an XLSX whose members would decompress to more than this in total.
MAX_XLSX_UNCOMPRESSED_BYTES = 1024**3
#: Refuse an XLSX with a member compressed more than this many times...
MAX_COMPRESSION_RATIO = 100
#: ...when that member decompresses to at least this much (tiny parts compress well honestly).
RATIO_CHECK_MIN_BYTES = 1024 * 1024

#: A text sample with more than this share of control bytes (NUL and the like) is binary.
MAX_CONTROL_SHARE = 0.08

_OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_BINARY_CONTROLS = bytes(b for b in range(0x20) if b not in b"\t\n\x0b\x0c\r") + b"\x7f"
_SAVE_AS_HINT = "Open it in Excel or LibreOffice and save it as .xlsx or as CSV (UTF-8)"


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
