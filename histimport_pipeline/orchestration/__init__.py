"""The Dagster layer: assets, checks, sensors, schedules, partitions, resources and the run
coordinator, assembled in one place, :mod:`histimport_pipeline.orchestration.definitions`.

Everything here is glue over :mod:`histimport_pipeline.engine`; no import logic lives here.
"""
