"""Whether the columnar reader may take a file: its layout, and one scan of its quoting."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from histimport_pipeline.engine.models import FileInfo
from histimport_pipeline.engine.settings import DEFAULT_MAX_FIELD_BYTES
from histimport_pipeline.engine.spec import DatasetSpec

#: Bytes scanned at a time when checking a file's quoting.
SCAN_BYTES = 4 * 1024 * 1024
_UTF8 = ("utf-8", "utf-8-sig")
_QUOTING_PROBLEM = "malformed quoting, or a quote character inside an unquoted field"


class Declined(Exception):
    """The columnar reader cannot promise the Python path's outcome for this file."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decline_reason(spec: DatasetSpec, info: FileInfo, dialect: str) -> str | None:
    """Why the columnar reader does not take this file, or ``None`` when it may.

    It takes delimited text in UTF-8 (with or without BOM) headed by its first record, on
    PostgreSQL. The file's quoting is checked separately (``quoting_is_plain``) because that
    needs a pass over the bytes.
    """
    if dialect != "postgresql":
        return "the columnar reader feeds PostgreSQL's COPY only"
    if info.format != "csv":
        return f"{info.format} files are read by the Python reader"
    if info.encoding not in _UTF8:
        return f"{info.encoding} files are read by the Python reader"
    if spec.encoding is not None and spec.encoding.lower().replace("_", "-") not in (
        "utf-8",
        "utf8",
        "utf-8-sig",
    ):
        return "the spec declares an encoding other than UTF-8"
    if not info.header_present:
        return "files without a header row are read by the Python reader"
    if info.header_row != 1 or not info.delimiter or not info.quotechar:
        return "the file's layout was not detected as plain delimited text"
    return None


@dataclass(frozen=True)
class Quoting:
    """What a scan of a file's bytes found about its quoting."""

    plain: bool
    has_quotes: bool
    reason: str | None = None


def quoting_is_plain(
    path: Path, delimiter: str, quotechar: str, max_field_bytes: int = DEFAULT_MAX_FIELD_BYTES
) -> Quoting:
    """Scan the file once: is every quote character part of a well-formed quoted field?

    Then the ``csv`` module and pyarrow split the records alike, and a line break is a record
    boundary exactly when an even number of quote characters precede it (which lets the file
    be cut into blocks without parsing it). A quoted field opens after the start, a delimiter
    or a line break, and closes before a delimiter, a line break or the end. Anything else
    declines: text after a closing quote (``"ab"c``: the ``csv`` module refuses it, pyarrow
    glues it on), a quote left open, and a quote inside an unquoted field (``5'11"``, which
    both readers take as a character, but which would spoil the count). NUL bytes decline too
    (PostgreSQL cannot store them; the Python path makes their rows ``parse`` row errors).
    ``max_field_bytes`` is the import's field limit: a quoted field too long to hold a value
    under it (or a quote never closed) declines once that much is scanned.
    """
    q = re.escape(quotechar.encode())
    d = re.escape(delimiter.encode())
    boundary = rb"[" + d + rb"\r\n]"
    not_quote = rb"[^" + q + rb"]"
    quoted = q + not_quote + rb"*+(?:" + q + q + not_quote + rb"*+)*+" + q
    # Possessive steps: the scan never backtracks, so it runs in linear time.
    token = rb"(?:" + not_quote + rb"++|(?<=" + boundary + rb")" + quoted
    token += rb"(?=" + boundary + rb"))"
    run = re.compile(rb"(?:" + token + rb")*+", re.DOTALL)
    # A quoted field this long holds a value over max_field_bytes even if every character
    # were a doubled quote: ``blocks()`` would decline it anyway, so decline now.
    limit = 2 * max_field_bytes + 1024
    has_quotes = False
    carry = b"\n"  # the file's start is a field boundary
    with path.open("rb") as fh:
        head = fh.read(3)
        if head != b"\xef\xbb\xbf":
            carry += head
        while True:
            chunk = fh.read(SCAN_BYTES)
            final = not chunk
            if b"\x00" in chunk:
                return Quoting(False, has_quotes, "the file holds NUL bytes")
            has_quotes = has_quotes or quotechar.encode() in chunk or quotechar.encode() in carry
            buf = carry + chunk + (b"\n" if final else b"")
            if not has_quotes:
                carry = buf[-1:]
            else:
                end = run.match(buf, 1).end()  # type: ignore[union-attr]
                if final:
                    if end != len(buf):
                        return Quoting(False, True, _QUOTING_PROBLEM)
                elif len(buf) - end > limit:
                    return Quoting(False, True, _QUOTING_PROBLEM)
                else:
                    # Keep one byte before the unverified rest: lookbehinds need it.
                    carry = buf[end - 1 :]
            if final:
                return Quoting(True, has_quotes)
