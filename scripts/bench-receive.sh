#!/usr/bin/env bash
# Receive benchmark (issue 2, part 8): cxr-worker against DCMTK storescp, same run, same files;
# since issue 10 also over DICOM TLS (receive throughput over TLS against plain TCP, and against
# storescp +tls).
#
#   scripts/bench-receive.sh            # N=200 instances, 3 repetitions, median reported
#   BENCH_N=40 BENCH_REPS=1 scripts/bench-receive.sh   # quick smoke run
#
# - N real-size DX instances (2048x2048, 16 bits allocated, Explicit VR LE, ~8 MiB, real chest
#   pixels) are made once by scripts/bench/make-dx.py into var/bench/dx (reused by later runs).
# - Receivers, one at a time, each started fresh for every run, writing to var/bench/ (same disk):
#     cxr-worker        release build, fresh PostgreSQL database (createdb), its spool, fsync on
#                       (it always is), max PDU 128 KiB, JSON log parsed for the per-instance "ms".
#     storescp          DCMTK as shipped: one process (its default), -pdu 131072, +B
#                       (bit-preserving: the data set goes to the file as received, as cxr-worker
#                       stores it). storescp never fsyncs.
#     storescp tuned    the same with TCP_NODELAY=1 in its environment (DCMTK's switch to turn
#                       Nagle off: without it every C-STORE-RSP waits ~40 ms for a delayed ACK)
#                       and --fork (one process per association, so 4 associations run at once).
#   With BENCH_TLS=1 (the default), also:
#     cxr-worker tls    the same daemon with a [dicom.tls] listener (mutual TLS: client certificates
#                       must chain to the test CA); the sender goes to the TLS port.
#     storescp tls      storescp tuned (TCP_NODELAY=1, --fork, +B) with +tls server.key server.crt
#                       +cf ca.crt (it requires a client certificate, its default).
#   The TLS senders present the client certificate: storescu +tls modality.key modality.crt
#   +cf ca.crt. The throw-away PKI (tests/tls/make-pki.sh) is made once into $BENCH_DIR/pki.
# - Sender: DCMTK storescu (-R -pdu 131072), the same options for every receiver, to 127.0.0.1:
#     1x  one association sending all N files
#     4x  4 concurrent associations (4 storescu processes) each sending N/4 files
#   (plus the TLS options above for the TLS receivers)
# - After every cxr-worker run (plain or TLS): the database has N instance rows and the spool N
#   files (and no staged leftovers); after every storescp run: its folder has N files. A mismatch
#   fails the run.
# - Peak RSS and CPU seconds (user + system) of each receiver: GNU time (the receiver and its
#   reaped children). "sync after": how long the `sync` right after a storescp run takes, i.e.
#   what storescp left unwritten (shown, not counted). Where cxr-worker's time goes:
#   scripts/bench/profile-cxr.sh.
# Prints a table of medians; BENCH_OUT (default var/bench/results.md) gets the markdown table
# (with BENCH_TLS=1 followed by the throughput ratios TLS / plain for cxr-worker and cxr-worker
# tls / storescp tls).
# Environment: BENCH_N (200), BENCH_REPS (3), DATABASE_URL (default: the cluster of scripts/pg.sh),
# BENCH_DIR (var/bench), CXR_WORKER_BIN (default target/release/cxr-worker, built if missing
# or stale), BENCH_PDU (131072), BENCH_TLS (1: also the TLS receivers; 0: plain TCP only).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N=${BENCH_N:-200}
REPS=${BENCH_REPS:-3}
PDU=${BENCH_PDU:-131072}
BENCH_TLS=${BENCH_TLS:-1}
BENCH_DIR=${BENCH_DIR:-$ROOT/var/bench}
OUT=${BENCH_OUT:-$BENCH_DIR/results.md}
PY=$ROOT/.venv/bin/python
AE=CXR_BENCH
RUNS=$BENCH_DIR/runs
(( N % 4 == 0 )) || { echo "BENCH_N must be a multiple of 4" >&2; exit 2; }

