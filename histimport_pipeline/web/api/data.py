"""``/api/statistics``, ``/api/tables/{table}/lineage`` and ``/api/datasets``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from histimport_pipeline.engine.tracking import history, lineage, overview
from histimport_pipeline.web import schemas
from histimport_pipeline.web.app import Reader, State

router = APIRouter(tags=["statistics and lineage"])


@router.get("/statistics")
def get_statistics(
    state: State,
    _caller: Reader,
    days: Annotated[int, Query(ge=1, le=36_600)] = 30,
    dataset: str | None = None,
    table: str | None = None,
    user: str | None = None,
) -> dict[str, Any]:
    """Figures over the last ``days`` days, per dataset and in total (``histimport stats``)."""
    return history.stats(state.db, days=days, dataset=dataset, table=table, user=user)


@router.get("/tables/{table}/lineage")
def get_lineage(
    table: str,
    state: State,
    _caller: Reader,
    key: Annotated[
        list[str] | None,
        Query(description="one row's key: 42, or a=1&key=b=2 for a composite key"),
    ] = None,
) -> dict[str, Any]:
    """The imports whose rows are in ``table`` (and rows that predate histimport); with
    ``key``, which import wrote that one row, from which file and source row."""
    if not key:
        return lineage.lineage(state.db, table)
    spec = lineage.spec_of_table(state.specs(), table, "the datasets folder")
    found = lineage.lineage_of_key(state.db, spec, lineage.key_values(spec, key))
    if found is None:
        raise HTTPException(404, f"no row with key {', '.join(key)} in {table}")
    return found


@router.get("/datasets", response_model=list[schemas.Dataset])
def get_datasets(state: State, _caller: Reader) -> list[dict[str, Any]]:
    """Every dataset: its spec's main facts, processes, last import, last success and
    freshness."""
    return overview.dataset_overview(state.db, state.specs())


@router.get("/datasets/{name}/activity")
def get_activity(
    name: str, state: State, _caller: Reader, days: Annotated[int, Query(ge=1, le=366)] = 30
) -> list[dict[str, Any]]:
    """Imports per day by status and rows loaded per day, every day of the window."""
    state.spec(name)
    return overview.daily_activity(state.db, name, days)
