"""``python -m histimport_pipeline.cli``: the same as the ``histimport`` command."""

from histimport_pipeline.cli import main

main()
