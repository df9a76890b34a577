"""Which file a partition imports, and where it was read from."""

from pathlib import Path

import dagster as dg

from histimport_pipeline.engine import files
from histimport_pipeline.engine.models import ImportSource
from histimport_pipeline.engine.settings import Settings
from histimport_pipeline.engine.spec import DatasetSpec, Partitioning
from histimport_pipeline.orchestration.run_coordinator import TRIGGER_TAG


def _matches_partition(spec: DatasetSpec, name: str, path: Path, partition_key: str) -> bool:
    if spec.partitioning is Partitioning.DAILY:
        day = spec.business_date(name)
        return day is not None and day.isoformat() == partition_key
    stem = files.partition_key_for(Path(name), "0" * 12)[:-13]
    if partition_key.rsplit("-", 1)[0] != stem:
        return False  # cheap name test before hashing
    return files.partition_key_for(Path(name), files.sha256_of(path)) == partition_key


def find_file(
    settings: Settings, spec: DatasetSpec, partition_key: str, config_path: str | None
) -> Path:
    """The file of a partition: the configured path (or its moved copy), else the file in the
    inbox, archive or quarantine whose name and content give ``partition_key``."""
    folders = (settings.archive, settings.quarantine)
    if config_path:
        path = Path(config_path)
        prefix = (
            None
            if spec.partitioning is Partitioning.DAILY
            else files.sha_prefix_of_key(partition_key)
        )
        found = files.locate(path, spec.name, prefix, *folders)
        if found is None:
            raise dg.Failure(
                f"{path} is gone from the inbox, archive and quarantine", allow_retries=False
            )
        return found
    for entry in files.dataset_candidates(settings.inbox, spec):
        if isinstance(entry, files.Entry) and _matches_partition(
            spec, entry.path.name, entry.path, partition_key
        ):
            return entry.path
    moved = sorted(
        files.moved_copies(spec.name, *folders), key=lambda p: p.stat().st_mtime_ns, reverse=True
    )
    for path in moved:
        if _matches_partition(spec, files.original_name(path), path, partition_key):
            return path
    raise dg.Failure(
        f"no file for partition {partition_key} of {spec.name} in {settings.inbox} (nor in "
        "the archive or quarantine): drop the file into the inbox and re-run the partition",
        allow_retries=False,
    )


def source_of(context: dg.OpExecutionContext, settings: Settings, path: Path) -> ImportSource:
    """Where the file was read from: a moved copy's folder, else how the run came about."""
    if files.is_under(path, settings.quarantine):
        return ImportSource.QUARANTINE
    if files.is_under(path, settings.archive):
        return ImportSource.ARCHIVE
    if context.run.tags.get(TRIGGER_TAG) == "schedule":
        return ImportSource.SCHEDULE
    return ImportSource.INBOX


def in_inbox(path: Path, settings: Settings) -> bool:
    try:
        path.resolve().relative_to(settings.inbox.resolve())
    except ValueError:
        return False
    return True
