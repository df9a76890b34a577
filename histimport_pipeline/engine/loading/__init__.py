"""Loading: the target table, the import's staging table, the write strategies, before-images.

The modules: ``targets`` (the target's shape, creating or widening it), ``staging_tables``
(the staging table and its duplicate keys), ``strategies`` (append, upsert, replace_date),
``images`` (before-images and rollback's restore). The stage step's reading loops live in
``staging``, its COPY sinks in ``sinks``, the direct load (no staging) in ``direct``; import
those modules themselves (they need the pipeline's records, which need this package).
"""

from histimport_pipeline.engine.loading.images import restore_images, save_images
from histimport_pipeline.engine.loading.staging_tables import (
    SQLITE_BATCH,
    WORK_MEM,
    count_staged,
    create_staging,
    drop_staging,
    drop_staging_in,
    duplicate_failure,
    finish_staging,
    held_rows,
    index_staging,
    remove_duplicate_keys,
    stage_rows,
    staging_name,
    staging_table,
    tune_session,
)
from histimport_pipeline.engine.loading.strategies import (
    DirectWrite,
    WriteCounts,
    record_append_conflicts,
    write_target,
)
from histimport_pipeline.engine.loading.targets import (
    COUNT,
    add_primary_key,
    column_type,
    create_target_keyed_later,
    data_columns,
    ensure_target,
    is_unique_violation,
    loads_directly,
    loads_in_one_pass,
    lock_target,
    qualified_name,
    reference_columns,
    row_key_columns,
    target_table,
    written_columns,
)

__all__ = [
    "COUNT",
    "SQLITE_BATCH",
    "WORK_MEM",
    "DirectWrite",
    "WriteCounts",
    "add_primary_key",
    "column_type",
    "count_staged",
    "create_staging",
    "create_target_keyed_later",
    "data_columns",
    "drop_staging",
    "drop_staging_in",
    "duplicate_failure",
    "ensure_target",
    "finish_staging",
    "held_rows",
    "index_staging",
    "is_unique_violation",
    "loads_directly",
    "loads_in_one_pass",
    "lock_target",
    "qualified_name",
    "record_append_conflicts",
    "reference_columns",
    "remove_duplicate_keys",
    "restore_images",
    "row_key_columns",
    "save_images",
    "stage_rows",
    "staging_name",
    "staging_table",
    "target_table",
    "tune_session",
    "write_target",
    "written_columns",
]
