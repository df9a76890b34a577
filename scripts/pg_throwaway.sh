#!/usr/bin/env bash
# Start a throwaway PostgreSQL cluster for the tests; print nothing but env lines on stdout.
#
#   eval "$(scripts/pg_throwaway.sh start)"   # exports HISTIMPORT_TEST_PG_URL, PG_THROWAWAY_DIR
#   scripts/pg_throwaway.sh stop "$PG_THROWAWAY_DIR"
#
# Finds Debian's server binaries (installs the postgresql package when missing and running as
# root), runs the server as a non-root user (PostgreSQL refuses root), on a private port and
# socket folder, with trust auth on loopback only, and fsync off: the data is thrown away.
set -euo pipefail

find_bindir() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] && { echo "$d"; return 0; }
    done
    command -v initdb >/dev/null 2>&1 && { dirname "$(command -v initdb)"; return 0; }
    return 1
}

free_port() {
    python3 - <<'PY'
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
PY
}

start() {
    local bindir
    if ! bindir=$(find_bindir); then
        if [ "$(id -u)" -eq 0 ]; then
            echo "pg_throwaway: installing Debian's postgresql server package" >&2
            DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
            bindir=$(find_bindir)
        else
            echo "pg_throwaway: no PostgreSQL server binaries (initdb) found; install the" \
                 "'postgresql' package or run as root so this script can" >&2
            exit 1
        fi
    fi
    local dir port runas=()
    dir=$(mktemp -d /tmp/histimport-pg.XXXXXX)
    chmod 755 "$dir"
    if [ "$(id -u)" -eq 0 ]; then
        local user=postgres
        id "$user" >/dev/null 2>&1 || useradd --system --no-create-home "$user"
        chown "$user" "$dir"
        runas=(runuser -u "$user" --)
    fi
    port=$(free_port)
    "${runas[@]}" "$bindir/initdb" -D "$dir/data" -U histimport_test -A trust \
        --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2; exit 1; }
    "${runas[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start -o \
        "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
        >&2 || { cat "$dir/server.log" >&2; exit 1; }
    echo "export PG_THROWAWAY_DIR='$dir'"
    echo "export PG_THROWAWAY_BINDIR='$bindir'"
    echo "export HISTIMPORT_TEST_PG_URL='postgresql+psycopg://histimport_test@127.0.0.1:$port/postgres'"
}

stop() {
    local dir=${1:?usage: pg_throwaway.sh stop DIR}
    [ -d "$dir/data" ] || return 0
    local bindir runas=()
    bindir=$(find_bindir)
    [ "$(id -u)" -eq 0 ] && runas=(runuser -u postgres --)
    "${runas[@]}" "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}

case "${1:-}" in
    start) start ;;
    stop) stop "${2:-}" ;;
    *) echo "usage: $0 start | stop DIR" >&2; exit 2 ;;
esac
