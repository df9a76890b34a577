#!/usr/bin/env bash
# The run command: set up .venv, apply migrations to the target database (SQLite under
# HISTIMPORT_HOME unless HISTIMPORT_DATABASE_URL says otherwise), and start `dagster dev`
# (webserver + daemon) on http://127.0.0.1:${DAGSTER_PORT:-3000}. Ctrl-C or SIGTERM stops
# all of it (webserver, daemon, code servers, run workers) within HISTIMPORT_STOP_GRACE_S
# seconds (20), killing what is left after that.
# HISTIMPORT_SKIP_BOOTSTRAP=1 uses the histimport and dagster already on PATH instead of .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${HISTIMPORT_SKIP_BOOTSTRAP:-}" != 1 ]; then
    scripts/bootstrap.sh
    export PATH="$PWD/.venv/bin:$PATH"
fi

export HISTIMPORT_HOME="${HISTIMPORT_HOME:-$PWD/.histimport}"
mkdir -p "$HISTIMPORT_HOME"
export HISTIMPORT_DATABASE_URL="${HISTIMPORT_DATABASE_URL:-sqlite:///$HISTIMPORT_HOME/histimport.db}"
export DAGSTER_HOME="${DAGSTER_HOME:-$HISTIMPORT_HOME/dagster}"
mkdir -p "$DAGSTER_HOME"
[ -f "$DAGSTER_HOME/dagster.yaml" ] || cp deploy/dagster.local.yaml "$DAGSTER_HOME/dagster.yaml"
# An instance file run.sh wrote before the Dagster layer moved names the old module path.
instance="$DAGSTER_HOME/dagster.yaml"
old_module='^  module: histimport_pipeline\.run_coordinator$'
if grep -q "$old_module" "$instance"; then
    sed "s/$old_module/  module: histimport_pipeline.orchestration.run_coordinator/" \
        "$instance" > "$instance.new"
    mv "$instance.new" "$instance"
fi

histimport db upgrade
# First start: demo specs, master table and messy files, so there is something to watch.
datasets="${HISTIMPORT_DATASETS:-$HISTIMPORT_HOME/datasets}"
if ! ls "$datasets"/*.yaml >/dev/null 2>&1; then
    histimport demo
fi
# Through supervise.py: `dagster dev` alone ignores SIGTERM when this script was started in
# the background, and a stop signal must reach every process it starts.
exec python scripts/supervise.py \
    dagster dev -w workspace.yaml -h "${DAGSTER_HOST:-127.0.0.1}" -p "${DAGSTER_PORT:-3000}"
