"""Uploads: a file received over HTTP, put into the inbox the way a careful person drops one.

The bytes are written under a hidden temporary name in ``inbox/.uploads`` (the inbox scan
ignores dot-files), counted against a size limit and hashed as they arrive. Then the file is
moved into the dataset's own inbox folder (``inbox/<dataset>/``, which routes every file in it
to the dataset) in one step that never replaces a file waiting there. Who uploaded it is kept
beside it in ``.<name>.upload.json``, so the sensor can name the uploader as the import's user.

The name a client sends is never used as a path: only its last component is kept, and it must
be a plain file name with one of the dataset's extensions.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histimport_pipeline.engine.errors import HistimportError
from histimport_pipeline.engine.spec import DatasetSpec, Partitioning

if TYPE_CHECKING:
    from histimport_pipeline.engine.db import Database
    from histimport_pipeline.engine.pipeline_records import ImportResult
    from histimport_pipeline.engine.settings import Settings

#: Extensions an upload may have when the dataset's ``files`` glob names none.
DEFAULT_SUFFIXES = (".csv", ".tsv", ".txt", ".xlsx", ".json", ".ndjson", ".jsonl")
#: Where uploads are written before they are moved into place (inside the inbox, so the move
#: is a rename on one file system).
STAGING_FOLDER = ".uploads"
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ ()+-]{0,199}")


class UploadError(HistimportError):
    """An upload that is refused; ``status`` is the HTTP status that says why."""

    status = 422


class UploadTooLargeError(UploadError):
    """The upload is larger than the configured limit."""

    status = 413

    def __init__(self, name: str, limit: int) -> None:
        self.name, self.limit = name, limit
        super().__init__(
            f"{name}: the upload is larger than the limit of {limit:,} bytes "
            "(HISTIMPORT_WEB_MAX_UPLOAD_BYTES); split the file or copy it into the inbox"
        )


class UploadConflictError(UploadError):
    """A file of the same name is already waiting in the dataset's inbox folder."""

    status = 409


@dataclass(frozen=True)
class Upload:
    """A file received and put into the dataset's inbox folder."""

    dataset: str
    file_name: str
    path: Path
    sha256: str
    size: int
    uploaded_at: dt.datetime
    user: str | None


def allowed_suffixes(spec: DatasetSpec) -> tuple[str, ...]:
    """The extensions an upload to ``spec`` may have: the one its ``files`` glob ends with,
    else :data:`DEFAULT_SUFFIXES`."""
    if spec.files:
        suffix = Path(spec.files).suffix.lower()
        if suffix and not any(ch in suffix for ch in "*?[]"):
            return (suffix,)
    return DEFAULT_SUFFIXES


def safe_upload_name(raw: str, spec: DatasetSpec) -> str:
    """The file name an upload is stored under, from the name the client sent.

    Only the last path component counts (``../../etc/passwd`` is ``passwd``); it must start
    with a letter or digit, hold only letters, digits, spaces and ``._()+-``, be at most 200
    characters, end with one of :func:`allowed_suffixes` and, for a daily dataset, carry the
    business date.

    Raises:
        UploadError: the name is refused; the message says what a good name looks like.
    """
    name = re.split(r"[\\/]", raw or "")[-1].strip()
    if not _SAFE_NAME.fullmatch(name):
        raise UploadError(
            f"upload name {raw!r} is not a plain file name: use letters, digits, spaces and "
            "._()+- only, starting with a letter or digit (at most 200 characters)"
        )
    suffixes = allowed_suffixes(spec)
    if not name.lower().endswith(suffixes):
        raise UploadError(
            f"{name}: dataset {spec.name} takes files ending in {', '.join(suffixes)}"
        )
    if spec.partitioning is Partitioning.DAILY and spec.business_date(name) is None:
        raise UploadError(
            f"{name}: dataset {spec.name} is daily, and the file name must carry its business "
            f"date (matching {spec.date_from_name.regex!r}, e.g. {spec.name}_2024-01-31.csv)"
        )
    return name


def _folder(inbox: Path, name: str) -> Path:
    """``inbox/name``, created if missing; refused when it is a link or leaves the inbox."""
    root = inbox.resolve()
    root.mkdir(parents=True, exist_ok=True)
    folder = root / name
    if folder.is_symlink():
        raise UploadError(f"{folder} is a symbolic link; the upload is refused")
    folder.mkdir(exist_ok=True)
    if folder.resolve().parent != root:
        raise UploadError(f"{folder} is outside the inbox {root}; the upload is refused")
    return folder


def sidecar_of(path: Path) -> Path:
    """Where the uploader of the file at ``path`` is recorded."""
    return path.with_name(f".{path.name}.upload.json")


