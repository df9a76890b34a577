"""Columnar reader: delimited UTF-8 files parsed with pyarrow and validated column by column.

The Python path (``parse.open_file`` → ``validate.Validator`` → ``load.stage_rows``) reads
every kind of file. This module reads the common big case, a delimited UTF-8 file on
PostgreSQL, several times faster, and gives exactly the same outcome: the same records with
the same source row numbers, the same typed values, the same failed rows with the same
messages, the same counts. It gets there by construction, not by imitation:

* records are split by pyarrow's C++ CSV reader, every value as text, and only files on which
  that reader provably agrees with the ``csv`` module get this far (see ``decline_reason``
  and ``quoting_is_plain``); anything unexpected on the way (a ragged row, invalid UTF-8, a
  field over the import's ``max_field_bytes``) raises :class:`Declined` and the caller starts
  again on the Python path;
* each column's *distinct* texts in a block go through the Validator's own column coercer
  (``validate.column_coercer``), so a value or a failure is whatever the Python path makes of
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

from __future__ import annotations

import hashlib
import logging
import queue
import re
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from psycopg.pq import Format

from histimport_pipeline.engine.models import FileInfo, RawRow, RowError
from histimport_pipeline.engine.settings import DEFAULT_MAX_FIELD_BYTES
from histimport_pipeline.engine.spec import ColumnSpec, ColumnType, DatasetSpec
from histimport_pipeline.engine.validation import ColumnCoercer, Validator, column_coercer

#: Bytes of the file parsed per block. A block is validated and encoded as a whole, so this
#: bounds memory (a few dozen times it at the peak, read-ahead, allocator slack and COPY queue
#: included) and sets how often progress is reported. On the flights benchmark 2 MiB blocks
#: peaked at about 260 MiB (8 MiB: 380 MiB) and cost at most a few per cent of speed.
BLOCK_BYTES = 2 * 1024 * 1024
#: Encoded blocks waiting for the COPY writer thread (bounds memory when the server is slower).
QUEUE_BLOCKS = 1
#: Bytes scanned at a time when checking a file's quoting.
SCAN_BYTES = 4 * 1024 * 1024
#: Every character ``str.strip()`` removes: the Python path strips exactly these.
PY_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
#: Binary COPY framing (PostgreSQL docs, "COPY ... BINARY file format").
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_TRAILER = struct.pack(">h", -1)
_NULL = struct.pack(">i", -1)
_PG_EPOCH = date(2000, 1, 1)
_MICROSECOND = timedelta(microseconds=1)
_UTF8 = ("utf-8", "utf-8-sig")
#: Bytes that start a character in PY_WHITESPACE in UTF-8 (a text without any is stripped).
_MAYBE_WHITESPACE = re.compile(rb"[\t\n\x0b\x0c\r\x1c-\x1f \xc2\xe1\xe2\xe3]")
_QUOTING_PROBLEM = "malformed quoting, or a quote character inside an unquoted field"

BoolArray = npt.NDArray[np.bool_]
#: Threads processing a block's columns in parallel (pyarrow's kernels run without the GIL).
COLUMN_THREADS = 2


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


@dataclass
class Block:
    """One block of records, validated (and encoded when asked)."""

    #: Non-blank records read (the Python path's ``rows_read`` for this block).
    records: int
    #: Rows with a failing column, with the Python path's errors.
    failed: list[tuple[RawRow, RowError]] = field(default_factory=list)
    #: The valid rows as binary COPY tuples (no header or trailer), when encoding; their
    #: columns are ``ColumnarFile.copy_columns``.
    payload: memoryview | None = None

    @property
    def valid(self) -> int:
        """Rows without a failing column."""
        return self.records - len(self.failed)


@dataclass(frozen=True)
class Constant:
    """A column given the same value in every row (``_import_id``, ``_business_date``)."""

    name: str
    value: int | date | None

    def values(self, n: int) -> _Column:
        """The column for ``n`` rows."""
        if self.value is None:
            return _Column.variable(_repeated(_NULL, n))
        if isinstance(self.value, date):
            days = self.value.toordinal() - _PG_EPOCH.toordinal()
            return _Column.fixed(np.full(n, days, dtype=">i4"), None)
        return _Column.fixed(np.full(n, self.value, dtype=">i8"), None)


@dataclass(frozen=True)
class _Column:
    """One column of a block in binary COPY form: fixed-width values or whole fields."""

    #: Big-endian values (``>i8``, ``>i4`` or ``u1``) of a fixed-width type ...
    values: npt.NDArray[Any] | None
    #: ... NULL where set ...
    null: BoolArray | None
    #: ... or, for variable-width types, length-prefixed fields as a binary array.
    fields: pa.Array | None

    @classmethod
    def fixed(cls, values: npt.NDArray[Any], null: BoolArray | None) -> _Column:
        return cls(values, null if null is not None and null.any() else None, None)

    @classmethod
    def variable(cls, fields: pa.Array) -> _Column:
        return cls(None, None, fields)

    @property
    def dense(self) -> bool:
        """Fixed-width with no NULL: every row's field has the same size."""
        return self.values is not None and self.null is None

    def as_fields(self) -> pa.Array:
        if self.fields is not None:
            return self.fields
        assert self.values is not None
        return _fixed_elements(self.values, self.null, self.values.dtype.itemsize)


