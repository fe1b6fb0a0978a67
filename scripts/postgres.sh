#!/usr/bin/env bash
# A throwaway local PostgreSQL server for the test suite and benchmarks.
#
#   scripts/postgres.sh start    # install Debian's package if needed, start, print the URL
#   scripts/postgres.sh stop
#
# The cluster lives in $PGTEST_DIR (default: a folder under /tmp named after this checkout) and
# listens on 127.0.0.1:$PGTEST_PORT only (default: a port from 54000 to 54999 derived from the
# same name). It trusts local connections and skips fsync: it holds test data only. Running as
# root, the server runs as the `postgres` user, as it must.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
checkout=$(printf %s "$root" | sha256sum | cut -c1-12)
# One cluster and one port per checkout, so two checkouts can test side by side.
port=${PGTEST_PORT:-$((54000 + 16#${checkout:0:4} % 1000))}
dir=${PGTEST_DIR:-/tmp/gateway-postgres-$checkout}
url="postgresql://postgres@127.0.0.1:$port/gateway"

bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

as_server() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

install() {
    [ -n "$(bindir)" ] && return
    echo "installing PostgreSQL (Debian package postgresql)" >&2
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        postgresql >&2
}

start() {
    install
    local bin
    bin=$(bindir)
    if [ ! -f "$dir/PG_VERSION" ]; then
        mkdir -p "$dir"
        [ "$(id -u)" = 0 ] && chown postgres: "$dir"
        chmod 700 "$dir"
        as_server "$bin/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 --no-locale >&2
    fi
    if ! as_server "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
        if ! as_server "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start -o \
            "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
             -c max_connections=200" >&2; then
            echo "PostgreSQL did not start (is port $port taken? set PGTEST_PORT):" >&2
            tail -n 20 "$dir/server.log" >&2
            exit 1
        fi
    fi
    for name in gateway gateway_keys; do
        if ! as_server "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc \
            "SELECT 1 FROM pg_database WHERE datname = '$name'" | grep -q 1; then
            as_server "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres "$name"
        fi
    done
    echo "$url"
}

stop() {
    local bin
    bin=$(bindir)
    [ -n "$bin" ] && [ -f "$dir/PG_VERSION" ] && as_server "$bin/pg_ctl" -D "$dir" -m fast stop >&2 || true
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
