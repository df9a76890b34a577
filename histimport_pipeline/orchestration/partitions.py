"""Partitions of the dataset assets: one per dropped file, or one per business day."""

from __future__ import annotations

import datetime as dt

import dagster as dg

from histimport_pipeline.engine.spec import DatasetSpec, Partitioning

#: First daily partition when a daily spec gives no ``start_date``.
DEFAULT_START = dt.date(2020, 1, 1)


def file_partitions_name(spec: DatasetSpec) -> str:
    """Name of a file dataset's dynamic partitions."""
    return f"{spec.name}_files"


def dataset_partitions(spec: DatasetSpec) -> dg.PartitionsDefinition[str]:
    """Dynamic partitions for ``file`` datasets, daily ones for ``daily`` datasets."""
    if spec.partitioning is Partitioning.DAILY:
        start = spec.start_date or DEFAULT_START
        return dg.DailyPartitionsDefinition(start_date=start.isoformat(), end_offset=1)
    return dg.DynamicPartitionsDefinition(name=file_partitions_name(spec))
