"""Run a command in a session of its own; on SIGTERM, SIGINT (Ctrl-C) or SIGHUP stop all of it.

scripts/run.sh starts `dagster dev` through this. On its own, `dagster dev` does not always
stop: it turns SIGTERM into whatever SIGINT does, and a shell that starts a script in the
background sets SIGINT to "ignore", so SIGTERM was ignored too, by it and by the webserver,
daemon and code servers it starts. Here the command starts with SIGINT at its default, in a
new session whose processes (webserver, daemon, code servers, run workers) are signalled
together: SIGTERM first, SIGKILL to whatever is left after HISTIMPORT_STOP_GRACE_S seconds.

    python scripts/supervise.py COMMAND [ARG...]
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class _Stop(Exception):
    pass


def _stop(signum: int, frame: object) -> None:
    raise _Stop(signum)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (exited ones waiting to be reaped
    do not count: in a container the process reaping orphans may never do so)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name may hold spaces; the fields after it are space separated
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def stop_session(proc: subprocess.Popen[bytes], grace_s: float) -> int:
    """SIGTERM the command's process group, wait up to ``grace_s`` for it to empty, then
    SIGKILL what is left. Returns 0 when it stopped by itself, 1 when it had to be killed."""
    pgid = proc.pid
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        # Reaping the command lets its group empty; processes it left behind are orphans
        # that init reaps as they exit.
        if proc.poll() is not None and not _group_alive(pgid):
            return 0
        time.sleep(0.2)
    print(f"supervise: still running {grace_s:g} s after SIGTERM; killing it", file=sys.stderr)
    _signal_group(pgid, signal.SIGKILL)
    proc.wait()
    return 1


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    grace_s = float(os.environ.get("HISTIMPORT_STOP_GRACE_S", "20"))
    # A handler (not "ignore") for each: the command then starts with them at their defaults.
    for sig in STOP_SIGNALS:
        signal.signal(sig, _stop)
    proc = subprocess.Popen(argv, start_new_session=True)
    try:
        return proc.wait()
    except _Stop as stop:
        # A second Ctrl-C while stopping must not leave the session running.
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        stopped = stop_session(proc, grace_s)
        return 128 + int(stop.args[0]) if stopped == 0 else 137


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