for tool in storescp storescu echoscu psql pg_isready bc /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "missing $tool (scripts/setup.sh installs it)" >&2; exit 2; }
done
[[ $BENCH_TLS == [01] ]] || { echo "BENCH_TLS must be 0 or 1" >&2; exit 2; }
if (( BENCH_TLS )); then
  command -v openssl >/dev/null \
    || { echo "missing openssl (BENCH_TLS=0 skips the TLS runs)" >&2; exit 2; }
fi

# the project's private cluster (scripts/pg.sh), unless DATABASE_URL names a server; a cluster
# already answering on the port (another checkout's) is used as it is
if [[ -n ${DATABASE_URL:-} ]]; then
  ADMIN_URL=$DATABASE_URL
elif pg_isready -q -h 127.0.0.1 -p "${PGPORT:-55432}"; then
  ADMIN_URL=$(scripts/pg.sh url)
else
  ADMIN_URL=$(scripts/pg.sh start)
fi

# --- the binary -------------------------------------------------------------------------------
BIN=${CXR_WORKER_BIN:-$ROOT/target/release/cxr-worker}
if [[ -z ${CXR_WORKER_BIN:-} ]]; then
  echo "== cargo build --release" >&2
  cargo build --release --quiet --bin cxr-worker
fi
[[ -x $BIN ]] || { echo "no binary at $BIN" >&2; exit 2; }

