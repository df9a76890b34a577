"""The direct load: the load of an import that staged nothing reads the checked file again
and COPYs its valid rows straight into the target."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

from histimport_pipeline.engine import loading as load
from histimport_pipeline.engine import tracking
from histimport_pipeline.engine.errors import FileChangedError
from histimport_pipeline.engine.loading.sinks import IntoTarget, TargetSink, target_constants
from histimport_pipeline.engine.pipeline_records import ImportHandle
from histimport_pipeline.engine.reading import columnar, open_file
from histimport_pipeline.engine.spec import DatasetSpec
from histimport_pipeline.engine.validation import Validator


def direct_write(
    tx: sa.Connection,
    spec: DatasetSpec,
    handle: ImportHandle,
    row: dict[str, Any],
    writer: tracking.ProgressWriter,
) -> load.DirectWrite:
    """The load of an import that staged nothing: read the checked file again with the
    columnar reader and COPY its valid rows straight into the target, in ``tx``.

    The file must be the one validated (same SHA-256, hashed as it streams) and give the same
    counts, else the write is refused and the transaction rolls back; its failed rows were
    recorded by the validate step and are skipped here. ``writer`` hears of the rows written
    after each block.
    """

    def write(target: sa.Table) -> int:
        path = Path(handle.file_path)
        if not path.is_file():
            raise FileChangedError(path, handle.import_id, "the file is gone")
        with open_file(path, spec) as parsed:
            info = parsed.info
        quoting = columnar.quoting_is_plain(path, info.delimiter or ",", info.quotechar or '"')
        constants = target_constants(target, handle)
        reader = columnar.ColumnarFile(
            path,
            spec,
            info,
            Validator(spec, detect_duplicates=False),
            has_quotes=quoting.has_quotes,
            encode=True,
            constants=constants,
            # The validate step read this very file (its hash is checked) within the limit.
            max_field_bytes=None,
        )
        read = written = failed = 0
        with TargetSink(IntoTarget(tx, target)) as sink:
            try:
                for block in reader.blocks():
                    read += block.records
                    failed += len(block.failed)
                    if block.payload is None:
                        continue
                    assert reader.copy_columns is not None
                    written += block.valid
                    # Counted as the block goes to the COPY (its pump sends it meanwhile).
                    writer.rows(written, int(row["rows_processed"] or 0))
                    sink.write(reader.copy_columns, block.payload)
            except columnar.Declined as declined:
                raise FileChangedError(
                    path, handle.import_id, f"the file no longer reads as before ({declined})"
                ) from None
            # Checked after the stream, before the commit: a mismatch rolls everything back.
            if reader.sha256 != handle.sha256:
                raise FileChangedError(path, handle.import_id, "the file's content changed")
            sink.commit()
        expected = (int(row["rows_in_file"] or 0), int(row["rows_processed"] or 0))
        if (read, written) != expected or failed != read - written:
            raise FileChangedError(
                path,
                handle.import_id,
                f"the file now gives {read:,} rows ({written:,} valid), not {expected[0]:,} "
                f"({expected[1]:,} valid) as",
            )
        return written

    return write
