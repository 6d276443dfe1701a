#!/usr/bin/env bash
# Where cxr-worker's time goes per received instance: runs the release daemon under
# `strace -f -T` (file and socket syscalls only, seccomp-filtered),
# sends N of the benchmark files over 1 or 4 associations with storescu, and prints, per
# instance, the time spent in: writing the staged file, fsync of the file, rename + fsync of the
# study directory, and the rest of the "stored ... ms" interval (parse + PostgreSQL insert and
# commit, which waits on the server's WAL fsync), next to the time between two acknowledgements.
#   scripts/bench/profile-cxr.sh [N=100] [ASSOCIATIONS=1]
# Needs the files of scripts/bench-receive.sh (var/bench/dx) and target/release/cxr-worker.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
N=${1:-100}
MODE=${2:-1}
PY=$ROOT/.venv/bin/python
ADMIN_URL=${DATABASE_URL:-$(scripts/pg.sh url)}
BIN=${CXR_WORKER_BIN:-$ROOT/target/release/cxr-worker}
DIR=$ROOT/var/bench/profile
mapfile -t FILES < <(printf '%s\n' "$ROOT"/var/bench/dx/dx*.dcm | sort | head -n "$N")
(( ${#FILES[@]} == N )) || { echo "run scripts/bench-receive.sh first (var/bench/dx)" >&2; exit 2; }
rm -rf "$DIR"
mkdir -p "$DIR"
cd "$DIR"
DB=cxr_profile_$(date +%s%N)
psql -q "$ADMIN_URL" -c "CREATE DATABASE $DB" >/dev/null
trap 'psql -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null; rm -rf "$DIR/spool"' EXIT
cat > cxr-worker.toml <<TOML
[dicom]
ae_title = "CXR_BENCH"
listen = "127.0.0.1:0"
allowed_calling_ae_titles = ["BENCH@127.0.0.1"]
max_pdu_length = 131072
[database]
url = "${ADMIN_URL%/*}/$DB"
[spool]
dir = "spool"
max_used_percent = 100
[log]
level = "info"
format = "json"
TOML
strace -f --seccomp-bpf -T -ttt -yy -o strace.txt \
  -e trace=fsync,fdatasync,write,rename,renameat,renameat2,recvfrom,sendto,read \
  "$BIN" serve --config cxr-worker.toml 2> log.json &
SPID=$!
port=""
for _ in $(seq 300); do
  port=$(grep -m1 '"listening"' log.json 2>/dev/null | grep -Eo '"addr":"[^"]*"' | grep -Eo '[0-9]+"$' | tr -d '"' || true)
  [[ -n $port ]] && break
  sleep 0.1
done
[[ -n $port ]] || { cat log.json >&2; kill "$SPID"; exit 1; }
per=$(( N / MODE ))
start=$(date +%s.%N)
pids=()
for (( i = 0; i < MODE; i++ )); do
  storescu -R -pdu 131072 -aet BENCH -aec CXR_BENCH 127.0.0.1 "$port" "${FILES[@]:i*per:per}" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
end=$(date +%s.%N)
DPID=$(pgrep -P "$SPID")
kill -TERM "$DPID"
wait "$SPID" || true
"$PY" "$ROOT/scripts/bench/profile_report.py" strace.txt log.json "$N" "$(echo "$end - $start" | bc -l)" "$MODE"
