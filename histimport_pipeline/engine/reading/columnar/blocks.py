"""``ColumnarFile``: a delimited UTF-8 file read block by block with pyarrow.

The file is cut into blocks at record boundaries, each block parsed by pyarrow, validated
column by column and encoded row-wise for COPY.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from histimport_pipeline.engine.models import FileInfo, RawRow, RowError
from histimport_pipeline.engine.reading.columnar.allocator import release_freed_memory
from histimport_pipeline.engine.reading.columnar.arrays import (
    _EMPTY,
    _NULL,
    BoolArray,
    _bool_array,
    _Column,
    _data_of,
    _fixed_array,
    _index_array,
    _ints,
    _repeated,
)
from histimport_pipeline.engine.reading.columnar.encoders import (
    _PG_EPOCH,
    PY_WHITESPACE,
    _ColumnCodec,
)
from histimport_pipeline.engine.reading.columnar.scan import Declined
from histimport_pipeline.engine.settings import DEFAULT_MAX_FIELD_BYTES
from histimport_pipeline.engine.spec import DatasetSpec
from histimport_pipeline.engine.validation import Validator

#: Bytes of the file parsed per block. A block is validated and encoded as a whole, so this
#: bounds memory (a few dozen times it at the peak, read-ahead, allocator slack and COPY queue
#: included) and sets how often progress is reported. On the flights benchmark 2 MiB blocks
#: peaked at about 260 MiB (8 MiB: 380 MiB) and cost at most a few per cent of speed; about
#: 170 MiB since ``allocator.release_freed_memory``. Smaller blocks peak lower again at the
#: same speed, within noise (in-process: 2 MiB 163 MiB, 1 MiB 143, 768 KiB 137); 512 KiB (131
#: MiB) was slower. A Dagster run, whose floor is about 180 MiB, peaked at 197 MiB with 768
#: KiB blocks and 203 with 1 MiB.
BLOCK_BYTES = 768 * 1024
#: Threads processing a block's columns in parallel (pyarrow's kernels run without the GIL).
COLUMN_THREADS = 2


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
        release_freed_memory()
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
        #: Bytes of the file read so far (a block ahead of the blocks yielded).
        self.bytes_read = 0
        #: The COPY column order, fixed by the first block (see ``_order``).
        self.copy_columns: tuple[str, ...] | None = None

    def update(self, chunk: bytes) -> None:
        """Take in a chunk read from the file (hashed and counted; see ``_pieces``)."""
        self._digest.update(chunk)
        self.bytes_read += len(chunk)

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
        for piece in _pieces(self.path, quote, self.block_bytes, self):
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


def _pieces(path: Path, quote: bytes | None, size: int, reader: Any) -> Iterator[bytes]:
    """The file in pieces of about ``size`` bytes, each ending at a record boundary; every
    chunk read also goes to ``reader.update`` (hashed and counted)."""
    rest = b""
    with path.open("rb") as fh:
        while chunk := fh.read(size):
            reader.update(chunk)
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
