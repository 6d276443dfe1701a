#!/usr/bin/env bash
# A year of data (issue 12): the same measurements against an empty database and against one
# filled with a year of a large department (1,000,000 instances in 300,000 studies with their
# jobs, analyses, 14 findings per analysed image, SRs, SEGs, SCs, outbox rows and delivery
# attempts; scripts/bench/year-fill.sql says what mix), in the same run:
#
#   - C-STORE: BENCH_YEAR_STORES small real instances (4 per study) sent by DCMTK dcmsend over
#     one association to the daemon; p50/p95 of the "stored" line's `ms` (receive to response);
#   - the daemon's `/metrics` and `/readyz` (curl, BENCH_YEAR_HTTP requests each, p50/p95);
#   - the hot SQL of the worker, the sender and the receiver, exactly as in src/db/ with its
#     parameters bound (pgbench -M prepared, like sqlx), each in a transaction rolled back so the
#     data stay as filled: job dequeue (one due job present), scheduling, the exhausted-job sweep,
#     the outbox claim, the store's three inserts; and the retention pass's two candidate queries;
#   - `cxr-worker findings` with typical filters and `cxr-worker status` (the CLI, wall time);
#   - the size of every table and index.
#
#   scripts/bench-year.sh                           # 1,000,000 instances (the fill: minutes)
#   BENCH_YEAR_INSTANCES=20000 scripts/bench-year.sh   # a smoke run
#
# Prints the comparison (empty, full, full/empty, goal) and writes it to var/bench/year.md, the
# sizes to var/bench/year-sizes.md. Goals (issue 12): no hot path above 1.2x its empty figure,
# /metrics under 100 ms, admin queries under 200 ms.
# Environment: BENCH_YEAR_INSTANCES (1000000), BENCH_YEAR_STORES (100), BENCH_YEAR_HTTP (200),
# BENCH_YEAR_SQL (200 executions of each statement, 20 of the retention queries), BENCH_YEAR_KEEP=1 keeps both databases,
# DATABASE_URL (default: the cluster of scripts/pg.sh), CXR_WORKER_BIN (default
# target/release/cxr-worker, built first), SKIP_BUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
INSTANCES=${BENCH_YEAR_INSTANCES:-1000000}
STORES=${BENCH_YEAR_STORES:-100}
HTTP_N=${BENCH_YEAR_HTTP:-200}
SQL_N=${BENCH_YEAR_SQL:-200}
OUTDIR=$ROOT/var/bench
RUN=$OUTDIR/year
(( STORES % 4 == 0 )) || { echo "BENCH_YEAR_STORES must be a multiple of 4" >&2; exit 2; }
for tool in dcmsend dcmodify psql pgbench curl python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool (scripts/setup.sh installs it)" >&2; exit 2; }
done

if [[ -n ${DATABASE_URL:-} ]]; then
  ADMIN_URL=$DATABASE_URL
elif pg_isready -q -h 127.0.0.1 -p "${PGPORT:-55432}"; then
  ADMIN_URL=$(scripts/pg.sh url)
else
  ADMIN_URL=$(scripts/pg.sh start | tail -1)
fi
ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$(scripts/ort-library.sh)}
BIN=${CXR_WORKER_BIN:-$ROOT/target/release/cxr-worker}
if [[ -z ${CXR_WORKER_BIN:-} && ${SKIP_BUILD:-0} != 1 ]]; then
  echo "== cargo build --release" >&2
  cargo build --release --quiet --bin cxr-worker
fi
[[ -x $BIN ]] || { echo "no binary at $BIN" >&2; exit 2; }