class ColumnarFile:
    """A delimited UTF-8 file read block by block with pyarrow.

    ``blocks()`` yields :class:`Block` objects whose records, failures and counts are those
    the Python path gives for the same file, or raises :class:`Declined`.
    """

    def __init__(
        self,
        path: Path,
        spec: DatasetSpec,
        info: FileInfo,
        validator: Validator,
        *,
        has_quotes: bool,
        encode: bool,
        constants: Sequence[Constant] = (),
        block_bytes: int | None = None,
        max_field_bytes: int | None = DEFAULT_MAX_FIELD_BYTES,
    ) -> None:
        """Prepare the reader.

        Args:
            path: the file (already checked by ``decline_reason`` and ``quoting_is_plain``).
            spec: the dataset.
            info: what ``parse.open_file`` detected (headers, delimiter, quote character).
            validator: gives failing rows their errors.
            has_quotes: whether the file holds the quote character at all (if not, no value
                can hold a line break and pyarrow may split blocks faster).
            encode: encode the valid rows for COPY (``_source_row``, the spec's columns and
                ``constants``); without it the file is only validated.
            constants: columns with one value for every row, encoded after the others.
            block_bytes: bytes parsed per block (default ``BLOCK_BYTES``).
            max_field_bytes: the import's field limit: a field over it declines (the Python
                reader makes its row a row error); ``None`` for a file already checked.
        """
        self.path = path
        self.spec = spec
        self.info = info
        self.validator = validator
        self.encode = encode
        self.constants = tuple(constants)
        self.has_quotes = has_quotes
        self.block_bytes = block_bytes or BLOCK_BYTES
        self.max_field_bytes = max_field_bytes
        required = set(spec.required_columns)
        self._codecs = [
            _ColumnCodec(name, col, name in required) for name, col in spec.columns.items()
        ]
        by_column = {column: header for header, column in info.mapping.items()}
        self._headers = {name: by_column.get(name) for name in spec.columns}
        self._rows_before = 0
        self._declined: str | None = None
        self._digest = hashlib.sha256()
        #: The COPY column order, fixed by the first block (see ``_order``).
        self.copy_columns: tuple[str, ...] | None = None

    @property
    def sha256(self) -> str:
        """SHA-256 of the bytes read so far: of the whole file once ``blocks()`` is done."""
        return self._digest.hexdigest()

    def blocks(self) -> Iterator[Block]:
        """The file's blocks in order; the next block is parsed while one is processed.

        Raises:
            Declined: the file holds something only the Python path reads faithfully.
        """
        with ThreadPoolExecutor(COLUMN_THREADS, thread_name_prefix="histimport-column") as pool:
            for batch in _read_ahead(self._batches()):
                if isinstance(batch, BaseException):
                    if isinstance(batch, pa.ArrowException):
                        raise Declined(self._declined or f"pyarrow could not read on: {batch}")
                    raise batch
                if batch.num_rows:
                    yield self._block(batch, pool)

    def _batches(self) -> Iterator[pa.RecordBatch]:
        """Each piece of the file parsed by pyarrow into one batch of texts.

        The file is cut into pieces at record boundaries here, rather than streamed through
        pyarrow's own reader, because that reader reads ahead without bound (the whole file
        for a 300 MB one).
        """
        delimiter = self.info.delimiter or ","
        quotechar = self.info.quotechar or '"'

        def on_invalid_row(row: Any) -> str:
            text = str(row.text)
            # A record of only whitespace (and delimiters) is blank: the Python path skips it
            # without counting it, so skipping it here keeps the numbering.
            if quotechar not in text and not text.replace(delimiter, "").strip():
                return "skip"
            self._declined = (
                f"a record has {row.actual_columns} fields where the header has "
                f"{row.expected_columns}"
            )
            return "error"

        parse = pacsv.ParseOptions(
            delimiter=delimiter,
            quote_char=quotechar,
            double_quote=True,
            escape_char=False,
            newlines_in_values=self.has_quotes,
            ignore_empty_lines=True,
            invalid_row_handler=on_invalid_row,
        )
        convert = pacsv.ConvertOptions(
            column_types={h: pa.string() for h in self.info.headers},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
            null_values=[],
            check_utf8=True,
        )
        quote = quotechar.encode() if self.has_quotes else None
        names: list[str] | None = None  # the first piece's header row names the columns
        for piece in _pieces(self.path, quote, self.block_bytes, self._digest):
            read = pacsv.ReadOptions(
                use_threads=False,
                block_size=len(piece) + 1,
                column_names=names,
                encoding="utf8",
            )
            table = pacsv.read_csv(
                pa.BufferReader(piece),
                read_options=read,
                parse_options=parse,
                convert_options=convert,
            )
            if names is None:
                names = list(self.info.headers)
                if table.column_names != names:
                    raise Declined("pyarrow read another header row than the Python reader")
            yield from table.combine_chunks().to_batches()

    def _block(self, batch: pa.RecordBatch, pool: ThreadPoolExecutor) -> Block:
        limit = self.max_field_bytes
        for column in batch.columns if limit is not None else ():
            if len(column) and _ints(pc.binary_length(column)).max() > limit:
                raise Declined(f"a field is over the limit of {limit:,} bytes")
        blank = _blank_rows(batch)
        if blank is not None:
            batch = batch.filter(_bool_array(~blank))
        n = batch.num_rows
        source_rows = np.arange(n, dtype=np.int64) + (self._rows_before + 2)
        self._rows_before += n
        failing: BoolArray | None = None
        columns: dict[str, _Column] = {}

        def process(codec: _ColumnCodec) -> tuple[_Column | None, BoolArray | None]:
            header = self._headers[codec.name]
            texts = batch.column(header) if header is not None else None
            return codec.process(texts, n, encode=self.encode)

        for codec, (column, bad) in zip(self._codecs, pool.map(process, self._codecs), strict=True):
            if column is not None:
                columns[codec.name] = column
            if bad is not None:
                failing = bad if failing is None else failing | bad
        block = Block(records=n)
        if failing is not None and failing.any():
            positions = np.flatnonzero(failing)
            block.failed = self._failed_rows(batch, positions, source_rows)
        else:
            failing = None
        if self.encode and block.valid:
            columns["_source_row"] = _Column.fixed(source_rows.astype(">i8"), None)
            for constant in self.constants:
                columns[constant.name] = constant.values(n)
            if self.copy_columns is None:
                self.copy_columns = _order(columns)
            block.payload = _encode_rows([columns[c] for c in self.copy_columns], failing)
        return block

    def _failed_rows(
        self, batch: pa.RecordBatch, positions: npt.NDArray[np.intp], source_rows: Any
    ) -> list[tuple[RawRow, RowError]]:
        picked = batch.take(_index_array(positions))
        cells = [picked.column(i).to_pylist() for i in range(picked.num_columns)]
        headers = list(self.info.headers)
        mapping = self.info.mapping
        out = []
        for i, position in enumerate(positions):
            raw = tuple(column[i] for column in cells)
            values = {mapping[h]: v for h, v in zip(headers, raw, strict=True) if h in mapping}
            row = RawRow(int(source_rows[position]), values, raw)
            out.append((row, self.validator.row_error(row)))
        return out


