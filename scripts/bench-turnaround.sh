#!/usr/bin/env bash
# Turnaround benchmark: from the C-STORE response of a study's last instance (sender side) to the
# arrival of all its outputs at the destination (receiver side; the SR alone is reported too), over
# one-image chest studies, with the full-size models on the CPU and a release build. The quiet
# period is reported separately.
#
#   scripts/bench-turnaround.sh                   # 50 studies (+1 warm-up), quiet period 2 s
#   COUNT=100 QUIET=5 scripts/bench-turnaround.sh
#   STUDY_EXTRA='poll_interval_secs = 0.1' scripts/bench-turnaround.sh   # more [study] keys
#   INTERVAL=3 scripts/bench-turnaround.sh        # one study every 3 s instead of one after another
#   J2K=1 scripts/bench-turnaround.sh             # the same studies as JPEG 2000 lossless
#   OUTPUTS=sr scripts/bench-turnaround.sh        # the destination takes the SR only (default sr,seg,sc)
#
# Needs PostgreSQL (DATABASE_URL with CREATEDB; default: scripts/pg.sh start), psql, the Python
# env (.venv) and the full-size models (made by scripts/make-models.sh when missing). The studies
# are generated once into var/bench/studies (-j2k) from real chest pixel data (NIH PNGs, WG04 RG1) with
# new UIDs; every run uses a fresh database, dropped afterwards. Results: var/bench/*.json, the
# daemon's log next to them. SKIP_BUILD=1 reuses target/release/cxr-worker; CXR_WORKER_BIN=PATH runs another build.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
COUNT=${COUNT:-50}
QUIET=${QUIET:-2}
INTERVAL=${INTERVAL:-0}
ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$(scripts/ort-library.sh)}
DATABASE_URL=${DATABASE_URL:-$(scripts/pg.sh start | tail -1)}

# CXR_WORKER_BIN: another build (e.g. the previous main's) for a same-session A/B
BIN=${CXR_WORKER_BIN:-target/release/cxr-worker}
[[ "${SKIP_BUILD:-0}" == 1 || -n ${CXR_WORKER_BIN:-} ]] || cargo build --release --quiet --bin cxr-worker
[[ -f onnx/anatomy-segmenter.onnx && -f onnx/anatomy-xnet.onnx ]] || scripts/make-models.sh
mkdir -p var/bench
studies=var/bench/studies${J2K:+-j2k}
"$PYTHON" scripts/bench_turnaround.py make --out "$studies" --count $((COUNT + 1)) ${J2K:+--j2k}

db="cxr_bench_$(date +%s)_$$"
psql "$DATABASE_URL" -X -q -c "CREATE DATABASE $db"
trap 'psql "$DATABASE_URL" -X -q -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"' EXIT
stamp=$(date -u +%Y%m%dT%H%M%SZ)
echo "cxr-worker ${CXR_WORKER_BIN:-$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo '+dirty')}; $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
"$PYTHON" scripts/bench_turnaround.py run \
  --binary "$BIN" --db-url "${DATABASE_URL%/*}/$db" \
  --models onnx --ort "$ORT_DYLIB_PATH" --studies "$studies" \
  --count $((COUNT + 1)) --quiet "$QUIET" --interval "$INTERVAL" \
  ${THREADS:+--threads "$THREADS"} --study-extra "${STUDY_EXTRA:-}" \
  --outputs "${OUTPUTS:-sr,seg,sc}" \
  --json "var/bench/turnaround-$stamp.json" --log "var/bench/turnaround-$stamp.log"
