#!/usr/bin/env bash
# Starts (or reuses) a private PostgreSQL cluster for store/postgres tests and
# prints its DSN on stdout, for:
#
#   export TRUSTGATE_TEST_POSTGRES="$(scripts/pg-test-cluster.sh)"
#
# Idempotent: a second run finds the cluster running and prints the same DSN.
# The cluster lives in $TRUSTGATE_PG_DIR (default /tmp/trustgate-pg), runs as
# a non-root user (postgres, created if missing, when run as root), listens
# on a unix socket in that directory (the DSN) and, with TLS only, on
# 127.0.0.1, and has a database "trustgate".
# Tests isolate themselves in schemas they create and drop. Stop it with
#   scripts/pg-test-cluster.sh stop
# Everything but the DSN goes to stderr.
set -euo pipefail

dir="${TRUSTGATE_PG_DIR:-/tmp/trustgate-pg}"
port="${TRUSTGATE_PG_PORT:-55432}"
db=trustgate

bindir=""
find_bindir() {
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && bindir="$d"
  done
}
find_bindir
if [ -z "$bindir" ]; then
  echo "pg-test-cluster: installing postgresql" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >&2
  find_bindir
  [ -n "$bindir" ] || { echo "pg-test-cluster: no initdb after installing postgresql" >&2; exit 1; }
fi

# as runs a command as the cluster's owner: ourselves, or postgres when root.
owner="$(id -un)"
if [ "$(id -u)" = 0 ]; then
  owner=postgres
  id -u postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin postgres >&2
fi
as() {
  if [ "$(id -un)" = "$owner" ]; then "$@"; else runuser -u "$owner" -- "$@"; fi
}

if [ "${1:-}" = stop ]; then
  if [ -f "$dir/data/postmaster.pid" ]; then
    as "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >&2
  fi
  exit 0
fi

mkdir -p "$dir"
chown "$owner" "$dir"
chmod 0700 "$dir"
if [ ! -f "$dir/data/PG_VERSION" ]; then
  rm -rf "$dir/data"
  as "$bindir/initdb" -D "$dir/data" -U "$owner" --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
  echo "include_if_exists 'trustgate.conf'" >>"$dir/data/postgresql.conf"
fi
# TLS on the loopback port, with a self-signed certificate for 127.0.0.1
# (its own root CA), so that tests can check sslmode and ssl_root_cert
# against the real server: TCP connections must use TLS (hostssl).
if [ ! -f "$dir/server.crt" ]; then
  command -v openssl >/dev/null || { echo "pg-test-cluster: openssl is needed for the TLS certificate" >&2; exit 1; }
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj /CN=trustgate-test-postgres -addext subjectAltName=IP:127.0.0.1,DNS:localhost \
    -keyout "$dir/server.key" -out "$dir/server.crt" 2>/dev/null
  chown "$owner" "$dir/server.key" "$dir/server.crt"
  chmod 0600 "$dir/server.key"
fi
cat >"$dir/data/trustgate.conf" <<EOF
# trustgate test cluster: a unix socket and TLS on loopback, no durability
# (tests only).
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
port = $port
ssl = on
ssl_cert_file = '$dir/server.crt'
ssl_key_file = '$dir/server.key'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
shared_buffers = 64MB
EOF
cat >"$dir/data/pg_hba.conf" <<EOF
local     all all              trust
hostssl   all all 127.0.0.1/32 trust
hostnossl all all 0.0.0.0/0    reject
EOF
chown "$owner" "$dir/data/trustgate.conf" "$dir/data/pg_hba.conf"
if ! as "$bindir/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
  as "$bindir/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 start >&2
else
  as "$bindir/pg_ctl" -D "$dir/data" reload >/dev/null # settings may have changed
fi
if ! as "$bindir/psql" -h "$dir" -p "$port" -d postgres -U "$owner" -Atqc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
  as "$bindir/createdb" -h "$dir" -p "$port" -U "$owner" "$db"
fi
printf 'host=%s port=%s user=%s dbname=%s sslmode=disable\n' "$dir" "$port" "$owner" "$db"