class UploadReceiver:
    """Receives one upload piece by piece (:meth:`write`), then puts it in place
    (:meth:`finish`) or throws it away (:meth:`abort`): the file is in the dataset's inbox
    folder completely or not at all.

    Args:
        inbox: the inbox folder.
        spec: the dataset the file is for.
        raw_name: the file name the client sent (see :func:`safe_upload_name`).
        max_bytes: the largest upload accepted.
        user: who uploads it; recorded beside the file for the sensor.

    Raises:
        UploadError: the name is refused (422), or a file of the same name is already
            waiting (409).
    """

    def __init__(
        self, inbox: Path, spec: DatasetSpec, raw_name: str, max_bytes: int, user: str | None
    ) -> None:
        self.spec, self.max_bytes, self.user = spec, max_bytes, user
        self.name = safe_upload_name(raw_name, spec)
        staging = _folder(inbox, STAGING_FOLDER)
        self.target = _folder(inbox, spec.name) / self.name
        self._refuse_if_waiting()
        self.partial = staging / f".{self.name}.{secrets.token_hex(8)}.part"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        self._fh = os.fdopen(os.open(self.partial, flags, 0o640), "wb")
        self._digest = hashlib.sha256()
        self.size = 0

    def _refuse_if_waiting(self) -> None:
        if self.target.exists() or self.target.is_symlink():
            raise UploadConflictError(
                f"{self.name}: a file of that name is already waiting in the inbox of "
                f"{self.spec.name}; wait until it is imported, or upload under another name"
            )

    def write(self, chunk: bytes) -> None:
        """Add the next piece of the file.

        Raises:
            UploadTooLargeError: the file grew past the limit (it is thrown away).
        """
        self.size += len(chunk)
        if self.size > self.max_bytes:
            self.abort()
            raise UploadTooLargeError(self.name, self.max_bytes)
        self._digest.update(chunk)
        self._fh.write(chunk)

    def finish(self) -> Upload:
        """Put the complete file into the dataset's inbox folder.

        Raises:
            UploadConflictError: a file of that name arrived meanwhile (nothing is replaced).
        """
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            uploaded_at = dt.datetime.now(dt.UTC)
            _write_sidecar(self.target, {"user": self.user, "uploaded_at": uploaded_at.isoformat()})
            try:
                # A hard link puts the complete file in place at once, and fails rather than
                # replacing a file of that name that arrived meanwhile.
                os.link(self.partial, self.target)
            except FileExistsError:
                raise UploadConflictError(
                    f"{self.name}: a file of that name arrived in the inbox of "
                    f"{self.spec.name} meanwhile; upload under another name"
                ) from None
        finally:
            self.abort()
        return Upload(
            self.spec.name,
            self.name,
            self.target,
            self._digest.hexdigest(),
            self.size,
            uploaded_at,
            self.user,
        )

    def abort(self) -> None:
        """Throw the partial file away (harmless when already done)."""
        if not self._fh.closed:
            self._fh.close()
        self.partial.unlink(missing_ok=True)


def receive_upload(
    inbox: Path,
    spec: DatasetSpec,
    raw_name: str,
    chunks: Iterable[bytes],
    max_bytes: int,
    user: str | None = None,
) -> Upload:
    """Write an uploaded file, given as pieces, into ``spec``'s inbox folder (see
    :class:`UploadReceiver`, whose arguments and errors these are)."""
    receiver = UploadReceiver(inbox, spec, raw_name, max_bytes, user)
    try:
        for chunk in chunks:
            receiver.write(chunk)
    except BaseException:
        receiver.abort()
        raise
    return receiver.finish()


def _write_sidecar(target: Path, facts: dict[str, Any]) -> None:
    path = sidecar_of(target)
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(json.dumps(facts), encoding="utf-8")
    os.replace(tmp, path)


def is_upload(path: Path) -> bool:
    """Whether the file at ``path`` came whole through the web service (its uploader record
    is beside it): it needs no second look to know it is complete."""
    return sidecar_of(path).is_file()


def uploader_of(path: Path) -> str | None:
    """Who uploaded the file at ``path`` through the web service, or ``None``."""
    try:
        facts = json.loads(sidecar_of(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    user = facts.get("user") if isinstance(facts, dict) else None
    return str(user) if user else None


def forget_uploader(path: Path) -> None:
    """Remove the uploader record of ``path`` (once its import has taken the name over)."""
    with contextlib.suppress(OSError):
        sidecar_of(path).unlink(missing_ok=True)


def import_upload(
    db: Database, settings: Settings, spec: DatasetSpec, upload: Upload
) -> ImportResult:
    """Import an upload at once (the service's ``direct`` mode), as its uploader, and move
    the file on as the inbox sensor's runs do: to the archive, or to the quarantine when the
    import was rejected or failed.

    Returns:
        How the import ended (file-level errors end as ``failed``, not raised).

    Raises:
        DatabaseUnavailableError, UnexpectedImportError: as ``pipeline.run_import``.
    """
    from histimport_pipeline.engine import files, tracking
    from histimport_pipeline.engine.models import ImportSource, ImportStatus, ImportType
    from histimport_pipeline.engine.pipeline import ImportOptions, run_import

    user = upload.user
    options = ImportOptions(
        import_type=ImportType.DROP,
        source=ImportSource.UPLOAD,
        user_id=user,
        user_email=user if user and "@" in user else None,
        max_field_bytes=settings.max_field_bytes,
        progress_every_s=settings.progress_every_s,
        error_dir=settings.error_dir,
    )
    try:
        result = run_import(db, spec, upload.path, options)
    finally:
        forget_uploader(upload.path)
    stopped = result.status in (ImportStatus.REJECTED, ImportStatus.FAILED)
    if upload.path.exists():
        folder = settings.quarantine if stopped else settings.archive
        moved = files.move_aside(
            upload.path, folder, spec.name, result.import_id, {"status": result.status.value}
        )
        tracking.record_file_moved(
            db, result.import_id, moved, "quarantined" if stopped else "archived"
        )
    return result