rm -rf "$RUN"
mkdir -p "$RUN"
SAMPLES=$RUN/samples.tsv   # db, measure, milliseconds (one line per sample)
: > "$SAMPLES"
DBS=(empty full)
declare -A URL
for d in "${DBS[@]}"; do URL[$d]=${ADMIN_URL%/*}/cxr_year_${d}_$$; done

LIVE_PID=""
cleanup() {
  [[ -n $LIVE_PID ]] && kill -TERM "$LIVE_PID" 2>/dev/null && wait "$LIVE_PID" 2>/dev/null
  if [[ ${BENCH_YEAR_KEEP:-0} != 1 ]]; then
    for d in "${DBS[@]}"; do
      psql -Xq "$ADMIN_URL" -c "DROP DATABASE IF EXISTS ${URL[$d]##*/} WITH (FORCE)" >/dev/null 2>&1
    done
  fi
  return 0
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# --- the instances to store: a small real chest image (WG04 RG3: CR, JPEG 2000, 207 KB), new UIDs
DX=$OUTDIR/year-dx
if [[ $(find "$DX" -name '*.dcm' 2>/dev/null | wc -l) -ne $STORES ]]; then
  rm -rf "$DX"; mkdir -p "$DX"
  for (( i = 0; i < STORES; i++ )); do
    study=1.2.826.0.1.3680043.10.1234.9.$(( i / 4 ))
    f=$DX/$(printf 'i%04d.dcm' "$i")
    cp tests/fixtures/dicom/RG3_J2KI.dcm "$f"
    dcmodify -q -nb -m "StudyInstanceUID=$study" -m "SeriesInstanceUID=$study.1" \
      -m "SOPInstanceUID=$study.1.$(( i % 4 + 1 ))" -m "AccessionNumber=BENCH$(( i / 4 ))" \
      -m "ViewPosition=PA" "$f"
  done
