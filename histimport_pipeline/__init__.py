"""histimport: import historical data files into a database and record every import.

The import engine lives in :mod:`histimport_pipeline.engine` (plain Python); the Dagster
layer in :mod:`histimport_pipeline.orchestration` (assembled in its ``definitions``); the
command line in :mod:`histimport_pipeline.cli`.
"""

__version__ = "0.1.0"
