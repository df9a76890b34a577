#!/usr/bin/env bash
# The run command: set up .venv, apply migrations to the target database (SQLite under
# HISTIMPORT_HOME unless HISTIMPORT_DATABASE_URL says otherwise), and start `dagster dev`
# (webserver + daemon) on http://127.0.0.1:${DAGSTER_PORT:-3000} and beside it the
# histimport web service (`histimport serve`) on http://127.0.0.1:${HISTIMPORT_WEB_PORT:-8000}
# (history pages, and the HTTP API with its docs at /docs). Ctrl-C or SIGTERM stops
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
dagster_host="${DAGSTER_HOST:-127.0.0.1}" dagster_port="${DAGSTER_PORT:-3000}"
web_host="${HISTIMPORT_WEB_HOST:-127.0.0.1}" web_port="${HISTIMPORT_WEB_PORT:-8000}"
# Each links to the other: the history page to Dagster runs, Dagster's metadata to the pages.
export HISTIMPORT_DAGSTER_URL="${HISTIMPORT_DAGSTER_URL:-http://$dagster_host:$dagster_port}"
export HISTIMPORT_WEB_URL="${HISTIMPORT_WEB_URL:-http://$web_host:$web_port}"
echo "Dagster UI:           $HISTIMPORT_DAGSTER_URL"
echo "Import history (web): $HISTIMPORT_WEB_URL  (HTTP API docs: $HISTIMPORT_WEB_URL/docs)"
# Through supervise.py: `dagster dev` alone ignores SIGTERM when this script was started in
# the background, and a stop signal must reach every process it starts (the web service is
# in the same session, so it stops with them).
exec python scripts/supervise.py bash -c \
    'histimport serve --host "$1" --port "$2" & exec dagster dev -w workspace.yaml -h "$3" -p "$4"' \
    run.sh "$web_host" "$web_port" "$dagster_host" "$dagster_port"
