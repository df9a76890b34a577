#!/usr/bin/env bash
# Create .venv (Python >= 3.11) and install histimport into it, with the dev extra when
# asked (`scripts/bootstrap.sh dev`). Re-running is quick: pip is skipped while
# pyproject.toml is unchanged since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."

extra=${1:-}
python=${PYTHON:-}
if [ -z "$python" ]; then
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c \
            'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            python=$candidate; break
        fi
    done
fi
[ -n "$python" ] || { echo "bootstrap: Python 3.11 or newer is needed" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv || {
        echo "bootstrap: 'python -m venv' failed; on Debian install python3-venv" >&2; exit 1; }
fi
target=.
[ "$extra" = dev ] && target=".[dev]"
stamp=".venv/.histimport-installed-$extra"
digest=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
    .venv/bin/python -m pip install --quiet -e "$target"
    echo "$digest" >"$stamp"
fi