fi
mapfile -t FILES < <(printf '%s\n' "$DX"/*.dcm | sort)

# --- the daemon ----------------------------------------------------------------------------------
# start_daemon DB [LOG]: serve with one worker (tiny models: this measures the database, not inference;
# a quiet period of a day, so what is stored here is never scheduled), HTTP on, a destination
# PACS at a closed port (the sender polls the outbox; no row of the fill is due), no retention
# (its queries are measured with pgbench below). Sets LIVE_PID, DICOM_PORT and HTTP_PORT.
start_daemon() {
  local d=$1 dir=$RUN/$1 log=$RUN/$1/${2:-log}.json
  mkdir -p "$dir"
  HTTP_PORT=$(free_port)
  cat > "$dir/cxr-worker.toml" <<TOML
[dicom]
ae_title = "CXR_YEAR"
listen = "127.0.0.1:0"
allowed_calling_ae_titles = ["BENCH@127.0.0.1"]
[database]
url = "${URL[$d]}"
[spool]
dir = "spool"
max_used_percent = 100
[study]
workers = 1
quiet_period_secs = 86400
[models]
onnxruntime_library = "$ORT_DYLIB_PATH"
segmenter = "$ROOT/onnx/tiny/anatomy-segmenter.onnx"
classifier = "$ROOT/onnx/tiny/anatomy-xnet.onnx"
execution_providers = ["cpu"]
intra_threads = 1
[http]
enabled = true
listen = "127.0.0.1:$HTTP_PORT"
[log]
level = "info"
format = "json"
[[destinations]]
name = "PACS"
ae_title = "PACS"
host = "127.0.0.1"
port = 9
TOML
  "$BIN" serve --config "$dir/cxr-worker.toml" > /dev/null 2> "$log" &
  LIVE_PID=$!
  DICOM_PORT=""
  for _ in $(seq 600); do
    DICOM_PORT=$(grep -F '"listening"' "$log" 2>/dev/null | tail -1 \
      | grep -Eo '"addr":"[^"]*"' | grep -Eo '[0-9]+"$' | tr -d '"' || true)
    [[ -n $DICOM_PORT ]] && curl -fs -o /dev/null "http://127.0.0.1:$HTTP_PORT/healthz" && return 0
    sleep 0.1
  done
  echo "cxr-worker did not start: $(tail -5 "$log")" >&2
  return 1
}
stop_daemon() {
  kill -TERM "$LIVE_PID" 2>/dev/null || true
  wait "$LIVE_PID" 2>/dev/null || true
  LIVE_PID=""
}

# sample DB MEASURE MS...
sample() { local d=$1 m=$2; shift 2; for v in "$@"; do printf '%s\t%s\t%s\n' "$d" "$m" "$v"; done >> "$SAMPLES"; }

# curl_times DB MEASURE PATH: HTTP_N requests after 5 unmeasured ones
curl_times() {
  local d=$1 m=$2 path=$3 i
  for i in 1 2 3 4 5; do curl -fs -o /dev/null "http://127.0.0.1:$HTTP_PORT$path" || true; done
  for (( i = 0; i < HTTP_N; i++ )); do
    curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$HTTP_PORT$path"
  done | awk -v d="$d" -v m="$m" '{ printf "%s\t%s\t%.3f\n", d, m, $1 * 1000 }' >> "$SAMPLES"
}

# cli_times DB MEASURE ARGS...: 5 runs of cxr-worker after one unmeasured
cli_times() {
  local d=$1 m=$2 i s e; shift 2
  "$BIN" "$@" --config "$RUN/$d/cxr-worker.toml" > /dev/null
  for i in 1 2 3 4 5; do
    s=$(date +%s%N)
    "$BIN" "$@" --config "$RUN/$d/cxr-worker.toml" > "$RUN/$d/cli.out"
    e=$(date +%s%N)
    sample "$d" "$m" "$(( (e - s) / 1000 ))e-3"
  done
}

# sql_times DB MEASURE FILE: SQL_N executions of a pgbench script (prepared, one client); a
# tenth as many (at least 10) of the retention queries, which run once per pass, not per poll
sql_times() {
  local d=$1 m=$2 f=$3 log=$RUN/$1/pgbench n=$SQL_N
  [[ $f == *retention* ]] && n=$(( SQL_N / 10 > 10 ? SQL_N / 10 : 10 ))
  rm -f "$log".*
  pgbench -n -M prepared -c 1 -t "$n" -f "$f" -l --log-prefix="$log" "${URL[$d]}" \
    > "$RUN/$d/pgbench-$(basename "$f").out" 2>&1 \
    || { echo "pgbench $f failed: $(tail -3 "$RUN/$d/pgbench-$(basename "$f").out")" >&2; return 1; }
  awk -v d="$d" -v m="$m" '{ printf "%s\t%s\t%.3f\n", d, m, $3 / 1000 }' "$log".* >> "$SAMPLES"
}

measure() {
  local d=$1 dir=$RUN/$1
  echo "== $d: C-STORE, /metrics, /readyz, admin queries" >&2
  # dcmsend proposes each file's own transfer syntax (storescu would offer it beside the
  # uncompressed ones, and the uncompressed context would be the one accepted)
  dcmsend -aet BENCH -aec CXR_YEAR 127.0.0.1 "$DICOM_PORT" "${FILES[@]}" > "$dir/dcmsend.log" 2>&1
  python3 - "$dir/log.json" "$d" >> "$SAMPLES" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    f = e.get("fields", e)
    if f.get("message") == "stored":
        print(f"{sys.argv[2]}\tC-STORE (receive to response)\t{f['ms']}")
EOF
  curl_times "$d" "/metrics" /metrics
  curl_times "$d" "/readyz" /readyz
  curl -s "http://127.0.0.1:$HTTP_PORT/metrics" > "$dir/metrics.txt"
  curl -s "http://127.0.0.1:$HTTP_PORT/readyz" > "$dir/readyz.json"
  local month_from month_to
  month_from=$(date -u -d '-45 days' +%F) month_to=$(date -u -d '-15 days' +%F)
  cli_times "$d" "findings (newest 100 studies)" findings
  cli_times "$d" "findings --from --to (a month)" findings --from "$month_from" --to "$month_to"
  cli_times "$d" "findings --accession" findings --accession ACC000123456
  cli_times "$d" "findings --patient-id" findings --patient-id P4242
  cli_times "$d" "findings --label Pneumothorax --present" findings --label Pneumothorax --present
  cli_times "$d" "findings --label --min-probability --from" findings --label Cardiomegaly \
    --min-probability 0.9 --from "$month_from"
  cli_times "$d" "findings --state send-failed" findings --state send-failed
  cli_times "$d" "findings --state unreported" findings --state unreported
  cli_times "$d" "findings --state failed" findings --state failed
  cli_times "$d" "status" status
  stop_daemon

  echo "== $d: hot SQL (pgbench, rolled back)" >&2
  # one job due, so that dequeue takes one (its transaction is rolled back each time)
  psql -Xq "${URL[$d]}" -c "INSERT INTO jobs (study_instance_uid, run_after)
    SELECT study_instance_uid, now() - interval '1 second' FROM studies
    WHERE study_instance_uid = '1.2.826.0.1.3680043.10.1234.9.0'"
  local f
  for f in scripts/bench/year-sql/*.sql; do
    sql_times "$d" "$(sed -n '1s/^-- //p' "$f")" "$f"
  done
  psql -Xq "${URL[$d]}" -c "DELETE FROM jobs WHERE study_instance_uid = '1.2.826.0.1.3680043.10.1234.9.0'"
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
T0=$(date +%s)
for d in "${DBS[@]}"; do
  psql -Xq "$ADMIN_URL" -c "CREATE DATABASE ${URL[$d]##*/}"
