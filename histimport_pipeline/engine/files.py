"""The inbox on disk: listing dropped files safely, partition keys, archive and quarantine.

Plain Python used by the Dagster sensors and ops. Nothing here trusts a path it is given: a
file must be a regular file inside the inbox (no symlink, FIFO or ``..`` escape) before it is
read; anything else is moved aside to the quarantine folder with a note saying why.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from histimport_pipeline.engine.digest import file_digest
from histimport_pipeline.engine.spec import DatasetSpec

#: Suffixes of files still being written by their producer.
PARTIAL_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload", ".download")
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Entry:
    """One candidate file in the inbox."""

    path: Path
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Refused:
    """A path in the inbox that is not a plain file we may read, and why."""

    path: Path
    reason: str


def is_ignored_name(name: str) -> bool:
    """Dot-files and files still being written (``.part``, ``.tmp``...) are not imports."""
    return name.startswith(".") or name.lower().endswith(PARTIAL_SUFFIXES)


def dataset_candidates(
    inbox: Path, spec: DatasetSpec, *, deadline: float | None = None
) -> Iterator[Entry | Refused]:
    """Files in the inbox routed to ``spec``: its sub-folder, and its glob in the inbox root.

    Symlinks, FIFOs, sockets, devices and anything resolving outside the inbox are yielded as
    :class:`Refused`. Listing stops quietly at ``deadline`` (a ``time.monotonic()`` value).
    """
    root = inbox.resolve()
    folders = [(root / spec.name, None), (root, spec.files)]
    for folder, pattern in folders:
        if pattern is None and folder == root:
            continue
        try:
            scanner = os.scandir(folder)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with scanner:
            for item in scanner:
                if deadline is not None and time.monotonic() > deadline:
                    return
                if is_ignored_name(item.name):
                    continue
                if pattern is not None and not _glob_match(item.name, pattern):
                    continue
                path = Path(item.path)
                if item.is_symlink():
                    yield Refused(path, "is a symbolic link; copy the file itself into the inbox")
                    continue
                try:
                    info = item.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(info.st_mode):
                    continue
                if not stat.S_ISREG(info.st_mode):
                    yield Refused(path, "is not a regular file (FIFO, socket or device)")
                    continue
                if not _inside(path, root):
                    yield Refused(path, "resolves outside the inbox")
                    continue
                yield Entry(path, info.st_size, info.st_mtime_ns)


@dataclass(frozen=True)
class Ready:
    """A file whose size and modification time held still across two looks: import it."""

    path: Path
    sha256: str
    mtime_ns: int


@dataclass(frozen=True)
class ScanResult:
    """One look at the inbox for a dataset."""

    ready: list[Ready]
    refused: list[Refused]
    #: What to remember until the next look (JSON-ready; only files still present).
    state: dict[str, list[int | str | None]]
    complete: bool
    #: Files seen for the first time or still changing.
    waiting: int


#: Entries remembered between looks; beyond it the oldest are forgotten (and seen again).
MAX_STATE_ENTRIES = 50_000


def scan(
    inbox: Path,
    spec: DatasetSpec,
    previous: dict[str, list[int | str | None]],
    *,
    budget_s: float = 20.0,
    settled_after_s: float | None = None,
    known_complete: Callable[[Path], bool] | None = None,
) -> ScanResult:
    """Look at the inbox once: which files are stable and new, which must be refused.

    A file is ready when it is not still being written and it was not handed out before with
    that same size and mtime. Not still being written means: its size and mtime are the same
    as at the previous look; or, at the first look, no write has touched it for
    ``settled_after_s`` seconds (the same evidence as two looks that far apart, without
    waiting for the second); or ``known_complete`` says it was put in place whole (an upload
    linked into the inbox in one step). The work stops at ``budget_s`` (hashing included);
    what was not reached is seen at the next look.

    Args:
        previous: the state returned by the previous scan (``{}`` at first).
        settled_after_s: how long without a write makes a file seen for the first time
            ready (``None``: it always waits for the second look).
        known_complete: whether a file is known to be whole already.

    Returns:
        Ready files with their content hash, refused paths, and the state to keep.
    """
    deadline = time.monotonic() + budget_s
    ready: list[Ready] = []
    refused: list[Refused] = []
    state: dict[str, list[int | str | None]] = {}
    waiting = 0
    complete = True
    for item in dataset_candidates(inbox, spec, deadline=deadline):
        if isinstance(item, Refused):
            refused.append(item)
            continue
        name = str(item.path)
        size, mtime, sha = (previous.get(name) or [None, None, None])[:3]
        unchanged = size == item.size and mtime == item.mtime_ns
        if not unchanged and (
            _settled(item.mtime_ns, settled_after_s)
            or (known_complete is not None and known_complete(item.path))
        ):
            unchanged, sha = True, None
        if unchanged:
            if sha is None:
                if time.monotonic() > deadline:
                    complete = False
                    state[name] = [item.size, item.mtime_ns, None]
                    continue
                try:
                    digest = sha256_of(item.path)
                except FileNotFoundError:
                    continue
                ready.append(Ready(item.path, digest, item.mtime_ns))
                sha = digest
            state[name] = [item.size, item.mtime_ns, sha]
        else:
            waiting += 1
            state[name] = [item.size, item.mtime_ns, None]
    if time.monotonic() > deadline:
        complete = False
    # Import in the order the files were dropped: a corrected export dropped after the
    # original must also be loaded after it.
    ready.sort(key=lambda r: (r.mtime_ns, r.path.name))
    if len(state) > MAX_STATE_ENTRIES:
        state = dict(list(state.items())[-MAX_STATE_ENTRIES:])
    return ScanResult(ready, refused, state, complete, waiting)


def _settled(mtime_ns: int, after_s: float | None) -> bool:
    """Whether no write has touched a file for ``after_s`` seconds (by its mtime)."""
    return after_s is not None and time.time() - mtime_ns / 1e9 >= after_s


def _glob_match(name: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatch(name, pattern)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
    except ValueError:
        return False
    return True


def ensure_inside(path: Path, inbox: Path) -> Path:
    """Return ``path`` resolved if it is a regular file inside ``inbox``.

    Raises:
        ValueError: it is a symlink, not a regular file, or outside the inbox.
    """
    if path.is_symlink():
        raise ValueError(f"{path} is a symbolic link; refusing to follow it")
    resolved = path.resolve()
    if not _inside(resolved, inbox.resolve()):
        raise ValueError(f"{path} is outside the inbox {inbox}")
    if not resolved.is_file():
        raise ValueError(f"{path} is not a regular file")
    return resolved


def sha256_of(path: Path) -> str:
    """SHA-256 of a file's content (``digest.file_digest``)."""
    return file_digest(path)[0]