def _pieces(path: Path, quote: bytes | None, size: int, digest: Any) -> Iterator[bytes]:
    """The file in pieces of about ``size`` bytes, each ending at a record boundary; every
    byte read also goes into ``digest``."""
    rest = b""
    with path.open("rb") as fh:
        while chunk := fh.read(size):
            digest.update(chunk)
            buf = rest + chunk
            cut = _last_break(buf, quote)
            if cut == 0:  # no boundary yet: one record longer than the piece
                rest = buf
                continue
            yield buf[:cut]
            rest = buf[cut:]
    if rest:
        yield rest


def _last_break(buf: bytes, quote: bytes | None) -> int:
    """Where the last record of ``buf`` starts: just after its last line break outside a
    quoted field (``buf`` starts at a boundary; see ``quoting_is_plain``), 0 when none."""
    at = max(buf.rfind(b"\n"), buf.rfind(b"\r"))
    if at < 0 or quote is None or buf.count(quote, 0, at) % 2 == 0:
        return at + 1
    # The last break is inside a quoted field: find the last one outside, all at once.
    data = np.frombuffer(buf, dtype=np.uint8)
    quotes = np.flatnonzero(data == quote[0])
    breaks = np.flatnonzero((data == 10) | (data == 13))
    outside = breaks[np.searchsorted(quotes, breaks) % 2 == 0]
    return int(outside[-1]) + 1 if len(outside) else 0


