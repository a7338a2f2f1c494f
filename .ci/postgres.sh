#!/usr/bin/env bash
# Run a command with a throwaway PostgreSQL server for the tests: `.ci/postgres.sh pytest -q`.
#
# - KDBENCH_TEST_POSTGRES already set: use that server (a SQLAlchemy URL whose user may CREATE DATABASE).
# - root: install Debian's postgresql if initdb is missing, start a fresh cluster (trust auth, 127.0.0.1
#   only, a free port, a temp folder) as the postgres user, export KDBENCH_TEST_POSTGRES, run the
#   command, then stop the server and delete the cluster. One role is the exception to trust: the user
#   kdbench_pw_user (created by the test that needs it) must log in with its password (scram-sha-256), so
#   that a test can check that kdbench passes a real password through and never shows it.
# - otherwise: run the command without a server; the PostgreSQL tests skip and print
#   KDBENCH_TEST_POSTGRES_WHY.
set -uo pipefail

if [ -n "${KDBENCH_TEST_POSTGRES:-}" ]; then exec "$@"; fi

why() { export KDBENCH_TEST_POSTGRES_WHY="$1"; echo "note: $1: the PostgreSQL tests will skip" >&2; shift; exec "$@"; }
bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

if [ "$(id -u)" != 0 ]; then
  why "no server: not root, so .ci/postgres.sh cannot install or start one; set KDBENCH_TEST_POSTGRES" "$@"
fi
if [ -z "$(bindir)" ]; then
  echo "installing postgresql from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq postgresql >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; } \
    || why "no server: apt-get install postgresql failed" "$@"
fi
BIN="$(bindir)"
[ -x "$BIN/initdb" ] || why "no server: initdb not found under /usr/lib/postgresql" "$@"
id postgres >/dev/null 2>&1 || why "no server: the postgres user does not exist" "$@"

DIR="$(mktemp -d /tmp/kdbench-pg.XXXXXX)"
chown postgres "$DIR"
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
as_pg() { runuser -u postgres -- "$@"; }
stop() {
  as_pg "$BIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1
  rm -rf "$DIR"
}
trap stop EXIT
trap 'exit 130' INT TERM

if ! as_pg "$BIN/initdb" -D "$DIR/data" -A trust -U postgres -E UTF8 >"$DIR/initdb.log" 2>&1 \
   || ! { hba="$DIR/data/pg_hba.conf"; { echo "host all kdbench_pw_user 127.0.0.1/32 scram-sha-256"; cat "$hba"; } \
          >"$hba.new" && mv "$hba.new" "$hba" && chown postgres "$hba"; } \
   || ! as_pg "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DIR -c max_connections=200 -c fsync=off" start >/dev/null; then
  cat "$DIR"/*.log >&2
  trap - EXIT; stop
  why "no server: the throwaway PostgreSQL cluster did not start (log above)" "$@"
fi
export KDBENCH_TEST_POSTGRES="postgresql+psycopg://postgres@127.0.0.1:$PORT/postgres"
echo "PostgreSQL $("$BIN/postgres" -V | awk '{print $3}') for the tests at $KDBENCH_TEST_POSTGRES" >&2
"$@"
