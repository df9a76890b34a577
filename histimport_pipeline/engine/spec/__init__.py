"""Dataset specs: one YAML file per dataset, validated on load.

A spec says where a dataset's files come from, how their headers map to typed columns, which
rules a value must meet, and how rows are written to the target table. Errors name the file,
the key and the problem.

* ``columns``: ``ColumnSpec`` and the column types.
* ``references``: ``ReferenceSpec`` and its match rules.
* ``dataset``: ``DatasetSpec``, strategies and partitioning.
* ``freshness``: ``FreshnessSpec``, when a dataset is stale.
* ``loader``: ``load_spec``, ``load_specs`` and ``route_file``.

Every public name is re-exported here: ``from histimport_pipeline.engine.spec import
DatasetSpec``.
"""

from histimport_pipeline.engine.spec.columns import (
    DEFAULT_FALSE,
    DEFAULT_TRUE,
    ColumnSpec,
    ColumnType,
)
from histimport_pipeline.engine.spec.dataset import (
    SYSTEM_COLUMNS,
    DatasetSpec,
    DateFromName,
    Partitioning,
    Strategy,
    fold_header,
)
from histimport_pipeline.engine.spec.freshness import FreshnessSpec
from histimport_pipeline.engine.spec.loader import load_spec, load_specs, route_file
from histimport_pipeline.engine.spec.references import (
    MatchField,
    MatchMethod,
    MatchRule,
    OnUnmatched,
    ReferenceSpec,
    Scorer,
)

__all__ = [
    "DEFAULT_FALSE",
    "DEFAULT_TRUE",
    "SYSTEM_COLUMNS",
    "ColumnSpec",
    "ColumnType",
    "DatasetSpec",
    "DateFromName",
    "FreshnessSpec",
    "MatchField",
    "MatchMethod",
    "MatchRule",
    "OnUnmatched",
    "Partitioning",
    "ReferenceSpec",
    "Scorer",
    "Strategy",
    "fold_header",
    "load_spec",
    "load_specs",
    "route_file",
]
