"""Named points where a test can freeze an import to kill it there.

Set ``HISTIMPORT_FAILPOINT=<name>`` and ``HISTIMPORT_FAILPOINT_FILE=<path>`` in a child
process: when the import reaches that point it creates the file and sleeps, so the test can
SIGKILL it at exactly that moment. Unset (always, outside the crash tests), a checkpoint is a
dictionary lookup and nothing else.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

#: The checkpoints the importer passes, in order: after each staged batch, after each block a
#: direct load COPYs into the target (``load.loads_directly``), after the target write, and
#: just before the load commits.
POINTS = ("staging", "copy", "write", "commit")


def checkpoint(name: str) -> None:
    """Freeze here if the environment asks for this point (see the module docstring)."""
    if os.environ.get("HISTIMPORT_FAILPOINT") != name:
        return
    marker = os.environ.get("HISTIMPORT_FAILPOINT_FILE")
    if marker:
        Path(marker).write_text(str(os.getpid()))
    while True:  # pragma: no cover - the test kills us here
        time.sleep(3600)
