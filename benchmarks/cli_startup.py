"""Start-up time of the ``histimport`` command, whole process: ``--help``, ``history``, ``show``,
``stats``.

It makes a throwaway HISTIMPORT_HOME with a SQLite database, runs ``histimport demo`` and
imports the demo's first sign-up file, then times each command as a fresh process (wall and
CPU seconds from the kernel's accounting of the finished child), in rounds that interleave the
commands so that the machine's drift hits each alike. Baselines measured in the same rounds:
``python -c pass`` (the interpreter), ``import typer`` (the floor of a typer CLI),
``import sqlalchemy``, and ``import typer, rich.table, sqlite3``: the floor of a report, which
parses options with typer (below 0.29, which would also coerce every option value through
pydantic), prints with rich and reads over DB-API (``engine.dbapi``, no SQLAlchemy).

Printed per command: min / median / max wall seconds, the median CPU seconds, the median over
``python -c pass`` and as a multiple of it and of ``import typer``, and which of the heavy
modules (pandas, pyarrow, ...) the command imported (from one extra run under
``python -X importtime``).

The children write and reuse bytecode in a throwaway ``PYTHONPYCACHEPREFIX`` (the first,
uncounted round fills it), as an installed package would have its ``.pyc`` files even where
the environment sets ``PYTHONDONTWRITEBYTECODE``; ``--no-bytecode`` keeps the environment's
setting instead.

    python benchmarks/cli_startup.py [--runs 15] [--warmup 2] [--no-bytecode]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Top-level packages worth knowing a command imports: the import machinery (no report needs
#: it), then what a report does need.
HEAVY = (
    "pandas",
    "pyarrow",
    "numpy",
    "rapidfuzz",
    "openpyxl",
    "charset_normalizer",
    "alembic",
    "dagster",
    "pydantic",
    "sqlalchemy",
    "psycopg",
)

#: The libraries a report cannot start without: typer, rich and the SQLite driver.
FLOOR = "import typer, rich.table, sqlite3"


@dataclass
class Timings:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def _environment(home: Path, bytecode: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HISTIMPORT_")}
    env.update(
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
        HISTIMPORT_HOME=str(home),
        HISTIMPORT_DATABASE_URL=f"sqlite:///{home / 'histimport.db'}",
        NO_COLOR="1",
        COLUMNS="200",
    )
    if bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(home / "pycache")
    return env


def _histimport(*args: str) -> list[str]:
    return [sys.executable, "-m", "histimport_pipeline.cli", *args]


def _check(cmd: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr}")
    return done.stdout


def _time_once(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + sys) seconds of one run of ``cmd``, output thrown away."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def _heavy_imports(cmd: list[str], env: dict[str, str]) -> list[str]:
    """The HEAVY top-level packages ``cmd`` imports, from one run under ``-X importtime``."""
    traced = [cmd[0], "-X", "importtime", *cmd[1:]]
    done = subprocess.run(traced, env=env, capture_output=True, text=True, check=False)
    loaded = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return [name for name in HEAVY if name in loaded]


def _setup(env: dict[str, str]) -> str:
    """A demo home with one import; returns that import's id."""
    _check(_histimport("demo"), env)
    inbox = Path(env["HISTIMPORT_HOME"]) / "inbox"
    first = sorted(inbox.glob("signups_*.csv"))[0]
    _check(_histimport("import", str(first)), env)
    rows = _check(_histimport("history", "--json"), env)
    return str(json.loads(rows)["imports"][0]["import_id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="counted rounds (default 15)")
    parser.add_argument("--warmup", type=int, default=2, help="uncounted rounds first")
    parser.add_argument(
        "--no-bytecode",
        action="store_true",
        help="keep PYTHONDONTWRITEBYTECODE as the environment has it (sources compiled each run)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="histimport-startup-") as tmp:
        env = _environment(Path(tmp) / "home", bytecode=not args.no_bytecode)
        import_id = _setup(env)
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "python -c 'import typer'": [sys.executable, "-c", "import typer"],
            "python -c 'import sqlalchemy'": [sys.executable, "-c", "import sqlalchemy"],
            # What a report cannot do without, in one process (FLOOR).
            "floor of a report (FLOOR)": [sys.executable, "-c", FLOOR],
            "histimport --help": _histimport("--help"),
            "histimport history": _histimport("history"),
            f"histimport show {import_id}": _histimport("show", import_id),
            "histimport stats": _histimport("stats"),
        }
        for cmd in commands.values():
            _check(cmd, env)
        timings = {name: Timings() for name in commands}
        for round_no in range(args.warmup + args.runs):
            for name, cmd in commands.items():
                wall, cpu = _time_once(cmd, env)
                if round_no >= args.warmup:
                    timings[name].wall.append(wall)
                    timings[name].cpu.append(cpu)
        heavy = {name: _heavy_imports(cmd, env) for name, cmd in commands.items()}
    floor = statistics.median(timings["python -c pass"].wall)
    typer_floor = statistics.median(timings["python -c 'import typer'"].wall)
    print(
        f"{args.runs} rounds after {args.warmup} warm-up, whole process, seconds; "
        f"bytecode {'as the environment says' if args.no_bytecode else 'cached'}; "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    width = max(len(name) for name in commands)
    print(
        f"{'command':<{width}}  {'min':>6} {'median':>6} {'max':>6}  {'cpu med':>7}"
        f"  {'- pass':>6} {'x pass':>6} {'x typer':>7}  heavy modules imported"
    )
    for name, t in timings.items():
        median = statistics.median(t.wall)
        print(
            f"{name:<{width}}  {min(t.wall):6.3f} {median:6.3f} {max(t.wall):6.3f}"
            f"  {statistics.median(t.cpu):7.3f}  {median - floor:6.3f}"
            f" {median / floor:6.1f} {median / typer_floor:7.2f}"
            f"  {', '.join(heavy[name]) or '-'}"
        )
    print(f"FLOOR: python -c {FLOOR!r}")


if __name__ == "__main__":
    main()