def partition_key_for(path: Path, sha256: str) -> str:
    """A readable partition key unique per content: ``<file stem>-<first 12 hex of sha>``.

    Only letters, digits, ``.``, ``_`` and ``-`` appear in it.
    """
    stem = _KEY_UNSAFE.sub("_", path.stem).strip("._-")[:80] or "file"
    return f"{stem}-{sha256[:12]}"


def sha_prefix_of_key(key: str) -> str | None:
    """The content-hash prefix in a file partition key, if it has one."""
    found = re.search(r"-([0-9a-f]{12})$", key)
    return found.group(1) if found else None


def move_aside(
    path: Path,
    folder: Path,
    dataset: str,
    import_id: int | None,
    note: dict[str, object] | None = None,
    name: str | None = None,
) -> Path:
    """Move a file (or link) to ``folder/<dataset>/`` named ``<import id>__<name>``.

    ``name`` defaults to the file's own name (a retried copy passes the dropped name).

    A JSON sidecar ``<new name>.json`` records why and when. Names never collide: a counter
    is added when needed.

    Returns:
        The new path.
    """
    target_dir = folder / dataset
    target_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"{import_id}__" if import_id is not None else ""
    base = name or path.name
    target = target_dir / f"{prefix}{base}"
    counter = 1
    while target.exists() or target.is_symlink():
        target = target_dir / f"{prefix}{counter}__{base}"
        counter += 1
    shutil.move(str(path), str(target))
    sidecar = {
        "original_path": str(path),
        "import_id": import_id,
        "moved_at": datetime.now(UTC).isoformat(),
        **(note or {}),
    }
    target.with_name(target.name + ".json").write_text(json.dumps(sidecar, indent=2, default=str))
    return target


_MOVED_PREFIX = re.compile(r"^(?:\d+__)?(?:\d+__)?")


def original_name(path: Path) -> str:
    """The name a file was dropped under: from a moved copy's sidecar, else its own name
    without the ``<import id>__`` prefix."""
    sidecar = path.with_name(path.name + ".json")
    if sidecar.is_file():
        try:
            recorded = json.loads(sidecar.read_text()).get("original_path")
        except (OSError, ValueError):
            recorded = None
        if recorded:
            return Path(recorded).name
    return _MOVED_PREFIX.sub("", path.name, count=1) or path.name


def moved_copies(dataset: str, *folders: Path) -> Iterator[Path]:
    """Files of ``dataset`` in the archive/quarantine folders (sidecars left out)."""
    for folder in folders:
        base = folder / dataset
        if not base.is_dir():
            continue
        for candidate in base.iterdir():
            if candidate.suffix == ".json" and candidate.with_suffix("").exists():
                continue
            if candidate.is_file() and not candidate.is_symlink():
                yield candidate


def is_under(path: Path, folder: Path) -> bool:
    """Whether ``path`` lies inside ``folder``."""
    return _inside(path, folder.resolve())


def locate(path: Path, dataset: str, sha_prefix: str | None, *folders: Path) -> Path | None:
    """Find a file that may have moved: its own path, else an archived/quarantined copy.

    A moved copy is recognised by its name (``<id>__<name>``) and, when given, the start of
    its content hash. The newest match wins.
    """
    if path.is_file() and not path.is_symlink():
        return path
    matches: list[Path] = []
    for folder in folders:
        candidates = (folder / dataset).glob(f"*__{path.name}") if folder else iter(())
        for candidate in candidates:
            if candidate.is_file() and (
                sha_prefix is None or sha256_of(candidate).startswith(sha_prefix)
            ):
                matches.append(candidate)
    return max(matches, key=lambda p: p.stat().st_mtime_ns) if matches else None
