"""Named points where a test can freeze an import to kill it there, or make it fail there.

Set ``HISTIMPORT_FAILPOINT=<name>`` and ``HISTIMPORT_FAILPOINT_FILE=<path>`` in a child
process: when the import reaches that point it creates the file and sleeps, so the test can
SIGKILL it at exactly that moment. With ``HISTIMPORT_FAILPOINT_RESUME=<path>`` it sleeps only
until that file exists and then goes on (so the test can, say, cut its database connection
meanwhile); with ``HISTIMPORT_FAILPOINT_RAISE=<message>`` it raises ``RuntimeError(message)``
instead, an error the engine does not expect. Unset (always, outside these tests), a
checkpoint is a dictionary lookup and nothing else.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

#: The checkpoints the importer passes, in order: after each staged batch, after each block a
#: direct load COPYs into the target (``loading.loads_directly``), after the target write, and
#: just before the load commits.
POINTS = ("staging", "copy", "write", "commit")


def checkpoint(name: str) -> None:
    """Freeze, pause or fail here if the environment asks for this point (see the module
    docstring)."""
    if os.environ.get("HISTIMPORT_FAILPOINT") != name:
        return
    message = os.environ.get("HISTIMPORT_FAILPOINT_RAISE")
    if message:
        raise RuntimeError(message)
    marker = os.environ.get("HISTIMPORT_FAILPOINT_FILE")
    if marker:
        Path(marker).write_text(str(os.getpid()))
    resume = os.environ.get("HISTIMPORT_FAILPOINT_RESUME")
    while not (resume and Path(resume).exists()):  # pragma: no cover - or the test kills us
        time.sleep(0.05 if resume else 3600)