done

# the empty database: migrated by the daemon, measured as it is
start_daemon empty
measure empty

# the full database: migrated by the daemon, then filled, then measured
start_daemon full migrate
stop_daemon
echo "== full: filling a year ($INSTANCES instances)" >&2
f0=$(date +%s)
psql -X -q -v ON_ERROR_STOP=1 -v instances="$INSTANCES" "${URL[full]}" \
  -f scripts/bench/year-fill.sql > "$RUN/fill.log"
f1=$(date +%s)
# (as the database owner: the shared catalogs are skipped, silently)
psql -X -q "${URL[full]}" -c "SET client_min_messages = error" -c "VACUUM (ANALYZE)"
f2=$(date +%s)
echo "   fill $(( f1 - f0 )) s, VACUUM ANALYZE $(( f2 - f1 )) s" >&2
start_daemon full
measure full
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# sizes of the full database: every table (heap, its indexes, total) and every index
psql -X -q "${URL[full]}" -A -F $'\t' -t -c "
  SELECT 'table', c.relname::text, c.reltuples::bigint::text, pg_relation_size(c.oid), pg_indexes_size(c.oid),
         pg_total_relation_size(c.oid)
  FROM pg_class c WHERE c.relkind = 'r' AND c.relnamespace = 'public'::regnamespace
  UNION ALL
  SELECT 'index', c.relname::text, t.relname::text, pg_relation_size(c.oid), NULL, NULL
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid
  WHERE t.relnamespace = 'public'::regnamespace
  ORDER BY 1 DESC, 6 DESC NULLS LAST, 4 DESC" > "$RUN/sizes.tsv"
COUNTS=$(psql -X -qAt "${URL[full]}" -c "SELECT (SELECT count(*) FROM instances) || ' instances, '
  || (SELECT count(*) FROM studies) || ' studies, ' || (SELECT count(*) FROM findings)
  || ' findings, ' || (SELECT count(*) FROM outbox) || ' outbox rows; database '
  || pg_size_pretty(pg_database_size(current_database()))")
MACHINE="$(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) CPUs ($(lscpu | sed -n 's/^Model name: *//p' | head -1)), \
$(free -g | awk '/^Mem:/ { print $2 }') GiB RAM; PostgreSQL $(psql -qAt "$ADMIN_URL" -c 'SHOW server_version' | cut -d' ' -f1) \
(shared_buffers $(psql -qAt "$ADMIN_URL" -c 'SHOW shared_buffers')); cxr-worker $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src migrations || echo '+dirty')"
python3 scripts/bench/year_report.py "$SAMPLES" "$RUN/sizes.tsv" "$OUTDIR/year.md" \
  "$OUTDIR/year-sizes.md" "fill $(( f1 - f0 )) s + VACUUM ANALYZE $(( f2 - f1 )) s: $COUNTS" \
  "load average (1/5/15 min) $LOAD_BEFORE before, $LOAD_AFTER after" "$MACHINE"
echo "== total $(( $(date +%s) - T0 )) s; samples and logs in $RUN" >&2