def _read_ahead(
    batches: Iterator[pa.RecordBatch],
) -> Iterator[pa.RecordBatch | BaseException]:
    """The batches, the next one read and parsed by a thread while the caller works.

    pyarrow parses without the GIL, so this overlaps parsing with validation. An error is
    yielded (not raised) so the caller can tell pyarrow's from its own.
    """
    ready: queue.Queue[pa.RecordBatch | BaseException | None] = queue.Queue(1)
    stop = threading.Event()

    def run() -> None:
        try:
            for batch in batches:
                if stop.is_set():
                    return
                ready.put(batch)
        except BaseException as exc:  # handed to the consumer
            ready.put(exc)
            return
        ready.put(None)

    thread = threading.Thread(target=run, name="histimport-read", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not None:
            yield item
            if isinstance(item, BaseException):
                return
    finally:
        stop.set()
        while thread.is_alive():  # unblock a reader waiting on a full queue
            with suppress(queue.Empty):
                ready.get(timeout=0.05)
        thread.join()


def _order(columns: dict[str, _Column]) -> tuple[str, ...]:
    """The COPY column order: ``_source_row`` and the columns that are dense in the first
    block, then the others, each group in its given order.

    Dense columns next to each other are encoded as one fixed-size record per row (see
    ``_encode_rows``), so grouping them saves most of the work of joining fields.
    """
    names = list(columns)
    dense = [n for n in names if columns[n].dense]
    dense.sort(key=lambda n: n != "_source_row")
    return (*dense, *(n for n in names if n not in dense))


def _encode_rows(columns: Sequence[_Column], failing: BoolArray | None) -> memoryview:
    """Binary COPY tuples of every row not ``failing``: field count, then each field."""
    n = len(columns[0].values if columns[0].values is not None else columns[0].as_fields())
    parts: list[pa.Array] = []
    run: list[npt.NDArray[Any]] = [np.full(n, len(columns), dtype=">i2")]
    for column in columns:
        if column.dense:
            assert column.values is not None
            run += [np.full(n, column.values.dtype.itemsize, dtype=">i4"), column.values]
            continue
        if run:
            parts.append(_records(run))
            run = []
        parts.append(column.as_fields())
    if run:
        parts.append(_records(run))
    rows = parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, _EMPTY)
    if failing is not None:
        rows = rows.filter(_bool_array(~failing))
    return _data_of(rows)


def _records(arrays: Sequence[npt.NDArray[Any]]) -> pa.Array:
    """Per row, the bytes of each array's value back to back, as a binary array."""
    dtype = np.dtype([(f"f{i}", a.dtype) for i, a in enumerate(arrays)])
    records = np.empty(len(arrays[0]), dtype=dtype)
    for i, values in enumerate(arrays):
        records[f"f{i}"] = values
    return _fixed_array(records, dtype.itemsize)


