"""pyarrow and numpy helpers: a block's columns in binary COPY form, arrays from buffers."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

_NULL = struct.pack(">i", -1)

BoolArray = npt.NDArray[np.bool_]


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


def _null_mask(values: Sequence[Any]) -> BoolArray | None:
    mask = np.fromiter((v is None for v in values), dtype=np.bool_, count=len(values))
    return mask if mask.any() else None


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
