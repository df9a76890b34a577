"""A streaming reader of ``multipart/form-data``: the file part goes straight to the
receiver the caller opens for it, piece by piece as the request arrives, so an upload of any
size takes flat memory and never waits in a temporary file of its own.

Text fields (at most :data:`MAX_FIELDS`, each at most :data:`MAX_FIELD_BYTES`) are
collected; they must come before the file part when the receiver needs them (the page's form
puts ``dataset`` first). One file part per request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from histimport_pipeline.engine.uploads import UploadError

MAX_FIELDS = 20
MAX_FIELD_BYTES = 16 * 1024


class Receiver(Protocol):
    """Where a file part's bytes go."""

    def write(self, chunk: bytes) -> None: ...
    def abort(self) -> None: ...


class _Form:
    """The parser's callbacks: headers of each part, text fields, the file part's bytes."""

    def __init__(self, open_file: Callable[[dict[str, str], str], Receiver]) -> None:
        self.open_file = open_file
        self.fields: dict[str, str] = {}
        self.receiver: Receiver | None = None
        self.files = 0
        #: Whether the closing boundary arrived: a body cut short is not a whole file.
        self.complete = False
        self._header: list[bytes] = []
        self._value: list[bytes] = []
        self._disposition = b""
        self._text = bytearray()
        self._sink: Receiver | None = None
        self._name = ""

    def on_part_begin(self) -> None:
        self._disposition, self._text, self._sink, self._name = b"", bytearray(), None, ""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header.append(data[start:end])

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value.append(data[start:end])

    def on_header_end(self) -> None:
        if b"".join(self._header).lower() == b"content-disposition":
            self._disposition = b"".join(self._value)
        self._header, self._value = [], []

    def on_headers_finished(self) -> None:
        _kind, options = parse_options_header(self._disposition)
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in options:
            self.files += 1
            if self.files > 1:
                raise UploadError("send one file per upload")
            raw_name = options[b"filename"].decode("utf-8", "replace")
            self._sink = self.receiver = self.open_file(self.fields, raw_name)
        elif len(self.fields) >= MAX_FIELDS:
            raise UploadError(f"the form has more than {MAX_FIELDS} fields")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._sink is not None:
            self._sink.write(data[start:end])
            return
        self._text += data[start:end]
        if len(self._text) > MAX_FIELD_BYTES:
            raise UploadError(f"form field {self._name!r} is longer than {MAX_FIELD_BYTES} bytes")

    def on_end(self) -> None:
        self.complete = True

    def on_part_end(self) -> None:
        if self._sink is None and self._name:
            self.fields[self._name] = self._text.decode("utf-8", "replace")


async def read_form(
    content_type: str,
    body: AsyncIterator[bytes],
    open_file: Callable[[dict[str, str], str], Receiver],
) -> tuple[dict[str, str], Receiver | None]:
    """Read a ``multipart/form-data`` body.

    Args:
        content_type: the request's ``Content-Type`` (it carries the boundary).
        body: the request body as it arrives.
        open_file: called with the fields read so far and the client's file name when the
            file part begins; returns where its bytes go.

    Returns:
        The text fields, and the receiver of the file part (``None``: there was none).

    Raises:
        UploadError: not a multipart form, a second file, too many or too long fields, or
            whatever ``open_file`` or the receiver refuse. The receiver is aborted.
    """
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise UploadError("send the file as multipart/form-data (a form with a file field)")
    form = _Form(open_file)
    parser = MultipartParser(boundary, {name: getattr(form, name) for name in _CALLBACKS})  # type: ignore[arg-type]
    try:
        async for chunk in body:
            parser.write(chunk)
        parser.finalize()
        if not form.complete:
            raise UploadError(
                "the upload ended before the form's closing boundary (was the connection "
                "cut?); nothing was kept: send it again"
            )
    except MultipartParseError:
        if form.receiver is not None:
            form.receiver.abort()
        raise UploadError("the upload is not a well-formed multipart form") from None
    except BaseException:
        if form.receiver is not None:
            form.receiver.abort()
        raise
    return form.fields, form.receiver


_CALLBACKS = (
    "on_part_begin",
    "on_header_field",
    "on_header_value",
    "on_header_end",
    "on_headers_finished",
    "on_part_data",
    "on_part_end",
    "on_end",
)