# --- the files --------------------------------------------------------------------------------
DX=$BENCH_DIR/dx
"$PY" scripts/bench/make-dx.py "$DX" "$N"
mapfile -t FILES < <(printf '%s\n' "$DX"/dx*.dcm | sort | head -n "$N")
(( ${#FILES[@]} == N )) || { echo "expected $N files in $DX" >&2; exit 1; }
BYTES=$(du -cb "${FILES[@]}" | tail -1 | cut -f1)
cat "${FILES[@]}" > /dev/null   # into the page cache: the sender reads from memory in every run

# --- the throw-away PKI (TLS runs) -----------------------------------------------------------
PKI=$BENCH_DIR/pki
SERVER_TLS=() CLIENT_TLS=()
if (( BENCH_TLS )); then
  # made once; made again when a file is missing or a certificate expires within a day
  pki_ok=1
  for f in ca.crt server.crt server.key modality.crt modality.key; do
    [[ -s $PKI/$f ]] || pki_ok=0
  done
  if (( pki_ok )); then
    for c in server modality; do
      openssl x509 -noout -checkend 86400 -in "$PKI/$c.crt" >/dev/null || pki_ok=0
    done
  fi
  if (( ! pki_ok )); then
    echo "== tests/tls/make-pki.sh $PKI" >&2
    rm -rf "$PKI"
    tests/tls/make-pki.sh "$PKI"
  fi
  SERVER_TLS=(+tls "$PKI/server.key" "$PKI/server.crt" +cf "$PKI/ca.crt")
  CLIENT_TLS=(+tls "$PKI/modality.key" "$PKI/modality.crt" +cf "$PKI/ca.crt")
fi

rm -rf "$RUNS"
mkdir -p "$RUNS"
RESULTS=$RUNS/results.tsv
printf 'rep\treceiver\tmode\tseconds\tpeak_rss_kb\tcpu_s\tsync_s\tstore_ms_median\tstore_ms_p90\n' > "$RESULTS"

# on any exit: stop a receiver still running, drop a benchmark database still there
LIVE_PID="" LIVE_DB=""
cleanup() {
  [[ -n $LIVE_PID ]] && kill -TERM "$LIVE_PID" 2>/dev/null
  [[ -n $LIVE_DB ]] && psql -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $LIVE_DB WITH (FORCE)" >/dev/null 2>&1
  return 0
}
trap cleanup EXIT

free_port() {
  "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# send MODE PORT LOGPREFIX [tls]: storescu to 127.0.0.1:PORT, one association (1) or four (4);
# with "tls", over TLS with the client certificate (CLIENT_TLS).
# Prints the wall-clock seconds from the first storescu start to the last one's exit.
send() {
  local mode=$1 port=$2 log=$3 tls=${4:-} per i start end rc=0
  local -a pids=() sec=()
  if [[ $tls == tls ]]; then sec=("${CLIENT_TLS[@]}"); fi
  per=$(( N / mode ))
  start=$(date +%s.%N)
  for (( i = 0; i < mode; i++ )); do
    storescu -R -pdu "$PDU" "${sec[@]}" -aet BENCH -aec "$AE" 127.0.0.1 "$port" \
      "${FILES[@]:i*per:per}" > "$log.storescu$i" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || rc=$?; done
  end=$(date +%s.%N)
  (( rc == 0 )) || { echo "storescu failed (rc $rc), see $log.storescu*" >&2; return 1; }
  echo "$end - $start" | bc -l
}

# the PID of the receiver started under /usr/bin/time (its only child)
child_of() {
  local parent=$1 c=""
  for _ in $(seq 50); do
    c=$(pgrep -P "$parent" || true)
    [[ -n $c ]] && { echo "$c"; return; }
    sleep 0.1
  done
  return 1
}

# stop RECEIVER_PID TIMER_PID: SIGTERM the receiver, wait for GNU time to report
stop() {
  kill -TERM "$1" 2>/dev/null || true
  wait "$2" 2>/dev/null || true
  LIVE_PID=""
}

# GNU time's last line: peak RSS KiB, user s, system s
peak_rss() { tail -1 "$1" | cut -d' ' -f1; }
cpu_s() { tail -1 "$1" | awk '{ print $2 + $3 }'; }

# run_cxr REP MODE [tls]: one cxr-worker run; with "tls" the sender goes to its [dicom.tls] port
run_cxr() {
  local rep=$1 mode=$2 tls=${3:-} name=cxr-worker ready='"listening"' tls_toml=""
  local dir=$RUNS/cxr${tls:+-$tls}-$mode-$rep db port secs rows files staged tpid pid rss
  if [[ $tls == tls ]]; then
    name="cxr-worker tls"
    ready='"listening (DICOM TLS)"'
    tls_toml="[dicom.tls]
listen = \"127.0.0.1:0\"
certificate = \"$PKI/server.crt\"
private_key = \"$PKI/server.key\"
# mutual TLS (the default): client certificates must chain to this CA
ca_file = \"$PKI/ca.crt\""
  fi
  db=cxr_bench_$(date +%s%N)
  mkdir -p "$dir"
  psql -q "$ADMIN_URL" -c "CREATE DATABASE $db" >/dev/null
  LIVE_DB=$db
  local url=${ADMIN_URL%/*}/$db
  cat > "$dir/cxr-worker.toml" <<TOML
[dicom]
ae_title = "$AE"
listen = "127.0.0.1:0"
allowed_calling_ae_titles = ["BENCH@127.0.0.1"]
max_associations = 8
max_pdu_length = $PDU
$tls_toml
[database]
url = "$url"
[spool]
dir = "spool"
# the benchmark machine's disk may be nearly full: no watermark
max_used_percent = 100
[study]
# receive only: the benchmark measures the receiver, not the analysis
workers = 0
[http]
enabled = false
[log]
level = "info"
format = "json"
TOML
  /usr/bin/time -f '%M %U %S' -o "$dir/time" "$BIN" serve --config "$dir/cxr-worker.toml" \
    > /dev/null 2> "$dir/log.json" &
  tpid=$!
  pid=$(child_of "$tpid")
  LIVE_PID=$pid
  port=""
  for _ in $(seq 300); do
    port=$(grep -m1 -F "$ready" "$dir/log.json" 2>/dev/null | grep -Eo '"addr":"[^"]*"' | grep -Eo '[0-9]+"$' | tr -d '"' || true)
    [[ -n $port ]] && break
    sleep 0.1
  done
  [[ -n $port ]] || { echo "cxr-worker did not start: $(cat "$dir/log.json")" >&2; stop "$pid" "$tpid"; return 1; }
  secs=$(send "$mode" "$port" "$dir/send" "$tls")
  stop "$pid" "$tpid"
  rss=$(peak_rss "$dir/time")
  rows=$(psql -qAt "$url" -c "SELECT count(*) FROM instances")
  files=$(find "$dir/spool/objects" -type f -name '*.dcm' | wc -l)
  staged=$(find "$dir/spool/tmp" -type f | wc -l)
  if (( rows != N || files != N || staged != 0 )); then
    echo "$name run $mode/$rep LOST DATA: $rows rows, $files files, $staged staged (want $N)" >&2
    return 1
  fi
  read -r med p90 < <("$PY" - "$dir/log.json" <<'EOF'
import json, statistics, sys
events = [json.loads(line) for line in open(sys.argv[1])]
ms = sorted(e["ms"] for e in events if e.get("message") == "stored")
print(statistics.median(ms), ms[int(len(ms) * 0.9) - 1])
EOF
  )
  printf '%s\t%s\t%sx\t%s\t%s\t%s\t0\t%s\t%s\n' "$rep" "$name" "$mode" "$secs" "$rss" "$(cpu_s "$dir/time")" "$med" "$p90" >> "$RESULTS"
  psql -q "$ADMIN_URL" -c "DROP DATABASE $db WITH (FORCE)" >/dev/null
  LIVE_DB=""
  rm -rf "$dir/spool"
  sync
}

# run_storescp REP MODE VARIANT: VARIANT "" (as shipped), tuned, or tls (tuned, over TLS)
run_storescp() {
  local rep=$1 mode=$2 variant=$3 name=storescp dir port secs files tpid pid rss up=""
  local -a extra=() env=() sec=()
  case $variant in
    tuned) name="storescp tuned"; extra=(--fork); env=(TCP_NODELAY=1) ;;
    tls) name="storescp tls"; extra=(--fork "${SERVER_TLS[@]}"); env=(TCP_NODELAY=1)
      sec=("${CLIENT_TLS[@]}") ;;
  esac
  dir=$RUNS/storescp${variant:+-$variant}-$mode-$rep
  mkdir -p "$dir/out"
  port=$(free_port)
  env "${env[@]}" /usr/bin/time -f '%M %U %S' -o "$dir/time" storescp "${extra[@]}" -aet "$AE" -pdu "$PDU" +B \
    -od "$dir/out" "$port" > "$dir/log" 2>&1 &
  tpid=$!
  pid=$(child_of "$tpid")
  LIVE_PID=$pid
  for _ in $(seq 100); do
    if echoscu "${sec[@]}" -aec "$AE" 127.0.0.1 "$port" >/dev/null 2>&1; then up=1; break; fi
    sleep 0.1
  done
  [[ -n $up ]] \
    || { echo "$name did not start: $(cat "$dir/log")" >&2; stop "$pid" "$tpid"; return 1; }
  secs=$(send "$mode" "$port" "$dir/send" "$variant")
  # --fork: the children may still be closing their files
  for _ in $(seq 100); do
    [[ -z $(pgrep -P "$pid" || true) ]] && break
    sleep 0.1
  done
  stop "$pid" "$tpid"
  rss=$(peak_rss "$dir/time")
  files=$(find "$dir/out" -type f | wc -l)
  (( files == N )) || { echo "$name run $mode/$rep: $files files, want $N" >&2; return 1; }
  # storescp does not fsync: what the first sync after it costs is what it left unwritten (noted,
  # not counted); it also keeps its dirty pages from slowing the next run
  s0=$(date +%s.%N); sync; s1=$(date +%s.%N)
  printf '%s\t%s\t%sx\t%s\t%s\t%s\t%s\t\t\n' "$rep" "$name" "$mode" "$secs" "$rss" \
    "$(cpu_s "$dir/time")" "$(echo "$s1 - $s0" | bc -l)" >> "$RESULTS"
  rm -rf "$dir/out"
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
T0=$(date +%s)
echo "== $N files, $(( BYTES / 1048576 )) MiB, $REPS repetitions; load average $LOAD_BEFORE" >&2
for (( rep = 1; rep <= REPS; rep++ )); do
  for mode in 1 4; do
    run_cxr "$rep" "$mode"
    if (( BENCH_TLS )); then run_cxr "$rep" "$mode" tls; fi
    run_storescp "$rep" "$mode" ""
    run_storescp "$rep" "$mode" tuned
    if (( BENCH_TLS )); then run_storescp "$rep" "$mode" tls; fi
    echo "   rep $rep ${mode}x done ($(( $(date +%s) - T0 )) s)" >&2
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

MACHINE="$(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) CPUs ($(lscpu | sed -n 's/^Model name: *//p' | head -1)), \
$(free -g | awk '/^Mem:/ { print $2 }') GiB RAM, kernel $(uname -r); $BENCH_DIR on \
$(df --output=fstype,source "$BENCH_DIR" | tail -1 | xargs); $(storescp --version | head -1 | tr -d '$'); \
PostgreSQL $(psql -qAt "$ADMIN_URL" -c 'SHOW server_version' | cut -d' ' -f1) (fsync $(psql -qAt "$ADMIN_URL" -c 'SHOW fsync'))"
"$PY" - "$RESULTS" "$N" "$BYTES" "$OUT" "$LOAD_BEFORE" "$LOAD_AFTER" "$MACHINE" <<'EOF'
import csv, statistics, sys
path, n, nbytes, out, load0, load1, machine = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:]
rows = list(csv.DictReader(open(path), delimiter="\t"))
groups = {}
for r in rows:
    groups.setdefault((r["receiver"], r["mode"]), []).append(r)
receivers = ["cxr-worker", "cxr-worker tls", "storescp", "storescp tuned", "storescp tls"]
order = [(r, m) for m in ("1x", "4x") for r in receivers]
median_s = {key: statistics.median(float(r["seconds"]) for r in g) for key, g in groups.items()}
lines = [
    "| receiver | associations | median s | instances/s | MB/s | runs (s) | receiver CPU s | peak RSS MiB | store ms median / p90 | sync after, s |",
    "|---|---|---|---|---|---|---|---|---|---|",
]
for key in order:
    g = groups.get(key)
    if not g:
        continue
    secs = [float(r["seconds"]) for r in g]
    med = statistics.median(secs)
    rss = max(int(r["peak_rss_kb"]) for r in g) / 1024
    cpu = statistics.median(float(r["cpu_s"]) for r in g)
    sync = statistics.median(float(r["sync_s"]) for r in g)
    ms = ""
    if g[0]["store_ms_median"]:
        ms = "{:.0f} / {:.0f}".format(statistics.median(float(r["store_ms_median"]) for r in g),
                                      statistics.median(float(r["store_ms_p90"]) for r in g))
    lines.append(
        f"| {key[0]} | {key[1][0]} | {med:.2f} | {n / med:.1f} | {nbytes / 1e6 / med:.0f} "
        f"| {' '.join(f'{s:.2f}' for s in secs)} | {cpu:.1f} | {rss:.0f} | {ms} "
        f"| {f'{sync:.2f}' if key[0].startswith('storescp') else '-'} |"
    )
table = "\n".join(lines)

def ratio(a, b):
    # throughput of a / throughput of b, from the median seconds (same N)
    parts = []
    for m in ("1x", "4x"):
        if (a, m) in median_s and (b, m) in median_s:
            r = median_s[(b, m)] / median_s[(a, m)]
            plural = "s" if m != "1x" else ""
            parts.append(f"{r:.2f} ({(r - 1) * 100:+.0f} %) at {m[0]} association{plural}")
    return ", ".join(parts)

ratios = [
    ("TLS / plain receive throughput, cxr-worker (cxr-worker tls / cxr-worker)",
     ratio("cxr-worker tls", "cxr-worker")),
    ("cxr-worker tls / storescp tls", ratio("cxr-worker tls", "storescp tls")),
    ("for comparison, storescp tls / storescp tuned", ratio("storescp tls", "storescp tuned")),
]
ratios = [f"- {label}: {text}." for label, text in ratios if text]
if ratios:
    table += "\n\n" + "\n".join(ratios) + "\n"
note = (f"\n{n} instances, {nbytes / 1e6:.0f} MB ({nbytes / n / 1e6:.2f} MB each); MB = 10^6 bytes; "
        f"load average (1/5/15 min) {load0} before, {load1} after.\n{machine}.\n")
print(table + note)
open(out, "w").write(table + note)
EOF
echo "== total $(( $(date +%s) - T0 )) s; per-run files in $RUNS, table in $OUT" >&2
