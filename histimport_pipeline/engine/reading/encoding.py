"""Text encodings: BOM, UTF-16 without BOM, strict UTF-8, else Windows-1252 by rule.

``_TextSource`` decodes a text file strictly and incrementally (absolute byte offsets in
its errors) and splits it into lines the way a delimited file breaks records.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from histimport_pipeline.engine.errors import EncodingError, FileError

#: Bytes read from the start of a file to detect its format, encoding and dialect.
SAMPLE_BYTES = 64 * 1024
#: Bytes decoded at a time while streaming text.
CHUNK_BYTES = 64 * 1024
_BOMS: tuple[tuple[bytes, str], ...] = (
    # UTF-32 first: its little-endian BOM starts with UTF-16's.
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
#: Line breaks to str.splitlines that are not line breaks in a delimited file.
_OTHER_BREAKS = ("\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")


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
        # Only a misread file needs the detector: not imported with every text file.
        from charset_normalizer import from_bytes

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