def _blank_rows(batch: pa.RecordBatch) -> BoolArray | None:
    """Rows whose every field is empty or whitespace (the Python path skips them)."""
    blank: BoolArray | None = None
    for column in batch.columns:
        mask = _ints(pc.binary_length(pc.utf8_trim(column, PY_WHITESPACE))) == 0
        blank = mask if blank is None else blank & mask
        if not blank.any():
            return None
    return blank


class _ColumnCodec:
    """Validates (and encodes) one spec column of a block, as the Validator would."""

    def __init__(self, name: str, spec: ColumnSpec, required: bool) -> None:
        self.name = name
        self.spec = spec
        self.required = required
        self.coerce_column: ColumnCoercer = column_coercer(name, spec, required=required)
        self.nulls = _string_array(list(spec.null_values))
        self.plain_text = spec.type is ColumnType.STRING and not (
            spec.max_length or spec.regex or spec.allowed
        )
        self.encode_values = _value_encoder(spec)

    def process(
        self, texts: pa.Array | None, n: int, *, encode: bool
    ) -> tuple[_Column | None, BoolArray | None]:
        """The column in binary COPY form (when encoding) and the failing rows' mask."""
        if texts is None:
            # Not in the file: missing in every row (a required column would have failed the
            # header check), which the coercer turns into NULL.
            return (_Column.variable(_repeated(_NULL, n)) if encode else None), None
        if self.plain_text and not (encode or self.required):
            return None, None  # a rule-less optional text cannot fail
        data = _data_of(texts).tobytes()
        if self.plain_text and b"'" not in data:  # a quote may mark a neutralised formula
            return self._plain_text(texts, data, encode)
        if self.spec.type is ColumnType.INTEGER:
            fast = self._canonical_integers(texts, data, encode)
            if fast is not None:
                return fast, None
        return self._by_distinct(texts, encode)

    def _plain_text(
        self, texts: pa.Array, data: bytes, encode: bool
    ) -> tuple[_Column | None, BoolArray | None]:
        # The coercer of a rule-less string column: strip (if asked), null values are NULL.
        value = texts
        if self.spec.strip and _MAYBE_WHITESPACE.search(data):
            value = pc.utf8_trim(texts, PY_WHITESPACE)
            data = _data_of(value).tobytes()
        null = self._null_values(value, data)
        null_np = None if null is None else _bools(null)
        bad = null_np if self.required and null_np is not None and null_np.any() else None
        if not encode:
            return None, bad
        return _Column.variable(_text_elements(value, null, null_np)), bad

    def _null_values(self, texts: pa.Array, data: bytes) -> pa.Array | None:
        """Where the texts (whose bytes are ``data``) are null values; ``None`` when none can
        be (a cheap byte test first)."""
        nulls = self.spec.null_values
        empty = "" in nulls and bool((_ints(pc.binary_length(texts)) == 0).any())
        if not empty and not any(v and v.encode() in data for v in nulls):
            return None
        return pc.is_in(texts, value_set=self.nulls)

    def _canonical_integers(self, texts: pa.Array, data: bytes, encode: bool) -> _Column | None:
        """Integers pyarrow's cast reads exactly as the coercer does; ``None`` to decline.

        pyarrow's string-to-int64 cast takes an optional minus sign and ASCII digits (for
        which the coercer returns ``int(text)``) and hexadecimal ``0x..`` (which the coercer
        refuses). So a block without any ``x`` or ``X`` that casts cleanly is read alike;
        anything else (a plus sign, spaces, ``12.0``, an overflow) is left to the coercer.
        When not encoding, the returned column is an empty placeholder.
        """
        if b"x" in data or b"X" in data:
            return None
        null = self._null_values(texts, data)
        if null is not None and self.required:
            return None
        candidates = texts if null is None else pc.if_else(null, _NULL_STRING, texts)
        try:
            values = pc.cast(candidates, pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        if not encode:
            return _Column.fixed(np.zeros(0, dtype=">i8"), None)
        numbers = _ints(values).astype(">i8")
        return _Column.fixed(numbers, None if null is None else _bools(null))

    def _by_distinct(
        self, texts: pa.Array, encode: bool
    ) -> tuple[_Column | None, BoolArray | None]:
        encoded = pc.dictionary_encode(texts)
        distinct = encoded.dictionary.to_pylist()
        values, failing = self.coerce_column(distinct)
        indices = _ints(encoded.indices)
        bad = None
        if failing:
            bad_distinct = np.zeros(len(distinct), dtype=np.bool_)
            bad_distinct[failing] = True
            bad = bad_distinct[indices]
        if not encode:
            return None, bad
        return self.encode_values(values, indices), bad


_Encoder = Callable[[list[Any], npt.NDArray[Any]], _Column]


def _value_encoder(spec: ColumnSpec) -> _Encoder:
    """Distinct typed values (``None`` = NULL) and each row's index into them → the column."""
    kind = spec.type
    if kind is ColumnType.INTEGER:
        return _int8_column
    if kind is ColumnType.DATE:
        return _date_column
    if kind is ColumnType.TIMESTAMP:
        return _timestamp_column
    if kind is ColumnType.BOOLEAN:
        return _bool_column
    if kind is ColumnType.DECIMAL:
        return _numeric_column
    return _str_column


def _null_mask(values: Sequence[Any]) -> BoolArray | None:
    mask = np.fromiter((v is None for v in values), dtype=np.bool_, count=len(values))
    return mask if mask.any() else None


def _fixed_column(values: npt.NDArray[Any], distinct: list[Any], rows: Any) -> _Column:
    null = _null_mask(distinct)
    return _Column.fixed(values[rows], None if null is None else null[rows])


def _int8_column(values: list[Any], rows: npt.NDArray[Any]) -> _Column:
    numbers = np.array([0 if v is None else v for v in values], dtype=">i8")
    return _fixed_column(numbers, values, rows)


def _date_column(values: list[Any], rows: npt.NDArray[Any]) -> _Column:
    epoch = _PG_EPOCH.toordinal()
    days = np.fromiter(
        (0 if v is None else v.toordinal() - epoch for v in values), dtype=">i4", count=len(values)
    )
    return _fixed_column(days, values, rows)


def _timestamp_column(values: list[Any], rows: npt.NDArray[Any]) -> _Column:
    epoch = datetime.combine(_PG_EPOCH, time())
    micros = np.fromiter(
        (0 if v is None else (v - epoch) // _MICROSECOND for v in values),
        dtype=">i8",
        count=len(values),
    )
    return _fixed_column(micros, values, rows)


def _bool_column(values: list[Any], rows: npt.NDArray[Any]) -> _Column:
    flags = np.array([bool(v) for v in values], dtype=np.uint8)
    return _fixed_column(flags, values, rows)


_NUMERIC_DUMPER: Any = None


def _numeric_column(values: list[Any], rows: npt.NDArray[Any]) -> _Column:
    # psycopg's own binary dumper: the bytes the Python path's COPY sends for a Decimal.
    global _NUMERIC_DUMPER
    if _NUMERIC_DUMPER is None:
        import psycopg

        oid = psycopg.adapters.types["numeric"].oid
        _NUMERIC_DUMPER = psycopg.adapters.get_dumper_by_oid(oid, Format.BINARY)(Decimal)
    dump = _NUMERIC_DUMPER.dump
    fields = []
    for value in values:
        if value is None:
            fields.append(_NULL)
        else:
            data = bytes(dump(value))
            fields.append(struct.pack(">i", len(data)) + data)
    return _Column.variable(_binary_array(fields).take(_index_array(rows)))


def _str_column(values: list[Any], rows: npt.NDArray[Any]) -> _Column:
    texts = _string_array(values)
    null_np = _null_mask(values)
    null = None if null_np is None else _bool_array(null_np)
    fields = _text_elements(texts, null, null_np)
    return _Column.variable(fields.take(_index_array(rows)))


def _text_elements(texts: pa.Array, null: pa.Array | None, null_np: BoolArray | None) -> pa.Array:
    """Length-prefixed UTF-8 of each text; NULL where ``null``."""
    lengths = _ints(pc.binary_length(texts))
    body = texts.cast(pa.binary())
    if null is not None and null_np is not None and null_np.any():
        lengths = np.where(null_np, -1, lengths)
        body = pc.if_else(null, _EMPTY, body)
    return pc.binary_join_element_wise(_fixed_array(lengths.astype(">i4"), 4), body, _EMPTY)


def _fixed_array(values: npt.NDArray[Any], width: int) -> pa.Array:
    """A binary array whose elements are the rows of ``values`` as ``width`` raw bytes."""
    data = np.ascontiguousarray(values)
    fixed = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(width), len(data), [None, pa.py_buffer(data)]
    )
    return fixed.cast(pa.binary())


def _fixed_elements(values: npt.NDArray[Any], null: BoolArray | None, width: int) -> pa.Array:
    """Fixed-width big-endian values as length-prefixed fields; NULL (-1, no data) where
    ``null``."""
    records = np.empty(len(values), dtype=[("length", ">i4"), ("value", values.dtype)])
    records["length"] = width
    records["value"] = values
    fields = _fixed_array(records, 4 + width)
    if null is None:
        return fields
    return pc.if_else(_bool_array(null), _NULL_FIELD, fields)


def _repeated(payload: bytes, n: int) -> pa.Array:
    """``payload`` as every one of ``n`` elements."""
    data = np.tile(np.frombuffer(payload, dtype=np.uint8), n)
    return _fixed_array(data.reshape(n, len(payload)), len(payload))


# Arrays are built from buffers: pyarrow's pa.array() and pa.scalar() import pandas on first
# use, which costs a fresh process about 0.4 s.


def _binary_from_parts(sizes: npt.NDArray[np.int32], data: Any) -> pa.Array:
    offsets = np.zeros(len(sizes) + 1, dtype=np.int32)
    np.cumsum(sizes, out=offsets[1:])
    return pa.BinaryArray.from_buffers(
        pa.binary(), len(sizes), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


def _binary_array(items: Sequence[bytes]) -> pa.Array:
    sizes = np.fromiter(map(len, items), dtype=np.int32, count=len(items))
    return _binary_from_parts(sizes, b"".join(items))


def _string_array(items: Sequence[str | None]) -> pa.Array:
    encoded = [b"" if s is None else s.encode("utf-8", "surrogatepass") for s in items]
    sizes = np.fromiter(map(len, encoded), dtype=np.int32, count=len(encoded))
    offsets = np.zeros(len(sizes) + 1, dtype=np.int32)
    np.cumsum(sizes, out=offsets[1:])
    null = _null_mask(items)
    validity = None if null is None else pa.py_buffer(np.packbits(~null, bitorder="little"))
    return pa.StringArray.from_buffers(
        len(items), pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded)), validity
    )


