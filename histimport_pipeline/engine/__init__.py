"""The import engine: plain Python, no Dagster.

parse -> validate -> reconcile -> load, with tracking of every import. The CLI, the tests and
the Dagster layer all call into this package.
"""
