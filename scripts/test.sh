#!/usr/bin/env bash
# The test command: set up .venv, start a throwaway PostgreSQL, run ruff, mypy and pytest
# against PostgreSQL and SQLite, and stop the server whatever happens. Extra arguments go to
# pytest (e.g. scripts/test.sh -k rollback).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/bootstrap.sh dev
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff"
ruff check histimport_pipeline histimport_pipeline_tests sql benchmarks
ruff format --check histimport_pipeline histimport_pipeline_tests sql benchmarks
echo "== mypy"
mypy

eval "$(scripts/pg_throwaway.sh start)"
trap 'scripts/pg_throwaway.sh stop "$PG_THROWAWAY_DIR"' EXIT
export HISTIMPORT_REQUIRE_PG=1

# The browser tests drive Debian's chromium through Playwright (never `playwright install`):
# install it when it is missing and we can; without it they fail (not skip) here.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing chromium for the browser tests"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 || {
        apt-get update -qq >/dev/null 2>&1 &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1
    } || echo "test.sh: could not install chromium; the browser tests will fail" >&2
fi
export HISTIMPORT_REQUIRE_BROWSER=1

echo "== pytest (PostgreSQL at ${HISTIMPORT_TEST_PG_URL%%@*}@..., and SQLite)"
status=0
python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "test.sh: pytest collected no tests; that is a failure" >&2
    exit 1
fi
exit "$status"