def _bool_array(mask: BoolArray) -> pa.Array:
    packed = np.packbits(mask, bitorder="little")
    return pa.BooleanArray.from_buffers(pa.bool_(), len(mask), [None, pa.py_buffer(packed)])


def _bools(array: pa.Array) -> BoolArray:
    """A boolean array without nulls as numpy."""
    start, n = array.offset, len(array)
    bits = np.frombuffer(array.buffers()[1], dtype=np.uint8)
    return np.unpackbits(bits, count=start + n, bitorder="little")[start:].astype(np.bool_)


def _ints(array: pa.Array) -> npt.NDArray[Any]:
    """The values buffer of an int32 or int64 array as numpy (nulls: arbitrary values)."""
    dtype = np.dtype(np.int64 if array.type == pa.int64() else np.int32)
    return np.frombuffer(
        array.buffers()[1], dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize
    )


def _index_array(positions: npt.NDArray[Any]) -> pa.Array:
    data = np.ascontiguousarray(positions, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(data), [None, pa.py_buffer(data)])


def _data_of(rows: pa.Array) -> memoryview:
    """The bytes of a binary array's elements, back to back (no copy)."""
    offsets = np.frombuffer(
        rows.buffers()[1], dtype=np.int32, count=len(rows) + 1, offset=rows.offset * 4
    )
    return memoryview(rows.buffers()[2])[int(offsets[0]) : int(offsets[-1])]


_EMPTY = _binary_array([b""])[0]
_NULL_FIELD = _binary_array([_NULL])[0]
_NULL_STRING = _string_array([None])[0]


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
