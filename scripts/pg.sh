#!/usr/bin/env bash
# A private PostgreSQL cluster for this project: its own data directory and port, loopback only.
#   scripts/pg.sh start   initdb if needed, start, create role and database; prints DATABASE_URL
#   scripts/pg.sh stop | status | url
# Honours PGDIR (default var/pg), PGPORT (default 55432). Installs PostgreSQL when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PGPORT=${PGPORT:-55432}
if [[ -z ${PGDIR:-} ]]; then
  PGDIR=$PWD/var/pg
  # As root the server runs as `postgres`, which must reach the data directory: a checkout under
  # /root (mode 700) is out of its reach, so the cluster then lives under /var/tmp instead.
  if [[ $(id -u) == 0 ]] && id postgres >/dev/null 2>&1 \
     && ! runuser -u postgres -- test -x "$PWD" 2>/dev/null; then
    PGDIR=/var/tmp/cxr-worker-pg/$(printf '%s' "$PWD" | sha256sum | cut -c1-12)
  fi
fi
URL="postgres://cxr:cxr@127.0.0.1:$PGPORT/cxr"

pgbin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [[ -x $d/initdb ]] && { echo "$d"; return; }
  done
  return 1
}

ensure_installed() {
  if ! pgbin >/dev/null; then
    echo "installing PostgreSQL..." >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    # the packaged cluster is not ours: keep it from running
    systemctl disable --now postgresql >/dev/null 2>&1 || service postgresql stop >/dev/null 2>&1 || true
  fi
}

as_pg() {
  # from / so that postgres is not left in a directory it cannot enter
  if [[ $(id -u) == 0 ]]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

cmd=${1:-start}
case $cmd in
  start)
    ensure_installed
    BIN=$(pgbin)
    mkdir -p "$PGDIR"
    if [[ $(id -u) == 0 ]]; then chown postgres "$PGDIR" && chmod 700 "$PGDIR"; fi
    if [[ ! -f $PGDIR/PG_VERSION ]]; then
      as_pg "$BIN/initdb" -D "$PGDIR" -U postgres -A trust >/dev/null
      cat >> "$PGDIR/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$PGDIR'
fsync = on
max_connections = 200
CONF
    fi
    if ! as_pg "$BIN/pg_ctl" -D "$PGDIR" status >/dev/null 2>&1; then
      # the port and socket directory are given at every start, not only at initdb
      as_pg "$BIN/pg_ctl" -D "$PGDIR" -l "$PGDIR/server.log" -w \
        -o "-p $PGPORT -k $PGDIR -c listen_addresses=127.0.0.1" start >/dev/null
    fi
    psql_() { as_pg psql -h 127.0.0.1 -p "$PGPORT" -U postgres -qAt "$@"; }
    if [[ -z $(psql_ -c "select 1 from pg_roles where rolname='cxr'") ]]; then
      psql_ -c "create role cxr login password 'cxr' createdb createrole"
    fi
    if [[ -z $(psql_ -c "select 1 from pg_database where datname='cxr'") ]]; then
      psql_ -c "create database cxr owner cxr"
    fi
    echo "$URL"
    ;;
  stop)
    BIN=$(pgbin)
    as_pg "$BIN/pg_ctl" -D "$PGDIR" -m fast stop >/dev/null 2>&1 || true
    ;;
  status)
    BIN=$(pgbin)
    as_pg "$BIN/pg_ctl" -D "$PGDIR" status
    ;;
  url)
    echo "$URL"
    ;;
  *)
    echo "usage: $0 start|stop|status|url" >&2; exit 2;;
esac
